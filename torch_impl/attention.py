"""Scaled dot-product and multi-head self-attention in PyTorch: written out, and nn.MultiheadAttention.

Vaswani et al. (2017), "Attention Is All You Need", sections 3.2 (attention) and 3.5 (positions).
The hand-written layer keeps separate nn.Linear q, k, v, o (canonical (out, in), no transform);
the stock nn.MultiheadAttention packs W_q, W_k, W_v into one in_proj_weight (3E, E).

Canonical mask: `allowed` (B, 1, T, T) bool, True = may attend. nn.MultiheadAttention wants the
opposite polarity (attn_mask True = not allowed; key_padding_mask True = ignore this key), so the
converter passes `~allowed` as one (B*NH, T, T) attn_mask.
A fully masked row gives zero weights and output here; nn.MultiheadAttention gives NaN there.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tasks import weights
from tasks.configs import PAD, AttentionConfig, OptimizerConfig
from tasks.data import Dataset
from torch_impl import compat, optim, porting
from torch_impl.data import EpochSampler


# ----------------------------------------------------------------------------- layers
def masked_softmax(scores, allowed):
    """Softmax over the last axis where `allowed`; masked entries and fully masked rows give exactly 0."""
    shifted = scores.masked_fill(~allowed, -math.inf)
    top = shifted.amax(
        dim=-1, keepdim=True
    ).detach()  # the shift cancels out: no gradient through it
    top = torch.where(
        torch.isfinite(top), top, torch.zeros_like(top)
    )  # a fully masked row: shift by 0
    e = torch.exp(shifted - top)  # exp(-inf) = 0 on masked entries
    total = e.sum(dim=-1, keepdim=True)
    return e / torch.where(
        total > 0, total, torch.ones_like(total)
    )  # 0 / 1 = 0 on a fully masked row


def scaled_dot_product_attention(q, k, v, allowed):
    """softmax(Q K^T / sqrt(HS) + mask) V, returning the output and the weights."""
    scores = (
        q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    )  # (B, NH, T, HS) @ (B, NH, HS, T) -> (B, NH, T, T)
    w = masked_softmax(scores, allowed)
    return w @ v, w  # (B, NH, T, T) @ (B, NH, T, HS) -> (B, NH, T, HS)


class MultiHeadAttention(nn.Module):
    """Attention with NH heads: project to Q, K, V, attend per head, concatenate, project out.

    Self-attention: forward(x, allowed). Cross-attention: forward(x, allowed, key, value), the key
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
        dtype=torch.float64,
    ):
        super().__init__()
        self.n_heads = n_heads
        widths = (d_model, kdim or d_model, vdim or d_model, d_model)  # in_features of q, k, v, o
        self.q, self.k, self.v, self.o = (nn.Linear(w, d_model, dtype=dtype) for w in widths)

    def split(self, x):
        B, T, E = x.shape
        return x.view(B, T, self.n_heads, E // self.n_heads).transpose(
            1, 2
        )  # (B, T, E) -> (B, NH, T, HS)

    def merge(self, x):
        B, NH, T, HS = x.shape
        return x.transpose(1, 2).reshape(B, T, NH * HS)  # (B, NH, T, HS) -> (B, T, E)

    def forward(self, x, allowed, key=None, value=None):
        if (key is None) != (value is None):
            raise ValueError(
                "cross-attention takes both key and value (the same tensor if need be)"
            )
        key, value = (x, x) if key is None else (key, value)  # (B, S, kdim), (B, S, vdim)
        q, k, v = self.split(self.q(x)), self.split(self.k(key)), self.split(self.v(value))
        out, w = scaled_dot_product_attention(q, k, v, allowed)  # w (B, NH, T, S)
        return self.o(self.merge(out)), w


