"""Dropout and batch normalisation in Flax NNX: a dropout whose mask can be supplied (else the stock
nnx.Dropout with its own nnx.Rngs stream), and the stock nnx.BatchNorm (`model.train()` /
`model.eval()` switch the mode).

Srivastava et al. (2014) inverted dropout; Ioffe & Szegedy (2015) batch normalisation.
nnx.BatchNorm's `momentum` weights the *old* average (default 0.99), so torch's 0.1 is Flax's 0.9,
and its running variance takes the biased batch variance (docs/PORTING.md).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


# ----------------------------------------------------------------------------- dropout
class Dropout(nnx.Module):
    """Inverted dropout; `mask` (True = keep), when set, replaces the random draw (for parity tests):
    one (B, D) mask for every training call, or a (S, B, D) stack whose mask `step % S` the next call uses."""

    def __init__(self, p: float, *, rngs: nnx.Rngs):
        self.p = p
        self.dropout = nnx.Dropout(
            p, rngs=rngs
        )  # draws from the rngs' "dropout" stream (else "default")
        self.mask = nnx.Variable(None)  # state, so a supplied mask reaches a jitted step
        self.step = nnx.Variable(
            jnp.zeros((), jnp.int32)
        )  # training calls made with a supplied stack; state too
        self.deterministic = (
            False  # model.eval() sets it True (nnx set_attributes), model.train() back
        )

    def __call__(self, x):
        if self.deterministic or self.p == 0:
            return x
        keep = self.mask.get_value()
        if keep is None:
            return self.dropout(x, deterministic=False)
        if keep.ndim == 3:  # one mask per training step
            keep = keep[self.step.get_value() % keep.shape[0]]
            self.step.set_value(self.step.get_value() + 1)
        return (
            x * jnp.asarray(keep, x.dtype) / (1 - self.p)
        )  # (B, D) kept units scaled by 1 / (1 - p)


# ----------------------------------------------------------------------------- batch norm
def make_batch_norm(
    num_features: int,
    *,
    momentum: float = 0.1,
    eps: float = 1e-5,
    conv: bool = False,
    dtype=jnp.float64,
    rngs: nnx.Rngs,
):
    """The stock layer on channels-last input, (B, D) or (B, H, W, C); `momentum` in torch's sense."""
    layer = nnx.BatchNorm(
        num_features, momentum=1 - momentum, epsilon=eps, dtype=dtype, param_dtype=dtype, rngs=rngs
    )
    # nnx.BatchNorm creates its running mean and variance in float32 whatever param_dtype says:
    # a float64 run would round every running-average update to float32 (docs/PORTING.md)
    layer.mean.set_value(jnp.zeros(num_features, dtype))
    layer.var.set_value(jnp.ones(num_features, dtype))
    return layer


def canonical_variables(layer: nnx.BatchNorm) -> dict:
    """The layer's variables under the canonical (torch) names: scale, bias and the running statistics."""
    return {
        "weight": layer.scale,
        "bias": layer.bias,
        "running_mean": layer.mean,
        "running_var": layer.var,
    }


def set_mask(layer: Dropout, mask) -> None:
    """Supply a dropout mask (True = keep): (B, D), or (S, B, D) per step; it is state, so a jitted
    step sees each new one."""
    layer.mask.set_value(jnp.asarray(mask))
    layer.step.set_value(jnp.zeros((), jnp.int32))


# ----------------------------------------------------------------------------- L2 penalty
def l2_penalty(model: nnx.Module, l2: float):
    """(l2 / 2) * the sum of every squared nnx.Param: a term of the loss that nnx.value_and_grad sees."""
    return 0.5 * l2 * sum(jnp.sum(p * p) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
