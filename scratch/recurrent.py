"""Recurrent networks (tanh RNN, LSTM, GRU), from scratch in NumPy, with backpropagation through time.

Elman (1990), "Finding structure in time"; Hochreiter & Schmidhuber (1997), "Long short-term memory";
Cho et al. (2014), "Learning phrase representations using RNN encoder-decoder" (the GRU).
Batch-first: x is (B, T, D). The lesson's step, h_t = tanh(W_xh x_t + W_hh h_{t-1} + b_h), and
y_t = W_hy h_t + b_y, in the canonical layout every other implementation converts to and from:
gate blocks stacked along the first axis in the order (i, f, g, o) for the LSTM, (r, z, n) for the GRU.
"""

from __future__ import annotations

import numpy as np

from scratch import optim
from scratch.layers import Dense, cross_entropy, sigmoid, zero_grad
from tasks import weights
from tasks.configs import OptimizerConfig, RNNConfig
from tasks.data import Dataset, batches


# ----------------------------------------------------------------------------- layers
def init_params(cfg: RNNConfig, rng: np.random.Generator, dtype) -> dict[str, dict]:
    """Each cell's tensors by layer prefix ("", "reverse.", "l1.", ...), U(-1/sqrt(H), 1/sqrt(H)):
    torch's rule for recurrent layers."""
    bound, out = 1.0 / np.sqrt(cfg.hidden), {p: {} for p in cfg.layer_prefixes()}
    for name, shape in cfg.param_shapes().items():
        if name not in HEAD:  # the head is a Dense of its own
            prefix, _, key = name.rpartition(".")  # "l1.reverse.W_xh" -> "l1.reverse", "W_xh"
            out[prefix + "." if prefix else ""][key] = rng.uniform(-bound, bound, shape).astype(
                dtype
            )
    return out


class Projected:
    """The input's share of a cell's pre-activations, W_xh x + b_h (gate blocks side by side), and
    its backward. It does not depend on the state, so the layer computes it for every step at once,
    (B, T, D) -> (B, T, G*H), one matmul for the sequence (cuDNN's order too); the cells step on it."""

    def project(self, x):
        flat = x.reshape(-1, x.shape[-1])  # (B*T, D): one matrix product, not B of them
        xw = flat @ self.params["W_xh"].T + self.params["b_h"]  # (B*T, D) @ (D, G*H)
        return xw.reshape(*x.shape[:-1], -1)  # (B, T, G*H)

    def project_backward(self, x, dxw):
        """dxw: the gradient with respect to project(x), (B, T, G*H); returns dx (B, T, D)."""
        flat = dxw.reshape(-1, dxw.shape[-1])  # (B*T, G*H): every step's gradient at once
        self.grads["W_xh"] += flat.T @ x.reshape(-1, x.shape[-1])  # (G*H, B*T) @ (B*T, D)
        self.grads["b_h"] += flat.sum(axis=0)
        return (flat @ self.params["W_xh"]).reshape(*x.shape)  # (B*T, G*H) @ (G*H, D)


class RNNCell(Projected):
    """One step, h' = f(W_xh x + W_hh h + b_h) with f = tanh (or relu), on the cell's own parameters;
    and its backward. forward takes xw = project(x), the input's share, (B, H)."""

    def __init__(self, params: dict[str, np.ndarray], nonlinearity: str = "tanh"):
        self.params, self.nonlinearity = params, nonlinearity
        self.grads = {k: np.zeros_like(v) for k, v in params.items()}

    def forward(self, xw, state):
        (h,) = state
        a = xw + h @ self.params["W_hh"].T  # (B, H) + (B, H) @ (H, H) -> (B, H)
        cache = {"h": h}
        h = np.tanh(a) if self.nonlinearity == "tanh" else np.maximum(a, 0)
        return (h,), cache | {"h_new": h}

    def backward(self, dstate, cache):
        """Returns (dxw, dstate): the gradient with respect to xw, and to the previous state."""
        (dh_new,) = dstate
        if self.nonlinearity == "tanh":
            da = dh_new * (1 - cache["h_new"] ** 2)  # through tanh
        else:
            da = dh_new * (cache["h_new"] > 0)  # through relu: 0 where a <= 0, as torch's relu
        self.grads["W_hh"] += da.T @ cache["h"]  # (H, B) @ (B, H) -> (H, H)
        return da, (da @ self.params["W_hh"],)  # dxw (B, H), dh (B, H)


