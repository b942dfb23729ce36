"""Dropout and batch normalisation in PyTorch: a dropout whose mask can be supplied, and the stock
nn.BatchNorm1d / nn.BatchNorm2d (train() / eval() switch the mode).

Srivastava et al. (2014) inverted dropout; Ioffe & Szegedy (2015) batch normalisation.
torch's BatchNorm momentum weights the *new* batch (0.1) and its running variance is unbiased:
the convention scratch/regularize.py follows.
"""

from __future__ import annotations

import torch
from torch import nn


# ----------------------------------------------------------------------------- dropout
class Dropout(nn.Module):
    """Inverted dropout; `mask` (True = keep), when set, replaces the random draw (for parity tests):
    one (B, D) mask for every training call, or a (S, B, D) stack whose mask `step % S` the next call uses.

    Not nn.Dropout: it draws from torch's global RNG; this one draws from the generator it was given."""

    def __init__(self, p: float, *, generator: torch.Generator):
        super().__init__()
        self.p, self.generator = p, generator
        self.mask: torch.Tensor | None = None
        self.step = 0  # training calls made with a supplied stack

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        if self.mask is None:
            keep = torch.rand(x.shape, generator=self.generator, dtype=x.dtype) >= self.p
        elif self.mask.dim() == 3:  # one mask per training step
            keep, self.step = self.mask[self.step % len(self.mask)], self.step + 1
        else:
            keep = self.mask
        return x * keep.to(x.dtype) / (1 - self.p)  # (B, D) kept units scaled by 1 / (1 - p)


# ----------------------------------------------------------------------------- batch norm
def make_batch_norm(
    num_features: int,
    *,
    momentum: float = 0.1,
    eps: float = 1e-5,
    conv: bool = False,
    dtype=torch.float64,
):
    """The stock layer: BatchNorm1d on (B, D), BatchNorm2d on (B, C, H, W); momentum as torch means it."""
    layer = nn.BatchNorm2d if conv else nn.BatchNorm1d
    return layer(num_features, eps=eps, momentum=momentum, dtype=dtype)


def set_mask(layer: Dropout, mask) -> None:
    """Supply a dropout mask (True = keep) in place of the random draw: (B, D), or (S, B, D) per step."""
    layer.mask, layer.step = torch.as_tensor(mask), 0


# ----------------------------------------------------------------------------- L2 penalty
def l2_penalty(model: nn.Module, l2: float) -> torch.Tensor:
    """(l2 / 2) * the sum of every squared parameter: a term of the loss, which autograd differentiates.

    Not the optimizers' `weight_decay`: torch's SGD/Adam add it after clipping and Keras's is decoupled."""
    return 0.5 * l2 * sum(p.pow(2).sum() for p in model.parameters())
