"""LeNet-5 in JAX with Flax NNX: nnx.Conv, nnx.avg_pool/max_pool, nnx.Linear, nnx.value_and_grad, optax, nnx.jit.

LeCun, Bottou, Bengio & Haffner (1998), "Gradient-based learning applied to document recognition".
Flax convolves channel-last: `__call__` turns the canonical (B, C, H, W) images into (B, H, W, C) in
one line, conv kernels are (kh, kw, in_c, out_c) and dense kernels (in, out). Flattening (B, H, W, C)
lays features out in (H, W, C) order, so fc1's input rows are permuted on load (docs/PORTING.md).
Optional, from LeNet5Config: nnx.BatchNorm before each hidden activation, dropout after fc1's and
fc2's, He or Xavier initialisation, an L2 penalty; any optax transformation of jax_impl/optim.py.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jax_impl import initializers, optim, porting
from jax_impl.regularize import (
    canonical_variables,
    eval_view,
    l2_penalty,
    make_batch_norm,
    train_view,
)
from tasks import weights
from tasks.configs import LeNet5Config, OptimizerConfig
from tasks.data import Dataset, batches


# ----------------------------------------------------------------------------- layers
def make_conv(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    *,
    rngs: nnx.Rngs,
    dtype,
    init: str = "uniform",
    bias: bool = True,
    padding: int = 0,
):
    kernel_init = initializers.make_initializer(
        init, fan_in=in_channels * kernel_size**2
    )  # "uniform": torch's nn.Conv2d range
    bias_init = (
        kernel_init if init == "uniform" else nnx.initializers.zeros
    )  # a named initialiser (He, Xavier): zero bias
    # an int pads every side like torch's padding=; never nnx.Conv's default "SAME", which would keep
    # 32x32 and break every later shape (0 is "VALID")
    return nnx.Conv(
        in_channels, out_channels, (kernel_size, kernel_size), padding=padding, use_bias=bias,
        kernel_init=kernel_init, bias_init=bias_init, dtype=dtype, param_dtype=dtype, rngs=rngs,
    )  # fmt: skip


def make_dense(
    in_features: int,
    out_features: int,
    *,
    rngs: nnx.Rngs,
    dtype,
    init: str = "uniform",
    bias: bool = True,
):
    kernel_init = initializers.make_initializer(
        init, fan_in=in_features
    )  # "uniform": torch's nn.Linear range
    bias_init = kernel_init if init == "uniform" else nnx.initializers.zeros
    return nnx.Linear(
        in_features,
        out_features,
        use_bias=bias,
        kernel_init=kernel_init,
        bias_init=bias_init,
        dtype=dtype,
        param_dtype=dtype,
        rngs=rngs,
    )


# module-level functions: the model holds the same objects for every model of a config, so nnx.jit
# compiles its steps once per config (a partial made per model would not compare equal: a retrace)
POOLS = {
    "avg": partial(nnx.avg_pool, window_shape=(2, 2), strides=(2, 2)),
    "max": partial(nnx.max_pool, window_shape=(2, 2), strides=(2, 2)),
}


def make_activation(cfg: LeNet5Config):
    return {"relu": nnx.relu, "tanh": nnx.tanh, "sigmoid": nnx.sigmoid}[cfg.activation]


def make_pool(cfg: LeNet5Config):
    return POOLS[cfg.pooling]


# ----------------------------------------------------------------------------- model
class LeNet5(nnx.Module):
    """Two conv + pool stages, a flatten, two hidden dense layers and a linear head (logits)."""

    def __init__(
        self, cfg: LeNet5Config, *, rngs: nnx.Rngs, dtype=jnp.float64, dropout_layer=nnx.Dropout
    ):
        self.cfg = cfg
        (c1, c2), (h1, h2), k, (p1, p2) = cfg.channels, cfg.hidden, cfg.kernel_size, cfg.padding
        bias = (
            not cfg.batch_norm
        )  # a batch norm's mean subtraction cancels the bias of the layer before it
        kw = dict(rngs=rngs, dtype=dtype, init=cfg.init, bias=bias)
        self.conv1 = make_conv(cfg.in_channels, c1, k, padding=p1, **kw)
        self.conv2 = make_conv(c1, c2, k, padding=p2, **kw)
        self.fc1 = make_dense(
            cfg.flat_features, h1, rngs=rngs, dtype=dtype, init=cfg.init, bias=bias
        )  # 16 * 5 * 5 = 400 inputs by default
        self.fc2 = make_dense(h1, h2, rngs=rngs, dtype=dtype, init=cfg.init, bias=bias)
        self.fc3 = make_dense(h2, cfg.n_classes, rngs=rngs, dtype=dtype, init=cfg.init)
        # the activation and the pooling hold no parameters, so one of each serves every use
        self.activation = make_activation(cfg)
        self.pool = make_pool(cfg)
        # optional regularisers: batch norm before each hidden activation, dropout after fc1's and fc2's
        norm = lambda n, conv: (
            make_batch_norm(n, conv=conv, dtype=dtype, rngs=rngs)
            if cfg.batch_norm
            else nnx.identity
        )
        self.bn1, self.bn2, self.bn3, self.bn4 = (
            norm(c1, True),
            norm(c2, True),
            norm(h1, False),
            norm(h2, False),
        )
        self.drop1, self.drop2 = (
            dropout_layer(cfg.dropout, rngs=rngs) if cfg.dropout else nnx.identity for _ in range(2)
        )

    def __call__(self, x):
        x = jnp.transpose(
            x, (0, 2, 3, 1)
        )  # (B, C, H, W) -> (B, H, W, C): Flax convolves channel-last
        x = self.pool(
            self.activation(self.bn1(self.conv1(x)))
        )  # (B, 32, 32, 1) -> (B, 28, 28, 6) -> (B, 14, 14, 6)
        x = self.pool(
            self.activation(self.bn2(self.conv2(x)))
        )  # -> (B, 10, 10, 16) -> (B, 5, 5, 16)
        x = x.reshape(
            x.shape[0], -1
        )  # (B, 5, 5, 16) -> (B, 400) in (H, W, C) order, not torch's (C, H, W)
        x = self.drop1(self.activation(self.bn3(self.fc1(x))))  # (B, 400) -> (B, 120)
        x = self.drop2(self.activation(self.bn4(self.fc2(x))))  # (B, 120) -> (B, 84)
        return self.fc3(x)  # (B, 84) -> (B, C) logits

    def variables_by_name(self) -> dict[str, nnx.Variable]:
        """Each canonical tensor by its canonical name, in the Flax layout (batch norms' statistics too)."""
        layers = {
            "conv1": self.conv1,
            "conv2": self.conv2,
            "fc1": self.fc1,
            "fc2": self.fc2,
            "fc3": self.fc3,
        }
        out = {
            f"{p}.{k}": v
            for p, layer in layers.items()
            for k, v in (("weight", layer.kernel), ("bias", layer.bias))
            if v is not None
        }
        norms = (
            {"bn1": self.bn1, "bn2": self.bn2, "bn3": self.bn3, "bn4": self.bn4}
            if self.cfg.batch_norm
            else {}
        )
        return {
            **out,
            **{
                f"{p}.{k}": v
                for p, norm in norms.items()
                for k, v in canonical_variables(norm).items()
            },
        }


def create_model(
    cfg: LeNet5Config, *, seed: int, dtype: str = "float64", dropout_layer=nnx.Dropout
) -> LeNet5:
    """dropout_layer: the stock nnx.Dropout; the parity tests pass a mask-replaying one (tasks/replay/)."""
    return LeNet5(
        cfg,
        rngs=nnx.Rngs(params=seed, dropout=seed),
        dtype=jnp.dtype(dtype),
        dropout_layer=dropout_layer,
    )


# ----------------------------------------------------------------------------- canonical weights
def canonical_layers(model: LeNet5) -> dict:
    """Each stock layer by canonical prefix, with its jax_impl/porting.py function and layout: conv
    kernels HWIO <-> OIHW, dense kernels transposed, and fc1's input rows between the canonical
    (C, H, W) flatten order and Flax's (H, W, C) (`flatten_from`)."""
    cfg = model.cfg
    flat = (cfg.channels[1], cfg.feature_size, cfg.feature_size)  # pool2's (C, H, W)
    out = {
        "conv1.": ("conv2d", model.conv1, {}),
        "conv2.": ("conv2d", model.conv2, {}),
        "fc1.": ("dense", model.fc1, {"flatten_from": flat}),
        "fc2.": ("dense", model.fc2, {}),
        "fc3.": ("dense", model.fc3, {}),
    }
    if cfg.batch_norm:
        out.update({f"bn{i}.": ("batch_norm", getattr(model, f"bn{i}"), {}) for i in range(1, 5)})
    return out


def load_canonical(model: LeNet5, params: dict[str, np.ndarray]) -> None:
    weights.check(params, model.cfg.param_shapes(), model.fc3.kernel.dtype)
    porting.load_layers(canonical_layers(model), params)


def to_canonical(model: LeNet5, grads: bool = False) -> dict[str, np.ndarray]:
    """Flax -> canonical, for a model or (`grads=True`: no statistics) for gradients merged into one."""
    return porting.layers_to_canonical(canonical_layers(model), grads=grads)


def export_canonical(model: LeNet5) -> dict[str, np.ndarray]:
    return to_canonical(model)


# ----------------------------------------------------------------------------- loss
def loss_fn(logits, y):
    """Mean softmax cross-entropy computed from logits (the fused, numerically stable form)."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


@nnx.jit
def gradients(model: LeNet5, x, y):
    """Loss, logits and the gradients with respect to the parameters and the input, one XLA program."""

    def loss_of(model, x):
        logits = model(x)
        return loss_fn(logits, y), logits

    return nnx.value_and_grad(loss_of, argnums=(0, 1), has_aux=True)(model, x)


def forward_backward(model: LeNet5, x, y) -> dict[str, np.ndarray]:
    """Outputs, loss and every gradient in the canonical layout (what the parity tests compare)."""
    (loss, logits), (grad_params, dx) = gradients(train_view(model), x, y)  # NumPy in: jit copies
    # the gradients have the model's own structure: merge them (with the non-parameter state, e.g.
    # batch statistics, which are not gradients and are dropped) into a model to reuse the exporter
    grads = to_canonical(
        nnx.merge(nnx.graphdef(model), grad_params, nnx.state(model, nnx.Not(nnx.Param))),
        grads=True,
    )
    return {
        "output": np.asarray(logits),
        "loss": np.asarray(loss),
        "grad.input": np.asarray(dx),
        **{f"grad.{k}": g for k, g in grads.items()},
    }


# ----------------------------------------------------------------------------- train step
def make_optimizer(model: LeNet5, lr: float | OptimizerConfig) -> nnx.Optimizer:
    """A learning rate gives optax.sgd; an OptimizerConfig any transformation of jax_impl/optim.py."""
    return optim.make_optimizer(model, optim.as_config(lr))


@nnx.jit
def train_step(model: LeNet5, optimizer: nnx.Optimizer, x, y):
    def loss_of(model):
        loss = loss_fn(model(x), y)
        if model.cfg.l2:  # the penalty (l2 / 2) * sum p^2 is part of the loss
            loss = loss + l2_penalty(model, model.cfg.l2)
        return loss

    loss, grads = nnx.value_and_grad(loss_of)(model)
    optimizer.update(model, grads)
    return loss


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
    x, y = np.asarray(data.x_train, dtype=model.fc3.kernel.dtype), np.asarray(data.y_train)
    optimizer, history = make_optimizer(model, lr), []
    # cached_partial walks the model and optimizer graphs once, not on every step
    step = nnx.cached_partial(train_step, train_view(model), optimizer)
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
def eval_step(model: LeNet5, x, y):
    logits = model(x)
    accuracy = jnp.mean((logits.argmax(axis=1) == y).astype(jnp.float64))
    return loss_fn(logits, y), accuracy


def evaluate(model: LeNet5, x, y) -> tuple[float, float]:
    """(mean loss, accuracy) on a whole split."""
    x = jnp.asarray(x, dtype=model.fc3.kernel.dtype)
    loss, accuracy = eval_step(eval_view(model), x, jnp.asarray(y))
    return float(loss), float(accuracy)
