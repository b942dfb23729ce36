"""The suite's own settings (parity_tests/conftest.py) change no parity claim: JAX's programs compile
without LLVM optimisation and with XLA:CPU's older emitters in the suite (and without LLVM
optimisation in `rosetta parity`), users' training runs with XLA's defaults. Cases that cover
every kind of layer (dense, conv and pooling, batch norm with replayed dropout, LSTM with a
remainder batch, masked attention) are computed again in a fresh process with the flags the suite
was started with, in float64: those results pass every parity record and equal the suite's to 1e-12
(relative, per tensor). The float32 records need no second run: their tolerances bound any
rounding difference (test_float32.py), and another compilation of the same arithmetic is one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from parity_tests.conftest import STARTED_WITH, SUITE_XLA_ENV, llvm_optimised, xla_defaults_env
from tasks import parity

ROOT = Path(__file__).resolve().parents[1]
CASE_IDS = (
    "mlp[relu-batchnorm-dropout]",
    "lenet5[tanh-avg]",
    "lstm[sequence]",
    "attention[hand-padding]",
)
FLOAT64_TOLERANCE = 1e-12  # two compilations of one program: rounding only

SCRIPT = """
import json, sys
import numpy as np
from tasks import parity
out_dir, ids = sys.argv[1], sys.argv[2:]
cases = {c.id: c for m in parity.CASES for c in parity.CASES[m]}
failed = []
for i, case_id in enumerate(ids):
    case = cases[case_id]
    failed += [r for r in parity.records(case, ("scratch", "jax_impl"), ("float64",), False) if not r["passed"]]
    np.savez(f"{out_dir}/{i}.npz", **parity.compute(case, "jax_impl", "float64"))
print(json.dumps(failed, default=str))
"""


def case_by_id(case_id: str):
    return next(c for m in parity.CASES for c in parity.CASES[m] if c.id == case_id)


def test_the_suite_compiles_jax_unoptimised_but_in_quality_runs():
    if os.environ.get("ROSETTA_SUITE_XLA_DEFAULTS"):
        pytest.skip("ROSETTA_SUITE_XLA_DEFAULTS=1: this run compiles with XLA's defaults")
    import jax

    started = (STARTED_WITH["XLA_FLAGS"] or "").split()
    assert os.environ["XLA_FLAGS"].split() == [*started, *SUITE_XLA_ENV["XLA_FLAGS"].split()]
    assert jax.config.read("jax_disable_most_optimizations") is True
    with llvm_optimised():  # what conftest's fixture puts around each test marked slow
        assert jax.config.read("jax_disable_most_optimizations") is False
    assert jax.config.read("jax_disable_most_optimizations") is True
    env = xla_defaults_env()
    assert all(env.get(k) == v for k, v in STARTED_WITH.items())


@pytest.fixture(scope="module")
def default_settings_run(tmp_path_factory):
    """The cases computed by a fresh process with the flags the suite was started with."""
    out = tmp_path_factory.mktemp("xla-defaults")
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(out), *CASE_IDS],
        capture_output=True, text=True, timeout=600, cwd=ROOT, env=xla_defaults_env(),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1]), out


def test_every_record_passes_with_xla_default_settings(default_settings_run):
    failed, _ = default_settings_run
    assert failed == []


@pytest.mark.parametrize("index, case_id", list(enumerate(CASE_IDS)))
def test_float64_results_equal_the_suites_to_rounding(default_settings_run, index, case_id):
    _, out = default_settings_run
    defaults = dict(np.load(out / f"{index}.npz"))
    case = case_by_id(case_id)
    suite = parity.compute(case, "jax_impl", "float64")
    assert sorted(defaults) == sorted(suite)
    # measured against the size the case names (a gradient zero in exact arithmetic, such as the
    # key bias's, against its weight's): as the parity records measure it
    worst = max(
        parity.rel_error(suite[k], defaults[k], parity.scale_of(case, k, defaults))[1]
        for k in suite
    )
    assert worst <= FLOAT64_TOLERANCE, f"{case_id}: {worst:.1e}"


def test_rosetta_parity_compiles_jax_unoptimised_and_training_does_not(monkeypatch):
    """`rosetta parity` and `rosetta all`'s parity jobs compile JAX without LLVM's optimisation
    (parity.jax_unoptimised, whose results the tests above hold to the defaults'); the setting is
    restored after, so a training job in the same worker compiles optimised."""
    import jax

    from tasks import cli

    seen = []

    def records(case, frameworks):
        seen.append(jax.config.read("jax_disable_most_optimizations"))
        return []

    monkeypatch.setattr(parity, "records", records)
    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", False)  # as a user's process starts
    try:
        cli.parity_records(["perceptron"], ["scratch", "jax_impl"], show_progress=False)
        assert seen and all(seen)
        assert jax.config.read("jax_disable_most_optimizations") is False
        seen.clear()
        cli.parity_records(["perceptron"], ["scratch", "torch_impl"], show_progress=False)
        assert seen == [False] * len(seen) and seen  # no JAX: nothing switched
    finally:
        jax.config.update("jax_disable_most_optimizations", before)
