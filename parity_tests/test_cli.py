"""The rosetta CLI: exit codes, one-line errors, JSON output, and lazy framework imports.

In process through typer's CliRunner (`rosetta` is `tasks.cli:main`, which only calls `app()`; an
uncaught exception there is `exception` set and exit code 1), except where the point is a fresh
process: no framework imported by a scratch run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def rosetta(*args):
    from typer.testing import CliRunner

    from tasks.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.mark.parametrize(
    "args, needle",
    [
        (["train", "nosuchmodel"], "unknown model 'nosuchmodel'; choose from: mlp"),
        (
            ["train", "mlp", "--task", "nosuchtask"],
            "unknown task 'nosuchtask' for model mlp; choose from: moons, digits",
        ),
        (["train", "mlp", "--framework", "caffe"], "unknown framework 'caffe'; choose from: all,"),
        (["train", "mlp", "--lr", "-0.1"], "--lr must be a positive number"),
        (["train", "mlp", "--epochs", "0"], "--epochs must be a positive integer"),
        (["train", "mlp", "--hidden", "4,x"], "--hidden must be positive integers"),
        (
            [
                "train",
                "mlp",
                "--task",
                "mnist",
                "--framework",
                "scratch",
                "--data-dir",
                "/nonexistent",
            ],
            "/nonexistent: not a directory",
        ),
        (["parity", "nosuchmodel"], "unknown model 'nosuchmodel'"),
    ],
)
def test_bad_input_exits_2_with_one_line(args, needle):
    result = rosetta(*args)
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert needle in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_scratch_train_imports_no_framework_and_prints_json():
    code = (
        "import sys, tasks.cli as c\n"
        "sys.argv = ['rosetta', 'train', 'mlp', '--framework', 'scratch', '--epochs', '3', '--json']\n"
        "try:\n    c.main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "bad = sorted(m for m in ('torch', 'tensorflow', 'jax', 'keras', 'flax') if m in sys.modules)\n"
        "print('IMPORTED', bad, file=sys.stderr)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "IMPORTED []" in result.stderr
    doc = json.loads(result.stdout)
    assert doc["model"] == "mlp" and doc["task"] == "moons"
    (row,) = doc["results"]
    assert row["framework"] == "scratch" and row["max_param_diff_vs_scratch"] == 0.0
    assert set(row) >= {
        "framework",
        "final_loss",
        "test_accuracy",
        "seconds_per_epoch",
        "max_param_diff_vs_scratch",
    }


def test_parity_json_records():
    result = rosetta("parity", "mlp", "--framework", "torch", "--json")
    assert result.exit_code == 0, result.output[-2000:]
    records = json.loads(result.stdout)
    assert records and all(r["passed"] for r in records)
    assert {
        "model",
        "framework",
        "reference",
        "dtype",
        "tensor",
        "max_abs_error",
        "rel_error",
        "tolerance",
        "passed",
    } <= set(records[0])
    assert {r["framework"] for r in records} == {"scratch", "torch_impl"}
    worst64 = max(r["rel_error"] for r in records if r["dtype"] == "float64")
    assert worst64 <= 1e-10


def test_train_regression_reports_mse_and_r2_not_accuracy():
    """An identity head (the diabetes task): the table's quality columns are the test MSE and R²,
    the baselines line names least squares; the JSON rows carry test_r2 and no accuracy."""
    args = ("train", "mlp", "--task", "diabetes", "--framework", "scratch", "--epochs", "3")
    table = rosetta(*args)
    assert table.exit_code == 0, table.output[-2000:]
    assert "test MSE" in table.stdout and "test R²" in table.stdout
    assert "test accuracy" not in table.stdout and "least_squares_test_mse" in table.stdout
    doc = json.loads(rosetta(*args, "--json").stdout)
    (row,) = doc["results"]
    assert doc["metric"] == "r2" and doc["config"]["head"] == "identity"
    assert doc["config"]["activation"] == "identity" and doc["config"]["n_classes"] == 1
    assert row["test_accuracy"] is None and 0 < row["test_r2"] < 1
    assert row["test_r2"] == pytest.approx(
        1 - row["test_loss"] / doc["baselines"]["mean_test_mse"], abs=0.02
    )


def test_train_on_mnist_idx_folder(tmp_path):
    """The real MNIST path end to end, on tiny IDX files written here."""
    from parity_tests.test_data import write_tiny_mnist

    write_tiny_mnist(tmp_path, n_train=12, n_test=4)
    result = rosetta(
        "train",
        "mlp",
        "--task",
        "mnist",
        "--data-dir",
        str(tmp_path),
        "--framework",
        "scratch",
        "--epochs",
        "2",
        "--json",
    )
    assert result.exit_code == 0, result.output[-2000:]
    doc = json.loads(result.stdout)
    assert doc["n_train"] == 12 and doc["n_test"] == 4 and doc["config"]["in_features"] == 784
