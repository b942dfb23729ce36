"""Data-parallel training in JAX with Flax NNX: a device mesh, the batch sharded, the step under nnx.jit.

The N devices form a one-axis mesh ("batch"). The parameters are replicated on every device and
each global batch is sharded along the mesh, device r holding the slice `batch[r::N]`. Under
nnx.jit the step is written for the whole global batch; the compiler partitions it, every device
computing its slice, and inserts the all-reduce of the gradients itself. Batch norm sees the global
batch there too, and dropout draws the global batch's mask, so the run is the one-device run.

The explicit form beside it, `jax.shard_map`, runs the step per device on its slice: the all-reduce
is written (`jax.lax.pmean` of the gradients), and batch norm is synchronised only when it names the
mesh axis (`axis_name="batch"`). Here the devices are N host CPUs made by XLA's
`--xla_force_host_platform_device_count` (tasks/data_parallel.py starts a fresh process with it);
on GPUs or TPUs the same code runs on jax.devices(), and over several processes or hosts after
jax.distributed.initialize (initialize_distributed: here 2 processes on 127.0.0.1; README).
"""

from __future__ import annotations

import functools
import os

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jax_impl.porting import load_model
from tasks import data_parallel as dp
from tasks.configs import LeNet5Config, OptimizerConfig
from tasks.registry import load_impl

AXIS = "batch"  # the mesh axis the global batch is split along


# ----------------------------------------------------------------------------- replicas: the mesh
def make_mesh(replicas: int) -> Mesh:
    """A one-axis mesh over the first `replicas` devices."""
    return Mesh(np.array(jax.devices()[:replicas]), (AXIS,))


# ----------------------------------------------------------------------------- each replica's data
def shard_batch(mesh: Mesh, idx: np.ndarray, x, y):
    """The examples `idx` as one global array cut along the mesh: N contiguous chunks, one a device."""
    sharded = NamedSharding(mesh, P(AXIS))  # dim 0 split over the "batch" axis
    return jax.device_put(x[idx], sharded), jax.device_put(y[idx], sharded)


def replicate(mesh: Mesh, module) -> None:
    """Every array of the module (parameters, statistics, RNG and optimiser state) on every device."""
    nnx.update(module, jax.device_put(nnx.state(module), NamedSharding(mesh, P())))


# ----------------------------------------------------------------------------- synchronised batch norm
def synchronise_batch_norm(model, axis_name: str | None) -> None:
    """nnx.BatchNorm all-reduces its statistics over the named mesh axis (inside shard_map)."""
    for _, module in nnx.iter_modules(model):
        if isinstance(module, nnx.BatchNorm):
            module.axis_name = axis_name


# ----------------------------------------------------------------------------- the all-reduce: the train steps
def loss_fn(impl, model, logits, y):
    """The model's mean loss over the examples it is given."""
    if isinstance(model.cfg, LeNet5Config):
        return impl.loss_fn(logits, y)
    return impl.loss_fn(logits, y, model.cfg.head)


@functools.cache  # one compiled step per model module: jit caches its traces by shapes and shardings
def make_train_step(impl):
    """The global-view step: written for the whole batch; the compiler adds the all-reduce."""

    @nnx.jit
    def train_step(model, optimizer, x, y):
        loss, grads = nnx.value_and_grad(lambda m: loss_fn(impl, m, m(x), y))(model)
        optimizer.update(model, grads)
        return loss

    return train_step


@functools.cache
def make_shard_map_step(impl, mesh: Mesh, variant: str = "shard-map"):
    """The per-device step under shard_map, the all-reduce written out: pmean of the gradients
    (the trap "grad-sum": psum). check_vma=False is the classic per-device semantics, where a
    gradient is this device's own; with JAX's default check_vma=True a gradient with respect to a
    replicated parameter comes back already summed over the devices (the transpose of the implicit
    broadcast), so the same pmean leaves N times the mean: the trap "loss-per-replica"."""
    reduce = jax.lax.psum if variant == "grad-sum" else jax.lax.pmean

    @nnx.jit
    def train_step(model, optimizer, x, y):
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)

        def replica_step(params, rest, x, y):  # on each device, its slice of x and y
            model = nnx.merge(graphdef, params, rest)
            # the mean over this device's slice, and this device's gradients
            loss, grads = nnx.value_and_grad(lambda m: loss_fn(impl, m, m(x), y))(model)
            rest = nnx.state(model, nnx.Not(nnx.Param))  # new statistics, RNG counts
            return reduce(loss, AXIS), reduce(grads, AXIS), rest  # the all-reduce

        loss, grads, rest = jax.shard_map(
            replica_step, mesh=mesh, in_specs=(P(), P(), P(AXIS), P(AXIS)),
            out_specs=(P(), P(), P()), check_vma=variant == "loss-per-replica",
        )(params, rest, x, y)  # fmt: skip
        nnx.update(model, rest)
        optimizer.update(model, grads)
        return loss

    return train_step


