"""Perceptron in Keras 3 (TensorFlow backend): a Dense neuron, a step output, and fit with the
perceptron rule as its train_step.

Rosenblatt (1958), "The perceptron: a probabilistic model for information storage and organization
in the brain". There is no loss and no gradient: after each sample, w += lr (y - ŷ) x and
b += lr (y - ŷ), which changes nothing when the prediction was right. That is a plain SGD step
along the direction -(y - ŷ) (x, 1), so the stock SGD applies it.
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
from tasks.configs import OptimizerConfig, PerceptronConfig
from tasks.data import Dataset, batches
from tf_impl import optim, porting, training


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
        self.neuron.build((None, cfg.in_features))  # the variables now, so weights load first
        self.mistakes = keras.metrics.Sum(name="mistakes", dtype=dtype)  # per epoch

    def call(self, x, training=False):
        return step(self.neuron(x))[:, 0]  # (B, D) -> (B, 1) -> (B,): 0.0 or 1.0

    def train_step(self, data):
        """One sample (x (1, D), y (1,)): the perceptron rule in place of a gradient step."""
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        error = y - self(x)  # (1,): +1 missed a 1, -1 missed a 0, 0 right
        # w += lr error x, b += lr error: SGD (w -= lr g) along g = -error (x, 1); error is +1, 0
        # or -1, so g is exact and lr * g rounds once, as in the other three
        direction = [
            -ops.transpose(x) * error,
            -error,
        ]  # (D, 1) like the kernel, (1,) like the bias
        self.optimizer.apply_gradients(zip(direction, [self.neuron.kernel, self.neuron.bias]))
        self.mistakes.update_state(ops.cast(error != 0, self.dtype))
        return {"mistakes": self.mistakes.result()}


def create_model(cfg: PerceptronConfig, *, seed: int, dtype: str = "float64") -> Perceptron:
    return Perceptron(cfg, seed=keras.random.SeedGenerator(seed), dtype=dtype)


# ----------------------------------------------------------------------------- canonical weights
def canonical_layers(model: Perceptron) -> dict:
    """The one stock layer by canonical prefix, with its tf_impl/porting.py function (kernel (in, 1) transposed)."""
    return {"neuron.": ("dense", model.neuron, {})}


def load_canonical(model: Perceptron, params: dict[str, np.ndarray]) -> None:
    weights.check(params, model.cfg.param_shapes(), model.neuron.kernel.dtype)
    porting.load_layers(canonical_layers(model), params)


def export_canonical(model: Perceptron) -> dict[str, np.ndarray]:
    return porting.layers_to_canonical(canonical_layers(model))


# ----------------------------------------------------------------------------- prediction
def predict(model: Perceptron, x) -> np.ndarray:
    """Class labels (B,) as int64."""
    return ops.convert_to_numpy(ops.cast(model(x.astype(model.neuron.kernel.dtype)), "int64"))


# ----------------------------------------------------------------------------- train step
class StopWhenNoMistakes(keras.callbacks.Callback):
    """After an epoch without a mistake the rule changed nothing: later epochs would repeat it."""

    def on_epoch_end(self, epoch, logs=None):
        if logs["mistakes"] == 0:
            self.model.stop_training = True


def samples(x, y, *, seed: int, epochs: int) -> tf.data.Dataset:
    """Every epoch's samples in the shared order, one (x (1, D), y (1,)) per step, gathered up
    front: tf_impl/training.py's stream gathers each batch inside tf.data, which for one-sample
    batches costs more than the rule itself (an epoch 10.0 ms CPU, 4.3 ms so: docs/BENCHMARKS.md)"""
    order = np.concatenate([i for epoch in range(epochs) for i in batches(len(x), 1, seed, epoch)])
    return tf.data.Dataset.from_tensor_slices((x[order], y[order])).batch(1)


def train(
    model: Perceptron, data: Dataset, *, epochs: int, lr: float, seed: int, on_epoch=None
) -> list[int]:
    """Per-sample updates in the shared shuffled order; stops after the first epoch with no mistake.

    Returns the number of mistakes of each epoch run; a last entry of 0 means converged.
    """
    x, y = data.x_train.astype(model.dtype), data.y_train.astype(model.dtype)
    if getattr(model, "steps_per_execution", None) != len(x):
        # every sample of an epoch in one compiled call (steps_per_execution), a step per sample
        optimizer = optim.make_optimizer(model, OptimizerConfig("sgd", lr=lr))
        model.compile(optimizer=optimizer, steps_per_execution=len(x))
    else:  # compiled by an earlier train on this model: fit reuses its traced step
        model.optimizer.learning_rate = lr  # a float64 variable in a float64 model (compat.floatx)
    callbacks = [training.OnEpochEnd(on_epoch, metric="mistakes", kind=int), StopWhenNoMistakes()]
    history = model.fit(
        samples(x, y, seed=seed, epochs=epochs),
        epochs=epochs,
        steps_per_epoch=len(x),
        callbacks=callbacks,
        shuffle=False,  # the samples come in the shared order
        verbose=0,
    )
    return [int(m) for m in history.history["mistakes"]]


# ----------------------------------------------------------------------------- evaluation
def evaluate(model: Perceptron, x, y) -> tuple[int, float]:
    """(mistakes, accuracy) on a whole split."""
    wrong = predict(model, x) != y
    return int(wrong.sum()), float(1.0 - wrong.mean())
