"""Data-parallel training (issue 12): the runs, data and global batches the four chapters share,
and the driver that runs each chapter and caches its results.

The chapters `*/data_parallel.py` train the MLP and LeNet-5 on N replicas, each on its framework's
own engine. They all start from the same canonical weights and see the same global batches, split
the same way: replica r of N takes every N-th example of a global batch, starting at r
(`batch[r::N]`, the split torch's DistributedSampler makes). Keras and JAX cut a global batch into
contiguous chunks instead, so they are handed each batch in `by_replica` order, whose chunks are
those slices.

The suite's choice for batches that do not divide by N (docs/PORTING.md, "Data parallel"): a global
batch size that N does not divide is refused (`check_divisible`), and the last, smaller global batch
of an epoch is dropped (`global_batches`), by the 1-replica run too, so every replica of every step
has G / N examples.

The driver (`compute`) runs a chapter once per session for every run it has: scratch here, torch in
N processes it starts itself, Keras and JAX each in one fresh subprocess (their device count must
be set before they start). Every process is local, its sockets on 127.0.0.1, and bounded in time.
"""

from __future__ import annotations

import atexit
import functools
import os
import pickle
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from tasks import weights
from tasks.configs import LeNet5Config, MLPConfig, OptimizerConfig
from tasks.data import epoch_order

