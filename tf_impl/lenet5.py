"""LeNet-5 in Keras 3 (TensorFlow backend): keras.Model, keras.ops, Conv2D/pooling/Dense layers, fit.

LeCun, Bottou, Bengio & Haffner (1998), "Gradient-based learning applied to document recognition".
Keras convolves channel-last: `call` turns the canonical (B, C, H, W) images into (B, H, W, C) in
one line, conv kernels are (kh, kw, in_c, out_c) and dense kernels (in, out). Its Flatten lays
features out in (H, W, C) order, so fc1's input rows are permuted on load (docs/PORTING.md).
Optional, from LeNet5Config: BatchNormalization before each hidden activation, dropout after fc1's
and fc2's, He or Xavier initialisation, an L2 penalty; any optimizer of tf_impl/optim.py.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from tasks import weights
from tasks.configs import LeNet5Config, OptimizerConfig
from tasks.data import Dataset
from tf_impl import compat, initializers, optim, porting, training
from tf_impl.regularize import canonical_variables, l2_regularizer, make_batch_norm


# ----------------------------------------------------------------------------- layers
def make_conv(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    *,
    seed: keras.random.SeedGenerator,
    dtype: str,
    name: str,
    init: str = "uniform",
    bias: bool = True,
    regularizer: keras.regularizers.Regularizer | None = None,
):
    # "uniform": torch's nn.Conv2d range; a named initialiser (He, Xavier) has a zero bias
    kernel_init = initializers.make_initializer(
        init, seed=seed, fan_in=in_channels * kernel_size**2
    )
    layer = keras.layers.Conv2D(
        out_channels,
        kernel_size,
        padding="valid",
        use_bias=bias,
        kernel_initializer=kernel_init,
        bias_initializer=kernel_init if init == "uniform" else "zeros",
        kernel_regularizer=regularizer,
        bias_regularizer=regularizer,
        dtype=dtype,
        name=name,
    )
    layer.build((None, None, None, in_channels))  # the variables now, so weights load before a call
    return layer


def make_dense(
    in_features: int,
    out_features: int,
    *,
    seed: keras.random.SeedGenerator,
    dtype: str,
    name: str,
    init: str = "uniform",
    bias: bool = True,
    regularizer: keras.regularizers.Regularizer | None = None,
):
    kernel_init = initializers.make_initializer(init, seed=seed, fan_in=in_features)
    layer = keras.layers.Dense(
        out_features,
        use_bias=bias,
        kernel_initializer=kernel_init,
        bias_initializer=kernel_init if init == "uniform" else "zeros",
        kernel_regularizer=regularizer,
        bias_regularizer=regularizer,
        dtype=dtype,
        name=name,
    )
    layer.build((None, in_features))
    return layer


def make_pool(cfg: LeNet5Config, dtype: str) -> keras.layers.Layer:
    return {"avg": keras.layers.AveragePooling2D, "max": keras.layers.MaxPooling2D}[cfg.pooling](
        pool_size=2, dtype=dtype
    )


# ----------------------------------------------------------------------------- model
class LeNet5(keras.Model):
    """Two conv + pool stages, a flatten, two hidden dense layers and a linear head (logits)."""

    def __init__(
        self,
        cfg: LeNet5Config,
        *,
        seed: int,
        dtype: str = "float64",
        dropout_layer=keras.layers.Dropout,
    ):
        super().__init__(dtype=dtype)
        self.cfg = cfg
        (c1, c2), (h1, h2), k = cfg.channels, cfg.hidden, cfg.kernel_size
        init = keras.random.SeedGenerator(seed)
        # Conv2D pads only "valid" (none) or "same" (k // 2: 2 for 5x5): a ZeroPadding2D before
        # each conv pads any amount, torch's padding= exactly
        self.pad1, self.pad2 = (
            keras.layers.ZeroPadding2D(p, dtype=dtype) if p else keras.layers.Identity(dtype=dtype)
            for p in cfg.padding
        )
        # a batch norm's mean subtraction cancels the bias of the layer before it; the L2 penalty
        # (l2 / 2) * sum p^2 is each variable's regularizer
        kw = dict(dtype=dtype, init=cfg.init, regularizer=l2_regularizer(cfg.l2))
        bias = not cfg.batch_norm
        self.conv1 = make_conv(cfg.in_channels, c1, k, seed=init, name="conv1", bias=bias, **kw)
        self.conv2 = make_conv(c1, c2, k, seed=init, name="conv2", bias=bias, **kw)
        # 16 * 5 * 5 = 400 inputs by default
        self.fc1 = make_dense(cfg.flat_features, h1, seed=init, name="fc1", bias=bias, **kw)
        self.fc2 = make_dense(h1, h2, seed=init, name="fc2", bias=bias, **kw)
        self.fc3 = make_dense(h2, cfg.n_classes, seed=init, name="fc3", **kw)
        # the activation and the pooling hold no state, so one layer of each serves every use
        self.activation = keras.layers.Activation(cfg.activation, dtype=dtype)
        self.pool = make_pool(cfg, dtype)
        self.flatten = keras.layers.Flatten(dtype=dtype)
        # optional regularisers: batch norm before each hidden activation, dropout after fc1's and fc2's
        norm = lambda n, conv: (
            make_batch_norm(n, conv=conv, dtype=dtype, regularizer=kw["regularizer"])
            if cfg.batch_norm
            else keras.layers.Identity(dtype=dtype)
        )
        self.bn1, self.bn2, self.bn3, self.bn4 = (
            norm(c1, True),
            norm(c2, True),
            norm(h1, False),
            norm(h2, False),
        )
        self.drop1, self.drop2 = (
            dropout_layer(cfg.dropout, seed=seed + n, dtype=dtype)
            if cfg.dropout
            else keras.layers.Identity(dtype=dtype)
            for n in (1, 2)
        )
        self.batch_loss = training.BatchMeanLoss(dtype)  # what train reports per epoch
        # every weight is built above (Flatten and ZeroPadding2D hold none: they build at their
        # first call): built, so the first call (and fit's trace) need not run call() once more on
        # symbolic inputs to build them
        self.built = True

    def call(self, x, training=False):
        x = ops.transpose(
            x, (0, 2, 3, 1)
        )  # (B, C, H, W) -> (B, H, W, C): Keras convolves channel-last
        x = self.pool(
            self.activation(self.bn1(self.conv1(self.pad1(x)), training=training))
        )  # (B, 32, 32, 1) -> (B, 28, 28, 6) -> (B, 14, 14, 6)
        x = self.pool(
            self.activation(self.bn2(self.conv2(self.pad2(x)), training=training))
        )  # -> (B, 10, 10, 16) -> (B, 5, 5, 16)
        x = self.flatten(x)  # (B, 5, 5, 16) -> (B, 400) in (H, W, C) order, not torch's (C, H, W)
        x = self.drop1(
            self.activation(self.bn3(self.fc1(x), training=training)), training=training
        )  # (B, 400) -> (B, 120)
        x = self.drop2(
            self.activation(self.bn4(self.fc2(x), training=training)), training=training
        )  # (B, 120) -> (B, 84)
        return self.fc3(x)  # (B, 84) -> (B, C) logits

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        loss = super().compute_loss(x, y, y_pred, sample_weight, training)  # data loss + L2
        self.batch_loss.update_state(loss)
        return loss

    def variables_by_name(self) -> dict[str, keras.Variable]:
        """Each canonical tensor by its canonical name, in the Keras layout (batch norms' statistics too)."""
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
    cfg: LeNet5Config, *, seed: int, dtype: str = "float64", dropout_layer=keras.layers.Dropout
) -> LeNet5:
    """dropout_layer: the parity tests pass a mask-replaying layer (tasks/replay/)."""
    return LeNet5(cfg, seed=seed, dtype=dtype, dropout_layer=dropout_layer)


