"""Shared helpers for the parity tests: test ids, the star and pairwise checks on the cached
per-framework computations, and central differences for the scratch backward tests."""

from __future__ import annotations

import json
import os
from itertools import combinations

# torch's intra-op pool (a spinning thread per core) on these models' tiny operations, with two
# xdist workers on two cores: torch's default MLP run (moons, 60 epochs, float32) took 154 s wall /
# 34.5 s CPU on two threads and 13.9 s / 3.4 s on one, the same 60 accuracies to the digit (load
# average 16). Set before any test module starts torch; `rosetta all` does the same
# (tasks/cli.py one_thread_for_torch), and OMP_NUM_THREADS wins if set. NumPy's OpenBLAS, loaded
# after this file, reads it too: one thread per worker (threadpoolctl shows openblas at 1 in a test).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest
from hypothesis import settings

from tasks import parity

# JAX: the suite compiles several hundred small programs and runs each for a few steps, so XLA's
# compilation is most of JAX's share of the suite (the five Transformer parity cases: 43 s of CPU with
# XLA's default settings, 12 s with these). The suite compiles as the data-parallel chapter's runs do
# (tasks/data_parallel.py FAST_COMPILE): with XLA:CPU's older LLVM IR emitters (XLA_FLAGS) and
# without LLVM optimisation (JAX_DISABLE_MOST_OPTIMIZATIONS, JAX's switch, read at each compilation),
# set here before any test imports JAX and inherited by the CLI runs the tests start. The quality
# runs (marked slow: thousands of steps) compile with LLVM's optimisation, as users' runs do
# (quality_runs_compile_optimised below): unoptimised, XLA:CPU's float64 convolution is a naive loop
# (LeNet-5's float64 lockstep: JAX 9 s of CPU optimised, 27 s not). Users' training runs keep
# XLA's defaults (`rosetta parity` compiles unoptimised too: parity.jax_unoptimised);
# test_suite_settings.py computes parity cases with them in a fresh process and
# holds them to the suite's results. ROSETTA_SUITE_XLA_DEFAULTS=1 runs the suite with the defaults.
# XLA:CPU splits each program's LLVM module into parts compiled on parallel threads: with two
# workers on two cores that buys no wall time and costs CPU, so the suite
# compiles each program whole (xla_cpu_parallel_codegen_split_count=1; measured with two processes
# at once, as the suite's workers run: JAX's share of the optimiser trajectories 11.3 -> 9.6 s of
# CPU, of the recurrent parity and stock cases 12.3 -> 12.5, unchanged; results equal to rounding:
# float64 <= 3e-16 relative, LeNet-5's eps-free RMSprop trajectory 2.4e-11, float32 1.2e-7).
SUITE_XLA_ENV = {
    "XLA_FLAGS": "--xla_cpu_use_fusion_emitters=false --xla_cpu_parallel_codegen_split_count=1",
    "JAX_DISABLE_MOST_OPTIMIZATIONS": "1",
}
# the values the suite was started with (an xdist worker inherits the controller's, these included)
os.environ.setdefault(
    "ROSETTA_SUITE_STARTED_WITH", json.dumps({k: os.environ.get(k) for k in SUITE_XLA_ENV})
)
STARTED_WITH = json.loads(os.environ["ROSETTA_SUITE_STARTED_WITH"])
if not os.environ.get("ROSETTA_SUITE_XLA_DEFAULTS"):
    os.environ["XLA_FLAGS"] = (
        f"{STARTED_WITH['XLA_FLAGS'] or ''} {SUITE_XLA_ENV['XLA_FLAGS']}".strip()
    )
    os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] = SUITE_XLA_ENV["JAX_DISABLE_MOST_OPTIMIZATIONS"]


def xla_defaults_env() -> dict[str, str]:
    """os.environ with the XLA settings the suite was started with: for a process that compiles as
    users' runs do."""
    env = {k: v for k, v in os.environ.items() if k not in SUITE_XLA_ENV}
    return env | {k: v for k, v in STARTED_WITH.items() if v is not None}


def llvm_optimised():
    """JAX programs first compiled inside are optimised by LLVM, as users' runs are."""
    return parity.jax_llvm_optimisation(True)


@pytest.fixture(autouse=True)
def quality_runs_compile_optimised(request):
    if request.node.get_closest_marker("slow") is None:
        yield
        return
    with llvm_optimised():
        yield


