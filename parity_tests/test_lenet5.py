"""LeNet-5: parameter count, parity of every tensor in four frameworks (both poolings), the scratch
layers against finite differences and the lesson's loop convolution, the layout rules (a converter
without the flatten permutation must fail), the digits32/MNIST inputs, and one default training run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from parity_tests.conftest import (
    assert_frameworks_agree_pairwise,
    assert_matches_scratch,
    numeric_grad,
    star_params,
)
from scratch import layers
from tasks import parity, train, weights
from tasks.bench import conv2d_loop
from tasks.configs import LeNet5Config
from tasks.data import digits, digits32, mnist, pad_to, resize_bilinear, write_idx
from tasks.registry import FRAMEWORKS, load_impl

scratch = load_impl("scratch", "lenet5")


# ----------------------------------------------------------------------------- sizes
def test_parameter_count_is_61706():
    shapes = LeNet5Config().param_shapes()
    assert LeNet5Config().flat_features == 16 * 5 * 5
    assert sum(int(np.prod(s)) for s in shapes.values()) == 61_706
    assert shapes["conv1.weight"] == (6, 1, 5, 5) and shapes["fc1.weight"] == (120, 400)


def test_d2l_padding_keeps_the_papers_sizes():
    """28x28 inputs with conv1 padded by 2 (d2l's LeNet) give the paper's 28x28 and 10x10 maps and
    the same 61,706 parameters; padding conv2 too gives 16 * 7 * 7 inputs to fc1."""
    d2l = LeNet5Config(image_size=28, padding=(2, 0), activation="sigmoid")
    assert d2l.conv_sizes == (28, 10) and d2l.param_shapes() == LeNet5Config().param_shapes()
    both = LeNet5Config(image_size=28, padding=(2, 2))
    assert both.conv_sizes == (28, 14) and both.param_shapes()["fc1.weight"] == (120, 784)
    with pytest.raises(ValueError, match="padding"):
        LeNet5Config(padding=(-1, 0))


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_every_framework_builds_61706_parameters(framework):
    impl = load_impl(framework, "lenet5")
    params = impl.export_canonical(impl.create_model(LeNet5Config(), seed=0, dtype="float32"))
    assert {k: v.shape for k, v in params.items()} == LeNet5Config().param_shapes()
    assert sum(v.size for v in params.values()) == 61_706


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_batch_norm_replaces_the_hidden_biases_in_every_framework(framework):
    """With batch norm: no bias on conv1, conv2, fc1, fc2 (the norm cancels it), gamma and beta on bn1..bn4:
    61,706 - 226 biases + 2 * 226 = 61,932 trainable numbers, plus 452 running statistics."""
    cfg = LeNet5Config(batch_norm=True, dropout=0.5)
    impl = load_impl(framework, "lenet5")
    params = impl.export_canonical(impl.create_model(cfg, seed=0, dtype="float32"))
    assert {k: v.shape for k, v in params.items()} == cfg.param_shapes()
    statistics = sum(
        v.size for k, v in params.items() if k.endswith(("running_mean", "running_var"))
    )
    assert sum(v.size for v in params.values()) - statistics == 61_932 and statistics == 452


# ----------------------------------------------------------------------------- parity
@pytest.mark.parametrize("case, framework, dtype, tensor", star_params("lenet5"))
def test_matches_scratch(case, framework, dtype, tensor):
    """Each tensor of each framework against the scratch reference, at the stated tolerance."""
    assert_matches_scratch(case, framework, dtype, tensor)


@pytest.mark.parametrize("case", parity.CASES["lenet5"], ids=lambda c: c.id)
def test_frameworks_agree_pairwise(case):
    """torch, Keras and Flax against each other in float64 (not only each against scratch)."""
    assert_frameworks_agree_pairwise(case)


# ----------------------------------------------------------------------------- scratch layers
def layer_cases():
    rng = np.random.default_rng(0)
    return {
        "conv2d": (layers.Conv2d(2, 3, 3, rng=rng), (2, 2, 7, 6)),  # non-square input
        "avgpool": (layers.AvgPool2d(), (2, 3, 7, 6)),  # odd height: the last row is dropped
        "maxpool": (layers.MaxPool2d(), (2, 3, 7, 6)),
        "flatten": (layers.Flatten(), (2, 3, 4, 5)),
        "dense": (layers.Dense(5, 4, rng=rng), (3, 5)),
        "tanh": (layers.Tanh(), (3, 5)),
        "relu": (layers.ReLU(), (3, 5)),
    }


@pytest.mark.parametrize("name", list(layer_cases()))
def test_scratch_layer_backward_matches_finite_differences(name):
    """Every layer's hand-written backward, input and parameters, against central differences in float64."""
    layer, shape = layer_cases()[name]
    rng = np.random.default_rng(1)
    x = rng.normal(size=shape)
    probe = rng.normal(size=layer.forward(x).shape)  # loss = sum(probe * y): dy = probe
    loss = lambda: float(np.sum(probe * layer.forward(x)))
    layer.forward(x)
    dx = layer.backward(probe)
    grads = {k: v.copy() for k, v in getattr(layer, "grads", {}).items()}
    parity.assert_close(dx, numeric_grad(loss, x), 1e-7, f"{name} input")
    for key, value in getattr(layer, "params", {}).items():
        parity.assert_close(grads[key], numeric_grad(loss, value), 1e-7, f"{name} {key}")


@pytest.mark.parametrize("case", parity.CASES["lenet5"][1:], ids=lambda c: c.id)
def test_whole_scratch_model_matches_finite_differences(case):
    """The assembled LeNet-5 (relu + max pooling; then with batch norm in train mode and dropout with
    a fixed mask; the padded ones): directional derivatives along random directions. The absolute
    bound is the central difference's own rounding, 2^-52 |loss| / eps (5e-10), times 10: sigmoid's
    small conv1 derivatives (d2l's case: 9.4e-5) are otherwise below what eps = 1e-6 resolves."""
    model = parity.create(scratch, case, "scratch", "float64")  # dropout: the mask-replaying layer
    scratch.load_canonical(model, weights.load(parity.canonical_file(case)))
    x, y = parity.inputs(
        case, case.batch if case.config.dropout else 2, "float64"
    )  # a mask is (batch, width)
    parity.supply_dropout_masks(case, "scratch", model, steps=1)
    analytic = scratch.forward_backward(model, x, y)
    rng, eps = np.random.default_rng(2), 1e-6
    loss = lambda: scratch.loss_fn(model.forward(x), y)[0]
    tensors = {
        f"{p}.{k}": layer.params[k] for p, layer in model.layers().items() for k in layer.params
    } | {"input": x}
    for name, value in tensors.items():
        direction = rng.normal(size=value.shape)
        value += eps * direction
        up = loss()
        value -= 2 * eps * direction
        down = loss()
        value += eps * direction
        numeric = (up - down) / (2 * eps)
        atol = 10 * np.finfo(np.float64).eps * abs(up) / eps
        np.testing.assert_allclose(
            np.sum(analytic[f"grad.{name}"] * direction),
            numeric,
            rtol=1e-6,
            atol=atol,
            err_msg=name,
        )


def test_scratch_conv_matches_the_lesson_loop():
    """im2col + matmul gives the loop convolution's numbers (the loop is only an oracle)."""
    rng = np.random.default_rng(3)
    x, w, b = rng.normal(size=(3, 2, 9, 8)), rng.normal(size=(4, 2, 5, 5)), rng.normal(size=4)
    conv = layers.Conv2d(2, 4, 5, rng=rng)
    conv.params.update(weight=w, bias=b)
    parity.assert_close(conv.forward(x), conv2d_loop(x, w, b), 1e-13, "conv forward")


def test_col2im_equals_the_full_correlation_with_the_rotated_kernel():
    """The conv input gradient two ways: col2im of dcols, and pad(dy) correlated with rot180(W)^T."""
    rng = np.random.default_rng(4)
    conv = layers.Conv2d(3, 4, 5, rng=rng)
    x = rng.normal(size=(2, 3, 12, 11))
    dy = rng.normal(size=conv.forward(x).shape)
    dx = conv.backward(dy)
    w_rot = conv.params["weight"][:, :, ::-1, ::-1].transpose(
        1, 0, 2, 3
    )  # (O, C, k, k) -> (C, O, k, k)
    padded = np.pad(dy, ((0, 0), (0, 0), (4, 4), (4, 4)))
    parity.assert_close(dx, conv2d_loop(padded, w_rot, np.zeros(3)), 1e-13, "conv input gradient")


def test_max_pool_sends_the_gradient_to_the_first_maximum_like_torch():
    import torch

    x = np.array([[[[1.0, 1.0], [0.5, 1.0]]]])  # a three-way tie
    pool = layers.MaxPool2d()
    pool.forward(x)
    dx = pool.backward(np.ones((1, 1, 1, 1)))
    xt = torch.tensor(x, requires_grad=True)
    torch.nn.functional.max_pool2d(xt, 2).sum().backward()
    np.testing.assert_array_equal(dx, xt.grad.numpy())
    np.testing.assert_array_equal(dx, [[[[1.0, 0.0], [0.0, 0.0]]]])


# ----------------------------------------------------------------------------- layouts
@pytest.mark.parametrize("framework", ["tf_impl", "jax_impl"])
def test_fc1_permutation_is_the_nchw_to_nhwc_flatten(framework):
    """flatten(NCHW) @ W.T == flatten(NHWC) @ kernel: the identity the converter rests on (fc1 loads
    through porting.dense_from_canonical with flatten_from=(C, H, W), see canonical_layers)."""
    porting, cfg = load_impl(framework, "porting"), LeNet5Config()
    flat = (cfg.channels[1], cfg.feature_size, cfg.feature_size)
    rng = np.random.default_rng(5)
    features = rng.normal(size=(3, 16, 5, 5))  # (B, C, H, W) after pool2
    w = rng.normal(size=(120, 400))
    expected = features.reshape(3, -1) @ w.T  # canonical: (C, H, W) order
    nhwc = features.transpose(0, 2, 3, 1).reshape(3, -1)  # Keras/Flax: (H, W, C) order
    native = porting.dense_from_canonical({"weight": w}, flatten_from=flat)
    kernel = native[0] if framework == "tf_impl" else native["kernel"]
    parity.assert_close(nhwc @ kernel, expected, 1e-13, "fc1")
    back = porting.dense_to_canonical(native, flatten_from=flat)["weight"]
    np.testing.assert_array_equal(back, w)


@pytest.mark.parametrize("framework", ["tf_impl", "jax_impl"])
@pytest.mark.parametrize(
    "broken", ["fc1 rows not permuted", "conv kernel reshaped, not transposed"]
)
def test_a_converter_without_the_layout_change_is_caught(framework, broken):
    """The check can fail: weights loaded without the fc1 row permutation (only .T), or with the
    conv kernel reshaped to (kh, kw, in_c, out_c) instead of transposed, disagree with scratch."""
    case = parity.CASES["lenet5"][0]
    impl = load_impl(framework, "lenet5")
    model = impl.create_model(case.config, seed=0, dtype="float64")
    params = weights.load(parity.canonical_file(case))
    impl.load_canonical(model, params)
    if broken == "fc1 rows not permuted":
        name, value = (
            "fc1.weight",
            params["fc1.weight"].T,
        )  # (out, in) -> (in, out) with rows still in (C, H, W) order
    else:
        name, value = "conv2.weight", params["conv2.weight"].reshape(5, 5, 6, 16)
    variable = model.variables_by_name()[name]
    variable.assign(value) if framework == "tf_impl" else variable.set_value(value)
    x, y = parity.inputs(case, case.batch, "float64")
    broken_out = impl.forward_backward(model, x, y)["output"]
    with pytest.raises(AssertionError):
        parity.assert_close(
            broken_out, parity.compute(case, "scratch", "float64")["output"], 1e-10, "output"
        )


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_load_rejects_bad_weights_and_leaves_model_unchanged(framework):
    impl, cfg = load_impl(framework, "lenet5"), LeNet5Config()
    model = impl.create_model(cfg, seed=0, dtype="float64")
    before = impl.export_canonical(model)
    good = weights.init_uniform(cfg.param_shapes(), 7)
    bad = dict(good)
    del bad["fc3.bias"]  # missing
    bad["conv1.weight"] = np.zeros(
        (5, 5, 1, 6)
    )  # the Keras/Flax layout instead of the canonical one
    bad["fc1.weight"] = good["fc1.weight"].astype(np.float32)  # wrong dtype
    with pytest.raises(weights.CanonicalWeightsError) as info:
        impl.load_canonical(model, bad)
    message = str(info.value)
    for expected in (
        "missing fc3.bias",
        "conv1.weight: expected shape (6, 1, 5, 5), got (5, 5, 1, 6)",
        "fc1.weight: expected dtype float64, got float32",
    ):
        assert expected in message
    after = impl.export_canonical(model)
    assert all(np.array_equal(before[k], after[k]) for k in before), (
        "a failed load changed the model"
    )


# ----------------------------------------------------------------------------- a stock LeNet-5 as the oracle
D2L = LeNet5Config(image_size=28, padding=(2, 0), activation="sigmoid", pooling="avg")
D2L_LAYERS = {"0": "conv1", "3": "conv2", "7": "fc1", "9": "fc2", "11": "fc3"}  # Sequential index


def stock_d2l_lenet(seed: int):
    """d2l's LeNet-5, stock torch.nn layers only, in float64 with torch's default init (non-zero
    biases), drawn from its own seed without touching the global generator."""
    from torch import nn

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2), nn.Sigmoid(), nn.AvgPool2d(2),
            nn.Conv2d(6, 16, 5), nn.Sigmoid(), nn.AvgPool2d(2), nn.Flatten(),
            nn.Linear(400, 120), nn.Sigmoid(), nn.Linear(120, 84), nn.Sigmoid(), nn.Linear(84, 10),
        ).double()  # fmt: skip


