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


@pytest.mark.parametrize("model, task", list(BARS), ids=lambda v: str(v))
def test_default_training_reaches_the_bar(model, task):
    """float32, the default a user runs: every framework reaches the bar and its loss falls."""
    result = train.run(model, task, list(FRAMEWORKS), train.TrainOptions())
    for row in result["results"]:
        assert row["test_accuracy"] >= BARS[model, task], row
        assert row["history"][-1] < 0.5 * row["history"][0], row  # training, not drifting


@pytest.mark.parametrize("model, task", list(BARS), ids=lambda v: str(v))
def test_default_training_is_lockstep_in_float64(model, task):
    """float64, the same default run: the four end at scratch's parameters and loss."""
    result = train.run(model, task, list(FRAMEWORKS), train.TrainOptions(dtype="float64"))
    scratch = result["results"][0]
    for row in result["results"]:
        assert row["max_param_diff_vs_scratch"] <= 1e-10, row  # measured: at most 2.2e-15
        assert abs(row["final_loss"] - scratch["final_loss"]) <= 1e-12, row
        assert row["test_accuracy"] >= BARS[model, task], row


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_same_seed_same_result_bit_for_bit(framework):
    """Two runs with one seed give identical weights; another seed gives other weights."""
    opts = train.TrainOptions(epochs=2, seed=5)
    a = train.run("mlp", "moons", [framework], opts)["results"][0]
    b = train.run("mlp", "moons", [framework], opts)["results"][0]
    c = train.run("mlp", "moons", [framework], train.TrainOptions(epochs=2, seed=6))["results"][0]
    assert a["final_loss"] == b["final_loss"] and a["test_accuracy"] == b["test_accuracy"]
    assert a["final_loss"] != c["final_loss"]
