"""Scaled dot-product and multi-head self-attention, from scratch in NumPy, with a hand-written backward.

Vaswani et al. (2017), "Attention Is All You Need", sections 3.2 (attention) and 3.5 (positions).
Attention(Q, K, V) = softmax(Q K^T / sqrt(HS) + mask) V, written out, returning the weights too.

The canonical mask convention, the same in all four files: a boolean `allowed` of shape
(B, 1, T, T), True where query t may attend to key s. It is the key-padding mask (tokens != PAD)
and, with `causal`, the lower triangle. A fully masked row (a query that may attend to nothing)
gets all-zero weights and a zero attention output: never NaN, never a uniform average.
"""

from __future__ import annotations

import math

import numpy as np

from scratch import optim
from scratch.layers import Dense, Embedding, cross_entropy, zero_grad
from tasks import weights
from tasks.configs import PAD, AttentionConfig, OptimizerConfig
from tasks.data import Dataset, batches


# ----------------------------------------------------------------------------- layers
class MaskedSoftmax:
    """Softmax over the last axis where `allowed`; masked entries and fully masked rows give exactly 0."""

    def forward(self, scores, allowed):
        shifted = np.where(allowed, scores, -np.inf)
        top = shifted.max(axis=-1, keepdims=True)
        top = np.where(np.isfinite(top), top, 0.0)  # a fully masked row's max is -inf: shift by 0
        e = np.exp(shifted - top)  # exp(-inf) = 0 on masked entries
        total = e.sum(axis=-1, keepdims=True)
        w = e / np.where(total > 0, total, 1.0)  # 0 / 1 = 0 on a fully masked row, not 0 / 0
        self.cache = {"w": w}
        return w

    def backward(self, dw):
        w = self.cache["w"]
        return w * (dw - (dw * w).sum(axis=-1, keepdims=True))  # Jacobian diag(w) - w w^T, by row


class ScaledDotProductAttention:
    """softmax(Q K^T / sqrt(HS) + mask) V, returning the output and the weights."""

    def __init__(self):
        self.softmax = MaskedSoftmax()

    def forward(self, q, k, v, allowed):
        scale = 1.0 / math.sqrt(q.shape[-1])  # a Python float keeps float32 float32
        scores = q @ k.swapaxes(-1, -2) * scale  # (B, NH, T, HS) @ (B, NH, HS, T) -> (B, NH, T, T)
        w = self.softmax.forward(scores, allowed)
        self.cache = {"q": q, "k": k, "v": v, "w": w, "scale": scale}
        return w @ v, w  # (B, NH, T, T) @ (B, NH, T, HS) -> (B, NH, T, HS)

    def backward(self, dout):
        q, k, v, w, scale = (self.cache[n] for n in ("q", "k", "v", "w", "scale"))
        dw = dout @ v.swapaxes(-1, -2)  # (B, NH, T, HS) @ (B, NH, HS, T) -> (B, NH, T, T)
        dv = w.swapaxes(-1, -2) @ dout  # (B, NH, T, T) @ (B, NH, T, HS) -> (B, NH, T, HS)
        dscores = self.softmax.backward(dw) * scale
        dq = dscores @ k  # (B, NH, T, T) @ (B, NH, T, HS) -> (B, NH, T, HS)
        dk = dscores.swapaxes(-1, -2) @ q
        return dq, dk, dv


