"""Regularisation in PyTorch: the stock nn.BatchNorm1d / nn.BatchNorm2d, and an L2 penalty in the loss.
Dropout is the stock nn.Dropout, built by the models themselves (train() / eval() switch both modes).

Ioffe & Szegedy (2015) batch normalisation; Srivastava et al. (2014) dropout.
torch's BatchNorm momentum weights the *new* batch (0.1) and its running variance is unbiased:
the convention scratch/layers.py (BatchNorm) follows.
"""

from __future__ import annotations

import torch
from torch import nn


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


# ----------------------------------------------------------------------------- L2 penalty
def l2_penalty(model: nn.Module, l2: float) -> torch.Tensor:
    """(l2 / 2) * the sum of every squared parameter: a term of the loss, which autograd differentiates.

    Not the optimizers' `weight_decay`: torch's SGD/Adam add it after clipping and Keras's is decoupled."""
    return 0.5 * l2 * sum(p.pow(2).sum() for p in model.parameters())
