"""scratch/layers.py, the layers every scratch model builds from: each backward against central
differences, gradients that add up over backward passes until zero_grad (as autograd's `.grad`),
a train step that starts from zero gradients, the stock dropout's draws, the losses against torch."""

from __future__ import annotations

import numpy as np
import pytest

from parity_tests.conftest import numeric_grad
from scratch import layers
from tasks import parity, weights


def layer_cases():
    """(layer, input shape): those not checked in test_lenet5, test_attention, test_transformer."""
    rng = np.random.default_rng(0)
    return {
        "dense-3d": (layers.Dense(5, 4, rng=rng), (2, 3, 5)),  # a token axis: (B, T, in)
        "dense-no-bias": (layers.Dense(5, 4, rng=rng, bias=False), (3, 5)),
        "leaky-relu": (layers.LeakyReLU(0.1), (3, 5)),
        "sigmoid": (layers.Sigmoid(), (3, 5)),
        "batch-norm-dense": (layers.BatchNorm(5), (6, 5)),
        "batch-norm-conv": (layers.BatchNorm(3), (2, 3, 4, 4)),
        # zero padding: the border's gradient is cut off; a non-square map catches a swapped crop
        "conv2d-padding": (layers.Conv2d(2, 3, 3, rng=rng, padding=2), (2, 2, 5, 4)),
    }


@pytest.mark.parametrize("name", list(layer_cases()))
def test_scratch_layer_backward_matches_finite_differences(name):
    """Input and parameter gradients of loss = sum(probe * y), float64 (batch norm in train mode:
    its running statistics move on every forward but do not enter the output)."""
    layer, shape = layer_cases()[name]
    rng = np.random.default_rng(1)
    x = rng.normal(size=shape)
    for key in getattr(layer, "params", {}):  # not the all-ones / all-zeros start of a batch norm
        layer.params[key] = rng.normal(size=layer.params[key].shape)
    probe = rng.normal(size=layer.forward(x).shape)
    loss = lambda: float(np.sum(probe * layer.forward(x)))
    layers.zero_grad([layer] if hasattr(layer, "params") else [])
    layer.forward(x)
    dx = layer.backward(probe)
    grads = {k: v.copy() for k, v in getattr(layer, "grads", {}).items()}
    parity.assert_close(dx, numeric_grad(loss, x), 1e-7, f"{name} input")
    for key, value in getattr(layer, "params", {}).items():
        parity.assert_close(grads[key], numeric_grad(loss, value), 1e-7, f"{name} {key}")


def parameter_layers():
    rng = np.random.default_rng(2)
    return {
        "dense": (layers.Dense(4, 3, rng=rng), rng.normal(size=(5, 4))),
        "conv2d": (layers.Conv2d(2, 3, 3, rng=rng), rng.normal(size=(2, 2, 6, 6))),
        "embedding": (layers.Embedding(6, 3, rng=rng), np.array([[1, 2, 1], [0, 5, 1]])),
        "layer-norm": (layers.LayerNorm(4), rng.normal(size=(2, 3, 4))),
        "batch-norm": (layers.BatchNorm(4), rng.normal(size=(5, 4))),
    }


@pytest.mark.parametrize("name", list(parameter_layers()))
def test_backward_adds_to_the_gradients_until_zero_grad(name):
    """Two backward passes leave twice one pass's gradient (a layer used twice sums both uses, as
    autograd does); zero_grad starts again from zero. A layer that overwrote fails the first."""
    layer, x = parameter_layers()[name]
    probe = np.random.default_rng(3).normal(size=layer.forward(x).shape)
    layers.zero_grad([layer])
    layer.backward(probe)
    once = {k: v.copy() for k, v in layer.grads.items()}
    assert all(np.any(g != 0) for g in once.values()), name
    layer.forward(x)
    layer.backward(probe)
    for key, g in layer.grads.items():
        np.testing.assert_allclose(g, 2 * once[key], rtol=1e-14, atol=0, err_msg=key)
    layers.zero_grad([layer])
    assert all(np.all(g == 0) for g in layer.grads.values())


