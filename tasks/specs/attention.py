"""The multi-head self-attention layer's spec (scratch/attention.py and the other three)."""

from __future__ import annotations

import functools

from tasks.cases import Case, tokens
from tasks.configs import AttentionConfig
from tasks.specs.base import GRADIENT_FLAGS, ModelSpec


def sized(config_type: type, defaults: dict, activation: bool = False, final_norm: bool = False):
    """make_config for a token model: the vocabulary from the data, the sizes (d_model, n_heads,
    ...) from the task's defaults["config"], the optimiser the run uses, and with `activation`
    the feed-forward activation given, with `final_norm` the final LayerNorm's choice given."""

    def make_config(data, opts):
        from tasks.configs import FF_ACTIVATIONS

        sizes = dict(defaults.get(data.name, {}).get("config", {}))  # d_model, n_heads, ...
        if activation and opts.activation in FF_ACTIVATIONS:
            sizes["activation"] = opts.activation
        if final_norm and getattr(opts, "final_norm", None) is not None:
            sizes["final_norm"] = opts.final_norm
        if opts.optimizer in ("sgd", "adam"):  # the config records the optimiser the run uses
            sizes["optimizer"] = opts.optimizer
        return config_type(vocab=data.n_classes, **sizes)

    return make_config


def attention_case(model, name, config, pad, prefixes, **kw) -> Case:
    """A case whose analytically zero key-bias gradients are measured against the size of the same
    layer's value-weight gradients (the query/key gradients are themselves small near uniform
    attention); `prefixes` names each attention layer, one attention map each."""
    return Case(
        model, name, config, functools.partial(tokens, pad=pad), batch=4,
        extra_outputs=tuple(f"attn_weights.{i}" for i in range(len(prefixes))),
        scale_from=tuple((f"grad.{p}.k.bias", f"grad.{p}.v.weight") for p in prefixes),
        scale_from_float32=tuple((f"grad.{p}.{t}", f"grad.{p}.v.weight")
                                 for p in prefixes for t in ("q.weight", "q.bias", "k.weight")),
        **kw,
    )  # fmt: skip


# Hand-written and stock layers, key-padding and causal masks, and a case with fully masked rows
# (causal + left padding: a PAD query at the start may attend to nothing). Trajectories use SGD.
# float32 runs on the padding cases (hand-written and stock); float64 on all, to keep the suite short.
SIZES = dict(vocab=7, d_model=8, n_heads=2, optimizer="sgd")
case = functools.partial(attention_case, "attention", prefixes=["attn"])
CASES = (
    case("hand-nomask", AttentionConfig(**SIZES), "none", dtypes=("float64",)),
    case("hand-padding", AttentionConfig(**SIZES), "right", remainder=3),
    case(
        "hand-causal-fully-masked",
        AttentionConfig(**SIZES, causal=True),
        "left",
        dtypes=("float64",),
    ),
    case("stock-padding+causal", AttentionConfig(**SIZES, causal=True, stock=True), "right"),
)

# Adam (torch/optax form; Keras's epsilon-hat form differs by ~eps/sqrt(v)); "config" holds the model sizes
DEFAULTS = {"reverse": dict(epochs=8, lr=0.01, batch_size=64, config=dict(d_model=32, n_heads=4))}
SPECS = (
    ModelSpec(
        name="attention",
        file="attention",
        tasks=("reverse",),
        defaults=DEFAULTS,
        summary="one multi-head self-attention layer (hand-written softmax(QK^T/sqrt(d) + mask) V; or the stock layer)",
        config_type=AttentionConfig,
        make_config=sized(AttentionConfig, DEFAULTS),
        inputs=tokens,
        flags=GRADIENT_FLAGS,
        attention_maps=True,
        cases=CASES,
    ),
)
