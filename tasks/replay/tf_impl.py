"""The mask-replaying dropout for tf_impl (see tasks/replay/__init__.py): test machinery, kept out
of the models, which build the stock keras.layers.Dropout."""

from __future__ import annotations

import numpy as np

import tf_impl  # noqa: F401  (sets KERAS_BACKEND before keras is imported)

import keras  # isort: skip
import tensorflow as tf  # isort: skip
from keras import ops  # isort: skip


class ReplayDropout(keras.layers.Dropout):
    """keras.layers.Dropout that, once given a keep-mask (True = keep) by `set_mask`, uses it instead
    of a random draw: one (B, D) mask for every training call, or a (S, B, D) stack whose mask
    `step % S` the next training call uses. Without a mask, and in inference, it is the stock layer.
    A tf.function (fit's train function) keeps the mask it saw when it traced; the step is a
    variable, so it counts inside the compiled step."""

    def __init__(self, rate, noise_shape=None, seed=None, **kwargs):
        super().__init__(rate, noise_shape=noise_shape, seed=seed, **kwargs)
        self.mask = None
        # a tf.Variable, not a keras.Variable: the stock layer is built (its state locked) in __init__,
        # and the counter is test bookkeeping, not model state
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")

    def call(self, inputs, training=False):
        if not training or self.mask is None:
            return super().call(inputs, training=training)
        keep = self.mask
        if keep.ndim == 3:  # one mask per training step
            keep = ops.take(keep, self.step % keep.shape[0], axis=0)
            self.step.assign_add(1)
        return inputs * ops.cast(keep, inputs.dtype) / (1 - self.rate)  # (B, D) kept units


def set_mask(layer: ReplayDropout, mask) -> None:
    """Supply a dropout mask (True = keep) in place of the random draw: (B, D), or (S, B, D) per step."""
    layer.mask = np.asarray(mask)
    layer.step.assign(0)


__all__ = ["ReplayDropout", "set_mask"]
