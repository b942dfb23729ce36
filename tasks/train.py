"""Train one gradient model in several frameworks from one set of initial weights, side by side.

Every framework gets the same canonical initial weights (seeded NumPy), the same arrays and the
same batch order, and trains with its own idiomatic loop; the result table then shows how far
each ended from the scratch run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from inspect import signature

import numpy as np

from tasks import weights
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
    # lenet5: zero padding of (conv1, conv2); given, the images keep their own size (MNIST 28x28 with
    # (2, 0) is d2l's LeNet-5); None: the paper's valid convs on images padded to 32x32
    padding: tuple[int, int] | None = None
    final_norm: bool | None = None  # transformer: a final LayerNorm (None: pre-LN yes, post-LN no)
    num_layers: int | None = None  # rnn, lstm, gru: stacked recurrent layers (None: one)
    bidirectional: bool | None = None  # rnn, lstm, gru: a reverse direction too (None: no)
    seed: int = 0
    dtype: str = "float32"
    data_dir: str | None = None
    # optimiser, schedule, regularisation, initialisation (issue 7); the defaults are plain SGD at `lr`
    optimizer: str | None = (
        None  # one of tasks.configs.OPTIMIZER_NAMES; None: the model's own (SGD; Adam for attention)
    )
    momentum: float = 0.9  # momentum / nesterov
    weight_decay: float = 0.0  # decoupled (adamw)
    schedule: str = "constant"  # constant, cosine or step (decays over the whole run, after warmup)
    warmup_steps: int = 0
    clip_norm: float | None = None
    # the models whose specs take --init, --dropout, --batch-norm and --l2 (mlp, lenet5):
    init: str | None = None  # weight initialiser (tasks.configs.INITS); None: the canonical uniform
    dropout: float | None = None
    batch_norm: bool = False
    l2: float | None = None  # L2 penalty (l2 / 2) * sum p^2 in the loss
    patience: int | None = (
        None  # early stopping: stop after this many epochs without a better validation loss
    )
    save_dir: str | None = (
        None  # write each trained model here in its own format (tasks/convert.py)
    )

    def with_defaults(self, model: str, task: str) -> TrainOptions:
        defaults = MODELS[model].defaults.get(task, {})
        filled = {
            k: defaults.get(k)
            for k in ("epochs", "lr", "batch_size", "hidden", "activation", "pooling")
            if getattr(self, k) is None
        }
        return replace(self, **filled)


def make_config(model: str, data: Dataset, opts: TrainOptions):
    """The model config for a dataset: sizes from the data, the rest from the options (the
    model's spec, tasks/specs/)."""
    if model not in MODELS:
        raise KeyError(f"no config rule for model {model!r}")
    return MODELS[model].make_config(data, opts)


def initial_weights(cfg, seed: int) -> dict[str, np.ndarray]:
    """Seeded canonical weights for a config, by its model's spec: the uniform draw
    (weights.init_uniform), a Transformer's LayerNorms as the identity, a named initialiser's or
    batch norm's start drawn by scratch."""
    from tasks.specs import for_config

    return for_config(cfg).initial_weights(cfg, seed)


def prepare(model: str, data: Dataset, opts: TrainOptions | None = None) -> Dataset:
    """Shape the shared arrays for a model (its spec's prepare, which may read the options): the
    MLP takes flat feature vectors, LeNet-5 32x32 images (or any size with --padding)."""
    return MODELS[model].prepare(data, opts)


def run(model: str, task: str, frameworks: list[str], opts: TrainOptions, progress=None) -> dict:
    """Train `model` on `task` in each framework; returns the JSON-ready result object.

    Ctrl-C stops the framework that is training (or being imported or built) and keeps every row
    finished so far (`interrupted`, `interrupted_framework`). A run whose loss or weights became NaN
    or inf is marked `diverged`."""
    opts = opts.with_defaults(model, task)
    data = prepare(model, load_task(task, seed=opts.seed, data_dir=opts.data_dir), opts)
    data, validation = validation_split(data, opts)
    cfg = make_config(model, data, opts)
    init = weights.cast(initial_weights(cfg, opts.seed), opts.dtype)
    lr = optimizer_config(
        opts,
        n_train=len(data.x_train),
        default_clip=MODELS[model].default_clip,
    )
    results, finals, interrupted = [], {}, None  # interrupted: the framework Ctrl-C stopped
    saved = {}  # framework -> the checkpoint --save wrote
    for framework in frameworks:
        try:  # Ctrl-C while a framework is imported or built, too, keeps every finished row
            impl = load_impl(framework, model)
            net = impl.create_model(cfg, seed=opts.seed, dtype=opts.dtype)
            impl.load_canonical(net, init)
            monitor = EpochMonitor(
                impl,
                net,
                validation,
                opts.patience,
                progress.start(framework, opts.epochs) if progress else None,
            )
            # a train that takes `patience` stops early itself (Keras: keras.callbacks.EarlyStopping)
            stops_itself = (
                opts.patience is not None and "patience" in signature(impl.train).parameters
            )
            own = {"validation": validation, "patience": opts.patience} if stops_itself else {}
            start = time.perf_counter()
            try:
                with np.errstate(
                    all="ignore"
                ):  # a diverging scratch run: reported below, not warned
                    history = impl.train(
                        net,
                        data,
                        epochs=opts.epochs,
                        lr=lr,
                        batch_size=opts.batch_size,
                        seed=opts.seed,
                        on_epoch=monitor,
                        **own,
                    )
            except EarlyStop:
                history = monitor.history
            except KeyboardInterrupt:
                history, interrupted = monitor.history, framework
            seconds = time.perf_counter() - start
            if (
                not history
            ):  # interrupted inside the first epoch: nothing to report for this framework
                break
            if (
                monitor.best_weights is not None
            ):  # early stopping: evaluate and export the best validation epoch's weights
                impl.load_canonical(net, monitor.best_weights)
            with np.errstate(all="ignore"):
                # a classifier's accuracy; a regression's R² (its loss is the mean squared error)
                test_loss, test_score = impl.evaluate(net, data.x_test, data.y_test)
            finals[framework] = impl.export_canonical(net)
            if opts.save_dir:  # rosetta train --save DIR: the framework's own checkpoint format
                from tasks.convert import save_native

                saved[framework] = str(save_native(framework, impl, net, opts.save_dir, model))
        except KeyboardInterrupt:
            interrupted = framework
            break
        bad = [i for i, loss in enumerate(history) if not np.isfinite(loss)]
        diverged = bool(bad) or not np.isfinite(test_loss)
        diverged |= not all(np.isfinite(v).all() for v in finals[framework].values())
        results.append(
            {
                "framework": framework,
                "final_loss": history[-1],
                "test_loss": test_loss,
                "test_accuracy": None if data.regression else test_score,
                **({"test_r2": test_score} if data.regression else {}),
                "seconds_per_epoch": seconds / len(history),
                "seconds": seconds,
                "max_param_diff_vs_scratch": None,
                "history": history,  # mean training loss per epoch (`--plot`)
                "epochs_run": len(history),
                "stopped": "interrupted" if interrupted else ("early" if monitor.stopped else None),
                "val_loss": monitor.val_losses or None,
                "best_epoch": monitor.best_epoch,  # with --patience: the epoch (1-based) whose weights are reported
                # a loss or a weight became NaN or inf: the epoch (1-based) whose mean loss first did
                "diverged": diverged,
                "diverged_epoch": bad[0] + 1 if bad else None,
                # with batch norm: which running variance the framework keeps (RUNNING_VAR)
                "running_var": RUNNING_VAR[framework]
                if getattr(cfg, "batch_norm", False)
                else None,
                "saved": saved.get(framework),  # --save: the checkpoint written
            }
        )
        if interrupted:
            break
    if "scratch" in finals:
        scratch_row = next(r for r in results if r["framework"] == "scratch")
        for row in results:
            # trainable parameters only: Keras and Flax export batch norm's running variance in their own
            # (biased) convention, off by about n/(n-1) from the canonical one (docs/PORTING.md)
            other = {
                k: v
                for k, v in finals[row["framework"]].items()
                if not k.endswith(("running_mean", "running_var"))
            }
            if row["diverged"] or scratch_row["diverged"]:  # NaN weights: no meaningful distance
                continue
            row["max_param_diff_vs_scratch"] = max(
                float(np.max(np.abs(other[k] - finals["scratch"][k]))) for k in other
            )
            if row["running_var"]:  # the statistics left out above, shown on their own
                row["max_running_var_diff_vs_scratch"] = max(
                    float(np.max(np.abs(v - finals["scratch"][k])))
                    for k, v in finals[row["framework"]].items()
                    if k.endswith("running_var")
                )
    return {
        "model": model,
        "task": task,
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(cfg).items()},
        "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(opts).items()},
        "n_train": int(len(data.x_train)),
        "n_test": int(len(data.x_test)),
        # the rows' quality figure: test_accuracy, or test_r2 (and test_loss the MSE) for a regression
        "metric": "r2" if data.regression else "accuracy",
        "results": results,
        "interrupted": interrupted is not None,
        "interrupted_framework": interrupted,  # None, or the framework Ctrl-C stopped
        "notes": running_var_notes(results),  # lines printed under the table
        **(
            {"baselines": data.meta["baselines"]} if "baselines" in data.meta else {}
        ),  # e.g. a language model's unigram loss
    }


