"""Parity checks: identical canonical weights in, identical outputs and gradients out.

The checks run as a star around `scratch/` (the hand-written reference) and pairwise between the
other frameworks. `parity_tests/` asserts them under pytest; `rosetta parity` prints them as a
table or JSON. Both call `compute`, so the CLI and the tests can never check different things.
The cases are each model's spec's (tasks/specs/; the case types and input generators are in
tasks/cases.py): CASES and OPTIMIZER_CASES here are views of them.

Relative error of a tensor: max|actual - reference| / max|reference|, one number per tensor, so an
element that happens to be near zero does not make the check meaningless.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tasks import weights
from tasks.cases import (
    DTYPES,
    Case,
    OptimizerCase,
    check_remainder,  # noqa: F401 (tasks.parity.check_remainder, as before the cases moved)
    images,
    pixels,
    sequences,
    tabular,
    tokens,
    with_batch_norm,
    zeros,
)
from tasks.data import Dataset
from tasks.registry import FRAMEWORKS, load_impl
from tasks.specs import transformer as transformer_spec


class _NoRetracingNotice(logging.Filter):
    """Parity builds a new Keras model per case, so `fit` makes a new tf.function per case from the
    same Python code, and TensorFlow warns after five that "N out of the last N calls ... triggered
    tf.function retracing" and suggests defining the function outside the loop. Here each trace is
    a new model's first and only one (a model fitted for several epochs traces once), so the notice
    is noise on every `rosetta parity` and `rosetta all` run: dropped, and only that one message.
    TensorFlow logs through the standard "tensorflow" logger, so no framework is imported here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


logging.getLogger("tensorflow").addFilter(_NoRetracingNotice())

# float64 proves a layout rule; float32 shows what users see (oneDNN and XLA reorder sums), so its
# bounds must hold whatever kernels a CPU selects. Sized by a perturbation experiment
# (parity_tests/test_float32.py asserts a 10x margin): every weight and input that float32 rounds
# moved by one float32 ulp moves the compared tensors by at most (relative, scratch, every float32
# case, 2 draws) outputs 5.4e-7, gradients 1.5e-6, 20-step trajectories 4.6e-7 (not LeNet-5 with
# batch norm and dropout: 0.41 after 20 steps in one draw, so that case is float64 only). The four
# frameworks' measured float32 errors are of the same size (outputs 3.9e-7, gradients 1.5e-6,
# trajectories 4.2e-7; AVX-512, OpenBLAS SkylakeX, oneDNN on), except attention's query/key
# gradients near uniform attention (3.6e-5 of their own size, transformer block 1), which are
# measured against their layer's value gradients in float32 (scale_from_float32). README,
# "Testing on other CPUs": the same checks under other kernels.
TOLERANCES = {
    "float64": {"output": 1e-10, "gradient": 1e-10, "trajectory": 1e-9},
    "float32": {"output": 1e-5, "gradient": 1e-4, "trajectory": 1e-4},
}
TRAJECTORY_STEPS = 20
TRAJECTORY_LR = 0.1


class _SpecCases(Mapping):
    """A view of every spec's cases (tasks/specs/): model -> its list, for the models that have
    some, in the registry's order. Read live, so a spec added to tasks.specs.SPECS shows."""

    def __init__(self, field: str):
        self.field = field

    def _cases(self) -> dict[str, list]:
        from tasks.registry import MODELS

        return {
            name: list(getattr(spec, self.field))
            for name, spec in MODELS.items()
            if getattr(spec, self.field)
        }

    def __getitem__(self, model: str) -> list:
        return self._cases()[model]

    def __iter__(self):
        return iter(self._cases())

    def __len__(self) -> int:
        return len(self._cases())


# model -> its parity cases and its optimiser-trajectory cases, as each model's spec declares them
CASES: Mapping[str, list[Case]] = _SpecCases("cases")
OPTIMIZER_CASES: Mapping[str, list[OptimizerCase]] = _SpecCases("optimizer_cases")
# what tests reach through this module: the shared input generators and starts (tasks/cases.py),
# the Transformer cases' sizes (tasks/specs/transformer.py)
_tabular, _sequences, _images, _pixels, _tokens = tabular, sequences, images, pixels, tokens
_with_batch_norm, _zeros = with_batch_norm, zeros
_tf = transformer_spec.SIZES


def engine(case) -> Any:
    """The case's own check module, imported now; None for the gradient checks of this file."""
    name = getattr(case, "engine", None)
    return importlib.import_module(name) if name else None


