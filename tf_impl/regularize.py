"""Batch normalisation and the L2 penalty in Keras 3: the stock keras.layers.BatchNormalization
(`training=True` / `False` in call switches the mode) and keras.regularizers.L2. Dropout is the
stock keras.layers.Dropout, built by the models themselves.

Ioffe & Szegedy (2015) batch normalisation; Srivastava et al. (2014) dropout.
Keras's BatchNormalization `momentum` weights the *old* average (default 0.99), so torch's 0.1 is
Keras's 0.9, and its running variance takes the biased batch variance (docs/PORTING.md).
"""

from __future__ import annotations

import keras

from tf_impl import compat


# ----------------------------------------------------------------------------- batch norm
def make_batch_norm(
    num_features: int,
    *,
    momentum: float = 0.1,
    eps: float = 1e-5,
    conv: bool = False,
    dtype: str = "float64",
    regularizer: keras.regularizers.Regularizer | None = None,
):
    """The stock layer on channels-last input, (B, D) or (B, H, W, C); `momentum` in torch's sense."""
    layer = keras.layers.BatchNormalization(
        axis=-1,
        momentum=1 - momentum,
        epsilon=eps,
        gamma_regularizer=regularizer,
        beta_regularizer=regularizer,
        dtype=dtype,
    )
    layer.build((None, num_features) if not conv else (None, None, None, num_features))
    return layer


def canonical_variables(layer: keras.layers.BatchNormalization) -> dict:
    """The layer's variables under the canonical (torch) names: gamma, beta and the moving statistics."""
    return {
        "weight": layer.gamma,
        "bias": layer.beta,
        "running_mean": layer.moving_mean,
        "running_var": layer.moving_variance,
    }


# ----------------------------------------------------------------------------- L2 penalty
def l2_regularizer(l2: float | None) -> keras.regularizers.Regularizer | None:
    """The penalty (l2 / 2) * sum p^2 as the stock regularizer of every trainable variable; Keras
    adds each layer's to the loss that fit minimises. keras.regularizers.L2(l) is l * sum p^2: no 1/2.
    compat.L2 is the stock one with a float64-exact factor."""
    return compat.L2(l2 / 2) if l2 else None
