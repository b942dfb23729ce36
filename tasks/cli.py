"""The `rosetta` command line: train and compare the four implementations side by side.

    rosetta train mlp --task moons --framework all      # one table, four frameworks
    rosetta parity mlp --json                           # every parity check, as JSON
    rosetta all                                         # the main job: train + parity, every model

Framework packages are imported only when a command runs them, so a scratch-only run imports
none of torch, tensorflow or jax. Exit status: 0 done; 1 a parity check failed or a training run
diverged; 2 bad input (one line on stderr naming the argument or file, before any work starts);
130 Ctrl-C (after printing what finished).
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tasks import parity as parity_mod
from tasks.data import DataFileError
from tasks.registry import FRAMEWORK_ALIASES, MODELS, resolve_framework

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help=__doc__.split("\n")[0],
)
out = Console(width=None if sys.stdout.isatty() else 140)  # tables go to stdout
err = Console(stderr=True)  # progress and messages go to stderr, so --json output stays clean


def fail(message: str) -> None:
    """One line on stderr, exit status 2 (a usage error)."""
    print(f"error: {message}", file=sys.stderr)  # plain print: rich would wrap the line
    raise typer.Exit(2)


# --seed: every framework draws from it (NumPy, scikit-learn's random_state, torch.Generator.manual_seed,
# keras.random.SeedGenerator, jax.random.key / nnx.Rngs). Measured: scikit-learn takes 0 .. 2**32 - 1 and
# NumPy no negatives; torch takes -2**63 .. 2**64 - 1, Keras and JAX -2**63 .. 2**63 - 1. The intersection:
SEED_RANGE = (0, 2**32 - 1)


def check_seed(seed: int) -> int:
    if not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        fail(
            f"--seed must be an integer in {SEED_RANGE[0]}..{SEED_RANGE[1]} (2**32 - 1, the range "
            f"NumPy, scikit-learn, torch, Keras and JAX all accept), got {seed}"
        )
    return seed


def interruptible(command):
    """Ctrl-C anywhere in a command: one line on stderr and exit status 130 (typer's own exit 130 says
    nothing). `train` and `all` catch it earlier, print the rows that finished, then exit 130 too."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except KeyboardInterrupt:
            name = command.__name__.replace("_", "-")
            print(f"interrupted (Ctrl-C) in rosetta {name}; nothing had finished", file=sys.stderr)
            raise typer.Exit(130) from None

    return wrapper


def json_safe(value):
    """`value` with every NaN and inf float replaced by None: strict JSON has no NaN (a diverged run)."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def dump_json(value, indent: int) -> str:
    return json.dumps(json_safe(value), indent=indent, allow_nan=False)


def check_output_path(flag: str, path: str, image: bool = False, make_parents: bool = False) -> str:
    """Before any work starts: the file `flag` will write, checked by opening it for appending (and
    removing it again if it was not there). An image path gets the suffix matplotlib would add
    (`curves` -> `curves.png`), so every message names the real file. Returns that path."""
    p = Path(path)
    if p.is_dir() or not p.name or path.endswith("/"):
        fail(f"{flag} {path}: is a directory; give a file name")
    if image:
        from matplotlib.backend_bases import FigureCanvasBase

        formats = FigureCanvasBase.get_supported_filetypes()
        if not p.suffix and p.name:
            p = p.with_name(p.name + ".png")  # what savefig writes for a name without a suffix
        elif p.suffix[1:].lower() not in formats:
            fail(
                f"{flag} {path}: unknown image format {p.suffix!r}; choose from: {', '.join(formats)}"
            )
    if p.is_dir():  # `out` -> `out.png`, a directory
        fail(f"{flag} {p}: is a directory; give a file name")
    if make_parents:
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            fail(f"{flag} {p}: cannot create the directory {p.parent} ({e.strerror or e})")
    if not p.parent.is_dir():
        what = "is not a directory" if p.parent.exists() else "does not exist"
        fail(f"{flag} {p}: the directory {p.parent} {what}")
    existed = p.exists()
    try:
        with open(p, "ab"):
            pass
    except OSError as e:
        fail(f"{flag} {p}: cannot write there ({e.strerror or e})")
    if not existed:
        p.unlink(missing_ok=True)
    return str(p)


def data_error(e: Exception, data_dir: str | None) -> str:
    """A DataFileError's message, naming --data-dir unless it already names a file in it."""
    message = str(e)
    return (
        message if not data_dir or str(data_dir) in message else f"--data-dir {data_dir}: {message}"
    )


def check_model(model: str) -> str:
    if model not in MODELS:
        fail(f"unknown model {model!r}; choose from: {', '.join(MODELS)}")
    return model


def check_frameworks(name: str) -> list[str]:
    try:
        return resolve_framework(name)
    except KeyError:
        fail(
            f"unknown framework {name!r}; choose from: all, {', '.join(sorted(set(FRAMEWORK_ALIASES)))}"
        )


class EpochProgress:
    """A rich progress bar per framework, on stderr; `start` returns the per-epoch callback."""

    def __init__(self, progress: Progress):
        self.progress = progress

    def start(self, framework: str, epochs: int):
        task = self.progress.add_task(framework, total=epochs, loss=float("nan"))
        return lambda epoch, loss: self.progress.update(task, completed=epoch + 1, loss=loss)


# what the per-epoch number of a progress bar is: a mean loss, or the perceptron's count of mistakes
METRICS = {
    "loss": "loss {task.fields[loss]:.4f}",
    "mistakes": "mistakes {task.fields[loss]:.0f}",
    None: "",
}


