"""Scaled dot-product and multi-head self-attention in JAX with Flax NNX: written out with jax.numpy,
and nnx.MultiHeadAttention.

Vaswani et al. (2017), "Attention Is All You Need", sections 3.2 (attention) and 3.5 (positions).
The hand-written layer keeps separate nnx.Linear q, k, v, o (kernel (in, out): transposed to and
from the canonical (out, in)); the stock nnx.MultiHeadAttention keeps LinearGeneral query/key/value
kernels (E, NH, HS), biases (NH, HS), and an output kernel (NH, HS, E).

Canonical mask: `allowed` (B, 1, T, T) bool, True = may attend; Flax's mask has the same polarity
and shape. A fully masked row gives zero weights and output here; nnx.MultiHeadAttention fills masked
scores with the dtype's minimum, so there it gives a uniform average over all keys.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jax_impl import optim, porting
from tasks import weights
from tasks.configs import PAD, AttentionConfig, OptimizerConfig
from tasks.data import Dataset, batches


# ----------------------------------------------------------------------------- layers
def masked_softmax(scores, allowed):
    """Softmax over the last axis where `allowed`; masked entries and fully masked rows give exactly 0."""
    shifted = jnp.where(allowed, scores, -jnp.inf)
    top = jax.lax.stop_gradient(
        shifted.max(axis=-1, keepdims=True)
    )  # the shift cancels out: no gradient through it
    top = jnp.where(jnp.isfinite(top), top, 0.0)  # a fully masked row: shift by 0
    e = jnp.exp(shifted - top)  # exp(-inf) = 0 on masked entries
    total = e.sum(axis=-1, keepdims=True)
    return e / jnp.where(total > 0, total, 1.0)  # 0 / 1 = 0 on a fully masked row


def scaled_dot_product_attention(q, k, v, allowed):
    """softmax(Q K^T / sqrt(HS) + mask) V, returning the output and the weights."""
    scores = (
        q @ k.swapaxes(-1, -2) / math.sqrt(q.shape[-1])
    )  # (B, NH, T, HS) @ (B, NH, HS, T) -> (B, NH, T, T)
    w = masked_softmax(scores, allowed)
    return w @ v, w  # (B, NH, T, T) @ (B, NH, T, HS) -> (B, NH, T, HS)


def make_dense(in_features: int, out_features: int, *, rngs: nnx.Rngs, dtype):
    bound = 1.0 / np.sqrt(
        in_features
    )  # torch's nn.Linear default range, so every framework starts alike
    init = lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, -bound, bound)
    return nnx.Linear(
        in_features,
        out_features,
        kernel_init=init,
        bias_init=init,
        dtype=dtype,
        param_dtype=dtype,
        rngs=rngs,
    )


class MultiHeadAttention(nnx.Module):
    """Attention with NH heads: project to Q, K, V, attend per head, concatenate, project out.

    Self-attention: __call__(x, allowed). Cross-attention: __call__(x, allowed, key, value), the key
    (B, S, kdim) and value (B, S, vdim) inputs with their own widths (W_k (E, kdim), W_v (E, vdim);
    default kdim = vdim = E) and `allowed` (B, 1, T, S).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        *,
        kdim: int | None = None,
        vdim: int | None = None,
        rngs: nnx.Rngs,
        dtype,
    ):
        self.n_heads = n_heads
        widths = (d_model, kdim or d_model, vdim or d_model, d_model)  # in_features of q, k, v, o
        self.q, self.k, self.v, self.o = (
            make_dense(w, d_model, rngs=rngs, dtype=dtype) for w in widths
        )

    def split(self, x):
        B, T, E = x.shape
        return x.reshape(B, T, self.n_heads, E // self.n_heads).transpose(
            0, 2, 1, 3
        )  # (B, T, E) -> (B, NH, T, HS)

    def merge(self, x):
        B, NH, T, HS = x.shape
        return x.transpose(0, 2, 1, 3).reshape(B, T, NH * HS)  # (B, NH, T, HS) -> (B, T, E)

    def __call__(self, x, allowed, key=None, value=None):
        if (key is None) != (value is None):
            raise ValueError("cross-attention takes both key and value (the same array if need be)")
        key, value = (x, x) if key is None else (key, value)  # (B, S, kdim), (B, S, vdim)
        q, k, v = self.split(self.q(x)), self.split(self.k(key)), self.split(self.v(value))
        out, w = scaled_dot_product_attention(q, k, v, allowed)  # w (B, NH, T, S)
        return self.o(self.merge(out)), w