class StockMultiHeadAttention(nn.Module):
    """torch's nn.MultiheadAttention behind the same call: (x, allowed[, key, value]) -> (output,
    weights). With kdim or vdim != E it keeps separate q/k/v_proj_weight (no in_proj_weight)."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        *,
        kdim: int | None = None,
        vdim: int | None = None,
        dtype=torch.float64,
    ):
        super().__init__()
        self.mha = nn.MultiheadAttention(
            d_model, n_heads, kdim=kdim, vdim=vdim, batch_first=True, dtype=dtype
        )

    def forward(self, x, allowed, key=None, value=None):
        if (key is None) != (value is None):
            raise ValueError(
                "cross-attention takes both key and value (the same tensor if need be)"
            )
        key, value = (x, x) if key is None else (key, value)
        B, T, S, NH = x.shape[0], x.shape[1], key.shape[1], self.mha.num_heads
        # torch's polarity is the opposite: attn_mask True = not allowed, one (T, S) mask per batch x head
        attn_mask = ~allowed.expand(B, NH, T, S).reshape(
            B * NH, T, S
        )  # (B, 1, T, S) -> (B*NH, T, S)
        out, w = self.mha(
            x, key, value, attn_mask=attn_mask, need_weights=True, average_attn_weights=False
        )
        return out, w  # (B, T, E), (B, NH, T, S)


def positional_encoding(T: int, E: int, dtype=torch.float64, device="cpu"):
    """Sinusoidal positions: PE[t, 2i] = sin(t / 10000^(2i/E)), PE[t, 2i+1] = cos(same)."""
    position = torch.arange(T, dtype=torch.float64)[:, None]  # (T, 1)
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, E, 2, dtype=torch.float64) / E)  # (E/2,)
    pe = torch.zeros(T, E, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(position * freq)  # (T, 1) * (E/2,) -> (T, E/2)
    pe[:, 1::2] = torch.cos(position * freq)
    return pe.to(device, dtype)


def attention_mask(tokens, causal: bool):
    """The canonical mask: (B, 1, T, T) bool, True = may attend (key is not PAD, and s <= t if causal)."""
    B, T = tokens.shape
    allowed = (tokens != PAD)[
        :, None, None, :
    ]  # (B, T) -> (B, 1, 1, T): one row of keys per sequence
    if causal:
        causal_mask = torch.ones(T, T, dtype=torch.bool, device=tokens.device).tril()
        allowed = allowed & causal_mask  # (B, 1, 1, T) & (T, T) -> (B, 1, T, T)
    return allowed.expand(B, 1, T, T)


def make_attention(cfg, dtype) -> nn.Module:
    return (StockMultiHeadAttention if cfg.stock else MultiHeadAttention)(
        cfg.d_model, cfg.n_heads, dtype=dtype
    )


def init_from(model: nn.Module, generator: torch.Generator) -> None:
    """torch layers draw from the global RNG; redraw every parameter from the generator we were given."""
    with torch.no_grad():
        for p in model.parameters():
            bound = 1.0 / math.sqrt(p.shape[-1])
            p.uniform_(-bound, bound, generator=generator)


# ----------------------------------------------------------------------------- model
class AttentionModel(nn.Module):
    """Embedding * sqrt(E) + positions, one self-attention layer with a residual, a per-token head.

    model(tokens) returns the logits (B, T, V); model.logits_and_weights(tokens, dx=None) returns
    (logits, weights): the attention weights of the one layer, a list of one (B, NH, T, T).
    """

    def __init__(self, cfg: AttentionConfig, *, generator: torch.Generator, dtype=torch.float64):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab, cfg.d_model, dtype=dtype)
        self.attn = make_attention(cfg, dtype)
        self.head = nn.Linear(cfg.d_model, cfg.vocab, dtype=dtype)
        init_from(self, generator)

    def embed_tokens(self, tokens):
        """The model's input: embedding scaled by sqrt(E) plus positions (B, T) -> (B, T, E)."""
        x = self.embed(tokens) * math.sqrt(self.cfg.d_model)
        return x + positional_encoding(tokens.shape[1], self.cfg.d_model, x.dtype, x.device)

    def logits_and_weights(self, tokens, dx=None):
        """Logits (B, T, V) and the attention weights of each layer; `dx` (zeros) is added to the
        embedded input so that its gradient is the input gradient."""
        x = self.embed_tokens(tokens) if dx is None else self.embed_tokens(tokens) + dx
        a, w = self.attn(x, attention_mask(tokens, self.cfg.causal))
        return self.head(x + a), [w]  # (B, T, E) -> (B, T, V)

    def forward(self, tokens):
        return self.logits_and_weights(tokens)[0]


def create_model(
    cfg: AttentionConfig, *, seed: int, dtype: str = "float64", device: str | torch.device = "cpu"
) -> AttentionModel:
    """Weights drawn on the CPU, then moved: one seed gives the same model on every device."""
    model = AttentionModel(
        cfg, generator=torch.Generator().manual_seed(seed), dtype=getattr(torch, dtype)
    )
    return model.to(device)


# ----------------------------------------------------------------------------- canonical weights
KINDS = (  # torch_impl/porting.py's function for each stock module (nn.MultiheadAttention first)
    (nn.MultiheadAttention, "mha"),
    (nn.Linear, "dense"),
    (nn.Embedding, "embedding"),
    (nn.LayerNorm, "layer_norm"),
)


def canonical_layers(model: nn.Module) -> dict:
    """Each stock layer by canonical prefix, with its torch_impl/porting.py function. Hand-written
    layers are built of nn.Linear under canonical names; a stock nn.MultiheadAttention `attn.mha`
    gives `attn.q.weight` ... (its packed in_proj_weight is split by porting.mha_to_canonical)."""
    out, inside = {}, ()
    for name, module in model.named_modules():
        kind = next((k for t, k in KINDS if isinstance(module, t)), None)
        if kind is None or name.startswith(inside):  # out_proj belongs to its nn.MultiheadAttention
            continue
        if kind == "mha":
            inside = (*inside, name + ".")
        out[name.removesuffix("mha") if kind == "mha" else name + "."] = (kind, module, {})
    covered = {p for _, module, _ in out.values() for p in module.parameters()}
    assert covered == set(model.parameters()), "a parameter outside every porting layer"
    return out