class LSTMCell(Projected):
    """One step: gates (i, f, g, o), c' = f c + i g, h' = o tanh(c'); and its backward. forward
    takes xw = project(x), the input's share of the gates, (B, 4H)."""

    def __init__(self, params: dict[str, np.ndarray]):
        self.params = params
        self.grads = {k: np.zeros_like(v) for k, v in params.items()}

    def forward(self, xw, state):
        h, c = state
        a = xw + h @ self.params["W_hh"].T  # (B, 4H) + (B, H) @ (H, 4H) -> (B, 4H)
        n = h.shape[1]
        s = sigmoid(a)  # (B, 4H): one call for the three sigmoid gates (g's block is not used)
        i, f, o = s[:, :n], s[:, n : 2 * n], s[:, 3 * n :]  # (B, 4H) -> 3 x (B, H), views
        g = np.tanh(a[:, 2 * n : 3 * n])  # the candidate block (B, H)
        cache = {"h": h, "c": c, "s": s, "i": i, "f": f, "g": g, "o": o}
        c = f * c + i * g
        tanh_c = np.tanh(c)
        h = o * tanh_c
        return (h, c), cache | {"tanh_c": tanh_c}

    def backward(self, dstate, cache):
        """Returns (dxw, dstate): the gradient with respect to xw, and to the previous state."""
        dh_new, dc_new = dstate
        k = cache
        # c' reaches the loss directly and through h'
        dc = dc_new + dh_new * k["o"] * (1 - k["tanh_c"] ** 2)
        n = dc.shape[1]
        # the gradient with respect to each gate's value (i, f, g, o), (B, 4H) ...
        dgates = np.concatenate([dc * k["g"], dc * k["c"], dc * k["i"], dh_new * k["tanh_c"]], 1)
        # ... times each gate's derivative: s (1 - s) for the sigmoids, 1 - g^2 for the candidate
        slope = k["s"] * (1 - k["s"])  # (B, 4H), g's block replaced below
        slope[:, 2 * n : 3 * n] = 1 - k["g"] ** 2
        da = dgates * slope  # (B, 4H): the gradient of the pre-activations
        self.grads["W_hh"] += da.T @ k["h"]  # (4H, B) @ (B, H) -> (4H, H)
        return da, (da @ self.params["W_hh"], dc * k["f"])  # dxw (B, 4H), (dh, dc) (B, H)


