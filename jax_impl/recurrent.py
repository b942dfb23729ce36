"""Recurrent networks (tanh RNN, LSTM, GRU) in JAX with Flax NNX: nnx.RNN over SimpleCell / OptimizedLSTMCell / GRUCell, and the step by hand with lax.scan.

Elman (1990), "Finding structure in time"; Hochreiter & Schmidhuber (1997), "Long short-term memory";
Cho et al. (2014), "Learning phrase representations using RNN encoder-decoder" (the GRU).
Flax's cells keep kernels (in, out): the converters transpose. SimpleCell puts its one bias on the
input projection; OptimizedLSTMCell (nnx.LSTMCell's function, one matmul per side for the four
gates instead of eight) keeps dense_i (D, 4H) without bias and dense_h (H, 4H) with it, gate blocks
(i, f, g, o) as canonical. nnx.GRUCell has no b_hn (its dense_h has no bias), so it cannot hold the
canonical GRU: the GRUCell below is written in the open, with nnx.GRUCell's layers plus b_hn
(docs/PORTING.md); with reset_after=False it is Keras's GRU(reset_after=False), which no Flax cell
computes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jax_impl import optim, porting
from tasks import weights
from tasks.configs import OptimizerConfig, RNNConfig
from tasks.data import Dataset, batches


# ----------------------------------------------------------------------------- layers
def rnn_step(cell: nnx.SimpleCell, x, state):
    """One step, h' = f(W_xh x + W_hh h + b_h), f = the cell's tanh or relu, on its own parameters."""
    (h,) = state
    a = (
        x @ cell.dense_i.kernel[...] + cell.dense_i.bias[...] + h @ cell.dense_h.kernel[...]
    )  # (B, D) @ (D, H) + (B, H) @ (H, H) -> (B, H)
    h = cell.activation_fn(a)  # nnx.tanh or nnx.relu
    return (h,)


def lstm_step(cell: nnx.OptimizedLSTMCell, x, state):
    """One step: gates (i, f, g, o), c' = f c + i g, h' = o tanh(c')."""
    h, c = state
    a = (
        x @ cell.dense_i.kernel[...] + h @ cell.dense_h.kernel[...] + cell.dense_h.bias[...]
    )  # (B, D) @ (D, 4H) + (B, H) @ (H, 4H) -> (B, 4H)
    a_i, a_f, a_g, a_o = jnp.split(a, 4, axis=1)  # (B, 4H) -> 4 x (B, H), order (i, f, g, o)
    i, f, g, o = nnx.sigmoid(a_i), nnx.sigmoid(a_f), jnp.tanh(a_g), nnx.sigmoid(a_o)
    c = f * c + i * g
    h = o * jnp.tanh(c)
    return h, c


def gru_step(cell: GRUCell, x, state):
    """One step: gates (r, z, n), n = tanh(W_in x + b_in + r (W_hn h + b_hn)), h' = (1 - z) n + z h.
    GRUCell(reset_after=False) resets before the matmul: n = tanh(W_in x + b_in + W_hn (r h))."""
    (h,) = state
    if not cell.reset_after:
        return gru_reset_before_step(cell, x, state)
    x_r, x_z, x_n = jnp.split(
        x @ cell.dense_i.kernel[...] + cell.dense_i.bias[...], 3, axis=1
    )  # (B, D) @ (D, 3H) -> 3 x (B, H)
    h_r, h_z, h_n = jnp.split(
        h @ cell.dense_h.kernel[...], 3, axis=1
    )  # (B, H) @ (H, 3H) -> 3 x (B, H)
    h_n = h_n + cell.b_hn[...]  # b_hn sits inside the reset product, so it cannot merge into b_h
    r, z = nnx.sigmoid(x_r + h_r), nnx.sigmoid(x_z + h_z)
    n = jnp.tanh(x_n + r * h_n)  # the reset gate scales W_hn h + b_hn, after the matmul
    h = (1 - z) * n + z * h
    return (h,)


def gru_reset_before_step(cell: GRUCell, x, state):
    """Keras's GRU(reset_after=False): n = tanh(W_in x + b_in + W_hn (r h)), h' = (1 - z) n + z h."""
    (h,) = state
    x_r, x_z, x_n = jnp.split(
        x @ cell.dense_i.kernel[...] + cell.dense_i.bias[...], 3, axis=1
    )  # (B, D) @ (D, 3H) -> 3 x (B, H)
    w_h, hidden = cell.dense_h.kernel[...], h.shape[1]
    h_r, h_z = jnp.split(h @ w_h[:, : 2 * hidden], 2, axis=1)  # (B, H) @ (H, 2H) -> 2 x (B, H)
    r, z = nnx.sigmoid(x_r + h_r), nnx.sigmoid(x_z + h_z)
    n = jnp.tanh(x_n + (r * h) @ w_h[:, 2 * hidden :])  # the reset gate scales h, before the matmul
    h = (1 - z) * n + z * h
    return (h,)


STEPS = {"rnn": rnn_step, "lstm": lstm_step, "gru": gru_step}


class GRUCell(nnx.RNNCellBase):
    """The GRU of torch and Keras (reset_after): nnx.GRUCell's dense_i and dense_h, and the b_hn
    that nnx.GRUCell lacks, inside the reset product: n = tanh(W_in x + b_in + r * (W_hn h + b_hn)).
    reset_after=False: Keras's GRU(reset_after=False), which no Flax cell computes, n = tanh(W_in x
    + b_in + W_hn (r * h)), and no b_hn."""

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        init,
        dtype,
        rngs: nnx.Rngs,
        reset_after: bool = True,
    ):
        self.hidden_features, self.reset_after, self.dtype = hidden_features, reset_after, dtype
        self.dense_i = nnx.Linear(
            in_features, 3 * hidden_features, kernel_init=init, bias_init=init, dtype=dtype,
            param_dtype=dtype, rngs=rngs,
        )  # fmt: skip
        self.dense_h = nnx.Linear(
            hidden_features, 3 * hidden_features, use_bias=False, kernel_init=init, dtype=dtype,
            param_dtype=dtype, rngs=rngs,
        )  # fmt: skip
        if reset_after:
            self.b_hn = nnx.Param(init(rngs.params(), (hidden_features,), dtype))

    def __call__(self, carry, inputs):
        if not self.reset_after:
            return (gru_reset_before_step(self, inputs, (carry,))[0],) * 2
        h = carry
        x_r, x_z, x_n = jnp.split(self.dense_i(inputs), 3, axis=-1)  # (B, D) -> 3 x (B, H)
        h_r, h_z, h_n = jnp.split(self.dense_h(h), 3, axis=-1)  # (B, H) -> 3 x (B, H)
        r, z = nnx.sigmoid(x_r + h_r), nnx.sigmoid(x_z + h_z)
        n = jnp.tanh(x_n + r * (h_n + self.b_hn[...]))
        h = (1 - z) * n + z * h
        return h, h

    def initialize_carry(self, input_shape, rngs=None):
        """Zeros (B, H): nnx.RNN asks the cell for its first state."""
        return jnp.zeros((*input_shape[:-1], self.hidden_features), self.dtype)

    @property
    def num_feature_axes(self) -> int:
        return 1


