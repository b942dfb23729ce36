"""The contract of a framework model module: what `{framework}/{model}.py` exposes to the rest of
the suite (training, parity checks, the CLI), declared once as typing.Protocols.

A new model is four framework files that satisfy `GradientModelModule` (or `ModelModule` for a
rule without gradients, like the perceptron's), one registry entry, and its tests;
parity_tests/test_contract.py checks every module against its protocol, signature by signature.
"""

from __future__ import annotations

import inspect
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


def protocol_for(model: str) -> type:
    """The perceptron's rule has no gradient; every other model of the registry is a gradient model."""
    return ModelModule if model == "perceptron" else GradientModelModule


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