class GRUCell(Projected):
    """One step: gates (r, z, n), n = tanh(W_in x + b_in + r (W_hn h + b_hn)), h' = (1 - z) n + z h;
    and its backward. reset_after=False (Keras's GRU(reset_after=False), Cho et al.'s original):
    the reset before the matmul, n = tanh(W_in x + b_in + W_hn (r h)), no b_hn. forward takes
    xw = project(x) = W_xh x + b_h, the input's share of the gates, (B, 3H)."""

    def __init__(self, params: dict[str, np.ndarray], reset_after: bool = True):
        self.params, self.reset_after = params, reset_after
        self.grads = {k: np.zeros_like(v) for k, v in params.items()}

    def forward(self, xw, state):
        if not self.reset_after:
            return self.forward_reset_before(xw, state)
        (h,) = state
        p = self.params
        x_r, x_z, x_n = np.split(xw, 3, axis=1)  # (B, 3H) -> 3 x (B, H)
        h_r, h_z, h_n = np.split(h @ p["W_hh"].T, 3, axis=1)  # (B, H) @ (H, 3H) -> 3 x (B, H)
        h_n = h_n + p["b_hn"]  # b_hn sits inside the reset product, so it cannot merge into b_h
        r, z = sigmoid(x_r + h_r), sigmoid(x_z + h_z)
        n = np.tanh(x_n + r * h_n)  # the reset gate scales W_hn h + b_hn, after the matmul
        cache = {"h": h, "r": r, "z": z, "n": n, "h_n": h_n}
        h = (1 - z) * n + z * h
        return (h,), cache

    def forward_reset_before(self, xw, state):
        (h,) = state
        p, hidden = self.params, h.shape[1]
        x_r, x_z, x_n = np.split(xw, 3, axis=1)  # (B, 3H) -> 3 x (B, H)
        h_r, h_z = np.split(h @ p["W_hh"][: 2 * hidden].T, 2, axis=1)  # (B, H) @ (H, 2H)
        r, z = sigmoid(x_r + h_r), sigmoid(x_z + h_z)
        rh = r * h  # the reset gate scales h, before the matmul
        n = np.tanh(x_n + rh @ p["W_hh"][2 * hidden :].T)  # (B, H) @ (H, H) -> (B, H)
        cache = {"h": h, "r": r, "z": z, "n": n, "rh": rh}
        h = (1 - z) * n + z * h
        return (h,), cache

    def backward_reset_before(self, dstate, cache):
        (dh_new,) = dstate
        k, hidden = cache, cache["h"].shape[1]
        w_hrz, w_hn = self.params["W_hh"][: 2 * hidden], self.params["W_hh"][2 * hidden :]
        da_n = dh_new * (1 - k["z"]) * (1 - k["n"] ** 2)
        drh = da_n @ w_hn  # (B, H) @ (H, H): the gradient of r h
        da_r = drh * k["h"] * k["r"] * (1 - k["r"])
        da_z = dh_new * (k["h"] - k["n"]) * k["z"] * (1 - k["z"])
        self.grads["W_hh"][: 2 * hidden] += np.concatenate([da_r, da_z], axis=1).T @ k["h"]
        self.grads["W_hh"][2 * hidden :] += da_n.T @ k["rh"]  # (H, B) @ (B, H) -> (H, H)
        dh = np.concatenate([da_r, da_z], axis=1) @ w_hrz + drh * k["r"] + dh_new * k["z"]
        return np.concatenate([da_r, da_z, da_n], axis=1), (dh,)  # dxw (B, 3H), dh (B, H)

    def backward(self, dstate, cache):
        """Returns (dxw, dstate): the gradient with respect to xw, and to the previous state."""
        if not self.reset_after:
            return self.backward_reset_before(dstate, cache)
        (dh_new,) = dstate
        k = cache
        da_n = dh_new * (1 - k["z"]) * (1 - k["n"] ** 2)
        da_r = da_n * k["h_n"] * k["r"] * (1 - k["r"])
        da_z = dh_new * (k["h"] - k["n"]) * k["z"] * (1 - k["z"])
        dxw = np.concatenate([da_r, da_z, da_n], axis=1)  # (B, 3H): gradient of W_xh x + b_h
        dh_side = np.concatenate([da_r, da_z, da_n * k["r"]], axis=1)  # (B, 3H): of h W_hh^T
        self.grads["W_hh"] += dh_side.T @ k["h"]  # (3H, B) @ (B, H) -> (3H, H)
        self.grads["b_hn"] += (da_n * k["r"]).sum(axis=0)
        dh = dh_side @ self.params["W_hh"] + dh_new * k["z"]
        return dxw, (dh,)


CELLS = {"rnn": RNNCell, "lstm": LSTMCell, "gru": GRUCell}


