"""The float32 tolerances of tasks/parity.py are bounds on rounding, derived from a perturbation
experiment, not from one machine's kernels.

float32 results depend on the kernels a CPU selects (OpenBLAS's core type, oneDNN in TensorFlow and
torch, XLA's code generation), so a float32 bound must leave room for any rounding difference. The
experiment: move every canonical weight and every input that float32 rounds by one float32 ulp, up
or down at random, and recompute scratch in float32; the relative change of each compared tensor
(the spread) is what one rounding difference at the start does after the whole computation. Each
tolerance must sit a factor MARGIN above the spread of every case below, which includes the fragile
ones (ReLU and max-pool kinks, batch norm, 20 SGD steps, the perceptron's exact decisions). The
measured spreads and cross-framework errors of every float32 case are in the comment above
parity.TOLERANCES.
"""

from __future__ import annotations

import numpy as np
import pytest

from tasks import parity, weights

MARGIN = 10
CASES = [
    case
    for model in ("mlp", "lenet5", "rnn", "attention", "perceptron")
    for case in parity.CASES[model]
    if "float32" in case.dtypes
    and (model != "lenet5" or case.name == "relu-max")
    and (model != "rnn" or case.name == "sequence")
]


def one_ulp(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`a` in float32, each entry that float32 rounds moved to the next float32 up or down at random;
    exact entries (zeros, small integers: the perceptron's gates) stay, as no rounding moves them."""
    a32 = np.asarray(a, np.float32)
    away = np.where(rng.random(a32.shape) < 0.5, -np.inf, np.inf).astype(np.float32)
    rounded = a32.astype(np.float64) != np.asarray(a, np.float64)
    return np.where(rounded, np.nextafter(a32, away), a32)


def perturbed_compute(case, monkeypatch, tmp_path, seed: int = 0) -> dict[str, np.ndarray]:
    """parity.compute (or the case's engine) for scratch in float32, every rounded weight and input
    one ulp away."""
    rng = np.random.default_rng(seed)
    start = weights.load(parity.canonical_file(case))
    path = tmp_path / "perturbed.safetensors"
    weights.save(path, {k: one_ulp(v, rng).astype(np.float64) for k, v in start.items()})
    exact_inputs = parity.inputs

    def inputs(case, n, dtype):
        x, y = exact_inputs(case, n, dtype)
        x64 = case.make_inputs(np.random.default_rng(case.seed + 1), case.config, n)[0]
        return (one_ulp(x64, rng).astype(dtype) if x.dtype.kind == "f" else x), y

    monkeypatch.setattr(parity, "canonical_file", lambda case: path)
    monkeypatch.setattr(parity, "inputs", inputs)
    if parity.engine(case):
        return parity.engine(case).compute(case, "scratch", "float32")
    return parity.compute.__wrapped__(case, "scratch", "float32")  # uncached


def kind(case, tensor: str) -> str:
    """A tensor's tolerance class; the engine's tensors (the perceptron's) each their own."""
    if parity.engine(case):
        return tensor
    return "trajectory" if tensor.startswith("sgd.") else parity.kind(tensor)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_float32_tolerances_are_far_above_a_one_ulp_perturbation(case, monkeypatch, tmp_path):
    exact = parity.compute(case, "scratch", "float32")
    moved = perturbed_compute(case, monkeypatch, tmp_path)
    spread, tolerance = {}, {}
    for tensor in parity.expected_tensors(case):
        if tensor.startswith("roundtrip."):
            continue
        scale = parity.scale_of(case, tensor, exact)
        error = parity.rel_error(moved[tensor], exact[tensor], scale)[1]
        spread[kind(case, tensor)] = max(spread.get(kind(case, tensor), 0.0), error)
        tolerance[kind(case, tensor)] = parity.tolerance(tensor, "float32", case)
    if not any(spread.values()):  # every number of the case is exact in float32 (and-zero-init)
        pytest.skip("nothing in this case rounds in float32: no rounding difference to bound")
    for k, worst in spread.items():
        if parity.engine(case) and tolerance[k] > 0:
            # the perceptron's weights change by elementwise products and adds, in the same order in
            # all four (no kernel sums them), so with the same decisions they are bit-identical
            # (measured 0.0 under every kernel setting); its decisions are what rounding could flip
            continue
        # a tolerance of 0 (the perceptron's decisions) needs a spread of exactly 0: nothing flips
        assert MARGIN * worst <= tolerance[k], (
            f"{case.id} {k}: spread {worst:.1e}, tol {tolerance[k]}"
        )