def d2l_to_canonical(tensors: dict) -> dict[str, np.ndarray]:
    """A Sequential's state_dict (or its gradients, same names and layout) -> canonical, with the
    porting API's conv and dense rules (docs/PORTING.md)."""
    from torch_impl import porting

    out = {}
    for index, name in D2L_LAYERS.items():
        native = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.split(".")[0] == index}
        to_canonical = (
            porting.conv2d_to_canonical if name.startswith("conv") else porting.dense_to_canonical
        )
        out |= to_canonical(native, prefix=f"{name}.")
    return out


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_stock_d2l_lenet_ported_gives_its_outputs_and_gradients(framework):
    """d2l's LeNet-5 (28x28, conv1 padding 2, sigmoid, average pooling) as a stock nn.Sequential is
    the reference: mapped to canonical and loaded, each framework's LeNet5 gives its logits, its
    input gradient and every parameter gradient (mean cross-entropy), float64, 1e-12."""
    stock = stock_d2l_lenet(0)
    rng = np.random.default_rng(6)
    x, y = rng.uniform(size=(3, 1, 28, 28)), rng.integers(0, 10, 3)
    xt = torch.tensor(x, requires_grad=True)
    logits = stock(xt)
    torch.nn.functional.cross_entropy(logits, torch.as_tensor(y)).backward()
    impl = load_impl(framework, "lenet5")
    model = impl.create_model(D2L, seed=0, dtype="float64")
    impl.load_canonical(model, d2l_to_canonical(stock.state_dict()))
    out = impl.forward_backward(model, x, y)
    parity.assert_close(out["output"], logits.detach().numpy(), 1e-12, "output")
    parity.assert_close(out["grad.input"], xt.grad.numpy(), 1e-12, "grad.input")
    grads = d2l_to_canonical({k: p.grad for k, p in stock.named_parameters()})
    assert {f"grad.{k}" for k in grads} == {
        k for k in out if k.startswith("grad.") and k != "grad.input"
    }
    for name, grad in grads.items():
        parity.assert_close(out[f"grad.{name}"], grad, 1e-12, name)