GLOBAL_BATCH = 16
N_TRAIN = 90  # 5 full global batches of 16 per epoch; the last 10 examples are dropped (see above)
EPOCHS = 4  # 4 epochs x 5 steps = the 20 steps of the issue
STEPS = EPOCHS * (N_TRAIN // GLOBAL_BATCH)
REPLICAS = (1, 2, 4)
MAX_REPLICAS = max(REPLICAS)  # the devices a Keras or JAX subprocess creates, the torch processes
SEED = 1234
TIMEOUT_S = 900  # any one chapter's whole run (a busy 2-core machine is slow); killed after it

# The models, small enough that 20 steps x every run stay quick. tanh: no gradient is exactly zero,
# so Adam with eps = 0 (the setting where Keras's Adam is torch's, docs/PORTING.md) never divides 0 by 0.
_MLP = MLPConfig(5, (7, 6), 3, "tanh", "softmax")
_LENET = LeNet5Config(
    image_size=20, channels=(3, 4), hidden=(10, 8), n_classes=5, activation="tanh"
)
CONFIGS = {
    "mlp": _MLP,
    "mlp-bn": replace(_MLP, batch_norm=True),
    "lenet5": _LENET,
    "lenet5-bn": replace(_LENET, batch_norm=True),
    "mlp-dropout": replace(_MLP, dropout=0.3),
}
OPTIMIZERS = {
    "sgd": OptimizerConfig("sgd", lr=0.1),
    "adam": OptimizerConfig("adam", lr=0.01, eps=0.0),
}

# What a run may do besides the engine's standard data-parallel path ("default"), per framework:
# the explicit form of the same step, and each trap (the wrong way, whose test shows it differs).
VARIANTS = {
    "scratch": ("default", "grad-sum", "bn-per-replica", "dropout-shared-seed"),
    "torch_impl": ("default", "grad-sum", "bn-per-replica", "no-set-epoch", "dropout-shared-seed"),
    "tf_impl": ("default", "custom-step", "loss-per-replica", "bn-per-replica"),
    "jax_impl": (
        "default",
        "shard-map",
        "grad-sum",
        "loss-per-replica",
        "bn-per-replica",
        "dropout-shared-seed",
    ),
}


@dataclass(frozen=True)
class Run:
    """One training run: a model config, an optimiser, a replica count and a variant."""

    config: str  # a key of CONFIGS
    optimizer: str  # a key of OPTIMIZERS
    replicas: int
    variant: str = "default"

    @property
    def key(self) -> str:
        return f"{self.config}/{self.optimizer}/n{self.replicas}/{self.variant}"

    @property
    def model(self) -> str:
        return self.config.split("-")[0]  # "mlp" or "lenet5"

    @staticmethod
    def parse(key: str) -> Run:
        config, optimizer, n, variant = key.split("/")
        return Run(config, optimizer, int(n.removeprefix("n")), variant)


@dataclass(frozen=True)
class Job:
    """Everything a chapter needs to train one run, picklable for a worker or a subprocess."""

    model: str  # "mlp" or "lenet5": the module each framework's chapter imports the model from
    config: Any  # MLPConfig or LeNet5Config
    params: dict  # canonical start weights
    x: np.ndarray
    y: np.ndarray
    optimizer: Any  # OptimizerConfig, or a float learning rate (plain SGD)
    replicas: int
    epochs: int = EPOCHS
    global_batch: int = GLOBAL_BATCH
    seed: int = SEED
    variant: str = "default"
    dtype: str = "float64"


def job(run: Run) -> Job:
    x, y = dataset(run.config)
    return Job(
        run.model, CONFIGS[run.config], initial_weights(run.config), x, y,
        OPTIMIZERS[run.optimizer], run.replicas, variant=run.variant,
    )  # fmt: skip


# LeNet-5 with batch norm normalises conv maps (bn1, bn2) and dense units (bn3, bn4): the MLP's
# batch norm ("mlp-bn") adds nothing the grid needs, and each run costs a compilation in Keras and JAX
PARITY_CONFIGS = ("mlp", "lenet5", "lenet5-bn")
# the parity grid: every model, SGD and Adam, every replica count, through the engine's own path
PARITY_RUNS = [
    Run(c, o, n) for c in PARITY_CONFIGS for o in OPTIMIZERS for n in REPLICAS
]  # fmt: skip


def runs_for(framework: str) -> list[Run]:
    """Every run a framework's chapter computes in one session: the grid, the explicit form, the traps
    (each at the replica count that shows it; a trap's N-fold gradient shows under SGD, not Adam)."""
    variants = VARIANTS[framework]
    runs = list(PARITY_RUNS)
    for explicit in ("shard-map", "custom-step"):
        if explicit in variants:
            runs += [Run("mlp", "sgd", 2, explicit), Run("lenet5-bn", "sgd", 4, explicit)]
    for trap in ("grad-sum", "loss-per-replica", "no-set-epoch"):
        if trap in variants:
            runs.append(Run("mlp", "sgd", 2, trap))
    if "bn-per-replica" in variants:
        runs.append(Run("lenet5-bn", "sgd", 2, "bn-per-replica"))
    if "dropout-shared-seed" in variants:  # the framework's own dropout draws: compared within it
        runs += [Run("mlp-dropout", "sgd", n) for n in (1, 2)]
        runs.append(Run("mlp-dropout", "sgd", 2, "dropout-shared-seed"))
    return runs


HISTORY = "history"  # the result entry holding the mean training loss of each epoch


# ----------------------------------------------------------------------------- data and weights
@functools.cache
def dataset(config: str) -> tuple[np.ndarray, np.ndarray]:
    """N_TRAIN float64 examples and labels for a config, drawn by its model's spec (`inputs`):
    the MLP's normal features, LeNet-5's [0, 1) pixels."""
    from tasks.registry import MODELS

    return MODELS[Run(config, "sgd", 1).model].inputs(
        np.random.default_rng(SEED + 1), CONFIGS[config], N_TRAIN
    )


@functools.cache
def initial_weights(config: str) -> dict[str, np.ndarray]:
    """Canonical float64 start: uniform weights and non-zero biases; batch norms' gamma and running
    variance drawn from [0.5, 2) so a converter that drops one of them fails."""
    params = weights.init_uniform(CONFIGS[config].param_shapes(), SEED)
    rng = np.random.default_rng(SEED + 7)
    for name in params:
        if name.startswith("bn") and name.endswith((".weight", ".running_var")):
            params[name] = rng.uniform(0.5, 2.0, params[name].shape)
    return params


# ----------------------------------------------------------------------------- global batches
def check_divisible(global_batch: int, replicas: int) -> None:
    """The suite's rule: every replica gets global_batch / replicas examples of every step."""
    if replicas < 1 or global_batch % replicas:
        raise ValueError(
            f"the global batch ({global_batch}) must divide by the number of replicas ({replicas}): "
            "each replica takes global_batch / replicas examples of every step"
        )


def global_batches(n: int, global_batch: int, seed: int, epoch: int) -> list[np.ndarray]:
    """Index arrays of one epoch's full global batches in the shared order; a smaller last one is dropped."""
    order = epoch_order(n, seed, epoch)
    return [order[i : i + global_batch] for i in range(0, n - global_batch + 1, global_batch)]


def by_replica(batch: np.ndarray, replicas: int) -> np.ndarray:
    """A global batch reordered so its N contiguous chunks are the slices batch[r::N]: Keras's
    distributed dataset and a NamedSharding cut contiguous chunks, torch's sampler takes slices."""
    return np.concatenate([batch[r::replicas] for r in range(replicas)])


# ----------------------------------------------------------------------------- comparisons
def trainable(params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The parameters without batch norm's running statistics (which the frameworks keep differently)."""
    return {k: v for k, v in params.items() if not k.endswith(("running_mean", "running_var"))}


def running_var_as_torch(config: str, params: dict[str, np.ndarray], steps: int) -> dict:
    """Keras's and Flax's running variances (biased, from a synchronised global batch) in torch's
    unbiased convention: torch - (1-m)^K v0 = n/(n-1) (biased - (1-m)^K v0), n = G x a conv's H x W."""
    cfg, start, out = CONFIGS[config], initial_weights(config), dict(params)
    positions = cfg.bn_positions() if hasattr(cfg, "bn_positions") else {}
    for name, biased in params.items():
        if name.endswith("running_var"):
            n = GLOBAL_BATCH * positions.get(name.split(".")[0], 1)
            decayed = 0.9**steps * start[name]  # momentum 0.1, torch's convention
            out[name] = decayed + (biased - decayed) * n / (n - 1)
    return out


def max_rel_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> tuple[float, str]:
    """(the largest relative difference, its tensor) over b's tensors, max|a - b| / max|b| per
    tensor; the loss history is not a parameter and is left out."""
    worst = (0.0, "")
    for name, ref in b.items():
        if name == HISTORY:
            continue
        scale = max(float(np.max(np.abs(ref))), 1e-300)
        worst = max(worst, (float(np.max(np.abs(np.asarray(a[name]) - ref))) / scale, name))
    return worst


# ----------------------------------------------------------------------------- the driver


class Subprocess:
    """`python -m module JOBS OUT` started now in a fresh interpreter; `results()` waits for it (at
    most `timeout` s from the start) and returns what it saved to OUT. It is killed on a timeout, an
    error or an interrupt, and when this process exits (atexit); it ends itself if this one dies."""

    def __init__(self, module: str, jobs: dict[str, Job], env: dict[str, str], timeout: float):
        self.module, self.deadline = module, time.monotonic() + timeout
        self.tmp = tempfile.TemporaryDirectory(prefix="rosetta-dp-")
        jobs_path, self.out = Path(self.tmp.name) / "jobs.pkl", Path(self.tmp.name) / "results.npz"
        jobs_path.write_bytes(pickle.dumps(jobs))
        self.log = open(Path(self.tmp.name) / "stderr.txt", "w+")  # noqa: SIM115 - closed in results()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, str(jobs_path), str(self.out), str(os.getpid())],
            env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=self.log,
            cwd=Path(__file__).resolve().parent.parent,
        )  # fmt: skip
        atexit.register(self.kill)
        self.outcome = None  # the results, or the error every call of results() raises
        self.started, self.seconds = time.perf_counter(), None  # from the start to the exit

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def results(self) -> dict[str, dict]:
        if self.outcome is None:
            try:
                self.outcome = self.wait()
            except (
                BaseException
            ) as e:  # the timeout, an interrupt, a failed run: every later call too
                self.kill()
                self.outcome = e
                raise
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome

    def wait(self) -> dict[str, dict]:
        code = self.proc.wait(timeout=max(self.deadline - time.monotonic(), 0))
        self.seconds = time.perf_counter() - self.started
        try:
            if code != 0:
                self.log.seek(0)
                raise RuntimeError(f"{self.module} exited with {code}:\n{self.log.read()[-4000:]}")
            return load_results(self.out)
        finally:
            self.log.close()
            self.tmp.cleanup()


def watch_parent(parent_pid: int) -> None:
    """End this process if the one that started it is gone (killed, interrupted): no orphans."""

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def subprocess_main(run_jobs) -> None:
    """The body of `python -m <framework>.data_parallel JOBS OUT PARENT_PID`: run the pickled jobs,
    save the results."""
    jobs_path, out, parent = sys.argv[1], sys.argv[2], int(sys.argv[3])
    watch_parent(parent)
    jobs = pickle.loads(Path(jobs_path).read_bytes())
    save_results(out, run_jobs(jobs))


def save_results(path, results: dict[str, dict]) -> None:
    """{job key: {tensor name: array}} as one .npz, names joined by '|'."""
    flat = {
        f"{key}|{name}": np.asarray(v)
        for key, tensors in results.items()
        for name, v in tensors.items()
    }
    np.savez(path, **flat)


def load_results(path) -> dict[str, dict]:
    out: dict[str, dict] = {}
    with np.load(path) as npz:
        for flat in npz.files:
            key, name = flat.split("|", 1)
            out.setdefault(key, {})[name] = npz[flat]
    return out


# The suite's runs are 20 small steps each, one compilation per run: XLA's LLVM optimisations cost
# more than they save there (measured: JAX's CPU time for three runs 12.5 s -> 8.5 s without them),
# and so do XLA:CPU's MLIR fusion emitters, against its older LLVM IR emitters (every run of the
# suite: 24 s -> 13 s; the same results bit for bit but for batch norm's reductions, 2e-13 apart)
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"


def start_jobs(
    framework: str, jobs: dict[str, Job], timeout: float = TIMEOUT_S, fast: bool = False
):
    """Start `jobs` in a framework's chapter; `.results()` of the returned handle waits for
    {key: canonical tensors and HISTORY}, plus the chapter's notes on batches that do not divide by N
    under the key "uneven". Keras and JAX run in a subprocess started now, so they overlap. `fast`:
    settings for the suite's small runs, not users' (JAX compiles with FAST_COMPILE, Keras runs
    tf_impl.data_parallel.fast_small_runs)."""
    devices = max(j.replicas for j in jobs.values())
    if framework == "tf_impl":  # the logical devices are made inside, before TensorFlow starts
        env = {"TF_CPP_MIN_LOG_LEVEL": "2", "ROSETTA_DP_DEVICES": str(devices)}
        if fast:  # tf_impl.data_parallel.fast_small_runs
            env["ROSETTA_DP_FAST"] = "1"
        return Subprocess("tf_impl.data_parallel", jobs, env, timeout)
    if framework == "jax_impl":  # XLA reads the host device count when the CPU backend starts
        flags = f"--xla_force_host_platform_device_count={devices}" + (
            f" {FAST_COMPILE}" if fast else ""
        )
        env = {"XLA_FLAGS": flags}
        return Subprocess("jax_impl.data_parallel", jobs, env, timeout)
    return InProcess(framework, jobs, devices, timeout)


@dataclass
class InProcess:
    """scratch (here) and torch (N worker processes started by launch), run when results() is asked."""

    framework: str
    jobs: dict[str, Job]
    devices: int
    timeout: float

    seconds: float | None = None

    def results(self) -> dict[str, dict]:
        started = time.perf_counter()
        if self.framework == "scratch":
            from scratch import data_parallel

            out = data_parallel.run_jobs(self.jobs)
        else:
            from torch_impl import data_parallel

            out = data_parallel.launch(self.jobs, self.devices, timeout=self.timeout)
        self.seconds = time.perf_counter() - started
        return out


def free_port() -> int:
    """A free TCP port on the loopback address, for a rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_jax_processes(jobs: dict[str, Job], processes: int, timeout: float = TIMEOUT_S) -> list:
    """The JAX chapter in `processes` processes of one CPU device each, joined by
    jax.distributed.initialize at a coordinator on 127.0.0.1; every job's mesh spans them."""
    port, flag = free_port(), f"--xla_force_host_platform_device_count=1 {FAST_COMPILE}"
    return [
        Subprocess(
            "jax_impl.data_parallel",
            jobs,
            {"XLA_FLAGS": flag, "ROSETTA_JAX_PROCESS": f"{i},{processes},{port}"},
            timeout,
        )  # fmt: skip
        for i in range(processes)
    ]


_started: dict[str, Any] = {}


def start(framework: str) -> None:
    """Start a framework's runs (runs_for) now, once per process, if they run in a subprocess."""
    if framework not in _started:
        jobs = {r.key: job(r) for r in runs_for(framework)}
        _started[framework] = start_jobs(framework, jobs, fast=True)


_computed: dict[str, Any] = {}


def compute(framework: str) -> dict[str, dict]:
    """Every run of `framework` (runs_for), once per process; a failure is raised again, not rerun."""
    if framework not in _computed:
        start(framework)
        try:
            _computed[framework] = _started[framework].results()
        except Exception as e:
            _computed[framework] = e
    if isinstance(_computed[framework], Exception):
        raise _computed[framework]
    return _computed[framework]


# ----------------------------------------------------------------------------- parity records
def records(frameworks=("scratch", "torch_impl", "tf_impl", "jax_impl")) -> list[dict]:
    """`rosetta parity data_parallel`: one record per tensor of every grid run (and explicit form)
    with N > 1 against the same framework's 1-replica run, and of every run against scratch's."""
    for framework in frameworks:
        start(framework)  # Keras and JAX overlap with the rest
    out = []
    for framework in frameworks:
        results = compute(framework)
        for run in runs_for(framework):
            if (
                run.variant not in ("default", "shard-map", "custom-step")
                or run.config == "mlp-dropout"
            ):
                continue
            actual = results[run.key]
            checks = []
            if run.replicas > 1:
                checks.append(
                    ("one replica", results[Run(run.config, run.optimizer, 1).key], actual)
                )
            if framework != "scratch" and "scratch" in frameworks and run.variant == "default":
                converted = actual
                if framework in ("tf_impl", "jax_impl"):  # their running variance is the biased one
                    converted = running_var_as_torch(run.config, actual, STEPS)
                checks.append(("scratch", compute("scratch")[run.key], converted))
            for ref_name, reference, values in checks:
                for tensor, ref in reference.items():
                    if tensor == HISTORY:
                        continue
                    abs_err = float(np.max(np.abs(np.asarray(values[tensor]) - ref)))
                    rel = abs_err / max(float(np.max(np.abs(ref))), 1e-300)
                    out.append({
                        "model": run.model, "case": f"data-parallel-{run.config}-{run.optimizer}-n{run.replicas}"
                        + ("" if run.variant == "default" else f"-{run.variant}"),
                        "framework": framework, "reference": ref_name, "dtype": "float64",
                        "tensor": f"dp.{tensor}", "max_abs_error": abs_err, "rel_error": rel,
                        "tolerance": PARITY_TOLERANCE, "passed": bool(rel <= PARITY_TOLERANCE),
                    })  # fmt: skip
    return out


PARITY_TOLERANCE = 1e-12


# ----------------------------------------------------------------------------- rosetta train --replicas
def run_train(model: str, task: str, frameworks: list[str], opts, replicas: int) -> dict:
    """`rosetta train MODEL --replicas N`: each framework trains on N replicas and on 1, from the same
    canonical weights on the same global batches (opts.batch_size); the tasks.train result object,
    each row with `max_param_diff_vs_one_replica` (trainable parameters and statistics)."""
    from tasks.data import load_task
    from tasks.registry import load_impl
    from tasks.train import initial_weights as train_initial_weights
    from tasks.train import make_config, optimizer_config, prepare

    opts = opts.with_defaults(model, task)
    check_divisible(opts.batch_size, replicas)
    data = prepare(model, load_task(task, seed=opts.seed, data_dir=opts.data_dir), opts)
    cfg = make_config(model, data, opts)
    init = weights.cast(train_initial_weights(cfg, opts.seed), opts.dtype)
    lr = optimizer_config(opts, n_train=len(data.x_train))
    make = lambda n: Job(  # noqa: E731
        model, cfg, init, data.x_train, data.y_train, lr, n, epochs=opts.epochs,
        global_batch=opts.batch_size, seed=opts.seed, dtype=opts.dtype,
    )  # fmt: skip
    jobs = {f"n{replicas}": make(replicas), "n1": make(1)}
    started = {}
    for framework in frameworks:  # Keras and JAX start at once, in their own processes
        started[framework] = start_jobs(framework, jobs, timeout=3600)
    rows, finals = [], {}
    for framework in frameworks:
        results = started[framework].results()
        seconds = started[framework].seconds  # both runs (N and 1 replicas), start-up included
        final, one = results[f"n{replicas}"], results["n1"]
        impl = load_impl(framework, model)
        net = impl.create_model(cfg, seed=opts.seed, dtype=opts.dtype)
        params = {k: v for k, v in final.items() if k != HISTORY}
        impl.load_canonical(net, params)
        test_loss, test_score = impl.evaluate(net, data.x_test, data.y_test)  # R²: a regression
        finals[framework] = trainable(params)
        rows.append({
            "framework": framework, "replicas": replicas, "final_loss": float(final[HISTORY][-1]),
            "test_loss": test_loss, "test_accuracy": None if data.regression else test_score,
            **({"test_r2": test_score} if data.regression else {}), "seconds": seconds,
            "seconds_per_epoch": seconds / opts.epochs, "max_param_diff_vs_scratch": None,
            "max_param_diff_vs_one_replica": max(
                float(np.max(np.abs(final[k] - one[k]))) for k in params
            ),
            "history": [float(v) for v in final[HISTORY]], "epochs_run": opts.epochs,
        })  # fmt: skip
    if "scratch" in finals:
        for row in rows:
            other = finals[row["framework"]]
            row["max_param_diff_vs_scratch"] = max(
                float(np.max(np.abs(other[k] - finals["scratch"][k]))) for k in other
            )
    return {
        "model": model, "task": task, "replicas": replicas,
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(cfg).items()},
        "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(opts).items()},
        "n_train": int(len(data.x_train)), "n_test": int(len(data.x_test)),
        "metric": "r2" if data.regression else "accuracy", "results": rows, "interrupted": False,
    }  # fmt: skip
