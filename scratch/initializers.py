"""Weight initialisers written out in NumPy: He (normal, uniform), Xavier/Glorot (normal, uniform),
and torch's nn.Linear default U(±1/sqrt(fan_in)).

He et al. (2015), "Delving deep into rectifiers": Var(w) = 2 / fan_in keeps ReLU activations' scale.
Glorot & Bengio (2010), "Understanding the difficulty of training deep feedforward neural networks":
Var(w) = 2 / (fan_in + fan_out). A uniform U(-a, a) has variance a^2 / 3, hence a = sqrt(6 / fan ...).
Shapes are canonical, (out, in, ...): fan_in = in * receptive field, fan_out = out * receptive field.
"""

from __future__ import annotations

import numpy as np

from tasks.configs import INITS


# ----------------------------------------------------------------------------- formulas
def fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """(fan_in, fan_out) of a canonical dense (out, in) or conv (out_c, in_c, kh, kw) weight."""
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def std_and_bound(name: str, shape: tuple[int, ...]) -> tuple[float, float]:
    """The target standard deviation and, for a uniform rule, the bound a of U(-a, a)."""
    fan_in, fan_out = fans(shape)
    variance = {
        "he_normal": 2 / fan_in, "he_uniform": 2 / fan_in,
        "xavier_normal": 2 / (fan_in + fan_out), "xavier_uniform": 2 / (fan_in + fan_out),
        "uniform": 1 / (3 * fan_in),  # U(±1/sqrt(fan_in)): a^2 / 3
    }[name]  # fmt: skip
    return float(np.sqrt(variance)), float(np.sqrt(3 * variance))


# ----------------------------------------------------------------------------- sampling
def initialize(
    name: str, shape: tuple[int, ...], *, rng: np.random.Generator, dtype=np.float64
) -> np.ndarray:
    """A weight of canonical `shape` drawn by the named rule (plain, untruncated normals)."""
    if name not in INITS:
        raise ValueError(f"unknown init {name!r}; choose from {', '.join(INITS)}")
    std, bound = std_and_bound(name, shape)
    if name.endswith("normal"):
        return rng.normal(0.0, std, shape).astype(dtype)
    return rng.uniform(-bound, bound, shape).astype(dtype)
