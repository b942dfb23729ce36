"""The mask-replaying dropout for jax_impl (see tasks/replay/__init__.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

import jax_impl  # noqa: F401  (switches float64 on before this module creates an array)


class ReplayDropout(nnx.Dropout):
    """nnx.Dropout, except that a supplied keep-mask (True = keep) replaces the random draw: one
    (B, D) mask for every training call, or a (S, B, D) stack whose mask `step % S` the next training
    call uses. Without a mask it draws from its nnx.Rngs stream, as the stock layer does. The mask
    and the step counter are nnx.Variables, so a jitted step sees each new mask and advances the
    counter."""

    def __init__(self, rate: float, *, rngs: nnx.Rngs):
        super().__init__(rate, rngs=rngs)
        # set together by set_mask (so a model built abstractly, jax_impl.porting.load_model, has
        # nothing left to fill): the mask and the training calls made with a stack
        self.mask, self.step = nnx.Variable(None), nnx.Variable(None)

    def __call__(self, inputs, *, deterministic: bool | None = None, rngs=None):
        deterministic = self.deterministic if deterministic is None else deterministic
        keep = self.mask.get_value()
        if keep is None or deterministic or self.rate == 0:
            return super().__call__(inputs, deterministic=deterministic, rngs=rngs)
        if keep.ndim == 3:  # one mask per training step
            keep = keep[self.step.get_value() % keep.shape[0]]
            self.step.set_value(self.step.get_value() + 1)
        # the stock layer's own arithmetic: kept units scaled by 1 / (1 - rate)
        return lax.select(keep, inputs / (1.0 - self.rate), jnp.zeros_like(inputs))


def set_mask(layer: ReplayDropout, mask) -> None:
    """Replay `mask` (True = keep) in place of the random draw: (B, D), or (S, B, D) one per step."""
    layer.mask.set_value(jax.device_put(np.asarray(mask)))  # no lax.stage program per shape
    layer.step.set_value(jnp.zeros((), jnp.int32))


__all__ = ["ReplayDropout", "set_mask"]
