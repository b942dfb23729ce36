"""Multilayer perceptron, from scratch in NumPy, with a hand-written backward pass.

Rumelhart, Hinton & Williams (1986), "Learning representations by back-propagating errors".
Batch-first: x is (B, D) and a dense layer computes y = x @ W.T + b with W of shape (out, in),
the canonical layout every other implementation converts to and from.
"""

from __future__ import annotations

import numpy as np

from scratch import optim
from scratch.layers import (
    ACTIVATIONS,
    BatchNorm,
    Dense,
    Dropout,
    LeakyReLU,
    add_l2_gradient,
    binary_cross_entropy_with_logits,
    cross_entropy,
    l2_penalty,
    mean_squared_error,
    zero_grad,
)
from tasks import weights
from tasks.configs import MLPConfig, OptimizerConfig
from tasks.data import Dataset, batches


# ----------------------------------------------------------------------------- layers
def make_activation(cfg: MLPConfig):
    if cfg.activation == "leaky_relu":
        return LeakyReLU(cfg.leaky_slope)
    return ACTIVATIONS[cfg.activation]()


# ----------------------------------------------------------------------------- model
class MLP:
    """Dense layers with one hidden activation, then a linear head that outputs logits."""

    def __init__(
        self, cfg: MLPConfig, *, rng: np.random.Generator, dtype=np.float64, dropout_layer=Dropout
    ):
        self.cfg = cfg
        sizes = cfg.sizes
        # a batch norm's mean subtraction cancels the bias of the layer before it
        bias = not cfg.batch_norm
        self.hidden = [
            Dense(i, o, rng=rng, dtype=dtype, init=cfg.init, bias=bias)
            for i, o in zip(sizes[:-2], sizes[1:-1])
        ]
        # one activation object per hidden layer: each caches its own input for backward
        self.activations = [make_activation(cfg) for _ in self.hidden]
        self.head = Dense(sizes[-2], sizes[-1], rng=rng, dtype=dtype, init=cfg.init)
        # optional regularisers: batch norm before each hidden activation, dropout after it
        self.bn = [BatchNorm(o, dtype=dtype) for o in sizes[1:-1]] if cfg.batch_norm else []
        self.dropouts = (
            [dropout_layer(cfg.dropout, rng=rng) for _ in self.hidden] if cfg.dropout else []
        )

    def forward(self, x):
        for i, (layer, activation) in enumerate(zip(self.hidden, self.activations)):
            x = layer.forward(x)  # (B, D_in) -> (B, D_hidden)
            if self.bn:
                x = self.bn[i].forward(x)
            x = activation.forward(x)
            if self.dropouts:
                x = self.dropouts[i].forward(x)
        return self.head.forward(x)  # (B, D_hidden) -> (B, C) logits; C = 1 for a sigmoid head

    def backward(self, dlogits):
        dx = self.head.backward(dlogits)
        for i in reversed(range(len(self.hidden))):
            if self.dropouts:
                dx = self.dropouts[i].backward(dx)
            dx = self.activations[i].backward(dx)
            if self.bn:
                dx = self.bn[i].backward(dx)
            dx = self.hidden[i].backward(dx)
        return dx  # (B, D_in): the gradient with respect to the input

    def set_training(self, training: bool) -> None:
        """Train mode (batch statistics, dropout on) or eval mode (running statistics, no dropout)."""
        for layer in [*self.bn, *self.dropouts]:
            layer.training = training

    def layers(self) -> dict[str, Dense]:
        """Layers by canonical prefix: hidden.0, hidden.1, ..., bn.0, ..., head."""
        bn = {f"bn.{i}": norm for i, norm in enumerate(self.bn)}
        return {
            **{f"hidden.{i}": layer for i, layer in enumerate(self.hidden)},
            **bn,
            "head": self.head,
        }


def create_model(
    cfg: MLPConfig, *, seed: int, dtype: str = "float64", dropout_layer=Dropout
) -> MLP:
    """dropout_layer: the parity tests pass a mask-replaying layer (tasks/replay/)."""
    return MLP(
        cfg, rng=np.random.default_rng(seed), dtype=np.dtype(dtype), dropout_layer=dropout_layer
    )


