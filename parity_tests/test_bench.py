"""`python -m tasks.bench`: the --json rows (one per model, framework and step) and its bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import pytest

BENCH = [sys.executable, "-m", "tasks.bench"]
ROW_KEYS = {"model", "framework", "step", "ms_wall", "ms_cpu", "ratio_vs_torch"}


def bench(*args, timeout=300):
    return subprocess.run([*BENCH, *args], capture_output=True, text=True, timeout=timeout)


def test_json_rows_one_per_framework_and_step(monkeypatch, capsys):
    """The MLP at its default size, two rounds: eight rows, ratios from CPU time against torch's.
    In this process (`python -m tasks.bench` is main(); its bad input is run as a command below):
    the frameworks this file's other tests import are imported once. torch, TensorFlow and XLA are
    started first, so the one-thread settings bench puts in the environment (restored after) cannot reach
    the later tests of this worker."""
    import tf_impl  # noqa: F401  (first: TensorFlow loads as the package loads it)

    # isort: split
    import jax
    import tensorflow as tf
    import torch  # noqa: F401

    from tasks import bench as bench_mod

    float(tf.reduce_sum(tf.ones(3))), jax.devices()  # their thread pools start with the suite's
    monkeypatch.setattr(bench_mod, "FAILED", [])
    pins = hasattr(os, "sched_setaffinity")  # Linux: limit_threads holds the process to one CPU
    cpus = os.sched_getaffinity(0) if pins else None  # given back after
    try:
        with mock.patch.dict(os.environ):  # limit_threads's variables: gone after the run
            status = bench_mod.main(["mlp", "--repeats", "2", "--json"])
        assert not pins or len(os.sched_getaffinity(0)) == 1  # one CPU: CPU time = wall time
    finally:
        if pins:
            os.sched_setaffinity(0, cpus)
    result = capsys.readouterr()
    assert status == 0, result.err
    rows = json.loads(result.out)
    assert isinstance(rows, list) and all(set(r) == ROW_KEYS for r in rows)
    assert sorted((r["framework"], r["step"]) for r in rows) == sorted(
        (fw, step)
        for fw in ("scratch", "torch_impl", "tf_impl", "jax_impl")
        for step in ("train", "inference")
    )
    assert {r["model"] for r in rows} == {"mlp"}
    torch_cpu = {r["step"]: r["ms_cpu"] for r in rows if r["framework"] == "torch_impl"}
    for r in rows:
        assert r["ms_wall"] > 0 and r["ms_cpu"] > 0, r
        ratio = r["ms_cpu"] / torch_cpu[r["step"]]  # from CPU time; rounded to 4 decimals
        assert r["ratio_vs_torch"] == pytest.approx(ratio, rel=1e-3, abs=1e-4)
    assert "load average" in result.err  # the machine and its load, with every figure


@pytest.mark.parametrize(
    "args, needle",
    [
        (["nosuchmodel"], "no benchmark for model 'nosuchmodel'"),
        (["mlp", "--repeats", "0"], "must be positive integers"),
        (["mlp", "--framework", "caffe"], "unknown framework 'caffe'"),
    ],
)
def test_bad_input_exits_2_with_one_line(args, needle):
    result = bench(*args, timeout=60)
    assert result.returncode == 2, result.stderr
    assert needle in result.stderr and len(result.stderr.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- rosetta all's summary
def record(model, framework, dtype, rel, tol=1e-10, reference="scratch", case="c", tensor="loss"):
    return {
        "model": model, "case": case, "framework": framework, "reference": reference,
        "dtype": dtype, "tensor": tensor, "max_abs_error": rel, "rel_error": rel,
        "tolerance": tol, "passed": rel <= tol,
    }  # fmt: skip


def summary_text(monkeypatch, trained, records, seconds=None) -> list[str]:
    import io

    from rich.console import Console

    from tasks import cli

    buffer = io.StringIO()
    monkeypatch.setattr(cli, "out", Console(file=buffer, width=200))
    cli.print_summary(trained, records, seconds)
    return buffer.getvalue().rstrip().splitlines()


def trained_row(model, **figures):
    fws = ("scratch", "torch_impl", "tf_impl", "jax_impl")
    return {"model": model, "results": [{"framework": fw, **figures} for fw in fws]}


def test_summary_one_row_per_model_worst_errors_and_all_passed(monkeypatch):
    trained = [trained_row("mlp", test_accuracy=0.9875), trained_row("rnn", test_loss=2.3101)]
    trained[1]["baselines"] = {"unigram_test_loss": 3.267}  # a language model: its loss is shown
    records = [
        record("mlp", "torch_impl", "float64", 3e-16),
        record("mlp", "jax_impl", "float64", 7e-15),
        record("mlp", "jax_impl", "float32", 2e-7, tol=1e-5),
        record("mlp", "tf_impl", "float32", 4e-6, tol=1e-5, reference="jax_impl"),  # pairwise
        record("rnn", "tf_impl", "float64", 1e-15),
    ]
    lines = summary_text(monkeypatch, trained, records, {"mlp": (12.3, 4.5), "rnn": (30.0, 7.0)})
    text = "\n".join(lines)
    assert lines[-1] == "5 records, all passed"
    assert "acc 0.9875" in text and "loss 2.310" in text and "FAIL" not in text
    mlp_rows = [line for line in lines if "mlp" in line or "7e-15" in line]
    # jax's cell: worst float64 7e-15, worst float32 4e-06 (the pairwise check against Keras counts)
    assert any("7e-15 / 4e-06" in line for line in mlp_rows), text
    assert any("3e-16 / —" in line for line in mlp_rows), text  # torch: no float32 record
    assert "12 / 4" in text and "training 42 s, parity 12 s" in text


def test_summary_lists_failures_by_name(monkeypatch):
    records = [
        record("mlp", "torch_impl", "float64", 3e-16),
        record(
            "mlp", "jax_impl", "float32", 2e-3, tol=1e-4, case="relu", tensor="grad.hidden.0.weight"
        ),
        record("mlp", "jax_impl", "float32", 5e-4, tol=1e-4, case="relu", tensor="grad.head.bias"),
    ]
    lines = summary_text(monkeypatch, [trained_row("mlp", test_accuracy=0.5)], records)
    assert lines[-1] == "3 records, 2 failed"
    assert (
        "FAILED mlp[relu] jax_impl vs scratch float32: 2 tensor(s), worst grad.hidden.0.weight "
        "2.0e-03 > 1e-04" in lines
    )
    assert "FAIL" in "\n".join(lines[:-2])  # the failing cells are marked in the table


@pytest.fixture(scope="module")
def torch_document() -> dict:
    """`rosetta all perceptron --framework torch --jobs 1 --json`, run in this process (CliRunner):
    the --json document of a one-process run, for the summary test and the --jobs 2 test."""
    from typer.testing import CliRunner

    from tasks.cli import app

    args = ["all", "perceptron", "--framework", "torch", "--jobs", "1", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output[-3000:]
    return json.loads(result.stdout)


def test_rosetta_all_scoped_to_one_model_ends_with_the_summary(torch_document):
    """`rosetta all perceptron` in process: one summary row, a column per framework, the records
    line last, the full table only with --verbose. --verbose and --json are run with --framework
    torch (the same code for any set of frameworks, at a quarter of the work): the full table and
    the summary line last, its count the --json document's, which is the train and parity lists."""
    from typer.testing import CliRunner

    from tasks.cli import app
    from tasks.registry import FRAMEWORKS

    def header(output: str) -> list[str]:  # the summary's: the last table
        lines = [line for line in output.splitlines() if line.lstrip("┃ ").startswith("model")]
        return lines[-1].replace("┃", " ").split()

    runner = CliRunner()
    result = runner.invoke(app, ["all", "perceptron"])
    assert result.exit_code == 0, result.output
    lines = result.output.rstrip().splitlines()
    assert lines[-1].endswith("records, all passed") and int(lines[-1].split()[0]) > 100
    assert sum(line.lstrip("│┃ ").startswith("perceptron") for line in lines) == 1
    assert header(result.output)[:5] == ["model", *FRAMEWORKS]
    assert "largest relative error per check" not in result.output  # the full table: --verbose only
    verbose = runner.invoke(app, ["all", "perceptron", "--verbose", "--framework", "torch"])
    assert verbose.exit_code == 0, verbose.output
    assert "largest relative error per check" in verbose.output
    assert header(verbose.output)[:4] == ["model", "scratch", "torch_impl", "s"]  # its columns
    document = torch_document  # `rosetta all perceptron --framework torch --jobs 1 --json`
    assert set(document) == {"train", "parity"}
    assert [r["framework"] for r in document["train"][0]["results"]] == ["scratch", "torch_impl"]
    assert {r["framework"] for r in document["parity"]} == {"scratch", "torch_impl"}
    last = f"{len(document['parity'])} records, all passed"
    assert verbose.output.rstrip().splitlines()[-1] == last


