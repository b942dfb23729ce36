"""Multilayer perceptron in Keras 3 (TensorFlow backend): keras.Model.call, keras.ops, tf.data.

Rumelhart, Hinton & Williams (1986), "Learning representations by back-propagating errors".
keras.layers.Dense stores its kernel (in, out): the converters transpose to and from the
canonical (out, in).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from tasks import weights
from tasks.configs import MLPConfig, OptimizerConfig
from tasks.data import Dataset, epoch_order
from tf_impl import initializers, optim
from tf_impl.regularize import Dropout, canonical_variables, l2_penalty, make_batch_norm


# ----------------------------------------------------------------------------- layers
def make_activation(cfg: MLPConfig, dtype: str) -> keras.layers.Layer:
    if cfg.activation == "leaky_relu":
        # Not keras.layers.LeakyReLU: it runs TF's LeakyRelu op, whose alpha is a float32 attribute,
        # so in float64 the slope 0.01 becomes 0.009999999776 (docs/PORTING.md, "Activations").
        slope = cfg.leaky_slope
        return keras.layers.Activation(lambda x: ops.where(x > 0, x, slope * x), dtype=dtype)
    return keras.layers.Activation(cfg.activation, dtype=dtype)


def make_dense(
    in_features: int,
    out_features: int,
    *,
    seed: keras.random.SeedGenerator,
    dtype: str,
    name: str,
    init: str = "uniform",
    bias: bool = True,
):
    kernel_init = initializers.make_initializer(
        init, seed=seed, fan_in=in_features
    )  # "uniform": torch's nn.Linear range
    bias_init = (
        kernel_init if init == "uniform" else "zeros"
    )  # a named initialiser (He, Xavier): zero bias
    layer = keras.layers.Dense(
        out_features,
        use_bias=bias,
        kernel_initializer=kernel_init,
        bias_initializer=bias_init,
        dtype=dtype,
        name=name,
    )
    layer.build(
        (None, in_features)
    )  # create the variables now, so canonical weights can load before a call
    return layer


# ----------------------------------------------------------------------------- model
class MLP(keras.Model):
    """Dense layers with one hidden activation, then a linear head that outputs logits."""

    def __init__(
        self,
        cfg: MLPConfig,
        *,
        seed: keras.random.SeedGenerator,
        dtype: str = "float64",
        dropout_layer=Dropout,
    ):
        super().__init__(dtype=dtype)
        self.cfg = cfg
        sizes = cfg.sizes
        bias = (
            not cfg.batch_norm
        )  # a batch norm's mean subtraction cancels the bias of the layer before it
        self.hidden = [
            make_dense(i, o, seed=seed, dtype=dtype, name=f"hidden_{n}", init=cfg.init, bias=bias)
            for n, (i, o) in enumerate(zip(sizes[:-2], sizes[1:-1]))
        ]
        # the activation holds no state, so one layer serves every hidden layer
        self.activation = make_activation(cfg, dtype)
        self.head = make_dense(
            sizes[-2], sizes[-1], seed=seed, dtype=dtype, name="head", init=cfg.init
        )
        # optional regularisers: batch norm before each hidden activation, dropout after it
        self.bn = [make_batch_norm(o, dtype=dtype) for o in sizes[1:-1]] if cfg.batch_norm else []
        self.dropouts = (
            [dropout_layer(cfg.dropout, seed=seed, dtype=dtype) for _ in self.hidden]
            if cfg.dropout
            else []
        )

    def call(self, x, training=False):
        for i, layer in enumerate(self.hidden):
            x = layer(x)  # (B, D_in) -> (B, D_hidden)
            if self.bn:
                x = self.bn[i](x, training=training)
            x = self.activation(x)
            if self.dropouts:
                x = self.dropouts[i](x, training=training)
        return self.head(x)  # (B, D_hidden) -> (B, C) logits; C = 1 for a sigmoid head

    def layers_by_name(self) -> dict[str, keras.layers.Dense]:
        """Layers by canonical prefix: hidden.0, hidden.1, ..., head."""
        return {**{f"hidden.{i}": layer for i, layer in enumerate(self.hidden)}, "head": self.head}


def create_model(
    cfg: MLPConfig, *, seed: int, dtype: str = "float64", dropout_layer=Dropout
) -> MLP:
    """dropout_layer: the parity tests pass a mask-replaying layer (tasks/replay/)."""
    return MLP(cfg, seed=keras.random.SeedGenerator(seed), dtype=dtype, dropout_layer=dropout_layer)


# ----------------------------------------------------------------------------- canonical weights
def load_canonical(model: MLP, params: dict[str, np.ndarray]) -> None:
    weights.check(params, model.cfg.param_shapes(), model.head.kernel.dtype)
    for prefix, layer in model.layers_by_name().items():
        layer.kernel.assign(params[f"{prefix}.weight"].T)  # canonical (out, in) -> Keras (in, out)
        if layer.bias is not None:
            layer.bias.assign(params[f"{prefix}.bias"])
    for i, norm in enumerate(model.bn):  # gamma, beta, moving mean and variance, no transform
        for key, variable in canonical_variables(norm).items():
            variable.assign(params[f"bn.{i}.{key}"])


def export_canonical(model: MLP) -> dict[str, np.ndarray]:
    out = {}
    for prefix, layer in model.layers_by_name().items():
        out[f"{prefix}.weight"] = np.array(
            layer.kernel.numpy().T
        )  # Keras (in, out) -> canonical (out, in)
        if layer.bias is not None:
            out[f"{prefix}.bias"] = np.array(layer.bias.numpy())
    for i, norm in enumerate(model.bn):
        out.update(
            {
                f"bn.{i}.{key}": np.array(variable.numpy())
                for key, variable in canonical_variables(norm).items()
            }
        )
    return out


# ----------------------------------------------------------------------------- loss
def loss_fn(logits, y, head: str):
    """Mean loss computed from logits (the fused, numerically stable forms)."""
    if head == "sigmoid":
        return ops.mean(
            ops.binary_crossentropy(ops.cast(y, logits.dtype), logits[:, 0], from_logits=True)
        )
    return ops.mean(ops.sparse_categorical_crossentropy(y, logits, from_logits=True))


def predict(logits, head: str):
    return ops.cast(logits[:, 0] > 0, "int64") if head == "sigmoid" else ops.argmax(logits, axis=1)


def forward_backward(model: MLP, x, y) -> dict[str, np.ndarray]:
    """Outputs, loss and every gradient in the canonical layout (what the parity tests compare)."""
    x, y = tf.constant(x), tf.constant(y)
    variables = {"input": x}
    for prefix, layer in model.layers_by_name().items():
        variables[f"{prefix}.weight"] = layer.kernel
        if layer.bias is not None:
            variables[f"{prefix}.bias"] = layer.bias
    for i, norm in enumerate(model.bn):
        variables[f"bn.{i}.weight"], variables[f"bn.{i}.bias"] = norm.gamma, norm.beta
    with tf.GradientTape() as tape:
        tape.watch(x)
        logits = model(
            x, training=True
        )  # batch statistics and dropout, as torch's and Flax's default train mode
        loss = loss_fn(logits, y, model.cfg.head)
    grads = tape.gradient(loss, variables)
    # dense kernel gradients come out (in, out) like the kernel: transpose to canonical (out, in)
    grads = {
        f"grad.{k}": (g.numpy().T if k.endswith(".weight") else g.numpy()) for k, g in grads.items()
    }
    return {"output": logits.numpy(), "loss": loss.numpy(), **grads}


# ----------------------------------------------------------------------------- train step
def make_optimizer(model: MLP, lr: float | OptimizerConfig) -> keras.optimizers.Optimizer:
    """A learning rate gives keras.optimizers.SGD; an OptimizerConfig any optimizer of tf_impl/optim.py.

    A float learning rate would become a float32 (floatx) variable, which rounds 0.1 to 0.10000000149
    in a float64 run; optim.make_schedule passes a callable returning the model's dtype instead."""
    return optim.make_optimizer(
        model, lr if isinstance(lr, OptimizerConfig) else OptimizerConfig("sgd", lr=lr)
    )


