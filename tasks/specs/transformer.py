"""The tiny Transformer encoder's spec (scratch/transformer.py and the other three, which build on
attention.py's layer)."""

from __future__ import annotations

import functools

import numpy as np

from tasks import weights
from tasks.cases import tokens
from tasks.configs import FF_ACTIVATIONS, TransformerConfig
from tasks.specs.attention import attention_case, sized
from tasks.specs.base import GRADIENT_FLAGS, ModelSpec


def initial_weights(cfg: TransformerConfig, seed: int) -> dict[str, np.ndarray]:
    """The canonical uniform draw, except the LayerNorms: gain 1, shift 0, as every framework
    initialises them."""
    params = weights.init_uniform(cfg.param_shapes(), seed)
    for name in params:
        if name.split(".")[-2] in ("ln1", "ln2", "ln_f"):
            params[name] = (
                np.ones_like(params[name])
                if name.endswith(".weight")
                else np.zeros_like(params[name])
            )
    return params


SIZES = dict(vocab=7, d_model=8, n_heads=2, d_ff=12, n_layers=2, optimizer="sgd")
case = functools.partial(
    attention_case,
    "transformer",
    prefixes=[f"blocks.{i}.attn" for i in range(SIZES["n_layers"])],
)
CASES = (
    case(
        "post-relu-padding",
        TransformerConfig(**SIZES, norm="post", activation="relu"),
        "left",
        remainder=3,  # a last partial batch
    ),
    case(
        "pre-gelu-causal-fully-masked",
        TransformerConfig(**SIZES, norm="pre", activation="gelu", causal=True),
        "left",
        dtypes=("float64",),
    ),
    case(
        "post-gelu_tanh-stock-causal",
        TransformerConfig(**SIZES, norm="post", activation="gelu_tanh", causal=True, stock=True),
        "right",
        dtypes=("float64",),
    ),
    # final_norm against each placement's default: torch's default pre-LN encoder
    # (nn.TransformerEncoder(norm=None)) without ln_f, smooth (GELU) so float32 too; post-LN with one
    case(
        "pre-gelu-no-final-norm",
        TransformerConfig(**SIZES, norm="pre", final_norm=False, activation="gelu"),
        "right",
    ),
    case(
        "post-relu-final-norm",
        TransformerConfig(**SIZES, norm="post", final_norm=True, activation="relu"),
        "right",
        dtypes=("float64",),
    ),
)

DEFAULTS = {
    "reverse": dict(
        epochs=4,
        lr=0.005,
        batch_size=64,
        config=dict(d_model=32, n_heads=4, d_ff=64, n_layers=2, norm="post", activation="relu"),
    )
}
SPECS = (
    ModelSpec(
        name="transformer",
        file="transformer",
        tasks=("reverse",),
        defaults=DEFAULTS,
        summary="tiny Transformer encoder (sinusoidal positions, N blocks, pre-/post-LN, ReLU/GELU feed-forward)",
        config_type=TransformerConfig,
        make_config=sized(TransformerConfig, DEFAULTS, activation=True, final_norm=True),
        inputs=tokens,
        initial_weights=initial_weights,
        flags=GRADIENT_FLAGS | {"--activation", "--final-norm"},
        activations=FF_ACTIVATIONS,
        attention_maps=True,
        shared_files=("attention",),  # its blocks' attention layer lives in attention.py
        cases=CASES,
    ),
)