def progress_bar(enabled: bool, metric: str | None = "loss") -> Progress:
    columns = [
        TextColumn("{task.description:<10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(METRICS[metric]),
        TimeElapsedColumn(),
    ]
    return Progress(*columns, console=err, disable=not enabled, transient=False)


def fmt(value, spec: str) -> str:
    return (
        "—"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else format(value, spec)
    )


# ----------------------------------------------------------------------------- train
def train_model(
    model: str, task: str | None, frameworks: list[str], opts, show_progress: bool
) -> dict:
    import importlib

    entry = MODELS[model]
    task = task or entry.default_task
    if task not in entry.tasks:
        fail(f"unknown task {task!r} for model {model}; choose from: {', '.join(entry.tasks)}")
    runner = importlib.import_module(entry.runner)
    with progress_bar(show_progress, getattr(runner, "PROGRESS_METRIC", "loss")) as bar:
        try:
            return runner.run(model, task, frameworks, opts, progress=EpochProgress(bar))
        except DataFileError as e:
            fail(data_error(e, opts.data_dir))


def print_train(result: dict) -> None:
    import importlib

    runner = importlib.import_module(MODELS[result["model"]].runner)
    if hasattr(
        runner, "print_train"
    ):  # a model with its own table (the perceptron: mistakes, not a loss)
        return runner.print_train(result, out)
    table = Table(
        title=f"{result['model']} on {result['task']} ({result['n_train']} train / {result['n_test']} test)"
    )
    replicas = result.get("replicas")  # rosetta train --replicas N (tasks/data_parallel.py)
    regression = result.get("metric") == "r2"  # an identity head: test MSE and R², no accuracy
    quality = lambda r: (
        [fmt(r["test_loss"], ".4f"), fmt(r["test_r2"], ".4f")]
        if regression
        else [fmt(r["test_accuracy"], ".4f")]
    )
    for col in (
        "framework",
        "final train loss",
        *(["test MSE", "test R²"] if regression else ["test accuracy"]),
        "s / epoch",
        "max |Δparam| vs scratch",
        *([f"max |Δparam| vs 1 replica (N = {replicas})"] if replicas else []),
    ):
        table.add_column(col, justify="left" if col == "framework" else "right")
    for r in result["results"]:
        table.add_row(
            r["framework"] + (" (interrupted)" if r.get("stopped") == "interrupted" else ""),
            "diverged" if r.get("diverged") else fmt(r["final_loss"], ".4f"),
            *quality(r),
            fmt(r["seconds_per_epoch"], ".3f"),
            fmt(r["max_param_diff_vs_scratch"], ".2e"),
            *([fmt(r["max_param_diff_vs_one_replica"], ".2e")] if replicas else []),
        )
    out.print(table)
    if "baselines" in result:  # a language model: its held-out loss against the unigram model's
        losses = ", ".join(f"{r['framework']} {r['test_loss']:.4f}" for r in result["results"])
        out.print(
            f"test loss: {losses}; baselines: "
            + ", ".join(f"{k} {v:.4f}" for k, v in result["baselines"].items()),
            highlight=False,
        )
    for note in result.get("notes", []):  # e.g. batch norm's running variance (tasks/train.py)
        out.print(note, highlight=False)


PADDING_HELP = (
    "lenet5: zero padding of conv1[,conv2] on every side, e.g. 2 (d2l's LeNet-5: 28x28 MNIST, conv1 "
    "padded by 2) or 2,2; given, the images keep their own size (default: valid convs on 32x32)"
)
FINAL_NORM_HELP = (
    "transformer: a final LayerNorm after the last block (default: pre-LN yes, post-LN no)"
)


def parse_padding(text: str | None) -> tuple[int, int] | None:
    """--padding P (conv1 only, conv2 unpadded) or P1,P2: two non-negative integers; None if not given."""
    if text is None:
        return None
    try:
        values = tuple(int(p) for p in text.split(","))
    except ValueError:
        values = (-1,)
    if len(values) not in (1, 2) or any(p < 0 for p in values):
        fail(f"--padding must be one or two non-negative integers (conv1[,conv2]), got {text!r}")
    return (values[0], values[1] if len(values) == 2 else 0)


@app.command()
@interruptible
def train(
    model: str = typer.Argument(..., help=f"one of: {', '.join(MODELS)}"),
    task: str | None = typer.Option(None, help="task name (default: the model's first task)"),
    framework: str = typer.Option("all", help="scratch, torch, tf, jax, or all"),
    epochs: int | None = typer.Option(None, help="epochs (default: per task)"),
    lr: float | None = typer.Option(None, help="learning rate (default: per task)"),
    batch_size: int | None = typer.Option(None, help="mini-batch size (default: per task)"),
    hidden: str | None = typer.Option(None, help="hidden layer sizes, comma separated, e.g. 64,32"),
    activation: str | None = typer.Option(
        None, help="relu, tanh, sigmoid, leaky_relu or identity (mlp)"
    ),
    pooling: str | None = typer.Option(None, help="lenet5: avg or max"),
    padding: str | None = typer.Option(None, help=PADDING_HELP),
    final_norm: bool | None = typer.Option(
        None, "--final-norm/--no-final-norm", help=FINAL_NORM_HELP
    ),
    num_layers: int | None = typer.Option(None, help="rnn, lstm, gru: stacked recurrent layers"),
    bidirectional: bool = typer.Option(
        False,
        "--bidirectional",
        help="rnn, lstm, gru: a reverse direction too, outputs concatenated",
    ),
    seed: int = typer.Option(0, help="seed for the split, the initial weights and the batch order"),
    dtype: str = typer.Option("float32", help="float32 or float64"),
    data_dir: str | None = typer.Option(None, help="folder with MNIST IDX files (task mnist)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON document to stdout"),
    optimizer: str | None = typer.Option(
        None,
        help="sgd, momentum, nesterov, rmsprop, adam or adamw (default: the model's own, sgd; adam for attention and transformer)",
    ),
    momentum: float = typer.Option(0.9, help="momentum / nesterov coefficient"),
    weight_decay: float = typer.Option(0.0, help="decoupled weight decay (adamw)"),
    schedule: str = typer.Option(
        "constant", help="constant, cosine or step (over the whole run, after warmup)"
    ),
    warmup_steps: int = typer.Option(0, help="linear learning-rate warmup, in updates"),
    clip_norm: float | None = typer.Option(None, help="clip the global gradient norm to this"),
    init: str | None = typer.Option(
        None, help="mlp, lenet5: uniform, he_normal, he_uniform, xavier_normal or xavier_uniform"
    ),
    dropout: float | None = typer.Option(
        None, help="mlp, lenet5: dropout probability after each hidden dense activation"
    ),
    batch_norm: bool = typer.Option(
        False,
        "--batch-norm",
        help="mlp, lenet5: batch norm before each hidden activation (lenet5: after each conv too)",
    ),
    l2: float | None = typer.Option(
        None, help="mlp, lenet5: L2 penalty (l2/2)·Σp² added to the loss (not decoupled decay)"
    ),
    patience: int | None = typer.Option(
        None, help="early stopping: epochs without a better validation loss"
    ),
    plot: str | None = typer.Option(
        None, help="write the four training-loss curves to this image file"
    ),
    replicas: int | None = typer.Option(
        None,
        help="mlp, lenet5: data parallel on N replicas, compared with 1 (tasks/data_parallel.py)",
    ),
    save: str | None = typer.Option(
        None,
        help="folder: write each trained model in its framework's own format (MODEL.pt, "
        "MODEL.weights.h5, MODEL.orbax/, scratch: MODEL.safetensors), for rosetta convert",
    ),
):
    """Train MODEL in one or all frameworks from the same initial weights and compare."""
    from tasks.configs import POOLINGS
    from tasks.train import TrainOptions

    check_model(model)
    frameworks = check_frameworks(framework)
    check_seed(seed)
    task = task or MODELS[model].default_task
    if task not in MODELS[model].tasks:
        fail(
            f"unknown task {task!r} for model {model}; choose from: {', '.join(MODELS[model].tasks)}"
        )
    given = {"--batch-size": batch_size, "--hidden": hidden, "--activation": activation, "--pooling": pooling,
             "--padding": padding, "--final-norm": final_norm, "--num-layers": num_layers, "--bidirectional": bidirectional or None, "--optimizer": optimizer, "--schedule": schedule != "constant" or None, "--warmup-steps": warmup_steps or None,
             "--clip-norm": clip_norm, "--patience": patience, "--init": init, "--dropout": dropout,
             "--batch-norm": batch_norm or None, "--l2": l2, "--plot": plot, "--data-dir": data_dir,
             "--replicas": replicas}  # fmt: skip
    check_flags(model, task, {flag: value is not None for flag, value in given.items()})
    if epochs is not None and epochs < 1:
        fail(f"--epochs must be a positive integer, got {epochs}")
    if lr is not None and not (lr > 0 and math.isfinite(lr)):
        fail(f"--lr must be a positive number, got {lr}")
    if batch_size is not None and batch_size < 1:
        fail(f"--batch-size must be a positive integer, got {batch_size}")
    if dtype not in ("float32", "float64"):
        fail(f"unknown dtype {dtype!r}; choose from: float32, float64")
    if activation is not None:  # a model that takes no --activation was refused by check_flags
        check_activation(model, activation)
    if num_layers is not None and num_layers < 1:
        fail(f"--num-layers must be a positive integer, got {num_layers}")
    if pooling is not None and pooling not in POOLINGS:
        fail(f"unknown pooling {pooling!r}; choose from: {', '.join(POOLINGS)}")
    sizes = None
    if hidden is not None:
        try:
            sizes = tuple(int(h) for h in hidden.split(",") if h.strip())
        except ValueError:
            sizes = (-1,)
        if any(h < 1 for h in sizes):
            fail(f"--hidden must be positive integers separated by commas, got {hidden!r}")
        why = MODELS[model].check_hidden(sizes)  # e.g. a recurrent network: one size
        if why:
            fail(f"--hidden: {why}, got {hidden!r}")
    regularised = check_training_options(
        model,
        optimizer,
        momentum,
        weight_decay,
        schedule,
        warmup_steps,
        clip_norm,
        init,
        dropout,
        batch_norm,
        patience,
        l2,
    )
    opts = TrainOptions(
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        hidden=sizes,
        activation=activation,
        pooling=pooling,
        padding=parse_padding(padding),
        final_norm=final_norm,
        num_layers=num_layers,
        bidirectional=bidirectional or None,
        seed=seed,
        dtype=dtype,
        data_dir=data_dir,
        save_dir=save,
        **regularised,
    )
    plot = check_output_path("--plot", plot, image=True) if plot else None  # before any training
    if save is not None and not Path(save).is_dir():
        fail(f"--save {save}: not an existing directory")
    if save is not None and (replicas is not None or not MODELS[model].gradient):
        fail(
            "--save applies to the gradient models' ordinary runs (not the perceptron or --replicas)"
        )
    if replicas is not None:  # data parallel: its own runner, the batch size is the global batch
        result = train_replicas(model, task, frameworks, opts, replicas, patience)
    else:
        result = train_model(
            model, task, frameworks, opts, show_progress=sys.stderr.isatty() or not as_json
        )
    if plot and result["results"]:
        from tasks.train import plot_curves

        plot_curves(result, plot)
    if as_json:
        print(dump_json(result, indent=2))
    else:
        print_train(result)
        for row in result["results"]:
            if row.get("stopped") == "early":
                err.print(f"{row['framework']}: {row['stopped']} after {row['epochs_run']} epochs")
        if plot and result["results"]:
            print(f"loss curves written to {plot}", file=sys.stderr)  # print: rich would wrap it
        for row in result["results"]:
            if row.get("saved"):
                print(f"{row['framework']}: saved {row['saved']}", file=sys.stderr)
    raise typer.Exit(end_status(result))


def end_status(result: dict) -> int:
    """0; 1 if a framework's run diverged (one line each); 130 if Ctrl-C stopped one (one line)."""
    status = 0
    for row in result["results"]:
        if row.get("diverged"):
            epoch = row.get("diverged_epoch")
            when = (
                f"the training loss became NaN or inf in epoch {epoch}" if epoch else "NaN or inf"
            )
            print(
                f"{result['model']} {row['framework']} diverged ({when}); try a smaller --lr",
                file=sys.stderr,
            )
            status = 1
    if result.get("interrupted_framework"):
        done = [r["framework"] for r in result["results"] if r.get("stopped") != "interrupted"]
        print(
            f"interrupted (Ctrl-C) while running {result['interrupted_framework']}; finished: "
            + (", ".join(done) or "none"),
            file=sys.stderr,
        )
        status = 130
    return status


# ----------------------------------------------------------------------------- which flag applies to which model
# `rosetta train` refuses a flag that the chosen model would ignore (exit 2) instead of recording it in the
# JSON options as if used. Which model takes which flag is its spec's `flags` (tasks/specs/); why the
# others ignore it is said here, once per flag; the README's "Errors" section shows the table.
PERCEPTRON_RULE = "the perceptron learns by its own mistake-driven rule, one sample at a time"
REGULARISER_RULE = "--init, --dropout, --batch-norm and --l2 are for mlp and lenet5, whose configs have those layers"
FLAG_RULES: dict[str, str] = {
    # flag: why the models whose specs do not take it ignore it
    "--batch-size": PERCEPTRON_RULE,
    "--hidden": "LeNet-5's sizes are the paper's, attention's and the Transformer's the registry's, "
    "and the perceptron has no hidden layer",
    "--activation": "the LSTM's and GRU's nonlinearities are fixed (tanh, the gates' sigmoid), "
    "attention has no hidden activation, the perceptron steps",
    "--pooling": "only LeNet-5 pools",
    "--padding": "only LeNet-5 convolves",
    "--final-norm": "only the Transformer has blocks a final LayerNorm can follow",
    "--num-layers": "only the recurrent models stack layers of one kind",
    "--bidirectional": "only the recurrent models read a sequence both ways",
    **{
        flag: PERCEPTRON_RULE
        for flag in ("--optimizer", "--schedule", "--warmup-steps", "--clip-norm", "--patience")
    },
    **{flag: REGULARISER_RULE for flag in ("--init", "--dropout", "--batch-norm", "--l2")},
    "--plot": "the perceptron's rows count mistakes and have no loss curve",
    "--replicas": "the data-parallel chapters (data_parallel.py) are theirs",
}


def flag_models() -> dict[str, tuple[tuple[str, ...], str]]:
    """flag: (the models whose specs take it, why the others ignore it)."""
    from tasks.specs import taking

    return {flag: (taking(flag), why) for flag, why in FLAG_RULES.items()}


FLAG_MODELS = flag_models()  # the table as the specs have it when the CLI starts


def check_activation(model: str, activation: str) -> None:
    """Exit 2 unless the model's spec takes this --activation. A name that is none of the shared
    ACTIVATIONS, for a model that takes only those, is refused listing them all; any other with
    the model's own choices."""
    from tasks.configs import ACTIVATIONS

    choices = MODELS[model].activations
    if set(choices) <= set(ACTIVATIONS) and activation not in ACTIVATIONS:
        fail(f"unknown activation {activation!r}; choose from: {', '.join(ACTIVATIONS)}")
    if activation not in choices:
        fail(f"unknown activation {activation!r} for {model}; choose from: {', '.join(choices)}")


FILE_TASKS = ("mnist",)  # the tasks that read --data-dir; every other task is built in memory


def check_flags(model: str, task: str, given: dict[str, bool]) -> None:
    """Exit 2 naming the first flag given that `model` (or `task`, for --data-dir) does not use."""
    for flag, used in given.items():
        if flag == "--data-dir" and used and task not in FILE_TASKS:
            fail(
                f"--data-dir does not apply to task {task}: it reads no files (only {', '.join(FILE_TASKS)} does)"
            )
        if flag in FLAG_RULES and used and flag not in MODELS[model].flags:
            models, why = flag_models()[flag]
            fail(f"{flag} does not apply to {model} (only to {', '.join(models)}): {why}")


def train_replicas(model, task, frameworks, opts, replicas: int, patience) -> dict:
    """rosetta train MODEL --replicas N: each framework's data_parallel.py on N replicas and on 1."""
    from tasks import data_parallel

    if "--replicas" not in MODELS[model].flags:
        models, _ = flag_models()["--replicas"]
        fail(
            f"--replicas is for {' and '.join(models)} (their data_parallel.py chapters), not {model}"
        )
    if replicas < 1 or patience is not None:
        fail(f"--replicas must be a positive integer and takes no --patience, got {replicas}")
    task = task or MODELS[model].default_task
    batch = opts.with_defaults(model, task).batch_size
    if batch % replicas:
        fail(f"the global batch (--batch-size {batch}) must divide by --replicas {replicas}")
    try:
        return data_parallel.run_train(model, task, frameworks, opts, replicas)
    except DataFileError as e:
        fail(str(e))


def check_training_options(
    model,
    optimizer,
    momentum,
    weight_decay,
    schedule,
    warmup_steps,
    clip_norm,
    init,
    dropout,
    batch_norm,
    patience,
    l2=None,
) -> dict:
    """Validate the optimiser / regularisation flags (exit 2 with one line); the TrainOptions fields."""
    from tasks.configs import INITS, OPTIMIZER_NAMES, SCHEDULES

    if optimizer is not None and optimizer not in OPTIMIZER_NAMES:
        fail(f"unknown optimizer {optimizer!r}; choose from: {', '.join(OPTIMIZER_NAMES)}")
    if schedule not in SCHEDULES:
        fail(f"unknown schedule {schedule!r}; choose from: {', '.join(SCHEDULES)}")
    if not 0 <= momentum < 1:
        fail(f"--momentum must be in [0, 1), got {momentum}")
    if weight_decay < 0 or (weight_decay and optimizer != "adamw"):
        fail(
            f"--weight-decay (decoupled) needs --optimizer adamw and a value >= 0, got {weight_decay} with {optimizer}"
        )
    if warmup_steps < 0:
        fail(f"--warmup-steps must be >= 0, got {warmup_steps}")
    if clip_norm is not None and not (clip_norm > 0 and math.isfinite(clip_norm)):
        fail(f"--clip-norm must be a positive number, got {clip_norm}")
    if patience is not None and patience < 1:
        fail(f"--patience must be a positive integer, got {patience}")
    if init is not None and init not in INITS:
        fail(f"unknown init {init!r}; choose from: {', '.join(INITS)}")
    if dropout is not None and not 0 <= dropout < 1:
        fail(f"--dropout must be in [0, 1), got {dropout}")
    if l2 is not None and not (l2 >= 0 and math.isfinite(l2)):
        fail(f"--l2 must be a number >= 0, got {l2}")
    # which model takes which flag: its spec's flags (FLAG_MODELS), checked by check_flags before this
    return dict(optimizer=optimizer, momentum=momentum, weight_decay=weight_decay, schedule=schedule, warmup_steps=warmup_steps,
                clip_norm=clip_norm, init=init, dropout=dropout, batch_norm=batch_norm, patience=patience, l2=l2)  # fmt: skip


# ----------------------------------------------------------------------------- convert (issue 14)
@app.command()
@interruptible
def convert(
    model: str = typer.Argument(..., help="mlp, lenet5, rnn, lstm, gru, attention or transformer"),
    src: str = typer.Argument(..., help="the checkpoint to read"),
    dst: str = typer.Argument(..., help="the checkpoint to write"),
    from_fmt: str = typer.Option(..., "--from", help="torch, keras, flax or canonical"),
    to_fmt: str = typer.Option(..., "--to", help="torch, keras, flax or canonical"),
    task: str | None = typer.Option(None, help="the task the model was trained on (its sizes)"),
    hidden: str | None = typer.Option(None, help="hidden layer sizes, as for rosetta train"),
    activation: str | None = typer.Option(None, help="as for rosetta train"),
    pooling: str | None = typer.Option(None, help="lenet5: avg or max"),
    padding: str | None = typer.Option(None, help=PADDING_HELP),
    final_norm: bool | None = typer.Option(
        None, "--final-norm/--no-final-norm", help=FINAL_NORM_HELP
    ),
    num_layers: int | None = typer.Option(None, help="rnn, lstm, gru: stacked recurrent layers"),
    bidirectional: bool = typer.Option(
        False,
        "--bidirectional",
        help="rnn, lstm, gru: a reverse direction too, outputs concatenated",
    ),
    dropout: float | None = typer.Option(None, help="mlp, lenet5: as for rosetta train"),
    batch_norm: bool = typer.Option(
        False, "--batch-norm", help="mlp, lenet5: as for rosetta train"
    ),
    dtype: str = typer.Option("float32", help="float32 or float64 (the file's)"),
    data_dir: str | None = typer.Option(None, help="folder with MNIST IDX files (task mnist)"),
    probe: int = typer.Option(8, help="test inputs in the probe batch"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object to stdout"),
):
    """Convert a checkpoint of MODEL between torch, Keras, Flax (orbax) and canonical safetensors,
    then load both and print the largest probe-batch difference (exit 1 above the tolerance)."""
    from tasks import convert as convert_mod
    from tasks.train import TrainOptions

    if model not in convert_mod.MODELS:
        fail(f"rosetta convert takes one of {', '.join(convert_mod.MODELS)}, not {model!r}")
    for flag, fmt in (("--from", from_fmt), ("--to", to_fmt)):
        if fmt not in convert_mod.FORMATS:
            fail(f"{flag} {fmt!r}: choose from {', '.join(convert_mod.FORMATS)}")
    task = task or MODELS[model].default_task
    if task not in MODELS[model].tasks:
        fail(
            f"unknown task {task!r} for model {model}; choose from: {', '.join(MODELS[model].tasks)}"
        )
    given = {"--hidden": hidden, "--activation": activation, "--pooling": pooling, "--dropout": dropout,
             "--batch-norm": batch_norm or None, "--data-dir": data_dir, "--padding": padding,
             "--final-norm": final_norm, "--num-layers": num_layers,
             "--bidirectional": bidirectional or None}  # fmt: skip
    check_flags(model, task, {flag: value is not None for flag, value in given.items()})
    if dtype not in ("float32", "float64"):
        fail(f"unknown dtype {dtype!r}; choose from: float32, float64")
    if probe < 1:
        fail(f"--probe must be a positive integer, got {probe}")
    if not Path(src).exists():
        fail(f"{src}: no such file or directory")
    if Path(dst).resolve() == Path(src).resolve():
        fail(f"{dst}: the destination is the source")
    if to_fmt == "keras" and not dst.endswith(".weights.h5"):
        fail(f"{dst}: Keras's save_weights needs a name ending in .weights.h5")
    if to_fmt != "flax":  # orbax writes a directory and replaces one left by an earlier run
        check_output_path("DST", dst)
    try:
        sizes = tuple(int(h) for h in hidden.split(",") if h.strip()) if hidden else None
    except ValueError:
        fail(f"--hidden must be positive integers separated by commas, got {hidden!r}")
    opts = TrainOptions(hidden=sizes, activation=activation, pooling=pooling, dtype=dtype,
                        data_dir=data_dir, dropout=dropout, batch_norm=batch_norm,
                        padding=parse_padding(padding), final_norm=final_norm,
                        num_layers=num_layers, bidirectional=bidirectional or None)  # fmt: skip
    try:
        cfg, x = convert_mod.config_and_probe(model, task, opts, probe)
    except DataFileError as e:
        fail(data_error(e, data_dir))
    except ValueError as e:
        fail(str(e))
    try:
        result = convert_mod.convert(model, cfg, Path(src), Path(dst), from_fmt, to_fmt, dtype, x)
    except convert_mod.ConvertError as e:
        fail(str(e))
    if as_json:
        print(dump_json(result, indent=2))
    else:
        verdict = "ok" if result["passed"] else "FAILED"
        print(f"{model}: {from_fmt} {src} -> {to_fmt} {dst}")
        print(f"probe batch of {result['probe_batch']}: max |difference| {result['max_abs_error']:.3g} "
              f"(tolerance {result['tolerance']:.0e}, {dtype}) {verdict}")  # fmt: skip
    raise typer.Exit(0 if result["passed"] else 1)


# ----------------------------------------------------------------------------- parity
def parity_records(
    models: list[str], frameworks: list[str], show_progress: bool | None = None
) -> list[dict]:
    """Every parity record of `models`; a bar counting each model's cases (default: on a terminal).
    JAX compiles them without LLVM's optimisation (parity.jax_unoptimised)."""
    show_progress = sys.stderr.isatty() if show_progress is None else show_progress
    records = []
    for model in models:
        cases = parity_mod.CASES.get(model, []) + parity_mod.OPTIMIZER_CASES.get(model, [])
        with (
            progress_bar(show_progress, metric=None) as bar,  # counts cases; no loss to show
            parity_mod.jax_unoptimised("jax_impl" in frameworks),  # small programs, few steps
        ):
            task = bar.add_task(f"{model}", total=len(cases), loss=float("nan"))
            for case in cases:
                records += parity_mod.records(case, frameworks)
                bar.advance(task)
    return records


def print_parity(records: list[dict]) -> None:
    """The largest error per model, framework, reference, dtype and check kind."""
    groups: dict[tuple, dict] = {}
    for r in records:
        check = (
            r["tensor"].split(".")[0]
            if r["tensor"].split(".")[0] in ("grad", "roundtrip", "sgd", "rule", "trajectory", "dp")
            else "forward"
        )
        key = (r["model"], r["framework"], r["reference"], r["dtype"], check)
        g = groups.setdefault(key, {"worst": r, "n": 0, "failed": 0})
        g["n"] += 1
        g["failed"] += not r["passed"]
        if r["rel_error"] > g["worst"]["rel_error"]:
            g["worst"] = r
    table = Table(title="parity: largest relative error per check")
    for col in (
        "model",
        "framework",
        "vs",
        "dtype",
        "check",
        "worst tensor",
        "rel error",
        "tolerance",
        "ok",
    ):
        table.add_column(col)
    for (model, fw, ref, dtype, check), g in groups.items():
        w = g["worst"]
        ok = "yes" if not g["failed"] else f"NO ({g['failed']}/{g['n']})"
        table.add_row(
            model,
            fw,
            ref,
            dtype,
            check,
            f"{w['case']}:{w['tensor']}",
            f"{w['rel_error']:.1e}",
            f"{w['tolerance']:.0e}",
            ok,
        )
    out.print(table)
    failed = sum(not r["passed"] for r in records)
    out.print(f"{len(records) - failed} passed, {failed} failed")


@app.command()
@interruptible
def parity(
    models: list[str] | None = typer.Argument(
        None, help=f"models to check (default: all): {', '.join(MODELS)}"
    ),
    framework: str = typer.Option("all", help="frameworks to compare with scratch, or all"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON list of records to stdout"),
):
    """Run the parity checks without pytest; exit 1 if any check fails.
    `rosetta parity data_parallel`: N replicas vs 1 and vs scratch (tasks/data_parallel.py)."""
    data_parallel = "data_parallel" in (models or [])
    models = [m for m in (models or []) if m != "data_parallel"] if data_parallel else models
    models = [check_model(m) for m in (models or ([] if data_parallel else list(MODELS)))]
    frameworks = check_frameworks(framework)
    if "scratch" not in frameworks:
        frameworks = ["scratch", *frameworks]  # every check is against the scratch reference
    records = parity_records(models, frameworks)
    if data_parallel:
        from tasks import data_parallel as dp

        records += dp.records(frameworks)
    if as_json:
        print(dump_json(records, indent=1))
    else:
        print_parity(records)
    if not records or not all(r["passed"] for r in records):
        raise typer.Exit(1)


# ----------------------------------------------------------------------------- the main job
@app.command(name="all")
@interruptible
def all_models(
    models: list[str] | None = typer.Argument(
        None, help=f"models to run (default: all): {', '.join(MODELS)}"
    ),
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="also print each training table and every parity check"
    ),
    as_json: bool = typer.Option(False, "--json", help="print one JSON document to stdout"),
    framework: str = typer.Option(
        "all",
        help="scratch, torch, tf, jax, or all: one framework runs with scratch, the reference",
    ),
    jobs: int | None = typer.Option(
        None,
        "--jobs",
        "-j",
        help="worker processes, each running whole models' training or parity (default: one per "
        "CPU this process may use, at most one per model); 1: everything in this process",
    ),
):
    """The main job: train every model on its default task in all four frameworks, then run parity.

    Ends with one summary table (a row per model, a column per framework) and one line, `N records,
    all passed` or the failed checks by name; --verbose prints the training and parity tables too.
    The models run in worker processes (--jobs), the output in model order whatever finished first.
    --framework torch (tf, jax): only that framework and scratch, the reference of every check."""
    from tasks import jobs as jobs_mod

    models = [check_model(m) for m in (models or list(MODELS))]
    if jobs is not None and jobs < 1:
        fail(f"--jobs must be a positive integer, got {jobs}")
    n_jobs = jobs_mod.default_jobs(len(models)) if jobs is None else min(jobs, len(models))
    frameworks = check_frameworks(framework)
    if "scratch" not in frameworks:
        frameworks = ["scratch", *frameworks]  # every check is against the scratch reference
    one_thread_for_torch()
    jax_compilation_cache()
    one_thread_for_numpy()
    if n_jobs > 1:
        raise typer.Exit(all_in_workers(models, frameworks, n_jobs, verbose, as_json))
    from tasks.train import TrainOptions

    trained, records, seconds = [], [], {}
    for model in models:
        start = time.perf_counter()
        result = train_model(
            model,
            None,
            frameworks,
            TrainOptions(),
            show_progress=not as_json or sys.stderr.isatty(),
        )
        trained.append(result)
        if verbose and not as_json:
            print_train(result)
        if result.get("interrupted_framework"):  # Ctrl-C: what finished, no more parity
            if as_json:
                print(dump_json({"train": trained, "parity": records}, indent=1))
            else:
                print_summary(trained, records, seconds, frameworks=frameworks)
            raise typer.Exit(end_status(result))
        middle = time.perf_counter()
        try:
            records += parity_records([model], frameworks)
        except KeyboardInterrupt:  # what finished: the models before this one, and its training
            if as_json:
                print(dump_json({"train": trained, "parity": records}, indent=1))
            else:
                print_summary(trained, records, seconds, frameworks=frameworks)
            done = ", ".join(m for m in seconds) or "none"
            print(
                f"interrupted (Ctrl-C) while running {model} parity; finished: {done}",
                file=sys.stderr,
            )
            raise typer.Exit(130) from None
        seconds[model] = (middle - start, time.perf_counter() - middle)
    failed = sum(not r["passed"] for r in records)
    if as_json:
        print(dump_json({"train": trained, "parity": records}, indent=1))
    else:
        if verbose:
            print_parity(records)
        print_summary(trained, records, seconds, frameworks=frameworks)
    diverged = [end_status(result) for result in trained]  # one line per diverged run
    if failed or not records or any(diverged):
        raise typer.Exit(1)


def all_in_workers(
    models: list[str], frameworks: list[str], n_jobs: int, verbose: bool, as_json: bool
) -> int:
    """`rosetta all` in `n_jobs` worker processes (tasks/jobs.py); the same output as one process.
    On stderr: a line per finished model (and on a terminal a bar with the jobs running). Returns
    the exit status: 0; 1 a check failed, a run diverged or a job failed; 130 Ctrl-C."""
    from tasks import jobs as jobs_mod

    show, live = not as_json or sys.stderr.isatty(), sys.stderr.isatty()
    begin = time.perf_counter()
    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[running]}"),
    ]
    with Progress(*columns, console=err, disable=not live, transient=True) as bar:
        task = bar.add_task(f"jobs ({n_jobs} processes)", total=2 * len(models), running="")

        def say(line: str) -> None:
            if live:
                bar.console.print(line, highlight=False, markup=False)
            elif show:
                print(line, file=sys.stderr, flush=True)

        def report(event: str, job: tuple, outcome, running: list[str]) -> None:
            index, model, part = job
            bar.update(task, advance=event != "start", running="running: " + ", ".join(running))
            if event == "failed":
                message = outcome.failed[-1][2]
                print(f"rosetta all: {model} {part} failed: {message}", file=sys.stderr)
            elif event == "done" and outcome.finished(index):
                t, cpu = outcome.seconds[index], outcome.cpu[index]
                say(
                    f"{model} done: training {t['train']:.0f} s, parity {t['parity']:.0f} s "
                    f"(CPU {cpu['train']:.0f} s, {cpu['parity']:.0f} s; "
                    f"{time.perf_counter() - begin:.0f} s since the start)"
                )

        outcome = jobs_mod.run(models, frameworks, n_jobs, report)
    order = range(len(models))
    trained = [outcome.trained[i] for i in order if i in outcome.trained]
    records = [r for i in order if i in outcome.records for r in outcome.records[i]]
    seconds = {
        models[i]: (outcome.seconds[i]["train"], outcome.seconds[i]["parity"])
        for i in order
        if outcome.finished(i)
    }
    failed_jobs = [f"{model} {part}" for model, part, _ in outcome.failed]
    if as_json:
        print(dump_json({"train": trained, "parity": records}, indent=1))
    else:
        if verbose:
            for result in trained:
                print_train(result)
            print_parity(records)
        wall = (n_jobs, time.perf_counter() - begin)
        print_summary(
            trained, records, seconds, wall=wall, failed_jobs=failed_jobs, frameworks=frameworks
        )
    if outcome.interrupted:
        done = ", ".join(models[i] for i in order if outcome.finished(i)) or "none"
        print(
            f"interrupted (Ctrl-C) while running {', '.join(outcome.interrupted)}; "
            f"finished: {done}",
            file=sys.stderr,
        )
        return 130
    diverged = [end_status(result) for result in trained]  # one line per diverged run
    status = outcome.status
    if any(not r["passed"] for r in records) or not records or any(diverged):
        status = max(status, 1)
    return status


