"""One spec per model: everything model-specific the hub needs, in one place.

A spec (tasks.specs.base.ModelSpec, declared as the tasks.contract.ModelSpec protocol) holds a
model's registry data (tasks, defaults, summary, runner), its config from the data and the
options, its input preparation, its initial weights, its parity and optimiser cases, and the
`rosetta train` flags and values it takes. tasks/train.py, cli.py, parity.py, registry.py and
convert.py look a model up here instead of branching on its name. One module per framework file
(recurrent.py holds the three cells); a new model is its four framework files, one module here
added to the two tuples below, and its tests (README, "Adding a model").

Nothing here imports a framework: `rosetta list` imports these modules.
"""

from __future__ import annotations

from collections.abc import Iterable

from tasks.specs import attention, lenet5, mlp, perceptron, recurrent, transformer
from tasks.specs.base import ModelSpec

# The spec modules, one per framework file, in the README's order of the models (its "Models"
# table): messages and help that list the models a flag or a command takes list them in this order.
MODULES = (mlp, perceptron, lenet5, recurrent, attention, transformer)
# Every model by name, in the registry's order (`rosetta list`, `rosetta all`, every "choose from"
# message), which predates the README's: the recurrent cells before LeNet-5.
SPECS: dict[str, ModelSpec] = {
    spec.name: spec
    for module in (mlp, perceptron, recurrent, lenet5, attention, transformer)
    for spec in module.SPECS
}


def in_file_order(names: Iterable[str]) -> tuple[str, ...]:
    """Model names sorted by their spec module's place in MODULES (a module not there: last),
    keeping the registry's order within one module."""
    files = [m.__name__.rsplit(".", 1)[-1] for m in MODULES]
    names = list(names)
    rank = lambda n: files.index(SPECS[n].file) if SPECS[n].file in files else len(files)  # noqa: E731
    return tuple(sorted(names, key=lambda n: (rank(n), list(SPECS).index(n))))


def taking(flag: str) -> tuple[str, ...]:
    """The models whose specs take a `rosetta train` flag, in file order."""
    return in_file_order(name for name, spec in SPECS.items() if flag in spec.flags)


def for_config(cfg) -> ModelSpec:
    """The spec whose config type `cfg` is (the recurrent cells share one: the first)."""
    for spec in SPECS.values():
        if type(cfg) is spec.config_type:
            return spec
    raise KeyError(f"no model spec for a {type(cfg).__name__}")
