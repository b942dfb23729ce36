"""Parity checks: identical canonical weights in, identical outputs and gradients out.

The checks run as a star around `scratch/` (the hand-written reference) and pairwise between the
other frameworks. `parity_tests/` asserts them under pytest; `rosetta parity` prints them as a
table or JSON. Both call `compute`, so the CLI and the tests can never check different things.

Relative error of a tensor: max|actual - reference| / max|reference|, one number per tensor, so an
element that happens to be near zero does not make the check meaningless.
"""

from __future__ import annotations

import functools
import importlib
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from tasks import weights
from tasks.configs import (
    AttentionConfig,
    LeNet5Config,
    MLPConfig,
    OptimizerConfig,
    PerceptronConfig,
    RNNConfig,
    TransformerConfig,
)
from tasks.data import Dataset, gate
from tasks.registry import FRAMEWORKS, load_impl

DTYPES = ("float64", "float32")
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


@dataclass(frozen=True)
class Case:
    """One parity configuration of a model: a config, a batch, and how to make its inputs."""

    model: str
    name: str
    config: Any
    make_inputs: Callable[[np.random.Generator, Any, int], tuple[np.ndarray, np.ndarray]]
    batch: int = 8
    seed: int = 1234
    extra_outputs: tuple[
        str, ...
    ] = ()  # more forward tensors, compared like `output` (an RNN's states)
    # (tensor, other): measure this tensor's error against the other's size; for a gradient that is zero in
    # exact arithmetic (attention's key bias), where its own size is rounding noise
    scale_from: tuple[tuple[str, str], ...] = ()
    # the same, in float32 only: gradients that are small against their layer's others (attention's
    # query and key near uniform attention), whose float32 error is the rounding of those others
    scale_from_float32: tuple[tuple[str, str], ...] = ()
    dtypes: tuple[str, ...] = (
        DTYPES  # a case may skip float32 where another case of the model covers it
    )
    # Optional, for a model the gradient checks do not fit (the perceptron has no gradient): a module
    # with compute(case, framework, dtype), expected_tensors(case) and tolerance(tensor, dtype).
    engine: str | None = None
    init: Callable = (
        weights.init_uniform
    )  # (shapes, seed) -> the canonical weights of the case's file
    # samples beyond TRAJECTORY_STEPS full batches: the trajectory then ends on a last partial batch
    # (a pipeline that drops it, Keras's drop_remainder=True, takes one step fewer)
    remainder: int = 0

    def __post_init__(self):
        check_remainder(self)

    @property
    def id(self) -> str:
        return f"{self.model}[{self.name}]"


def check_remainder(case) -> None:
    """A partial last batch only where every step's batch size does not matter to the comparison:
    the supplied dropout masks are (steps, B, D) stacks, and running_var_as_torch's exact relation
    needs n values per feature in every batch."""
    cfg = case.config
    if case.remainder and (getattr(cfg, "dropout", 0) or getattr(cfg, "batch_norm", False)):
        raise ValueError(
            f"{case.model}[{case.name}]: a remainder needs a case without dropout or batch norm"
        )
    if not 0 <= case.remainder < case.batch:
        raise ValueError(f"remainder must be in [0, batch), got {case.remainder}")


def engine(case) -> Any:
    """The case's own check module, imported now; None for the gradient checks of this file."""
    name = getattr(case, "engine", None)
    return importlib.import_module(name) if name else None


def _tabular(rng, cfg, n):
    x = rng.normal(size=(n, cfg.in_features))
    y = rng.integers(0, cfg.n_classes, size=n)
    return x, y


def _separable(rng, cfg, n):
    """Points moved 0.5 away from a random hyperplane through 0, each to its own side: separable."""
    normal = rng.normal(size=cfg.in_features)
    normal /= np.linalg.norm(normal)
    x = rng.normal(size=(n, cfg.in_features))
    y = (x @ normal > 0).astype(np.int64)
    return x + np.where(y[:, None] == 1, 0.5, -0.5) * normal, y  # (B, D) + (B, 1) * (D,)


def _and_gate(rng, cfg, n):
    d = gate("and")  # the whole truth table, whatever n is
    return d.x_train, d.y_train


def _zeros(shapes, seed):
    """Every weight and bias 0 (the perceptron's classic start)."""
    return {name: np.zeros(shape) for name, shape in shapes.items()}


