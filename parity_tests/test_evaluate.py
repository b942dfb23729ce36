"""`evaluate` runs the model in inference mode in all four frameworks: batch norm normalises with
the running statistics (not the batch's) and dropout is off, on the MLP and LeNet-5 with both.

The models are left in training mode before `evaluate` (as `train` leaves them), with each
framework's own dropout layer, so an `evaluate` that forgets inference mode (Keras `training=True`,
no `model.eval()` in torch or Flax, no `set_training(False)` in scratch) uses batch statistics and
drops units, and fails three ways here: its loss is not scratch's, not the NumPy inference oracle's
(MLP), and it depends on how the data is split into calls.
"""

from __future__ import annotations

import numpy as np
import pytest

from tasks import parity
from tasks.configs import LeNet5Config, MLPConfig
from tasks.registry import FRAMEWORKS, load_impl

CONFIGS = {
    "mlp": MLPConfig(5, (7, 6), 4, "relu", "softmax", batch_norm=True, dropout=0.3),
    "lenet5": LeNet5Config(activation="relu", pooling="max", batch_norm=True, dropout=0.3),
}
N = 24  # samples; split into calls of 10 and 14 for the batch-independence check
EPS = 1e-5  # the suite's batch-norm eps (torch's), passed to every framework


def canonical(model: str) -> dict[str, np.ndarray]:
    """Uniform weights; gamma in [0.5, 2], running variance in [0.5, 2] and running means of order 1,
    so eval-mode and train-mode normalisation are far apart."""
    params = parity._with_batch_norm(CONFIGS[model].param_shapes(), seed=11)
    rng = np.random.default_rng(12)
    for name in params:
        if name.endswith("running_mean"):
            params[name] = rng.normal(0.0, 1.0, params[name].shape)
    return params


def data(model: str):
    rng = np.random.default_rng(13)
    cfg = CONFIGS[model]
    if model == "mlp":
        x = rng.normal(size=(N, cfg.in_features))
    else:
        x = rng.uniform(0.0, 1.0, size=(N, cfg.in_channels, cfg.image_size, cfg.image_size))
    return x, rng.integers(0, cfg.n_classes, size=N)


def in_training_mode(framework: str, impl, model: str):
    """A model with the canonical weights, switched to training mode as `train` leaves it (Keras takes
    the mode per call, so it has nothing to switch)."""
    net = impl.create_model(CONFIGS[model], seed=0, dtype="float64")
    impl.load_canonical(net, canonical(model))
    if framework == "scratch":
        net.set_training(True)
    elif framework in ("torch_impl", "jax_impl"):
        net.train()
    return net


def inference_oracle(params, x, y) -> tuple[float, float]:
    """The MLP in inference mode in plain NumPy: (x W^T - mean) / sqrt(var + eps) * gamma + beta,
    ReLU, no dropout, softmax cross-entropy."""
    h = x
    for i in range(len(CONFIGS["mlp"].hidden)):
        z = (
            h @ params[f"hidden.{i}.weight"].T
        )  # (B, in) -> (B, out); no bias in front of a batch norm
        bn = {k: params[f"bn.{i}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")}
        z = (z - bn["running_mean"]) / np.sqrt(bn["running_var"] + EPS) * bn["weight"] + bn["bias"]
        h = np.maximum(z, 0.0)
    logits = h @ params["head.weight"].T + params["head.bias"]  # (B, C)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-log_probs[np.arange(len(y)), y].mean()), float(np.mean(logits.argmax(1) == y))


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("model", list(CONFIGS))
def test_evaluate_is_inference_mode(model, framework):
    impl = load_impl(framework, model)
    x, y = data(model)
    net = in_training_mode(framework, impl, model)
    before = impl.export_canonical(net)
    loss, accuracy = impl.evaluate(net, x, y)
    # the running statistics are read, not updated (a train-mode torch forward would update them)
    for name, value in impl.export_canonical(net).items():
        np.testing.assert_array_equal(value, before[name], err_msg=f"evaluate changed {name}")
    # batch-independent: the loss of the whole split is the weighted mean of the losses of two parts
    parts = [
        (impl.evaluate(in_training_mode(framework, impl, model), x[s], y[s]), len(x[s]))
        for s in (slice(0, 10), slice(10, N))
    ]
    split = sum(part_loss * n for (part_loss, _), n in parts) / N
    assert abs(split - loss) <= 1e-12 * abs(loss), (framework, model, loss, split)
    # deterministic: dropout is off, so a second call repeats the first
    assert impl.evaluate(net, x, y) == (loss, accuracy)
    # and it is the reference's inference
    if model == "mlp":
        expected = inference_oracle(canonical(model), x, y)
    else:
        scratch = load_impl("scratch", model)
        expected = scratch.evaluate(in_training_mode("scratch", scratch, model), x, y)
    assert loss == pytest.approx(expected[0], rel=1e-10, abs=0), (loss, expected)
    assert round(accuracy * N) == round(expected[1] * N)  # the same count of correct answers


