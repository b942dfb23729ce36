"""The registry: which frameworks exist, and which models: `MODELS` maps each model's name to its
spec (tasks/specs/: tasks, defaults, summary, runner, the framework file, ...).

Implementations are found by convention, `importlib.import_module(f"{framework}.{spec.file}")`;
nothing registers itself. A new model adds nothing here: its four framework files, its spec in
tasks/specs/ and its tests (README, "Adding a model").
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from types import ModuleType
from typing import Any

FRAMEWORKS = ("scratch", "torch_impl", "tf_impl", "jax_impl")
# what a user may type for --framework, mapped to the folder name used everywhere in output
FRAMEWORK_ALIASES = {
    "scratch": "scratch", "numpy": "scratch",
    "torch": "torch_impl", "pytorch": "torch_impl", "torch_impl": "torch_impl",
    "tf": "tf_impl", "keras": "tf_impl", "tensorflow": "tf_impl", "tf_impl": "tf_impl",
    "jax": "jax_impl", "flax": "jax_impl", "jax_impl": "jax_impl",
}  # fmt: skip


class _Models(Mapping):
    """Every model's spec by name (tasks/specs/), read when first used: tasks.specs imports the
    parity cases, which import FRAMEWORKS from here."""

    def _specs(self) -> dict:
        from tasks.specs import SPECS

        return SPECS

    def __getitem__(self, name: str):
        return self._specs()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs())

    def __len__(self) -> int:
        return len(self._specs())

    def __repr__(self) -> str:
        return f"MODELS({', '.join(self)})"


# name -> tasks.specs.base.ModelSpec (tasks, defaults, summary, runner, file, ...), in the order
# `rosetta list` shows them
MODELS: Mapping[str, Any] = _Models()


def resolve_framework(name: str) -> list[str]:
    """'all' -> every framework; an alias -> its folder name; anything else -> KeyError."""
    if name == "all":
        return list(FRAMEWORKS)
    return [FRAMEWORK_ALIASES[name.lower()]]


def load_impl(framework: str, model: str) -> ModuleType:
    """Import `{framework}.{model}` only now: nothing imports torch, tensorflow or jax before this."""
    return importlib.import_module(
        f"{framework}.{MODELS[model].file if model in MODELS else model}"
    )