def one_thread_for_torch() -> None:
    """torch's intra-op pool (a thread per core) spin-waits between these models' tiny operations;
    measured on the 2-core machine at load average 12, torch's default MLP run (moons, 60 epochs)
    took 158 s wall / 36.8 s CPU on two threads and 12.7 s / 2.9 s on one. OMP_NUM_THREADS wins if set."""
    if "OMP_NUM_THREADS" in os.environ:
        return
    if "torch" in sys.modules:  # already started (e.g. in-process tests): resize its pool
        sys.modules["torch"].set_num_threads(1)
    else:
        os.environ["OMP_NUM_THREADS"] = "1"  # read when torch starts


def one_thread_for_numpy() -> None:
    """NumPy's OpenBLAS on one thread for `rosetta all` (OMP_NUM_THREADS comes too late for it:
    NumPy is already loaded when a command starts). Its second thread only spins on these small
    matrices: scratch LeNet-5's default training took 12-41 s CPU with two threads on the shared
    2-core machine and 3.7 s with one, the same loss to the last bit. A thread count the user set
    (OPENBLAS_NUM_THREADS, or OMP_NUM_THREADS other than the 1 main() sets) was read at start."""
    if "OPENBLAS_NUM_THREADS" in os.environ or os.environ.get("OMP_NUM_THREADS", "1") != "1":
        return
    from threadpoolctl import threadpool_limits  # installed with scikit-learn

    threadpool_limits(1, user_api="blas")


