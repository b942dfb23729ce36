"""Canonical weights: a flat dict of named NumPy arrays in the scratch layout, saved as safetensors.

The scratch layout follows the lesson: dense weight `(out, in)`, conv kernel `(out_c, in_c, kh, kw)`.
Each framework converts to and from it in one `load_canonical` / `export_canonical` pair; the
transforms are tabulated in docs/PORTING.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

Params = dict[str, np.ndarray]
Shapes = Mapping[str, tuple[int, ...]]


class CanonicalWeightsError(ValueError):
    """Canonical weights do not match what a model expects; names every offending tensor."""


def check(params: Mapping[str, np.ndarray], shapes: Shapes, dtype) -> None:
    """Raise one CanonicalWeightsError listing every missing, extra, mis-shaped or mis-typed tensor."""
    dtype = np.dtype(dtype)
    problems = []
    for name in sorted(set(shapes) - set(params)):
        problems.append(f"missing {name}: expected shape {tuple(shapes[name])} {dtype}")
    for name in sorted(set(params) - set(shapes)):
        problems.append(
            f"extra {name}: shape {tuple(np.shape(params[name]))}, not a parameter of this model"
        )
    for name in sorted(set(params) & set(shapes)):
        value = params[name]
        actual_shape, actual_dtype = tuple(np.shape(value)), np.asarray(value).dtype
        if actual_shape != tuple(shapes[name]):
            problems.append(f"{name}: expected shape {tuple(shapes[name])}, got {actual_shape}")
        if actual_dtype != dtype:
            problems.append(f"{name}: expected dtype {dtype}, got {actual_dtype}")
    if problems:
        raise CanonicalWeightsError(
            f"{len(problems)} problem(s) in canonical weights: " + "; ".join(problems)
        )


def save(path: str | Path, params: Mapping[str, np.ndarray]) -> None:
    """Write canonical weights to a safetensors file."""
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in params.items()}, str(path))


def load(path: str | Path) -> Params:
    """Read canonical weights from a safetensors file."""
    from safetensors.numpy import load_file

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such canonical weights file")
    return dict(load_file(str(path)))


def cast(params: Mapping[str, np.ndarray], dtype) -> Params:
    """A copy of `params` in `dtype` (float64 master weights -> float32 runs)."""
    return {k: np.asarray(v, dtype=dtype).copy() for k, v in params.items()}


def init_uniform(shapes: Shapes, seed: int, dtype=np.float64, nonzero_bias: bool = True) -> Params:
    """Seeded canonical init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for every tensor, torch's default rule.

    fan_in is the product of all but the first axis of a weight, (out, in, ...) -> in * ...;
    a 1-D tensor (a bias) takes the fan_in of the weight that precedes it in `shapes`.
    Biases are non-zero so a converter that drops or doubles a bias fails parity.
    """
    rng = np.random.default_rng(seed)
    params, fan_in = {}, 1
    for name, shape in shapes.items():
        if len(shape) >= 2:
            fan_in = int(np.prod(shape[1:]))
        bound = 1.0 / np.sqrt(fan_in)
        value = rng.uniform(-bound, bound, size=shape)
        if len(shape) == 1 and not nonzero_bias:
            value = np.zeros(shape)
        params[name] = value.astype(dtype)
    return params