def make_cell(cfg: RNNConfig, *, rngs: nnx.Rngs, dtype, in_features: int | None = None):
    bound = 1.0 / np.sqrt(cfg.hidden)  # torch's rule, so every framework starts alike
    init = lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, -bound, bound)
    d_in = in_features or cfg.in_features
    if cfg.cell == "gru":
        return GRUCell(
            d_in, cfg.hidden, init=init, dtype=dtype, rngs=rngs, reset_after=cfg.reset_after
        )
    kwargs = dict(
        kernel_init=init,
        recurrent_kernel_init=init,
        bias_init=init,
        dtype=dtype,
        param_dtype=dtype,
        rngs=rngs,
    )
    if cfg.cell == "rnn":
        activation = {"tanh": nnx.tanh, "relu": nnx.relu}[cfg.nonlinearity]
        return nnx.SimpleCell(d_in, cfg.hidden, activation_fn=activation, **kwargs)
    # nnx.LSTMCell's function with one Linear per side, not one per gate and side: two matmuls a
    # step instead of eight (the JAX LSTM's training step 0.77x torch eager's CPU time, 1.08x with
    # LSTMCell: docs/BENCHMARKS.md)
    return nnx.OptimizedLSTMCell(d_in, cfg.hidden, **kwargs)


def make_layer(cfg: RNNConfig, k: int, *, rngs: nnx.Rngs, dtype):
    """Layer k of the stack: nnx.RNN(cell), or nnx.Bidirectional(forward, backward) reading the
    sequence both ways (the backward nnx.RNN keeps the time order) and concatenating (B, T, 2H)."""
    d_in = cfg.in_features if k == 0 else cfg.directions * cfg.hidden
    rnns = [
        nnx.RNN(make_cell(cfg, rngs=rngs, dtype=dtype, in_features=d_in), return_carry=True)
        for _ in range(cfg.directions)
    ]
    return nnx.Bidirectional(*rnns, return_carry=True) if cfg.bidirectional else rnns[0]


