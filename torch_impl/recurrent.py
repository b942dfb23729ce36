"""Recurrent networks (tanh RNN, LSTM, GRU) in PyTorch: nn.RNN / nn.LSTM / nn.GRU, and the step by hand.

Elman (1990), "Finding structure in time"; Hochreiter & Schmidhuber (1997), "Long short-term memory";
Cho et al. (2014), "Learning phrase representations using RNN encoder-decoder" (the GRU).
torch's layers keep the canonical (G*H, D) weights and gate orders (i, f, g, o) and (r, z, n), but two
biases, bias_ih and bias_hh, where the canonical model has one: bias_hh holds 0 and never trains,
except its GRU candidate block, which is the canonical b_hn. Keras's GRU(reset_after=False), which
nn.GRU cannot compute, runs in GRUResetBefore, written by hand with nn.GRU's parameter names.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tasks import weights
from tasks.configs import OptimizerConfig, RNNConfig
from tasks.data import Dataset
from torch_impl import compat, optim, porting
from torch_impl.data import EpochSampler


# ----------------------------------------------------------------------------- layers
def rnn_step(cell: nn.RNN, x, state):
    """One step, h' = f(W_xh x + W_hh h + b_h), f = the cell's tanh or relu, on its own parameters."""
    (h,) = state
    a = (
        x @ cell.weight_ih_l0.T + cell.bias_ih_l0 + h @ cell.weight_hh_l0.T + cell.bias_hh_l0
    )  # (B, D) @ (D, H) + (B, H) @ (H, H) -> (B, H)
    h = torch.tanh(a) if cell.nonlinearity == "tanh" else torch.relu(a)
    return (h,)


def lstm_step(cell: nn.LSTM, x, state):
    """One step: gates (i, f, g, o), c' = f c + i g, h' = o tanh(c')."""
    h, c = state
    a = (
        x @ cell.weight_ih_l0.T + cell.bias_ih_l0 + h @ cell.weight_hh_l0.T + cell.bias_hh_l0
    )  # (B, D) @ (D, 4H) + (B, H) @ (H, 4H) -> (B, 4H)
    a_i, a_f, a_g, a_o = a.chunk(4, dim=1)  # (B, 4H) -> 4 x (B, H), torch's order (i, f, g, o)
    i, f, g, o = torch.sigmoid(a_i), torch.sigmoid(a_f), torch.tanh(a_g), torch.sigmoid(a_o)
    c = f * c + i * g
    h = o * torch.tanh(c)
    return h, c


def gru_step(cell: nn.GRU, x, state):
    """One step: gates (r, z, n), n = tanh(W_in x + b_in + r (W_hn h + b_hn)), h' = (1 - z) n + z h.
    A GRUResetBefore cell resets before the matmul: n = tanh(W_in x + b_in + W_hn (r h))."""
    (h,) = state
    if not getattr(cell, "reset_after", True):  # nn.GRU has only the reset_after form
        return gru_reset_before_step(cell, x, state)
    x_r, x_z, x_n = (x @ cell.weight_ih_l0.T + cell.bias_ih_l0).chunk(
        3, dim=1
    )  # (B, D) @ (D, 3H) -> 3 x (B, H)
    h_r, h_z, h_n = (h @ cell.weight_hh_l0.T + cell.bias_hh_l0).chunk(
        3, dim=1
    )  # (B, H) @ (H, 3H) -> 3 x (B, H)
    r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)  # the reset gate scales W_hn h + b_hn, after the matmul
    h = (1 - z) * n + z * h
    return (h,)


def gru_reset_before_step(cell: GRUResetBefore, x, state):
    """Keras's GRU(reset_after=False): n = tanh(W_in x + b_in + W_hn (r h)), h' = (1 - z) n + z h."""
    (h,) = state
    w_h, b_h = cell.weight_hh_l0, cell.bias_hh_l0  # bias_hh: 0, a duplicate of bias_ih
    x_r, x_z, x_n = (x @ cell.weight_ih_l0.T + cell.bias_ih_l0 + b_h).chunk(
        3, dim=1
    )  # (B, D) @ (D, 3H) -> 3 x (B, H)
    h_r, h_z = (h @ w_h[: 2 * cell.hidden_size].T).chunk(2, dim=1)  # (B, H) @ (H, 2H) -> 2 x (B, H)
    r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + (r * h) @ w_h[2 * cell.hidden_size :].T)  # the reset before the matmul
    h = (1 - z) * n + z * h
    return (h,)


