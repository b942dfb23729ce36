"""Shared helpers for the parity tests: test ids and the cached per-framework computations."""

from __future__ import annotations

import pytest

from tasks import parity

FRAMEWORK_IDS = ("torch_impl", "tf_impl", "jax_impl")


def star_params(model: str):
    """(case, framework, dtype, tensor) for every check of `model`, with ids like
    `mlp[softmax-relu]-tf_impl-float64-grad.hidden.0.weight`."""
    out = []
    for case in parity.CASES[model]:
        for framework in FRAMEWORK_IDS:
            for dtype in getattr(case, "dtypes", parity.DTYPES):  # a case may run float64 only
                for tensor in parity.expected_tensors(case):
                    out.append(pytest.param(case, framework, dtype, tensor, id=f"{case.id}-{framework}-{dtype}-{tensor}"))
    return out
