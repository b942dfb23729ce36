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
from tasks.data import Dataset
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


# ----------------------------------------------------------------------------- regression (issue 14)
def stock_torch_regressor(n_targets: int):
    """The oracle: a stock nn.Sequential(Linear, Identity, Linear, Identity, Linear), float64, each
    weight and bias redrawn from a seeded generator (non-zero biases, not only the default init);
    returns the module and its state_dict mapped to canonical with torch_impl.porting."""
    import torch
    from torch import nn

    stock = nn.Sequential(
        nn.Linear(5, 7), nn.Identity(), nn.Linear(7, 6), nn.Identity(), nn.Linear(6, n_targets)
    ).double()
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in stock.parameters():
            p.uniform_(-0.5, 0.5, generator=generator)
    return stock, to_canonical(stock.state_dict())


def to_canonical(native: dict) -> dict[str, np.ndarray]:
    """The Sequential's names (0., 2., 4.) -> hidden.0, hidden.1, head (the dense rule, as is)."""
    from torch_impl import porting

    out = {}
    for index, prefix in {0: "hidden.0", 2: "hidden.1", 4: "head"}.items():
        layer = {k: native[f"{index}.{k}"] for k in ("weight", "bias")}
        out.update(porting.dense_to_canonical(layer, f"{prefix}."))
    return out


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_stock_torch_identity_regressor_ported_into_each_framework(framework):
    """The stock module's outputs, nn.MSELoss() and every gradient (autograd on the stock module,
    its .grad mapped by the same rule) are what each framework computes from the ported weights."""
    import torch
    from torch import nn

    stock, canonical = stock_torch_regressor(3)
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(8, 5)), rng.normal(size=(8, 3))  # (B, D), (B, K) float targets
    x_t = torch.tensor(x, requires_grad=True)
    output = stock(x_t)
    loss = nn.MSELoss()(output, torch.tensor(y))
    loss.backward()
    grads = to_canonical({k: p.grad for k, p in stock.named_parameters()})
    expected = {
        "output": output.detach().numpy(),
        "loss": loss.item(),
        "grad.input": x_t.grad.numpy(),
        **{f"grad.{k}": v for k, v in grads.items()},
    }
    impl = load_impl(framework, "mlp")
    model = impl.create_model(MLPConfig(5, (7, 6), 3, "identity", "identity"), seed=0)
    impl.load_canonical(model, canonical)
    result = impl.forward_backward(model, x, y)
    for tensor, reference in expected.items():
        parity.assert_close(result[tensor], reference, 1e-12, f"{framework} {tensor}")


def sklearn_regressor(n_targets: int, lr: float):
    """A stock scikit-learn MLPRegressor(activation="identity") after one partial_fit (its own
    Glorot init, one SGD step), with its data; plain SGD: no momentum, no L2 (alpha=0)."""
    from sklearn.neural_network import MLPRegressor

    rng = np.random.default_rng(7)
    x, y = rng.normal(size=(16, 5)), rng.normal(size=(16, n_targets))
    regressor = MLPRegressor(
        hidden_layer_sizes=(7, 6), activation="identity", solver="sgd", alpha=0.0,
        batch_size=16, learning_rate_init=lr, momentum=0.0, nesterovs_momentum=False,
        shuffle=False, random_state=0,
    )  # fmt: skip
    fit_y = y[:, 0] if n_targets == 1 else y  # one target: sklearn wants y (n,)
    regressor.partial_fit(x, fit_y)
    return regressor, x, y, fit_y


def sklearn_canonical(regressor) -> dict[str, np.ndarray]:
    """coefs_[i] is (in, out) like a Keras kernel: .T to canonical; intercepts_[i] as is."""
    names = ["hidden.0", "hidden.1", "head"]
    return {
        **{f"{n}.weight": w.T.copy() for n, w in zip(names, regressor.coefs_)},
        **{f"{n}.bias": b.copy() for n, b in zip(names, regressor.intercepts_)},
    }


