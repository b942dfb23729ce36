"""Data-parallel training in PyTorch: torch.distributed (gloo), DistributedDataParallel, N processes.

Each of N processes holds a full replica of the model and takes its slice of every global batch
from a DistributedSampler (`batch[r::N]`). DistributedDataParallel broadcasts rank 0's weights when
it wraps the model and, during backward(), all-reduces the gradients bucket by bucket and divides
them by N, so every rank's optimizer takes the same step, the one a single model takes on the whole
global batch. A synchronised batch norm all-reduces the batch statistics.

Here the processes are started with torch.multiprocessing, meet at a free port on 127.0.0.1 and talk
gloo over loopback. They are forked from a forkserver that has imported torch, this chapter and the
modules DistributedDataParallel imports when first built (torch._dynamo) once: a worker started by
"spawn" would import them all again, about 2 s of CPU per worker and launch. On GPUs the backend is
nccl, one process per GPU (`torchrun --nproc-per-node`); on several machines the rendezvous address
is one machine's, reachable by all (README).
"""

from __future__ import annotations

import datetime
import os
import socket
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from tasks import data_parallel as dp
from tasks.configs import LeNet5Config, OptimizerConfig
from tasks.registry import load_impl


# ----------------------------------------------------------------------------- replicas: the process group
def free_port() -> int:
    """A free TCP port on the loopback address, for the rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_process_group(rank: int, world_size: int, port: int, timeout_s: float) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"  # gloo's own connections on loopback too
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
        timeout=datetime.timedelta(seconds=timeout_s),  # a collective that waits longer fails
    )  # fmt: skip


# ----------------------------------------------------------------------------- each replica's data
class ReplicaSampler(DistributedSampler):
    """DistributedSampler over the suite's shared order: each epoch's full global batches
    (tasks.data_parallel.global_batches), every N-th index from `rank`, the stock sampler's split.
    set_epoch(epoch) selects the epoch's permutation; without it every epoch repeats epoch 0's."""

    def __init__(self, dataset, *, global_batch: int, seed: int, num_replicas: int, rank: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, seed=seed, drop_last=True)
        self.global_batch = global_batch

    def __iter__(self):
        batches = dp.global_batches(len(self.dataset), self.global_batch, self.seed, self.epoch)
        order = np.concatenate(batches)  # the epoch's global batches, one after another
        return iter(order[self.rank :: self.num_replicas].tolist())  # batch[r::N] of each

    def __len__(self) -> int:
        return len(self.dataset) // self.global_batch * self.global_batch // self.num_replicas


# ----------------------------------------------------------------------------- synchronised batch norm
class AllReduceSum(torch.autograd.Function):
    """all_reduce(SUM) that autograd can see through: every rank's loss depends on every rank's
    contribution, so the backward all-reduces the incoming gradients too."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        x = x.clone()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class SyncBatchNorm(nn.Module):
    """nn.SyncBatchNorm's arithmetic for CPU tensors, which the stock layer refuses ("SyncBatchNorm
    expected input tensor to be on GPU or XPU ..."): the global batch's mean and variance from
    all-reduced per-rank sums."""

    def __init__(self, norm: nn.modules.batchnorm._BatchNorm, group):
        super().__init__()
        self.weight, self.bias, self.eps, self.momentum = (
            norm.weight,
            norm.bias,
            norm.eps,
            norm.momentum,
        )
        self.register_buffer("running_mean", norm.running_mean)
        self.register_buffer("running_var", norm.running_var)
        self.register_buffer("num_batches_tracked", norm.num_batches_tracked)
        self.group = group

    def forward(self, x):
        if not self.training:
            return F.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias, eps=self.eps
            )
        axes, shape = [0, *range(2, x.dim())], (1, -1, *[1] * (x.dim() - 2))  # (C,) -> (1, C, 1, 1)
        all_reduce = lambda t: AllReduceSum.apply(t, self.group)  # noqa: E731
        n = torch.tensor(x.numel() // x.shape[1], dtype=x.dtype)
        dist.all_reduce(n, group=self.group)  # values per feature in the global batch
        mean = all_reduce(x.sum(axes)) / n  # two passes, as a one-process batch norm computes them
        var = all_reduce(((x - mean.view(shape)) ** 2).sum(axes)) / n  # biased
        with torch.no_grad():
            m = self.momentum
            self.running_mean.mul_(1 - m).add_(m * mean)
            self.running_var.mul_(1 - m).add_(m * var * n / (n - 1))  # unbiased, as torch keeps it
            self.num_batches_tracked += 1
        x_hat = (x - mean.view(shape)) / torch.sqrt(var.view(shape) + self.eps)
        return x_hat * self.weight.view(shape) + self.bias.view(shape)


def convert_sync_batchnorm(module: nn.Module, group) -> nn.Module:
    """Every batch norm of the module synchronised over `group`, in place; on GPUs the stock
    nn.SyncBatchNorm.convert_sync_batchnorm(module, group) does this."""
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(module, name, SyncBatchNorm(child, group))
        else:
            convert_sync_batchnorm(child, group)
    return module


# ----------------------------------------------------------------------------- dropout
class ReplicaDropout(nn.Module):
    """Each rank keeps its own rows of the global batch's mask, drawn from the shared seed: the masks
    one process would draw for the whole batch. (nn.Dropout after torch.manual_seed(seed) on every
    rank draws the same (B/N, D) mask on each: the trap; seed + rank gives other, unrelated masks.)"""

    def __init__(self, p: float, *, generator: torch.Generator, rank: int, replicas: int):
        super().__init__()
        self.p, self.generator, self.rank, self.replicas = p, generator, rank, replicas

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        shape = (len(x) * self.replicas, *x.shape[1:])
        keep = torch.rand(shape, generator=self.generator, dtype=x.dtype) >= self.p  # (G, D)
        keep = keep[self.rank :: self.replicas]  # (G, D) -> (G/N, D): this rank's rows
        return x * keep.to(x.dtype) / (1 - self.p)


# ----------------------------------------------------------------------------- the all-reduce
def allreduce_sum_hook(group, bucket):  # no annotations: DDP checks them against its own classes
    """The trap: the gradients summed over the ranks. DDP's default hook divides by N first."""
    work = dist.all_reduce(bucket.buffer(), group=group, async_op=True)
    return work.get_future().then(lambda fut: fut.value()[0])


# ----------------------------------------------------------------------------- train
def loss_fn(impl, model, logits, y):
    """The model's mean loss over this rank's examples."""
    if isinstance(model.cfg, LeNet5Config):
        return impl.loss_fn(logits, y)
    return impl.loss_fn(logits, y, model.cfg.head)


def make_replica(impl, cfg, params, *, group, seed, dtype, variant):
    rank, replicas = dist.get_rank(group), dist.get_world_size(group)
    if variant == "dropout-shared-seed":
        torch.manual_seed(seed)  # the same seed on every rank: nn.Dropout draws the same masks
        dropout = nn.Dropout
    else:
        generator = torch.Generator().manual_seed(seed)
        dropout = partial(ReplicaDropout, generator=generator, rank=rank, replicas=replicas)
    model = impl.create_model(cfg, seed=seed, dtype=dtype, dropout_layer=dropout)
    impl.load_canonical(model, params)
    if variant != "bn-per-replica":
        convert_sync_batchnorm(model, group)
    return model


def train(
    impl, cfg, params, x, y, *, group, optimizer: OptimizerConfig, epochs: int, global_batch: int,
    seed: int, variant: str = "default", dtype: str = "float64", on_epoch=None,
) -> dict[str, np.ndarray]:  # fmt: skip
    """Train this rank's replica from canonical `params` on its slices of the shared global batches."""
    replicas, rank = dist.get_world_size(group), dist.get_rank(group)
    dp.check_divisible(global_batch, replicas)
    model = make_replica(impl, cfg, params, group=group, seed=seed, dtype=dtype, variant=variant)
    # broadcasts rank 0's weights; backward() then averages the gradients over the ranks
    ddp = DistributedDataParallel(model, process_group=group)
    if variant == "grad-sum":
        ddp.register_comm_hook(group, allreduce_sum_hook)
    optimizer = impl.make_optimizer(model, optimizer)  # one per rank, fed the same gradients
    dataset = TensorDataset(torch.as_tensor(x, dtype=getattr(torch, dtype)), torch.as_tensor(y))
    sampler = ReplicaSampler(dataset, global_batch=global_batch, seed=seed, num_replicas=replicas, rank=rank)  # fmt: skip
    loader = DataLoader(dataset, batch_size=global_batch // replicas, sampler=sampler)
    for epoch in range(epochs):
        ddp.train()
        if variant != "no-set-epoch":
            sampler.set_epoch(epoch)  # else every epoch repeats epoch 0's order
        losses = []
        for xb, yb in loader:
            optimizer.zero_grad()
            loss = loss_fn(impl, model, ddp(xb), yb)  # the mean over this rank's slice
            loss.backward()  # DDP all-reduces each bucket of gradients as soon as it is ready
            optimizer.step()
            losses.append(loss.detach())
        if on_epoch:
            mean = torch.stack(losses).mean()
            dist.all_reduce(mean, group=group)  # the global batches' mean loss, on every rank
            on_epoch(epoch, mean.item() / replicas)
    return impl.export_canonical(model)


# ----------------------------------------------------------------------------- the suite's runs: worker processes
def worker(rank: int, world_size: int, port: int, jobs: dict, out: str, timeout_s: float):
    """One rank: every job in order, each on the group of its first `replicas` ranks; rank 0 saves."""
    # ends this worker if its parent, the forkserver, is gone: the forkserver ends when the launching
    # process does (killed, interrupted)
    dp.watch_parent(os.getppid())
    torch.set_num_threads(1)  # N processes share the cores
    init_process_group(rank, world_size, port, timeout_s)
    try:
        # new_group is collective: every rank creates every group, in the same order
        groups = {
            n: dist.new_group(list(range(n))) for n in sorted({j.replicas for j in jobs.values()})
        }
        results = {}
        for key, job in jobs.items():
            if rank >= job.replicas:
                continue
            history = []
            params = train(
                load_impl("torch_impl", job.model), job.config, job.params, job.x, job.y,
                group=groups[job.replicas], optimizer=job.optimizer, epochs=job.epochs,
                global_batch=job.global_batch, seed=job.seed, variant=job.variant, dtype=job.dtype,
                on_epoch=lambda epoch, loss, h=history: h.append(loss),
            )  # fmt: skip
            results[key] = {**params, dp.HISTORY: np.asarray(history)}
        if rank == 0:
            dp.save_results(out, {**results, "uneven": uneven_behaviour()})
        dist.barrier()
    finally:
        dist.destroy_process_group()


def launch(jobs: dict[str, dp.Job], world_size: int, timeout: float) -> dict[str, dict]:
    """Start `world_size` worker processes, wait for them (at most `timeout` s), return rank 0's
    results. On an error, a timeout or an interrupt every worker still running is killed."""
    with tempfile.TemporaryDirectory(prefix="rosetta-ddp-") as tmp:
        out = str(Path(tmp) / "results.npz")
        args = (world_size, free_port(), jobs, out, timeout)
        # read when this process first starts the forkserver; the workers are forked from it, imported
        models = sorted({load_impl("torch_impl", job.model).__name__ for job in jobs.values()})
        mp.set_forkserver_preload([__name__, "torch._dynamo", *models])
        context = mp.start_processes(worker, args=args, nprocs=world_size, join=False, start_method="forkserver")  # fmt: skip
        deadline = time.monotonic() + timeout
        try:
            while not context.join(timeout=0.5):  # raises if a worker failed
                if time.monotonic() > deadline:
                    raise TimeoutError(f"data-parallel workers still running after {timeout} s")
        finally:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
                process.join()
        return dp.load_results(out)


# ----------------------------------------------------------------------------- the suite's runs: uneven batches
def uneven_behaviour() -> dict[str, np.ndarray]:
    """What the stock DistributedSampler does with 10 examples on 4 ranks, and the suite's rule."""
    data = list(range(10))
    padded = [list(DistributedSampler(data, 4, r, shuffle=False)) for r in range(4)]
    dropped = [
        list(DistributedSampler(data, 4, r, shuffle=False, drop_last=True)) for r in range(4)
    ]
    try:
        dp.check_divisible(10, 4)
        rule = "accepted"
    except ValueError as e:
        rule = f"ValueError: {e}"
    return {
        "sampler_pads": np.asarray(padded),  # 12 indices: 0 and 1 drawn twice
        "sampler_drop_last": np.asarray(dropped),  # 8 indices: 8 and 9 never drawn
        "batch_10_on_4": np.asarray(rule),
    }