@pytest.mark.parametrize("model", ["mlp", "lenet5", "rnn", "attention", "transformer"])
def test_train_step_starts_from_zero_gradients(model):
    """After two train steps, every gradient is the second batch's alone: the step zeroes before its
    backward (forward_backward at the weights the second step started from gives the same)."""
    from tasks.registry import load_impl

    impl, case = load_impl("scratch", model), parity.CASES[model][0]
    net = impl.create_model(case.config, seed=0)
    x, y = parity.inputs(case, 2 * case.batch, "float64")
    first, second = slice(0, case.batch), slice(case.batch, 2 * case.batch)
    optimizer = impl.make_optimizer(net, 0.01)
    impl.train_step(net, optimizer, x[first], y[first])
    before = impl.export_canonical(net)
    impl.train_step(net, optimizer, x[second], y[second])
    if model == "rnn":  # canonical names: the head's weight and bias are W_hy and b_y
        stepped = {f"grad.{k}": g for k, g in impl.to_canonical(net, grads=True).items()}
    else:
        stepped = {
            f"grad.{p}.{k}": g for p, layer in net.layers().items() for k, g in layer.grads.items()
        }
    reference = impl.create_model(case.config, seed=0)
    impl.load_canonical(reference, before)
    expected = impl.forward_backward(reference, x[second], y[second])
    for name, g in stepped.items():
        np.testing.assert_allclose(g, expected[name], rtol=1e-12, atol=1e-15, err_msg=name)


def test_stock_dropout_draws_from_the_generator_it_is_given():
    """The same seed gives the same mask, the next call another; float32 stays float32; eval mode
    is the identity."""
    x = np.ones((50, 40), np.float32)
    a, b = (layers.Dropout(0.5, rng=np.random.default_rng(7)) for _ in range(2))
    first = a.forward(x)
    np.testing.assert_array_equal(first, b.forward(x))
    assert not np.array_equal(first, a.forward(x))
    assert first.dtype == np.float32 and set(np.unique(first)) == {0.0, 2.0}
    a.training = False
    assert a.forward(x) is x and a.backward(x) is x


def test_losses_match_torch():
    """cross_entropy (with and without ignore_index), BCE with logits and the mean squared error,
    value and gradient, against torch's F.cross_entropy, F.binary_cross_entropy_with_logits and
    nn.MSELoss in float64."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(4)
    logits, y = rng.normal(size=(3, 4, 5)), rng.integers(0, 5, (3, 4))
    y[0, :2] = 0  # some positions to ignore
    for ignore in (None, 0):
        loss, dlogits = layers.cross_entropy(logits, y, ignore_index=ignore)
        t = torch.tensor(logits, requires_grad=True)
        kwargs = {} if ignore is None else {"ignore_index": ignore}
        expected = F.cross_entropy(t.reshape(-1, 5), torch.tensor(y).reshape(-1), **kwargs)
        expected.backward()
        parity.assert_close(loss, expected.item(), 1e-14, f"cross_entropy {ignore}")
        parity.assert_close(dlogits, t.grad.numpy(), 1e-14, f"d cross_entropy {ignore}")
    z, target = rng.normal(size=7) * 3, rng.integers(0, 2, 7)
    loss, dz = layers.binary_cross_entropy_with_logits(z, target)
    t = torch.tensor(z, requires_grad=True)
    expected = F.binary_cross_entropy_with_logits(t, torch.tensor(target, dtype=torch.float64))
    expected.backward()
    parity.assert_close(loss, expected.item(), 1e-14, "bce")
    parity.assert_close(dz, t.grad.numpy(), 1e-14, "d bce")
    pred, target = rng.normal(size=(6, 3)), rng.normal(size=(6, 3))  # a regression's (B, K)
    loss, dpred = layers.mean_squared_error(pred, target)
    t = torch.tensor(pred, requires_grad=True)
    expected = torch.nn.MSELoss()(t, torch.tensor(target))  # reduction "mean": over all B * K
    expected.backward()
    parity.assert_close(loss, expected.item(), 1e-14, "mse")
    parity.assert_close(dpred, t.grad.numpy(), 1e-14, "d mse")


@pytest.mark.parametrize("model", ["mlp", "lenet5", "rnn", "attention", "transformer"])
def test_float32_model_computes_in_float32(model):
    """Every output and gradient of a float32 model is float32: no float64 constant (a loss weight,
    a dropout scale) promotes the backward to float64, which would change the numbers and the speed."""
    from tasks.registry import load_impl

    impl, case = load_impl("scratch", model), parity.CASES[model][-1]
    net = parity.create(impl, case, "scratch", "float32")
    impl.load_canonical(net, weights.cast(weights.load(parity.canonical_file(case)), "float32"))
    x, y = parity.inputs(case, case.batch, "float32")
    for name, value in impl.forward_backward(net, x, y).items():
        if np.asarray(value).dtype.kind == "f":
            assert np.asarray(value).dtype == np.float32, name