# ----------------------------------------------------------------------------- batch norm's running variance
# torch (and scratch, which follows it) keep the running average of the *unbiased* batch variance,
# Keras's and Flax's stock layers the *biased* one: the same trainable weights then evaluate to
# different test losses. Each framework keeps its own stock behaviour (what its users get), and the
# difference is shown, not converted away (docs/PORTING.md, "Running variance").
RUNNING_VAR = {
    "scratch": "unbiased",
    "torch_impl": "unbiased",
    "tf_impl": "biased",
    "jax_impl": "biased",
}


def running_var_notes(results: list[dict]) -> list[str]:
    """One line for the table when the rows keep different running variances, with each test loss."""
    kinds = {row["running_var"] for row in results if row.get("running_var")}
    if len(kinds) < 2:
        return []
    names = lambda kind: ", ".join(r["framework"] for r in results if r["running_var"] == kind)
    losses = ", ".join(f"{r['framework']} {r['test_loss']:.5f}" for r in results)
    return [
        f"batch norm: {names('biased')} keep the biased running variance, {names('unbiased')} the "
        f"unbiased one (x n/(n-1)), so equal trainable weights evaluate differently; test loss: "
        f"{losses} (docs/PORTING.md, running variance)"
    ]


# ----------------------------------------------------------------------------- optimisers, early stopping, plot
def plain_sgd(opts: TrainOptions) -> bool:
    """No optimiser option given: every model's train then takes the plain lr and its own default
    optimiser (SGD; Adam for attention and the Transformer; SGD clipped at 1 for the recurrent nets)."""
    return (
        opts.optimizer is None
        and opts.schedule == "constant"
        and not opts.warmup_steps
        and opts.clip_norm is None
    )


