"""Rosenblatt's perceptron's spec (scratch/perceptron.py and the other three): no gradient, its own
runner and parity engine (tasks/perceptron_run.py)."""

from __future__ import annotations

from tasks.cases import Case, and_gate, separable, tabular, zeros
from tasks.configs import PerceptronConfig
from tasks.specs.base import ModelSpec


def make_config(data, opts) -> PerceptronConfig:
    """One neuron over the task's features."""
    return PerceptronConfig(in_features=data.in_features)


ENGINE = "tasks.perceptron_run"  # its checks: the rule's mistakes and weights per epoch
CASES = (
    # Rosenblatt's zero start on AND: w·x + b is exactly 0 at the first samples, so the tie rule decides
    Case("perceptron", "and-zero-init", PerceptronConfig(2), and_gate, batch=4, engine=ENGINE, init=zeros),
    Case("perceptron", "separable-3d", PerceptronConfig(3), separable, batch=40, engine=ENGINE),
    # random labels: never separable, so every epoch updates and the run goes to the epoch cap
    Case("perceptron", "noisy-5d", PerceptronConfig(5), tabular, batch=40, engine=ENGINE),
)  # fmt: skip

TASKS = ("iris", "or", "and", "xor", "blobs")
SPECS = (
    ModelSpec(
        name="perceptron",
        file="perceptron",
        tasks=TASKS,
        # epochs is a cap: training stops after the first epoch without a mistake
        defaults={task: dict(epochs=50, lr=0.1) for task in TASKS},
        runner="tasks.perceptron_run",
        gradient=False,
        summary="Rosenblatt's perceptron (one neuron, step output, mistake-driven rule; no gradient)",
        config_type=PerceptronConfig,
        make_config=make_config,
        inputs=tabular,
        cases=CASES,
    ),
)
