"""The registry: which models exist, which tasks they train on, and their default settings.

A plain dict. Implementations are found by convention, `importlib.import_module(f"{framework}.{model}")`;
nothing registers itself. A new model needs a file in each framework folder, an entry here and the
other places the README's "Adding a model" lists.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType

FRAMEWORKS = ("scratch", "torch_impl", "tf_impl", "jax_impl")
# what a user may type for --framework, mapped to the folder name used everywhere in output
FRAMEWORK_ALIASES = {
    "scratch": "scratch", "numpy": "scratch",
    "torch": "torch_impl", "pytorch": "torch_impl", "torch_impl": "torch_impl",
    "tf": "tf_impl", "keras": "tf_impl", "tensorflow": "tf_impl", "tf_impl": "tf_impl",
    "jax": "jax_impl", "flax": "jax_impl", "jax_impl": "jax_impl",
}  # fmt: skip


@dataclass(frozen=True)
class ModelEntry:
    """One model of the suite."""

    name: str  # the file name in every framework folder: scratch/{name}.py, ...
    tasks: tuple[str, ...]  # tasks it can train on; the first is the default
    defaults: dict = field(default_factory=dict)  # task -> default training options
    runner: str = "tasks.train"  # module whose run() trains it (gradient models share one)
    summary: str = ""

    @property
    def default_task(self) -> str:
        return self.tasks[0]


MODELS: dict[str, ModelEntry] = {
    "mlp": ModelEntry(
        name="mlp",
        tasks=("moons", "digits", "mnist", "xor"),
        defaults={
            "moons": dict(epochs=60, lr=0.2, batch_size=32, hidden=(32, 32), activation="relu"),
            "digits": dict(epochs=40, lr=0.2, batch_size=32, hidden=(64,), activation="relu"),
            "mnist": dict(epochs=10, lr=0.1, batch_size=64, hidden=(128,), activation="relu"),
            # the wall the perceptron cannot pass: one tanh hidden layer, full batch, 100% in 50 of 50 seeds
            "xor": dict(epochs=80, lr=1.0, batch_size=4, hidden=(16,), activation="tanh"),
        },
        summary="multilayer perceptron (any depth; relu/tanh/sigmoid/leaky relu; sigmoid or softmax head)",
    ),
    "perceptron": ModelEntry(
        name="perceptron",
        tasks=("iris", "or", "and", "xor", "blobs"),
        # epochs is a cap: training stops after the first epoch without a mistake
        defaults={task: dict(epochs=50, lr=0.1) for task in ("iris", "or", "and", "xor", "blobs")},
        runner="tasks.perceptron_run",
        summary="Rosenblatt's perceptron (one neuron, step output, mistake-driven rule; no gradient)",
    ),
    **{
        cell: ModelEntry(
            name="recurrent",  # one file per framework holds all three cells: recurrent.py
            tasks=("pytext", "sign"),
            defaults={
                "pytext": dict(epochs=20, lr=lr, batch_size=16, hidden=(64,)),
                "sign": dict(epochs=10, lr=sign_lr, batch_size=16, hidden=(16,)),
            },
            summary=summary,
        )
        for cell, lr, sign_lr, summary in (
            (
                "rnn",
                2.0,
                0.2,
                "simple tanh RNN (Elman), backpropagation through time, gradient clipping",
            ),
            ("lstm", 4.0, 0.5, "LSTM: gates (i, f, g, o), cell state; torch/Keras/Flax converters"),
            (
                "gru",
                3.0,
                0.2,
                "GRU: gates (r, z, n), reset after the matmul; torch/Keras/Flax converters",
            ),  # sign at 0.5: Keras's float32 run ended at 88%
        )
    },
    "lenet5": ModelEntry(
        name="lenet5",
        tasks=("digits32", "mnist"),
        defaults={
            # the paper's tanh + average pooling: smooth, so the four float32 runs stay in lockstep (97.55% each,
            # parameters within 1e-6 of scratch); ReLU + max pooling reached 98-99% but at lr 0.1 one run in
            # four spiked (Keras ended at 95.5%) and the runs drift apart on every flipped kink
            "digits32": dict(epochs=15, lr=0.1, batch_size=32, activation="tanh", pooling="avg"),
            "mnist": dict(epochs=3, lr=0.05, batch_size=64, activation="tanh", pooling="avg"),
        },
        summary="LeNet-5 (conv 6@5x5, pool, conv 16@5x5, pool, dense 120-84-10; tanh|relu, avg|max pooling)",
    ),
    # Adam (torch/optax form; Keras's epsilon-hat form differs by ~eps/sqrt(v)); "config" holds the model sizes
    "attention": ModelEntry(
        name="attention",
        tasks=("reverse",),
        defaults={
            "reverse": dict(epochs=8, lr=0.01, batch_size=64, config=dict(d_model=32, n_heads=4))
        },
        summary="one multi-head self-attention layer (hand-written softmax(QK^T/sqrt(d) + mask) V; or the stock layer)",
    ),
    "transformer": ModelEntry(
        name="transformer",
        tasks=("reverse",),
        defaults={
            "reverse": dict(
                epochs=4,
                lr=0.005,
                batch_size=64,
                config=dict(
                    d_model=32, n_heads=4, d_ff=64, n_layers=2, norm="post", activation="relu"
                ),
            )
        },
        summary="tiny Transformer encoder (sinusoidal positions, N blocks, pre-/post-LN, ReLU/GELU feed-forward)",
    ),
}


def resolve_framework(name: str) -> list[str]:
    """'all' -> every framework; an alias -> its folder name; anything else -> KeyError."""
    if name == "all":
        return list(FRAMEWORKS)
    return [FRAMEWORK_ALIASES[name.lower()]]


def load_impl(framework: str, model: str) -> ModuleType:
    """Import `{framework}.{model}` only now: nothing imports torch, tensorflow or jax before this."""
    return importlib.import_module(
        f"{framework}.{MODELS[model].name if model in MODELS else model}"
    )
