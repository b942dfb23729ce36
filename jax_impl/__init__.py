"""JAX implementations with Flax NNX (nnx.Module.__call__, explicit nnx.Rngs, optax, jit).

float64 must be switched on before any JAX array exists, so it is done here, the one place,
before any module of this package creates one.
"""

import jax

jax.config.update("jax_enable_x64", True)