class MultiHeadAttention:
    """Attention with NH heads: project to Q, K, V, attend per head, concatenate, project out.

    Self-attention: forward(x, allowed). Cross-attention: forward(x, allowed, key, value), the key
    (B, S, kdim) and value (B, S, vdim) inputs with their own widths (W_k (E, kdim), W_v (E, vdim);
    default kdim = vdim = E) and `allowed` (B, 1, T, S); backward then returns (dx, dkey, dvalue).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        *,
        kdim: int | None = None,
        vdim: int | None = None,
        rng: np.random.Generator,
        dtype=np.float64,
    ):
        self.n_heads = n_heads
        widths = (d_model, kdim or d_model, vdim or d_model, d_model)  # in_features of q, k, v, o
        self.q, self.k, self.v, self.o = (Dense(w, d_model, rng=rng, dtype=dtype) for w in widths)
        self.attention = ScaledDotProductAttention()

    def split(self, x):
        B, T, E = x.shape
        # (B, T, E) -> (B, T, NH, HS) -> (B, NH, T, HS)
        return x.reshape(B, T, self.n_heads, E // self.n_heads).transpose(0, 2, 1, 3)

    def merge(self, x):
        B, NH, T, HS = x.shape
        return x.transpose(0, 2, 1, 3).reshape(B, T, NH * HS)  # (B, NH, T, HS) -> (B, T, E)

    def forward(self, x, allowed, key=None, value=None):
        if (key is None) != (value is None):
            raise ValueError("cross-attention takes both key and value (the same array if need be)")
        self.cross = key is not None
        key, value = (x, x) if key is None else (key, value)  # (B, S, kdim), (B, S, vdim)
        q = self.split(self.q.forward(x))  # (B, T, E) -> (B, NH, T, HS)
        k, v = self.split(self.k.forward(key)), self.split(self.v.forward(value))  # (B, NH, S, HS)
        out, w = self.attention.forward(q, k, v, allowed)  # w (B, NH, T, S)
        return self.o.forward(self.merge(out)), w

    def backward(self, dy):
        dq, dk, dv = self.attention.backward(self.split(self.o.backward(dy)))
        dx = self.q.backward(self.merge(dq))
        dkey, dvalue = self.k.backward(self.merge(dk)), self.v.backward(self.merge(dv))
        if self.cross:
            return dx, dkey, dvalue
        return dx + dkey + dvalue  # x fed all three projections: its gradient is the sum

    def layers(self) -> dict[str, Dense]:
        return {"q": self.q, "k": self.k, "v": self.v, "o": self.o}


def positional_encoding(T: int, E: int, dtype=np.float64):
    """Sinusoidal positions: PE[t, 2i] = sin(t / 10000^(2i/E)), PE[t, 2i+1] = cos(same)."""
    position = np.arange(T, dtype=np.float64)[:, None]  # (T, 1)
    freq = np.exp(-np.log(10000.0) * np.arange(0, E, 2, dtype=np.float64) / E)  # (E/2,)
    pe = np.zeros((T, E))
    pe[:, 0::2] = np.sin(position * freq)  # (T, 1) * (E/2,) -> (T, E/2)
    pe[:, 1::2] = np.cos(position * freq)
    return pe.astype(dtype)


def attention_mask(tokens, causal: bool):
    """The canonical mask: (B, 1, T, T) bool, True = may attend (key is not PAD, and s <= t if causal)."""
    allowed = (tokens != PAD)[:, None, None, :]  # (B, T) -> (B, 1, 1, T): one row of keys each
    if causal:
        T = tokens.shape[1]
        allowed = allowed & np.tril(np.ones((T, T), dtype=bool))  # -> (B, 1, T, T)
    return np.broadcast_to(allowed, (tokens.shape[0], 1, tokens.shape[1], tokens.shape[1]))


# ----------------------------------------------------------------------------- model
class AttentionModel:
    """Embedding * sqrt(E) + positions, one self-attention layer with a residual, a per-token head.

    model.forward(tokens) returns the logits (B, T, V); model.logits_and_weights(tokens) returns
    (logits, weights): the attention weights of the one layer, a list of one (B, NH, T, T).
    Either call caches what model.backward(dlogits) needs.
    """

    def __init__(self, cfg: AttentionConfig, *, rng: np.random.Generator, dtype=np.float64):
        self.cfg = cfg
        self.embed = Embedding(cfg.vocab, cfg.d_model, rng=rng, dtype=dtype)
        self.attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, rng=rng, dtype=dtype)
        self.head = Dense(cfg.d_model, cfg.vocab, rng=rng, dtype=dtype)

    def embed_tokens(self, tokens):
        """The model's input: embedding scaled by sqrt(E) plus positions (B, T) -> (B, T, E)."""
        x = self.embed.forward(tokens) * math.sqrt(self.cfg.d_model)
        return x + positional_encoding(tokens.shape[1], self.cfg.d_model, x.dtype)

    def logits_and_weights(self, tokens):
        """Logits (B, T, V) and the attention weights of each layer [(B, NH, T, T)]."""
        x = self.embed_tokens(tokens)
        a, w = self.attn.forward(x, attention_mask(tokens, self.cfg.causal))
        return self.head.forward(x + a), [w]  # (B, T, E) -> (B, T, V)

    def forward(self, tokens):
        return self.logits_and_weights(tokens)[0]

    def backward(self, dlogits):
        dx = self.head.backward(dlogits)
        dx = dx + self.attn.backward(dx)  # the residual adds the attention path's gradient
        self.embed.backward(dx * math.sqrt(self.cfg.d_model))
        return dx  # (B, T, E): the gradient with respect to the embedded input

    def layers(self) -> dict:
        """Layers by canonical prefix (each has params and grads dicts)."""
        return {
            "embed": self.embed,
            **{f"attn.{n}": d for n, d in self.attn.layers().items()},
            "head": self.head,
        }


