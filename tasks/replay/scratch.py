"""The mask-replaying dropout for scratch (see tasks/replay/__init__.py)."""

from __future__ import annotations

import numpy as np

from scratch.layers import Dropout


class ReplayDropout(Dropout):
    """scratch's Dropout, except that a supplied keep-mask (True = keep) replaces the random draw:
    one (B, D) mask for every training call, or a (S, B, D) stack whose mask `step % S` the next
    training call uses. Without a mask it draws from its generator, as the stock layer does."""

    def __init__(self, p: float, *, rng: np.random.Generator):
        super().__init__(p, rng=rng)
        self.mask: np.ndarray | None = None
        self.step = 0  # training calls made with a supplied stack

    def forward(self, x):
        if self.mask is None or not self.training or self.p == 0:
            return super().forward(x)
        if self.mask.ndim == 3:  # one mask per training step
            keep, self.step = self.mask[self.step % len(self.mask)], self.step + 1
        else:
            keep = self.mask
        scale = keep.astype(x.dtype) / x.dtype.type(1 - self.p)  # (B, D) of 0 and 1 / (1 - p)
        self.cache = {"scale": scale}
        return x * scale


def set_mask(layer: ReplayDropout, mask) -> None:
    """Replay `mask` (True = keep) in place of the random draw: (B, D), or (S, B, D), one a step."""
    if not isinstance(layer, ReplayDropout):  # the stock layer would ignore the mask silently
        raise TypeError(f"set_mask needs a ReplayDropout, got {type(layer).__name__}")
    layer.mask, layer.step = np.asarray(mask), 0


__all__ = ["ReplayDropout", "set_mask"]
