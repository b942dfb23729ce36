"""The contract of a framework model module: what `{framework}/{model}.py` exposes to the rest of
the suite (training, parity checks, the CLI), declared once as typing.Protocols.

A new model is four framework files that satisfy `GradientModelModule` (or `ModelModule` for a
rule without gradients, like the perceptron's), one spec that satisfies `ModelSpec` (tasks/specs/:
everything model-specific the hub needs), and its tests; parity_tests/test_contract.py checks
every module against its protocol, signature by signature, and every spec against `ModelSpec`.
"""

from __future__ import annotations

import inspect
import typing
from typing import Any, Protocol

import numpy as np

from tasks.data import Dataset


class ModelModule(Protocol):
    """Every model module: build, load/export canonical weights, train, evaluate."""

    def create_model(self, cfg: Any, *, seed: int, dtype: str = "float64") -> Any:
        """The model for a config from tasks/configs.py, its randomness from `seed` alone."""

    def load_canonical(self, model: Any, params: dict[str, np.ndarray]) -> None:
        """Set the model's weights from the canonical dict (scratch layout); refuses a wrong name,
        shape or dtype, leaving the model unchanged."""

    def export_canonical(self, model: Any) -> dict[str, np.ndarray]:
        """The model's weights as the canonical dict; load_canonical(export_canonical(m)) is exact."""

    def train(
        self, model: Any, data: Dataset, *, epochs: int, lr: Any, seed: int, on_epoch: Any = None
    ) -> list:
        """Train in the shared sample/batch order of `seed`; returns one figure per epoch (the mean
        training loss; the perceptron's mistakes). on_epoch(epoch, figure) runs after each epoch and
        may raise tasks.train.EarlyStop."""

    def evaluate(self, model: Any, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        """(loss, accuracy) on a whole split (the perceptron: mistakes, accuracy), in inference mode."""


class GradientModelModule(ModelModule, Protocol):
    """A model trained by gradients: adds the batch size, the parity hooks and the optimiser."""

    def train(
        self,
        model: Any,
        data: Dataset,
        *,
        epochs: int,
        lr: Any,
        batch_size: int,
        seed: int,
        on_epoch: Any = None,
    ) -> list[float]:
        """Mini-batches of `batch_size` in the shared order; `lr` is a float (the model's default
        optimiser) or a tasks.configs.OptimizerConfig."""

    def forward_backward(self, model: Any, x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
        """What the parity tests compare: "output", "loss", "grad.input" and "grad.<canonical
        name>" for every trainable tensor, in the canonical layout."""

    def make_optimizer(self, model: Any, lr: Any) -> Any:
        """The framework's optimiser for a float lr or an OptimizerConfig."""


class ModelSpec(Protocol):
    """Everything model-specific that training, the CLI, parity and conversion need, for one model
    (tasks/specs/; tasks.specs.base.ModelSpec builds them). The hub looks a model up here and
    never branches on its name or config type."""

    name: str  # what `rosetta train NAME` takes
    file: str  # the framework file of every folder: scratch/{file}.py, torch_impl/{file}.py, ...
    tasks: tuple[str, ...]  # tasks it trains on (tasks.data.load_task); the first is the default
    summary: str  # one line for `rosetta list`
    defaults: dict  # task -> default training options (TrainOptions fields; "config": sizes)
    runner: str  # the module whose run() trains it: tasks.train for a gradient model
    gradient: bool  # trained by gradients (GradientModelModule), else a rule (ModelModule)
    config_type: type  # the config dataclass make_config returns (tasks/configs.py)
    default_clip: float | None  # its own gradient clipping, kept unless --clip-norm replaces it
    flags: frozenset  # the `rosetta train` model flags it takes (tasks.cli.FLAG_RULES' keys)
    activations: tuple  # what --activation accepts (empty: it takes no --activation)
    attention_maps: bool  # forward_backward returns attn_weights.<layer> (rosetta attention-map)
    shared_files: tuple  # other framework files its own imports (shown by rosetta compare)
    cases: tuple  # tasks.cases.Case: its parity checks (tasks.parity.CASES[name])
    optimizer_cases: tuple  # tasks.cases.OptimizerCase (tasks.parity.OPTIMIZER_CASES[name])

    def make_config(self, data: Dataset, opts: Any) -> Any:
        """The config for a prepared dataset and a tasks.train.TrainOptions with the task's
        defaults filled in: sizes from the data, the rest from the options."""

    def prepare(self, data: Dataset, opts: Any = None) -> Dataset:
        """The task's arrays shaped for the model (flattened, padded, ...), for the run's
        tasks.train.TrainOptions (None: the defaults; LeNet-5 keeps the images' size when --padding
        pads its convolutions); may raise tasks.data.DataFileError for data it cannot take."""

    def initial_weights(self, cfg: Any, seed: int) -> dict[str, np.ndarray]:
        """The seeded canonical start every framework loads."""

    def inputs(self, rng: np.random.Generator, cfg: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
        """`n` random inputs and labels of a config's shape (parity and data-parallel checks)."""

    def check_hidden(self, sizes: tuple[int, ...]) -> str | None:
        """Why `--hidden sizes` does not fit the model (one line), or None."""


def spec_violations(spec: Any) -> list[str]:
    """What `spec` lacks of the ModelSpec protocol: a missing or mistyped field, a function that
    cannot be called the way the hub calls it, or data that contradicts itself (a default for a
    task it does not list, a case of another model, --activation without activations). Empty
    when it conforms."""
    name = getattr(spec, "name", repr(spec))
    problems = violations(_Named(spec, f"spec {name}"), ModelSpec)
    hints = typing.get_type_hints(ModelSpec)
    for field, hint in hints.items():
        if not hasattr(spec, field):
            problems.append(f"spec {name}: no {field}")
            continue
        kind = typing.get_origin(hint) or hint
        if kind is typing.Union or str(kind) == "<class 'types.UnionType'>":
            kind = tuple(typing.get_origin(a) or a for a in typing.get_args(hint))
        if not isinstance(getattr(spec, field), kind):
            problems.append(f"spec {name}: {field} is a {type(getattr(spec, field)).__name__}")
    if problems:
        return problems
    if not spec.tasks or set(spec.defaults) - set(spec.tasks):
        problems.append(f"spec {name}: defaults for tasks it does not list, or no task")
    if ("--activation" in spec.flags) != bool(spec.activations):
        problems.append(f"spec {name}: --activation in flags but no activations, or the reverse")
    for case in (*spec.cases, *spec.optimizer_cases):
        if case.model != name:
            problems.append(f"spec {name}: case {case.id} is another model's")
    return problems


class _Named:
    """An object seen through with a name for violations()' messages."""

    def __init__(self, target: Any, name: str):
        self._target, self.__name__ = target, name

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._target, attr)


def protocol_for(model: str) -> type:
    """What the model's framework modules must satisfy: its spec says whether it is trained by
    gradients (the perceptron's rule is not)."""
    from tasks.registry import MODELS

    return GradientModelModule if MODELS[model].gradient else ModelModule


def members(protocol: type) -> dict[str, Any]:
    """The protocol's functions, a subclass's version of one replacing its base's."""
    found: dict[str, Any] = {}
    for cls in reversed(protocol.__mro__):
        if cls is not protocol and not (
            isinstance(cls, type) and getattr(cls, "_is_protocol", False)
        ):
            continue
        found.update({k: v for k, v in vars(cls).items() if not k.startswith("_") and callable(v)})
    return found


def violations(module: Any, protocol: type) -> list[str]:
    """What `module` lacks of `protocol`: a missing function, or one that cannot be called the way
    the protocol's callers call it (every positional argument, with and without the optional
    keywords). Empty when it conforms."""
    problems = []
    for name, member in members(protocol).items():
        found = getattr(module, name, None)
        if not callable(found):
            problems.append(f"{module.__name__}: no {name}()")
            continue
        params = list(inspect.signature(member).parameters.values())[1:]  # without self
        positional = [object()] * sum(p.kind is p.POSITIONAL_OR_KEYWORD for p in params)
        keywords = {p.name: object() for p in params if p.kind is p.KEYWORD_ONLY}
        required = {
            k: v
            for k, v in keywords.items()
            if inspect.signature(member).parameters[k].default is inspect.Parameter.empty
        }
        for kwargs in (keywords, required):
            try:
                inspect.signature(found).bind(*positional, **kwargs)
            except TypeError as error:
                problems.append(f"{module.__name__}.{name}: {error}")
                break
    return problems
