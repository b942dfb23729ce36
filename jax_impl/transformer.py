"""A tiny Transformer encoder in JAX with Flax NNX: nnx.LayerNorm, jax.nn.gelu, and the attention of
attention.py.

Vaswani et al. (2017), "Attention Is All You Need", section 3.1 (post-LN, the paper's block);
Xiong et al. (2020), "On Layer Normalization in the Transformer Architecture" (pre-LN).
Built on jax_impl/attention.py: its multi-head attention (hand-written or nnx.MultiHeadAttention),
mask, positions, canonical-weight converters, loss and training loop.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from jax_impl.attention import (  # noqa: F401  (loss, training and evaluation are shared with attention.py)
    attention_mask,
    evaluate,
    export_canonical,
    forward_backward,
    load_canonical,
    loss_fn,
    make_attention,
    make_dense,
    make_optimizer,
    positional_encoding,
    train,
    train_step,
)
from tasks.configs import TransformerConfig

# ----------------------------------------------------------------------------- layers
# module-level functions: a model's static structure holds the same objects each time, so nnx.jit
# compiles a step once per config (a lambda made per model would retrace it)
ACTIVATIONS = {
    "relu": jax.nn.relu,
    "gelu": partial(jax.nn.gelu, approximate=False),  # erf: torch's and Keras's default
    "gelu_tanh": partial(jax.nn.gelu, approximate=True),  # jax.nn.gelu's own default: pass it
}


def make_layer_norm(cfg: TransformerConfig, *, rngs: nnx.Rngs, dtype) -> nnx.LayerNorm:
    # Flax's default eps is 1e-6; its fast variance E[x^2] - E[x]^2 loses digits in float32, so use the two-pass form
    return nnx.LayerNorm(
        cfg.d_model,
        epsilon=cfg.ln_eps,
        use_fast_variance=False,
        dtype=dtype,
        param_dtype=dtype,
        rngs=rngs,
    )


class Block(nnx.Module):
    """Self-attention and feed-forward, each with a residual; LayerNorm after (post) or before (pre)."""

    def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs, dtype):
        self.norm = cfg.norm
        self.attn = make_attention(cfg, rngs=rngs, dtype=dtype)
        self.ln1 = make_layer_norm(cfg, rngs=rngs, dtype=dtype)
        self.ff1 = make_dense(cfg.d_model, cfg.d_ff, rngs=rngs, dtype=dtype)
        self.activation = ACTIVATIONS[cfg.activation]
        self.ff2 = make_dense(cfg.d_ff, cfg.d_model, rngs=rngs, dtype=dtype)
        self.ln2 = make_layer_norm(cfg, rngs=rngs, dtype=dtype)

    def feed_forward(self, x):
        return self.ff2(self.activation(self.ff1(x)))  # (B, T, E) -> (B, T, d_ff) -> (B, T, E)

    def __call__(self, x, allowed):
        if self.norm == "post":
            a, w = self.attn(x, allowed)
            x = self.ln1(x + a)
            return self.ln2(x + self.feed_forward(x)), w
        a, w = self.attn(self.ln1(x), allowed)
        x = x + a
        return x + self.feed_forward(self.ln2(x)), w


# ----------------------------------------------------------------------------- model
class Transformer(nnx.Module):
    """Embedding * sqrt(E) + positions, N blocks, an optional final LayerNorm, a per-token head.

    model(tokens) returns the logits (B, T, V); model.logits_and_weights(tokens, dx=None) returns
    (logits, weights): the attention weights of each block, a list of n_layers (B, NH, T, T).
    """

    def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs, dtype=jnp.float64):
        self.cfg = cfg
        self.embed = nnx.Embed(cfg.vocab, cfg.d_model, dtype=dtype, param_dtype=dtype, rngs=rngs)
        self.blocks = nnx.List([Block(cfg, rngs=rngs, dtype=dtype) for _ in range(cfg.n_layers)])
        self.ln_f = make_layer_norm(cfg, rngs=rngs, dtype=dtype) if cfg.has_final_norm else None
        self.head = make_dense(cfg.d_model, cfg.vocab, rngs=rngs, dtype=dtype)

    def embed_tokens(self, tokens):
        """The model's input: embedding scaled by sqrt(E) plus positions (B, T) -> (B, T, E)."""
        x = self.embed(tokens) * math.sqrt(self.cfg.d_model)
        return x + positional_encoding(tokens.shape[1], self.cfg.d_model, x.dtype)

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

    def __call__(self, tokens):
        return self.logits_and_weights(tokens)[0]

    def layers_by_name(self) -> dict[str, nnx.Module]:
        """Layers by canonical prefix."""
        out = {"embed": self.embed}
        for i, b in enumerate(self.blocks):
            out.update(
                {
                    f"blocks.{i}.attn": b.attn,
                    f"blocks.{i}.ln1": b.ln1,
                    f"blocks.{i}.ff1": b.ff1,
                    f"blocks.{i}.ff2": b.ff2,
                    f"blocks.{i}.ln2": b.ln2,
                }
            )
        if self.ln_f is not None:
            out["ln_f"] = self.ln_f
        return out | {"head": self.head}


def create_model(cfg: TransformerConfig, *, seed: int, dtype: str = "float64") -> Transformer:
    return Transformer(cfg, rngs=nnx.Rngs(params=seed), dtype=jnp.dtype(dtype))
