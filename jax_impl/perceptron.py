"""Perceptron in JAX with Flax NNX: an nnx.Linear neuron, a step output, the rule as a pure function under lax.scan.

Rosenblatt (1958), "The perceptron: a probabilistic model for information storage and organization
in the brain". There is no loss and no gradient: after each sample, w += lr (y - ŷ) x and
b += lr (y - ŷ), which changes nothing when the prediction was right.
Tie rule, the same in all four files: ŷ = 1 if w·x + b > 0, else 0 (a point on the line is 0).
nnx.Linear stores its kernel (in, out): the converters transpose to and from the canonical (out, in).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax_impl import porting
from tasks import weights
from tasks.configs import PerceptronConfig
from tasks.data import Dataset, epoch_order


# ----------------------------------------------------------------------------- layers
def step(z):
    """Heaviside step with the tie rule: 1 where z > 0, 0 where z <= 0."""
    return (z > 0).astype(z.dtype)


# ----------------------------------------------------------------------------- model
class Perceptron(nnx.Module):
    """One neuron: a weighted sum, then a step."""

    def __init__(self, cfg: PerceptronConfig, *, rngs: nnx.Rngs, dtype=jnp.float64):
        self.cfg = cfg
        bound = 1.0 / np.sqrt(
            cfg.in_features
        )  # torch's nn.Linear default range, so every framework starts alike
        init = lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, -bound, bound)
        self.neuron = nnx.Linear(
            cfg.in_features,
            1,
            kernel_init=init,
            bias_init=init,
            dtype=dtype,
            param_dtype=dtype,
            rngs=rngs,
        )

    def __call__(self, x):
        return step(self.neuron(x))[
            :, 0
        ]  # (B, D) -> (B, 1) -> (B,): 0.0 or 1.0 in the model's dtype


def create_model(cfg: PerceptronConfig, *, seed: int, dtype: str = "float64") -> Perceptron:
    return Perceptron(cfg, rngs=nnx.Rngs(params=seed), dtype=jnp.dtype(dtype))


# ----------------------------------------------------------------------------- canonical weights
def canonical_layers(model: Perceptron) -> dict:
    """The one stock layer by canonical prefix, with its jax_impl/porting.py function (kernel (in, 1) transposed)."""
    return {"neuron.": ("dense", model.neuron, {})}


def load_canonical(model: Perceptron, params: dict[str, np.ndarray]) -> None:
    weights.check(params, model.cfg.param_shapes(), model.neuron.kernel.dtype)
    porting.load_layers(canonical_layers(model), params)


def export_canonical(model: Perceptron) -> dict[str, np.ndarray]:
    return porting.layers_to_canonical(canonical_layers(model))


# ----------------------------------------------------------------------------- prediction
def predict(model: Perceptron, x) -> np.ndarray:
    """Class labels (B,) as int64."""
    return np.asarray(model(jnp.asarray(x, dtype=model.neuron.kernel.dtype)).astype(jnp.int64))


# ----------------------------------------------------------------------------- train step
def train_step(graphdef: nnx.GraphDef, lr, state: nnx.State, sample):
    """One sample (x (D,), y 0.0 or 1.0), as a pure function: old state in, (new state, mistake) out."""
    x, y = sample
    model = nnx.merge(
        graphdef, state, copy=True
    )  # a private model: changing it leaves `state` as it was
    error = y - model(x[None])[0]  # (1, D) -> (1,) -> (): +1 missed a 1, -1 missed a 0, 0 right
    # lr * x first: times error (+1, 0 or -1) it stays exact, so an FMA (XLA fuses one) rounds alike
    model.neuron.kernel[...] += (error * (lr * x))[
        :, None
    ]  # (D,) -> (D, 1), the kernel's (in, out)
    model.neuron.bias[...] += lr * error  # () broadcasts over (1,)
    return nnx.state(model), (error != 0).astype(jnp.int32)


@partial(jax.jit, static_argnums=0)
def train_epoch(graphdef: nnx.GraphDef, state: nnx.State, x, y, lr):
    """One pass over the samples (x (N, D), y (N,)) in the given order, scanned; returns (state, mistakes)."""
    state, mistakes = jax.lax.scan(
        partial(train_step, graphdef, lr), state, (x, y)
    )  # (N,) one flag per sample
    return state, mistakes.sum()


def train(
    model: Perceptron, data: Dataset, *, epochs: int, lr: float, seed: int, on_epoch=None
) -> list[int]:
    """Per-sample updates in the shared shuffled order; stops after the first epoch with no mistake.

    Returns the number of mistakes of each epoch run; a last entry of 0 means converged.
    """
    dtype = model.neuron.kernel.dtype
    x, y = jnp.asarray(data.x_train, dtype=dtype), jnp.asarray(data.y_train, dtype=dtype)
    lr = jnp.asarray(
        lr, dtype=dtype
    )  # the step size in the model's dtype, as in the other three files
    graphdef, state = nnx.split(model)  # the pure-function view of the model: structure + arrays
    history = []
    for epoch in range(epochs):
        order = epoch_order(len(x), seed, epoch)
        state, mistakes = train_epoch(graphdef, state, x[order], y[order], lr)
        nnx.update(model, state)  # write the new arrays back into the model object
        history.append(int(mistakes))
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