class GRUResetBefore(nn.Module):
    """Keras's GRU(reset_after=False), which nn.GRU cannot compute, written by hand: nn.GRU's
    parameter names and shapes (so torch_impl/porting.py's rule maps it, reset_after=False), its
    step gru_reset_before_step over time; called like nn.GRU, (x, h0 (1, B, H)) -> (out, h_n)."""

    reset_after = False

    def __init__(self, in_features: int, hidden: int, *, dtype, batch_first: bool = True, **_):
        super().__init__()
        self.hidden_size = hidden
        self.weight_ih_l0 = nn.Parameter(torch.empty(3 * hidden, in_features, dtype=dtype))
        self.weight_hh_l0 = nn.Parameter(torch.empty(3 * hidden, hidden, dtype=dtype))
        self.bias_ih_l0 = nn.Parameter(torch.empty(3 * hidden, dtype=dtype))
        self.bias_hh_l0 = nn.Parameter(torch.empty(3 * hidden, dtype=dtype))

    def forward(self, x, hx=None):
        h = x.new_zeros(x.shape[0], self.hidden_size) if hx is None else hx[0]
        hs = []
        for t in range(x.shape[1]):
            (h,) = gru_reset_before_step(self, x[:, t], (h,))  # (B, D) -> (B, H)
            hs.append(h)
        return torch.stack(hs, dim=1), h[None]  # (B, T, H), (1, B, H)


STEPS = {"rnn": rnn_step, "lstm": lstm_step, "gru": gru_step}
LAYERS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


# ----------------------------------------------------------------------------- model
class RNN(nn.Module):
    """One recurrent layer and a linear head: logits at every step, or at the last step only.

    model(x) returns the logits, (B, T, C) or (B, C); model.logits_and_states(x) returns (logits,
    hidden, state): every step's hidden state (B, T, H) and the final state, (h,) or (h, c).
    Either call takes an optional initial_state, (h0,) or (h0, c0), each (B, H) (zeros without).
    With num_layers > 1 or bidirectional, hidden is the last layer's (B, T, dirs*H) and each state
    (L*dirs, B, H), torch's own.
    """

    def __init__(self, cfg: RNNConfig, *, generator: torch.Generator, dtype=torch.float64):
        super().__init__()
        self.cfg = cfg
        self.step = STEPS[cfg.cell]
        nonlinearity = {"nonlinearity": cfg.nonlinearity} if cfg.cell == "rnn" else {}
        layer = LAYERS[cfg.cell] if cfg.reset_after else GRUResetBefore
        self.rnn = layer(
            cfg.in_features,
            cfg.hidden,
            num_layers=cfg.num_layers,
            bidirectional=cfg.bidirectional,
            batch_first=True,
            dtype=dtype,
            **nonlinearity,
        )
        self.head = nn.Linear(cfg.directions * cfg.hidden, cfg.n_classes, dtype=dtype)
        # torch's layers draw from the global RNG; redraw from the generator we were given
        with torch.no_grad():
            for p in self.parameters():
                bound = 1.0 / np.sqrt(cfg.hidden)
                p.uniform_(-bound, bound, generator=generator)
            for bias_hh in self.biases_hh():
                bias_hh[: self.trained_bias_hh_start()] = 0
        # bias_hh duplicates bias_ih (except the GRU's candidate block): if both copies trained, the
        # bias would learn at twice the rate and count twice in the gradient norm. Mask its gradient;
        # the mask is a buffer, so model.to(device) moves it with the parameters.
        mask = torch.zeros_like(self.rnn.bias_hh_l0)
        mask[self.trained_bias_hh_start() :] = 1
        self.register_buffer("bias_hh_mask", mask, persistent=False)  # not a canonical tensor
        for bias_hh in self.biases_hh():  # every layer's and direction's
            bias_hh.register_hook(lambda grad: grad * self.bias_hh_mask)

    def biases_hh(self) -> list:
        """bias_hh_l0, bias_hh_l0_reverse, bias_hh_l1, ...: each layer's and direction's."""
        return [p for name, p in self.rnn.named_parameters() if name.startswith("bias_hh")]

    def trained_bias_hh_start(self) -> int:
        """bias_hh[start:] is a real parameter (the GRU's b_hn); bias_hh[:start] stays 0."""
        if self.cfg.cell == "gru" and self.cfg.reset_after:
            return 2 * self.cfg.hidden
        return self.rnn.bias_hh_l0.shape[0]

    def by_hand(self, x, initial_state=None):
        state = initial_state or tuple(
            x.new_zeros(x.shape[0], self.cfg.hidden)
            for _ in range(2 if self.cfg.cell == "lstm" else 1)
        )
        hs = []
        for t in range(x.shape[1]):
            state = self.step(self.rnn, x[:, t], state)  # (B, D) -> (B, H)
            hs.append(state[0])
        return torch.stack(hs, dim=1), state  # T x (B, H) -> (B, T, H)

    def logits_and_states(self, x, initial_state=None):
        """Logits, every step's hidden state (B, T, H) and the final state: (h,), or (h, c)."""
        if self.cfg.fused:
            one = len(self.cfg.layer_prefixes()) == 1  # one layer and direction: states (B, H)
            hx = initial_state and tuple(s[None] if one else s for s in initial_state)
            if hx and self.cfg.cell != "lstm":
                (hx,) = hx  # nn.RNN and nn.GRU take h0 alone, nn.LSTM the pair (h0, c0)
            hidden, state = self.rnn(
                x, hx
            )  # (B, T, D) -> (B, T, H); state: (L*dirs, B, H), a pair of them for the LSTM
            state = state if self.cfg.cell == "lstm" else (state,)
            state = tuple(s[0] if one else s for s in state)  # (1, B, H) -> (B, H)
        else:
            hidden, state = self.by_hand(x, initial_state)
        logits = self.head(
            hidden if self.cfg.output == "sequence" else hidden[:, -1]
        )  # (B, T, C) or (B, C)
        return logits, hidden, state

    def forward(self, x, initial_state=None):
        return self.logits_and_states(x, initial_state)[0]


