"""LeNet-5 in PyTorch: nn.Conv2d, pooling and nn.Linear layers, autograd, torch.optim.SGD, a DataLoader.

LeCun, Bottou, Bengio & Haffner (1998), "Gradient-based learning applied to document recognition".
torch runs channel-first like the canonical layout: images (B, C, H, W), nn.Conv2d weight
(out_c, in_c, kh, kw), nn.Linear weight (out, in), and nn.Flatten lays features out in (C, H, W)
order, so weights load without a transform. Optional, from LeNet5Config: nn.BatchNorm2d/1d before
each hidden activation, dropout after fc1's and fc2's, He or Xavier initialisation, an L2 penalty;
any optimizer of torch_impl/optim.py.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tasks import weights
from tasks.configs import LeNet5Config, OptimizerConfig
from tasks.data import Dataset
from torch_impl import compat, initializers, optim, porting
from torch_impl.data import EpochSampler
from torch_impl.regularize import l2_penalty, make_batch_norm


# ----------------------------------------------------------------------------- layers
def make_activation(cfg: LeNet5Config) -> nn.Module:
    return {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}[cfg.activation]()


def make_pool(cfg: LeNet5Config) -> nn.Module:
    return {"avg": nn.AvgPool2d, "max": nn.MaxPool2d}[cfg.pooling](
        kernel_size=2
    )  # stride defaults to the kernel size


# ----------------------------------------------------------------------------- model
class LeNet5(nn.Module):
    """Two conv + pool stages, a flatten, two hidden dense layers and a linear head (logits)."""

    def __init__(
        self,
        cfg: LeNet5Config,
        *,
        generator: torch.Generator,
        dtype=torch.float64,
        dropout_layer=nn.Dropout,
    ):
        super().__init__()
        self.cfg = cfg
        (c1, c2), (h1, h2), k, (p1, p2) = cfg.channels, cfg.hidden, cfg.kernel_size, cfg.padding
        bias = (
            not cfg.batch_norm
        )  # a batch norm's mean subtraction cancels the bias of the layer before it
        self.conv1 = nn.Conv2d(cfg.in_channels, c1, k, padding=p1, bias=bias, dtype=dtype)
        self.conv2 = nn.Conv2d(c1, c2, k, padding=p2, bias=bias, dtype=dtype)
        self.fc1 = nn.Linear(
            cfg.flat_features, h1, bias=bias, dtype=dtype
        )  # 16 * 5 * 5 = 400 inputs by default
        self.fc2 = nn.Linear(h1, h2, bias=bias, dtype=dtype)
        self.fc3 = nn.Linear(h2, cfg.n_classes, dtype=dtype)
        # the activation and the pooling hold no parameters, so one of each serves every use
        self.activation = make_activation(cfg)
        self.pool = make_pool(cfg)
        self.flatten = nn.Flatten()
        # optional regularisers: batch norm before each hidden activation, dropout after fc1's and fc2's
        norm = lambda n, conv: (
            make_batch_norm(n, conv=conv, dtype=dtype) if cfg.batch_norm else nn.Identity()
        )
        self.bn1, self.bn2, self.bn3, self.bn4 = (
            norm(c1, True),
            norm(c2, True),
            norm(h1, False),
            norm(h2, False),
        )
        self.drop1, self.drop2 = (
            dropout_layer(cfg.dropout) if cfg.dropout else nn.Identity() for _ in range(2)
        )
        # layers draw from torch's global RNG; redraw from the generator we were given
        with torch.no_grad():
            for layer in [self.conv1, self.conv2, self.fc1, self.fc2, self.fc3]:
                bound = 1.0 / np.sqrt(
                    layer.weight[0].numel()
                )  # fan_in = in_c * kh * kw or in_features
                initializers.initialize_(layer.weight, cfg.init, generator=generator)
                if layer.bias is not None and cfg.init == "uniform":
                    layer.bias.uniform_(-bound, bound, generator=generator)
                elif (
                    layer.bias is not None
                ):  # a named initialiser (He, Xavier) for the weight, zero bias
                    layer.bias.zero_()

    def forward(self, x):
        x = self.pool(
            self.activation(self.bn1(self.conv1(x)))
        )  # (B, 1, 32, 32) -> (B, 6, 28, 28) -> (B, 6, 14, 14)
        x = self.pool(
            self.activation(self.bn2(self.conv2(x)))
        )  # -> (B, 16, 10, 10) -> (B, 16, 5, 5)
        x = self.flatten(x)  # (B, 16, 5, 5) -> (B, 400)
        x = self.drop1(self.activation(self.bn3(self.fc1(x))))  # (B, 400) -> (B, 120)
        x = self.drop2(self.activation(self.bn4(self.fc2(x))))  # (B, 120) -> (B, 84)
        return self.fc3(x)  # (B, 84) -> (B, C) logits


def create_model(
    cfg: LeNet5Config,
    *,
    seed: int,
    dtype: str = "float64",
    dropout_layer=nn.Dropout,
    device: str | torch.device = "cpu",
) -> LeNet5:
    """dropout_layer: the parity tests pass a mask-replaying layer (tasks/replay/).

    Weights drawn on the CPU, then moved: one seed gives the same model on every device."""
    model = LeNet5(
        cfg,
        generator=torch.Generator().manual_seed(seed),
        dtype=getattr(torch, dtype),
        dropout_layer=dropout_layer,
    )
    return model.to(device)


# ----------------------------------------------------------------------------- canonical weights
def canonical_layers(model: LeNet5) -> dict:
    """Each stock layer by canonical prefix, with its torch_impl/porting.py function (torch's
    nn.Conv2d, nn.Linear and nn.BatchNorm are the canonical layout, and nn.Flatten flattens
    (C, H, W) like it: no transform)."""
    out = {
        "conv1.": ("conv2d", model.conv1, {}),
        "conv2.": ("conv2d", model.conv2, {}),
        "fc1.": ("dense", model.fc1, {}),
        "fc2.": ("dense", model.fc2, {}),
        "fc3.": ("dense", model.fc3, {}),
    }
    if model.cfg.batch_norm:
        out.update({f"bn{i}.": ("batch_norm", getattr(model, f"bn{i}"), {}) for i in range(1, 5)})
    return out


def load_canonical(model: LeNet5, params: dict[str, np.ndarray]) -> None:
    weights.check(params, model.cfg.param_shapes(), model.fc3.weight.detach().cpu().numpy().dtype)
    porting.load_layers(canonical_layers(model), params)


def export_canonical(model: LeNet5) -> dict[str, np.ndarray]:
    return porting.layers_to_canonical(canonical_layers(model))


# ----------------------------------------------------------------------------- loss
def loss_fn(logits, y):
    """Mean softmax cross-entropy computed from logits (the fused, numerically stable form)."""
    return F.cross_entropy(logits, y)


def forward_backward(model: LeNet5, x, y, *, device="cpu") -> dict[str, np.ndarray]:
    """Outputs, loss and every gradient in the canonical layout (what the parity tests compare)."""
    model.zero_grad()
    x = torch.tensor(x, device=device, requires_grad=True)
    logits = model(x)
    loss = loss_fn(logits, torch.as_tensor(y, device=device))
    loss.backward()
    numpy = lambda t: t.detach().cpu().numpy().copy()
    grads = porting.layers_to_canonical(canonical_layers(model), grads=True)
    grads = {f"grad.{k}": g for k, g in grads.items()}
    return {"output": numpy(logits), "loss": numpy(loss), "grad.input": numpy(x.grad), **grads}


# ----------------------------------------------------------------------------- train step
def make_optimizer(model: LeNet5, lr: float | OptimizerConfig) -> torch.optim.Optimizer:
    """A learning rate gives torch.optim.SGD; an OptimizerConfig any optimizer of torch_impl/optim.py
    (its schedule and clipping are the train loop's: optim.make_scheduler, compat.clip_grad_norm_)."""
    return optim.make_torch_optimizer(model.parameters(), optim.as_config(lr))


def train_step(model: LeNet5, optimizer: torch.optim.Optimizer, x, y, *, clip_norm=None) -> float:
    optimizer.zero_grad()
    loss = loss_fn(model(x), y)
    if model.cfg.l2:  # the penalty (l2 / 2) * sum p^2 is part of the loss
        loss = loss + l2_penalty(model, model.cfg.l2)
    loss.backward()
    if clip_norm is not None:  # nn.utils.clip_grad_norm_ without its 1e-6 (compat.py)
        compat.clip_grad_norm_(model.parameters(), clip_norm)
    optimizer.step()
    return loss.item()


def train(
    model: LeNet5,
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
    dtype = model.fc3.weight.dtype
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
def evaluate(model: LeNet5, x, y, *, device="cpu") -> tuple[float, float]:
    """(mean loss, accuracy) on a whole split."""
    model.eval()
    logits = model(torch.as_tensor(x, dtype=model.fc3.weight.dtype, device=device))
    y = torch.as_tensor(y, device=device)
    return loss_fn(logits, y).item(), (logits.argmax(dim=1) == y).double().mean().item()
