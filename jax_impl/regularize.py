"""Batch normalisation and the L2 penalty in Flax NNX, shared by mlp.py and lenet5.py: the stock
nnx.BatchNorm under its canonical (torch) names, and (l2 / 2) * sum p^2 as a term of the loss.
Dropout is the stock nnx.Dropout, built in the models; `nnx.view` switches both modes.

Ioffe & Szegedy (2015) batch normalisation.
nnx.BatchNorm's `momentum` weights the *old* average (default 0.99), so torch's 0.1 is Flax's 0.9,
and its running variance takes the biased batch variance (docs/PORTING.md).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jax_impl import compat


# ----------------------------------------------------------------------------- batch norm
def make_batch_norm(
    num_features: int,
    *,
    momentum: float = 0.1,
    eps: float = 1e-5,
    conv: bool = False,
    dtype=jnp.float64,
    rngs: nnx.Rngs,
) -> nnx.BatchNorm:
    """The stock layer on channels-last input, (B, D) or (B, H, W, C); `momentum` in torch's sense."""
    layer = nnx.BatchNorm(
        num_features, momentum=1 - momentum, epsilon=eps, dtype=dtype, param_dtype=dtype, rngs=rngs
    )
    return compat.batch_stats_in_dtype(layer, dtype)


def canonical_variables(layer: nnx.BatchNorm) -> dict:
    """The layer's variables under the canonical (torch) names: scale, bias and running statistics."""
    return {
        "weight": layer.scale,
        "bias": layer.bias,
        "running_mean": layer.mean,
        "running_var": layer.var,
    }


# ----------------------------------------------------------------------------- modes
def train_view(model: nnx.Module) -> nnx.Module:
    """The model with dropout on and batch norm on batch statistics; it shares every array with
    `model` (nnx.view), so evaluating between epochs cannot switch training off."""
    return nnx.view(model, deterministic=False, use_running_average=False, raise_if_not_found=False)


def eval_view(model: nnx.Module) -> nnx.Module:
    """The model with dropout off and batch norm on its running statistics (nnx.view)."""
    return nnx.view(model, deterministic=True, use_running_average=True, raise_if_not_found=False)


# ----------------------------------------------------------------------------- L2 penalty
def l2_penalty(model: nnx.Module, l2: float):
    """(l2 / 2) * the sum of every squared nnx.Param: a term of the loss nnx.value_and_grad sees."""
    return 0.5 * l2 * sum(jnp.sum(p * p) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
