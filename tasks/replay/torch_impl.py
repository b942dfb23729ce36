"""The mask-replaying dropout for torch_impl (see tasks/replay/__init__.py): test machinery, kept
out of the models, which build the stock nn.Dropout."""

from __future__ import annotations

import torch
from torch import nn


class ReplayDropout(nn.Dropout):
    """nn.Dropout that, once given a keep-mask (True = keep) by `set_mask`, uses it instead of a
    random draw: one (B, D) mask for every training call, or a (S, B, D) stack whose mask
    `step % S` the next training call uses. Without a mask, and in eval mode, it is nn.Dropout."""

    def __init__(self, p: float = 0.5, inplace: bool = False):
        super().__init__(p, inplace)
        self.mask: torch.Tensor | None = None
        self.step = 0  # training calls made with a supplied stack

    def forward(self, x):
        if not self.training or self.mask is None:
            return super().forward(x)
        if self.mask.dim() == 3:  # one mask per training step
            keep, self.step = self.mask[self.step % len(self.mask)], self.step + 1
        else:
            keep = self.mask
        return x * keep.to(x.device, x.dtype) / (1 - self.p)  # (B, D) kept units times 1 / (1 - p)


def set_mask(layer: ReplayDropout, mask) -> None:
    """Supply a keep-mask (True = keep) in place of the random draw: (B, D), or (S, B, D) per step."""
    layer.mask, layer.step = torch.as_tensor(mask), 0


__all__ = ["ReplayDropout", "set_mask"]