def kind(tensor: str) -> str:
    """Which tolerance a tensor takes: outputs and loss, or gradients."""
    return "gradient" if tensor.startswith("grad.") else "output"


def rel_error(
    actual: np.ndarray, reference: np.ndarray, scale: float | None = None
) -> tuple[float, float]:
    """(max abs error, relative error); `scale` replaces max|reference| where a case says so (scale_from)."""
    actual, reference = np.asarray(actual, np.float64), np.asarray(reference, np.float64)
    if actual.shape != reference.shape:
        return float("inf"), float("inf")
    abs_err = float(np.max(np.abs(actual - reference))) if actual.size else 0.0
    if scale is None:
        scale = float(np.max(np.abs(reference))) if reference.size else 0.0
    return abs_err, abs_err / scale if scale > 0 else abs_err


def assert_close(actual, reference, tol: float, what: str, scale: float | None = None) -> None:
    """assert_allclose with the suite's relative error: atol scales with the reference's size (or `scale`)."""
    reference = np.asarray(reference)
    if scale is None:
        scale = float(np.max(np.abs(reference))) if reference.size else 0.0
    np.testing.assert_allclose(actual, reference, rtol=tol, atol=tol * scale, err_msg=what)


def scale_of(case, tensor: str, result: dict) -> float | None:
    """The size a tensor's error is measured against: None (its own) unless the case names another
    (scale_from; in a float32 result also scale_from_float32)."""
    other = dict(getattr(case, "scale_from", ())).get(tensor)
    if other is None and tensor in result and np.asarray(result[tensor]).dtype == np.float32:
        other = dict(getattr(case, "scale_from_float32", ())).get(tensor)
    return None if other is None else float(np.max(np.abs(result[other])))


# ----------------------------------------------------------------------------- computing
def jax_unoptimised(active: bool = True):
    """JAX programs first compiled inside skip LLVM's optimisation (JAX's
    jax_disable_most_optimizations, read at each compilation). A parity case compiles a few
    programs and runs each for a few small steps, so optimising them costs more than it saves: the
    JAX share of every CASES case 121 -> 87 s of CPU on a first run (measured 2026-12-01). The
    results differ by rounding only (parity_tests/test_suite_settings.py holds cases compiled
    unoptimised to XLA's defaults, 1e-12 in float64). `rosetta parity` and `rosetta all`'s parity
    use it; training keeps the defaults. A program compiled before keeps its code."""
    return jax_llvm_optimisation(False) if active else contextlib.nullcontext()


@contextlib.contextmanager
def jax_llvm_optimisation(on: bool):
    """JAX programs first compiled inside are (on) or are not (off) optimised by LLVM: JAX's
    jax_disable_most_optimizations, read at each compilation, restored after. A program compiled
    before keeps its code (JAX's executable cache does not key on the setting)."""
    import jax

    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", not on)
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", before)


@functools.cache
def canonical_file(case: Case) -> Path:
    """Random non-zero weights *and biases* for the case, written once to a safetensors file."""
    path = (
        Path(tempfile.mkdtemp(prefix="rosetta-parity-")) / f"{case.model}-{case.name}.safetensors"
    )
    weights.save(
        path, getattr(case, "init", weights.init_uniform)(case.config.param_shapes(), case.seed)
    )
    return path


