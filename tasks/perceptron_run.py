"""The perceptron's runner and parity checks: it has no loss and no gradient, so the generic ones do not fit.

Training (`run`, named in the registry's `runner` field) reports mistakes per epoch, the epoch at
which a pass made no mistake (or "did not converge") and the accuracies, instead of a loss.
Parity (`compute`, named in each perceptron `Case.engine` in tasks/parity.py) compares the weights
after every epoch, the mistakes of every epoch and the predictions, instead of gradients.
"""

from __future__ import annotations

import time

import numpy as np

from tasks import parity, weights
from tasks.data import Dataset, load_task
from tasks.registry import MODELS, load_impl

# ----------------------------------------------------------------------------- parity
PROGRESS_METRIC = (
    "mistakes"  # what `rosetta train`'s progress bar shows per epoch (tasks.cli.METRICS)
)
EPOCHS = 25  # a cap: the separable cases stop earlier, the noisy one runs all of them
LR = 0.1
# The bar; measured: 0.0 in both dtypes. Each weight changes by one exact product and one
# rounded add, written error * (lr * x) so that XLA's fused multiply-add rounds like the others.
WEIGHT_TOLERANCES = {"float64": 1e-12, "float32": 1e-6}


def expected_tensors(case: parity.Case) -> list[str]:
    """Every compared tensor: the first predictions, the round trip, then per-epoch training results.

    `rule.neuron.weight` is (E, 1, D) and `rule.neuron.bias` (E, 1): the weights after each of the
    E epochs run, so a framework that stops at a different epoch fails on the shape alone.
    """
    names = list(case.config.param_shapes())
    return [
        "output",
        *(f"roundtrip.{n}" for n in names),
        "rule.mistakes",
        *(f"rule.{n}" for n in names),
        "rule.output",
    ]


def tolerance(tensor: str, dtype: str) -> float:
    if tensor.startswith("rule.neuron."):
        return WEIGHT_TOLERANCES[dtype]
    return 0.0  # predictions, mistake counts and the round trip: exactly equal


def compute(case: parity.Case, framework: str, dtype: str) -> dict[str, np.ndarray]:
    """Train from the case's canonical weights on its inputs, recording the weights after every epoch."""
    impl = load_impl(framework, case.model)
    params = weights.cast(weights.load(parity.canonical_file(case)), dtype)
    model = impl.create_model(case.config, seed=0, dtype=dtype)
    impl.load_canonical(model, params)
    out = {f"roundtrip.{k}": v for k, v in impl.export_canonical(model).items()}
    x, y = parity.inputs(case, case.batch, dtype)
    out["output"] = impl.predict(model, x)
    after = []  # canonical weights after each epoch, taken by the framework's own on_epoch hook
    record = lambda epoch, mistakes: after.append(impl.export_canonical(model))
    data = Dataset(case.model, x, y, x, y, case.config.n_classes)
    mistakes = impl.train(model, data, epochs=EPOCHS, lr=LR, seed=case.seed, on_epoch=record)
    out["rule.mistakes"] = np.asarray(mistakes, dtype=np.int64)  # (E,)
    out.update({f"rule.{k}": np.stack([w[k] for w in after]) for k in params})  # (E, *shape)
    out["rule.output"] = impl.predict(model, x)
    return out


# ----------------------------------------------------------------------------- training
def run(model: str, task: str, frameworks: list[str], opts, progress=None) -> dict:
    """Train the perceptron on `task` in each framework from the same initial weights; JSON-ready result.

    `opts` is a tasks.train.TrainOptions; the perceptron uses epochs (a cap), lr, seed and dtype,
    and trains one sample at a time, so batch_size, hidden and activation do not apply.
    """
    opts = opts.with_defaults(model, task)
    data = load_task(task, seed=opts.seed, data_dir=opts.data_dir)
    cfg = MODELS[model].make_config(data, opts)  # one neuron over the task's features
    init = weights.cast(weights.init_uniform(cfg.param_shapes(), opts.seed), opts.dtype)
    results, finals, interrupted = [], {}, None
    for framework in frameworks:
        try:  # Ctrl-C (an import, a model build, training): keep the rows that finished
            impl = load_impl(framework, model)
            net = impl.create_model(cfg, seed=opts.seed, dtype=opts.dtype)
            impl.load_canonical(net, init)
            on_epoch = progress.start(framework, opts.epochs) if progress else None
            start = time.perf_counter()
            mistakes = impl.train(
                net, data, epochs=opts.epochs, lr=opts.lr, seed=opts.seed, on_epoch=on_epoch
            )
            seconds = time.perf_counter() - start
        except KeyboardInterrupt:
            interrupted = framework
            break
        converged = mistakes[-1] == 0
        finals[framework] = impl.export_canonical(net)
        results.append(
            {
                "framework": framework,
                "mistakes_per_epoch": [int(m) for m in mistakes],
                "epochs_run": len(mistakes),
                "converged": bool(converged),
                "epochs_to_converge": len(mistakes)
                if converged
                else None,  # counts the clean epoch itself
                "train_accuracy": impl.evaluate(net, data.x_train, data.y_train)[1],
                "test_accuracy": impl.evaluate(net, data.x_test, data.y_test)[1],
                "seconds_per_epoch": seconds / len(mistakes),
                "seconds": seconds,
                "max_param_diff_vs_scratch": None,
            }
        )
    if "scratch" in finals:
        for row in results:
            other = finals[row["framework"]]
            row["max_param_diff_vs_scratch"] = max(
                float(np.max(np.abs(other[k] - finals["scratch"][k]))) for k in other
            )
    return {
        "model": model,
        "task": task,
        "config": dict(vars(cfg)),
        "options": {"epochs": opts.epochs, "lr": opts.lr, "seed": opts.seed, "dtype": opts.dtype},
        "n_train": int(len(data.x_train)),
        "n_test": int(len(data.x_test)),
        "results": results,
        "interrupted": interrupted is not None,
        "interrupted_framework": interrupted,  # None, or the framework Ctrl-C stopped
    }


def format_mistakes(mistakes: list[int], limit: int = 12) -> str:
    """'11 0', or the first and last few of a long run: '2 2 2 2 2 2 … 3 2 2 2 2 2'."""
    if len(mistakes) <= limit:
        return " ".join(map(str, mistakes))
    half = limit // 2
    return " ".join(map(str, mistakes[:half])) + " … " + " ".join(map(str, mistakes[-half:]))


def print_train(result: dict, console) -> None:
    """The perceptron's side-by-side table (called by `rosetta train` in place of the loss table)."""
    from rich.table import Table

    sizes = f"{result['n_train']} train / {result['n_test']} test, at most {result['options']['epochs']} epochs"
    table = Table(title=f"{result['model']} on {result['task']} ({sizes})")
    columns = (
        "framework",
        "mistakes per epoch",
        "epochs to converge",
        "train accuracy",
        "test accuracy",
        "s / epoch",
        "max |Δparam| vs scratch",
    )
    for col in columns:
        table.add_column(col, justify="left" if col in columns[:3] else "right")
    for r in result["results"]:
        converge = str(r["epochs_to_converge"]) if r["converged"] else "did not converge"
        diff = (
            "—"
            if r["max_param_diff_vs_scratch"] is None
            else f"{r['max_param_diff_vs_scratch']:.2e}"
        )
        table.add_row(
            r["framework"],
            format_mistakes(r["mistakes_per_epoch"]),
            converge,
            f"{r['train_accuracy']:.4f}",
            f"{r['test_accuracy']:.4f}",
            f"{r['seconds_per_epoch']:.3f}",
            diff,
        )
    console.print(table)