class StockMultiHeadAttention(nnx.Module):
    """Flax's nnx.MultiHeadAttention behind the same call: (x, allowed[, key, value]) -> (output,
    weights). Flax has one key/value width (in_kv_features): kdim must equal vdim."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        *,
        kdim: int | None = None,
        vdim: int | None = None,
        rngs: nnx.Rngs,
        dtype,
    ):
        kdim, vdim = kdim or d_model, vdim or d_model
        if kdim != vdim:  # its key and value LinearGenerals are both built on in_kv_features
            raise ValueError(
                f"nnx.MultiHeadAttention needs kdim == vdim (in_kv_features): {kdim, vdim}"
            )
        self.mha = nnx.MultiHeadAttention(
            n_heads,
            d_model,
            d_model,
            d_model,
            in_kv_features=kdim,
            decode=False,
            dtype=dtype,
            param_dtype=dtype,
            rngs=rngs,
        )

    def __call__(self, x, allowed, key=None, value=None):
        if (key is None) != (value is None):
            raise ValueError("cross-attention takes both key and value (the same array if need be)")
        key, value = (x, x) if key is None else (key, value)
        # the mask has the canonical polarity and shape. With sow_weights the layer sows its attention
        # weights (an nnx.Intermediate) and nnx.capture collects them; it also keeps the softmax in the
        # model's dtype (without it the layer calls jax.nn.dot_product_attention, whose softmax is
        # float32: test_flax_idioms.py::test_stock_attention_fused_softmax_is_float32)
        out, sown = nnx.capture(self.mha, nnx.Intermediate)(
            x, key, value, mask=allowed, deterministic=True, sow_weights=True
        )
        return out, sown["attention_weights"].get_value()[0]  # (B, NH, T, S), this call's weights


def positional_encoding(T: int, E: int, dtype=jnp.float64):
    """Sinusoidal positions: PE[t, 2i] = sin(t / 10000^(2i/E)), PE[t, 2i+1] = cos(same)."""
    position = jnp.arange(T, dtype=jnp.float64)[:, None]  # (T, 1)
    freq = jnp.exp(-math.log(10000.0) * jnp.arange(0, E, 2, dtype=jnp.float64) / E)  # (E/2,)
    pe = jnp.zeros((T, E), dtype=jnp.float64)
    pe = pe.at[:, 0::2].set(jnp.sin(position * freq))  # (T, 1) * (E/2,) -> (T, E/2)
    pe = pe.at[:, 1::2].set(jnp.cos(position * freq))
    return pe.astype(dtype)


def attention_mask(tokens, causal: bool):
    """The canonical mask: (B, 1, T, T) bool, True = may attend (key is not PAD, and s <= t if causal)."""
    B, T = tokens.shape
    allowed = (tokens != PAD)[
        :, None, None, :
    ]  # (B, T) -> (B, 1, 1, T): one row of keys per sequence
    if causal:
        allowed = allowed & jnp.tril(jnp.ones((T, T), dtype=bool))  # -> (B, 1, T, T)
    return jnp.broadcast_to(allowed, (B, 1, T, T))


def make_attention(cfg, *, rngs: nnx.Rngs, dtype) -> nnx.Module:
    return (StockMultiHeadAttention if cfg.stock else MultiHeadAttention)(
        cfg.d_model, cfg.n_heads, rngs=rngs, dtype=dtype
    )


# ----------------------------------------------------------------------------- model
class AttentionModel(nnx.Module):
    """Embedding * sqrt(E) + positions, one self-attention layer with a residual, a per-token head.

    model(tokens) returns the logits (B, T, V); model.logits_and_weights(tokens, dx=None) returns
    (logits, weights): the attention weights of the one layer, a list of one (B, NH, T, T).
    """

    def __init__(self, cfg: AttentionConfig, *, rngs: nnx.Rngs, dtype=jnp.float64):
        self.cfg = cfg
        self.embed = nnx.Embed(cfg.vocab, cfg.d_model, dtype=dtype, param_dtype=dtype, rngs=rngs)
        self.attn = make_attention(cfg, rngs=rngs, dtype=dtype)
        self.head = make_dense(cfg.d_model, cfg.vocab, rngs=rngs, dtype=dtype)

    def embed_tokens(self, tokens):
        """The model's input: embedding scaled by sqrt(E) plus positions (B, T) -> (B, T, E)."""
        x = self.embed(tokens) * math.sqrt(self.cfg.d_model)
        return x + positional_encoding(tokens.shape[1], self.cfg.d_model, x.dtype)

    def logits_and_weights(self, tokens, dx=None):
        """Logits (B, T, V) and the attention weights of each layer; `dx` (zeros) is added to the
        embedded input so that its gradient is the input gradient."""
        x = self.embed_tokens(tokens) if dx is None else self.embed_tokens(tokens) + dx
        a, w = self.attn(x, attention_mask(tokens, self.cfg.causal))
        return self.head(x + a), [w]  # (B, T, E) -> (B, T, V)

    def __call__(self, tokens):
        return self.logits_and_weights(tokens)[0]

    def layers_by_name(self) -> dict[str, nnx.Module]:
        """Layers by canonical prefix."""
        return {"embed": self.embed, "attn": self.attn, "head": self.head}


