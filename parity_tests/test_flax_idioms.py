"""jax_impl reads as Flax NNX code: stock layers by default, every step compiled once per model config
and dtype (a second model of the same config traces nothing), no deprecated NNX call, and the GRU cell
written in the open is the stock nnx.GRUCell plus the b_hn it lacks."""

from __future__ import annotations

import contextlib
import dataclasses
import warnings

import numpy as np
import pytest

from tasks import parity, weights
from tasks.data import Dataset
from tasks.registry import load_impl

TRACE_EVENT = "/jax/core/compile/jaxpr_trace_duration"  # jax._src.dispatch.JAXPR_TRACE_EVENT


@contextlib.contextmanager
def traced():
    """The names of the functions JAX traces (to a jaxpr, before compiling) inside the block."""
    import jax

    names: list[str] = []

    def listener(event, duration, **kwargs):
        if event == TRACE_EVENT:
            names.append(kwargs.get("fun_name", "?"))

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield names
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def case_named(model: str, name: str):
    return next(c for c in parity.CASES[model] if c.name == name)


def run_once(case, dtype: str, masks: bool) -> None:
    """What a parity case does with a fresh model: forward_backward, 3 training steps, evaluate."""
    impl = load_impl("jax_impl", case.model)
    params = weights.cast(weights.load(parity.canonical_file(case)), dtype)
    model = parity.create(impl, case, "jax_impl", dtype)
    impl.load_canonical(model, params)
    x, y = parity.inputs(case, case.batch * 3, dtype)
    if masks:
        parity.supply_dropout_masks(case, "jax_impl", model, steps=1)
    impl.forward_backward(model, x[: case.batch], y[: case.batch])
    data = Dataset(case.model, x, y, x, y, case.config.n_classes)
    impl.train(model, data, epochs=1, lr=0.1, batch_size=case.batch, seed=0)
    impl.evaluate(model, x, y)


# one case per thing that once made nnx.jit retrace or that the idioms changed: a per-model partial
# (leaky slope), views with batch norm and dropout, the GRU cell written in the open, the stock
# attention's nnx.capture, the transformer's activations
COMPILED = [
    ("mlp", "softmax-leaky0.2"),
    ("lenet5", "relu-max-batchnorm-dropout"),
    ("gru", "sequence"),
    ("attention", "stock-padding+causal"),
    ("transformer", "pre-gelu-causal-fully-masked"),
]
# a batch no parity case, training default or other test runs (they use 4, 6, 8, 16, 32, ...)
UNIQUE_BATCH = 13


@pytest.mark.parametrize("model, name", COMPILED, ids=lambda v: str(v))
def test_a_second_model_of_the_same_config_traces_nothing(model, name):
    """forward_backward, the train step and evaluate are jitted (nnx.jit) and compiled once per model
    config and dtype: a second model of the same config reuses every compiled program (the optax
    transformation and the activations are the same objects, so the static graph is equal).

    At a batch of UNIQUE_BATCH, which no other test runs, so the first model's programs cannot
    have been compiled by an earlier test on this worker (it must trace them, as asserted) and
    no cache is cleared (jax.clear_caches() made every later test on the worker compile again)."""
    case = dataclasses.replace(case_named(model, name), batch=UNIQUE_BATCH)
    masks = bool(getattr(case.config, "dropout", 0))
    with traced() as first:
        run_once(case, "float64", masks)
    assert {"gradients", "train_step", "eval_step"} <= set(first), first
    with traced() as second:
        run_once(case, "float64", masks)
    assert second == [], second


def test_stock_dropout_by_default_and_its_modes():
    """create_model builds nnx.Dropout itself (the replaying layer only when a test injects it);
    training mode drops, evaluation (nnx.view) does not, and evaluating leaves the model training."""
    from flax import nnx

    from jax_impl.regularize import eval_view, train_view
    from tasks.replay.jax_impl import ReplayDropout

    case = case_named("mlp", "relu-batchnorm-dropout")
    impl = load_impl("jax_impl", "mlp")
    model = impl.create_model(case.config, seed=0, dtype="float64")
    assert all(type(d) is nnx.Dropout for d in model.dropouts)
    replay = parity.create(impl, case, "jax_impl", "float64")
    assert all(type(d) is ReplayDropout for d in replay.dropouts)
    assert all(d.deterministic for d in eval_view(model).dropouts)
    assert all(not d.deterministic for d in train_view(model).dropouts)
    assert all(not d.deterministic for d in model.dropouts), "a view leaves the model as it was"


