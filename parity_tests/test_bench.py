"""`python -m tasks.bench`: the --json rows (one per model, framework and step) and its bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

BENCH = [sys.executable, "-m", "tasks.bench"]
ROW_KEYS = {"model", "framework", "step", "ms_wall", "ms_cpu", "ratio_vs_torch"}


def bench(*args, timeout=300):
    return subprocess.run([*BENCH, *args], capture_output=True, text=True, timeout=timeout)


def test_json_rows_one_per_framework_and_step():
    """The MLP at its default size, two rounds: eight rows, ratios from CPU time against torch's."""
    result = bench("mlp", "--repeats", "2", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
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
    assert "load average" in result.stderr  # the machine and its load, with every figure


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


def test_rosetta_all_scoped_to_one_model_ends_with_the_summary():
    """`rosetta all perceptron` in process: one summary row, the records line last; --json unchanged."""
    from typer.testing import CliRunner

    from tasks.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["all", "perceptron"])
    assert result.exit_code == 0, result.output
    lines = result.output.rstrip().splitlines()
    assert lines[-1].endswith("records, all passed") and int(lines[-1].split()[0]) > 100
    assert sum(line.lstrip("│┃ ").startswith("perceptron") for line in lines) == 1
    assert "largest relative error per check" not in result.output  # the full table: --verbose only
    verbose = runner.invoke(app, ["all", "perceptron", "--verbose"])
    assert "largest relative error per check" in verbose.output
    assert verbose.output.rstrip().splitlines()[-1] == lines[-1]
    as_json = runner.invoke(app, ["all", "perceptron", "--json"])
    document = json.loads(as_json.output)
    assert set(document) == {"train", "parity"} and len(document["parity"]) == int(
        lines[-1].split()[0]
    )
