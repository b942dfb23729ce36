"""Recurrent networks (tanh RNN, LSTM, GRU) in JAX with Flax NNX: nnx.RNN over SimpleCell / LSTMCell / GRUCell, and the step by hand with lax.scan.

Elman (1990), "Finding structure in time"; Hochreiter & Schmidhuber (1997), "Long short-term memory";
Cho et al. (2014), "Learning phrase representations using RNN encoder-decoder" (the GRU).
Flax's cells keep kernels (in, out): the converters transpose. SimpleCell puts its one bias on the
input projection; LSTMCell keeps one nnx.Linear per gate (ii, if_, ig, io without bias; hi, hf, hg, ho
with bias); GRUCell stacks (r, z, n) like canonical but has no b_hn (its dense_h has no bias), so the
model gives dense_h one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jax_impl import optim
from tasks import weights
from tasks.configs import OptimizerConfig, RNNConfig
from tasks.data import Dataset, batches

LSTM_GATES = (
    ("ii", "hi"),
    ("if_", "hf"),
    ("ig", "hg"),
    ("io", "ho"),
)  # canonical block order (i, f, g, o)


# ----------------------------------------------------------------------------- layers
def rnn_step(cell: nnx.SimpleCell, state, x):
    """The lesson's step, h' = tanh(W_xh x + W_hh h + b_h), on SimpleCell's own parameters (a scan body)."""
    (h,) = state
    h = jnp.tanh(
        x @ cell.dense_i.kernel[...] + cell.dense_i.bias[...] + h @ cell.dense_h.kernel[...]
    )  # (B, D) @ (D, H) + (B, H) @ (H, H) -> (B, H)
    return (h,), h


def lstm_step(cell: nnx.LSTMCell, state, x):
    h, c = state
    # one Linear pair per gate, in the order (i, f, g, o): (B, D) @ (D, H) + (B, H) @ (H, H) -> (B, H)
    a_i, a_f, a_g, a_o = (
        x @ getattr(cell, i).kernel[...]
        + h @ getattr(cell, hh).kernel[...]
        + getattr(cell, hh).bias[...]
        for i, hh in LSTM_GATES
    )
    c = nnx.sigmoid(a_f) * c + nnx.sigmoid(a_i) * jnp.tanh(a_g)
    h = nnx.sigmoid(a_o) * jnp.tanh(c)
    return (h, c), h


def gru_step(cell: nnx.GRUCell, state, x):
    (h,) = state
    x_r, x_z, x_n = jnp.split(
        x @ cell.dense_i.kernel[...] + cell.dense_i.bias[...], 3, axis=-1
    )  # (B, D) @ (D, 3H) -> 3 x (B, H)
    h_r, h_z, h_n = jnp.split(
        h @ cell.dense_h.kernel[...] + cell.dense_h.bias[...], 3, axis=-1
    )  # (B, H) @ (H, 3H) -> 3 x (B, H)
    r, z = nnx.sigmoid(x_r + h_r), nnx.sigmoid(x_z + h_z)
    n = jnp.tanh(x_n + r * h_n)  # the reset gate scales W_hn h + b_hn, after the matmul
    h = (1 - z) * n + z * h
    return (h,), h


def make_cell(cfg: RNNConfig, *, rngs: nnx.Rngs, dtype):
    bound = 1.0 / np.sqrt(cfg.hidden)  # torch's rule, so every framework starts alike
    init = lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, -bound, bound)
    kwargs = dict(
        kernel_init=init,
        recurrent_kernel_init=init,
        bias_init=init,
        dtype=dtype,
        param_dtype=dtype,
        rngs=rngs,
    )
    if cfg.cell == "rnn":
        return nnx.SimpleCell(cfg.in_features, cfg.hidden, **kwargs)
    if cfg.cell == "lstm":
        return nnx.LSTMCell(cfg.in_features, cfg.hidden, **kwargs)
    cell = nnx.GRUCell(cfg.in_features, cfg.hidden, **kwargs)
    # GRUCell computes r * (W_hn h) with no b_hn (its docstring shows one): a biased dense_h adds it.
    # Its r and z blocks duplicate dense_i's bias, so they start at 0 and never train (train_step).
    cell.dense_h = nnx.Linear(
        cfg.hidden,
        3 * cfg.hidden,
        kernel_init=init,
        bias_init=nnx.initializers.zeros_init(),
        dtype=dtype,
        param_dtype=dtype,
        rngs=rngs,
    )
    return cell


STEPS = {"rnn": rnn_step, "lstm": lstm_step, "gru": gru_step}


