"""MLP parity: the same canonical weights give the same outputs, loss, gradients and SGD trajectory
in scratch, torch, Keras and Flax; plus the scratch backward against finite differences."""

from __future__ import annotations

import numpy as np
import pytest

from parity_tests.conftest import (
    assert_frameworks_agree_pairwise,
    assert_matches_scratch,
    numeric_grad,
    star_params,
)
from tasks import parity, weights
from tasks.configs import MLPConfig
from tasks.registry import FRAMEWORKS, load_impl


@pytest.mark.parametrize("case, framework, dtype, tensor", star_params("mlp"))
def test_matches_scratch(case, framework, dtype, tensor):
    """Each tensor of each framework against the scratch reference, at the stated tolerance."""
    assert_matches_scratch(case, framework, dtype, tensor)


@pytest.mark.parametrize("case", parity.CASES["mlp"], ids=lambda c: c.id)
def test_frameworks_agree_pairwise(case):
    """torch, Keras and Flax against each other in float64 (not only each against scratch)."""
    assert_frameworks_agree_pairwise(case)


# ----------------------------------------------------------------------------- scratch backward
@pytest.mark.parametrize("case", parity.CASES["mlp"], ids=lambda c: c.id)
def test_scratch_backward_matches_finite_differences(case):
    """Central differences in float64 on every parameter entry and every input entry (batch norm in
    train mode, dropout with a fixed supplied mask)."""
    impl = load_impl("scratch", "mlp")
    model = parity.create(impl, case, "scratch", "float64")  # dropout: the mask-replaying layer
    impl.load_canonical(model, weights.load(parity.canonical_file(case)))
    x, y = parity.inputs(case, case.batch, "float64")
    parity.supply_dropout_masks(case, "scratch", model, steps=1)
    analytic = impl.forward_backward(model, x, y)
    loss = lambda: impl.loss_fn(model.forward(x), y, case.config.head)[0]
    for prefix, layer in model.layers().items():
        for key, value in layer.params.items():
            parity.assert_close(
                analytic[f"grad.{prefix}.{key}"],
                numeric_grad(loss, value, 1e-6),
                1e-7,
                f"{prefix}.{key}",
            )
    parity.assert_close(analytic["grad.input"], numeric_grad(loss, x, 1e-6), 1e-7, "input")


# ----------------------------------------------------------------------------- canonical weights
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_load_rejects_bad_weights_and_leaves_model_unchanged(framework):
    cfg = MLPConfig(3, (4,), 2, "relu", "sigmoid")
    impl = load_impl(framework, "mlp")
    model = impl.create_model(cfg, seed=0, dtype="float64")
    before = impl.export_canonical(model)
    good = weights.init_uniform(cfg.param_shapes(), 7)
    bad = dict(good)
    del bad["head.bias"]  # missing
    bad["hidden.0.weight"] = np.zeros((3, 4))  # transposed: (in, out) instead of (out, in)
    bad["hidden.0.bias"] = good["hidden.0.bias"].astype(np.float32)  # wrong dtype
    bad["fc9.weight"] = np.zeros((1, 1))  # extra
    with pytest.raises(weights.CanonicalWeightsError) as info:
        impl.load_canonical(model, bad)
    message = str(info.value)
    for expected in (
        "missing head.bias",
        "hidden.0.weight: expected shape (4, 3), got (3, 4)",
        "hidden.0.bias: expected dtype float64, got float32",
        "extra fc9.weight",
    ):
        assert expected in message
    after = impl.export_canonical(model)
    assert all(np.array_equal(before[k], after[k]) for k in before), (
        "a failed load changed the model"
    )
    impl.load_canonical(model, good)  # and a good load still works afterwards
    assert all(np.array_equal(good[k], v) for k, v in impl.export_canonical(model).items())


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_batch_norm_replaces_the_hidden_biases(framework):
    """With batch norm the hidden dense layers have no bias (the norm's mean subtraction cancels it) and
    each norm holds gamma, beta and the running statistics; the head keeps its bias."""
    cfg = MLPConfig(3, (4, 5), 3, "relu", "softmax", batch_norm=True)
    impl = load_impl(framework, "mlp")
    params = impl.export_canonical(impl.create_model(cfg, seed=0, dtype="float64"))
    assert {k: v.shape for k, v in params.items()} == cfg.param_shapes()
    assert (
        "hidden.0.bias" not in params
        and "head.bias" in params
        and params["bn.1.running_var"].shape == (5,)
    )


def test_safetensors_round_trip_is_exact(tmp_path):
    params = weights.init_uniform(MLPConfig(3, (4, 5), 3, "tanh", "softmax").param_shapes(), 3)
    weights.save(tmp_path / "w.safetensors", params)
    loaded = weights.load(tmp_path / "w.safetensors")
    assert loaded.keys() == params.keys()
    assert all(
        np.array_equal(loaded[k], params[k]) and loaded[k].dtype == params[k].dtype for k in params
    )


def test_a_dropped_transpose_is_caught():
    """The check can fail: Keras weights loaded without the (out, in) -> (in, out) transpose."""
    case = parity.CASES["mlp"][1]
    impl = load_impl("tf_impl", "mlp")
    model = impl.create_model(case.config, seed=0, dtype="float64")
    params = weights.load(parity.canonical_file(case))
    impl.load_canonical(model, params)
    w = params["hidden.1.weight"]  # canonical (out, in) = (6, 7)
    model.hidden[1].kernel.assign(
        w.reshape(w.shape[::-1])
    )  # the bug: reshape to (in, out), no transpose
    x, y = parity.inputs(case, case.batch, "float64")
    broken = impl.forward_backward(model, x, y)["output"]
    reference = parity.compute(case, "scratch", "float64")["output"]
    with pytest.raises(AssertionError):
        parity.assert_close(broken, reference, 1e-10, "output")
