"""Multilayer perceptron in PyTorch: nn.Linear layers, autograd, torch.optim.SGD, a DataLoader.

Rumelhart, Hinton & Williams (1986), "Learning representations by back-propagating errors".
nn.Linear stores weight (out, in), the canonical layout, so weights load without a transform.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tasks import weights
from tasks.configs import MLPConfig, OptimizerConfig
from tasks.data import Dataset
from torch_impl import compat, initializers, optim, porting
from torch_impl.data import EpochSampler
from torch_impl.regularize import l2_penalty, make_batch_norm


# ----------------------------------------------------------------------------- layers
def make_activation(cfg: MLPConfig) -> nn.Module:
    if cfg.activation == "leaky_relu":
        return nn.LeakyReLU(negative_slope=cfg.leaky_slope)
    activations = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "identity": nn.Identity}
    return activations[cfg.activation]()


# ----------------------------------------------------------------------------- model
class MLP(nn.Module):
    """Dense layers with one hidden activation, then a linear head that outputs logits."""

    def __init__(
        self,
        cfg: MLPConfig,
        *,
        generator: torch.Generator,
        dtype=torch.float64,
        dropout_layer=nn.Dropout,
    ):
        super().__init__()
        self.cfg = cfg
        sizes = cfg.sizes
        bias = (
            not cfg.batch_norm
        )  # a batch norm's mean subtraction cancels the bias of the layer before it
        self.hidden = nn.ModuleList(
            nn.Linear(i, o, bias=bias, dtype=dtype) for i, o in zip(sizes[:-2], sizes[1:-1])
        )
        # the activation holds no state, so one module serves every hidden layer
        self.activation = make_activation(cfg)
        self.head = nn.Linear(sizes[-2], sizes[-1], dtype=dtype)
        # optional regularisers: batch norm before each hidden activation, dropout after it
        self.bn = nn.ModuleList(
            [make_batch_norm(o, dtype=dtype) for o in sizes[1:-1]] if cfg.batch_norm else []
        )
        self.dropouts = nn.ModuleList(
            [dropout_layer(cfg.dropout) for _ in self.hidden] if cfg.dropout else []
        )
        # nn.Linear draws from torch's global RNG; redraw from the generator we were given
        with torch.no_grad():
            for layer in [*self.hidden, self.head]:
                bound = 1.0 / np.sqrt(layer.in_features)  # nn.Linear's own default range
                initializers.initialize_(layer.weight, cfg.init, generator=generator)
                if layer.bias is not None and cfg.init == "uniform":
                    layer.bias.uniform_(-bound, bound, generator=generator)
                elif (
                    layer.bias is not None
                ):  # a named initialiser (He, Xavier) for the weight, zero bias
                    layer.bias.zero_()

    def forward(self, x):
        for i, layer in enumerate(self.hidden):
            x = layer(x)  # (B, D_in) -> (B, D_hidden)
            if self.bn:
                x = self.bn[i](x)
            x = self.activation(x)
            if self.dropouts:
                x = self.dropouts[i](x)
        return self.head(x)  # (B, D_hidden) -> (B, C) logits; C = 1 for a sigmoid head


def create_model(
    cfg: MLPConfig,
    *,
    seed: int,
    dtype: str = "float64",
    dropout_layer=nn.Dropout,
    device: str | torch.device = "cpu",
) -> MLP:
    """dropout_layer: the parity tests pass a mask-replaying layer (tasks/replay/).

    Weights drawn on the CPU, then moved: one seed gives the same model on every device."""
    model = MLP(
        cfg,
        generator=torch.Generator().manual_seed(seed),
        dtype=getattr(torch, dtype),
        dropout_layer=dropout_layer,
    )
    return model.to(device)


# ----------------------------------------------------------------------------- canonical weights
def canonical_layers(model: MLP) -> dict:
    """Each stock layer by canonical prefix, with its torch_impl/porting.py function (torch's
    nn.Linear and nn.BatchNorm1d are the canonical layout: no transform)."""
    out = {f"hidden.{i}.": ("dense", layer, {}) for i, layer in enumerate(model.hidden)}
    out["head."] = ("dense", model.head, {})
    return out | {f"bn.{i}.": ("batch_norm", norm, {}) for i, norm in enumerate(model.bn)}


def load_canonical(model: MLP, params: dict[str, np.ndarray]) -> None:
    weights.check(params, model.cfg.param_shapes(), model.head.weight.detach().cpu().numpy().dtype)
    porting.load_layers(canonical_layers(model), params)


def export_canonical(model: MLP) -> dict[str, np.ndarray]:
    return porting.layers_to_canonical(canonical_layers(model))


# ----------------------------------------------------------------------------- loss
def loss_fn(logits, y, head: str):
    """Mean loss computed from logits (the fused, numerically stable forms)."""
    if head == "sigmoid":
        return F.binary_cross_entropy_with_logits(
            logits[:, 0], y.to(logits.dtype)
        )  # (B, 1) -> (B,)
    if head == "identity":  # regression: (B, K) predictions against (B, K) float targets
        return F.mse_loss(logits, y.to(logits.dtype))  # nn.MSELoss(), reduction "mean"
    return F.cross_entropy(logits, y)


def predict(logits, head: str):
    if head == "identity":
        return logits  # a regression predicts the outputs themselves
    return (logits[:, 0] > 0).long() if head == "sigmoid" else logits.argmax(dim=1)


def r2_score(pred, y):
    """1 - SS_res / SS_tot per target, averaged over the targets (scikit-learn's r2_score)."""
    ss_res = ((y - pred) ** 2).sum(dim=0)  # (B, K) -> (K,)
    ss_tot = ((y - y.mean(dim=0)) ** 2).sum(dim=0)
    return (1 - ss_res / ss_tot).mean()


def score(logits, y, head: str):
    """evaluate's second number: a classifier's accuracy, a regression's R²."""
    if head == "identity":
        return r2_score(logits, y.to(logits.dtype))
    return (predict(logits, head) == y).double().mean()


def forward_backward(model: MLP, x, y, *, device="cpu") -> dict[str, np.ndarray]:
    """Outputs, loss and every gradient in the canonical layout (what the parity tests compare)."""
    model.zero_grad()
    x = torch.tensor(x, device=device, requires_grad=True)
    logits = model(x)
    loss = loss_fn(logits, torch.as_tensor(y, device=device), model.cfg.head)
    loss.backward()
    numpy = lambda t: t.detach().cpu().numpy().copy()
    grads = porting.layers_to_canonical(canonical_layers(model), grads=True)
    grads = {f"grad.{k}": g for k, g in grads.items()}
    return {"output": numpy(logits), "loss": numpy(loss), "grad.input": numpy(x.grad), **grads}


# ----------------------------------------------------------------------------- train step
def make_optimizer(model: MLP, lr: float | OptimizerConfig) -> torch.optim.Optimizer:
    """A learning rate gives torch.optim.SGD; an OptimizerConfig any optimizer of torch_impl/optim.py
    (its schedule and clipping are the train loop's: optim.make_scheduler, compat.clip_grad_norm_)."""
    return optim.make_torch_optimizer(model.parameters(), optim.as_config(lr))


def train_step(model: MLP, optimizer: torch.optim.Optimizer, x, y, *, clip_norm=None) -> float:
    optimizer.zero_grad()
    loss = loss_fn(model(x), y, model.cfg.head)
    if model.cfg.l2:  # the penalty (l2 / 2) * sum p^2 is part of the loss
        loss = loss + l2_penalty(model, model.cfg.l2)
    loss.backward()
    if clip_norm is not None:  # nn.utils.clip_grad_norm_ without its 1e-6 (compat.py)
        compat.clip_grad_norm_(model.parameters(), clip_norm)
    optimizer.step()
    return loss.item()


def train(
    model: MLP,
    data: Dataset,
    *,
    epochs: int,
    lr: float | OptimizerConfig,
    batch_size: int,
    seed: int,
    on_epoch=None,
    device="cpu",
) -> list[float]:
    """Mini-batches in the shared order; returns the mean training loss of each epoch.

    Randomness: nn.Dropout draws from torch's global generator, so the loop runs inside
    torch.random.fork_rng() seeded with `seed`: the same seed gives the same masks, bit for bit,
    and the caller's global RNG state is restored afterwards."""
    dtype = model.head.weight.dtype
    dataset = TensorDataset(
        torch.as_tensor(data.x_train, dtype=dtype), torch.as_tensor(data.y_train)
    )
    sampler = EpochSampler(len(dataset), seed, batch_size)  # the shared batches (tasks.data)
    loader = DataLoader(dataset, batch_sampler=sampler)
    spec = optim.as_config(lr)
    optimizer = optim.make_torch_optimizer(model.parameters(), spec)
    scheduler = optim.make_scheduler(optimizer, spec)  # the lr of every step: warmup, decay
    history = []
    with torch.random.fork_rng(devices=[] if torch.device(device).type == "cpu" else [device]):
        torch.manual_seed(seed)
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
def evaluate(model: MLP, x, y, *, device="cpu") -> tuple[float, float]:
    """(mean loss, accuracy) on a whole split; a regression's (mean squared error, R²)."""
    model.eval()
    logits = model(torch.as_tensor(x, dtype=model.head.weight.dtype, device=device))
    y = torch.as_tensor(y, device=device)
    return loss_fn(logits, y, model.cfg.head).item(), score(logits, y, model.cfg.head).item()
