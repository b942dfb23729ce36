"""keras.initializers' named initialisers for the rules of scratch/initializers.py.

He et al. (2015): `HeNormal` / `HeUniform`; Glorot & Bengio (2010): `GlorotNormal` / `GlorotUniform`.
Keras's "normal" ones are *truncated* at two standard deviations, with the standard deviation
raised by 1 / 0.8796 so the variance is still the formula's (docs/PORTING.md).
Keras computes fans from its own kernel layouts, dense (in, out) and conv (kh, kw, in_c, out_c).
"""

from __future__ import annotations

import keras

INITIALIZERS = {
    "he_normal": keras.initializers.HeNormal,
    "he_uniform": keras.initializers.HeUniform,
    "xavier_normal": keras.initializers.GlorotNormal,
    "xavier_uniform": keras.initializers.GlorotUniform,
}


# ----------------------------------------------------------------------------- sampling
def make_initializer(
    name: str, *, seed: keras.random.SeedGenerator, fan_in: int
) -> keras.initializers.Initializer:
    """The named initializer; "uniform" is torch's nn.Linear rule U(±1/sqrt(fan_in))."""
    if name == "uniform":
        bound = 1.0 / fan_in**0.5
        return keras.initializers.RandomUniform(-bound, bound, seed=seed)
    return INITIALIZERS[name](seed=seed)