def create_model(cfg: AttentionConfig, *, seed: int, dtype: str = "float64") -> AttentionModel:
    return AttentionModel(cfg, rngs=nnx.Rngs(params=seed), dtype=jnp.dtype(dtype))


# ----------------------------------------------------------------------------- canonical weights
def canonical_layers(model) -> dict:
    """Each stock layer by canonical prefix, with its jax_impl/porting.py function and layout
    (dense kernels transposed; the stock attention's kernels split by head)."""
    out = {}
    for prefix, layer in model.layers_by_name().items():
        if isinstance(layer, MultiHeadAttention):
            out.update({f"{prefix}.{p}.": ("dense", getattr(layer, p), {}) for p in "qkvo"})
        elif isinstance(layer, StockMultiHeadAttention):
            out[f"{prefix}."] = ("mha", layer.mha, {"num_heads": layer.mha.num_heads})
        elif isinstance(layer, nnx.Linear):
            out[f"{prefix}."] = ("dense", layer, {})
        elif isinstance(layer, nnx.Embed):
            out[f"{prefix}."] = ("embedding", layer, {})
        elif isinstance(layer, nnx.LayerNorm):
            out[f"{prefix}."] = ("layer_norm", layer, {})
    return out


def load_canonical(model, params: dict[str, np.ndarray]) -> None:
    weights.check(params, model.cfg.param_shapes(), model.head.kernel.dtype)
    porting.load_layers(canonical_layers(model), params)


def export_canonical(model) -> dict[str, np.ndarray]:
    """Flax -> canonical, for a model or for gradients merged into one."""
    return porting.layers_to_canonical(canonical_layers(model))


# ----------------------------------------------------------------------------- loss
def loss_fn(logits, y):
    """Cross-entropy averaged over the non-PAD targets."""
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)  # (B, T, V) -> (B, T)
    valid = (y != PAD).astype(logits.dtype)
    return (ce * valid).sum() / valid.sum()