def load_canonical(model: nn.Module, params: dict[str, np.ndarray]) -> None:
    weights.check(params, model.cfg.param_shapes(), model.head.weight.detach().cpu().numpy().dtype)
    porting.load_layers(canonical_layers(model), params)


def export_canonical(model: nn.Module) -> dict[str, np.ndarray]:
    return porting.layers_to_canonical(canonical_layers(model))


# ----------------------------------------------------------------------------- loss
def loss_fn(logits, y):
    """Cross-entropy averaged over the non-PAD targets (ignore_index skips them)."""
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=PAD
    )  # (B*T, V)


def forward_backward(model: nn.Module, x, y, *, device="cpu") -> dict[str, np.ndarray]:
    """Outputs, attention weights, loss and every gradient in the canonical layout."""
    model.zero_grad()
    model.train()  # nn.MultiheadAttention's fused fast path runs only in eval mode without grad
    tokens = torch.as_tensor(x, device=device)
    dx = torch.zeros(
        *tokens.shape, model.cfg.d_model, dtype=model.head.weight.dtype, device=device
    ).requires_grad_()  # (B, T, E)
    logits, attn = model.logits_and_weights(tokens, dx)
    loss = loss_fn(logits, torch.as_tensor(y, device=device))
    loss.backward()
    numpy = lambda t: t.detach().cpu().numpy().copy()
    grads = porting.layers_to_canonical(canonical_layers(model), grads=True)
    grads = {f"grad.{name}": g for name, g in grads.items()}
    out = {"output": numpy(logits), "loss": numpy(loss), "grad.input": numpy(dx.grad), **grads}
    return out | {f"attn_weights.{i}": numpy(w) for i, w in enumerate(attn)}


# ----------------------------------------------------------------------------- train step
def make_optimizer(model: nn.Module, lr: float | OptimizerConfig) -> torch.optim.Optimizer:
    """A learning rate gives the config's optimizer (Adam or SGD); an OptimizerConfig any of
    torch_impl/optim.py (its schedule and clipping are the train loop's, as in mlp.py)."""
    return optim.make_torch_optimizer(
        model.parameters(), optim.as_config(lr, name=model.cfg.optimizer)
    )


def train_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, x, y, *, clip_norm=None
) -> float:
    optimizer.zero_grad()
    loss = loss_fn(model(x), y)
    loss.backward()
    if clip_norm is not None:  # nn.utils.clip_grad_norm_ without its 1e-6 (compat.py)
        compat.clip_grad_norm_(model.parameters(), clip_norm)
    optimizer.step()
    return loss.item()


def train(
    model: nn.Module,
    data: Dataset,
    *,
    epochs: int,
    lr: float | OptimizerConfig,
    batch_size: int,
    seed: int,
    on_epoch=None,
    device="cpu",
) -> list[float]:
    """Mini-batches in the shared order; returns the mean training loss of each epoch."""
    dataset = TensorDataset(
        torch.as_tensor(data.x_train), torch.as_tensor(data.y_train)
    )  # token ids: no dtype cast
    sampler = EpochSampler(len(dataset), seed, batch_size)  # the shared batches (tasks.data)
    loader = DataLoader(dataset, batch_sampler=sampler)
    spec = optim.as_config(lr, name=model.cfg.optimizer)  # a bare lr: the config's Adam or SGD
    optimizer = optim.make_torch_optimizer(model.parameters(), spec)
    scheduler = optim.make_scheduler(optimizer, spec)  # the lr of every step: warmup, decay
    history = []
    for epoch in range(epochs):
        model.train()  # every epoch: evaluate() in on_epoch switches to eval mode
        sampler.set_epoch(epoch)
        losses = []
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            losses.append(train_step(model, optimizer, x, y, clip_norm=spec.clip_norm))
            scheduler.step()
        history.append(float(np.mean(losses)))
        if on_epoch:
            on_epoch(epoch, history[-1])
    return history


# ----------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model: nn.Module, x, y, *, device="cpu") -> tuple[float, float]:
    """(mean loss, token accuracy over the non-PAD targets) on a whole split."""
    model.eval()
    logits = model(torch.as_tensor(x, device=device))
    y = torch.as_tensor(y, device=device)
    valid = y != PAD
    return loss_fn(logits, y).item(), (
        ((logits.argmax(dim=-1) == y) & valid).sum() / valid.sum()
    ).item()