# ----------------------------------------------------------------------------- rosetta all --jobs N
ROOT = Path(__file__).resolve().parents[1]
ROSETTA = [sys.executable, "-m", "tasks.cli"]
TIMING = {"seconds", "seconds_per_epoch"}  # the only fields that differ from run to run


def without_timing(trained: list[dict]) -> list[dict]:
    return [
        {**t, "results": [{k: v for k, v in r.items() if k not in TIMING} for r in t["results"]]}
        for t in trained
    ]


def test_rosetta_all_in_two_worker_processes_prints_the_one_process_document(torch_document):
    """`rosetta all perceptron perceptron --jobs 2`: two spawned workers, results pickled back and put
    in model order; the --json document is `--jobs 1`'s (run in this process: torch_document),
    every record and training figure equal (timing aside), and nothing a worker prints reaches
    stdout (it parses). With --framework torch: the workers run what they are sent whatever the
    frameworks (tasks/jobs.py passes the list on), and torch alone starts in a third of the time of
    all four (in each of the three processes here)."""
    parallel = subprocess.run(
        [*ROSETTA, "all", "perceptron", "perceptron", "--framework", "torch", "--jobs", "2", "--json"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert parallel.returncode == 0, parallel.stderr[-3000:]
    one, two = torch_document, json.loads(parallel.stdout)
    assert {r["framework"] for r in one["parity"]} == {"scratch", "torch_impl"}
    assert len(one["parity"]) > 50  # every perceptron check of torch against scratch
    assert two["parity"] == one["parity"] * 2
    assert without_timing(two["train"]) == without_timing(one["train"]) * 2


def test_schedule_starts_the_most_expensive_jobs_and_covers_every_part():
    from tasks import jobs

    order = jobs.schedule(["perceptron", "mlp", "lenet5"])
    assert sorted(order) == sorted((i, m, p) for i, m in enumerate(["perceptron", "mlp", "lenet5"]) for p in ("train", "parity"))  # fmt: skip
    assert order[0] == (2, "lenet5", "parity") and order[-1] == (0, "perceptron", "train")
    costs = [jobs.COST[job[1:]] for job in order]
    assert costs == sorted(costs, reverse=True)
    assert jobs.schedule(["newmodel", "mlp"])[:2] == [(0, "newmodel", "train"), (0, "newmodel", "parity")]  # fmt: skip
    assert 1 <= jobs.default_jobs(8) <= len(os.sched_getaffinity(0)) and jobs.default_jobs(1) == 1


def test_a_worker_that_dies_names_its_job_and_the_rest_finish():
    """SIGKILL to a worker as it gets its first job: that job is reported failed (killed by SIGKILL),
    a new worker takes the remaining jobs, every other job's result comes back, no hang."""
    import multiprocessing

    from tasks import jobs

    events, killed = [], []

    def report(event, job, outcome, running):
        events.append((event, job))
        if event == "start" and not killed:
            victim = multiprocessing.active_children()[0]
            killed.append(victim.pid)
            os.kill(victim.pid, signal.SIGKILL)

    outcome = jobs.run(["perceptron", "perceptron"], ["scratch"], 2, report)
    assert outcome.status == 1 and len(outcome.failed) == 1, outcome.failed
    model, part, message = outcome.failed[0]
    assert model == "perceptron" and message == "its worker process was killed by SIGKILL"
    assert len(outcome.trained) + len(outcome.records) == 3  # the other three jobs' results
    assert [e for e, _ in events].count("done") == 3 and not multiprocessing.active_children()


def test_ctrl_c_to_rosetta_all_stops_its_workers_and_exits_130():
    """SIGINT to the whole process group (as a terminal's Ctrl-C) once both workers are running:
    exit 130, one line naming the jobs that were running, no traceback, no process left over."""
    proc = subprocess.Popen(
        [*ROSETTA, "all", "perceptron", "mlp", "--jobs", "2"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while len(children(proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        workers = children(proc.pid)
        assert len(workers) == 2, "the two workers did not start"
        tracker = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        time.sleep(2.0)  # into their imports
        os.killpg(proc.pid, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    stderr = stderr.decode(errors="replace")
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("interrupted (Ctrl-C) while running mlp parity, ") and last.endswith(
        "; finished: none"
    ), last
    assert stdout.decode().rstrip().splitlines()[-1] == "0 records, all passed"
    deadline = time.monotonic() + 10  # the tracker ends when it reads the end of its pipe
    while (left := [p for p in [*workers, *map(int, tracker)] if alive(p)]) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.2)
    assert not left, [cmdline(pid) for pid in left]  # the workers and the resource tracker


def children(pid: int) -> list[int]:
    """The worker processes of `pid` (multiprocessing's resource tracker, also a child, left out)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    pids = [int(p) for p in path.read_text().split()] if path.exists() else []
    return [
        p for p in pids if b"spawn_main" in cmdline(p) and b"resource_tracker" not in cmdline(p)
    ]


def alive(pid: int) -> bool:
    """Running: not ended, and not a zombie (an ended child its parent did not wait for)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # it has just ended
        return b""


@pytest.mark.parametrize(
    "args, line",
    [
        (["--jobs", "0"], "error: --jobs must be a positive integer, got 0"),
        (
            ["--framework", "caffe"],
            "error: unknown framework 'caffe'; choose from: all, flax, jax, jax_impl, keras, numpy, "
            "pytorch, scratch, tensorflow, tf, tf_impl, torch, torch_impl",
        ),
    ],
)
def test_rosetta_all_refuses_bad_input_with_one_line(args, line):
    from typer.testing import CliRunner

    from tasks.cli import app

    result = CliRunner().invoke(app, ["all", "perceptron", *args])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [line]
