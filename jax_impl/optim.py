"""optax configured to the algorithms of scratch/optim.py: SGD, momentum, Nesterov, RMSprop, Adam
and AdamW, a warmup then cosine or step decay schedule, and clipping by global norm.

Robbins & Monro (1951); Polyak (1964); Sutskever et al. (2013); Tieleman & Hinton (2012);
Kingma & Ba (2015); Loshchilov & Hutter (2017, 2019); Goyal et al. (2017); Pascanu et al. (2013).
optax builds each optimiser as a chain of gradient transformations; nnx.Optimizer applies it to
the model's nnx.Param leaves.
"""

from __future__ import annotations

import functools

import jax
import optax
from flax import nnx

from jax_impl import compat
from tasks.configs import OptimizerConfig


# ----------------------------------------------------------------------------- schedules
def make_schedule(spec: OptimizerConfig, dtype):
    """An optax schedule (a function of the update count), or the float lr when constant."""
    schedule = make_stock_schedule(spec)
    return compat.schedule_on_float_count(schedule, dtype) if callable(schedule) else schedule


def make_stock_schedule(spec: OptimizerConfig):
    warmup = optax.linear_schedule(0.0, spec.lr, spec.warmup_steps) if spec.warmup_steps else None
    if spec.schedule == "cosine":
        if warmup is None:
            return optax.cosine_decay_schedule(spec.lr, spec.decay_steps, alpha=spec.min_lr_ratio)
        # decay_steps counts the warmup too; end_value is the floor
        return optax.warmup_cosine_decay_schedule(
            0.0,
            spec.lr,
            spec.warmup_steps,
            spec.warmup_steps + spec.decay_steps,
            end_value=spec.min_lr_ratio * spec.lr,
        )
    decay = (
        optax.exponential_decay(spec.lr, spec.step_size, spec.gamma, staircase=True)
        if spec.schedule == "step"
        else None
    )
    if warmup is None:
        return decay or spec.lr
    return optax.join_schedules(
        [warmup, decay or optax.constant_schedule(spec.lr)], [spec.warmup_steps]
    )


# ----------------------------------------------------------------------------- optimisers
def as_config(lr: float | OptimizerConfig, **defaults) -> OptimizerConfig:
    """An OptimizerConfig as given; a bare learning rate becomes one (SGD unless `defaults`)."""
    return lr if isinstance(lr, OptimizerConfig) else OptimizerConfig(lr=lr, **defaults)


@functools.cache
def make_transform(spec: OptimizerConfig, dtype) -> optax.GradientTransformation:
    """One transformation per (spec, dtype), built once: nnx.jit keys its compiled steps on the
    optimizer's static structure, the optax functions included, so a fresh chain for every run would
    compile the same train step again."""
    lr = make_schedule(spec, dtype)
    if spec.name == "sgd":
        tx = optax.sgd(lr)
    elif spec.name in ("momentum", "nesterov"):
        tx = optax.sgd(
            lr, momentum=spec.momentum, nesterov=spec.name == "nesterov"
        )  # trace: v = mu v + g
    elif spec.name == "rmsprop":
        # optax's default decay is 0.9 and eps_in_sqrt=True (Keras's placement); torch's is outside
        tx = optax.rmsprop(lr, decay=spec.rho, eps=spec.eps, eps_in_sqrt=False)
    elif spec.name == "adam":
        tx = optax.adam(lr, b1=spec.beta1, b2=spec.beta2, eps=spec.eps)
    else:
        tx = optax.adamw(
            lr, b1=spec.beta1, b2=spec.beta2, eps=spec.eps, weight_decay=spec.weight_decay
        )
    if spec.clip_norm is not None:
        tx = optax.chain(
            optax.clip_by_global_norm(spec.clip_norm), tx
        )  # clip first, on the raw gradients
    return tx


def make_optimizer(model: nnx.Module, spec: OptimizerConfig) -> nnx.Optimizer:
    dtype = jax.tree.leaves(nnx.state(model, nnx.Param))[0].dtype  # the parameters' float dtype
    return nnx.Optimizer(model, make_transform(spec, dtype), wrt=nnx.Param)