class Recurrent:
    """Runs a cell over time from a zero state, or a given one; backward is backpropagation through
    time, and leaves the gradient with respect to the initial state in `dinitial_state`."""

    def __init__(self, cell, hidden: int):
        self.cell, self.hidden = cell, hidden
        self.params, self.grads = cell.params, cell.grads
        self.cache: dict = {}

    def initial_state(self, batch: int, dtype):
        n = 2 if isinstance(self.cell, LSTMCell) else 1  # (h,) or (h, c)
        return tuple(np.zeros((batch, self.hidden), dtype) for _ in range(n))

    def forward(self, x, initial_state=None):
        state = self.initial_state(x.shape[0], x.dtype) if initial_state is None else initial_state
        xw = self.cell.project(x)  # (B, T, D) -> (B, T, G*H): the input's share, every step at once
        steps, hs = [], []
        for t in range(x.shape[1]):
            state, cache = self.cell.forward(xw[:, t], state)  # (B, G*H) -> (B, H)
            steps.append(cache)
            hs.append(state[0])
        self.cache = {"steps": steps, "x": x}
        return np.stack(hs, axis=1), state  # T x (B, H) -> (B, T, H); final state

    def backward(self, dhidden):
        x = self.cache["x"]
        dxw = np.empty((*x.shape[:2], self.params["W_xh"].shape[0]), dhidden.dtype)  # (B, T, G*H)
        # nothing flows in after the last step
        dstate = self.initial_state(dhidden.shape[0], dhidden.dtype)
        for t in reversed(range(dhidden.shape[1])):
            # h_t feeds the output and the next step
            dstate = (dstate[0] + dhidden[:, t], *dstate[1:])
            dxw[:, t], dstate = self.cell.backward(dstate, self.cache["steps"][t])
        self.dinitial_state = dstate  # (dh0,) or (dh0, dc0), each (B, H)
        return self.cell.project_backward(x, dxw)  # (B, T, D), and W_xh's and b_h's gradients


# ----------------------------------------------------------------------------- model
HEAD = {"W_hy": "weight", "b_y": "bias"}  # canonical name -> the head Dense's key


