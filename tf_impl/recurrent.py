"""Recurrent networks (tanh RNN, LSTM, GRU) in Keras 3 (TensorFlow backend): SimpleRNN / LSTM / GRU
and the step by hand; compile and fit, with the train step written out (the GRU's bias).

Elman (1990), "Finding structure in time"; Hochreiter & Schmidhuber (1997), "Long short-term memory";
Cho et al. (2014), "Learning phrase representations using RNN encoder-decoder" (the GRU).
Keras keeps kernels (D, G*H) and recurrent kernels (H, G*H): the converters transpose. The LSTM's
gate order (i, f, c, o) is the canonical (i, f, g, o); the GRU's is (z, r, h), canonical (r, z, n).
GRU(reset_after=True), the default, is the canonical GRU and keeps two bias rows, (2, 3H);
GRU(reset_after=False) has its own canonical form, one bias (3H,) and no b_hn.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from tasks import weights
from tasks.configs import OptimizerConfig, RNNConfig
from tasks.data import Dataset
from tf_impl import compat, optim, porting, training


# ----------------------------------------------------------------------------- layers
def rnn_step(cell: keras.layers.SimpleRNNCell, x, state):
    """One step, h' = f(W_xh x + W_hh h + b_h), f = the cell's tanh or relu, on its own parameters."""
    (h,) = state
    a = (
        ops.matmul(x, cell.kernel) + ops.matmul(h, cell.recurrent_kernel) + cell.bias
    )  # (B, D) @ (D, H) + (B, H) @ (H, H) -> (B, H)
    h = cell.activation(a)  # keras.activations.tanh or relu
    return (h,)


def lstm_step(cell: keras.layers.LSTMCell, x, state):
    """One step: gates (i, f, g, o), c' = f c + i g, h' = o tanh(c')."""
    h, c = state
    a = (
        ops.matmul(x, cell.kernel) + ops.matmul(h, cell.recurrent_kernel) + cell.bias
    )  # (B, D) @ (D, 4H) + (B, H) @ (H, 4H) -> (B, 4H)
    a_i, a_f, a_g, a_o = ops.split(a, 4, axis=1)  # (B, 4H) -> 4 x (B, H), Keras's (i, f, c, o)
    i, f, g, o = ops.sigmoid(a_i), ops.sigmoid(a_f), ops.tanh(a_g), ops.sigmoid(a_o)
    c = f * c + i * g
    h = o * ops.tanh(c)
    return h, c


def gru_step(cell: keras.layers.GRUCell, x, state):
    """One step: gates (r, z, n), n = tanh(W_in x + b_in + r (W_hn h + b_hn)), h' = (1 - z) n + z h.
    GRU(reset_after=False) resets before the matmul: n = tanh(W_in x + b_in + W_hn (r h))."""
    (h,) = state
    if not cell.reset_after:
        return gru_reset_before_step(cell, x, state)
    x_z, x_r, x_n = ops.split(
        ops.matmul(x, cell.kernel) + cell.bias[0], 3, axis=1
    )  # (B, D) @ (D, 3H) -> 3 x (B, H), Keras's order (z, r, h)
    h_z, h_r, h_n = ops.split(
        ops.matmul(h, cell.recurrent_kernel) + cell.bias[1], 3, axis=1
    )  # (B, H) @ (H, 3H) -> 3 x (B, H)
    r, z = ops.sigmoid(x_r + h_r), ops.sigmoid(x_z + h_z)
    n = ops.tanh(x_n + r * h_n)  # the reset gate scales W_hn h + b_hn, after the matmul
    h = (1 - z) * n + z * h
    return (h,)


def gru_reset_before_step(cell: keras.layers.GRUCell, x, state):
    """GRU(reset_after=False): one bias (3H,), n = tanh(W_in x + b_in + W_hn (r h))."""
    (h,) = state
    x_z, x_r, x_n = ops.split(
        ops.matmul(x, cell.kernel) + cell.bias, 3, axis=1
    )  # (B, D) @ (D, 3H) -> 3 x (B, H), Keras's order (z, r, h)
    hidden = ops.shape(h)[1]
    h_z, h_r = ops.split(
        ops.matmul(h, cell.recurrent_kernel[:, : 2 * hidden]), 2, axis=1
    )  # (B, H) @ (H, 2H) -> 2 x (B, H)
    r, z = ops.sigmoid(x_r + h_r), ops.sigmoid(x_z + h_z)
    n = ops.tanh(x_n + ops.matmul(r * h, cell.recurrent_kernel[:, 2 * hidden :]))  # reset before
    h = (1 - z) * n + z * h
    return (h,)


STEPS = {"rnn": rnn_step, "lstm": lstm_step, "gru": gru_step}
LAYERS = {"rnn": keras.layers.SimpleRNN, "lstm": keras.layers.LSTM, "gru": keras.layers.GRU}


def make_recurrent(
    cfg: RNNConfig,
    *,
    seed: keras.random.SeedGenerator,
    dtype: str,
    in_features: int | None = None,
    name: str = "rnn",
    go_backwards: bool = False,
):
    bound = 1.0 / np.sqrt(cfg.hidden)  # torch's rule, so every framework starts alike
    init = lambda: keras.initializers.RandomUniform(-bound, bound, seed=seed)
    kwargs = dict(
        kernel_initializer=init(),
        recurrent_initializer=init(),
        bias_initializer=init(),
        return_sequences=True,
        return_state=True,
        go_backwards=go_backwards,  # the reverse direction: its outputs come back reversed
        dtype=dtype,
    )
    if cfg.cell == "rnn":
        kwargs["activation"] = cfg.nonlinearity  # "tanh" or "relu"
    if cfg.cell == "gru":
        kwargs["reset_after"] = cfg.reset_after  # False: one bias (3H,), the reset before W_hn
    if cfg.cell == "lstm":
        kwargs["unit_forget_bias"] = (
            False  # True (the default) would add 1 to the initial forget bias
        )
    rnn = LAYERS[cfg.cell](cfg.hidden, name=name, **kwargs)
    rnn.build(
        (None, None, in_features or cfg.in_features)
    )  # create the weights now, so canonical weights can load before a call
    return rnn


def make_layer(cfg: RNNConfig, k: int, *, seed: keras.random.SeedGenerator, dtype: str):
    """Layer k of the stack: a recurrent layer, or Bidirectional(forward, backward) reading the
    sequence both ways and concatenating their outputs (B, T, 2H)."""
    d_in = cfg.in_features if k == 0 else cfg.directions * cfg.hidden
    name = "rnn" if k == 0 else f"rnn_l{k}"  # layer 0 keeps the one-layer model's name
    if not cfg.bidirectional:
        return make_recurrent(cfg, seed=seed, dtype=dtype, in_features=d_in, name=name)
    forward, backward = (
        make_recurrent(cfg, seed=seed, dtype=dtype, in_features=d_in, name=name + n, go_backwards=b)
        for n, b in (("_forward", False), ("_reverse", True))
    )
    layer = keras.layers.Bidirectional(forward, backward_layer=backward, name=name, dtype=dtype)
    layer.build((None, None, d_in))
    return layer


def directions(layer) -> list:
    """A stack layer's recurrent layers: itself, or a Bidirectional's forward and backward."""
    if isinstance(layer, keras.layers.Bidirectional):
        return [layer.forward_layer, layer.backward_layer]
    return [layer]


# ----------------------------------------------------------------------------- model
class RNN(keras.Model):
    """One recurrent layer and a linear head: logits at every step, or at the last step only.

    model(x) returns the logits, (B, T, C) or (B, C); model.logits_and_states(x) returns (logits,
    hidden, state): every step's hidden state (B, T, H) and the final state, (h,) or (h, c).
    """

    def __init__(self, cfg: RNNConfig, *, seed: keras.random.SeedGenerator, dtype: str = "float64"):
        super().__init__(dtype=dtype)
        self.cfg = cfg
        self.step = STEPS[cfg.cell]
        self.rnn = make_layer(cfg, 0, seed=seed, dtype=dtype)
        self.upper = [make_layer(cfg, k, seed=seed, dtype=dtype) for k in range(1, cfg.num_layers)]
        bound = 1.0 / np.sqrt(cfg.hidden)
        init = keras.initializers.RandomUniform(-bound, bound, seed=seed)
        self.head = keras.layers.Dense(
            cfg.n_classes, kernel_initializer=init, bias_initializer=init, dtype=dtype, name="head"
        )
        self.head.build((None, cfg.directions * cfg.hidden))
        # the GRU's recurrent bias row duplicates the input row except in its candidate block: zero the
        # duplicate's gradient, or the bias learns at twice the rate and counts twice in the clipping norm
        self.grad_masks = {}
        for rnn in self.recurrents() if cfg.cell == "gru" and cfg.reset_after else []:
            rnn.cell.bias.assign(
                ops.stack(
                    [
                        rnn.cell.bias[0],
                        ops.concatenate(
                            [ops.zeros(2 * cfg.hidden, dtype), rnn.cell.bias[1, 2 * cfg.hidden :]]
                        ),
                    ]
                )
            )
            self.grad_masks[rnn.cell.bias.path] = np.concatenate(
                [np.ones((1, 3 * cfg.hidden)), np.repeat([[0.0, 0.0, 1.0]], cfg.hidden, axis=1)]
            ).astype(dtype)
        self.batch_loss = training.BatchMeanLoss(dtype)  # what train reports per epoch

    def by_hand(self, x, initial_state=None):
        state = initial_state or tuple(
            ops.zeros((ops.shape(x)[0], self.cfg.hidden), self.dtype)
            for _ in range(2 if self.cfg.cell == "lstm" else 1)
        )
        hs = []
        for t in range(x.shape[1]):
            state = self.step(self.rnn.cell, x[:, t], state)  # (B, D) -> (B, H)
            hs.append(state[0])
        return ops.stack(hs, axis=1), state  # T x (B, H) -> (B, T, H)

    def logits_and_states(self, x, initial_state=None):
        """Logits, every step's hidden state (B, T, H) and the final state: (h,), or (h, c)."""
        if self.cfg.fused:
            hidden, state = self.run(x, initial_state)  # (B, T, D) -> (B, T, dirs*H)
        else:
            hidden, state = self.by_hand(x, initial_state)
        logits = self.head(
            hidden if self.cfg.output == "sequence" else hidden[:, -1]
        )  # (B, T, C) or (B, C)
        return logits, hidden, tuple(state)

    def recurrents(self) -> list:
        """Every layer's recurrent layers, in torch's order (layer by layer, forward then reverse)."""
        return [rnn for layer in [self.rnn, *self.upper] for rnn in directions(layer)]

    def run(self, x, initial_state=None):
        """Layer by layer; a Bidirectional takes [forward states, backward states] and returns
        [outputs, forward states, backward states]."""
        n, finals = len(self.cfg.layer_prefixes()), []
        starts = [initial_state] if n == 1 else [None] * n
        if n > 1 and initial_state is not None:  # (L*dirs, B, H) each: one start per recurrent
            starts = [tuple(s[i] for s in initial_state) for i in range(n)]
        for k, layer in enumerate([self.rnn, *self.upper]):
            mine = starts[k * self.cfg.directions : (k + 1) * self.cfg.directions]
            given = None if mine[0] is None else [s for start in mine for s in start]
            x, *state = layer(x, initial_state=given)  # then h (and c) of each direction, (B, H)
            size = len(state) // self.cfg.directions
            finals += [tuple(state[i : i + size]) for i in range(0, len(state), size)]
        state = finals[0] if n == 1 else tuple(ops.stack(s) for s in zip(*finals))
        return x, state

    def call(self, x, initial_state=None, training=False):
        return self.logits_and_states(x, initial_state)[0]

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        loss = super().compute_loss(x, y, y_pred, sample_weight, training)
        self.batch_loss.update_state(loss)
        return loss

    def train_step(self, data):
        """fit's step, written out for the GRU: its duplicate bias row gets no gradient (grad_masks),
        before the optimizer clips the global gradient norm (global_clipnorm) and steps."""
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            loss = self.compute_loss(x, y, self(x, training=True))
        grads = tape.gradient(loss, self.trainable_variables)
        grads = [
            g * self.grad_masks[v.path] if v.path in self.grad_masks else g
            for g, v in zip(grads, self.trainable_variables)
        ]
        self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
        return {"batch_loss": self.batch_loss.result()}


def create_model(cfg: RNNConfig, *, seed: int, dtype: str = "float64") -> RNN:
    return RNN(cfg, seed=keras.random.SeedGenerator(seed), dtype=dtype)


# ----------------------------------------------------------------------------- canonical weights
PORTING = {"rnn": "simple_rnn", "lstm": "lstm", "gru": "gru"}  # tf_impl/porting.py's layer names
HEAD_NAMES = {"head.weight": "W_hy", "head.bias": "b_y"}  # the dense head's canonical names


def canonical_layers(model: RNN) -> dict:
    """Each stock layer by canonical prefix, with its tf_impl/porting.py function and layout
    (kernels transposed, the GRU's gate blocks (z, r, h) <-> (r, z, n), its two bias rows)."""
    prefixes = zip(model.cfg.layer_prefixes(), model.recurrents())
    layout = {} if model.cfg.reset_after else {"reset_after": False}  # GRU(reset_after=False)
    layers = {p: (PORTING[model.cfg.cell], rnn, layout) for p, rnn in prefixes}
    return {**layers, "head.": ("dense", model.head, {})}


def load_canonical(model: RNN, params: dict[str, np.ndarray]) -> None:
    weights.check(params, model.cfg.param_shapes(), model.head.kernel.dtype)
    head = {k: params[name] for k, name in HEAD_NAMES.items()}
    porting.load_layers(canonical_layers(model), {**params, **head})


def to_canonical(model: RNN, grads: dict | None = None) -> dict[str, np.ndarray]:
    """The weights, or the gradients (tape.gradient of `variables`), in the canonical layout. The
    GRU's b_h is the sum of the two bias rows outside the candidate block; the gradient of that
    sum is the gradient of the input row (tf_impl/porting.py, grads=True)."""
    out = porting.layers_to_canonical(canonical_layers(model), grads)
    return {HEAD_NAMES.get(k, k): v for k, v in out.items()}


def variables(model: RNN) -> dict:
    """Each layer's trainable variables by canonical prefix (what tape.gradient takes)."""
    return {p: layer.trainable_variables for p, (_, layer, _) in canonical_layers(model).items()}


def export_canonical(model: RNN) -> dict[str, np.ndarray]:
    return to_canonical(model)


# ----------------------------------------------------------------------------- loss
def make_loss(dtype: str) -> keras.losses.Loss:
    """Mean cross-entropy from logits over every scored position, in `dtype`."""
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype=dtype)