# ----------------------------------------------------------------------------- data
def test_digits32_is_a_deterministic_resampling_of_digits():
    small, big = digits(0), digits32(0)
    assert big.x_train.shape == (len(small.x_train), 1, 32, 32) and big.x_test.shape[1:] == (
        1,
        32,
        32,
    )
    np.testing.assert_array_equal(big.y_train, small.y_train)  # same images, same split
    np.testing.assert_array_equal(big.x_train, digits32(0).x_train)  # deterministic
    assert big.x_train.min() >= 0 and big.x_train.max() <= 1
    assert (
        not big.x_train[:, :, :2].any() and not big.x_train[:, :, :, -2:].any()
    )  # the 2-pixel zero border
    # bilinear resampling keeps a constant image constant and the mean of a smooth one
    np.testing.assert_allclose(resize_bilinear(np.full((1, 1, 8, 8), 0.25), 28), 0.25)
    np.testing.assert_allclose(
        big.x_train[:, :, 2:30, 2:30].mean(), small.x_train.mean(), rtol=0.05
    )


def test_mnist_is_padded_to_32(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("t10k", 4)):
        write_idx(
            tmp_path / f"{split}-images-idx3-ubyte",
            rng.integers(1, 256, (n, 28, 28)).astype(np.uint8),
        )
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, n).astype(np.uint8))
    data = train.prepare("lenet5", mnist(tmp_path))
    assert data.x_train.shape == (6, 1, 32, 32) and data.x_test.shape == (4, 1, 32, 32)
    np.testing.assert_array_equal(data.x_train[:, :, 2:30, 2:30], mnist(tmp_path).x_train)
    np.testing.assert_array_equal(data.x_train, pad_to(mnist(tmp_path).x_train, 32))
    assert not data.x_train[:, :, :2].any() and not data.x_train[:, :, 30:].any()


