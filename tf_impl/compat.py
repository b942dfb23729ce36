"""What exact float64 needs beyond the stock Keras 3 / TensorFlow API, in one place.

Each entry names the test that fails without it and has a row in docs/PORTING.md ("compat.py").
The model files use the stock layers and call these only where float64 would otherwise be rounded
through float32 somewhere inside Keras or a TF kernel.
"""

from __future__ import annotations

import contextlib
import math

import keras
import numpy as np
from keras import ops


@contextlib.contextmanager
def floatx(dtype: str):
    """`keras.config.set_floatx(dtype)` for the duration of a block, then the previous floatx back.

    compile() builds its loss wrapper and its loss tracker in floatx, and an optimizer keeps a float
    learning rate in a floatx variable: in a float64 run the reported loss would be float32-rounded
    and lr 0.1 would step by 0.10000000149. Without it: parity_tests/test_training.py
    ::test_default_training_is_lockstep_in_float64 (final loss 1e-12) and every float64 `sgd.*`
    trajectory record of test_mlp / test_lenet5 / test_rnn (1e-9)."""
    previous = keras.config.floatx()
    keras.config.set_floatx(dtype)
    try:
        yield
    finally:
        keras.config.set_floatx(previous)


def hyper(value: float, dtype: str):
    """An optimizer hyperparameter Keras keeps exact in a float64 run.

    Keras casts float hyperparameters with `ops.cast(value, dtype)`, and the TF backend turns a
    Python float into a float32 tensor first: momentum 0.9 becomes 0.8999999762. A NumPy float64
    is still a Python float (SGD checks `isinstance(momentum, float)`) and casts exactly.
    Without it: the float64 momentum / RMSprop / Adam records of parity_tests/test_optim.py (1e-9)."""
    return np.float64(value) if dtype == "float64" else value


class LeakyReLU(keras.layers.LeakyReLU):
    """keras.layers.LeakyReLU, exact in float64.

    The stock layer runs TF's LeakyRelu op, whose alpha is a float32 attribute: in float64 the slope
    0.01 becomes 0.009999999776. Without it: the float64 `mlp[softmax-leaky0.2]` records of
    parity_tests/test_mlp.py (1e-10)."""

    def call(self, x):
        return ops.where(x > 0, x, self.negative_slope * x)


def gelu(x, approximate: bool):
    """GELU written with keras.ops. Not ops.gelu / keras.activations.gelu: TF's Gelu kernel casts its
    constants (0.7071..., 0.044715) from float32, so float64 is off by ~5e-9 relative. Without it:
    parity_tests/test_transformer.py::test_tf_gelu_constants_are_float32 and the float64 gelu
    Transformer records (1e-10)."""
    if approximate:
        return 0.5 * x * (1 + ops.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    return 0.5 * x * (1 + ops.erf(x / math.sqrt(2)))


def exact_query_scale(mha: keras.layers.MultiHeadAttention, head_size: int) -> None:
    """keras.layers.MultiHeadAttention scales the query by `ops.cast(1 / sqrt(HS), dtype)`; on the TF
    backend that Python float becomes a float32 tensor first, ~1e-8 off unless sqrt(HS) is a power
    of 2. A float64 NumPy scalar keeps it exact (a private attribute: no public way exists).
    Without it: parity_tests/test_attention.py::test_keras_query_scale_is_exact_in_float64."""
    mha._inverse_sqrt_key_dim = np.float64(1.0 / np.sqrt(head_size))


class L2(keras.regularizers.L2):
    """keras.regularizers.L2, exact in float64.

    The stock penalty is `ops.cast(l2, x.dtype) * sum(x^2)`, and the TF backend turns the Python
    float into a float32 tensor first (0.025 -> 0.0250000004). A Python float times a float64
    tensor converts straight to float64. Without it: the float64 `optim-adam-l2` trajectories of
    parity_tests/test_optim.py (1e-9; 1e-7 off)."""

    def __call__(self, x):
        return self.l2 * ops.sum(ops.square(x))
