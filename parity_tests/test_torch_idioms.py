"""torch_impl reads as PyTorch's own examples do, and the parity still holds: the models build the stock
nn.Dropout (the mask-replaying layer is the tests', tasks/replay/), train() seeds torch's global
generator inside torch.random.fork_rng (same seed, same weights, bit for bit; the caller's RNG state
untouched), one DataLoader over EpochSampler gives the shared batch order of every epoch, no train
changes the process-wide thread count, and a `device` argument runs the same code on a GPU."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from tasks.configs import LeNet5Config, MLPConfig, RNNConfig
from tasks.data import Dataset, batches, epoch_order
from tasks.registry import load_impl
from torch_impl.data import EpochSampler

MODELS = ("mlp", "lenet5", "rnn", "attention", "transformer", "perceptron")


def moons_like(n: int = 96, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4))
    y = (x[:, 0] * x[:, 1] > 0).astype(np.int64)
    return Dataset("toy", x, y, x[:16], y[:16], 2)


def trained_mlp(seed: int, global_seed: int) -> dict[str, np.ndarray]:
    """Two epochs with dropout, the global generator set to `global_seed` before train()."""
    from torch_impl import mlp

    model = mlp.create_model(MLPConfig(4, (16, 8), 2, "relu", "softmax", dropout=0.3), seed=0)
    torch.manual_seed(global_seed)
    state = torch.get_rng_state()
    mlp.train(model, moons_like(), epochs=2, lr=0.1, batch_size=16, seed=seed)
    assert torch.equal(torch.get_rng_state(), state), "train changed the caller's global RNG"
    return mlp.export_canonical(model)


# ----------------------------------------------------------------------------- stock dropout
@pytest.mark.parametrize("model", ["mlp", "lenet5"])
def test_models_build_the_stock_dropout(model):
    from tasks import parity

    impl = load_impl("torch_impl", model)
    cfg = MLPConfig(4, (8, 6), 2, dropout=0.3) if model == "mlp" else LeNet5Config(dropout=0.3)
    layers = parity.dropout_layers(impl.create_model(cfg, seed=0))
    assert len(layers) == 2 and all(type(layer) is torch.nn.Dropout for layer in layers)


def test_train_is_seeded_and_leaves_the_global_rng_alone():
    """nn.Dropout draws from torch's global generator: train seeds it with `seed` inside fork_rng.
    Whatever the global state before, one seed gives one result bit for bit; another seed other
    masks; and the caller's global state is as it was."""
    a, b, c = trained_mlp(3, global_seed=1), trained_mlp(3, global_seed=2), trained_mlp(4, 1)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert any(not np.array_equal(a[k], c[k]) for k in a)


# ----------------------------------------------------------------------------- the loop
def test_epoch_sampler_yields_the_shared_order_of_each_epoch():
    n, size, seed = 23, 5, 7
    batched, single = EpochSampler(n, seed, size), EpochSampler(n, seed)
    assert len(batched) == 5 and len(single) == n
    for epoch in range(3):
        batched.set_epoch(epoch)
        single.set_epoch(epoch)
        assert list(batched) == [b.tolist() for b in batches(n, size, seed, epoch)]
        assert list(single) == epoch_order(n, seed, epoch).tolist()
    assert list(batched) != [b.tolist() for b in batches(n, size, seed, 0)], "set_epoch did nothing"


def test_train_steps_through_every_epoch_in_the_shared_order():
    """Three epochs of train() equal train_step by hand over tasks.data.batches of each epoch (the one
    DataLoader must follow set_epoch), in float64 to rounding."""
    from torch_impl import mlp

    cfg, data = MLPConfig(4, (8,), 2, "tanh", "softmax"), moons_like()
    looped, by_hand = mlp.create_model(cfg, seed=0), mlp.create_model(cfg, seed=0)
    mlp.train(looped, data, epochs=3, lr=0.1, batch_size=16, seed=5)
    optimizer = mlp.make_optimizer(by_hand, 0.1)
    for epoch in range(3):
        for idx in batches(len(data.x_train), 16, 5, epoch):
            x, y = torch.as_tensor(data.x_train[idx]), torch.as_tensor(data.y_train[idx])
            mlp.train_step(by_hand, optimizer, x, y)
    a, b = mlp.export_canonical(looped), mlp.export_canonical(by_hand)
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_no_train_sets_the_process_wide_thread_count(monkeypatch):
    """The thread count is the caller's (OMP_NUM_THREADS, torch.set_num_threads), not a model's."""
    from torch_impl import recurrent

    def refuse(n):
        raise AssertionError(f"train called torch.set_num_threads({n})")

    monkeypatch.setattr(torch, "set_num_threads", refuse)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(12, 5, 3)), rng.integers(0, 2, size=12)
    model = recurrent.create_model(RNNConfig("gru", 3, 4, 2, "last"), seed=0)
    recurrent.train(model, Dataset("s", x, y, x, y, 2), epochs=1, lr=0.1, batch_size=4, seed=0)


# ----------------------------------------------------------------------------- device
@pytest.mark.parametrize("model", MODELS)
def test_every_entry_point_takes_a_device(model):
    impl = load_impl("torch_impl", model)
    names = ["create_model", "train", "evaluate"] + (["forward_backward"] * (model != "perceptron"))
    for name in names:
        device = inspect.signature(getattr(impl, name)).parameters.get("device")
        assert device is not None and device.default == "cpu", f"{model}.{name}"


DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("model", ["mlp", "lenet5", "gru", "attention", "transformer"])
def test_the_same_code_runs_on_any_device(model, device):
    """create_model / forward_backward / train / evaluate with `device`: the parity case's float64
    outputs, gradients (1e-10) and 20-step SGD trajectory (1e-9) equal the default CPU run's."""
    from tasks import parity, weights

    case = parity.CASES[model][0]
    impl = load_impl("torch_impl", case.model)
    reference = parity.compute(case, "torch_impl", "float64")
    params = weights.cast(weights.load(parity.canonical_file(case)), "float64")

    def loaded():
        net = impl.create_model(case.config, seed=0, dtype="float64", device=device)
        impl.load_canonical(net, params)
        return net

    x, y = parity.inputs(case, case.batch, "float64")
    for tensor, value in impl.forward_backward(loaded(), x, y, device=device).items():
        parity.assert_close(value, reference[tensor], 1e-10, f"{device} {tensor}")
    steps = case.batch * parity.TRAJECTORY_STEPS + getattr(case, "remainder", 0)
    x, y = parity.inputs(case, steps, "float64")
    net = loaded()
    data = Dataset(case.model, x, y, x[:1], y[:1], case.config.n_classes)
    impl.train(
        net, data, epochs=1, lr=parity.TRAJECTORY_LR, batch_size=case.batch, seed=case.seed,
        device=device,
    )  # fmt: skip
    for name, value in impl.export_canonical(net).items():
        parity.assert_close(value, reference[f"sgd.{name}"], 1e-9, f"{device} sgd.{name}")
    loss, accuracy = impl.evaluate(net, x, y, device=device)
    assert np.isfinite(loss) and 0 <= accuracy <= 1
