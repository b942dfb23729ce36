"""A tiny Transformer encoder, from scratch in NumPy, with a hand-written backward.

Vaswani et al. (2017), "Attention Is All You Need", section 3.1 (post-LN, the paper's block);
Xiong et al. (2020), "On Layer Normalization in the Transformer Architecture" (pre-LN).
Built on scratch/attention.py (its multi-head attention, mask, positions, loss and training loop)
and scratch/layers.py (Dense, Embedding, LayerNorm, GELU).
"""

from __future__ import annotations

import math

import numpy as np

# loss, training and evaluation are attention.py's, re-exported as this module's
from scratch.attention import (  # noqa: F401
    MultiHeadAttention,
    attention_mask,
    evaluate,
    export_canonical,
    forward_backward,
    load_canonical,
    loss_fn,
    make_optimizer,
    positional_encoding,
    train,
    train_step,
)
from scratch.layers import GELU, Dense, Embedding, LayerNorm, ReLU
from tasks.configs import TransformerConfig


# ----------------------------------------------------------------------------- layers
def make_activation(cfg: TransformerConfig):
    return ReLU() if cfg.activation == "relu" else GELU(approximate=cfg.activation == "gelu_tanh")


class Block:
    """Self-attention and feed-forward, each with a residual; LayerNorm after (post) or before (pre)."""

    def __init__(self, cfg: TransformerConfig, *, rng: np.random.Generator, dtype=np.float64):
        self.norm = cfg.norm
        self.attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, rng=rng, dtype=dtype)
        self.ln1 = LayerNorm(cfg.d_model, cfg.ln_eps, dtype=dtype)
        self.ff1 = Dense(cfg.d_model, cfg.d_ff, rng=rng, dtype=dtype)
        self.activation = make_activation(cfg)
        self.ff2 = Dense(cfg.d_ff, cfg.d_model, rng=rng, dtype=dtype)
        self.ln2 = LayerNorm(cfg.d_model, cfg.ln_eps, dtype=dtype)

    def feed_forward(self, x):
        # (B, T, E) -> (B, T, d_ff) -> (B, T, E)
        return self.ff2.forward(self.activation.forward(self.ff1.forward(x)))

    def feed_forward_backward(self, dy):
        return self.ff1.backward(self.activation.backward(self.ff2.backward(dy)))

    def forward(self, x, allowed):
        if self.norm == "post":
            a, w = self.attn.forward(x, allowed)
            x = self.ln1.forward(x + a)
            return self.ln2.forward(x + self.feed_forward(x)), w
        a, w = self.attn.forward(self.ln1.forward(x), allowed)
        x = x + a
        return x + self.feed_forward(self.ln2.forward(x)), w

    def backward(self, dy):
        if self.norm == "post":
            dx = self.ln2.backward(dy)
            dx = dx + self.feed_forward_backward(dx)
            dx = self.ln1.backward(dx)
            return dx + self.attn.backward(dx)
        dx = dy + self.ln2.backward(self.feed_forward_backward(dy))
        return dx + self.ln1.backward(self.attn.backward(dx))

    def layers(self) -> dict:
        attn = {f"attn.{n}": d for n, d in self.attn.layers().items()}
        return {**attn, "ln1": self.ln1, "ff1": self.ff1, "ff2": self.ff2, "ln2": self.ln2}


# ----------------------------------------------------------------------------- model
class Transformer:
    """Embedding * sqrt(E) + positions, N blocks, an optional final LayerNorm, a per-token head.

    model.forward(tokens) returns the logits (B, T, V); model.logits_and_weights(tokens) returns
    (logits, weights): the attention weights of each block, a list of n_layers (B, NH, T, T).
    Either call caches what model.backward(dlogits) needs.
    """

    def __init__(self, cfg: TransformerConfig, *, rng: np.random.Generator, dtype=np.float64):
        self.cfg = cfg
        self.embed = Embedding(cfg.vocab, cfg.d_model, rng=rng, dtype=dtype)
        self.blocks = [Block(cfg, rng=rng, dtype=dtype) for _ in range(cfg.n_layers)]
        self.ln_f = LayerNorm(cfg.d_model, cfg.ln_eps, dtype=dtype) if cfg.has_final_norm else None
        self.head = Dense(cfg.d_model, cfg.vocab, rng=rng, dtype=dtype)

    def embed_tokens(self, tokens):
        """The model's input: embedding scaled by sqrt(E) plus positions (B, T) -> (B, T, E)."""
        x = self.embed.forward(tokens) * math.sqrt(self.cfg.d_model)
        return x + positional_encoding(tokens.shape[1], self.cfg.d_model, x.dtype)

    def logits_and_weights(self, tokens):
        """Logits (B, T, V) and the attention weights of each block [(B, NH, T, T)]."""
        x, allowed, attn = self.embed_tokens(tokens), attention_mask(tokens, self.cfg.causal), []
        for block in self.blocks:
            x, w = block.forward(x, allowed)
            attn.append(w)
        if self.ln_f is not None:
            x = self.ln_f.forward(x)
        return self.head.forward(x), attn  # (B, T, E) -> (B, T, V)

    def forward(self, tokens):
        return self.logits_and_weights(tokens)[0]

    def backward(self, dlogits):
        dx = self.head.backward(dlogits)
        if self.ln_f is not None:
            dx = self.ln_f.backward(dx)
        for block in reversed(self.blocks):
            dx = block.backward(dx)
        self.embed.backward(dx * math.sqrt(self.cfg.d_model))
        return dx  # (B, T, E): the gradient with respect to the embedded input

    def layers(self) -> dict:
        """Layers by canonical prefix (each has params and grads dicts)."""
        out = {"embed": self.embed}
        for i, block in enumerate(self.blocks):
            out.update({f"blocks.{i}.{n}": layer for n, layer in block.layers().items()})
        if self.ln_f is not None:
            out["ln_f"] = self.ln_f
        return out | {"head": self.head}


def create_model(cfg: TransformerConfig, *, seed: int, dtype: str = "float64") -> Transformer:
    return Transformer(cfg, rng=np.random.default_rng(seed), dtype=np.dtype(dtype))