def create_model(
    cfg: RNNConfig, *, seed: int, dtype: str = "float64", device: str | torch.device = "cpu"
) -> RNN:
    """Weights drawn on the CPU, then moved: one seed gives the same model on every device."""
    model = RNN(cfg, generator=torch.Generator().manual_seed(seed), dtype=getattr(torch, dtype))
    return model.to(device)


# ----------------------------------------------------------------------------- canonical weights
PORTING = {"rnn": "simple_rnn", "lstm": "lstm", "gru": "gru"}  # torch_impl/porting.py's layer names
HEAD_NAMES = {"head.weight": "W_hy", "head.bias": "b_y"}  # the dense head's canonical names


def canonical_layers(model: RNN) -> dict:
    """Each stock layer by canonical prefix, with its torch_impl/porting.py function and layout."""
    layout = {} if model.cfg.reset_after else {"reset_after": False}  # GRUResetBefore
    return {"": (PORTING[model.cfg.cell], model.rnn, layout), "head.": ("dense", model.head, {})}


def load_canonical(model: RNN, params: dict[str, np.ndarray]) -> None:
    """Through torch_impl/porting.py: the one bias b_h goes to bias_ih, bias_hh = 0 (the GRU's
    candidate block b_hn); weights and gate order as canonical."""
    weights.check(params, model.cfg.param_shapes(), model.head.weight.detach().cpu().numpy().dtype)
    head = {k: params[name] for k, name in HEAD_NAMES.items()}
    porting.load_layers(canonical_layers(model), {**params, **head})


def to_canonical(model: RNN, grads: bool = False) -> dict[str, np.ndarray]:
    """The weights, or with `grads=True` the `.grad`s, in the canonical layout (torch_impl/porting.py:
    b_h = bias_ih + bias_hh; the gradient of that sum is grad bias_ih, not the sum)."""
    out = porting.layers_to_canonical(canonical_layers(model), grads=grads)
    return {HEAD_NAMES.get(k, k): v for k, v in out.items()}


def export_canonical(model: RNN) -> dict[str, np.ndarray]:
    return to_canonical(model)


# ----------------------------------------------------------------------------- loss
def loss_fn(logits, y):
    """Mean cross-entropy from logits over every scored position."""
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), y.reshape(-1)
    )  # (B, T, C) -> (B*T, C)


