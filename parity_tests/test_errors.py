"""Bad input to `rosetta` (issue 11, items 1-10): exit status 2 and one line on stderr naming the
argument or file and the reason, or valid output; nothing finished is lost.

In process through typer's CliRunner (fast; a traceback there is `exit_code` 1 with `exception`
set), and in a real process only for Ctrl-C (SIGINT to a running `python -m tasks.cli`).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tasks.cli import FLAG_MODELS, SEED_RANGE, app
from tasks.registry import FRAMEWORKS, MODELS

ROOT = Path(__file__).resolve().parents[1]


def invoke(*args, **kwargs):
    return CliRunner().invoke(app, [str(a) for a in args], **kwargs)


def assert_refused(result, *needles):
    """Exit 2, one line on stderr, no traceback; the line contains every needle."""
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert result.exit_code == 2, (result.exit_code, result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


# ----------------------------------------------------------------------------- 1. --seed
SEED_COMMANDS = {
    "train": ["train", "mlp", "--framework", "scratch", "--epochs", "1"],
    "sample": ["sample", "rnn", "--framework", "scratch", "--epochs", "1", "--hidden", "4"],
    "saliency": ["saliency", "lenet5", "--framework", "scratch", "--epochs", "1"],
    "attention-map": ["attention-map", "--framework", "scratch", "--epochs", "0"],
}


@pytest.mark.parametrize("seed", [-1, 2**32, 2**64], ids=["-1", "2^32", "2^64"])
@pytest.mark.parametrize("command", list(SEED_COMMANDS))
def test_seed_outside_what_every_framework_accepts_is_refused(command, seed):
    result = invoke(*SEED_COMMANDS[command], "--seed", seed)
    assert_refused(result, "--seed", f"0..{2**32 - 1}", str(seed))


def test_the_largest_seed_runs_in_every_framework():
    """2**32 - 1 (scikit-learn's limit, the tightest measured) reaches NumPy, scikit-learn's moons,
    torch.Generator, keras.random.SeedGenerator and nnx.Rngs without an error."""
    assert SEED_RANGE == (0, 2**32 - 1)
    result = invoke("train", "mlp", "--epochs", "1", "--seed", 2**32 - 1, "--json")
    assert result.exit_code == 0, result.stderr[-2000:]
    rows = json.loads(result.stdout)["results"]
    assert [r["framework"] for r in rows] == list(FRAMEWORKS)


# ----------------------------------------------------------------------------- 9. flags a model does not use
@pytest.mark.parametrize(
    "args, flag",
    [
        (["train", "mlp", "--pooling", "max"], "--pooling"),
        (["train", "lenet5", "--hidden", "7"], "--hidden"),
        (["train", "attention", "--hidden", "7"], "--hidden"),
        (["train", "transformer", "--hidden", "7"], "--hidden"),
        (["train", "rnn", "--task", "sign", "--activation", "sigmoid"], "--activation"),
        (["train", "attention", "--activation", "relu"], "--activation"),
        (["train", "perceptron", "--hidden", "5"], "--hidden"),
        (["train", "perceptron", "--batch-size", "3"], "--batch-size"),
        (["train", "perceptron", "--activation", "tanh"], "--activation"),
        (["train", "perceptron", "--plot", "curves.png"], "--plot"),
        (["train", "mlp", "--data-dir", "."], "--data-dir"),
        (["train", "perceptron", "--data-dir", "."], "--data-dir"),
        (["saliency", "lenet5", "--data-dir", "."], "--data-dir"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_a_flag_the_model_would_ignore_is_refused(args, flag):
    named = (
        "task" if flag == "--data-dir" else args[1]
    )  # --data-dir depends on the task, not the model
    assert_refused(invoke(*args, "--framework", "scratch"), flag, named)


def test_the_flag_table_names_real_models_and_flags():
    """FLAG_MODELS is the one table: its models exist, and each flag it names is a train option."""
    result = invoke("train", "--help")
    for flag, (models, why) in FLAG_MODELS.items():
        assert flag in result.stdout and why and set(models) <= set(MODELS), flag