def directions(layer) -> list:
    """A stack layer's cells: its own, or a Bidirectional's forward and backward."""
    if isinstance(layer, nnx.Bidirectional):
        return [layer.forward_rnn.cell, layer.backward_rnn.cell]
    return [layer.cell]


# ----------------------------------------------------------------------------- model
class RNN(nnx.Module):
    """One recurrent layer and a linear head: logits at every step, or at the last step only.

    model(x) returns the logits, (B, T, C) or (B, C); model.logits_and_states(x) returns (logits,
    hidden, state): every step's hidden state (B, T, H) and the final state, (h,) or (h, c).
    Either call takes an optional initial_state, (h0,) or (h0, c0), each (B, H) (zeros without).
    """

    def __init__(self, cfg: RNNConfig, *, rngs: nnx.Rngs, dtype=jnp.float64):
        self.cfg = cfg
        self.step = STEPS[cfg.cell]
        self.rnn = make_layer(cfg, 0, rngs=rngs, dtype=dtype)
        self.upper = nnx.List(
            [make_layer(cfg, k, rngs=rngs, dtype=dtype) for k in range(1, cfg.num_layers)]
        )
        bound = 1.0 / np.sqrt(cfg.hidden)
        init = lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, -bound, bound)
        self.head = nnx.Linear(
            cfg.directions * cfg.hidden,
            cfg.n_classes,
            kernel_init=init,
            bias_init=init,
            dtype=dtype,
            param_dtype=dtype,
            rngs=rngs,
        )

    def by_hand(self, x, initial_state=None):
        state = initial_state or tuple(
            jnp.zeros((x.shape[0], self.cfg.hidden), x.dtype)
            for _ in range(2 if self.cfg.cell == "lstm" else 1)
        )

        def scan_body(state, x_t):  # (carry, x_t) -> (carry, output)
            state = self.step(self.rnn.cell, x_t, state)  # (B, D) -> (B, H)
            return state, state[0]

        state, hidden = jax.lax.scan(
            scan_body, state, jnp.swapaxes(x, 0, 1)
        )  # scan walks the leading axis: (B, T, D) -> (T, B, D)
        return jnp.swapaxes(hidden, 0, 1), state  # (T, B, H) -> (B, T, H)

    def logits_and_states(self, x, initial_state=None):
        """Logits, every step's hidden state (B, T, H) and the final state: (h,), or (h, c)."""
        if self.cfg.fused:
            hidden, state = self.run(x, initial_state)  # (B, T, D) -> (B, T, dirs*H)
        else:
            hidden, state = self.by_hand(x, initial_state)
        logits = self.head(
            hidden if self.cfg.output == "sequence" else hidden[:, -1]
        )  # (B, T, C) or (B, C)
        return logits, hidden, state

    def __call__(self, x, initial_state=None):
        return self.logits_and_states(x, initial_state)[0]

    def recurrents(self) -> list:
        """Every layer's cells, in torch's order (layer by layer, forward then reverse)."""
        return [cell for layer in [self.rnn, *self.upper] for cell in directions(layer)]

    def run(self, x, initial_state=None):
        """Layer by layer; nnx.RNN's carry is h, or (c, h) for the LSTM; a Bidirectional's is the
        pair (forward carry, backward carry)."""
        lstm, n, dirs = self.cfg.cell == "lstm", len(self.cfg.layer_prefixes()), self.cfg.directions
        starts = [initial_state] if n == 1 else [None] * n
        if n > 1 and initial_state is not None:  # (L*dirs, B, H) each: one start per recurrent
            starts = [tuple(s[i] for s in initial_state) for i in range(n)]
        carries = [None if s is None else s[::-1] if lstm else s[0] for s in starts]
        finals = []
        for k, layer in enumerate([self.rnn, *self.upper]):
            given = carries[k * dirs : (k + 1) * dirs]
            given = None if given[0] is None else (tuple(given) if dirs == 2 else given[0])
            carry, x = layer(x, initial_carry=given)  # (B, T, D) -> (B, T, dirs*H)
            finals += list(carry) if dirs == 2 else [carry]
        finals = [c[::-1] if lstm else (c,) for c in finals]  # Flax's (c, h) -> (h, c)
        state = finals[0] if n == 1 else tuple(jnp.stack(s) for s in zip(*finals))
        return x, state


