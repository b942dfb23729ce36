"""Initialisers: each framework's named He and Xavier/Glorot initialiser draws weights whose mean and
variance match the formula within sampling error over large dense and conv layers (fans computed
from each framework's own kernel layout), uniform ones fill exactly their bound, and the truncation
Keras and JAX apply to their "normal" initialisers (and torch does not) is the documented one."""

from __future__ import annotations

import numpy as np
import pytest

from scratch.initializers import fans, std_and_bound
from tasks.configs import INITS, LeNet5Config, MLPConfig
from tasks.registry import FRAMEWORKS, load_impl

SHAPES = {
    "dense": (512, 1024),
    "conv": (64, 32, 5, 5),
}  # canonical (out, in) and (out_c, in_c, kh, kw)
TRUNCATION = 2 / 0.87962566103423978  # |w| <= 2 sigma' with sigma' = sigma / 0.8796: Keras and JAX


def draw(framework: str, name: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """One weight drawn by the framework's own initialiser, returned in the canonical layout."""
    fan_in = fans(shape)[0]
    if framework == "scratch":
        from scratch import initializers

        return initializers.initialize(name, shape, rng=np.random.default_rng(seed))
    if framework == "torch_impl":
        import torch

        from torch_impl import initializers

        w = torch.empty(shape, dtype=torch.float64)
        return initializers.initialize_(
            w, name, generator=torch.Generator().manual_seed(seed)
        ).numpy()
    # Keras and Flax kernels: dense (in, out), conv (kh, kw, in_c, out_c)
    native = shape[::-1] if len(shape) == 2 else (*shape[2:], shape[1], shape[0])
    to_canonical = (1, 0) if len(shape) == 2 else (3, 2, 0, 1)
    if framework == "tf_impl":
        import keras

        from tf_impl import initializers

        init = initializers.make_initializer(
            name, seed=keras.random.SeedGenerator(seed), fan_in=fan_in
        )
        return np.asarray(init(native, dtype="float64")).transpose(to_canonical)
    import jax
    import jax.numpy as jnp

    from jax_impl import initializers

    init = initializers.make_initializer(name, fan_in=fan_in)
    return np.asarray(init(jax.random.key(seed), native, jnp.float64)).transpose(to_canonical)


@pytest.mark.parametrize("layer", list(SHAPES))
@pytest.mark.parametrize("name", INITS)
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_statistics_match_the_formula(framework, name, layer):
    shape = SHAPES[layer]
    w = draw(framework, name, shape)
    assert w.shape == shape and w.dtype == np.float64
    std, bound = std_and_bound(name, shape)
    n = w.size
    # mean within 5 standard errors of 0; variance within 5 standard errors of the formula
    assert abs(w.mean()) < 5 * std / np.sqrt(n), (w.mean(), std)
    variance_se = np.std(w**2) / np.sqrt(n)
    assert abs(w.var() - std**2) < 5 * variance_se, (
        f"variance {w.var():.4e}, formula {std**2:.4e} +- {variance_se:.1e}"
    )
    if name.endswith("uniform"):
        assert np.max(np.abs(w)) <= bound and np.max(np.abs(w)) > 0.999 * bound, (
            np.max(np.abs(w)),
            bound,
        )


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("name", ["he_normal", "xavier_normal"])
def test_normal_truncation_is_the_documented_one(framework, name):
    """Keras and JAX truncate at 2 sigma' (sigma' = sigma / 0.8796, so the variance still matches);
    torch's kaiming_normal_ / xavier_normal_ and the scratch rule are untruncated."""
    shape = SHAPES["dense"]
    w = draw(framework, name, shape)
    std, _ = std_and_bound(name, shape)
    largest = np.max(np.abs(w)) / std
    if framework in ("tf_impl", "jax_impl"):
        assert largest <= TRUNCATION * (1 + 1e-12), largest
        assert largest > 0.99 * TRUNCATION  # and the cut is really there, not further in
    else:
        assert largest > 3.5, largest  # 500k untruncated normals reach beyond 3.5 sigma


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_draws_are_seeded(framework):
    a, b, c = (draw(framework, "he_uniform", (8, 6), seed=s) for s in (3, 3, 4))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_a_wrong_fan_is_caught():
    """The check can fail: a fan_out variance (2 / fan_out) on a non-square layer is detected."""
    shape = SHAPES["dense"]  # fan_in 1024, fan_out 512
    w = np.random.default_rng(0).normal(0.0, np.sqrt(2 / shape[0]), shape)
    std, _ = std_and_bound("he_normal", shape)
    variance_se = np.std(w**2) / np.sqrt(w.size)
    assert abs(w.var() - std**2) > 5 * variance_se


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("name", ["he_uniform", "xavier_uniform"])
def test_mlp_config_selects_the_initialiser(framework, name):
    """MLPConfig.init reaches create_model: weights inside the rule's bound, biases zero."""
    cfg = MLPConfig(64, (128,), 10, "relu", "softmax", init=name)
    impl = load_impl(framework, "mlp")
    params = impl.export_canonical(impl.create_model(cfg, seed=0, dtype="float64"))
    for key, value in params.items():
        if key.endswith(".weight"):
            _, bound = std_and_bound(name, value.shape)
            assert np.max(np.abs(value)) <= bound and np.max(np.abs(value)) > 0.9 * bound, key
        else:
            assert not np.any(value), f"{key} should start at zero"


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("name", ["he_uniform", "xavier_uniform"])
def test_lenet5_config_selects_the_initialiser(framework, name):
    """LeNet5Config.init reaches every conv and dense layer: fans from the conv kernel's receptive field."""
    impl = load_impl(framework, "lenet5")
    params = impl.export_canonical(
        impl.create_model(LeNet5Config(init=name), seed=0, dtype="float64")
    )
    for key, value in params.items():
        if key.endswith(".weight"):
            _, bound = std_and_bound(
                name, value.shape
            )  # conv1: fan_in 1 * 5 * 5 = 25, fan_out 6 * 25
            assert np.max(np.abs(value)) <= bound and np.max(np.abs(value)) > 0.8 * bound, key
        else:
            assert not np.any(value), f"{key} should start at zero"
