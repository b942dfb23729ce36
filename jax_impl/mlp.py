"""Multilayer perceptron in JAX with Flax NNX: nnx.Linear, nnx.value_and_grad, optax, nnx.jit.

Rumelhart, Hinton & Williams (1986), "Learning representations by back-propagating errors".
nnx.Linear stores its kernel (in, out): the converters transpose to and from the canonical (out, in).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jax_impl import initializers, optim, porting
from jax_impl.regularize import (
    eval_view,
    l2_penalty,
    make_batch_norm,
    train_view,
)
from tasks import weights
from tasks.configs import MLPConfig, OptimizerConfig
from tasks.data import Dataset, batches

# ----------------------------------------------------------------------------- layers
ACTIVATIONS = {"relu": nnx.relu, "tanh": nnx.tanh, "sigmoid": nnx.sigmoid, "identity": nnx.identity}


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
    bias_init = (
        kernel_init if init == "uniform" else nnx.initializers.zeros
    )  # a named initialiser (He, Xavier): zero bias
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


# ----------------------------------------------------------------------------- model
class MLP(nnx.Module):
    """Dense layers with one hidden activation, then a linear head that outputs logits."""

    def __init__(
        self, cfg: MLPConfig, *, rngs: nnx.Rngs, dtype=jnp.float64, dropout_layer=nnx.Dropout
    ):
        self.cfg = cfg
        sizes = cfg.sizes
        bias = (
            not cfg.batch_norm
        )  # a batch norm's mean subtraction cancels the bias of the layer before it
        self.hidden = nnx.List(
            [
                make_dense(i, o, rngs=rngs, dtype=dtype, init=cfg.init, bias=bias)
                for i, o in zip(sizes[:-2], sizes[1:-1])
            ]
        )
        self.head = make_dense(sizes[-2], sizes[-1], rngs=rngs, dtype=dtype, init=cfg.init)
        # optional regularisers: batch norm before each hidden activation, dropout after it
        self.bn = nnx.List(
            [make_batch_norm(o, dtype=dtype, rngs=rngs) for o in sizes[1:-1]]
            if cfg.batch_norm
            else []
        )
        self.dropouts = nnx.List(
            [dropout_layer(cfg.dropout, rngs=rngs) for _ in self.hidden] if cfg.dropout else []
        )

    def activation(self, x):
        """The hidden activation: a plain function of the config (no parameters, no state)."""
        if self.cfg.activation == "leaky_relu":
            return nnx.leaky_relu(x, negative_slope=self.cfg.leaky_slope)
        return ACTIVATIONS[self.cfg.activation](x)

    def __call__(self, x):
        for i, layer in enumerate(self.hidden):
            x = layer(x)  # (B, D_in) -> (B, D_hidden)
            if self.bn:
                x = self.bn[i](x)
            x = self.activation(x)
            if self.dropouts:
                x = self.dropouts[i](x)
        return self.head(x)  # (B, D_hidden) -> (B, C) logits; C = 1 for a sigmoid head

    def layers_by_name(self) -> dict[str, nnx.Linear]:
        """Layers by canonical prefix: hidden.0, hidden.1, ..., head."""
        return {**{f"hidden.{i}": layer for i, layer in enumerate(self.hidden)}, "head": self.head}


def create_model(
    cfg: MLPConfig, *, seed: int, dtype: str = "float64", dropout_layer=nnx.Dropout
) -> MLP:
    """dropout_layer: the stock nnx.Dropout; the parity tests pass a mask-replaying one (tasks/replay/)."""
    return MLP(
        cfg,
        rngs=nnx.Rngs(params=seed, dropout=seed),
        dtype=jnp.dtype(dtype),
        dropout_layer=dropout_layer,
    )


# ----------------------------------------------------------------------------- canonical weights
def canonical_layers(model: MLP) -> dict:
    """Each stock layer by canonical prefix, with its jax_impl/porting.py function (dense kernels
    transposed; batch norm as is)."""
    out = {f"{prefix}.": ("dense", layer, {}) for prefix, layer in model.layers_by_name().items()}
    return out | {f"bn.{i}.": ("batch_norm", norm, {}) for i, norm in enumerate(model.bn)}


def load_canonical(model: MLP, params: dict[str, np.ndarray]) -> None:
    weights.check(params, model.cfg.param_shapes(), model.head.kernel.dtype)
    porting.load_layers(canonical_layers(model), params)


def to_canonical(model: MLP, grads: bool = False) -> dict[str, np.ndarray]:
    """Flax -> canonical, for a model or (`grads=True`: no statistics) for gradients merged into one."""
    return porting.layers_to_canonical(canonical_layers(model), grads=grads)


def export_canonical(model: MLP) -> dict[str, np.ndarray]:
    return to_canonical(model)


# ----------------------------------------------------------------------------- loss
def loss_fn(logits, y, head: str):
    """Mean loss computed from logits (the fused, numerically stable forms)."""
    if head == "sigmoid":
        return optax.sigmoid_binary_cross_entropy(
            logits[:, 0], y.astype(logits.dtype)
        ).mean()  # (B, 1) -> (B,)
    if head == "identity":  # regression: (B, K) predictions against (B, K) float targets
        return optax.squared_error(logits, y.astype(logits.dtype)).mean()
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def predict(logits, head: str):
    if head == "identity":
        return logits  # a regression predicts the outputs themselves
    return (logits[:, 0] > 0).astype(jnp.int64) if head == "sigmoid" else logits.argmax(axis=1)


def r2_score(pred, y):
    """1 - SS_res / SS_tot per target, averaged over the targets (scikit-learn's r2_score)."""
    ss_res = ((y - pred) ** 2).sum(axis=0)  # (B, K) -> (K,)
    ss_tot = ((y - y.mean(axis=0)) ** 2).sum(axis=0)
    return (1 - ss_res / ss_tot).mean()


def score(logits, y, head: str):
    """evaluate's second number: a classifier's accuracy, a regression's R²."""
    if head == "identity":
        return r2_score(logits, y.astype(logits.dtype))
    return jnp.mean((predict(logits, head) == y).astype(jnp.float64))


@nnx.jit
def gradients(model: MLP, x, y):
    """Loss, logits and the gradients with respect to the parameters and the input, one XLA program."""

    def loss_of(model, x):
        logits = model(x)
        return loss_fn(logits, y, model.cfg.head), logits

    return nnx.value_and_grad(loss_of, argnums=(0, 1), has_aux=True)(model, x)


def forward_backward(model: MLP, x, y) -> dict[str, np.ndarray]:
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
def make_optimizer(model: MLP, lr: float | OptimizerConfig) -> nnx.Optimizer:
    """A learning rate gives optax.sgd; an OptimizerConfig any transformation of jax_impl/optim.py."""
    return optim.make_optimizer(model, optim.as_config(lr))


@nnx.jit
def train_step(model: MLP, optimizer: nnx.Optimizer, x, y):
    def loss_of(model):
        loss = loss_fn(model(x), y, model.cfg.head)
        if model.cfg.l2:  # the penalty (l2 / 2) * sum p^2 is part of the loss
            loss = loss + l2_penalty(model, model.cfg.l2)
        return loss

    loss, grads = nnx.value_and_grad(loss_of)(model)
    optimizer.update(model, grads)
    return loss


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
    x, y = np.asarray(data.x_train, dtype=model.head.kernel.dtype), np.asarray(data.y_train)
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
def eval_step(model: MLP, x, y):
    logits = model(x)
    return loss_fn(logits, y, model.cfg.head), score(logits, y, model.cfg.head)


def evaluate(model: MLP, x, y) -> tuple[float, float]:
    """(mean loss, accuracy) on a whole split; a regression's (mean squared error, R²)."""
    x = jnp.asarray(x, dtype=model.head.kernel.dtype)
    loss, quality = eval_step(eval_view(model), x, jnp.asarray(y))
    return float(loss), float(quality)