def create_model(cfg: AttentionConfig, *, seed: int, dtype: str = "float64") -> AttentionModel:
    return AttentionModel(cfg, rng=np.random.default_rng(seed), dtype=np.dtype(dtype))


# ----------------------------------------------------------------------------- canonical weights
def load_canonical(model, params: dict[str, np.ndarray]) -> None:
    """Copy canonical weights in; scratch *is* the canonical layout, so no transform."""
    weights.check(params, model.cfg.param_shapes(), model.head.params["weight"].dtype)
    for prefix, layer in model.layers().items():
        for key in layer.params:
            layer.params[key] = np.array(params[f"{prefix}.{key}"])


def export_canonical(model) -> dict[str, np.ndarray]:
    return {
        f"{prefix}.{key}": value.copy()
        for prefix, layer in model.layers().items()
        for key, value in layer.params.items()
    }


# ----------------------------------------------------------------------------- loss
def loss_fn(logits, y):
    """Cross-entropy averaged over the non-PAD targets, and its gradient d loss / d logits."""
    return cross_entropy(logits, y, ignore_index=PAD)  # padding positions carry no answer


def forward_backward(model, x, y) -> dict[str, np.ndarray]:
    """Outputs, attention weights, loss and every gradient in the canonical layout."""
    zero_grad(model.layers().values())
    logits, attn = model.logits_and_weights(x)
    loss, dlogits = loss_fn(logits, y)
    dx = model.backward(dlogits)
    grads = {
        f"grad.{prefix}.{k}": g.copy()
        for prefix, layer in model.layers().items()
        for k, g in layer.grads.items()
    }
    out = {"output": logits, "loss": np.asarray(loss), "grad.input": dx, **grads}
    return out | {f"attn_weights.{i}": w for i, w in enumerate(attn)}


# ----------------------------------------------------------------------------- train step
def make_optimizer(model, lr: float | OptimizerConfig) -> optim.Optimizer:
    """A learning rate gives the config's optimizer (Adam or SGD); an OptimizerConfig any of
    scratch/optim.py."""
    if not isinstance(lr, OptimizerConfig):
        lr = OptimizerConfig(model.cfg.optimizer, lr=lr)
    return optim.make_optimizer(model, lr)


def train_step(model, optimizer: optim.Optimizer, x, y) -> float:
    optimizer.zero_grad()
    logits = model.forward(x)
    loss, dlogits = loss_fn(logits, y)
    model.backward(dlogits)
    optimizer.step()
    return float(loss)


def train(
    model,
    data: Dataset,
    *,
    epochs: int,
    lr: float | OptimizerConfig,
    batch_size: int,
    seed: int,
    on_epoch=None,
) -> list[float]:
    """Mini-batches in the shared order; returns the mean training loss of each epoch."""
    x, y = data.x_train, data.y_train  # token ids (B, T): no dtype cast
    optimizer, history = make_optimizer(model, lr), []
    for epoch in range(epochs):
        losses = [
            train_step(model, optimizer, x[idx], y[idx])
            for idx in batches(len(x), batch_size, seed, epoch)
        ]
        history.append(float(np.mean(losses)))
        if on_epoch:
            on_epoch(epoch, history[-1])
    return history


# ----------------------------------------------------------------------------- evaluation
def predict(logits):
    return logits.argmax(axis=-1)


def evaluate(model, x, y) -> tuple[float, float]:
    """(mean loss, token accuracy over the non-PAD targets) on a whole split."""
    logits = model.forward(x)
    loss, _ = loss_fn(logits, y)
    valid = y != PAD
    return float(loss), float(((predict(logits) == y) & valid).sum() / valid.sum())