def create_model(cfg: RNNConfig, *, seed: int, dtype: str = "float64") -> RNN:
    return RNN(cfg, rngs=nnx.Rngs(params=seed), dtype=jnp.dtype(dtype))


# ----------------------------------------------------------------------------- canonical weights
PORTING = {"rnn": "simple_rnn", "lstm": "lstm", "gru": "gru"}  # jax_impl/porting.py's layer names
HEAD_NAMES = {"head.weight": "W_hy", "head.bias": "b_y"}  # the dense head's canonical names


def canonical_layers(model: RNN, *, loading: bool = False) -> dict:
    """Each stock layer by canonical prefix, with its jax_impl/porting.py function and layout
    (kernels transposed; OptimizedLSTMCell's two Linears; the bias on the input or the hidden
    side). `loading`: the loader is told the LSTM's cell class; the exporter knows it by its keys."""
    prefixes = zip(model.cfg.layer_prefixes(), model.recurrents())
    layout = {} if model.cfg.reset_after else {"reset_after": False}  # GRUCell(reset_after=False)
    if loading and model.cfg.cell == "lstm":
        layout = {"cell": "OptimizedLSTMCell"}
    layers = {p: (PORTING[model.cfg.cell], cell, layout) for p, cell in prefixes}
    return {**layers, "head.": ("dense", model.head, {})}


def load_canonical(model: RNN, params: dict[str, np.ndarray]) -> None:
    weights.check(params, model.cfg.param_shapes(), model.head.kernel.dtype)
    head = {k: params[name] for k, name in HEAD_NAMES.items()}
    porting.load_layers(canonical_layers(model, loading=True), {**params, **head})


def to_canonical(model: RNN, grads: bool = False) -> dict[str, np.ndarray]:
    """Flax -> canonical, for a model or (`grads=True`) for gradients merged into one."""
    out = porting.layers_to_canonical(canonical_layers(model), grads=grads)
    return {HEAD_NAMES.get(k, k): v for k, v in out.items()}


def export_canonical(model: RNN) -> dict[str, np.ndarray]:
    return to_canonical(model)