def forward_backward(model: RNN, x, y, initial_state=None) -> dict[str, np.ndarray]:
    """Outputs, states, loss and every gradient in the canonical layout (what the parity tests
    compare); from a given initial state (h0,) or (h0, c0), its gradients grad.h0 (and grad.c0) too."""
    x, y = tf.constant(x), tf.constant(y)
    initial_state = initial_state and tuple(tf.constant(s) for s in initial_state)
    with tf.GradientTape() as tape:
        tape.watch([x, *(initial_state or ())])
        logits, hidden, state = model.logits_and_states(x, initial_state)
        loss = make_loss(model.dtype)(y, logits)
    dx, grads, dstate = tape.gradient(loss, [x, variables(model), list(initial_state or ())])
    out = {"output": logits, "loss": loss, "hidden": hidden, "h_n": state[0]}
    if model.cfg.cell == "lstm":
        out["c_n"] = state[1]
    out = {k: np.asarray(v) for k, v in out.items()}
    grads = {f"grad.{k}": g for k, g in to_canonical(model, grads).items()}
    grads |= {n: d.numpy() for n, d in zip(("grad.h0", "grad.c0"), dstate)}  # none from zeros
    return {**out, "grad.input": dx.numpy(), **grads}


def predict_logits(model: RNN, x) -> np.ndarray:
    """Logits for a batch, as NumPy (what `rosetta sample` draws from)."""
    return np.asarray(model(x.astype(model.dtype)))