# ----------------------------------------------------------------------------- canonical weights
def canonical_layers(model: LeNet5) -> dict:
    """Each stock layer by canonical prefix, with its tf_impl/porting.py function and layout: conv
    kernels HWIO <-> OIHW, dense kernels transposed, and fc1's input rows between the canonical
    (C, H, W) flatten order and Keras's (H, W, C) (`flatten_from`)."""
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


def export_canonical(model: LeNet5) -> dict[str, np.ndarray]:
    return porting.layers_to_canonical(canonical_layers(model))


# ----------------------------------------------------------------------------- loss
def make_loss(dtype: str) -> keras.losses.Loss:
    """Mean softmax cross-entropy from logits (the fused, numerically stable form), in `dtype`."""
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype=dtype)


def forward_backward(model: LeNet5, x, y) -> dict[str, np.ndarray]:
    """Outputs, loss and every gradient in the canonical layout (what the parity tests compare)."""
    x, y = tf.constant(x), tf.constant(y)
    layers = canonical_layers(model)
    variables = {p: layer.trainable_variables for p, (_, layer, _) in layers.items()}
    with tf.GradientTape() as tape:
        tape.watch(x)
        logits = model(x, training=True)  # batch statistics and dropout, as in training
        loss = make_loss(model.dtype)(y, logits)
    grads, dx = tape.gradient(loss, (variables, x))
    # a gradient has its parameter's Keras layout: the same porting functions bring it to canonical
    grads = porting.layers_to_canonical(layers, grads)
    grads = {f"grad.{k}": g for k, g in grads.items()}
    return {"output": logits.numpy(), "loss": loss.numpy(), "grad.input": dx.numpy(), **grads}


