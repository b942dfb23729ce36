"""LeNet-5, from scratch in NumPy, with a hand-written backward pass and a vectorised convolution.

LeCun, Bottou, Bengio & Haffner (1998), "Gradient-based learning applied to document recognition".
conv 6@5x5 -> pool 2x2 -> conv 16@5x5 -> pool 2x2 -> flatten -> dense 120 -> dense 84 -> dense 10,
with the activation after each conv and hidden dense layer. Images are (B, C, H, W) and kernels
(out_c, in_c, kh, kw): the canonical layouts every other implementation converts to and from.
The layers are scratch/layers.py's; its convolution is im2col + one matmul (`sliding_window_view`),
with no Python loop over pixels, channels or batch elements. Optional, from LeNet5Config: batch
norm before each hidden activation (Ioffe & Szegedy 2015), dropout after fc1's and fc2's (Srivastava et al. 2014), He or
Xavier initialisation, an L2 penalty; any optimiser of scratch/optim.py.
"""

from __future__ import annotations

import numpy as np

from scratch import optim
from scratch.layers import (
    ACTIVATIONS,
    AvgPool2d,
    BatchNorm,
    Conv2d,
    Dense,
    Dropout,
    Flatten,
    Identity,
    MaxPool2d,
    add_l2_gradient,
    cross_entropy,
    l2_penalty,
    zero_grad,
)
from tasks import weights
from tasks.configs import LeNet5Config, OptimizerConfig
from tasks.data import Dataset, batches


# ----------------------------------------------------------------------------- layers
def make_activation(cfg: LeNet5Config):
    return ACTIVATIONS[cfg.activation]()


def make_pool(cfg: LeNet5Config):
    return {"avg": AvgPool2d, "max": MaxPool2d}[cfg.pooling]()


# ----------------------------------------------------------------------------- model
class LeNet5:
    """Two conv + pool stages, a flatten, two hidden dense layers and a linear head (logits)."""

    def __init__(
        self,
        cfg: LeNet5Config,
        *,
        rng: np.random.Generator,
        dtype=np.float64,
        dropout_layer=Dropout,
    ):
        self.cfg = cfg
        (c1, c2), (h1, h2), k, (p1, p2) = cfg.channels, cfg.hidden, cfg.kernel_size, cfg.padding
        # a batch norm's mean subtraction cancels the bias of the layer before it
        bias = not cfg.batch_norm
        kw = dict(rng=rng, dtype=dtype, init=cfg.init, bias=bias)
        self.conv1 = Conv2d(cfg.in_channels, c1, k, padding=p1, **kw)
        self.conv2 = Conv2d(c1, c2, k, padding=p2, **kw)
        # 16 * 5 * 5 = 400 inputs by default
        self.fc1 = Dense(cfg.flat_features, h1, rng=rng, dtype=dtype, init=cfg.init, bias=bias)
        self.fc2 = Dense(h1, h2, rng=rng, dtype=dtype, init=cfg.init, bias=bias)
        self.fc3 = Dense(h2, cfg.n_classes, rng=rng, dtype=dtype, init=cfg.init)
        # one activation object per use: each caches its own input for backward
        self.act1, self.act2, self.act3, self.act4 = (make_activation(cfg) for _ in range(4))
        self.pool1, self.pool2 = make_pool(cfg), make_pool(cfg)
        self.flatten = Flatten()
        # optional regularisers: batch norm before each hidden activation, dropout after fc1's, fc2's
        # one class for both: it normalises (B, C, H, W) per channel, (B, D) per feature
        norm = lambda n: BatchNorm(n, dtype=dtype) if cfg.batch_norm else Identity()
        self.bn1, self.bn2, self.bn3, self.bn4 = norm(c1), norm(c2), norm(h1), norm(h2)
        self.drop1, self.drop2 = (
            dropout_layer(cfg.dropout, rng=rng) if cfg.dropout else Identity() for _ in range(2)
        )

    def forward(self, x):
        # (B, 1, 32, 32) -> (B, 6, 28, 28) -> (B, 6, 14, 14); 28x28 with padding (2, 0) alike
        x = self.pool1.forward(self.act1.forward(self.bn1.forward(self.conv1.forward(x))))
        # -> (B, 16, 10, 10) -> (B, 16, 5, 5)
        x = self.pool2.forward(self.act2.forward(self.bn2.forward(self.conv2.forward(x))))
        x = self.flatten.forward(x)  # (B, 16, 5, 5) -> (B, 400)
        # (B, 400) -> (B, 120) -> (B, 84)
        x = self.drop1.forward(self.act3.forward(self.bn3.forward(self.fc1.forward(x))))
        x = self.drop2.forward(self.act4.forward(self.bn4.forward(self.fc2.forward(x))))
        return self.fc3.forward(x)  # (B, 84) -> (B, C) logits

    def backward(self, dlogits, input_grad: bool = True):
        dx = self.bn4.backward(self.act4.backward(self.drop2.backward(self.fc3.backward(dlogits))))
        dx = self.bn3.backward(self.act3.backward(self.drop1.backward(self.fc2.backward(dx))))
        dx = self.flatten.backward(self.fc1.backward(dx))
        dx = self.bn2.backward(self.act2.backward(self.pool2.backward(dx)))
        dx = self.bn1.backward(self.act1.backward(self.pool1.backward(self.conv2.backward(dx))))
        return self.conv1.backward(dx, input_grad)  # (B, 1, 32, 32): the saliency map, or None

    def set_training(self, training: bool) -> None:
        """Train mode (batch statistics, dropout on) or eval mode (running statistics, no dropout)."""
        for layer in (self.bn1, self.bn2, self.bn3, self.bn4, self.drop1, self.drop2):
            layer.training = training

    def layers(self) -> dict[str, Conv2d | Dense | BatchNorm]:
        """Layers with parameters, by canonical prefix."""
        norms = {
            f"bn{i}": norm
            for i, norm in enumerate((self.bn1, self.bn2, self.bn3, self.bn4), 1)
            if isinstance(norm, BatchNorm)
        }
        return {
            "conv1": self.conv1,
            "conv2": self.conv2,
            "fc1": self.fc1,
            "fc2": self.fc2,
            "fc3": self.fc3,
            **norms,
        }


