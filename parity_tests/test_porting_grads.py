"""Gradients through the layer-level porting API (issue 14): `<layer>_to_canonical(grads,
grads=True)` is what every model's forward_backward uses, and stock layers are the oracles.

A duplicated bias acts only as the sum of its copies (torch's recurrent `bias_ih + bias_hh`, the
two rows of Keras's GRU bias outside the candidate block), so the gradient of the canonical b_h is
the gradient of *either* copy, not the sum of their gradients. Each test: a stock layer of one
framework with random non-zero weights (both bias copies non-zero), its weights ported to the
other framework's stock layer through canonical, the same loss `sum(outputs * r)` differentiated on
both sides, both gradients brought to canonical with `grads=True`: equal to 1e-12 in float64. The
sum (`grads=False` on gradients) is checked to be wrong, so the flag is needed.
"""

from __future__ import annotations

import numpy as np
import pytest

import jax_impl  # noqa: F401  (float64 in JAX before any array)
import tf_impl  # noqa: F401  (Keras on TensorFlow)

import keras  # isort: skip
import tensorflow as tf  # isort: skip
import torch  # isort: skip

from tf_impl import porting as keras_porting  # isort: skip
from torch_impl import porting as torch_porting  # isort: skip

TOL = 1e-12
B, T, D, H = 2, 5, 3, 4  # batch, time, input features, hidden units
TORCH = {"simple_rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}
KERAS = {"simple_rnn": keras.layers.SimpleRNN, "lstm": keras.layers.LSTM, "gru": keras.layers.GRU}


def torch_grads(layer, canonical, x, r):
    """A stock torch layer loaded from canonical, or random when canonical is None: (its canonical
    weights, the canonical gradients of sum(outputs * r))."""
    module = TORCH[layer](D, H, batch_first=True, dtype=torch.float64)
    if canonical is None:
        rng = np.random.default_rng(1)
        with torch.no_grad():  # every parameter non-zero, bias_hh included
            for p in module.parameters():
                p.copy_(torch.from_numpy(rng.normal(size=tuple(p.shape))))
    else:
        module.load_state_dict(torch_porting.FROM[layer](canonical))
    (module(torch.from_numpy(x))[0] * torch.from_numpy(r)).sum().backward()
    native = {k: p.grad for k, p in module.named_parameters()}
    weights = torch_porting.TO[layer](module.state_dict())
    return weights, native


def keras_grads(layer, canonical, x, r):
    """The same for a stock Keras layer (get_weights() order)."""
    extra = {"unit_forget_bias": False} if layer == "lstm" else {}
    module = KERAS[layer](H, return_sequences=True, dtype="float64", **extra)
    module.build((None, T, D))
    if canonical is None:
        rng = np.random.default_rng(2)  # both rows of the GRU's (2, 3H) bias non-zero
        module.set_weights([rng.normal(size=w.shape) for w in module.get_weights()])
    else:
        module.set_weights(keras_porting.FROM[layer](canonical))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(module(tf.constant(x)) * r)
    native = [g.numpy() for g in tape.gradient(loss, module.trainable_variables)]
    return keras_porting.TO[layer](module.get_weights()), native


def inputs():
    rng = np.random.default_rng(0)
    return rng.normal(size=(B, T, D)), rng.normal(size=(B, T, H))


def assert_same(got, expected):
    assert got.keys() == expected.keys()
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=0, atol=TOL, err_msg=name)


@pytest.mark.parametrize("layer", list(TORCH))
def test_torch_gradients_to_canonical_match_keras(layer):
    """torch (both biases non-zero) -> canonical -> Keras: grad b_h = grad bias_ih on torch's side."""
    x, r = inputs()
    canonical, native = torch_grads(layer, None, x, r)
    _, keras_native = keras_grads(layer, canonical, x, r)
    expected = keras_porting.TO[layer](keras_native, grads=True)
    assert_same(torch_porting.TO[layer](native, grads=True), expected)
    summed = torch_porting.TO[layer](native)  # the weight rule: bias_ih + bias_hh
    assert np.abs(summed["b_h"] - expected["b_h"]).max() > 1e-3


def test_keras_gru_gradients_to_canonical_match_torch():
    """Keras GRU (both bias rows non-zero) -> canonical -> torch: grad b_h is the input row's."""
    x, r = inputs()
    canonical, native = keras_grads("gru", None, x, r)
    _, torch_native = torch_grads("gru", canonical, x, r)
    expected = torch_porting.gru_to_canonical(torch_native, grads=True)
    assert_same(keras_porting.gru_to_canonical(native, grads=True), expected)
    summed = keras_porting.gru_to_canonical(native)  # the weight rule: both rows' z, r blocks
    assert np.abs(summed["b_h"] - expected["b_h"]).max() > 1e-3