# ----------------------------------------------------------------------------- train step
def make_optimizer(model: LeNet5, lr: float | OptimizerConfig) -> keras.optimizers.Optimizer:
    """A learning rate gives keras.optimizers.SGD; an OptimizerConfig any optimizer of tf_impl/optim.py."""
    return optim.make_optimizer(model, optim.as_config(lr))


def compile_model(
    model: LeNet5, optimizer: keras.optimizers.Optimizer, steps_per_execution: int = 1
) -> None:
    with compat.floatx(model.dtype):  # the compiled loss and its tracker in the model's dtype
        model.compile(
            optimizer=optimizer,
            loss=make_loss(model.dtype),
            steps_per_execution=steps_per_execution,
        )


def train_step(model: LeNet5, optimizer: keras.optimizers.Optimizer, x, y) -> float:
    """One step of the compiled train function on one batch (train_on_batch)."""
    if getattr(model, "optimizer", None) is not optimizer:  # compiled once per optimizer
        compile_model(model, optimizer)
    return model.train_on_batch(x, y, return_dict=True)["batch_loss"]


def train(
    model: LeNet5,
    data: Dataset,
    *,
    epochs: int,
    lr: float | OptimizerConfig,
    batch_size: int,
    seed: int,
    on_epoch=None,
    validation=None,
    patience: int | None = None,
) -> list[float]:
    """compile and fit on the shared mini-batches; returns the mean training loss of each epoch.
    With a patience, keras.callbacks.EarlyStopping on the loss of `validation` (x, y) ends the fit
    after that many epochs without a better one and restores the best epoch's weights."""
    steps = training.steps_per_epoch(len(data.x_train), batch_size)
    # a whole epoch per call of fit's compiled train function (training.py: why)
    compile_model(model, make_optimizer(model, lr), steps_per_execution=steps)
    callbacks = [training.OnEpochEnd(on_epoch)]  # on_epoch(epoch, loss); it may stop the fit
    if patience is not None:
        callbacks.append(training.early_stopping(patience))
    x = data.x_train.astype(model.dtype)  # a float64 pipeline for a float64 model
    history = model.fit(
        training.shared_batches(x, data.y_train, batch_size=batch_size, seed=seed, epochs=epochs),
        epochs=epochs,
        steps_per_epoch=steps,
        validation_data=training.one_batch(validation, model.dtype),
        callbacks=callbacks,
        shuffle=False,  # the batches come in the shared order
        verbose=0,
    )
    return history.history["batch_loss"]


# ----------------------------------------------------------------------------- evaluation
def evaluate(model: LeNet5, x, y) -> tuple[float, float]:
    """(mean loss, accuracy) on a whole split."""
    logits = model(x.astype(model.dtype))
    loss = make_loss(model.dtype)(y, logits)
    return float(loss), float(ops.mean(ops.cast(ops.argmax(logits, axis=1) == y, "float64")))
