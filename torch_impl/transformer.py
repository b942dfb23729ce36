"""A tiny Transformer encoder in PyTorch: nn.LayerNorm, F.gelu, and the attention of attention.py.

Vaswani et al. (2017), "Attention Is All You Need", section 3.1 (post-LN, the paper's block);
Xiong et al. (2020), "On Layer Normalization in the Transformer Architecture" (pre-LN).
Built on torch_impl/attention.py: its multi-head attention (hand-written or nn.MultiheadAttention),
mask, positions, canonical-weight converters, loss and training loop.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tasks.configs import TransformerConfig
from torch_impl.attention import (  # noqa: F401  (loss, training and evaluation are shared with attention.py)
    attention_mask,
    evaluate,
    export_canonical,
    forward_backward,
    init_from,
    load_canonical,
    loss_fn,
    make_attention,
    make_optimizer,
    positional_encoding,
    train,
    train_step,
)


# ----------------------------------------------------------------------------- layers
def make_activation(cfg: TransformerConfig):
    if cfg.activation == "relu":
        return F.relu
    approximate = (
        "tanh" if cfg.activation == "gelu_tanh" else "none"
    )  # torch's default is "none" (erf)
    return lambda x: F.gelu(x, approximate=approximate)


class Block(nn.Module):
    """Self-attention and feed-forward, each with a residual; LayerNorm after (post) or before (pre)."""

    def __init__(self, cfg: TransformerConfig, *, dtype=torch.float64):
        super().__init__()
        self.norm = cfg.norm
        self.attn = make_attention(cfg, dtype)
        self.ln1 = nn.LayerNorm(cfg.d_model, eps=cfg.ln_eps, dtype=dtype)
        self.ff1 = nn.Linear(cfg.d_model, cfg.d_ff, dtype=dtype)
        self.activation = make_activation(cfg)
        self.ff2 = nn.Linear(cfg.d_ff, cfg.d_model, dtype=dtype)
        self.ln2 = nn.LayerNorm(cfg.d_model, eps=cfg.ln_eps, dtype=dtype)

    def feed_forward(self, x):
        return self.ff2(self.activation(self.ff1(x)))  # (B, T, E) -> (B, T, d_ff) -> (B, T, E)

    def forward(self, x, allowed):
        if self.norm == "post":
            a, w = self.attn(x, allowed)
            x = self.ln1(x + a)
            return self.ln2(x + self.feed_forward(x)), w
        a, w = self.attn(self.ln1(x), allowed)
        x = x + a
        return x + self.feed_forward(self.ln2(x)), w


# ----------------------------------------------------------------------------- model
class Transformer(nn.Module):
    """Embedding * sqrt(E) + positions, N blocks, an optional final LayerNorm, a per-token head.

    model(tokens) returns the logits (B, T, V); model.logits_and_weights(tokens, dx=None) returns
    (logits, weights): the attention weights of each block, a list of n_layers (B, NH, T, T).
    """

    def __init__(self, cfg: TransformerConfig, *, generator: torch.Generator, dtype=torch.float64):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab, cfg.d_model, dtype=dtype)
        self.blocks = nn.ModuleList(Block(cfg, dtype=dtype) for _ in range(cfg.n_layers))
        self.ln_f = (
            nn.LayerNorm(cfg.d_model, eps=cfg.ln_eps, dtype=dtype) if cfg.has_final_norm else None
        )
        self.head = nn.Linear(cfg.d_model, cfg.vocab, dtype=dtype)
        init_from(self, generator)

    def embed_tokens(self, tokens):
        """The model's input: embedding scaled by sqrt(E) plus positions (B, T) -> (B, T, E)."""
        x = self.embed(tokens) * math.sqrt(self.cfg.d_model)
        return x + positional_encoding(tokens.shape[1], self.cfg.d_model, x.dtype, x.device)

    def logits_and_weights(self, tokens, dx=None):
        """Logits (B, T, V) and the attention weights of each block; `dx` (zeros) is added to the
        embedded input so that its gradient is the input gradient."""
        x = self.embed_tokens(tokens) if dx is None else self.embed_tokens(tokens) + dx
        allowed, attn = attention_mask(tokens, self.cfg.causal), []
        for block in self.blocks:
            x, w = block(x, allowed)
            attn.append(w)
        if self.ln_f is not None:
            x = self.ln_f(x)
        return self.head(x), attn  # (B, T, E) -> (B, T, V)

    def forward(self, tokens):
        return self.logits_and_weights(tokens)[0]


def create_model(
    cfg: TransformerConfig, *, seed: int, dtype: str = "float64", device: str | torch.device = "cpu"
) -> Transformer:
    """Weights drawn on the CPU, then moved: one seed gives the same model on every device."""
    model = Transformer(
        cfg, generator=torch.Generator().manual_seed(seed), dtype=getattr(torch, dtype)
    )
    return model.to(device)