@tf.function(reduce_retracing=True)
def train_step(model: MLP, optimizer: keras.optimizers.Optimizer, x, y):
    with tf.GradientTape() as tape:
        loss = loss_fn(model(x, training=True), y, model.cfg.head)
        if model.cfg.l2:  # the penalty (l2 / 2) * sum p^2 is part of the loss
            loss = loss + l2_penalty(model.trainable_variables, model.cfg.l2)
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
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
    """Mini-batches in the shared order, stepped by make_optimizer(model, lr); returns the mean training loss of each epoch."""
    x, y = data.x_train.astype(model.head.kernel.dtype), data.y_train
    optimizer, history = make_optimizer(model, lr), []
    for epoch in range(epochs):
        order = epoch_order(len(x), seed, epoch)  # consecutive slices of it are the shared batches
        dataset = tf.data.Dataset.from_tensor_slices((x[order], y[order])).batch(batch_size)
        losses = [float(train_step(model, optimizer, xb, yb)) for xb, yb in dataset]
        history.append(float(np.mean(losses)))
        if on_epoch:
            on_epoch(epoch, history[-1])
    return history


# ----------------------------------------------------------------------------- evaluation
def evaluate(model: MLP, x, y) -> tuple[float, float]:
    """(mean loss, accuracy) on a whole split."""
    logits = model(x.astype(model.head.kernel.dtype))
    loss = loss_fn(logits, y, model.cfg.head)
    return float(loss), float(ops.mean(ops.cast(predict(logits, model.cfg.head) == y, "float64")))