def _with_batch_norm(shapes, seed):
    """Uniform weights, gamma around 1 and a positive running variance for every batch norm."""
    params = weights.init_uniform(shapes, seed)
    rng = np.random.default_rng(seed + 7)
    for name in params:
        if name.startswith("bn") and name.endswith((".weight", ".running_var")):
            params[name] = rng.uniform(0.5, 2.0, params[name].shape)
    return params


CASES: dict[str, list[Case]] = {
    "mlp": [
        # 20 full batches of 8 and a last one of 3: a pipeline that drops it takes one step fewer
        Case(
            "mlp", "sigmoid-tanh", MLPConfig(5, (7, 6), 2, "tanh", "sigmoid"), _tabular, remainder=3
        ),
        Case("mlp", "softmax-relu", MLPConfig(5, (7, 6), 4, "relu", "softmax"), _tabular),
        # slope 0.2 is no framework's default (torch and jax 0.01, Keras 0.3): a dropped slope fails
        Case(
            "mlp",
            "softmax-leaky0.2",
            MLPConfig(5, (7,), 3, "leaky_relu", "softmax", leaky_slope=0.2),
            _tabular,
        ),
        Case("mlp", "sigmoid-sigmoid", MLPConfig(5, (6,), 2, "sigmoid", "sigmoid"), _tabular),
        Case("mlp", "softmax-linear", MLPConfig(5, (), 3, "relu", "softmax"), _tabular),
        # batch norm in train mode (the hidden layers lose their bias) and dropout with supplied masks
        Case(
            "mlp",
            "relu-batchnorm-dropout",
            MLPConfig(5, (7, 6), 4, "relu", "softmax", batch_norm=True, dropout=0.3),
            _tabular,
            init=_with_batch_norm,
        ),
    ],
    "perceptron": [
        # Rosenblatt's zero start on AND: w·x + b is exactly 0 at the first samples, so the tie rule decides
        Case(
            "perceptron",
            "and-zero-init",
            PerceptronConfig(2),
            _and_gate,
            batch=4,
            engine="tasks.perceptron_run",
            init=_zeros,
        ),
        Case(
            "perceptron",
            "separable-3d",
            PerceptronConfig(3),
            _separable,
            batch=40,
            engine="tasks.perceptron_run",
        ),
        # random labels: never separable, so every epoch updates and the run goes to the epoch cap
        Case(
            "perceptron",
            "noisy-5d",
            PerceptronConfig(5),
            _tabular,
            batch=40,
            engine="tasks.perceptron_run",
        ),
    ],
}


def _sequences(rng, cfg, n, steps=6):
    """(B, T, D) normal inputs; a label per step (many-to-many) or per sequence (many-to-one)."""
    x = rng.normal(size=(n, steps, cfg.in_features))
    y = rng.integers(0, cfg.n_classes, size=(n, steps) if cfg.output == "sequence" else n)
    return x, y


# Recurrent networks: every step's hidden state and the final state(s) are compared as outputs too.
# clip_norm is below the gradient norm of some of the SGD steps and above others, so both branches run.
_RNN_STATES = {"rnn": ("hidden", "h_n"), "lstm": ("hidden", "h_n", "c_n"), "gru": ("hidden", "h_n")}
for _cell, _states in _RNN_STATES.items():
    CASES[_cell] = [
        Case(
            _cell,
            "sequence",
            RNNConfig(_cell, 4, 5, 3, "sequence", clip_norm=0.25),
            _sequences,
            batch=4,
            extra_outputs=_states,
            remainder=3,  # a last partial batch
        ),
        Case(
            _cell,
            "last",
            RNNConfig(_cell, 3, 5, 2, "last", clip_norm=0.5),
            _sequences,
            batch=4,
            extra_outputs=_states,
        ),
    ]


def _images(rng, cfg, n):
    """(B, C, H, W) normal images and a class label each."""
    x = rng.normal(size=(n, cfg.in_channels, cfg.image_size, cfg.image_size))
    y = rng.integers(0, cfg.n_classes, size=n)
    return x, y


def _pixels(rng, cfg, n):
    """(B, C, H, W) intensities in [0, 1), like digits32's, and a class label each. Positive pixels give
    the conv maps non-zero means: a batch norm's running mean is then not a cancellation of zero-mean
    terms, whose rounding (2e-10 of its size after 50 steps with normal inputs) nears the 1e-9 bar."""
    x = rng.uniform(0.0, 1.0, size=(n, cfg.in_channels, cfg.image_size, cfg.image_size))
    y = rng.integers(0, cfg.n_classes, size=n)
    return x, y


