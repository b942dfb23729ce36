"""Bad input to `rosetta` (issue 11, items 1-10): exit status 2 and one line on stderr naming the
argument or file and the reason, or valid output; nothing finished is lost.

In process through typer's CliRunner (fast; a traceback there is `exit_code` 1 with `exception`
set), and in a real process only for Ctrl-C (SIGINT to a running `python -m tasks.cli`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
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


# ----------------------------------------------------------------------------- 10. a diverged run
def strict_json(text: str):
    """json.loads that refuses NaN and Infinity, as strict parsers (JavaScript's JSON.parse) do."""

    def refuse(token):
        raise ValueError(f"not JSON: {token}")

    return json.loads(text, parse_constant=refuse)


def test_a_diverged_run_writes_valid_json_and_is_marked_in_every_framework():
    result = invoke("train", "mlp", "--lr", "1e10", "--epochs", "2", "--json")
    assert result.exit_code == 1, result.stderr[-2000:]
    rows = strict_json(result.stdout)["results"]
    assert [r["framework"] for r in rows] == list(FRAMEWORKS)
    for row in rows:
        assert row["diverged"] is True and row["diverged_epoch"] == 1, row
        assert row["final_loss"] is None and row["max_param_diff_vs_scratch"] is None, row
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 4 and all("diverged" in line and "--lr" in line for line in lines), lines


def test_a_diverged_run_is_marked_in_the_table():
    result = invoke("train", "mlp", "--framework", "scratch", "--lr", "1e10", "--epochs", "2")
    assert result.exit_code == 1 and "diverged" in result.stdout, result.output
    assert result.stderr.strip().splitlines()[-1] == (  # after the progress bar
        "mlp scratch diverged (the training loss became NaN or inf in epoch 1); try a smaller --lr"
    )


def test_a_sane_run_is_not_marked_diverged():
    result = invoke("train", "mlp", "--framework", "scratch", "--epochs", "2", "--json")
    assert result.exit_code == 0 and strict_json(result.stdout)["results"][0]["diverged"] is False


# ----------------------------------------------------------------------------- 7. Ctrl-C
def interrupt_when_loading(monkeypatch, module, framework):
    """Ctrl-C while `framework` is imported: the runner's load_impl raises KeyboardInterrupt for it."""
    real = module.load_impl

    def load_impl(fw, model):
        if fw == framework:
            raise KeyboardInterrupt
        return real(fw, model)

    monkeypatch.setattr(module, "load_impl", load_impl)


@pytest.mark.parametrize("as_json", [False, True], ids=["table", "json"])
def test_ctrl_c_while_a_framework_is_imported_keeps_the_finished_rows(monkeypatch, as_json):
    import tasks.train

    interrupt_when_loading(monkeypatch, tasks.train, "tf_impl")
    result = invoke("train", "mlp", "--epochs", "1", *(["--json"] if as_json else []))
    assert result.exit_code == 130, result.output[-2000:]
    if as_json:
        doc = strict_json(result.stdout)
        assert [r["framework"] for r in doc["results"]] == ["scratch", "torch_impl"]
        assert doc["interrupted"] is True and doc["interrupted_framework"] == "tf_impl"
    else:
        assert "scratch" in result.stdout and "torch_impl" in result.stdout
    assert result.stderr.strip().splitlines()[-1] == (
        "interrupted (Ctrl-C) while running tf_impl; finished: scratch, torch_impl"
    )


def test_ctrl_c_in_the_perceptron_keeps_the_finished_rows(monkeypatch):
    import tasks.perceptron_run

    interrupt_when_loading(monkeypatch, tasks.perceptron_run, "torch_impl")
    result = invoke("train", "perceptron", "--json")
    assert result.exit_code == 130, result.output[-2000:]
    assert [r["framework"] for r in strict_json(result.stdout)["results"]] == ["scratch"]
    assert "while running torch_impl; finished: scratch" in result.stderr


def test_ctrl_c_before_any_framework_ran_exits_130_with_one_line(monkeypatch):
    import tasks.train

    def load_task(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tasks.train, "load_task", load_task)
    result = invoke("train", "mlp", "--framework", "scratch")
    assert result.exit_code == 130
    assert result.stderr.strip().splitlines() == [
        "interrupted (Ctrl-C) in rosetta train; nothing had finished"
    ]


def test_sigint_to_a_real_rosetta_process_prints_the_finished_rows():
    """SIGINT once scratch has finished and torch is training (its progress bar has appeared)."""
    env = {**os.environ, "TTY_COMPATIBLE": "1"}  # rich draws the bars live into the pipe
    proc = subprocess.Popen(
        [sys.executable, "-m", "tasks.cli", "train", "mlp", "--epochs", "500"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    stderr, started = [], threading.Event()

    def read():
        for chunk in iter(lambda: proc.stderr.read1(4096), b""):
            stderr.append(chunk)
            if b"torch_impl" in b"".join(stderr[-3:]):
                started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert started.wait(timeout=240), b"".join(stderr)[-2000:]
        time.sleep(0.5)  # into torch's 500 epochs (several seconds)
        proc.send_signal(signal.SIGINT)
        stdout = proc.stdout.read().decode()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(timeout=10)
    err_text = b"".join(stderr).decode(errors="replace")
    assert proc.returncode == 130, err_text[-2000:]
    assert "Traceback" not in err_text
    assert "scratch" in stdout and "tf_impl" not in stdout, stdout
    assert (
        err_text.strip()
        .splitlines()[-1]
        .endswith("interrupted (Ctrl-C) while running torch_impl; finished: scratch")
    ), err_text[-500:]