@pytest.mark.parametrize("n_targets", [1, 3])
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_sklearn_mlp_regressor_ported_and_its_sgd_step(framework, n_targets):
    """scikit-learn's MLPRegressor is the oracle: each framework predicts what it predicts; its
    loss_ (0.5 * the mean squared error) is half of ours; and its SGD step at lr η equals ours at
    lr η K / 2 for K targets (its gradient is that of 0.5 * the sum over targets of each target's
    mean squared error: deltas = output - y, divided by the batch only), docs/PORTING.md MLP."""
    lr = 0.05
    regressor, x, y, fit_y = sklearn_regressor(n_targets, lr)
    before = sklearn_canonical(regressor)
    impl = load_impl(framework, "mlp")
    cfg = MLPConfig(5, (7, 6), n_targets, "identity", "identity")
    model = impl.create_model(cfg, seed=0)
    impl.load_canonical(model, before)
    result = impl.forward_backward(model, x, y)
    predicted = regressor.predict(x).reshape(len(x), n_targets)
    parity.assert_close(result["output"], predicted, 1e-12, f"{framework} output")
    regressor.partial_fit(x, fit_y)  # one more step; loss_ is the loss at `before`
    parity.assert_close(result["loss"], 2 * regressor.loss_, 1e-12, f"{framework} loss")
    data = Dataset("mlp", x, y, x[:1], y[:1], n_targets)
    impl.train(model, data, epochs=1, lr=lr * n_targets / 2, batch_size=len(x), seed=0)
    after, stepped = impl.export_canonical(model), sklearn_canonical(regressor)
    for name, value in stepped.items():
        assert not np.allclose(value, before[name], rtol=0, atol=1e-6), f"{name} did not move"
        parity.assert_close(after[name], value, 1e-12, f"{framework} {name} after one step")


def test_flax_load_model_equals_create_and_load(monkeypatch):
    """parity.compute builds its Flax models with jax_impl.porting.load_model (nnx.eval_shape, then
    the canonical weights, its random streams reseeded). The batch-norm and dropout case run again
    on create_model + load_canonical gives every tensor bit for bit (forward, gradients, 20 SGD
    steps; the programs are the cached ones); both models hold the same variables, dropout keys
    included; load_model draws its initial weights only abstractly (create_model's draws are XLA
    programs compiled per shape); a checkpoint that lacks a tensor still raises."""
    import jax
    from flax import nnx

    from jax_impl.porting import abstract_model, load_model

    abstract_model.cache_clear()  # traced again here, not taken from an earlier test's build
    case = next(c for c in parity.CASES["mlp"] if c.name == "relu-batchnorm-dropout")
    impl = load_impl("jax_impl", "mlp")
    params = weights.load(parity.canonical_file(case))
    draws, uniform = [], jax.random.uniform

    def recorded(key, *args, **kwargs):  # jax_impl/initializers.py calls jax.random.uniform
        draws.append(isinstance(key, jax.core.Tracer))
        return uniform(key, *args, **kwargs)

    monkeypatch.setattr(jax.random, "uniform", recorded)
    model = parity.create(impl, case, "jax_impl", "float64", params)
    abstract, draws[:] = list(draws), []
    reference = parity.create(impl, case, "jax_impl", "float64")
    assert abstract and all(abstract) and draws and not any(draws), (abstract, draws)
    impl.load_canonical(reference, params)

    def variables(m):
        key = lambda v: jax.dtypes.issubdtype(v.dtype, jax.dtypes.prng_key)
        value = lambda v: np.asarray(jax.random.key_data(v) if key(v) else v)
        flat = nnx.to_flat_state(nnx.state(m))  # the replaying dropout's unset mask: None
        return {path: value(v.get_value()) for path, v in flat if v.get_value() is not None}

    expected, got = variables(reference), variables(model)
    assert got.keys() == expected.keys()
    assert all(np.array_equal(got[k], v) for k, v in expected.items())
    # parity.compute's steps on the created model
    x, y = parity.inputs(case, case.batch, "float64")
    parity.supply_dropout_masks(case, "jax_impl", reference, steps=1)
    again = impl.forward_backward(reference, x, y)
    reference = parity.create(impl, case, "jax_impl", "float64")
    impl.load_canonical(reference, params)
    x, y = parity.inputs(case, case.batch * parity.TRAJECTORY_STEPS + case.remainder, "float64")
    parity.supply_dropout_masks(case, "jax_impl", reference, steps=parity.TRAJECTORY_STEPS)
    data = Dataset("mlp", x, y, x[:1], y[:1], case.config.n_classes)
    impl.train(
        reference, data, epochs=1, lr=parity.TRAJECTORY_LR, batch_size=case.batch, seed=case.seed
    )
    steps = parity.TRAJECTORY_STEPS
    trained = parity.running_var_as_torch(
        case, "jax_impl", impl.export_canonical(reference), params, steps
    )
    again |= {f"sgd.{k}": v for k, v in trained.items()}
    computed = parity.compute(case, "jax_impl", "float64")
    assert not np.array_equal(computed["sgd.head.weight"], params["head.weight"])
    for tensor, value in again.items():
        assert np.array_equal(computed[tensor], value), tensor
    with pytest.raises(weights.CanonicalWeightsError, match="missing head.bias"):
        load_model(impl, case.config, {k: v for k, v in params.items() if k != "head.bias"})