# LeNet-5 at full size (the flatten permutation needs the real 16 x 5 x 5), small batches to stay fast.
# The regularised case runs batch norm in train mode and dropout with supplied masks (a new one each
# step); its batch is 16 because batch statistics of 4 samples make SGD chaotic: scratch and torch
# then part from 4e-14 after one step to 1e-5 after 20, while with 16 they stay within 4e-14.
CASES["lenet5"] = [
    # 20 full batches of 4 and a last one of 3
    Case("lenet5", "tanh-avg", LeNet5Config(activation="tanh", pooling="avg"), _images, batch=4,
         remainder=3),
    Case("lenet5", "relu-max", LeNet5Config(activation="relu", pooling="max"), _images, batch=4),
    Case(
        "lenet5", "relu-max-batchnorm-dropout", LeNet5Config(activation="relu", pooling="max", batch_norm=True, dropout=0.3),
        # float64 only: its float32 trajectory is the least stable of the suite (frameworks 1.2e-5
        # apart on one CPU, the largest float32 error; one of the experiment's one-ulp perturbations
        # moved it by 0.41, four others by <= 6.8e-6: a ReLU or max-pool flip grows through the
        # batch statistics), so no float32 bound holds on every CPU; tanh-avg and relu-max cover
        # LeNet-5 in float32
        _images, batch=16, init=_with_batch_norm, dtypes=("float64",),
    ),
]  # fmt: skip


def _tokens(rng, cfg, n, pad="right", steps=6):
    """(B, T) token ids 1..V-1 with PAD (0) beyond a random length >= 1, on the right or the left
    (or none); the targets are other random tokens, PAD where the input is PAD (ignored by the loss)."""
    lengths = rng.integers(1, steps + 1, n) if pad != "none" else np.full(n, steps)
    position = np.arange(steps)[None, :] if pad != "left" else np.arange(steps)[None, ::-1]
    real = position < lengths[:, None]  # (B, T): True on the sequence's own tokens
    x = np.where(real, rng.integers(1, cfg.vocab, (n, steps)), 0)
    y = np.where(real, rng.integers(1, cfg.vocab, (n, steps)), 0)
    return x, y


def _attention_case(model, name, config, pad, **kw):
    """A case whose analytically zero key-bias gradients are measured against the size of the same
    layer's value-weight gradients (the query/key gradients are themselves small near uniform attention)."""
    prefixes = (
        ["attn"] if model == "attention" else [f"blocks.{i}.attn" for i in range(config.n_layers)]
    )
    n_maps = 1 if model == "attention" else config.n_layers
    return Case(
        model, name, config, functools.partial(_tokens, pad=pad), batch=4,
        extra_outputs=tuple(f"attn_weights.{i}" for i in range(n_maps)),
        scale_from=tuple((f"grad.{p}.k.bias", f"grad.{p}.v.weight") for p in prefixes),
        scale_from_float32=tuple((f"grad.{p}.{t}", f"grad.{p}.v.weight")
                                 for p in prefixes for t in ("q.weight", "q.bias", "k.weight")),
        **kw,
    )  # fmt: skip