@pytest.mark.parametrize(
    "model, name", [("mlp", "relu-batchnorm-dropout"), ("attention", "stock-padding+causal")]
)
def test_no_deprecated_flax_call(model, name):
    """No DeprecationWarning from Flax, JAX or optax while a model is built, trained and evaluated
    (Module.sow() outside nnx.capture() was one). float32 at UNIQUE_BATCH, so every step is traced
    here (asserted): a warning raised while tracing would not repeat for a program compiled by an
    earlier test."""
    case = dataclasses.replace(case_named(model, name), batch=UNIQUE_BATCH)
    with warnings.catch_warnings(), traced() as names:
        warnings.simplefilter("error", DeprecationWarning)
        run_once(case, "float32", bool(getattr(case.config, "dropout", 0)))
    assert {"gradients", "train_step", "eval_step"} <= set(names), names


def test_view_modes_reach_batch_norm():
    """The training view normalises with batch statistics and updates the running ones; the evaluation
    view uses the running statistics and leaves them alone."""
    import jax.numpy as jnp
    from flax import nnx

    from jax_impl.regularize import eval_view, make_batch_norm, train_view

    layer = make_batch_norm(3, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(0).normal(2.0, 3.0, size=(16, 3)))
    y = eval_view(layer)(x)
    np.testing.assert_array_equal(np.asarray(layer.mean.get_value()), 0.0)
    parity.assert_close(
        np.asarray(y), np.asarray(x) / np.sqrt(1 + 1e-5), 1e-15, "eval: (x - 0) / 1"
    )
    train_view(layer)(x)
    parity.assert_close(
        np.asarray(layer.mean.get_value()), 0.1 * np.asarray(x).mean(0), 1e-14, "mean"
    )


def test_gru_cell_is_the_stock_cell_plus_b_hn():
    """jax_impl's GRUCell with b_hn = 0 computes what nnx.GRUCell computes on the same dense layers
    (so it is the stock cell, not another GRU), and a non-zero b_hn changes the state."""
    import jax.numpy as jnp
    from flax import nnx

    from jax_impl.recurrent import GRUCell

    init = lambda key, shape, dtype: nnx.initializers.uniform(1.0)(key, shape, dtype) - 0.5
    ours = GRUCell(3, 4, init=init, dtype=jnp.float64, rngs=nnx.Rngs(0))
    stock = nnx.GRUCell(3, 4, dtype=jnp.float64, param_dtype=jnp.float64, rngs=nnx.Rngs(1))
    stock.dense_i.kernel.set_value(ours.dense_i.kernel.get_value())
    stock.dense_i.bias.set_value(ours.dense_i.bias.get_value())
    stock.dense_h.kernel.set_value(ours.dense_h.kernel.get_value())
    rng = np.random.default_rng(0)
    h, x = jnp.asarray(rng.normal(size=(2, 4))), jnp.asarray(rng.normal(size=(2, 3)))
    with_b_hn = np.asarray(ours(h, x)[0])
    ours.b_hn.set_value(jnp.zeros(4))
    np.testing.assert_array_equal(np.asarray(ours(h, x)[0]), np.asarray(stock(h, x)[0]))
    assert np.abs(with_b_hn - np.asarray(stock(h, x)[0])).max() > 1e-3


def test_stock_attention_fused_softmax_is_float32():
    """Why the stock attention layer sows its weights: with sow_weights=True nnx.MultiHeadAttention
    takes Flax's own weights path (softmax in the model's dtype); without it, it calls
    jax.nn.dot_product_attention, whose softmax is always float32 (1.1e-7 to 1.2e-7 off in float64,
    measured; docs/PORTING.md)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    import jax_impl  # noqa: F401  (float64 on)

    mha = nnx.MultiHeadAttention(
        2, 8, 8, 8, decode=False, dtype=jnp.float64, param_dtype=jnp.float64, rngs=nnx.Rngs(0)
    )
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 8)))
    fused = mha(x, x, x, deterministic=True)
    sown, _ = nnx.capture(mha, nnx.Intermediate)(x, x, x, deterministic=True, sow_weights=True)
    q, k, v = (layer(x) for layer in (mha.query, mha.key, mha.value))  # (B, T, NH, HS)
    w = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q / jnp.sqrt(4.0), k))  # float64 throughout
    exact = mha.out(jnp.einsum("bhqk,bkhd->bqhd", w, v))
    parity.assert_close(np.asarray(sown), np.asarray(exact), 1e-13, "sown: float64 softmax")
    with pytest.raises(AssertionError):
        parity.assert_close(np.asarray(fused), np.asarray(exact), 1e-10, "fused: float32 softmax")
