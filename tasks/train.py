"""Train one gradient model in several frameworks from one set of initial weights, side by side.

Every framework gets the same canonical initial weights (seeded NumPy), the same arrays and the
same batch order, and trains with its own idiomatic loop; the result table then shows how far
each ended from the scratch run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np

from tasks import weights
from tasks.configs import LeNet5Config
from tasks.data import pad_to
from tasks.configs import MLPConfig
from tasks.configs import FF_ACTIVATIONS, AttentionConfig, TransformerConfig
from tasks.data import Dataset, load_task
from tasks.registry import MODELS, load_impl


@dataclass(frozen=True)
class TrainOptions:
    """Training settings; None means the model's default for the task (tasks.registry)."""

    epochs: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    hidden: tuple[int, ...] | None = None
    activation: str | None = None
    pooling: str | None = None  # lenet5: "avg" or "max"
    seed: int = 0
    dtype: str = "float32"
    data_dir: str | None = None

    def with_defaults(self, model: str, task: str) -> "TrainOptions":
        defaults = MODELS[model].defaults.get(task, {})
        filled = {k: defaults.get(k) for k in ("epochs", "lr", "batch_size", "hidden", "activation", "pooling") if getattr(self, k) is None}
        return replace(self, **filled)


def make_config(model: str, data: Dataset, opts: TrainOptions):
    """The model config for a dataset: sizes from the data, the rest from the options."""
    if model == "mlp":
        return MLPConfig(
            in_features=data.in_features,
            hidden=tuple(opts.hidden),
            n_classes=data.n_classes,
            activation=opts.activation,
            head="sigmoid" if data.n_classes == 2 else "softmax",
        )
    if model == "lenet5":
        channels, size = data.x_train.shape[1:3]  # (B, C, H, W) after prepare, H = W
        return LeNet5Config(in_channels=channels, image_size=size, n_classes=data.n_classes, activation=opts.activation, pooling=opts.pooling)
    if model in ("attention", "transformer"):
        sizes = dict(MODELS[model].defaults.get(data.name, {}).get("config", {}))  # d_model, n_heads, ...
        if model == "transformer" and opts.activation in FF_ACTIVATIONS:
            sizes["activation"] = opts.activation
        return (AttentionConfig if model == "attention" else TransformerConfig)(vocab=data.n_classes, **sizes)
    raise KeyError(f"no config rule for model {model!r}")


def initial_weights(cfg, seed: int) -> dict[str, np.ndarray]:
    """Seeded canonical init (weights.init_uniform); a Transformer's LayerNorms start as the identity."""
    params = weights.init_uniform(cfg.param_shapes(), seed)
    if isinstance(cfg, TransformerConfig):
        for name in params:
            if name.split(".")[-2] in ("ln1", "ln2", "ln_f"):  # gain 1, shift 0, as every framework initialises them
                params[name] = np.ones_like(params[name]) if name.endswith(".weight") else np.zeros_like(params[name])
    return params


def prepare(model: str, data: Dataset) -> Dataset:
    """Shape the shared arrays for a model: the MLP takes flat feature vectors."""
    if model == "mlp" and data.x_train.ndim > 2:
        flat = lambda a: a.reshape(len(a), -1)  # (B, C, H, W) -> (B, C*H*W)
        return replace(data, x_train=flat(data.x_train), x_test=flat(data.x_test))
    if model == "lenet5" and data.x_train.shape[2:] != (32, 32):
        to32 = lambda a: pad_to(a, 32)  # MNIST (B, 1, 28, 28) -> (B, 1, 32, 32), zero border as in the paper
        return replace(data, x_train=to32(data.x_train), x_test=to32(data.x_test))
    return data


def run(model: str, task: str, frameworks: list[str], opts: TrainOptions, progress=None) -> dict:
    """Train `model` on `task` in each framework; returns the JSON-ready result object."""
    opts = opts.with_defaults(model, task)
    data = prepare(model, load_task(task, seed=opts.seed, data_dir=opts.data_dir))
    cfg = make_config(model, data, opts)
    init = weights.cast(initial_weights(cfg, opts.seed), opts.dtype)
    results, finals = [], {}
    for framework in frameworks:
        impl = load_impl(framework, model)
        net = impl.create_model(cfg, seed=opts.seed, dtype=opts.dtype)
        impl.load_canonical(net, init)
        on_epoch = progress.start(framework, opts.epochs) if progress else None
        start = time.perf_counter()
        history = impl.train(net, data, epochs=opts.epochs, lr=opts.lr, batch_size=opts.batch_size, seed=opts.seed, on_epoch=on_epoch)
        seconds = time.perf_counter() - start
        test_loss, test_acc = impl.evaluate(net, data.x_test, data.y_test)
        finals[framework] = impl.export_canonical(net)
        results.append(
            {
                "framework": framework,
                "final_loss": history[-1],
                "test_loss": test_loss,
                "test_accuracy": test_acc,
                "seconds_per_epoch": seconds / opts.epochs,
                "seconds": seconds,
                "max_param_diff_vs_scratch": None,
            }
        )
    if "scratch" in finals:
        for row in results:
            other = finals[row["framework"]]
            row["max_param_diff_vs_scratch"] = max(float(np.max(np.abs(other[k] - finals["scratch"][k]))) for k in other)
    return {
        "model": model,
        "task": task,
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(cfg).items()},
        "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(opts).items()},
        "n_train": int(len(data.x_train)),
        "n_test": int(len(data.x_test)),
        "results": results,
    }