def inputs(case: Case, n: int, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = case.make_inputs(np.random.default_rng(case.seed + 1), case.config, n)
    cast = lambda a: a.astype(dtype) if a.dtype.kind == "f" else a  # token ids stay integers
    return cast(x), cast(y)  # float targets (a regression's) in the run's dtype, as a user gives


@functools.cache
def compute(case: Case, framework: str, dtype: str) -> dict[str, np.ndarray]:
    """Everything the checks compare, for one framework and dtype, in canonical names and layouts.

    forward/backward tensors (output, loss, grad.*), the round trip (roundtrip.*), and the
    parameters after TRAJECTORY_STEPS plain SGD steps through the framework's own train loop (sgd.*).
    An OptimizerCase computes only its trajectory (trajectory.*).
    """
    if isinstance(case, OptimizerCase):
        return optimizer_trajectory(case, framework, dtype)
    if engine(case):
        return engine(case).compute(case, framework, dtype)
    impl = load_impl(framework, case.model)
    params = weights.cast(weights.load(canonical_file(case)), dtype)
    model = create(impl, case, framework, dtype, params)
    out = {f"roundtrip.{k}": v for k, v in impl.export_canonical(model).items()}
    x, y = inputs(case, case.batch, dtype)
    supply_dropout_masks(case, framework, model, steps=1)
    out.update(impl.forward_backward(model, x, y))
    # trajectory: a fresh model, the same weights, TRAJECTORY_STEPS mini-batches in the shared order
    model = create(impl, case, framework, dtype, params)
    x, y = inputs(case, case.batch * TRAJECTORY_STEPS + case.remainder, dtype)
    data = Dataset(case.model, x, y, x[:1], y[:1], case.config.n_classes)
    supply_dropout_masks(case, framework, model, steps=TRAJECTORY_STEPS)
    impl.train(model, data, epochs=1, lr=TRAJECTORY_LR, batch_size=case.batch, seed=case.seed)
    trained = running_var_as_torch(
        case, framework, impl.export_canonical(model), params, TRAJECTORY_STEPS
    )
    out.update({f"sgd.{k}": v for k, v in trained.items()})
    return out


def create(impl, case, framework: str, dtype: str, params: dict | None = None):
    """The case's model; with dropout, its dropout layers are the framework's mask-replaying
    ReplayDropout (tasks/replay/), injected through create_model, so supply_dropout_masks can set them.

    With `params` (canonical weights) the model holds them, as create_model + load_canonical would
    give it; jax_impl then builds it abstractly and fills it (jax_impl.porting.load_model), so no
    initial weights are drawn (each draw is an XLA program compiled per shape) to be overwritten."""
    kwargs = {}
    if getattr(case.config, "dropout", 0):
        replay = importlib.import_module(f"tasks.replay.{framework}")
        kwargs["dropout_layer"] = replay.ReplayDropout
    if params is None:
        return impl.create_model(case.config, seed=0, dtype=dtype, **kwargs)
    return loaded_model(impl, framework, case.config, params, dtype, **kwargs)


def loaded_model(impl, framework: str, cfg, params: dict, dtype: str = "float64", **kwargs):
    """impl.create_model(cfg, seed=0, dtype=dtype, **kwargs) holding the canonical `params`: in
    jax_impl built abstractly and filled (jax_impl.porting.load_model), elsewhere created and loaded."""
    if framework == "jax_impl":
        from jax_impl.porting import load_model

        return load_model(impl, cfg, params, seed=0, dtype=dtype, **kwargs)
    model = impl.create_model(cfg, seed=0, dtype=dtype, **kwargs)
    impl.load_canonical(model, params)
    return model


def dropout_layers(model) -> list:
    """A model's dropout layers: the MLP keeps a list, LeNet-5 names them drop1 and drop2."""
    return list(model.dropouts) if hasattr(model, "dropouts") else [model.drop1, model.drop2]


def supply_dropout_masks(case, framework: str, model, steps: int) -> None:
    """The same keep-masks in every framework (their own draws come from different streams): a
    (steps, B, D) stack per dropout layer, one mask per training step; (B, D) for a single step."""
    if not getattr(case.config, "dropout", 0):
        return
    replay = importlib.import_module(f"tasks.replay.{framework}")
    rng = np.random.default_rng(case.seed + 2)
    for layer, width in zip(dropout_layers(model), case.config.hidden):
        masks = rng.random((steps, case.batch, width)) >= case.config.dropout
        replay.set_mask(layer, masks[0] if steps == 1 else masks)


def running_var_as_torch(case, framework: str, params: dict, start: dict, steps: int) -> dict:
    """Keras's and Flax's running variances (the biased batch variance) in torch's (canonical) convention.

    After K batches of n values per feature the exact relation is torch - (1-m)^K v0 = n/(n-1)
    (biased - (1-m)^K v0) (test_regularize proves it); n is the batch times a conv's H * W."""
    if framework not in ("tf_impl", "jax_impl"):
        return params
    positions = case.config.bn_positions() if hasattr(case.config, "bn_positions") else {}
    out = dict(params)
    for name, biased in params.items():
        if name.endswith("running_var"):
            n, decayed = (
                case.batch * positions.get(name.split(".")[0], 1),
                (1 - BN_MOMENTUM) ** steps * start[name],
            )
            out[name] = decayed + (biased - decayed) * n / (n - 1)
    return out


def expected_tensors(case: Case) -> list[str]:
    """Names of every compared tensor, known before any framework is imported (for test ids)."""
    if engine(case):
        return engine(case).expected_tensors(case)
    names = list(case.config.param_shapes())
    if isinstance(case, OptimizerCase):
        return [f"trajectory.{n}" for n in names]
    trainable = [
        n for n in names if not n.endswith(("running_mean", "running_var"))
    ]  # batch norm statistics have no gradient
    return [
        "output",
        "loss",
        *case.extra_outputs,
        "grad.input",
        *(f"grad.{n}" for n in trainable),
        *(f"roundtrip.{n}" for n in names),
        *(f"sgd.{n}" for n in names),
    ]


def tolerance(tensor: str, dtype: str, case=None) -> float:
    if engine(case):
        return engine(case).tolerance(tensor, dtype)
    if tensor.startswith("roundtrip."):
        return 0.0  # export(load(w)) must give w back bit for bit
    if tensor.startswith(("sgd.", "trajectory.")):
        return TOLERANCES[dtype]["trajectory"]
    return TOLERANCES[dtype][kind(tensor)]


def records(case: Case, frameworks=FRAMEWORKS, dtypes=DTYPES, pairwise: bool = True) -> list[dict]:
    """One record per (framework, reference, dtype, tensor): the errors, the tolerance, passed."""
    out = []
    frameworks = [fw for fw in frameworks if fw in getattr(case, "frameworks", FRAMEWORKS)]
    for dtype in [d for d in dtypes if d in getattr(case, "dtypes", DTYPES)]:
        results = {fw: compute(case, fw, dtype) for fw in frameworks}
        others = [fw for fw in frameworks if fw != "scratch"]
        pairs = [(fw, "scratch") for fw in others if "scratch" in results]
        if pairwise:
            pairs += [(a, b) for i, a in enumerate(others) for b in others[i + 1 :]]
        if "scratch" in results:  # the scratch round trip, checked against the file itself
            pairs.insert(0, ("scratch", "scratch"))
        for fw, ref in pairs:
            for tensor in expected_tensors(case):
                if fw == ref and not tensor.startswith("roundtrip."):
                    continue
                if tensor.startswith("roundtrip.") and fw == ref:
                    reference = weights.cast(weights.load(canonical_file(case)), dtype)[
                        tensor.removeprefix("roundtrip.")
                    ]
                else:
                    reference = results[ref][tensor]
                actual = results[fw].get(tensor)
                tol = tolerance(tensor, dtype, case)
                if actual is None:
                    abs_err = rel = float("inf")
                else:
                    abs_err, rel = rel_error(
                        actual,
                        reference,
                        scale_of(case, tensor, results[ref]) if fw != ref else None,
                    )
                # floats come back in the run's dtype; integer results (labels, counts) as integers on both sides
                integers = (
                    actual is not None
                    and np.asarray(actual).dtype.kind in "iu"
                    and np.asarray(reference).dtype.kind in "iu"
                )
                exact_dtype = integers or (
                    actual is not None and np.asarray(actual).dtype == np.dtype(dtype)
                )
                out.append(
                    {
                        "model": case.model,
                        "case": case.name,
                        "framework": fw,
                        "reference": ref if fw != ref else "canonical file",
                        "dtype": dtype,
                        "tensor": tensor,
                        "max_abs_error": abs_err,
                        "rel_error": rel,
                        "tolerance": tol,
                        "passed": bool(rel <= tol and exact_dtype),
                    }
                )
    return out


# ----------------------------------------------------------------------------- optimiser trajectories
BN_MOMENTUM = 0.1  # tasks' batch norm momentum, torch's convention (the weight of the new batch)


@functools.cache
def optimizer_trajectory(case: OptimizerCase, framework: str, dtype: str) -> dict[str, np.ndarray]:
    """Parameters after `case.steps` updates (trajectory.*), from the canonical weights of the case."""
    impl = load_impl(framework, case.model)
    start = weights.cast(weights.load(canonical_file(case)), dtype)
    model = create(impl, case, framework, dtype, start)  # holding `start`; in JAX none drawn
    x, y = inputs(case, case.batch * case.steps + case.remainder, dtype)
    data = Dataset(case.model, x, y, x[:1], y[:1], case.config.n_classes)
    supply_dropout_masks(
        case, framework, model, steps=case.steps
    )  # a new mask each step, the same in every framework
    # `lr` takes an OptimizerConfig too: each framework builds its stock optimiser from it
    impl.train(model, data, epochs=1, lr=case.optimizer, batch_size=case.batch, seed=case.seed)
    out = running_var_as_torch(case, framework, impl.export_canonical(model), start, case.steps)
    return {f"trajectory.{k}": v for k, v in out.items()}