@nnx.jit
def gradients(model, tokens, y, dx):
    """Loss, outputs and the gradients with respect to the parameters and to `dx`, compiled as one
    XLA program (run op by op, the first call would compile every small op separately)."""

    def loss_of(model, dx):
        logits, attn = model.logits_and_weights(tokens, dx)
        return loss_fn(logits, y), (logits, attn)

    return nnx.value_and_grad(loss_of, argnums=(0, 1), has_aux=True)(model, dx)


def forward_backward(model, x, y) -> dict[str, np.ndarray]:
    """Outputs, attention weights, loss and every gradient in the canonical layout."""
    tokens, y = jnp.asarray(x), jnp.asarray(y)
    dx = jnp.zeros((*tokens.shape, model.cfg.d_model), dtype=model.head.kernel.dtype)  # (B, T, E)
    (loss, (logits, attn)), (grad_params, grad_input) = gradients(model, tokens, y, dx)
    # the gradients have the model's own structure: merge them into a model to reuse the exporter
    grads = export_canonical(nnx.merge(nnx.graphdef(model), grad_params))
    out = {
        "output": np.asarray(logits),
        "loss": np.asarray(loss),
        "grad.input": np.asarray(grad_input),
    }
    return (
        out
        | {f"grad.{k}": g for k, g in grads.items()}
        | {f"attn_weights.{i}": np.asarray(w) for i, w in enumerate(attn)}
    )


# ----------------------------------------------------------------------------- train step
def make_optimizer(model, lr: float | OptimizerConfig) -> nnx.Optimizer:
    """A learning rate gives the config's optimizer (Adam or SGD); an OptimizerConfig any of
    jax_impl/optim.py."""
    if isinstance(lr, OptimizerConfig):
        return optim.make_optimizer(model, lr)
    name = "adam" if model.cfg.optimizer == "adam" else "sgd"
    return optim.make_optimizer(model, OptimizerConfig(name, lr=lr, eps=1e-8))


@nnx.jit
def train_step(model, optimizer: nnx.Optimizer, x, y):
    def loss_of(model):
        return loss_fn(model(x), y)

    loss, grads = nnx.value_and_grad(loss_of)(model)
    optimizer.update(model, grads)
    return loss


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
    x, y = np.asarray(data.x_train), np.asarray(data.y_train)  # token ids (B, T): no dtype cast
    optimizer, history = make_optimizer(model, lr), []
    # cached_partial walks the model and optimizer graphs once, not on every step: for a model this
    # small, NNX's per-call graph traversal would cost more than the compiled step itself
    step = nnx.cached_partial(train_step, model, optimizer)
    for epoch in range(epochs):
        # a plain iterator over the shared index arrays is JAX's whole input pipeline: each batch
        # is cut from the NumPy arrays on the host and jit copies it to the device (indexing a JAX
        # array would compile a gather program per batch shape); the losses stay on the device
        # until the epoch ends, so Python runs ahead of the computation
        losses = [step(x[idx], y[idx]) for idx in batches(len(x), batch_size, seed, epoch)]
        history.append(float(np.mean(jax.device_get(losses), dtype=np.float64)))
        if on_epoch:
            on_epoch(epoch, history[-1])
    return history


# ----------------------------------------------------------------------------- evaluation
@nnx.jit
def eval_step(model, tokens, y):
    logits = model(tokens)
    valid = y != PAD
    accuracy = ((logits.argmax(axis=-1) == y) & valid).sum() / valid.sum()
    return loss_fn(logits, y), accuracy


def evaluate(model, x, y) -> tuple[float, float]:
    """(mean loss, token accuracy over the non-PAD targets) on a whole split."""
    loss, accuracy = eval_step(model, jnp.asarray(x), jnp.asarray(y))
    return float(loss), float(accuracy)