def optimizer_config(opts: TrainOptions, n_train: int, default_clip: float | None = None):
    """The plain lr (plain_sgd), else an OptimizerConfig that every gradient model's train accepts; a
    schedule decays over the whole run: cosine to 0, step halving every quarter. `default_clip` is the
    model's own clipping (the recurrent nets'), kept unless --clip-norm replaces it."""
    from tasks.configs import OptimizerConfig

    if plain_sgd(opts):
        return opts.lr
    total = opts.epochs * -(
        -n_train // opts.batch_size
    )  # updates in the run: ceil(n / B) per epoch
    after_warmup = max(total - opts.warmup_steps, 1)
    return OptimizerConfig(
        opts.optimizer or "sgd", lr=opts.lr, momentum=opts.momentum, weight_decay=opts.weight_decay, schedule=opts.schedule,
        warmup_steps=opts.warmup_steps, decay_steps=after_warmup, step_size=max(after_warmup // 4, 1), gamma=0.5,
        clip_norm=opts.clip_norm if opts.clip_norm is not None else default_clip,
    )  # fmt: skip


class EarlyStop(Exception):
    """Raised by EpochMonitor to end a framework's train loop after `patience` epochs without progress."""


class EpochMonitor:
    """The on_epoch callback: records the loss, reports progress, and checks the validation loss;
    with a patience it keeps a copy of the best epoch's weights (canonical), like Keras's
    EarlyStopping(restore_best_weights=True), so the run reports the model it would keep."""

    def __init__(self, impl, net, validation, patience: int | None, progress=None):
        self.impl, self.net, self.validation, self.patience, self.progress = (
            impl,
            net,
            validation,
            patience,
            progress,
        )
        self.history: list[float] = []
        self.val_losses: list[float] = []
        self.stopped = False
        self.best_weights: dict[str, np.ndarray] | None = None
        self.best_epoch: int | None = None

    def __call__(self, epoch: int, loss: float, val_loss: float | None = None):
        """`val_loss` is given by a train that stops early itself (it takes `patience`: Keras's
        EarlyStopping, which restores the best weights): then this only records, by the same rule."""
        self.history.append(loss)
        if self.progress:
            self.progress(epoch, loss)
        if self.patience is None:
            return
        stops_itself = val_loss is not None
        if not stops_itself:
            val_loss = self.impl.evaluate(self.net, *self.validation)[0]
        self.val_losses.append(val_loss)
        # a NaN or inf epoch is never the best (np.argmin would pick the first NaN)
        best = int(np.argmin(np.where(np.isfinite(self.val_losses), self.val_losses, np.inf)))
        if best == len(self.val_losses) - 1 and np.isfinite(self.val_losses[best]):  # a new best
            self.best_epoch = best + 1
            if not stops_itself:
                self.best_weights = self.impl.export_canonical(self.net)
        if len(self.val_losses) - 1 - best >= self.patience:
            self.stopped = True
            if not stops_itself:
                raise EarlyStop


def validation_split(data: Dataset, opts: TrainOptions):
    """With early stopping, the last fifth of the (already shuffled) training split validates."""
    if opts.patience is None:
        return data, None
    n_val = max(len(data.x_train) // 5, 1)
    validation = (data.x_train[-n_val:], data.y_train[-n_val:])
    return replace(data, x_train=data.x_train[:-n_val], y_train=data.y_train[:-n_val]), validation


def plot_curves(result: dict, path: str) -> None:
    """The training loss per epoch of every framework, on one chart."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = [
        "-",
        "--",
        "-.",
        ":",
    ]  # the curves often coincide: a line style each keeps all four visible
    for i, row in enumerate(result["results"]):
        ax.plot(
            range(1, len(row["history"]) + 1),
            row["history"],
            styles[i % 4],
            label=row["framework"],
            linewidth=2 - 0.3 * i,
        )
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))  # whole epochs only
    ax.set_ylabel("mean training loss")
    ax.set_yscale("log")
    ax.set_title(f"{result['model']} on {result['task']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