def test_mnist_with_padding_stays_28x28_and_trains_from_the_cli(tmp_path):
    """--padding 2 (d2l's LeNet-5): prepare keeps MNIST's 28x28 digits and the config pads conv1
    by 2 instead (fc1 still 400 inputs); `rosetta train lenet5 --task mnist --padding 2` runs on
    them; a --padding that is not one or two non-negative integers exits 2."""
    import json

    from typer.testing import CliRunner

    from tasks.cli import app

    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("t10k", 4)):
        images = rng.integers(1, 256, (n, 28, 28)).astype(np.uint8)
        write_idx(tmp_path / f"{split}-images-idx3-ubyte", images)
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, n).astype(np.uint8))
    opts = train.TrainOptions(padding=(2, 0)).with_defaults("lenet5", "mnist")
    data = train.prepare("lenet5", mnist(tmp_path), opts)
    np.testing.assert_array_equal(data.x_train, mnist(tmp_path).x_train)
    cfg = train.make_config("lenet5", data, opts)
    assert (cfg.image_size, cfg.padding, cfg.conv_sizes, cfg.flat_features) == (
        28,
        (2, 0),
        (28, 10),
        400,
    )
    args = ["train", "lenet5", "--task", "mnist", "--data-dir", str(tmp_path), "--epochs", "1"]
    result = CliRunner().invoke(
        app, [*args, "--padding", "2", "--activation", "sigmoid", "--framework", "torch", "--json"]
    )
    assert result.exit_code == 0, result.output[-2000:]
    config = json.loads(result.stdout)["config"]
    assert (config["image_size"], config["padding"], config["activation"]) == (
        28,
        [2, 0],
        "sigmoid",
    )
    for bad in ("2,x", "-1", "1,2,3"):
        result = CliRunner().invoke(app, [*args, "--padding", bad])
        assert result.exit_code == 2 and "--padding must be" in result.stderr, (bad, result.output)