# Attention: hand-written and stock layers, key-padding and causal masks, and a case with fully masked
# rows (causal + left padding: a PAD query at the start may attend to nothing). Trajectories use SGD.
# float32 runs on the padding cases (hand-written and stock); float64 on all, to keep the suite short.
_att = dict(vocab=7, d_model=8, n_heads=2, optimizer="sgd")
_tf = dict(vocab=7, d_model=8, n_heads=2, d_ff=12, n_layers=2, optimizer="sgd")
CASES["attention"] = [
    _attention_case(
        "attention", "hand-nomask", AttentionConfig(**_att), "none", dtypes=("float64",)
    ),
    _attention_case("attention", "hand-padding", AttentionConfig(**_att), "right", remainder=3),
    _attention_case(
        "attention",
        "hand-causal-fully-masked",
        AttentionConfig(**_att, causal=True),
        "left",
        dtypes=("float64",),
    ),
    _attention_case(
        "attention",
        "stock-padding+causal",
        AttentionConfig(**_att, causal=True, stock=True),
        "right",
    ),
]
CASES["transformer"] = [
    _attention_case(
        "transformer",
        "post-relu-padding",
        TransformerConfig(**_tf, norm="post", activation="relu"),
        "left",
        remainder=3,  # a last partial batch
    ),
    _attention_case(
        "transformer",
        "pre-gelu-causal-fully-masked",
        TransformerConfig(**_tf, norm="pre", activation="gelu", causal=True),
        "left",
        dtypes=("float64",),
    ),
    _attention_case(
        "transformer",
        "post-gelu_tanh-stock-causal",
        TransformerConfig(**_tf, norm="post", activation="gelu_tanh", causal=True, stock=True),
        "right",
        dtypes=("float64",),
    ),
]


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
    return (x.astype(dtype) if x.dtype.kind == "f" else x), y  # token ids stay integers


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
    model = create(impl, case, framework, dtype)
    impl.load_canonical(model, params)
    out = {f"roundtrip.{k}": v for k, v in impl.export_canonical(model).items()}
    x, y = inputs(case, case.batch, dtype)
    supply_dropout_masks(case, framework, model, steps=1)
    out.update(impl.forward_backward(model, x, y))
    # trajectory: a fresh model, the same weights, TRAJECTORY_STEPS mini-batches in the shared order
    model = create(impl, case, framework, dtype)
    impl.load_canonical(model, params)
    x, y = inputs(case, case.batch * TRAJECTORY_STEPS + case.remainder, dtype)
    data = Dataset(case.model, x, y, x[:1], y[:1], case.config.n_classes)
    supply_dropout_masks(case, framework, model, steps=TRAJECTORY_STEPS)
    impl.train(model, data, epochs=1, lr=TRAJECTORY_LR, batch_size=case.batch, seed=case.seed)
    trained = running_var_as_torch(
        case, framework, impl.export_canonical(model), params, TRAJECTORY_STEPS
    )
    out.update({f"sgd.{k}": v for k, v in trained.items()})
    return out


def create(impl, case, framework: str, dtype: str):
    """The case's model; with dropout, its dropout layers are the framework's mask-replaying
    ReplayDropout (tasks/replay/), injected through create_model, so supply_dropout_masks can set them."""
    if not getattr(case.config, "dropout", 0):
        return impl.create_model(case.config, seed=0, dtype=dtype)
    replay = importlib.import_module(f"tasks.replay.{framework}")
    return impl.create_model(case.config, seed=0, dtype=dtype, dropout_layer=replay.ReplayDropout)


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
@dataclass(frozen=True)
class OptimizerCase:
    """A training run compared across frameworks: the same weights, batches and OptimizerConfig,
    `steps` updates through each framework's own train loop and stock optimiser, then the parameters."""

    model: str
    name: str
    config: Any
    make_inputs: Callable[[np.random.Generator, Any, int], tuple[np.ndarray, np.ndarray]]
    optimizer: OptimizerConfig
    steps: int = 50
    batch: int = 8
    seed: int = 1234
    dtypes: tuple[str, ...] = ("float64",)  # the bar: float64 to 1e-9 after 50 steps
    init: Callable = (
        weights.init_uniform
    )  # (shapes, seed) -> the canonical weights of the case's file
    remainder: int = 0  # samples after `steps` full batches: one more, partial, update (see Case)
    # the frameworks whose stock optimiser implements the case's formula; another is left out of the
    # records and tested against its own formula instead (Keras's RMSprop with eps > 0, test_optim)
    frameworks: tuple[str, ...] = FRAMEWORKS

    def __post_init__(self):
        check_remainder(self)

    @property
    def id(self) -> str:
        return f"{self.model}[{self.name}]"


# tanh hidden units: no gradient is exactly zero, so eps = 0 (the one setting where Keras's Adam and
# RMSprop are torch's algorithm, docs/PORTING.md) never divides 0 by 0
_OPT_MLP = MLPConfig(5, (7, 6), 3, "tanh", "softmax")
# LeNet-5 with batch norm after every conv and hidden dense layer, at reduced width (20x20 images,
# 3 and 4 channels, dense 10 and 8) so 50 steps x 11 optimisers stay quick; the 2x2 map after conv2
# still exercises the flatten permutation. Tanh and average pooling: again no exactly-zero gradient.
_OPT_LENET = LeNet5Config(
    image_size=20,
    channels=(3, 4),
    hidden=(10, 8),
    n_classes=5,
    activation="tanh",
    pooling="avg",
    batch_norm=True,
)


_EPS_OUTSIDE = ("scratch", "torch_impl", "jax_impl")  # RMSprop's eps outside the square root