# The property tests (random shapes) draw the same examples on every run: a red run can be rerun,
# and CI does not turn red on a draw no earlier run made. Found when a new draw (d_model 2, pre-LN)
# hit gradients that are zero in exact arithmetic (test_transformer.py's random-shapes test).
settings.register_profile("rosetta", derandomize=True)
settings.load_profile("rosetta")

FRAMEWORK_IDS = ("torch_impl", "tf_impl", "jax_impl")


def star_params(model: str):
    """(case, framework, dtype, tensor) for every check of `model`, with ids like
    `mlp[softmax-relu]-tf_impl-float64-grad.hidden.0.weight`."""
    out = []
    for case in parity.CASES[model]:
        for framework in FRAMEWORK_IDS:
            for dtype in getattr(case, "dtypes", parity.DTYPES):  # a case may run float64 only
                for tensor in parity.expected_tensors(case):
                    out.append(
                        pytest.param(
                            case,
                            framework,
                            dtype,
                            tensor,
                            id=f"{case.id}-{framework}-{dtype}-{tensor}",
                        )
                    )
    return out


# ----------------------------------------------------------------------------- the checks
def assert_matches_scratch(case, framework: str, dtype: str, tensor: str) -> None:
    """One tensor of one framework against the scratch reference: in the run's dtype, at the stated
    tolerance, measured against the size the case names for it (its own unless `scale_from` says)."""
    actual = parity.compute(case, framework, dtype)[tensor]
    reference = parity.compute(case, "scratch", dtype)
    assert np.asarray(actual).dtype == np.dtype(dtype), (
        f"{tensor} came back as {np.asarray(actual).dtype}"
    )
    what = f"{case.id} {framework} {dtype} {tensor}"
    parity.assert_close(
        actual,
        reference[tensor],
        parity.tolerance(tensor, dtype),
        what,
        parity.scale_of(case, tensor, reference),
    )


def assert_frameworks_agree_pairwise(case) -> None:
    """Every tensor of torch, Keras and Flax against each other in float64 (not only each against scratch)."""
    results = {fw: parity.compute(case, fw, "float64") for fw in FRAMEWORK_IDS}
    for a, b in combinations(FRAMEWORK_IDS, 2):  # (torch, tf), (torch, jax), (tf, jax)
        for tensor in parity.expected_tensors(case):
            tol = parity.tolerance(tensor, "float64")
            parity.assert_close(
                results[a][tensor],
                results[b][tensor],
                tol,
                f"{a} vs {b} {tensor}",
                parity.scale_of(case, tensor, results[b]),
            )


# ----------------------------------------------------------------------------- finite differences
def numeric_grad(f, array: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central differences of the scalar f() with respect to every entry of `array` (changed in place,
    each entry restored before the next)."""
    grad = np.zeros_like(array)
    for i in np.ndindex(array.shape):
        old = array[i]
        array[i] = old + eps
        up = f()
        array[i] = old - eps
        down = f()
        array[i] = old
        grad[i] = (up - down) / (2 * eps)
    return grad


# ----------------------------------------------------------------------------- scheduling
# xdist gives each worker a whole file (--dist loadfile) and the next one as it nears the end of its
# current file, in collection order (addopts: --no-loadscope-reorder; by default xdist orders files
# by their number of tests, so a costly file with few tests can start last). Files are collected the
# costliest first, so the run does not end on one worker with a long file while the other idles.
# CPU seconds per file in a full run (2026-12-01: each test's process time plus its subprocesses');
# a file not listed runs after these. Stale figures cost balance, never a check.
FILE_COST = {
    "test_rnn.py": 77,
    "test_lenet5.py": 71,
    "test_data_parallel.py": 61,
    "test_transformer.py": 52,
    "test_optim.py": 49,
    "test_training.py": 34,
    "test_attention.py": 30,
    "test_bench.py": 18,
    "test_mlp.py": 15,
    "test_convert.py": 14,
    "test_suite_settings.py": 13,
    "test_flax_idioms.py": 12,
    "test_port_training.py": 10,
    "test_startup.py": 10,
    "test_errors.py": 9,
    "test_perceptron.py": 9,
    "test_compare.py": 8,
    "test_porting.py": 5,
    "test_evaluate.py": 4,
    "test_regularize.py": 3,
    "test_cli.py": 3,
    "test_keras_idioms.py": 3,
    "test_init.py": 2,
}


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: -FILE_COST.get(item.path.name, 0))  # stable: each file's own order