# ----------------------------------------------------------------------------- loss
def loss_fn(logits, y):
    """Mean cross-entropy from logits over every scored position."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


@nnx.jit
def gradients(model: RNN, x, y, initial_state=None):
    """Loss, outputs and the gradients with respect to the parameters, the input and the initial
    state (None without one), one XLA program."""

    def loss_of(model, x, initial_state):
        logits, hidden, state = model.logits_and_states(x, initial_state)
        return loss_fn(logits, y), (logits, hidden, state)

    return nnx.value_and_grad(loss_of, argnums=(0, 1, 2), has_aux=True)(model, x, initial_state)


def forward_backward(model: RNN, x, y, initial_state=None) -> dict[str, np.ndarray]:
    """Outputs, states, loss and every gradient in the canonical layout (what the parity tests
    compare); from a given initial state (h0,) or (h0, c0), its gradients grad.h0 (and grad.c0) too."""
    initial_state = initial_state and tuple(initial_state)  # NumPy in: jit copies the arrays
    (loss, (logits, hidden, state)), (grad_params, dx, dstate) = gradients(
        model, x, y, initial_state
    )
    out = {"output": logits, "loss": loss, "hidden": hidden, "h_n": state[0]}
    if model.cfg.cell == "lstm":
        out["c_n"] = state[1]
    out = {k: np.asarray(v) for k, v in out.items()}
    # the gradients have the model's own structure: merge them into a model to reuse the exporter
    grads = to_canonical(
        nnx.merge(nnx.graphdef(model), grad_params, nnx.state(model, nnx.Not(nnx.Param))),
        grads=True,
    )
    grads = {f"grad.{k}": g for k, g in grads.items()}
    grads |= {n: np.asarray(d) for n, d in zip(("grad.h0", "grad.c0"), dstate or ())}
    return {**out, "grad.input": np.asarray(dx), **grads}


@nnx.jit
def logits_of(model: RNN, x):
    return model(x)


def predict_logits(model: RNN, x) -> np.ndarray:
    """Logits for a batch, as NumPy (what `rosetta sample` draws from); jitted, as it runs once per
    character."""
    return np.asarray(logits_of(model, jnp.asarray(x, dtype=model.head.kernel.dtype)))


# ----------------------------------------------------------------------------- train step
def optimizer_config(model: RNN, lr: float | OptimizerConfig) -> OptimizerConfig:
    """A learning rate gives SGD clipped at cfg.clip_norm; an OptimizerConfig clips at its own."""
    if isinstance(lr, OptimizerConfig) and model.cfg.clip_norm is not None:
        raise ValueError(  # one clipping rule, not two in a row
            "an OptimizerConfig clips at its own clip_norm: build the RNNConfig with clip_norm=None"
        )
    return optim.as_config(lr, clip_norm=model.cfg.clip_norm)


def make_optimizer(model: RNN, lr: float | OptimizerConfig) -> nnx.Optimizer:
    """A learning rate gives optax.sgd; an OptimizerConfig any transformation of jax_impl/optim.py
    (optax.clip_by_global_norm scales by max_norm / norm when norm > max_norm: no epsilon, like
    scratch)."""
    return optim.make_optimizer(model, optimizer_config(model, lr))


@nnx.jit
def train_step(model: RNN, optimizer: nnx.Optimizer, x, y):
    def loss_of(model):
        return loss_fn(model(x), y)

    loss, grads = nnx.value_and_grad(loss_of)(model)
    optimizer.update(model, grads)
    return loss


def train(
    model: RNN,
    data: Dataset,
    *,
    epochs: int,
    lr: float | OptimizerConfig,
    batch_size: int,
    seed: int,
    on_epoch=None,
) -> list[float]:
    """Mini-batches in the shared order; returns the mean training loss of each epoch."""
    x, y = np.asarray(data.x_train, dtype=model.head.kernel.dtype), np.asarray(data.y_train)
    optimizer, history = make_optimizer(model, lr), []
    # cached_partial walks the model and optimizer graphs once, not on every step
    step = nnx.cached_partial(train_step, model, optimizer)
    for epoch in range(epochs):
        # a plain iterator over the shared index arrays is JAX's whole input pipeline: each batch
        # is cut from the NumPy arrays on the host and jit copies it to the device (indexing a JAX
        # array would compile a gather program per batch shape); the losses stay on the device
        # until the epoch ends, so Python runs ahead of the computation
        losses = [step(x[idx], y[idx]) for idx in batches(len(x), batch_size, seed, epoch)]
        history.append(float(np.mean(jax.device_get(losses), dtype=np.float64)))
        if on_epoch:
            on_epoch(epoch, history[-1])
    return history


# ----------------------------------------------------------------------------- evaluation
@nnx.jit
def eval_step(model: RNN, x, y):
    logits = model(x)
    return loss_fn(logits, y), jnp.mean((logits.argmax(axis=-1) == y).astype(jnp.float64))


def evaluate(model: RNN, x, y) -> tuple[float, float]:
    """(mean loss, accuracy) on a whole split; a language model scores every position."""
    loss, accuracy = eval_step(model, jnp.asarray(x, dtype=model.head.kernel.dtype), jnp.asarray(y))
    return float(loss), float(accuracy)