def test_train_mode_would_be_caught():
    """The checks above can fail: in training mode the same weights give another loss (batch
    statistics and dropout), and the loss of the whole split is not that of its parts."""
    from scratch import mlp

    x, y = data("mlp")
    net = in_training_mode("scratch", mlp, "mlp")
    logits = net.forward(x)  # training mode: batch statistics, dropout
    train_loss, _ = mlp.loss_fn(logits, y, "softmax")
    eval_loss, _ = inference_oracle(canonical("mlp"), x, y)
    assert abs(train_loss - eval_loss) > 1e-2 * eval_loss, (train_loss, eval_loss)


# ----------------------------------------------------------------------------- rosetta train with batch norm
def test_rosetta_train_shows_the_running_variance_conventions(monkeypatch):
    """After `--batch-norm` training the four hold the same trainable weights, but Keras and Flax keep
    the biased running variance, so their test loss is not scratch's and torch's. The table and the
    JSON say so (each row's `running_var`, `max_running_var_diff_vs_scratch`, and a note with every
    test loss) rather than converting the statistics away: each framework keeps its stock layer."""
    from io import StringIO

    from rich.console import Console

    from tasks import cli, train

    opts = train.TrainOptions(epochs=2, dtype="float64", batch_norm=True)
    result = train.run("mlp", "moons", list(FRAMEWORKS), opts)
    rows = {row["framework"]: row for row in result["results"]}
    kept = {
        "scratch": "unbiased",
        "torch_impl": "unbiased",
        "tf_impl": "biased",
        "jax_impl": "biased",
    }
    for framework, row in rows.items():
        assert row["running_var"] == kept[framework], row
        assert row["max_param_diff_vs_scratch"] <= 1e-10, row  # trainable weights in lockstep
    same = lambda a, b: (
        abs(rows[a]["test_loss"] - rows[b]["test_loss"]) <= 1e-10 * rows[b]["test_loss"]
    )
    assert same("torch_impl", "scratch") and same("jax_impl", "tf_impl")
    assert rows["torch_impl"]["max_running_var_diff_vs_scratch"] <= 1e-10
    for framework in ("tf_impl", "jax_impl"):  # measured: see docs/PORTING.md, running variance
        assert rows[framework]["max_running_var_diff_vs_scratch"] > 1e-3, rows[framework]
        assert abs(rows[framework]["test_loss"] - rows["scratch"]["test_loss"]) > 1e-5, rows
    [note] = result["notes"]
    assert "tf_impl, jax_impl keep the biased running variance" in note
    assert all(f"{fw} {row['test_loss']:.5f}" in note for fw, row in rows.items())
    printed = StringIO()
    monkeypatch.setattr(cli, "out", Console(file=printed, width=200))
    cli.print_train(result)
    assert " ".join(note.split()) in " ".join(printed.getvalue().split())  # rich wraps lines
    plain = train.run("mlp", "moons", ["scratch", "tf_impl"], train.TrainOptions(epochs=1))
    assert plain["notes"] == [] and plain["results"][1]["running_var"] is None  # no batch norm