# ----------------------------------------------------------------------------- canonical weights
def load_canonical(model: MLP, params: dict[str, np.ndarray]) -> None:
    """Copy canonical weights in; scratch *is* the canonical layout, so no transform."""
    weights.check(params, model.cfg.param_shapes(), model.head.params["weight"].dtype)
    for prefix, layer in model.layers().items():
        for store in (layer.params, getattr(layer, "buffers", {})):  # batch norm's running stats
            for key in store:
                store[key] = np.array(params[f"{prefix}.{key}"])


def export_canonical(model: MLP) -> dict[str, np.ndarray]:
    tensors = lambda layer: {**layer.params, **getattr(layer, "buffers", {})}
    return {
        f"{prefix}.{key}": value.copy()
        for prefix, layer in model.layers().items()
        for key, value in tensors(layer).items()
    }


# ----------------------------------------------------------------------------- loss
def loss_fn(logits, y, head: str):
    """Mean loss from logits (a regression's predictions) and its gradient d loss / d logits."""
    if head == "sigmoid":
        loss, dz = binary_cross_entropy_with_logits(logits[:, 0], y)  # (B, 1) -> (B,)
        return loss, dz[:, None]  # (B,) -> (B, 1)
    if head == "identity":  # regression: (B, K) predictions against (B, K) float targets
        return mean_squared_error(logits, y)
    return cross_entropy(logits, y)


def predict(logits, head: str):
    if head == "identity":
        return logits  # a regression predicts the outputs themselves
    return (logits[:, 0] > 0).astype(np.int64) if head == "sigmoid" else logits.argmax(axis=1)


def r2_score(pred, y):
    """1 - SS_res / SS_tot per target, averaged over the targets (scikit-learn's r2_score)."""
    ss_res = ((y - pred) ** 2).sum(axis=0)  # (B, K) -> (K,)
    ss_tot = ((y - y.mean(axis=0)) ** 2).sum(axis=0)
    return np.mean(1 - ss_res / ss_tot)


def score(logits, y, head: str):
    """evaluate's second number: a classifier's accuracy, a regression's R²."""
    if head == "identity":
        return r2_score(logits, y)
    return np.mean(predict(logits, head) == y)


def forward_backward(model: MLP, x, y) -> dict[str, np.ndarray]:
    """Outputs, loss and every gradient in the canonical layout (what the parity tests compare)."""
    zero_grad(model.layers().values())
    logits = model.forward(x)
    loss, dlogits = loss_fn(logits, y, model.cfg.head)
    dx = model.backward(dlogits)
    grads = {
        f"grad.{prefix}.{k}": g.copy()
        for prefix, layer in model.layers().items()
        for k, g in layer.grads.items()
    }
    return {"output": logits, "loss": np.asarray(loss), "grad.input": dx, **grads}


# ----------------------------------------------------------------------------- train step
def make_optimizer(model: MLP, lr: float | OptimizerConfig) -> optim.Optimizer:
    """A learning rate gives plain SGD (p -= lr * g); an OptimizerConfig any of scratch/optim.py."""
    return optim.make_optimizer(model, optim.as_config(lr))


def train_step(model: MLP, optimizer: optim.Optimizer, x, y) -> float:
    optimizer.zero_grad()
    logits = model.forward(x)
    loss, dlogits = loss_fn(logits, y, model.cfg.head)
    model.backward(dlogits)
    if model.cfg.l2:  # the penalty (l2 / 2) * sum p^2 is part of the loss; its gradient is l2 * p
        loss += l2_penalty(model.layers().values(), model.cfg.l2)
        add_l2_gradient(model.layers().values(), model.cfg.l2)
    optimizer.step()
    return float(loss)


def train(
    model: MLP,
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
def evaluate(model: MLP, x, y) -> tuple[float, float]:
    """(mean loss, accuracy) on a whole split; a regression's (mean squared error, R²)."""
    model.set_training(False)
    logits = model.forward(x.astype(model.head.params["weight"].dtype))
    loss, _ = loss_fn(logits, y, model.cfg.head)
    return float(loss), float(score(logits, y, model.cfg.head))