class RNN:
    """One recurrent layer and a linear head: logits at every step, or at the last step only.

    model.forward(x) returns the logits, (B, T, C) or (B, C); model.logits_and_states(x) returns
    (logits, hidden, state): every step's hidden state (B, T, H) and the final state, (h,) or (h, c).
    Either call takes an optional initial_state, (h0,) or (h0, c0), each (B, H) (zeros without),
    and caches what model.backward(dlogits) needs. With num_layers > 1 or bidirectional, hidden is
    the last layer's (B, T, dirs*H) and each state (L*dirs, B, H), in torch's order.
    """

    def __init__(self, cfg: RNNConfig, *, rng: np.random.Generator, dtype=np.float64):
        self.cfg = cfg
        options = {  # the simple RNN's nonlinearity, the GRU's reset_after
            "rnn": {"nonlinearity": cfg.nonlinearity},
            "gru": {"reset_after": cfg.reset_after},
        }.get(cfg.cell, {})
        self.recurrents = {  # by canonical prefix: "" (layer 0 forward), "reverse.", "l1.", ...
            prefix: Recurrent(CELLS[cfg.cell](params, **options), cfg.hidden)
            for prefix, params in init_params(cfg, rng, dtype).items()
        }
        self.rnn = self.recurrents[""]
        self.head = Dense(
            cfg.directions * cfg.hidden, cfg.n_classes, rng=rng, dtype=dtype
        )  # U(±1/sqrt(H)) too

    def run(self, x, initial_state=None):
        """Layer by layer, each direction on its own (the reverse one on the flipped sequence,
        its outputs flipped back); a layer's directions concatenated feed the next layer."""
        n = len(self.recurrents)
        starts = [initial_state] if n == 1 else [None] * n
        if n > 1 and initial_state is not None:  # (L*dirs, B, H) each: one start per recurrent
            starts = [tuple(s[i] for s in initial_state) for i in range(n)]
        finals, outs = [], []
        for (prefix, recurrent), start in zip(self.recurrents.items(), starts):
            reverse = prefix.endswith("reverse.")
            hidden, state = recurrent.forward(x[:, ::-1] if reverse else x, start)
            outs.append(hidden[:, ::-1] if reverse else hidden)
            finals.append(state)
            if len(outs) == self.cfg.directions:  # the layer's directions: (B, T, dirs*H)
                x, outs = np.concatenate(outs, axis=-1), []
        return x, self.stacked(finals)

    def stacked(self, states: list) -> tuple:
        """One recurrent's state as it is; several stacked along a first axis, torch's (L*dirs, B, H)."""
        return states[0] if len(states) == 1 else tuple(np.stack(s) for s in zip(*states))

    def run_backward(self, dhidden):
        """Back through the layers, last first; returns the gradient with respect to the input."""
        items, dirs = list(self.recurrents.items()), self.cfg.directions
        for k in reversed(range(self.cfg.num_layers)):
            parts, dhidden = np.split(dhidden, dirs, axis=-1), 0
            for (prefix, recurrent), d in zip(items[k * dirs : (k + 1) * dirs], parts):
                reverse = prefix.endswith("reverse.")
                dx = recurrent.backward(d[:, ::-1] if reverse else d)
                dhidden = dhidden + (dx[:, ::-1] if reverse else dx)
        return dhidden

    def dinitial_state(self) -> tuple:
        """The gradient with respect to the initial state, after backward."""
        return self.stacked([r.dinitial_state for r in self.recurrents.values()])

    def logits_and_states(self, x, initial_state=None):
        """Logits, every step's hidden state (B, T, H) and the final state: (h,), or (h, c)."""
        hidden, state = self.run(x, initial_state)  # (B, T, D) -> (B, T, H)
        scored = hidden if self.cfg.output == "sequence" else hidden[:, -1]  # or (B, H)
        logits = self.head.forward(scored)  # (B, T, C) or (B, C)
        return logits, hidden, state

    def forward(self, x, initial_state=None):
        return self.logits_and_states(x, initial_state)[0]

    def backward(self, dlogits):
        dh = self.head.backward(dlogits)
        if self.cfg.output == "last":
            steps = self.rnn.cache["x"].shape[1]
            dh = np.concatenate(
                [np.zeros((dh.shape[0], steps - 1, dh.shape[1]), dh.dtype), dh[:, None]], axis=1
            )  # (B, H) -> (B, T, H)
        return self.run_backward(dh)  # (B, T, D): the gradient with respect to the input

    def layers(self) -> dict:
        """Layers with parameters: the recurrent layers and the head."""
        extra = {f"rnn.{p}": r for p, r in self.recurrents.items() if p}
        return {"rnn": self.rnn, **extra, "head": self.head}


def create_model(cfg: RNNConfig, *, seed: int, dtype: str = "float64") -> RNN:
    return RNN(cfg, rng=np.random.default_rng(seed), dtype=np.dtype(dtype))


# ----------------------------------------------------------------------------- canonical weights
def to_canonical(model: RNN, grads: bool = False) -> dict[str, np.ndarray]:
    """The model's parameters (or gradients) by canonical name, the arrays themselves: the cell's
    keys are canonical already (W_xh, W_hh, b_h, b_hn); the head's weight and bias are W_hy, b_y."""
    store = "grads" if grads else "params"
    head = getattr(model.head, store)
    cells = {p + k: v for p, r in model.recurrents.items() for k, v in getattr(r, store).items()}
    return {**cells, **{name: head[key] for name, key in HEAD.items()}}


def load_canonical(model: RNN, params: dict[str, np.ndarray]) -> None:
    """Copy canonical weights in; scratch *is* the canonical layout, so no transform."""
    weights.check(params, model.cfg.param_shapes(), model.head.params["weight"].dtype)
    for prefix, recurrent in model.recurrents.items():
        for key in recurrent.params:
            recurrent.params[key] = np.array(params[prefix + key])
    for name, key in HEAD.items():
        model.head.params[key] = np.array(params[name])


