"""Perceptron in Keras 3 (TensorFlow backend): a Dense neuron, a step output, variables assigned with keras.ops.

Rosenblatt (1958), "The perceptron: a probabilistic model for information storage and organization
in the brain". There is no loss and no gradient: after each sample, w += lr (y - ŷ) x and
b += lr (y - ŷ), which changes nothing when the prediction was right.
Tie rule, the same in all four files: ŷ = 1 if w·x + b > 0, else 0 (a point on the line is 0).
keras.layers.Dense stores its kernel (in, out): the converters transpose to and from the
canonical (out, in).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from tasks import weights
from tasks.configs import PerceptronConfig
from tasks.data import Dataset, epoch_order


# ----------------------------------------------------------------------------- layers
def step(z):
    """Heaviside step with the tie rule: 1 where z > 0, 0 where z <= 0."""
    return ops.cast(z > 0, z.dtype)


# ----------------------------------------------------------------------------- model
class Perceptron(keras.Model):
    """One neuron: a weighted sum, then a step."""

    def __init__(
        self, cfg: PerceptronConfig, *, seed: keras.random.SeedGenerator, dtype: str = "float64"
    ):
        super().__init__(dtype=dtype)
        self.cfg = cfg
        bound = 1.0 / np.sqrt(
            cfg.in_features
        )  # torch's nn.Linear default range, so every framework starts alike
        init = keras.initializers.RandomUniform(-bound, bound, seed=seed)
        self.neuron = keras.layers.Dense(
            1, kernel_initializer=init, bias_initializer=init, dtype=dtype, name="neuron"
        )
        self.neuron.build(
            (None, cfg.in_features)
        )  # create the variables now, so canonical weights can load before a call

    def call(self, x, training=False):
        return step(self.neuron(x))[
            :, 0
        ]  # (B, D) -> (B, 1) -> (B,): 0.0 or 1.0 in the model's dtype


def create_model(cfg: PerceptronConfig, *, seed: int, dtype: str = "float64") -> Perceptron:
    return Perceptron(cfg, seed=keras.random.SeedGenerator(seed), dtype=dtype)


# ----------------------------------------------------------------------------- canonical weights
def load_canonical(model: Perceptron, params: dict[str, np.ndarray]) -> None:
    weights.check(params, model.cfg.param_shapes(), model.neuron.kernel.dtype)
    model.neuron.kernel.assign(params["neuron.weight"].T)  # canonical (1, in) -> Keras (in, 1)
    model.neuron.bias.assign(params["neuron.bias"])


def export_canonical(model: Perceptron) -> dict[str, np.ndarray]:
    return {
        "neuron.weight": np.array(
            model.neuron.kernel.numpy().T
        ),  # Keras (in, 1) -> canonical (1, in)
        "neuron.bias": np.array(model.neuron.bias.numpy()),
    }


# ----------------------------------------------------------------------------- prediction
def predict(model: Perceptron, x) -> np.ndarray:
    """Class labels (B,) as int64."""
    return ops.convert_to_numpy(ops.cast(model(x.astype(model.neuron.kernel.dtype)), "int64"))


# ----------------------------------------------------------------------------- train step
@tf.function(
    reduce_retracing=True
)  # no GradientTape and no loss: the variables are assigned directly
def train_step(model: Perceptron, x, y, lr):
    """One sample (x (D,), y 0.0 or 1.0): the perceptron rule in place. Returns 1 on a mistake."""
    error = y - model(x[None])[0]  # (1, D) -> (1,) -> (): +1 missed a 1, -1 missed a 0, 0 right
    kernel, bias = model.neuron.kernel, model.neuron.bias
    # lr * x first: times error (+1, 0 or -1) it stays exact, so an FMA (XLA fuses one) rounds alike
    kernel.assign(
        ops.add(kernel, ops.expand_dims(error * (lr * x), 1))
    )  # (D,) -> (D, 1), the kernel's (in, out)
    bias.assign(ops.add(bias, lr * error))  # () broadcasts over (1,)
    return ops.cast(ops.not_equal(error, 0), "int32")


def train_epoch(model: Perceptron, samples, lr) -> int:
    """One pass over (x, y) samples in the given order; returns the number of mistakes."""
    return sum(int(train_step(model, x, y, lr)) for x, y in samples)


def train(
    model: Perceptron, data: Dataset, *, epochs: int, lr: float, seed: int, on_epoch=None
) -> list[int]:
    """Per-sample updates in the shared shuffled order; stops after the first epoch with no mistake.

    Returns the number of mistakes of each epoch run; a last entry of 0 means converged.
    """
    dtype = model.neuron.kernel.dtype
    x, y = data.x_train.astype(dtype), data.y_train.astype(dtype)
    lr = ops.convert_to_tensor(
        lr, dtype=dtype
    )  # a Python float would become a float32 tensor in a float64 run
    history = []
    for epoch in range(epochs):
        order = epoch_order(len(x), seed, epoch)
        samples = tf.data.Dataset.from_tensor_slices(
            (x[order], y[order])
        )  # unbatched: one sample per element
        history.append(train_epoch(model, samples, lr))
        if on_epoch:
            on_epoch(epoch, history[-1])
        if history[-1] == 0:
            break  # every sample was right, so the rule changed nothing: further epochs would repeat this one
    return history


# ----------------------------------------------------------------------------- evaluation
def evaluate(model: Perceptron, x, y) -> tuple[int, float]:
    """(mistakes, accuracy) on a whole split."""
    wrong = predict(model, x) != y
    return int(wrong.sum()), float(1.0 - wrong.mean())
