"""Parity cases: the dataclasses that describe one parity configuration of a model, and the input
generators and weight starts the cases of tasks/specs/ draw from.

A model's cases live in its spec (tasks/specs/); tasks/parity.py computes and checks them, and
`tasks.parity.CASES` / `OPTIMIZER_CASES` are views of every spec's cases. Nothing here imports a
framework.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from tasks import weights
from tasks.configs import OptimizerConfig
from tasks.data import gate
from tasks.registry import FRAMEWORKS

DTYPES = ("float64", "float32")


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


# ----------------------------------------------------------------------------- inputs and starts
def tabular(rng, cfg, n):
    """(B, D) normal features and a class label each; a regression config (an identity head) gets
    (B, K) normal float targets instead."""
    x = rng.normal(size=(n, cfg.in_features))
    if getattr(cfg, "regression", False):
        return x, rng.normal(size=(n, cfg.n_classes))  # (B, K), K = the config's targets
    y = rng.integers(0, cfg.n_classes, size=n)
    return x, y


def separable(rng, cfg, n):
    """Points moved 0.5 away from a random hyperplane through 0, each to its own side: separable."""
    normal = rng.normal(size=cfg.in_features)
    normal /= np.linalg.norm(normal)
    x = rng.normal(size=(n, cfg.in_features))
    y = (x @ normal > 0).astype(np.int64)
    return x + np.where(y[:, None] == 1, 0.5, -0.5) * normal, y  # (B, D) + (B, 1) * (D,)


def and_gate(rng, cfg, n):
    d = gate("and")  # the whole truth table, whatever n is
    return d.x_train, d.y_train


def zeros(shapes, seed):
    """Every weight and bias 0 (the perceptron's classic start)."""
    return {name: np.zeros(shape) for name, shape in shapes.items()}


def with_batch_norm(shapes, seed):
    """Uniform weights, gamma around 1 and a positive running variance for every batch norm."""
    params = weights.init_uniform(shapes, seed)
    rng = np.random.default_rng(seed + 7)
    for name in params:
        if name.startswith("bn") and name.endswith((".weight", ".running_var")):
            params[name] = rng.uniform(0.5, 2.0, params[name].shape)
    return params


def sequences(rng, cfg, n, steps=6):
    """(B, T, D) normal inputs; a label per step (many-to-many) or per sequence (many-to-one)."""
    x = rng.normal(size=(n, steps, cfg.in_features))
    y = rng.integers(0, cfg.n_classes, size=(n, steps) if cfg.output == "sequence" else n)
    return x, y


def images(rng, cfg, n):
    """(B, C, H, W) normal images and a class label each."""
    x = rng.normal(size=(n, cfg.in_channels, cfg.image_size, cfg.image_size))
    y = rng.integers(0, cfg.n_classes, size=n)
    return x, y


def pixels(rng, cfg, n):
    """(B, C, H, W) intensities in [0, 1), like digits32's, and a class label each. Positive pixels give
    the conv maps non-zero means: a batch norm's running mean is then not a cancellation of zero-mean
    terms, whose rounding (2e-10 of its size after 50 steps with normal inputs) nears the 1e-9 bar."""
    x = rng.uniform(0.0, 1.0, size=(n, cfg.in_channels, cfg.image_size, cfg.image_size))
    y = rng.integers(0, cfg.n_classes, size=n)
    return x, y


def tokens(rng, cfg, n, pad="right", steps=6):
    """(B, T) token ids 1..V-1 with PAD (0) beyond a random length >= 1, on the right or the left
    (or none); the targets are other random tokens, PAD where the input is PAD (ignored by the loss)."""
    lengths = rng.integers(1, steps + 1, n) if pad != "none" else np.full(n, steps)
    position = np.arange(steps)[None, :] if pad != "left" else np.arange(steps)[None, ::-1]
    real = position < lengths[:, None]  # (B, T): True on the sequence's own tokens
    x = np.where(real, rng.integers(1, cfg.vocab, (n, steps)), 0)
    y = np.where(real, rng.integers(1, cfg.vocab, (n, steps)), 0)
    return x, y


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


EPS_OUTSIDE = ("scratch", "torch_impl", "jax_impl")  # RMSprop's eps outside the square root


def optimizer_cases(model: str, cfg, make_inputs, init=weights.init_uniform) -> list[OptimizerCase]:
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
        case("optim-rmsprop-eps", OptimizerConfig("rmsprop", lr=0.01, rho=0.99, eps=1e-8), frameworks=EPS_OUTSIDE),
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