# ----------------------------------------------------------------------------- train step
def optimizer_config(model: RNN, lr: float | OptimizerConfig) -> OptimizerConfig:
    """A learning rate gives SGD clipped at cfg.clip_norm; an OptimizerConfig clips at its own."""
    if isinstance(lr, OptimizerConfig) and model.cfg.clip_norm is not None:
        raise ValueError(  # one clipping rule, not two in a row
            "an OptimizerConfig clips at its own clip_norm: build the RNNConfig with clip_norm=None"
        )
    return optim.as_config(lr, clip_norm=model.cfg.clip_norm)


def make_optimizer(model: RNN, lr: float | OptimizerConfig) -> keras.optimizers.Optimizer:
    """A learning rate gives SGD; an OptimizerConfig any optimizer of tf_impl/optim.py (Keras's
    global_clipnorm scales every gradient by clip_norm * min(1 / norm, 1 / clip_norm): no epsilon,
    like scratch)."""
    return optim.make_optimizer(model, optimizer_config(model, lr))


def compile_model(
    model: RNN, optimizer: keras.optimizers.Optimizer, steps_per_execution: int = 1
) -> None:
    with compat.floatx(model.dtype):  # the compiled loss in the model's dtype
        model.compile(
            optimizer=optimizer,
            loss=make_loss(model.dtype),
            steps_per_execution=steps_per_execution,
        )


