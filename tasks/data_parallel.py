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

import functools
import os
import pickle
import subprocess
import sys
import tempfile
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
REPLICAS = (1, 2, 4)
MAX_REPLICAS = max(REPLICAS)  # the devices a Keras or JAX subprocess creates, the torch processes
SEED = 1234
TIMEOUT_S = 300  # any one chapter's whole run; the subprocess or the workers are killed after it

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
    "jax_impl": ("default", "shard-map", "grad-sum", "bn-per-replica", "dropout-shared-seed"),
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


# the parity grid: every model, SGD and Adam, every replica count, through the engine's own path
PARITY_RUNS = [
    Run(c, o, n) for c in ("mlp", "mlp-bn", "lenet5", "lenet5-bn") for o in OPTIMIZERS for n in REPLICAS
]  # fmt: skip


def runs_for(framework: str) -> list[Run]:
    """Every run a framework's chapter computes in one session: the grid, the explicit forms, the traps."""
    runs = list(PARITY_RUNS)
    variants = VARIANTS[framework]
    for n in (2, 4):
        if "shard-map" in variants or "custom-step" in variants:
            explicit = "shard-map" if "shard-map" in variants else "custom-step"
            runs += [Run(c, "sgd", n, explicit) for c in ("mlp", "lenet5-bn")]
        for trap in (
            "grad-sum",
            "loss-per-replica",
        ):  # N times the gradient: SGD shows it, Adam not
            if trap in variants:
                runs.append(Run("mlp", "sgd", n, trap))
        if "bn-per-replica" in variants:
            runs.append(Run("lenet5-bn", "sgd", n, "bn-per-replica"))
        if "no-set-epoch" in variants:
            runs.append(Run("mlp", "sgd", n, "no-set-epoch"))
    if "dropout-shared-seed" in variants:  # the framework's own dropout draws: compared within it
        runs += [Run("mlp-dropout", "sgd", n) for n in REPLICAS]
        runs += [Run("mlp-dropout", "sgd", n, "dropout-shared-seed") for n in (2, 4)]
    return runs


# ----------------------------------------------------------------------------- data and weights
@functools.cache
def dataset(config: str) -> tuple[np.ndarray, np.ndarray]:
    """N_TRAIN float64 examples and labels for a config: normal features, or [0, 1) pixels."""
    cfg = CONFIGS[config]
    rng = np.random.default_rng(SEED + 1)
    if isinstance(cfg, LeNet5Config):
        x = rng.uniform(0.0, 1.0, (N_TRAIN, cfg.in_channels, cfg.image_size, cfg.image_size))
    else:
        x = rng.normal(size=(N_TRAIN, cfg.in_features))
    return x, rng.integers(0, cfg.n_classes, N_TRAIN)


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
    """The largest relative difference over the tensors of b (max|a - b| / max|b| per tensor)."""
    worst = (0.0, "")
    for name, ref in b.items():
        err = float(np.max(np.abs(np.asarray(a[name]) - ref))) / max(
            float(np.max(np.abs(ref))), 1e-300
        )
        worst = max(worst, (err, name))
    return worst


# ----------------------------------------------------------------------------- the driver
HISTORY = "history"  # the result entry holding the mean training loss of each epoch


def run_subprocess(module: str, jobs: dict[str, Job], env: dict[str, str], timeout: float) -> dict:
    """`python -m module JOBS OUT` in a fresh interpreter; returns the results it saved to OUT.
    subprocess.run kills the child when the timeout passes or this process is interrupted."""
    with tempfile.TemporaryDirectory(prefix="rosetta-dp-") as tmp:
        jobs_path, out = Path(tmp) / "jobs.pkl", Path(tmp) / "results.npz"
        jobs_path.write_bytes(pickle.dumps(jobs))
        proc = subprocess.run(
            [sys.executable, "-m", module, str(jobs_path), str(out)],
            env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout,
            cwd=Path(__file__).resolve().parent.parent,
        )  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"{module} exited with {proc.returncode}:\n{proc.stderr[-4000:]}")
        return load_results(out)


def subprocess_main(run_jobs) -> None:
    """The body of `python -m <framework>.data_parallel JOBS OUT`: run the pickled jobs, save the results."""
    jobs_path, out = sys.argv[1], sys.argv[2]
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


def compute_jobs(
    framework: str, jobs: dict[str, Job], timeout: float = TIMEOUT_S
) -> dict[str, dict]:
    """Run `jobs` in a framework's chapter: {key: canonical tensors and HISTORY}, plus the chapter's
    notes on batches that do not divide by N under the key "uneven"."""
    if framework == "scratch":
        from scratch import data_parallel

        return data_parallel.run_jobs(jobs)
    if framework == "torch_impl":
        from torch_impl import data_parallel

        world = max(j.replicas for j in jobs.values())
        return data_parallel.launch(jobs, world, timeout=timeout)
    if framework == "tf_impl":  # the logical devices are made inside, before TensorFlow starts
        devices = max(j.replicas for j in jobs.values())
        env = {"TF_CPP_MIN_LOG_LEVEL": "2", "ROSETTA_DP_DEVICES": str(devices)}
        return run_subprocess("tf_impl.data_parallel", jobs, env, timeout)
    # XLA reads the host device count when JAX's CPU backend starts: a fresh process, flag set first
    devices = max(j.replicas for j in jobs.values())
    env = {"XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    return run_subprocess("jax_impl.data_parallel", jobs, env, timeout)


@functools.cache
def compute(framework: str) -> dict[str, dict]:
    """Every run of `framework` (runs_for), once per process."""
    return compute_jobs(framework, {run.key: job(run) for run in runs_for(framework)})
