"""A real training run in every framework: the default settings reach the issue's accuracy bars.

Lockstep (every framework's parameters equal to scratch's) is a property of the code only in
float64: there the four runs agree to ~2e-15 after the full default run (measured, mlp moons and
digits). In float32 the CPU's kernels (OpenBLAS core type, oneDNN, XLA) round differently, and 60
epochs of ReLU training turn one flipped kink into another trajectory (2e-2 apart on an AVX-512
machine, 1e-6 on another), so the float32 runs assert only what rounding cannot flip: the bar and
a falling loss.
"""

from __future__ import annotations

import pytest

from tasks import train
from tasks.registry import FRAMEWORKS

BARS = {("mlp", "moons"): 0.96, ("mlp", "digits"): 0.95}


@pytest.mark.slow  # a quality run: the default training to its bar
@pytest.mark.parametrize("model, task", list(BARS), ids=lambda v: str(v))
def test_default_training_reaches_the_bar(model, task):
    """float32, the default a user runs: every framework reaches the bar and its loss falls."""
    result = train.run(model, task, list(FRAMEWORKS), train.TrainOptions())
    for row in result["results"]:
        assert row["test_accuracy"] >= BARS[model, task], row
        assert row["history"][-1] < 0.5 * row["history"][0], row  # training, not drifting


@pytest.mark.slow  # a quality run: the default training to its bar
@pytest.mark.parametrize("model, task", list(BARS), ids=lambda v: str(v))
def test_default_training_is_lockstep_in_float64(model, task):
    """float64, the same default run: the four end at scratch's parameters and loss."""
    result = train.run(model, task, list(FRAMEWORKS), train.TrainOptions(dtype="float64"))
    scratch = result["results"][0]
    for row in result["results"]:
        assert row["max_param_diff_vs_scratch"] <= 1e-10, row  # measured: at most 2.2e-15
        assert abs(row["final_loss"] - scratch["final_loss"]) <= 1e-12, row
        assert row["test_accuracy"] >= BARS[model, task], row


@pytest.mark.slow  # a quality run: the default training to its bar
def test_regression_default_run_is_lockstep_in_float64_and_near_least_squares():
    """mlp on diabetes (an identity head, MSE), the default run in float64: the four end at
    scratch's parameters, loss and R² (Keras's stock R2Score built outside compat.floatx keeps float32
    sums: 2.5e-8 off), and the identity-activation network, a linear model, gets within 2% of least
    squares' test MSE (measured 0.4889 against 0.4827; R² 0.4846)."""
    result = train.run("mlp", "diabetes", list(FRAMEWORKS), train.TrainOptions(dtype="float64"))
    scratch, least_squares = result["results"][0], result["baselines"]["least_squares_test_mse"]
    assert result["metric"] == "r2" and result["config"]["activation"] == "identity"
    for row in result["results"]:
        assert row["max_param_diff_vs_scratch"] <= 1e-10, row  # measured: at most 4.4e-16
        assert abs(row["final_loss"] - scratch["final_loss"]) <= 1e-12, row
        assert abs(row["test_r2"] - scratch["test_r2"]) <= 1e-12, row
        assert row["test_accuracy"] is None and row["test_r2"] >= 0.45, row
        assert row["test_loss"] <= 1.02 * least_squares, row


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_same_seed_same_result_bit_for_bit(framework):
    """Two runs with one seed give identical weights; another seed gives other weights."""
    opts = train.TrainOptions(epochs=2, seed=5)
    a = train.run("mlp", "moons", [framework], opts)["results"][0]
    b = train.run("mlp", "moons", [framework], opts)["results"][0]
    c = train.run("mlp", "moons", [framework], train.TrainOptions(epochs=2, seed=6))["results"][0]
    assert a["final_loss"] == b["final_loss"] and a["test_accuracy"] == b["test_accuracy"]
    assert a["final_loss"] != c["final_loss"]


@pytest.mark.parametrize("model", ["mlp", "lenet5"])
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_evaluating_between_epochs_does_not_change_training(framework, model):
    """An on_epoch that evaluates (as --patience does) leaves the model in training mode for the next
    epoch: dropout still drops and batch norm still uses batch statistics, so the training losses
    equal those of a run that never evaluates (the bug: evaluate() switched to inference mode and the
    loop set training mode only once, before the first epoch)."""
    from tasks import weights
    from tasks.data import load_task
    from tasks.registry import load_impl

    task = {"mlp": "moons", "lenet5": "digits32"}[model]
    opts = train.TrainOptions(
        epochs=3,
        dtype="float64",
        dropout=0.3,
        batch_norm=True,
        **({"hidden": (16,)} if model == "mlp" else {}),
    ).with_defaults(model, task)
    data = train.prepare(model, load_task(task, seed=0))
    if model == "lenet5":  # slices keep the three epochs short; the bug shows from the second on
        # (float64 convolutions are XLA:CPU's naive loops, unoptimised in the suite: conftest.py)
        data = train.replace(
            data,
            x_train=data.x_train[:96],
            y_train=data.y_train[:96],
            x_test=data.x_test[:64],
            y_test=data.y_test[:64],
        )
    cfg = train.make_config(model, data, opts)
    init = weights.cast(train.initial_weights(cfg, 0), "float64")
    impl = load_impl(framework, model)

    def history(on_epoch):
        net = impl.create_model(cfg, seed=0, dtype="float64")
        impl.load_canonical(net, init)
        hook = (
            (lambda epoch, loss: impl.evaluate(net, data.x_test, data.y_test)) if on_epoch else None
        )
        return impl.train(net, data, epochs=3, lr=0.05, batch_size=32, seed=0, on_epoch=hook)

    plain, evaluated = history(False), history(True)
    assert plain == pytest.approx(evaluated, rel=1e-12, abs=0), (plain, evaluated)