def jax_compilation_cache() -> None:
    """JAX's persistent compilation cache for `rosetta all`: every XLA program it compiles (about
    770, mostly 0.1-0.3 s each, mostly in parity) is written to ~/.cache/nn-rosetta/jax
    ($XDG_CACHE_HOME honoured; JAX_COMPILATION_CACHE_DIR wins if set) and read back by the next run
    instead of compiled again. The key is a hash of the program, the JAX and XLA versions, the
    flags and the CPU, so a stale entry cannot be hit; a fresh machine compiles everything once.
    Delete the folder to clear it. Set through the environment, read when JAX starts: a process
    that started JAX before (in-process tests) runs without it."""
    if "jax" in sys.modules:
        return
    cache = os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "nn-rosetta", "jax"
    )
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", cache)
    # JAX's default caches only programs that took a second or more to compile: ours take less
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")


def print_summary(
    trained: list[dict],
    records: list[dict],
    seconds: dict | None = None,
    wall: tuple[int, float] | None = None,
    failed_jobs: list[str] | None = None,
    frameworks: list[str] | None = None,
) -> None:
    """One table: a row per model, a column per framework, each cell the test accuracy (a language
    model: its held-out loss) and the worst float64 / float32 relative error of any parity check the
    framework takes part in (against scratch, pairwise, round trip); then `N records, all passed`,
    or each failed check by name and `N records, K failed`. `wall`: (worker processes, wall
    seconds) of a run in workers; `failed_jobs`: its jobs that ended without a result; `frameworks`:
    the columns (default: all four)."""
    from tasks.registry import FRAMEWORKS

    columns = [fw for fw in FRAMEWORKS if frameworks is None or fw in frameworks]

    worst: dict[tuple, float] = {}  # (model, framework, dtype) -> largest rel_error
    failing: set[tuple] = set()  # (model, framework)
    for r in records:
        for fw in {r["framework"], r["reference"]} & set(FRAMEWORKS):
            key = (r["model"], fw, r["dtype"])
            worst[key] = max(worst.get(key, 0.0), r["rel_error"])
            if not r["passed"]:
                failing.add((r["model"], fw))
    table = Table(
        title="rosetta all: test accuracy (language models: held-out loss); "
        "worst parity error float64 / float32"
    )
    table.add_column("model")
    for fw in columns:
        table.add_column(fw, justify="right")
    if seconds:
        table.add_column("s train / parity", justify="right")
    for result in trained:
        model, rows = result["model"], {r["framework"]: r for r in result["results"]}
        cells = []
        for fw in columns:
            row = rows.get(fw)
            if row is None:
                quality = "—"
            elif result.get("metric") == "r2":  # a regression: R² on the test split
                quality = f"R² {fmt(row.get('test_r2'), '.4f')}"
            elif "baselines" in result:  # a language model: its held-out loss (vs the unigram's)
                quality = f"loss {fmt(row.get('test_loss'), '.3f')}"
            else:
                quality = f"acc {fmt(row.get('test_accuracy'), '.4f')}"
            errors = " / ".join(
                fmt(worst.get((model, fw, dtype)), ".0e") for dtype in parity_mod.DTYPES
            )
            cells.append(f"{quality}\n{errors}" + (" FAIL" if (model, fw) in failing else ""))
        timing = (
            [f"{seconds[model][0]:.0f} / {seconds[model][1]:.0f}"]
            if model in (seconds or {})
            else []
        )
        table.add_row(model, *cells, *timing)
    out.print(table)
    if seconds:
        train_s, parity_s = (sum(t[i] for t in seconds.values()) for i in (0, 1))
        line = f"time: training {train_s:.0f} s, parity {parity_s:.0f} s"
        if wall:  # the jobs' seconds add up over the processes
            line += f" in {wall[0]} processes, {wall[1]:.0f} s wall"
        out.print(line, highlight=False)
    failed = [r for r in records if not r["passed"]]
    groups: dict[tuple, list[dict]] = {}
    for r in failed:
        key = (r["model"], r["case"], r["framework"], r["reference"], r["dtype"])
        groups.setdefault(key, []).append(r)
    for (model, case, fw, ref, dtype), group in groups.items():
        w = max(group, key=lambda r: r["rel_error"])
        out.print(
            f"FAILED {model}[{case}] {fw} vs {ref} {dtype}: {len(group)} tensor(s), worst "
            f"{w['tensor']} {w['rel_error']:.1e} > {w['tolerance']:.0e}",
            highlight=False,
            markup=False,  # mlp[relu] is a case name, not a rich style
        )
    for job in failed_jobs or []:  # its traceback or exit status is on stderr
        out.print(f"FAILED {job}: did not finish (see stderr)", highlight=False, markup=False)
    verdict = f"{len(failed)} failed" if failed else "all passed"
    if failed_jobs:
        verdict += f"; {len(failed_jobs)} job(s) did not finish: {', '.join(failed_jobs)}"
    out.print(f"{len(records)} records, {verdict}", highlight=False)


