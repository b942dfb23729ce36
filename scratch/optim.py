"""Optimisers written out in NumPy: SGD, momentum, Nesterov, RMSprop, Adam and AdamW, a linear
warmup then cosine or step decay schedule, and gradient clipping by global norm.

Robbins & Monro (1951) SGD; Polyak (1964) momentum; Sutskever et al. (2013) Nesterov momentum;
Tieleman & Hinton (2012) RMSprop; Kingma & Ba (2015) Adam; Loshchilov & Hutter (2019) AdamW and
(2017) cosine annealing; Goyal et al. (2017) warmup; Pascanu et al. (2013) norm clipping.
The formulas are torch's (the `torch.optim` docs), the reference the other three frameworks are
configured to match; where a stock optimiser cannot match, docs/PORTING.md says by how much.
A model exposes `layers()`: layer objects with `params` and `grads` dicts (scratch/layers.py);
the optimiser reads the gradients, writes new parameters into the same dicts, and `zero_grad()`
resets the gradients before the next backward, which adds to them (torch's optimizer API).
"""

from __future__ import annotations

import numpy as np

from scratch.layers import zero_grad
from tasks.configs import OptimizerConfig


# ----------------------------------------------------------------------------- clipping
def clip_by_global_norm(grads: list[np.ndarray], max_norm: float) -> list[np.ndarray]:
    """Scale every gradient by min(1, max_norm / ||all gradients||): the direction is kept."""
    norm = np.sqrt(sum(np.sum(g * g) for g in grads))  # one norm over every tensor, not one each
    scale = min(1.0, max_norm / norm) if norm > 0 else 1.0
    return [g * scale for g in grads]


# ----------------------------------------------------------------------------- optimisers
def as_config(lr: float | OptimizerConfig, **defaults) -> OptimizerConfig:
    """An OptimizerConfig as given; a bare learning rate becomes one (SGD unless `defaults`)."""
    return lr if isinstance(lr, OptimizerConfig) else OptimizerConfig(lr=lr, **defaults)


class Optimizer:
    """The shared loop: clip, look up the scheduled lr, then one `update` per parameter tensor."""

    def __init__(self, model, spec: OptimizerConfig):
        self.spec = spec
        self.layers = list(model.layers().values())
        # (params, grads, key): the dicts are the layers' own, so loads and steps stay visible
        self.slots = [
            (layer.params, layer.grads, key) for layer in self.layers for key in layer.params
        ]
        self.state = [{} for _ in self.slots]
        self.t = 0  # updates done so far

    def zero_grad(self):
        """Zero every gradient before the next backward, which adds to them."""
        zero_grad(self.layers)

    def step(self):
        grads = [grads[key] for _, grads, key in self.slots]
        if self.spec.clip_norm is not None:
            grads = clip_by_global_norm(grads, self.spec.clip_norm)
        lr = self.spec.learning_rate(self.t)  # warmup, then cosine or step decay (tasks.configs)
        self.t += 1
        for (params, _, key), g, state in zip(self.slots, grads, self.state):
            params[key] = self.update(params[key], g, state, lr)

    def update(self, p, g, state, lr):
        raise NotImplementedError


class SGD(Optimizer):
    """p -= lr * g; with momentum v = mu v + g, p -= lr v; Nesterov p -= lr (g + mu v)."""

    def update(self, p, g, state, lr):
        if self.spec.name == "sgd":
            return p - lr * g
        mu = self.spec.momentum
        v = state["v"] = mu * state.get("v", 0.0) + g  # torch's form: lr applied outside v
        return p - lr * (g + mu * v) if self.spec.name == "nesterov" else p - lr * v


class RMSprop(Optimizer):
    """s = rho s + (1 - rho) g^2; p -= lr g / (sqrt(s) + eps): epsilon outside the square root."""

    def update(self, p, g, state, lr):
        rho = self.spec.rho
        s = state["s"] = rho * state.get("s", 0.0) + (1 - rho) * g * g
        return p - lr * g / (np.sqrt(s) + self.spec.eps)


class Adam(Optimizer):
    """Bias-corrected moments m_hat, v_hat; p -= lr m_hat / (sqrt(v_hat) + eps).

    AdamW first shrinks p by the decoupled decay lr * weight_decay (it never enters m or v)."""

    def update(self, p, g, state, lr):
        b1, b2 = self.spec.beta1, self.spec.beta2
        if self.spec.name == "adamw":
            p = p * (1 - lr * self.spec.weight_decay)
        m = state["m"] = b1 * state.get("m", 0.0) + (1 - b1) * g
        v = state["v"] = b2 * state.get("v", 0.0) + (1 - b2) * g * g
        m_hat, v_hat = m / (1 - b1**self.t), v / (1 - b2**self.t)  # self.t already counts this step
        return p - lr * m_hat / (np.sqrt(v_hat) + self.spec.eps)


OPTIMIZERS = {
    "sgd": SGD,
    "momentum": SGD,
    "nesterov": SGD,
    "rmsprop": RMSprop,
    "adam": Adam,
    "adamw": Adam,
}


def make_optimizer(model, spec: OptimizerConfig) -> Optimizer:
    return OPTIMIZERS[spec.name](model, spec)
