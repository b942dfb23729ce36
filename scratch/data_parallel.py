"""Data-parallel training from scratch in NumPy: N replicas in one process, the all-reduce written out.

Each replica holds a full copy of the model and takes its slice of every global batch (`batch[r::N]`).
After the backward pass the gradients are all-reduced, each replaced by the mean over the replicas,
so every replica's optimiser takes the same step, the one a single model takes on the whole global
batch. A synchronised batch norm normalises by the global batch's mean and variance, built from the
replicas' per-feature sums, and its backward all-reduces two more sums. This is the arithmetic that
torch's DistributedDataParallel, Keras's MirroredStrategy and a JAX mesh hide.

The replicas run as threads only so that a synchronised batch norm can wait for the others' sums in
the middle of a forward pass, as real replicas wait in a collective; every all-reduce adds the
contributions in rank order, so the result does not depend on which thread ran first.
"""

from __future__ import annotations

import threading
from functools import partial, reduce

import numpy as np

from scratch.layers import BatchNorm, Dropout
from tasks import data_parallel as dp
from tasks.configs import LeNet5Config, OptimizerConfig
from tasks.registry import load_impl


# ----------------------------------------------------------------------------- replicas: the process group
class ProcessGroup:
    """N replicas; all_reduce(rank, value) returns the sum of every replica's value, in rank order."""

    def __init__(self, size: int, timeout: float = 60.0):
        self.size = size
        self.barrier = threading.Barrier(size, timeout=timeout)  # a lost replica fails, never hangs
        self.values: list = [None] * size

    def all_reduce(self, rank: int, value: np.ndarray) -> np.ndarray:
        self.values[rank] = value
        self.barrier.wait()  # every replica has put its value
        total = reduce(np.add, self.values)  # rank order: the same sum on every replica
        self.barrier.wait()  # every replica has read it before the next call overwrites
        return total

    def run(self, fn) -> list:
        """fn(rank) on every replica at once; their results in rank order. The first error of any
        replica is raised here."""
        errors: list[BaseException] = []
        results: list = [None] * self.size

        def replica(rank: int) -> None:
            try:
                results[rank] = fn(rank)
            except BaseException as e:  # noqa: BLE001 - handed to the caller below
                errors.append(e)
                self.barrier.abort()  # the others' waits fail instead of timing out

        threads = [threading.Thread(target=replica, args=(r,)) for r in range(self.size)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return results


# ----------------------------------------------------------------------------- each replica's data
def replica_batch(batch: np.ndarray, rank: int, replicas: int) -> np.ndarray:
    """Replica `rank`'s examples of a global batch: every N-th, starting at rank (DistributedSampler's split)."""
    return batch[rank::replicas]


# ----------------------------------------------------------------------------- synchronised batch norm
class SyncBatchNorm(BatchNorm):
    """Batch norm over the global batch: per-replica sums, all-reduced, give its mean and variance."""

    def __init__(self, norm: BatchNorm, group: ProcessGroup, rank: int):
        super().__init__(len(norm.params["weight"]), momentum=norm.momentum, eps=norm.eps)
        self.params, self.buffers, self.training = norm.params, norm.buffers, norm.training
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}
        self.group, self.rank = group, rank

    def forward(self, x):
        if not self.training:
            return super().forward(x)
        axes, reduce_ = self.axes(x), partial(self.group.all_reduce, self.rank)
        n = reduce_(np.asarray(x.size // x.shape[1]))  # values per feature in the global batch
        mean = (
            reduce_(x.sum(axis=axes)) / n
        )  # two passes, as a one-replica batch norm computes them
        var = reduce_(((x - self.per_feature(mean, x)) ** 2).sum(axis=axes)) / n  # biased
        m = self.momentum
        self.buffers["running_mean"] = (1 - m) * self.buffers["running_mean"] + m * mean
        self.buffers["running_var"] = (1 - m) * self.buffers["running_var"] + m * var * n / (n - 1)
        inv_std = 1 / np.sqrt(var + self.eps)
        x_hat = (x - self.per_feature(mean, x)) * self.per_feature(inv_std, x)
        self.cache = {"x_hat": x_hat, "inv_std": inv_std, "n": n}
        return self.per_feature(self.params["weight"], x) * x_hat + self.per_feature(
            self.params["bias"], x
        )

    def backward(self, dy):
        x_hat, inv_std, n = self.cache["x_hat"], self.cache["inv_std"], self.cache["n"]
        axes, reduce_ = self.axes(dy), partial(self.group.all_reduce, self.rank)
        self.grads["weight"] += (dy * x_hat).sum(axis=axes)  # this replica's share; averaged later
        self.grads["bias"] += dy.sum(axis=axes)
        dx_hat = dy * self.per_feature(self.params["weight"], dy)
        # every x of the global batch moved the mean and variance: the sums run over all replicas
        sum_dx_hat = self.per_feature(reduce_(dx_hat.sum(axis=axes)), dy)
        sum_dx_hat_x_hat = self.per_feature(reduce_((dx_hat * x_hat).sum(axis=axes)), dy)
        return (
            (n * dx_hat - sum_dx_hat - x_hat * sum_dx_hat_x_hat) * self.per_feature(inv_std, dy) / n
        )


def convert_sync_batchnorm(model, group: ProcessGroup, rank: int) -> None:
    """Replace every BatchNorm of the model (attributes and lists) by a SyncBatchNorm, in place."""
    for name, value in vars(model).items():
        if isinstance(value, BatchNorm):
            setattr(model, name, SyncBatchNorm(value, group, rank))
        elif isinstance(value, list):
            value[:] = [
                SyncBatchNorm(v, group, rank) if isinstance(v, BatchNorm) else v for v in value
            ]


# ----------------------------------------------------------------------------- dropout
class ReplicaDropout(Dropout):
    """Each replica keeps its own rows of the global batch's mask, drawn from the shared seed: the
    masks a single model would draw for the whole batch. (The stock Dropout with one seed on every
    replica draws the same (B/N, D) mask on each: the trap.)"""

    def __init__(self, p: float, *, rng: np.random.Generator, rank: int, replicas: int):
        super().__init__(p, rng=rng)
        self.rank, self.replicas = rank, replicas

    def forward(self, x):
        if not self.training or self.p == 0:
            return super().forward(x)
        keep = self.rng.random((len(x) * self.replicas, *x.shape[1:])) >= self.p  # (G, D)
        keep = replica_batch(
            keep, self.rank, self.replicas
        )  # (G, D) -> (G/N, D): this replica's rows
        scale = keep.astype(x.dtype) / x.dtype.type(1 - self.p)  # 0 or 1 / (1 - p)
        self.cache = {"scale": scale}
        return x * scale


# ----------------------------------------------------------------------------- the all-reduce
def all_reduce_gradients(models: list, op: str = "mean") -> None:
    """Every replica's gradient replaced by the mean (or, the trap, the sum) over the replicas."""
    for layers in zip(*(m.layers().values() for m in models)):
        for key in layers[0].grads:
            total = reduce(np.add, (layer.grads[key] for layer in layers))  # rank order
            for layer in layers:
                layer.grads[key] = total / len(models) if op == "mean" else total


# ----------------------------------------------------------------------------- train
def loss_and_grad(impl, model, logits, y):
    """The model's mean loss over this replica's examples and d loss / d logits."""
    if isinstance(model.cfg, LeNet5Config):
        return impl.loss_fn(logits, y)
    return impl.loss_fn(logits, y, model.cfg.head)


def make_replica(impl, cfg, params, *, rank, replicas, group, seed, dtype, variant):
    dropout = Dropout if variant == "dropout-shared-seed" else partial(ReplicaDropout, rank=rank, replicas=replicas)  # fmt: skip
    model = impl.create_model(cfg, seed=seed, dtype=dtype, dropout_layer=dropout)
    impl.load_canonical(model, params)
    if variant != "bn-per-replica":
        convert_sync_batchnorm(model, group, rank)
    model.set_training(True)
    return model


def replica_step(impl, models, optimizers, x, y, slices, rank: int) -> float:
    """Replica `rank`'s forward and backward on its slice: its own gradients, not yet all-reduced."""
    model, idx = models[rank], slices[rank]
    optimizers[rank].zero_grad()  # backward adds to the gradients
    loss, dlogits = loss_and_grad(impl, model, model.forward(x[idx]), y[idx])  # mean over the slice
    model.backward(dlogits)
    return float(loss)


def train(
    impl, cfg, params, x, y, *, replicas: int, optimizer: OptimizerConfig, epochs: int,
    global_batch: int, seed: int, variant: str = "default", dtype: str = "float64", on_epoch=None,
) -> dict[str, np.ndarray]:  # fmt: skip
    """Train N replicas from canonical `params` on the shared global batches; replica 0's weights."""
    dp.check_divisible(global_batch, replicas)
    group = ProcessGroup(replicas)
    models = [
        make_replica(impl, cfg, params, rank=r, replicas=replicas, group=group, seed=seed, dtype=dtype, variant=variant)
        for r in range(replicas)
    ]  # fmt: skip
    optimizers = [impl.make_optimizer(m, optimizer) for m in models]  # one per replica, as in DDP
    x = x.astype(dtype)
    for epoch in range(epochs):
        losses = []
        for batch in dp.global_batches(len(x), global_batch, seed, epoch):
            slices = [replica_batch(batch, r, replicas) for r in range(replicas)]
            step = partial(replica_step, impl, models, optimizers, x, y, slices)
            losses.append(np.mean(group.run(step)))  # the replicas' mean: the global batch's loss
            all_reduce_gradients(models, "sum" if variant == "grad-sum" else "mean")
            for opt in optimizers:  # the same gradients, so the same step on every replica
                opt.step()
        if on_epoch:
            on_epoch(epoch, float(np.mean(losses)))
    return impl.export_canonical(models[0])


# ----------------------------------------------------------------------------- the suite's runs
def run_job(job: dp.Job) -> dict[str, np.ndarray]:
    """One job of tasks/data_parallel.py: replica 0's canonical weights and the loss history."""
    history = []
    params = train(
        load_impl("scratch", job.model), job.config, job.params, job.x, job.y,
        replicas=job.replicas, optimizer=job.optimizer, epochs=job.epochs,
        global_batch=job.global_batch, seed=job.seed, variant=job.variant, dtype=job.dtype,
        on_epoch=lambda epoch, loss: history.append(loss),
    )  # fmt: skip
    return {**params, dp.HISTORY: np.asarray(history)}


def uneven_behaviour() -> dict[str, np.ndarray]:
    """What a global batch of 10 on 4 replicas does: here, the suite's rule refuses it."""
    try:
        dp.check_divisible(10, 4)
    except ValueError as e:
        return {"batch_10_on_4": np.asarray(f"ValueError: {e}")}
    return {"batch_10_on_4": np.asarray("accepted")}


def run_jobs(jobs: dict[str, dp.Job]) -> dict[str, dict[str, np.ndarray]]:
    return {**{key: run_job(job) for key, job in jobs.items()}, "uneven": uneven_behaviour()}
