"""jax.nn.initializers' named initialisers for the rules of scratch/initializers.py.

He et al. (2015): `he_normal` / `he_uniform`; Glorot & Bengio (2010): `glorot_normal` / `glorot_uniform`.
As in Keras, JAX's "normal" ones are truncated at two standard deviations with the variance kept.
Fans come from the kernel layout: in_axis=-2, out_axis=-1, the rest receptive field, which fits
Flax's dense (in, out) and conv (kh, kw, in_c, out_c).
"""

from __future__ import annotations

import jax

INITIALIZERS = {
    "he_normal": jax.nn.initializers.he_normal,
    "he_uniform": jax.nn.initializers.he_uniform,
    "xavier_normal": jax.nn.initializers.glorot_normal,
    "xavier_uniform": jax.nn.initializers.glorot_uniform,
}


# ----------------------------------------------------------------------------- sampling
def make_initializer(name: str, *, fan_in: int):
    """The named initializer (key, shape, dtype) -> array; "uniform" is U(±1/sqrt(fan_in))."""
    if name == "uniform":
        bound = 1.0 / fan_in**0.5
        return lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, -bound, bound)
    return INITIALIZERS[name]()