def export_canonical(model: RNN) -> dict[str, np.ndarray]:
    return {name: value.copy() for name, value in to_canonical(model).items()}


# ----------------------------------------------------------------------------- loss
def loss_fn(logits, y):
    """Mean softmax cross-entropy over every scored position, and d loss / d logits."""
    return cross_entropy(logits, y)  # (B, T, C) or (B, C)


def forward_backward(model: RNN, x, y, initial_state=None) -> dict[str, np.ndarray]:
    """Outputs, states, loss and every gradient in the canonical layout (what parity compares);
    from a given initial state (h0,) or (h0, c0), its gradients grad.h0 (and grad.c0) too."""
    zero_grad(model.layers().values())
    logits, hidden, state = model.logits_and_states(x, initial_state)
    loss, dlogits = loss_fn(logits, y)
    dx = model.backward(dlogits)
    out = {"output": logits, "loss": np.asarray(loss), "hidden": hidden, "h_n": state[0]}
    if model.cfg.cell == "lstm":
        out["c_n"] = state[1]
    grads = {f"grad.{k}": g.copy() for k, g in to_canonical(model, grads=True).items()}
    if initial_state is not None:
        grads |= dict(zip(("grad.h0", "grad.c0"), model.dinitial_state()))
    return {**out, "grad.input": dx, **grads}


def predict_logits(model: RNN, x) -> np.ndarray:
    """Logits for a batch, as NumPy (what `rosetta sample` draws from)."""
    return model.forward(x.astype(model.head.params["weight"].dtype))


# ----------------------------------------------------------------------------- train step
def optimizer_config(model: RNN, lr: float | OptimizerConfig) -> OptimizerConfig:
    """A learning rate gives SGD clipped at cfg.clip_norm; an OptimizerConfig clips at its own."""
    if isinstance(lr, OptimizerConfig) and model.cfg.clip_norm is not None:
        raise ValueError(  # one clipping rule, not two in a row
            "an OptimizerConfig clips at its own clip_norm: build the RNNConfig with clip_norm=None"
        )
    return optim.as_config(lr, clip_norm=model.cfg.clip_norm)


def make_optimizer(model: RNN, lr: float | OptimizerConfig) -> optim.Optimizer:
    """A learning rate gives SGD; an OptimizerConfig any optimizer of scratch/optim.py."""
    return optim.make_optimizer(model, optimizer_config(model, lr))


def train_step(model: RNN, optimizer: optim.Optimizer, x, y) -> float:
    optimizer.zero_grad()
    logits = model.forward(x)
    loss, dlogits = loss_fn(logits, y)
    model.backward(dlogits)
    optimizer.step()  # clips by the global norm, then p -= lr * g
    return float(loss)


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
    """Mini-batches in the shared order, stepped by make_optimizer(model, lr); returns the mean
    training loss of each epoch."""
    dtype = model.head.params["weight"].dtype
    x, y = data.x_train.astype(dtype), data.y_train
    optimizer, history = make_optimizer(model, lr), []
    for epoch in range(epochs):
        losses = [
            train_step(model, optimizer, x[idx], y[idx])
            for idx in batches(len(x), batch_size, seed, epoch)
        ]
        history.append(float(np.mean(losses)))
        if on_epoch:
            on_epoch(epoch, history[-1])
    return history


# ----------------------------------------------------------------------------- evaluation
def evaluate(model: RNN, x, y) -> tuple[float, float]:
    """(mean loss, accuracy) on a whole split; a language model scores every position."""
    logits = predict_logits(model, x)
    loss, _ = loss_fn(logits, y)
    return float(loss), float(np.mean(logits.argmax(axis=-1) == y))