def _optimizer_cases(
    model: str, cfg, make_inputs, init=weights.init_uniform
) -> list[OptimizerCase]:
    """Every optimiser, schedule, clipping and regulariser, on one model config."""
    case = lambda name, spec, frameworks=FRAMEWORKS, **changes: OptimizerCase(
        model, name, replace(cfg, **changes), make_inputs, spec, init=init, frameworks=frameworks
    )
    return [
        case("optim-sgd", OptimizerConfig("sgd", lr=0.1)),
        case("optim-momentum", OptimizerConfig("momentum", lr=0.05, momentum=0.9)),
        case("optim-nesterov", OptimizerConfig("nesterov", lr=0.05, momentum=0.9)),
        case("optim-rmsprop", OptimizerConfig("rmsprop", lr=0.01, rho=0.9, eps=0.0)),
        # the default eps, outside the root as torch and optax(eps_in_sqrt=False) put it; Keras puts it
        # inside, a different formula: test_optim checks Keras's trajectory against that formula instead
        case("optim-rmsprop-eps", OptimizerConfig("rmsprop", lr=0.01, rho=0.99, eps=1e-8), frameworks=_EPS_OUTSIDE),
        case("optim-adam", OptimizerConfig("adam", lr=0.01, eps=0.0)),
        case("optim-adamw", OptimizerConfig("adamw", lr=0.01, eps=0.0, weight_decay=0.1)),
        case("optim-adam-warmup-cosine", OptimizerConfig("adam", lr=0.02, eps=0.0, schedule="cosine", warmup_steps=10, decay_steps=30, min_lr_ratio=0.1)),
        case("optim-sgd-warmup-step", OptimizerConfig("sgd", lr=0.2, schedule="step", warmup_steps=5, step_size=15, gamma=0.5)),
        case("optim-sgd-clip", OptimizerConfig("momentum", lr=0.1, clip_norm=0.3)),
        # dropout with supplied masks, a new one each step (the frameworks' own draws come from different streams)
        case("optim-momentum-dropout", OptimizerConfig("momentum", lr=0.05), dropout=0.3),
        # an L2 penalty in the loss (coupled: it flows through Adam's moments), unlike adamw's decay
        case("optim-adam-l2", OptimizerConfig("adam", lr=0.01, eps=0.0), l2=0.05),
    ]  # fmt: skip


OPTIMIZER_CASES: dict[str, list[OptimizerCase]] = {
    "mlp": [
        *_optimizer_cases("mlp", _OPT_MLP, _tabular),
        # batch norm in train mode; the hidden layers have no bias then (a batch norm cancels it, and
        # its exactly-zero gradient would be rounding noise that Adam turns into lr-sized steps)
        OptimizerCase("mlp", "optim-adam-batchnorm", replace(_OPT_MLP, batch_norm=True), _tabular, OptimizerConfig("adam", lr=0.01, eps=0.0), init=_with_batch_norm),
        # 50 batches of 6 and a last one of 4, through each framework's input pipeline
        OptimizerCase("mlp", "optim-adam-partial-batch", _OPT_MLP, _tabular, OptimizerConfig("adam", lr=0.01, eps=0.0), batch=6, remainder=4),
    ],
    "lenet5": _optimizer_cases("lenet5", _OPT_LENET, _pixels, init=_with_batch_norm),
}  # fmt: skip
BN_MOMENTUM = 0.1  # tasks' batch norm momentum, torch's convention (the weight of the new batch)


@functools.cache
def optimizer_trajectory(case: OptimizerCase, framework: str, dtype: str) -> dict[str, np.ndarray]:
    """Parameters after `case.steps` updates (trajectory.*), from the canonical weights of the case."""
    impl = load_impl(framework, case.model)
    model = create(impl, case, framework, dtype)
    start = weights.cast(weights.load(canonical_file(case)), dtype)
    impl.load_canonical(model, start)
    x, y = inputs(case, case.batch * case.steps + case.remainder, dtype)
    data = Dataset(case.model, x, y, x[:1], y[:1], case.config.n_classes)
    supply_dropout_masks(
        case, framework, model, steps=case.steps
    )  # a new mask each step, the same in every framework
    # `lr` takes an OptimizerConfig too: each framework builds its stock optimiser from it
    impl.train(model, data, epochs=1, lr=case.optimizer, batch_size=case.batch, seed=case.seed)
    out = running_var_as_torch(case, framework, impl.export_canonical(model), start, case.steps)
    return {f"trajectory.{k}": v for k, v in out.items()}