# ----------------------------------------------------------------------------- training
@pytest.mark.slow  # a quality run: the default training to its bar
def test_default_training_reaches_97_percent_in_every_framework():
    """The registry's defaults on digits32, float32: >= 97% test accuracy in all four and a falling
    loss. No float32 lockstep bound: it depends on the CPU's kernels (parity_tests/test_training.py).
    The bar needs all 15 default epochs (measured, torch float32, accuracy after epochs 7-15: 96.0,
    95.5, 96.0, 97.1, 96.9, 96.0, 96.7, 96.7, 97.55%), so this run is not shortened."""
    result = train.run("lenet5", "digits32", list(FRAMEWORKS), train.TrainOptions())
    for row in result["results"]:
        assert row["test_accuracy"] >= 0.97, row
        assert row["history"][-1] < 0.5 * row["history"][0], row
    assert result["config"]["activation"] == "tanh" and result["config"]["pooling"] == "avg"


@pytest.mark.slow  # a quality run: the default training to its bar
def test_default_training_is_lockstep_in_float64():
    """The same defaults for 2 epochs in float64 (the second starts from the first's shuffled order,
    training mode and optimiser state): the four end at scratch's parameters (measured: at most
    3.3e-16 after 2 epochs, 5.6e-16 after 3; a third epoch costs 2.3 s CPU and proves nothing more)."""
    result = train.run(
        "lenet5", "digits32", list(FRAMEWORKS), train.TrainOptions(epochs=2, dtype="float64")
    )
    scratch = result["results"][0]
    for row in result["results"]:
        assert row["max_param_diff_vs_scratch"] <= 1e-10, row
        assert abs(row["final_loss"] - scratch["final_loss"]) <= 1e-12, row


