"""Dropout and batch normalisation in Keras 3: a dropout layer whose mask can be supplied (else the
stock keras.random.dropout with a SeedGenerator), and the stock keras.layers.BatchNormalization
(`training=True` / `False` in call switches the mode).

Srivastava et al. (2014) inverted dropout; Ioffe & Szegedy (2015) batch normalisation.
Keras's BatchNormalization `momentum` weights the *old* average (default 0.99), so torch's 0.1 is
Keras's 0.9, and its running variance takes the biased batch variance (docs/PORTING.md).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops


# ----------------------------------------------------------------------------- dropout
class Dropout(keras.layers.Layer):
    """Inverted dropout; `mask` (True = keep), when set, replaces the random draw (for parity tests):
    one (B, D) mask for every training call, or a (S, B, D) stack whose mask `step % S` the next call
    uses. A tf.function keeps the mask it saw when it traced; the step is a variable, so it counts."""

    def __init__(self, p: float, *, seed: keras.random.SeedGenerator, **kwargs):
        super().__init__(**kwargs)
        self.p, self.seed_generator = p, seed
        self.mask = None
        self.step = keras.Variable(
            0, dtype="int64", trainable=False, name="step"
        )  # training calls made with a supplied stack

    def call(self, x, training=False):
        if not training or self.p == 0:
            return x
        if self.mask is None:
            return keras.random.dropout(
                x, self.p, seed=self.seed_generator
            )  # the stock draw, scaled by 1 / (1 - p)
        keep = self.mask
        if keep.ndim == 3:  # one mask per training step
            keep = ops.take(keep, self.step % keep.shape[0], axis=0)
            self.step.assign_add(1)
        return x * ops.cast(keep, x.dtype) / (1 - self.p)  # (B, D) kept units scaled by 1 / (1 - p)


# ----------------------------------------------------------------------------- batch norm
def make_batch_norm(
    num_features: int,
    *,
    momentum: float = 0.1,
    eps: float = 1e-5,
    conv: bool = False,
    dtype: str = "float64",
):
    """The stock layer on channels-last input, (B, D) or (B, H, W, C); `momentum` in torch's sense."""
    layer = keras.layers.BatchNormalization(
        axis=-1, momentum=1 - momentum, epsilon=eps, dtype=dtype
    )
    layer.build((None, num_features) if not conv else (None, None, None, num_features))
    return layer


def canonical_variables(layer: keras.layers.BatchNormalization) -> dict:
    """The layer's variables under the canonical (torch) names: gamma, beta and the moving statistics."""
    return {
        "weight": layer.gamma,
        "bias": layer.beta,
        "running_mean": layer.moving_mean,
        "running_var": layer.moving_variance,
    }


def set_mask(layer: Dropout, mask) -> None:
    """Supply a dropout mask (True = keep): (B, D), or (S, B, D) per step; a traced train step keeps
    the one it saw when it traced."""
    layer.mask = np.asarray(mask)
    layer.step.assign(0)


# ----------------------------------------------------------------------------- L2 penalty
def l2_penalty(variables, l2: float):
    """(l2 / 2) * the sum of every squared trainable variable: a term of the loss.

    Not keras.regularizers.L2(l2), which adds l2 * sum(w^2) without the 1/2, and only per layer."""
    return 0.5 * l2 * sum(ops.sum(ops.square(v)) for v in variables)