def forward_backward(
    model: RNN, x, y, initial_state=None, *, device="cpu"
) -> dict[str, np.ndarray]:
    """Outputs, states, loss and every gradient in the canonical layout (what the parity tests
    compare); from a given initial state (h0,) or (h0, c0), its gradients grad.h0 (and grad.c0) too."""
    model.zero_grad()
    x = torch.tensor(x, device=device, requires_grad=True)
    if initial_state is not None:
        initial_state = tuple(
            torch.tensor(s, device=device, requires_grad=True) for s in initial_state
        )
    logits, hidden, state = model.logits_and_states(x, initial_state)
    loss = loss_fn(logits, torch.as_tensor(y, device=device))
    loss.backward()
    out = {"output": logits, "loss": loss, "hidden": hidden, "h_n": state[0]}
    if model.cfg.cell == "lstm":
        out["c_n"] = state[1]
    out = {k: v.detach().cpu().numpy() for k, v in out.items()}
    grads = {f"grad.{k}": g for k, g in to_canonical(model, grads=True).items()}
    if initial_state is not None:
        grads |= {n: s.grad.cpu().numpy() for n, s in zip(("grad.h0", "grad.c0"), initial_state)}
    return {**out, "grad.input": x.grad.cpu().numpy(), **grads}


@torch.no_grad()
def predict_logits(model: RNN, x, *, device="cpu") -> np.ndarray:
    """Logits for a batch, as NumPy (what `rosetta sample` draws from)."""
    model.eval()
    return model(torch.as_tensor(x, dtype=model.head.weight.dtype, device=device)).cpu().numpy()


# ----------------------------------------------------------------------------- train step
def optimizer_config(model: RNN, lr: float | OptimizerConfig) -> OptimizerConfig:
    """A learning rate gives SGD clipped at cfg.clip_norm; an OptimizerConfig clips at its own."""
    if isinstance(lr, OptimizerConfig) and model.cfg.clip_norm is not None:
        raise ValueError(  # one clipping rule, not two in a row
            "an OptimizerConfig clips at its own clip_norm: build the RNNConfig with clip_norm=None"
        )
    return optim.as_config(lr, clip_norm=model.cfg.clip_norm)


def make_optimizer(model: RNN, lr: float | OptimizerConfig) -> torch.optim.Optimizer:
    """A learning rate gives torch.optim.SGD; an OptimizerConfig any optimizer of torch_impl/optim.py
    (its schedule and clipping are the train loop's: optim.make_scheduler, compat.clip_grad_norm_)."""
    return optim.make_torch_optimizer(model.parameters(), optimizer_config(model, lr))


def train_step(model: RNN, optimizer: torch.optim.Optimizer, x, y, *, clip_norm=None) -> float:
    """clip_norm: an OptimizerConfig's; by default the RNNConfig's (the lesson's clipped SGD)."""
    clip_norm = model.cfg.clip_norm if clip_norm is None else clip_norm
    optimizer.zero_grad()
    loss = loss_fn(model(x), y)
    loss.backward()
    if clip_norm is not None:  # nn.utils.clip_grad_norm_ without its 1e-6 (compat.py)
        compat.clip_grad_norm_(model.parameters(), clip_norm)
    optimizer.step()
    return loss.item()


def train(
    model: RNN,
    data: Dataset,
    *,
    epochs: int,
    lr: float | OptimizerConfig,
    batch_size: int,
    seed: int,
    on_epoch=None,
    device="cpu",
) -> list[float]:
    """Mini-batches in the shared order; returns the mean training loss of each epoch."""
    dtype = model.head.weight.dtype
    dataset = TensorDataset(
        torch.as_tensor(data.x_train, dtype=dtype), torch.as_tensor(data.y_train)
    )
    sampler = EpochSampler(len(dataset), seed, batch_size)  # the shared batches (tasks.data)
    loader = DataLoader(dataset, batch_sampler=sampler)
    spec = optimizer_config(model, lr)
    optimizer = optim.make_torch_optimizer(model.parameters(), spec)
    scheduler = optim.make_scheduler(optimizer, spec)  # the lr of every step: warmup, decay
    history = []
    for epoch in range(epochs):
        model.train()  # every epoch: evaluate() in on_epoch switches to eval mode
        sampler.set_epoch(epoch)
        losses = []
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            losses.append(train_step(model, optimizer, x, y, clip_norm=spec.clip_norm))
            scheduler.step()
        history.append(float(np.mean(losses)))
        if on_epoch:
            on_epoch(epoch, history[-1])
    return history


# ----------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model: RNN, x, y, *, device="cpu") -> tuple[float, float]:
    """(mean loss, accuracy) on a whole split; a language model scores every position."""
    model.eval()
    logits = model(torch.as_tensor(x, dtype=model.head.weight.dtype, device=device))
    y = torch.as_tensor(y, device=device)
    return loss_fn(logits, y).item(), (logits.argmax(dim=-1) == y).double().mean().item()
