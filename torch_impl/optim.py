"""torch.optim configured to the algorithms of scratch/optim.py: SGD, momentum, Nesterov, RMSprop,
Adam and AdamW, a LambdaLR warmup then cosine or step decay, and clipping by global norm.

Robbins & Monro (1951); Polyak (1964); Sutskever et al. (2013); Tieleman & Hinton (2012);
Kingma & Ba (2015); Loshchilov & Hutter (2017, 2019); Goyal et al. (2017); Pascanu et al. (2013).
The scheduler and the clipping run as the optimizer's own step hooks, so a model's
`train_step` stays the classic zero_grad / backward / step.
"""

from __future__ import annotations

import torch
from torch import nn

from tasks.configs import OptimizerConfig


# ----------------------------------------------------------------------------- clipping
@torch.no_grad()
def clip_by_global_norm(parameters: list[nn.Parameter], max_norm: float) -> None:
    """Scale every gradient by min(1, max_norm / ||all gradients||), in place.

    Not `nn.utils.clip_grad_norm_`: it scales by max_norm / (norm + 1e-6), which differs from
    Keras and optax by a factor norm / (norm + 1e-6) whenever it clips (docs/PORTING.md)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    norm = nn.utils.get_total_norm(grads)  # one norm over every tensor, not one per tensor
    scale = torch.clamp(max_norm / norm, max=1.0)
    for g in grads:
        g.mul_(scale)


# ----------------------------------------------------------------------------- optimisers
def make_torch_optimizer(
    parameters: list[nn.Parameter], spec: OptimizerConfig
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


def make_optimizer(model: nn.Module, spec: OptimizerConfig) -> torch.optim.Optimizer:
    parameters = list(model.parameters())
    optimizer = make_torch_optimizer(parameters, spec)
    if spec.clip_norm is not None:
        optimizer.register_step_pre_hook(
            lambda opt, args, kwargs: clip_by_global_norm(parameters, spec.clip_norm)
        )
    if spec.schedule != "constant" or spec.warmup_steps:
        # LambdaLR sets lr = spec.lr * factor(t) now for t = 0, and again after every step
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda t: spec.learning_rate(t) / spec.lr
        )
        optimizer.register_step_post_hook(lambda opt, args, kwargs: scheduler.step())
    return optimizer