@app.command(name="list")
@interruptible
def list_models():
    """List the models, their tasks and the frameworks."""
    for name, entry in MODELS.items():
        out.print(
            f"{name:<12} tasks: {', '.join(entry.tasks):<28} {entry.summary}", highlight=False
        )


# ----------------------------------------------------------------------------- saliency
def saliency_maps(
    model: str,
    task: str,
    frameworks: list[str],
    n_images: int,
    weights_path: str | None,
    epochs: int | None,
    seed: int,
    dtype: str,
    data_dir: str | None,
):
    """Test images, their labels, and each framework's d loss / d input for them, from one set of weights.

    The weights come from `weights_path` (canonical safetensors) or from training scratch with the
    task's defaults; every framework then loads the same weights, so the maps should be identical.
    """
    import numpy as np

    from tasks import weights
    from tasks.data import load_task
    from tasks.registry import load_impl
    from tasks.train import TrainOptions, make_config, prepare

    opts = TrainOptions(epochs=epochs, seed=seed, dtype=dtype, data_dir=data_dir).with_defaults(
        model, task
    )
    data = prepare(model, load_task(task, seed=seed, data_dir=data_dir), opts)
    if data.x_test.ndim != 4:
        fail(
            f"saliency needs image inputs (B, C, H, W); model {model} on {task} takes {data.x_test.shape[1:]}"
        )
    cfg = make_config(model, data, opts)
    if weights_path:
        params, note = weights.load_as(
            weights_path, dtype
        )  # each load_canonical checks names, shapes
        if note:
            print(f"note: {note}", file=sys.stderr)
    else:
        # train in float32 (fast; the weights need to be good, not exact), then compare in `dtype`
        impl = load_impl("scratch", model)
        net = impl.create_model(cfg, seed=seed, dtype="float32")
        impl.load_canonical(
            net, weights.cast(weights.init_uniform(cfg.param_shapes(), seed), "float32")
        )
        impl.train(net, data, epochs=opts.epochs, lr=opts.lr, batch_size=opts.batch_size, seed=seed)
        params = weights.cast(impl.export_canonical(net), dtype)
    pick = [int(np.flatnonzero(data.y_test == c)[0]) for c in np.unique(data.y_test)][
        :n_images
    ]  # one image per class
    x, y = data.x_test[pick].astype(dtype), data.y_test[pick]
    maps = {}
    for fw in frameworks:
        impl = load_impl(fw, model)
        net = impl.create_model(cfg, seed=seed, dtype=dtype)
        impl.load_canonical(net, params)
        # the gradient of the *mean* loss is 1/B of each image's own: scale back to per image
        maps[fw] = impl.forward_backward(net, x, y)["grad.input"][:, 0] * len(
            x
        )  # (B, 1, H, W) -> (B, H, W)
    return x[:, 0], y, maps


