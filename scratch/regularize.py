"""Dropout and batch normalisation written out in NumPy, forward and backward, train and eval modes.

Srivastava et al. (2014), "Dropout: a simple way to prevent neural networks from overfitting":
inverted dropout, kept units scaled by 1 / (1 - p) in training so evaluation is the identity.
Ioffe & Szegedy (2015), "Batch normalization": normalise by the batch's mean and (biased) variance
in training; keep running averages for evaluation. Running statistics follow torch: `momentum` is
the weight of the *new* batch, and the running variance takes the unbiased batch variance.
"""

from __future__ import annotations

import numpy as np


# ----------------------------------------------------------------------------- dropout
class Dropout:
    """Inverted dropout; `mask` (True = keep), when set, replaces the random draw (for parity tests):
    one (B, D) mask for every training call, or a (S, B, D) stack whose mask `step % S` the next call uses."""

    def __init__(self, p: float, *, rng: np.random.Generator):
        self.p, self.rng = p, rng
        self.training = True
        self.mask: np.ndarray | None = None
        self.step = 0  # training calls made with a supplied stack
        self.cache: dict[str, np.ndarray] = {}

    def forward(self, x):
        if not self.training or self.p == 0:
            self.cache = {"scale": None}
            return x
        if self.mask is None:
            keep = self.rng.random(x.shape) >= self.p
        elif self.mask.ndim == 3:  # one mask per training step
            keep, self.step = self.mask[self.step % len(self.mask)], self.step + 1
        else:
            keep = self.mask
        scale = keep / (1 - self.p)  # (B, D) of 0 and 1 / (1 - p)
        self.cache = {"scale": scale}
        return x * scale

    def backward(self, dy):
        scale = self.cache["scale"]
        return dy if scale is None else dy * scale


# ----------------------------------------------------------------------------- batch norm
class BatchNorm:
    """Batch normalisation of dense (B, D) input over B, or conv (B, C, H, W) input over B, H, W."""

    def __init__(
        self, num_features: int, *, momentum: float = 0.1, eps: float = 1e-5, dtype=np.float64
    ):
        self.momentum, self.eps = momentum, eps
        self.params = {
            "weight": np.ones(num_features, dtype),
            "bias": np.zeros(num_features, dtype),
        }  # gamma, beta
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}
        self.buffers = {
            "running_mean": np.zeros(num_features, dtype),
            "running_var": np.ones(num_features, dtype),
        }
        self.training = True
        self.cache: dict[str, np.ndarray] = {}

    @staticmethod
    def axes(x) -> tuple[int, ...]:
        return (0,) if x.ndim == 2 else (0, 2, 3)  # every axis but the feature / channel axis

    @staticmethod
    def per_feature(v, x):
        return (
            v if x.ndim == 2 else v[None, :, None, None]
        )  # (C,) -> (1, C, 1, 1) against (B, C, H, W)

    def forward(self, x):
        axes = self.axes(x)
        if self.training:
            mean, var = x.mean(axis=axes), x.var(axis=axes)  # biased variance normalises the batch
            n = x.size // mean.size
            m = self.momentum
            self.buffers["running_mean"] = (1 - m) * self.buffers["running_mean"] + m * mean
            self.buffers["running_var"] = (1 - m) * self.buffers["running_var"] + m * var * n / (
                n - 1
            )  # unbiased
        else:
            mean, var = self.buffers["running_mean"], self.buffers["running_var"]
        inv_std = 1 / np.sqrt(var + self.eps)
        x_hat = (x - self.per_feature(mean, x)) * self.per_feature(inv_std, x)
        self.cache = {"x_hat": x_hat, "inv_std": inv_std}
        return self.per_feature(self.params["weight"], x) * x_hat + self.per_feature(
            self.params["bias"], x
        )

    def backward(self, dy):
        x_hat, inv_std = self.cache["x_hat"], self.cache["inv_std"]
        axes = self.axes(dy)
        self.grads["weight"] = (dy * x_hat).sum(axis=axes)
        self.grads["bias"] = dy.sum(axis=axes)
        dx_hat = dy * self.per_feature(self.params["weight"], dy)
        if not self.training:  # the statistics are constants in eval mode
            return dx_hat * self.per_feature(inv_std, dy)
        n = dy.size // inv_std.size
        # the mean and variance depend on every x of the batch: d x = (n dx_hat - sum dx_hat - x_hat sum dx_hat x_hat) / (n std)
        sum_dx_hat = self.per_feature(dx_hat.sum(axis=axes), dy)
        sum_dx_hat_x_hat = self.per_feature((dx_hat * x_hat).sum(axis=axes), dy)
        return (
            (n * dx_hat - sum_dx_hat - x_hat * sum_dx_hat_x_hat) * self.per_feature(inv_std, dy) / n
        )


def set_mask(layer: Dropout, mask) -> None:
    """Supply a dropout mask (True = keep) in place of the random draw: (B, D), or (S, B, D) per step."""
    layer.mask, layer.step = np.asarray(mask), 0


# ----------------------------------------------------------------------------- L2 penalty
def l2_penalty(layers, l2: float) -> float:
    """(l2 / 2) * the sum of every squared parameter: a term of the loss (not decoupled weight decay)."""
    return 0.5 * l2 * sum(float(np.sum(v * v)) for layer in layers for v in layer.params.values())


def add_l2_gradient(layers, l2: float) -> None:
    """The penalty's gradient, l2 * p, added to each parameter's gradient (after backward)."""
    for layer in layers:
        for key, value in layer.params.items():
            layer.grads[key] = layer.grads[key] + l2 * value