# ----------------------------------------------------------------------------- train
def train(
    impl, cfg, params, x, y, *, replicas: int, optimizer: OptimizerConfig, epochs: int,
    global_batch: int, seed: int, variant: str = "default", dtype: str = "float64", on_epoch=None,
) -> dict[str, np.ndarray]:  # fmt: skip
    """Train on a mesh of `replicas` devices from canonical `params` on the shared global batches."""
    dp.check_divisible(global_batch, replicas)
    mesh = make_mesh(replicas)
    # built abstractly and filled from `params`: no initial weights drawn (compiled) to be overwritten
    model = load_model(impl, cfg, params, seed=seed, dtype=dtype)
    optimizer = impl.make_optimizer(model, optimizer)
    if variant == "default":
        train_step = make_train_step(impl)
    else:  # the shard_map forms; batch norm synchronised unless the variant is the trap
        synchronise_batch_norm(model, None if variant == "bn-per-replica" else AXIS)
        train_step = make_shard_map_step(impl, mesh, variant)
    replicate(mesh, model)
    replicate(mesh, optimizer)
    step = nnx.cached_partial(
        train_step, model, optimizer
    )  # the graph traversed once, not per call
    x, y = np.asarray(x, dtype), np.asarray(y)
    for epoch in range(epochs):
        model.train()  # batch statistics and dropout on
        losses = []
        for batch in dp.global_batches(len(x), global_batch, seed, epoch):
            # per-device steps: device r takes batch[r::N], as torch's rank r; the global-view step
            # takes the batch in its own order (one device's order: its dropout masks match too)
            idx = batch if variant == "default" else dp.by_replica(batch, replicas)
            losses.append(step(*shard_batch(mesh, idx, x, y)))
        if on_epoch:
            on_epoch(epoch, float(np.mean(losses)))
    return impl.export_canonical(model)


# ----------------------------------------------------------------------------- the suite's runs
def run_job(job: dp.Job) -> dict[str, np.ndarray]:
    """One job of tasks/data_parallel.py: the canonical weights and the loss history."""
    history = []
    params = train(
        load_impl("jax_impl", job.model), job.config, job.params, job.x, job.y,
        replicas=job.replicas, optimizer=job.optimizer, epochs=job.epochs,
        global_batch=job.global_batch, seed=job.seed, variant=job.variant, dtype=job.dtype,
        on_epoch=lambda epoch, loss: history.append(loss),
    )  # fmt: skip
    return {**params, dp.HISTORY: np.asarray(history)}


def uneven_behaviour() -> dict[str, np.ndarray]:
    """What a global batch of 10 does on a 4-device mesh: device_put refuses it."""
    if jax.device_count() < 4 or jax.process_count() > 1:
        return {}
    try:
        jax.device_put(np.zeros((10, 2)), NamedSharding(make_mesh(4), P(AXIS)))
        found = "accepted"
    except ValueError as e:
        found = f"ValueError: {e}"
    return {"batch_10_on_4": np.asarray(found)}


def run_jobs(jobs: dict[str, dp.Job]) -> dict[str, dict[str, np.ndarray]]:
    return {**{key: run_job(job) for key, job in jobs.items()}, "uneven": uneven_behaviour()}


# ----------------------------------------------------------------------------- the suite's runs: several processes
def initialize_distributed(process_id: int, processes: int, port: int) -> None:
    """Join `processes` JAX processes at a coordinator on 127.0.0.1 (CPU collectives over gloo);
    jax.devices() then lists every process's devices, so make_mesh spans them and train() runs
    unchanged: each process feeds its devices' slices, the step's all-reduce crosses processes."""
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}", num_processes=processes, process_id=process_id,
        initialization_timeout=60,
    )  # fmt: skip


# python -m jax_impl.data_parallel JOBS OUT PID, started by tasks/data_parallel.py
if __name__ == "__main__":
    if "ROSETTA_JAX_PROCESS" in os.environ:  # "process_id,processes,port": one of several processes
        initialize_distributed(*map(int, os.environ["ROSETTA_JAX_PROCESS"].split(",")))
    dp.subprocess_main(run_jobs)
