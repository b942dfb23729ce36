"""A tiny Transformer encoder in Keras 3 (TensorFlow backend): LayerNormalization, keras.ops gelu, and
the attention of attention.py.

Vaswani et al. (2017), "Attention Is All You Need", section 3.1 (post-LN, the paper's block);
Xiong et al. (2020), "On Layer Normalization in the Transformer Architecture" (pre-LN).
Built on tf_impl/attention.py: its multi-head attention (hand-written or keras.layers.MultiHeadAttention),
mask, positions, canonical-weight converters, loss and training loop.
"""

from __future__ import annotations

import math

import keras
from keras import ops

from tasks.configs import TransformerConfig
from tf_impl import training
from tf_impl.attention import (  # noqa: F401  (loss, training and evaluation are shared with attention.py)
    attention_mask,
    compile_model,
    evaluate,
    export_canonical,
    forward_backward,
    load_canonical,
    make_attention,
    make_dense,
    make_embedding,
    make_loss,
    make_optimizer,
    positional_encoding,
    train,
    train_step,
)
from tf_impl.compat import gelu  # keras.ops GELU: TF's Gelu kernel has float32 constants


# ----------------------------------------------------------------------------- layers
def make_activation(cfg: TransformerConfig):
    if cfg.activation == "relu":
        return ops.relu
    approximate = cfg.activation == "gelu_tanh"  # Keras's gelu default is approximate=False (erf)
    return lambda x: gelu(x, approximate)


def make_layer_norm(
    cfg: TransformerConfig, *, dtype: str, name: str
) -> keras.layers.LayerNormalization:
    layer = keras.layers.LayerNormalization(
        epsilon=cfg.ln_eps, dtype=dtype, name=name
    )  # Keras's default eps is 1e-3
    layer.build((None, None, cfg.d_model))
    return layer


class Block(keras.layers.Layer):
    """Self-attention and feed-forward, each with a residual; LayerNorm after (post) or before (pre)."""

    def __init__(
        self, cfg: TransformerConfig, *, seed: keras.random.SeedGenerator, dtype: str, name: str
    ):
        super().__init__(dtype=dtype, name=name)
        self.norm = cfg.norm
        self.attn = make_attention(cfg, seed=seed, dtype=dtype, name="attn")
        self.ln1 = make_layer_norm(cfg, dtype=dtype, name="ln1")
        self.ff1 = make_dense(cfg.d_model, cfg.d_ff, seed=seed, dtype=dtype, name="ff1")
        self.activation = make_activation(cfg)
        self.ff2 = make_dense(cfg.d_ff, cfg.d_model, seed=seed, dtype=dtype, name="ff2")
        self.ln2 = make_layer_norm(cfg, dtype=dtype, name="ln2")
        self.built = True  # every sublayer is built above (attention.py's MultiHeadAttention: why)

    def feed_forward(self, x):
        return self.ff2(self.activation(self.ff1(x)))  # (B, T, E) -> (B, T, d_ff) -> (B, T, E)

    def call(self, x, allowed):
        if self.norm == "post":
            a, w = self.attn(x, allowed)
            x = self.ln1(x + a)
            return self.ln2(x + self.feed_forward(x)), w
        a, w = self.attn(self.ln1(x), allowed)
        x = x + a
        return x + self.feed_forward(self.ln2(x)), w


# ----------------------------------------------------------------------------- model
class Transformer(keras.Model):
    """Embedding * sqrt(E) + positions, N blocks, an optional final LayerNorm, a per-token head.

    model(tokens) returns the logits (B, T, V); model.logits_and_weights(tokens, dx=None) returns
    (logits, weights): the attention weights of each block, a list of n_layers (B, NH, T, T).
    """

    def __init__(
        self, cfg: TransformerConfig, *, seed: keras.random.SeedGenerator, dtype: str = "float64"
    ):
        super().__init__(dtype=dtype)
        self.cfg = cfg
        self.embed = make_embedding(cfg, seed=seed, dtype=dtype)
        self.blocks = [
            Block(cfg, seed=seed, dtype=dtype, name=f"blocks_{i}") for i in range(cfg.n_layers)
        ]
        self.ln_f = make_layer_norm(cfg, dtype=dtype, name="ln_f") if cfg.has_final_norm else None
        self.head = make_dense(cfg.d_model, cfg.vocab, seed=seed, dtype=dtype, name="head")
        self.batch_loss = training.BatchMeanLoss(dtype)  # what train reports per epoch

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

    def call(self, tokens, training=False):
        return self.logits_and_weights(tokens)[0]

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        loss = super().compute_loss(x, y, y_pred, sample_weight, training)
        self.batch_loss.update_state(loss)
        return loss

    def layers_by_name(self) -> dict[str, keras.layers.Layer]:
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
    return Transformer(cfg, seed=keras.random.SeedGenerator(seed), dtype=dtype)
