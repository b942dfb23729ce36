"""The suite's shared batch order (tasks/data.py) as a torch Sampler, for one DataLoader per run.

Like `DistributedSampler`, the sampler is built once and told the epoch before each pass
(`set_epoch`); every epoch it yields the index arrays of `tasks.data.batches` (or the single indices
of `tasks.data.epoch_order`), so torch sees the same batches as the other three frameworks.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch.utils.data import Sampler

from tasks.data import batches, epoch_order


# ----------------------------------------------------------------------------- sampler
class EpochSampler(Sampler):
    """Mini-batches of indices (pass it as `batch_sampler=`), or with batch_size=None single
    indices (as `sampler=`, DataLoader batch_size=None), in the shared order of the set epoch."""

    def __init__(self, n: int, seed: int, batch_size: int | None = None):
        self.n, self.seed, self.batch_size, self.epoch = n, seed, batch_size, 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's permutation; call it before each pass, as with DistributedSampler."""
        self.epoch = epoch

    def __iter__(self) -> Iterator:
        if self.batch_size is None:
            return iter(epoch_order(self.n, self.seed, self.epoch).tolist())
        return (idx.tolist() for idx in batches(self.n, self.batch_size, self.seed, self.epoch))

    def __len__(self) -> int:
        return self.n if self.batch_size is None else -(-self.n // self.batch_size)  # ceil
