"""The spec of a model: everything model-specific the hub (training, the CLI, parity, conversion)
needs, in one frozen object per model. tasks/contract.py declares it as the `ModelSpec` protocol;
this dataclass is the one every spec of tasks/specs/ is built from, with the defaults most models
take. Nothing here imports a framework.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from tasks import weights
from tasks.data import Dataset, pad_to

# `rosetta train` flags that every gradient model takes and the perceptron's rule ignores
GRADIENT_FLAGS = frozenset(
    ("--batch-size", "--optimizer", "--schedule", "--warmup-steps", "--clip-norm", "--patience", "--plot")
)  # fmt: skip
# the flags of a config with init, dropout, batch_norm and l2 fields (MLPConfig, LeNet5Config)
REGULARISER_FLAGS = frozenset(("--init", "--dropout", "--batch-norm", "--l2"))


def unchanged(data: Dataset, opts: Any = None) -> Dataset:
    """prepare for a model that takes the task's arrays as they are."""
    return data


def uniform(cfg, seed: int) -> dict[str, np.ndarray]:
    """initial_weights for most models: the canonical seeded uniform draw of every tensor."""
    return weights.init_uniform(cfg.param_shapes(), seed)


def any_hidden(sizes: tuple[int, ...]) -> str | None:
    """check_hidden for a model that takes any number of hidden sizes: no objection."""
    return None


@dataclass(frozen=True)
class ModelSpec:
    """One model of the suite (see tasks.contract.ModelSpec for what each field means)."""

    name: str  # what `rosetta train NAME` takes
    file: str  # the framework file: scratch/{file}.py, torch_impl/{file}.py, ...
    tasks: tuple[str, ...]  # tasks it can train on; the first is the default
    summary: str  # one line for `rosetta list`
    config_type: type  # the config dataclass make_config returns
    make_config: Callable[[Dataset, Any], Any]  # (data, TrainOptions) -> config
    inputs: Callable  # (rng, cfg, n) -> (x, y): random inputs of a config's shape
    defaults: dict = field(default_factory=dict)  # task -> default training options
    runner: str = "tasks.train"  # module whose run() trains it (gradient models share one)
    gradient: bool = True  # False: a rule without gradients (contract.ModelModule)
    prepare: Callable[[Dataset, Any], Dataset] = unchanged  # (data, TrainOptions | None) -> data
    initial_weights: Callable[[Any, int], dict] = uniform  # (cfg, seed) -> canonical weights
    default_clip: float | None = None  # the model's own gradient clipping, unless --clip-norm
    flags: frozenset[str] = frozenset()  # the model flags of `rosetta train` it takes
    activations: tuple[str, ...] = ()  # what --activation accepts
    check_hidden: Callable[[tuple[int, ...]], str | None] = any_hidden  # --hidden: why not, or None
    attention_maps: bool = False  # forward_backward returns attn_weights.* (rosetta attention-map)
    shared_files: tuple[str, ...] = ()  # other framework files it imports (rosetta compare)
    cases: tuple = ()  # tasks.cases.Case: its parity checks
    optimizer_cases: tuple = ()  # tasks.cases.OptimizerCase: its optimiser trajectories

    @property
    def default_task(self) -> str:
        return self.tasks[0]


# ----------------------------------------------------------------------------- helpers specs share
def regularisers(opts) -> dict:
    """The init, dropout, batch_norm and l2 fields of a config that has them, from the options
    given (None: the config's own default)."""
    chosen = {
        "init": opts.init,
        "dropout": opts.dropout,
        "batch_norm": opts.batch_norm or None,
        "l2": opts.l2,
    }
    return {k: v for k, v in chosen.items() if v is not None}


def scratch_drawn(file: str) -> Callable[[Any, int], dict]:
    """initial_weights for a config with regularisers: a named initialiser (He, Xavier) or batch
    norm's start is scratch's seeded draw, loaded by all four; otherwise the canonical uniform."""

    def initial_weights(cfg, seed: int) -> dict[str, np.ndarray]:
        if cfg.init != "uniform" or cfg.batch_norm:
            from tasks.registry import load_impl

            impl = load_impl("scratch", file)
            return impl.export_canonical(impl.create_model(cfg, seed=seed))
        return uniform(cfg, seed)

    return initial_weights


def flatten(data: Dataset, opts: Any = None) -> Dataset:
    """Flat feature vectors: (B, C, H, W) -> (B, C*H*W); flat data unchanged."""
    if data.x_train.ndim <= 2:
        return data
    flat = lambda a: a.reshape(len(a), -1)  # noqa: E731
    return replace(data, x_train=flat(data.x_train), x_test=flat(data.x_test))


def padded_to(size: int) -> Callable[[Dataset, Any], Dataset]:
    """prepare for a model of square size x size images: a smaller image is zero-padded around
    (MNIST's 28x28 -> 32x32, as in the LeNet-5 paper); a larger one is refused by pad_to."""

    def prepare(data: Dataset, opts: Any = None) -> Dataset:
        if data.x_train.shape[2:] == (size, size):
            return data
        pad = lambda a: pad_to(a, size)  # noqa: E731
        return replace(data, x_train=pad(data.x_train), x_test=pad(data.x_test))

    return prepare
