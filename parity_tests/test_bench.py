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
        assert r["ratio_vs_torch"] == pytest.approx(r["ms_cpu"] / torch_cpu[r["step"]], rel=2e-3)
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