# ----------------------------------------------------------------------------- CLI
def test_cli_parity_json_all_passed():
    """`rosetta parity lenet5 --framework torch --json`, in process: it reuses the cached computations of
    the tests above (the optimiser trajectories in all four are test_optim's; here torch's only)."""
    import json

    from typer.testing import CliRunner

    from tasks.cli import app

    result = CliRunner().invoke(app, ["parity", "lenet5", "--framework", "torch", "--json"])
    assert result.exit_code == 0, result.output[-2000:]
    records = json.loads(result.stdout)
    assert records and all(r["passed"] for r in records)
    expected = {
        c.name for c in parity.CASES["lenet5"] + parity.OPTIMIZER_CASES["lenet5"]
    }  # forward/backward/SGD cases and trajectories
    assert {r["case"] for r in records} == expected and {r["framework"] for r in records} == {
        "scratch",
        "torch_impl",
    }
    assert (
        max(
            r["rel_error"]
            for r in records
            if r["dtype"] == "float64" and not r["tensor"].startswith(("sgd.", "trajectory."))
        )
        <= 1e-10
    )
    assert max(r["rel_error"] for r in records if r["dtype"] == "float64") <= 1e-9


def test_cli_saliency_writes_one_png(tmp_path):
    from typer.testing import CliRunner

    from tasks.cli import app

    out = tmp_path / "saliency.png"
    args = [
        "saliency",
        "lenet5",
        "--weights",
        str(parity.canonical_file(parity.CASES["lenet5"][1])),
        "--images",
        "3",
        "--out",
        str(out),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output[-2000:]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (
        "3 test images x 4 frameworks" in result.stdout and "jax_impl vs scratch" in result.stdout
    )