def create_model(
    cfg: LeNet5Config, *, seed: int, dtype: str = "float64", dropout_layer=Dropout
) -> LeNet5:
    """dropout_layer: the parity tests pass a mask-replaying layer (tasks/replay/)."""
    return LeNet5(
        cfg, rng=np.random.default_rng(seed), dtype=np.dtype(dtype), dropout_layer=dropout_layer
    )


# ----------------------------------------------------------------------------- canonical weights
def load_canonical(model: LeNet5, params: dict[str, np.ndarray]) -> None:
    """Copy canonical weights in; scratch *is* the canonical layout, so no transform."""
    weights.check(params, model.cfg.param_shapes(), model.fc3.params["weight"].dtype)
    for prefix, layer in model.layers().items():
        for store in (layer.params, getattr(layer, "buffers", {})):  # batch norm's running stats
            for key in store:
                store[key] = np.array(params[f"{prefix}.{key}"])


def export_canonical(model: LeNet5) -> dict[str, np.ndarray]:
    tensors = lambda layer: {**layer.params, **getattr(layer, "buffers", {})}
    return {
        f"{prefix}.{key}": value.copy()
        for prefix, layer in model.layers().items()
        for key, value in tensors(layer).items()
    }


# ----------------------------------------------------------------------------- loss
def loss_fn(logits, y):
    """Mean softmax cross-entropy from logits and its gradient d loss / d logits."""
    return cross_entropy(logits, y)


def forward_backward(model: LeNet5, x, y) -> dict[str, np.ndarray]:
    """Outputs, loss and every gradient in the canonical layout (what the parity tests compare)."""
    zero_grad(model.layers().values())
    logits = model.forward(x)
    loss, dlogits = loss_fn(logits, y)
    dx = model.backward(dlogits)
    grads = {
        f"grad.{prefix}.{k}": g.copy()
        for prefix, layer in model.layers().items()
        for k, g in layer.grads.items()
    }
    return {"output": logits, "loss": np.asarray(loss), "grad.input": dx, **grads}


# ----------------------------------------------------------------------------- train step
def make_optimizer(model: LeNet5, lr: float | OptimizerConfig) -> optim.Optimizer:
    """A learning rate gives plain SGD (p -= lr * g); an OptimizerConfig any of scratch/optim.py."""
    return optim.make_optimizer(model, optim.as_config(lr))


def train_step(model: LeNet5, optimizer: optim.Optimizer, x, y) -> float:
    optimizer.zero_grad()
    logits = model.forward(x)
    loss, dlogits = loss_fn(logits, y)
    model.backward(dlogits, input_grad=False)  # like autograd: no gradient for the data
    if model.cfg.l2:  # the penalty (l2 / 2) * sum p^2 is part of the loss; its gradient is l2 * p
        loss += l2_penalty(model.layers().values(), model.cfg.l2)
        add_l2_gradient(model.layers().values(), model.cfg.l2)
    optimizer.step()
    return float(loss)


def train(
    model: LeNet5,
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
    dtype = model.fc3.params["weight"].dtype
    x, y = data.x_train.astype(dtype), data.y_train
    optimizer, history = make_optimizer(model, lr), []
    for epoch in range(epochs):
        model.set_training(True)  # every epoch: an on_epoch evaluation switches to eval mode
        losses = [
            train_step(model, optimizer, x[idx], y[idx])
            for idx in batches(len(x), batch_size, seed, epoch)
        ]
        history.append(float(np.mean(losses)))
        if on_epoch:
            on_epoch(epoch, history[-1])
    return history


# ----------------------------------------------------------------------------- evaluation
def evaluate(model: LeNet5, x, y) -> tuple[float, float]:
    """(mean loss, accuracy) on a whole split."""
    model.set_training(False)
    logits = model.forward(x.astype(model.fc3.params["weight"].dtype))
    loss, _ = loss_fn(logits, y)
    return float(loss), float(np.mean(logits.argmax(axis=1) == y))
