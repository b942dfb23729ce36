"""torch.optim configured to the algorithms of scratch/optim.py: SGD, momentum, Nesterov, RMSprop,
Adam and AdamW, and a LambdaLR schedule (warmup, then cosine or step decay).

Robbins & Monro (1951); Polyak (1964); Sutskever et al. (2013); Tieleman & Hinton (2012);
Kingma & Ba (2015); Loshchilov & Hutter (2017, 2019); Goyal et al. (2017); Pascanu et al. (2013).
The train loops call `scheduler.step()` after every `optimizer.step()` and clip the gradients
before it (torch_impl/compat.py's `clip_grad_norm_`), in sight, as PyTorch's own examples do.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from tasks.configs import OptimizerConfig


# ----------------------------------------------------------------------------- optimisers
def as_config(lr: float | OptimizerConfig, **defaults) -> OptimizerConfig:
    """An OptimizerConfig as given; a bare learning rate becomes one (SGD unless `defaults`)."""
    return lr if isinstance(lr, OptimizerConfig) else OptimizerConfig(lr=lr, **defaults)


def make_torch_optimizer(
    parameters: Iterable[nn.Parameter], spec: OptimizerConfig
) -> torch.optim.Optimizer:
    """The stock optimizer, every hyperparameter passed (torch's RMSprop alpha is the decay rho)."""
    if spec.name == "sgd":
        return torch.optim.SGD(parameters, lr=spec.lr)
    if spec.name in ("momentum", "nesterov"):
        return torch.optim.SGD(
            parameters, lr=spec.lr, momentum=spec.momentum, nesterov=spec.name == "nesterov"
        )
    if spec.name == "rmsprop":
        return torch.optim.RMSprop(parameters, lr=spec.lr, alpha=spec.rho, eps=spec.eps)
    if spec.name == "adam":
        return torch.optim.Adam(
            parameters, lr=spec.lr, betas=(spec.beta1, spec.beta2), eps=spec.eps
        )
    # AdamW's weight_decay is decoupled: p *= 1 - lr * wd; Adam's and SGD's would be an L2 gradient term
    return torch.optim.AdamW(
        parameters,
        lr=spec.lr,
        betas=(spec.beta1, spec.beta2),
        eps=spec.eps,
        weight_decay=spec.weight_decay,
    )


# ----------------------------------------------------------------------------- schedule
def make_scheduler(
    optimizer: torch.optim.Optimizer, spec: OptimizerConfig
) -> torch.optim.lr_scheduler.LRScheduler:
    """LambdaLR sets lr = spec.lr * factor(t) when built (t = 0) and at every scheduler.step();
    the factor is spec.learning_rate(t) / spec.lr, exactly 1.0 for a constant lr."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: spec.learning_rate(t) / spec.lr)