# ----------------------------------------------------------------------------- model
class RNN(nnx.Module):
    """One recurrent layer and a linear head: logits at every step, or at the last step only."""

    def __init__(self, cfg: RNNConfig, *, rngs: nnx.Rngs, dtype=jnp.float64):
        self.cfg = cfg
        self.rnn = nnx.RNN(make_cell(cfg, rngs=rngs, dtype=dtype), return_carry=True)
        bound = 1.0 / np.sqrt(cfg.hidden)
        init = lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, -bound, bound)
        self.head = nnx.Linear(
            cfg.hidden,
            cfg.n_classes,
            kernel_init=init,
            bias_init=init,
            dtype=dtype,
            param_dtype=dtype,
            rngs=rngs,
        )

    def by_hand(self, x):
        state = tuple(
            jnp.zeros((x.shape[0], self.cfg.hidden), x.dtype)
            for _ in range(2 if self.cfg.cell == "lstm" else 1)
        )
        step = lambda state, x_t: STEPS[self.cfg.cell](self.rnn.cell, state, x_t)
        state, hidden = jax.lax.scan(
            step, state, jnp.swapaxes(x, 0, 1)
        )  # scan walks the leading axis: (B, T, D) -> (T, B, D)
        return jnp.swapaxes(hidden, 0, 1), state  # (T, B, H) -> (B, T, H)

    def __call__(self, x):
        if self.cfg.fused:
            carry, hidden = self.rnn(x)  # (B, T, D) -> (B, T, H); carry h, or (c, h) for the LSTM
            state = carry[::-1] if self.cfg.cell == "lstm" else (carry,)  # Flax's (c, h) -> (h, c)
        else:
            hidden, state = self.by_hand(x)
        logits = self.head(
            hidden if self.cfg.output == "sequence" else hidden[:, -1]
        )  # (B, T, C) or (B, C)
        return logits, hidden, state


def create_model(cfg: RNNConfig, *, seed: int, dtype: str = "float64") -> RNN:
    return RNN(cfg, rngs=nnx.Rngs(params=seed), dtype=jnp.dtype(dtype))


# ----------------------------------------------------------------------------- canonical weights
def load_canonical(model: RNN, params: dict[str, np.ndarray]) -> None:
    cfg, cell = model.cfg, model.rnn.cell
    weights.check(params, cfg.param_shapes(), model.head.kernel.dtype)
    put = lambda variable, value: variable.set_value(jnp.asarray(value))
    if cfg.cell == "lstm":  # canonical row block k of (4H, D) -> gate k's own (D, H) kernel
        for k, (i, hh) in enumerate(LSTM_GATES):
            rows = slice(k * cfg.hidden, (k + 1) * cfg.hidden)
            put(getattr(cell, i).kernel, params["W_xh"][rows].T)  # (H, D) -> (D, H)
            put(getattr(cell, hh).kernel, params["W_hh"][rows].T)  # (H, H) -> (H, H), transposed
            put(
                getattr(cell, hh).bias, params["b_h"][rows]
            )  # the bias sits on the hidden-side Linear
    else:
        put(cell.dense_i.kernel, params["W_xh"].T)  # canonical (G*H, D) -> Flax (D, G*H)
        put(cell.dense_h.kernel, params["W_hh"].T)  # canonical (G*H, H) -> Flax (H, G*H)
        put(cell.dense_i.bias, params["b_h"])  # the bias sits on the input-side Linear
        if cfg.cell == "gru":
            put(
                cell.dense_h.bias,
                np.concatenate([np.zeros(2 * cfg.hidden, params["b_hn"].dtype), params["b_hn"]]),
            )
    put(model.head.kernel, params["W_hy"].T)  # canonical (C, H) -> Flax (H, C)
    put(model.head.bias, params["b_y"])


def export_canonical(model: RNN, grads: bool = False) -> dict[str, np.ndarray]:
    """Flax -> canonical, for a model or for gradients merged into one. The GRU's b_h is dense_i's
    bias plus dense_h's outside the candidate block; the gradient of that sum is dense_i's gradient."""
    cfg, cell = model.cfg, model.rnn.cell
    get = lambda variable: np.array(variable.get_value())
    if cfg.cell == "lstm":
        out = {
            "W_xh": np.concatenate(
                [get(getattr(cell, i).kernel).T for i, _ in LSTM_GATES]
            ),  # 4 x (D, H) -> (4H, D)
            "W_hh": np.concatenate(
                [get(getattr(cell, hh).kernel).T for _, hh in LSTM_GATES]
            ),  # 4 x (H, H) -> (4H, H)
            "b_h": np.concatenate([get(getattr(cell, hh).bias) for _, hh in LSTM_GATES]),
        }
    else:
        out = {
            "W_xh": get(cell.dense_i.kernel).T,
            "W_hh": get(cell.dense_h.kernel).T,
            "b_h": get(cell.dense_i.bias),
        }
        if cfg.cell == "gru":
            bias_h = get(cell.dense_h.bias)
            if not grads:
                out["b_h"][: 2 * cfg.hidden] += bias_h[: 2 * cfg.hidden]
            out["b_hn"] = bias_h[2 * cfg.hidden :]
    return {**out, "W_hy": get(model.head.kernel).T, "b_y": get(model.head.bias)}