def train_step(model: RNN, optimizer: keras.optimizers.Optimizer, x, y) -> float:
    """One step of the compiled train function on one batch (train_on_batch)."""
    if getattr(model, "optimizer", None) is not optimizer:  # compiled once per optimizer
        compile_model(model, optimizer)
    return model.train_on_batch(x, y, return_dict=True)["batch_loss"]


def train(
    model: RNN,
    data: Dataset,
    *,
    epochs: int,
    lr: float | OptimizerConfig,
    batch_size: int,
    seed: int,
    on_epoch=None,
    validation=None,
    patience: int | None = None,
) -> list[float]:
    """compile and fit on the shared mini-batches; returns the mean training loss of each epoch.
    With a patience, keras.callbacks.EarlyStopping on the loss of `validation` (x, y) ends the fit
    after that many epochs without a better one and restores the best epoch's weights."""
    steps = training.steps_per_epoch(len(data.x_train), batch_size)
    # a whole epoch per call of fit's compiled train function (training.py: why)
    compile_model(model, make_optimizer(model, lr), steps_per_execution=steps)
    callbacks = [training.OnEpochEnd(on_epoch)]  # on_epoch(epoch, loss); it may stop the fit
    if patience is not None:
        callbacks.append(training.early_stopping(patience))
    x = data.x_train.astype(model.dtype)  # a float64 pipeline for a float64 model
    history = model.fit(
        training.shared_batches(x, data.y_train, batch_size=batch_size, seed=seed, epochs=epochs),
        epochs=epochs,
        steps_per_epoch=steps,
        validation_data=training.one_batch(validation, model.dtype),
        callbacks=callbacks,
        shuffle=False,  # the batches come in the shared order
        verbose=0,
    )
    return history.history["batch_loss"]


# ----------------------------------------------------------------------------- evaluation
def evaluate(model: RNN, x, y) -> tuple[float, float]:
    """(mean loss, accuracy) on a whole split; a language model scores every position."""
    logits = model(x.astype(model.dtype))
    accuracy = ops.mean(ops.cast(ops.argmax(logits, axis=-1) == y, "float64"))
    return float(make_loss(model.dtype)(y, logits)), float(accuracy)
