"""Perceptron, from scratch in NumPy: one neuron, a step output, Rosenblatt's mistake-driven rule.

Rosenblatt (1958), "The perceptron: a probabilistic model for information storage and organization
in the brain". There is no loss and no gradient: after each sample, w += lr (y - ŷ) x and
b += lr (y - ŷ), which changes nothing when the prediction was right.
Tie rule, the same in all four files: ŷ = 1 if w·x + b > 0, else 0 (a point on the line is 0).
"""

from __future__ import annotations

import numpy as np

from scratch.layers import Dense
from tasks import weights
from tasks.configs import PerceptronConfig
from tasks.data import Dataset, epoch_order


# ----------------------------------------------------------------------------- layers
def step(z):
    """Heaviside step with the tie rule: 1 where z > 0, 0 where z <= 0."""
    return (z > 0).astype(z.dtype)


# ----------------------------------------------------------------------------- model
class Perceptron:
    """One neuron: a weighted sum, then a step."""

    def __init__(self, cfg: PerceptronConfig, *, rng: np.random.Generator, dtype=np.float64):
        self.cfg = cfg
        self.neuron = Dense(cfg.in_features, 1, rng=rng, dtype=dtype)  # forward only: no gradient

    def forward(self, x):
        return step(self.neuron.forward(x))[:, 0]  # (B, 1) -> (B,): 0.0 or 1.0 in the model's dtype


def create_model(cfg: PerceptronConfig, *, seed: int, dtype: str = "float64") -> Perceptron:
    return Perceptron(cfg, rng=np.random.default_rng(seed), dtype=np.dtype(dtype))


# ----------------------------------------------------------------------------- canonical weights
def load_canonical(model: Perceptron, params: dict[str, np.ndarray]) -> None:
    """Copy canonical weights in; scratch *is* the canonical layout, so no transform."""
    weights.check(params, model.cfg.param_shapes(), model.neuron.params["weight"].dtype)
    for key in model.neuron.params:
        model.neuron.params[key] = np.array(params[f"neuron.{key}"])


def export_canonical(model: Perceptron) -> dict[str, np.ndarray]:
    return {f"neuron.{key}": value.copy() for key, value in model.neuron.params.items()}


# ----------------------------------------------------------------------------- prediction
def predict(model: Perceptron, x) -> np.ndarray:
    """Class labels (B,) as int64."""
    return model.forward(x.astype(model.neuron.params["weight"].dtype)).astype(np.int64)


# ----------------------------------------------------------------------------- train step
def train_step(model: Perceptron, x, y, lr) -> int:
    """One sample (x (D,), y 0.0 or 1.0): the perceptron rule in place. Returns 1 on a mistake."""
    error = (
        y - model.forward(x[None])[0]
    )  # (1, D) -> (1,) -> (): +1 missed a 1, -1 missed a 0, 0 right
    # lr * x first: times error (+1, 0 or -1) it stays exact, so an FMA (XLA fuses one) rounds alike
    model.neuron.params["weight"] += error * (lr * x)  # (D,) broadcasts over (1, D)
    model.neuron.params["bias"] += lr * error  # () broadcasts over (1,)
    return int(error != 0)


def train_epoch(model: Perceptron, samples, lr) -> int:
    """One pass over (x, y) samples in the given order; returns the number of mistakes."""
    return sum(train_step(model, x, y, lr) for x, y in samples)


def train(
    model: Perceptron, data: Dataset, *, epochs: int, lr: float, seed: int, on_epoch=None
) -> list[int]:
    """Per-sample updates in the shared shuffled order; stops after the first epoch with no mistake.

    Returns the number of mistakes of each epoch run; a last entry of 0 means converged.
    """
    dtype = model.neuron.params["weight"].dtype
    x, y = data.x_train.astype(dtype), data.y_train.astype(dtype)
    lr = np.asarray(lr, dtype)  # the step size in the model's dtype, as in the other three files
    history = []
    for epoch in range(epochs):
        order = epoch_order(len(x), seed, epoch)
        history.append(train_epoch(model, zip(x[order], y[order]), lr))
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