@app.command()
@interruptible
def saliency(
    model: str = typer.Argument(..., help="an image model, e.g. lenet5"),
    framework: str = typer.Option("all", help="scratch, torch, tf, jax, or all"),
    task: str | None = typer.Option(None, help="task name (default: the model's first task)"),
    images: int = typer.Option(4, help="how many test images (rows)"),
    weights_path: str | None = typer.Option(
        None,
        "--weights",
        help="canonical safetensors weights (default: train scratch with the task's defaults)",
    ),
    epochs: int | None = typer.Option(
        None, help="epochs of that scratch training (default: per task)"
    ),
    out_path: str = typer.Option("saliency.png", "--out", help="the PNG to write"),
    seed: int = typer.Option(0, help="seed for the split, the initial weights and the batch order"),
    dtype: str = typer.Option("float64", help="float64 or float32"),
    data_dir: str | None = typer.Option(None, help="folder with MNIST IDX files (task mnist)"),
):
    """Write one PNG with the input-gradient (saliency) maps of each framework side by side."""
    check_model(model)
    frameworks = check_frameworks(framework)
    check_seed(seed)
    entry = MODELS[model]
    task = task or entry.default_task
    if task not in entry.tasks:
        fail(f"unknown task {task!r} for model {model}; choose from: {', '.join(entry.tasks)}")
    check_flags(model, task, {"--data-dir": data_dir is not None})
    if images < 1 or (epochs is not None and epochs < 1):
        fail("--images and --epochs must be positive integers")
    if dtype not in ("float32", "float64"):
        fail(f"unknown dtype {dtype!r}; choose from: float32, float64")
    from tasks.weights import CanonicalWeightsError, WeightsFileError

    out_path = check_output_path("--out", out_path, image=True)  # before any training
    try:
        x, y, maps = saliency_maps(
            model, task, frameworks, images, weights_path, epochs, seed, dtype, data_dir
        )
    except WeightsFileError as e:  # names the file
        fail(f"--weights {e}")
    except CanonicalWeightsError as e:  # names the tensors
        fail(f"--weights {weights_path}: {e}" if weights_path else str(e))
    except DataFileError as e:
        fail(data_error(e, data_dir))
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(
        len(x), 1 + len(maps), figsize=(2 * (1 + len(maps)), 2 * len(x)), squeeze=False
    )
    for row in range(len(x)):
        scale = (
            max(float(np.abs(m[row]).max()) for m in maps.values()) or 1.0
        )  # one colour scale per row
        axes[row, 0].imshow(x[row], cmap="gray")
        axes[row, 0].set_title(f"label {y[row]}" if row else f"input\nlabel {y[row]}", fontsize=9)
        for col, (fw, m) in enumerate(maps.items(), start=1):
            axes[row, col].imshow(m[row], cmap="RdBu_r", vmin=-scale, vmax=scale)
            if row == 0:
                axes[row, col].set_title(fw, fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([])
    reference = maps.get("scratch")
    diffs = {
        fw: float(np.max(np.abs(m - reference)) / np.max(np.abs(reference)))
        for fw, m in maps.items()
        if reference is not None and fw != "scratch"
    }
    fig.suptitle(
        f"{model}: d loss / d input ({dtype})"
        + (f"\nmax rel. diff vs scratch {max(diffs.values()):.1e}" if diffs else ""),
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    print(
        f"wrote {out_path}: {len(x)} test images x {len(maps)} frameworks"
        + "".join(f"; {fw} vs scratch {d:.1e}" for fw, d in diffs.items())
    )


# ----------------------------------------------------------------------------- sample
@app.command()
@interruptible
def sample(
    model: str = typer.Argument(..., help="a character model: rnn, lstm or gru"),
    framework: str = typer.Option("torch", help="scratch, torch, tf or jax (one)"),
    prompt: str = typer.Option("Beautiful", help="the text to continue"),
    temperature: float = typer.Option(0.8, help="softmax temperature: < 1 is safer, > 1 wilder"),
    length: int = typer.Option(200, help="characters to generate"),
    seed: int = typer.Option(
        0, help="seed for the split, the initial weights, the batch order and the sampling"
    ),
    epochs: int | None = typer.Option(
        None, help="training epochs when no saved run exists (default: per model)"
    ),
    hidden: int | None = typer.Option(None, help="hidden size H (default: per model)"),
    weights_path: str | None = typer.Option(
        None,
        "--weights",
        help="canonical safetensors file to load or to write (default: under runs/)",
    ),
    retrain: bool = typer.Option(False, "--retrain", help="train even if the run file exists"),
):
    """Print seeded text from a character-level model trained on the Zen of Python and stdlib docstrings.

    Trains on the pytext task the first time and saves the canonical weights under runs/; later calls
    with the same settings load them (any framework can load any framework's run).
    """
    from tasks import sample as sampling
    from tasks.train import TrainOptions
    from tasks.weights import CanonicalWeightsError

    characters = [name for name, spec in MODELS.items() if sampling.TASK in spec.tasks]
    if check_model(model) not in characters:
        fail(f"sample needs a character model; choose from: {', '.join(characters)}")
    frameworks = check_frameworks(framework)
    if len(frameworks) != 1:
        fail("--framework: choose one of scratch, torch, tf, jax")
    if not (temperature > 0 and math.isfinite(temperature)):
        fail(f"--temperature must be a positive number, got {temperature}")
    if length < 1 or (epochs is not None and epochs < 1) or (hidden is not None and hidden < 1):
        fail("--length, --epochs and --hidden must be positive integers")
    if not prompt:
        fail("--prompt must not be empty")
    check_seed(seed)
    opts = TrainOptions(epochs=epochs, hidden=(hidden,) if hidden else None, seed=seed)
    path = Path(
        weights_path
        or sampling.default_path(model, frameworks[0], opts.with_defaults(model, sampling.TASK))
    )
    if path.is_dir():
        fail(f"--weights {path}: is a directory, not a safetensors file")
    if (
        retrain or not path.exists()
    ):  # it will be written after training: check that it can be, first
        check_output_path("--weights", str(path), make_parents=True)
    with progress_bar(sys.stderr.isatty()) as bar:
        try:
            result = sampling.sample(
                model,
                frameworks[0],
                prompt,
                temperature=temperature,
                length=length,
                opts=opts,
                path=path,
                retrain=retrain,
                progress=EpochProgress(bar),
            )
        except (
            CanonicalWeightsError
        ) as e:  # a corrupt or foreign weights file: names it, says --retrain
            fail(("--weights " if weights_path else "") + str(e).splitlines()[0])
        except ValueError as e:  # a prompt character outside the vocabulary
            fail(str(e).splitlines()[0])
    if result["note"]:
        print(f"note: {result['note']}", file=sys.stderr)
    how = "trained and saved to" if result["trained"] else "loaded from"
    print(
        f"{model} ({frameworks[0]}) {how} {result['weights']}; validation loss {result['test_loss']:.4f}, unigram baseline {result['baselines']['unigram_test_loss']:.4f}",
        file=sys.stderr,
    )
    print(result["text"])


# ----------------------------------------------------------------------------- attention map
@app.command(name="attention-map")
@interruptible
def attention_map(
    model: str = typer.Option("attention", help="attention or transformer"),
    framework: str = typer.Option("all", help="scratch, torch, tf, jax, or all (side by side)"),
    out_path: str = typer.Option("attention-map.png", "--out", help="the PNG file to write"),
    epochs: int = typer.Option(
        4, help="scratch training epochs on the reverse task first (0: the seeded initial weights)"
    ),
    example: int = typer.Option(0, help="which held-out sequence to show"),
    layer: int = typer.Option(-1, help="which block's attention (transformer; -1 = the last)"),
    head: int = typer.Option(0, help="which head"),
    seed: int = typer.Option(0, help="seed for the split, the initial weights and the batch order"),
):
    """Write a PNG of one example's attention weights from each framework, side by side.

    The weights are trained once (in scratch, on the reverse task) and loaded into every framework,
    so the panels must be identical: the title of each gives its largest difference from scratch."""
    import numpy as np

    from tasks import weights
    from tasks.data import load_task
    from tasks.registry import load_impl
    from tasks.train import TrainOptions, initial_weights, make_config

    drawn = [name for name, spec in MODELS.items() if spec.attention_maps]
    if model not in drawn:
        fail(
            f"attention-map draws an attention model; choose from: {', '.join(drawn)} (got {model!r})"
        )
    frameworks = check_frameworks(framework)
    check_seed(seed)
    if epochs < 0:
        fail(f"--epochs must be 0 or a positive integer, got {epochs}")
    out_path = check_output_path("--out", out_path, image=True)  # before any training
    task = MODELS[model].default_task  # the sequence task its maps are drawn on (reverse)
    opts = TrainOptions(seed=seed).with_defaults(model, task)
    data = load_task(task, seed=seed)
    cfg = make_config(model, data, opts)
    n_maps = getattr(cfg, "n_layers", 1)
    if not 0 <= example < len(data.x_test):
        fail(f"--example must be in 0..{len(data.x_test) - 1}, got {example}")
    if not -n_maps <= layer < n_maps:
        fail(f"--layer must be in {-n_maps}..{n_maps - 1} for {model}, got {layer}")
    if not 0 <= head < cfg.n_heads:
        fail(f"--head must be in 0..{cfg.n_heads - 1}, got {head}")
    params = initial_weights(cfg, seed)
    if epochs:
        scratch = load_impl("scratch", model)
        net = scratch.create_model(cfg, seed=seed)
        scratch.load_canonical(net, params)
        scratch.train(net, data, epochs=epochs, lr=opts.lr, batch_size=opts.batch_size, seed=seed)
        params = scratch.export_canonical(net)
    x, y = data.x_test[example : example + 1], data.y_test[example : example + 1]
    maps = {}
    for fw in frameworks:
        impl = load_impl(fw, model)
        net = impl.create_model(cfg, seed=seed, dtype="float64")
        impl.load_canonical(net, weights.cast(params, "float64"))
        maps[fw] = impl.forward_backward(net, x, y)[f"attn_weights.{layer % n_maps}"][
            0, head
        ]  # (T, T)

    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    labels = [
        "·" if t == 0 else str(t - 1) for t in x[0]
    ]  # token t is digit t - 1; PAD shown as a dot
    fig, axes = plt.subplots(1, len(maps), figsize=(3.2 * len(maps), 3.6), squeeze=False)
    reference = maps.get("scratch", next(iter(maps.values())))
    for ax, (fw, w) in zip(axes[0], maps.items()):
        ax.imshow(w, vmin=0, vmax=1, cmap="viridis")
        ax.set_title(
            f"{fw}\nmax |Δ| vs {'scratch' if 'scratch' in maps else frameworks[0]}: {np.abs(w - reference).max():.0e}",
            fontsize=9,
        )
        ax.set_xticks(range(len(labels)), labels)
        ax.set_yticks(range(len(labels)), labels)
        ax.set_xlabel("key")
    axes[0][0].set_ylabel("query")
    fig.suptitle(
        f"{model} on {task}, held-out example {example}, layer {layer % n_maps}, head {head}",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.92))  # leave room for the suptitle
    fig.savefig(out_path, dpi=120)
    plt.close(fig)
    worst = max(float(np.abs(w - reference).max()) for w in maps.values())
    print(
        f"wrote {out_path}: {len(maps)} panel(s), largest difference between frameworks {worst:.1e}"
    )


@app.command()
def compare(
    model: str | None = typer.Argument(None, help=f"model: {', '.join(MODELS)}"),
    frameworks: list[str] | None = typer.Argument(
        None, help="two frameworks (e.g. torch jax): print them side by side in the terminal"
    ),
    html_path: str | None = typer.Option(None, "--html", help="write the four-column page here"),
    every: bool = typer.Option(False, "--all", help="a page per model and an index, into --out"),
    out_dir: str = typer.Option("compare", "--out", help="the folder --all writes"),
    parity_file: str | None = typer.Option(
        None,
        "--parity",
        help="parity records from `rosetta parity --json`; without it --html computes the model's "
        "records now (seconds to minutes) and --all shows none",
    ),
):
    """The four implementations of a model side by side, section by section."""
    from tasks import compare as compare_mod

    records = None
    if parity_file is not None:
        try:
            records = compare_mod.load_records(Path(parity_file))
        except (OSError, ValueError) as e:
            fail(f"--parity {parity_file}: {getattr(e, 'strerror', None) or e}")
    if every:
        if model is not None:
            fail("give either a MODEL or --all, not both")
        start = time.perf_counter()
        written = compare_mod.write_all(Path(out_dir), records=records)
        print(f"wrote {len(written)} pages to {out_dir} in {time.perf_counter() - start:.1f} s")
        return
    if model is None:
        fail("give a MODEL (or --all)")
    model = check_model(model)
    if frameworks:
        if len(frameworks) != 2:
            fail(f"give two frameworks to compare in the terminal, got {len(frameworks)}")
        a, b = (check_frameworks(f)[0] for f in frameworks)
        compare_mod.print_two(model, a, b, out)
    if html_path is not None:
        target = check_output_path("--html", html_path)
        page = compare_mod.build(
            model, records=records if records is not None else compare_mod.parity_records(model)
        )
        Path(target).write_text(compare_mod.render(page))
        print(f"wrote {target}")
    elif not frameworks:
        fail("give two frameworks for the terminal view, or --html OUT.html")


def main() -> None:
    one_thread_for_torch()  # every command: train, sample, saliency, convert as much as all
    try:
        app()
    except SystemExit as done:
        if done.code == 130:  # Ctrl-C, reported and the finished rows printed
            # CPython ends a process whose interrupt it saw land in code run through PyRun_String
            # (C extensions do) by re-sending SIGINT to itself, status -2 instead of 130, even after
            # the KeyboardInterrupt was handled (seen once in the full suite); exit 130 directly
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(130)
        raise


if __name__ == "__main__":
    main()