# ----------------------------------------------------------------------------- loss
def loss_fn(logits, y):
    """Mean cross-entropy from logits over every scored position."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def forward_backward(model: RNN, x, y) -> dict[str, np.ndarray]:
    """Outputs, states, loss and every gradient in the canonical layout (what the parity tests compare)."""

    def loss_of(model, x):
        logits, hidden, state = model(x)
        return loss_fn(logits, jnp.asarray(y)), (logits, hidden, state)

    (loss, (logits, hidden, state)), (grad_params, dx) = nnx.value_and_grad(
        loss_of, argnums=(0, 1), has_aux=True
    )(model, jnp.asarray(x))
    out = {"output": logits, "loss": loss, "hidden": hidden, "h_n": state[0]}
    if model.cfg.cell == "lstm":
        out["c_n"] = state[1]
    out = {k: np.asarray(v) for k, v in out.items()}
    # the gradients have the model's own structure: merge them into a model to reuse the exporter
    grads = export_canonical(
        nnx.merge(nnx.graphdef(model), grad_params, nnx.state(model, nnx.Not(nnx.Param))),
        grads=True,
    )
    return {**out, "grad.input": np.asarray(dx), **{f"grad.{k}": g for k, g in grads.items()}}


@nnx.jit
def logits_of(model: RNN, x):
    return model(x)[0]


def predict_logits(model: RNN, x) -> np.ndarray:
    """Logits for a batch, as NumPy (what `rosetta sample` draws from); jitted, as it runs once per character."""
    return np.asarray(logits_of(model, jnp.asarray(x, dtype=model.head.kernel.dtype)))


# ----------------------------------------------------------------------------- train step
def make_optimizer(model: RNN, lr: float | OptimizerConfig) -> nnx.Optimizer:
    """A learning rate gives optax.sgd clipped at cfg.clip_norm; an OptimizerConfig any transformation
    of jax_impl/optim.py, clipped at the OptimizerConfig's own clip_norm."""
    if isinstance(lr, OptimizerConfig):
        if model.cfg.clip_norm is not None:  # one clipping rule, not two in a row
            raise ValueError(
                "an OptimizerConfig clips at its own clip_norm: build the RNNConfig with clip_norm=None"
            )
        return optim.make_optimizer(model, lr)
    # optax.clip_by_global_norm scales by max_norm / norm when norm > max_norm: no epsilon, like scratch
    clip = (
        [optax.clip_by_global_norm(model.cfg.clip_norm)] if model.cfg.clip_norm is not None else []
    )
    return nnx.Optimizer(model, optax.chain(*clip, optax.sgd(lr)), wrt=nnx.Param)


@nnx.jit
def train_step(model: RNN, optimizer: nnx.Optimizer, x, y):
    def loss_of(model):
        return loss_fn(model(x)[0], y)

    loss, grads = nnx.value_and_grad(loss_of)(model)
    if model.cfg.cell == "gru":  # dense_h's r and z bias blocks duplicate dense_i's: keep them at 0
        bias = grads["rnn"]["cell"]["dense_h"]["bias"]
        bias.set_value(bias.get_value().at[: 2 * model.cfg.hidden].set(0))
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
    """Mini-batches in the shared order, stepped by make_optimizer(model, lr); returns the mean training loss of each epoch."""
    x, y = jnp.asarray(data.x_train, dtype=model.head.kernel.dtype), jnp.asarray(data.y_train)
    optimizer, history = make_optimizer(model, lr), []
    for epoch in range(epochs):
        # a plain iterator over the shared index arrays is JAX's whole input pipeline
        losses = [
            float(train_step(model, optimizer, x[idx], y[idx]))
            for idx in batches(len(x), batch_size, seed, epoch)
        ]
        history.append(float(np.mean(losses)))
        if on_epoch:
            on_epoch(epoch, history[-1])
    return history


# ----------------------------------------------------------------------------- evaluation
def evaluate(model: RNN, x, y) -> tuple[float, float]:
    """(mean loss, accuracy) on a whole split; a language model scores every position."""
    logits, _, _ = model(jnp.asarray(x, dtype=model.head.kernel.dtype))
    y = jnp.asarray(y)
    return float(loss_fn(logits, y)), float(
        jnp.mean((logits.argmax(axis=-1) == y).astype(jnp.float64))
    )
