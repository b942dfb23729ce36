"""Multilayer perceptron in Keras 3 (TensorFlow backend): keras.Model, keras.ops, compile and fit.

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
from tasks.data import Dataset
from tf_impl import compat, initializers, optim, porting, training
from tf_impl.regularize import l2_regularizer, make_batch_norm


# ----------------------------------------------------------------------------- layers
def make_activation(cfg: MLPConfig, dtype: str) -> keras.layers.Layer:
    if cfg.activation == "leaky_relu":
        return compat.LeakyReLU(cfg.leaky_slope, dtype=dtype)  # float64-exact slope
    if cfg.activation == "identity":
        return keras.layers.Identity(dtype=dtype)  # Keras's own name for it is "linear"
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
    regularizer: keras.regularizers.Regularizer | None = None,
):
    # "uniform": torch's nn.Linear range; a named initialiser (He, Xavier) has a zero bias
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
    layer.build((None, in_features))  # the variables now, so canonical weights load before a call
    return layer


# ----------------------------------------------------------------------------- model
class MLP(keras.Model):
    """Dense layers with one hidden activation, then a linear head that outputs logits."""

    def __init__(
        self,
        cfg: MLPConfig,
        *,
        seed: int,
        dtype: str = "float64",
        dropout_layer=keras.layers.Dropout,
    ):
        super().__init__(dtype=dtype)
        self.cfg = cfg
        sizes, init = cfg.sizes, keras.random.SeedGenerator(seed)
        l2 = l2_regularizer(cfg.l2)  # (l2 / 2) * sum p^2 on every trainable variable
        bias = not cfg.batch_norm  # a batch norm's mean subtraction cancels the bias before it
        kw = dict(dtype=dtype, init=cfg.init, regularizer=l2)
        self.hidden = [
            make_dense(i, o, seed=init, name=f"hidden_{n}", bias=bias, **kw)
            for n, (i, o) in enumerate(zip(sizes[:-2], sizes[1:-1]))
        ]
        # the activation holds no state, so one layer serves every hidden layer
        self.activation = make_activation(cfg, dtype)
        self.head = make_dense(sizes[-2], sizes[-1], seed=init, name="head", **kw)
        # optional regularisers: batch norm before each hidden activation, dropout after it
        self.bn = (
            [make_batch_norm(o, dtype=dtype, regularizer=l2) for o in sizes[1:-1]]
            if cfg.batch_norm
            else []
        )
        self.dropouts = [
            dropout_layer(cfg.dropout, seed=seed + 1 + n, dtype=dtype)  # a stream per layer
            for n in range(len(self.hidden) if cfg.dropout else 0)
        ]
        self.batch_loss = training.BatchMeanLoss(dtype)  # what train reports per epoch

    def call(self, x, training=False):
        for i, layer in enumerate(self.hidden):
            x = layer(x)  # (B, D_in) -> (B, D_hidden)
            if self.bn:
                x = self.bn[i](x, training=training)
            x = self.activation(x)
            if self.dropouts:
                x = self.dropouts[i](x, training=training)
        return self.head(x)  # (B, D_hidden) -> (B, C) logits; C = 1 for a sigmoid head

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        loss = super().compute_loss(x, y, y_pred, sample_weight, training)  # data loss + L2
        self.batch_loss.update_state(loss)
        return loss

    def layers_by_name(self) -> dict[str, keras.layers.Dense]:
        """Layers by canonical prefix: hidden.0, hidden.1, ..., head."""
        return {**{f"hidden.{i}": layer for i, layer in enumerate(self.hidden)}, "head": self.head}


def create_model(
    cfg: MLPConfig, *, seed: int, dtype: str = "float64", dropout_layer=keras.layers.Dropout
) -> MLP:
    """dropout_layer: the parity tests pass a mask-replaying layer (tasks/replay/)."""
    return MLP(cfg, seed=seed, dtype=dtype, dropout_layer=dropout_layer)


# ----------------------------------------------------------------------------- canonical weights
def canonical_layers(model: MLP) -> dict:
    """Each stock layer by canonical prefix, with its tf_impl/porting.py function (dense kernels
    transposed; batch norm as is)."""
    out = {f"{prefix}.": ("dense", layer, {}) for prefix, layer in model.layers_by_name().items()}
    return out | {f"bn.{i}.": ("batch_norm", norm, {}) for i, norm in enumerate(model.bn)}


def load_canonical(model: MLP, params: dict[str, np.ndarray]) -> None:
    weights.check(params, model.cfg.param_shapes(), model.head.kernel.dtype)
    porting.load_layers(canonical_layers(model), params)


def export_canonical(model: MLP) -> dict[str, np.ndarray]:
    return porting.layers_to_canonical(canonical_layers(model))


# ----------------------------------------------------------------------------- loss
def make_loss(cfg: MLPConfig, dtype: str) -> keras.losses.Loss:
    """Mean loss computed from logits (the fused, numerically stable forms), in the model's dtype."""
    if cfg.head == "sigmoid":  # y (B,) against logits (B, 1)
        return keras.losses.BinaryCrossentropy(from_logits=True, dtype=dtype)
    if cfg.head == "identity":  # regression: (B, K) predictions against (B, K) float targets
        return keras.losses.MeanSquaredError(dtype=dtype)
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype=dtype)


def predict(logits, head: str):
    if head == "identity":
        return logits  # a regression predicts the outputs themselves
    return ops.cast(logits[:, 0] > 0, "int64") if head == "sigmoid" else ops.argmax(logits, axis=1)


def score(logits, y, head: str):
    """evaluate's second number: a classifier's accuracy, a regression's R² (keras.metrics.R2Score,
    averaged over the targets as scikit-learn's r2_score)."""
    if head == "identity":
        dtype = logits.dtype.name
        with compat.floatx(dtype):  # R2Score builds its sums at the first update, in floatx
            r2 = keras.metrics.R2Score(dtype=dtype)
            r2.update_state(y, logits)
        return r2.result()
    return ops.mean(ops.cast(predict(logits, head) == y, "float64"))


def forward_backward(model: MLP, x, y) -> dict[str, np.ndarray]:
    """Outputs, loss and every gradient in the canonical layout (what the parity tests compare)."""
    x, y = tf.constant(x), tf.constant(y)
    layers = canonical_layers(model)
    variables = {p: layer.trainable_variables for p, (_, layer, _) in layers.items()}
    with tf.GradientTape() as tape:
        tape.watch(x)
        logits = model(x, training=True)  # batch statistics and dropout, as in training
        loss = make_loss(model.cfg, model.dtype)(y, logits)
    grads, dx = tape.gradient(loss, (variables, x))
    # a gradient has its parameter's Keras layout: the same porting functions bring it to canonical
    grads = {f"grad.{k}": g for k, g in porting.layers_to_canonical(layers, grads).items()}
    return {"output": logits.numpy(), "loss": loss.numpy(), "grad.input": dx.numpy(), **grads}


# ----------------------------------------------------------------------------- train step
def make_optimizer(model: MLP, lr: float | OptimizerConfig) -> keras.optimizers.Optimizer:
    """A learning rate gives keras.optimizers.SGD; an OptimizerConfig any optimizer of tf_impl/optim.py."""
    return optim.make_optimizer(model, optim.as_config(lr))


def compile_model(
    model: MLP, optimizer: keras.optimizers.Optimizer, steps_per_execution: int = 1
) -> None:
    with compat.floatx(model.dtype):  # the compiled loss and its tracker in the model's dtype
        model.compile(
            optimizer=optimizer,
            loss=make_loss(model.cfg, model.dtype),
            steps_per_execution=steps_per_execution,
        )


def train_step(model: MLP, optimizer: keras.optimizers.Optimizer, x, y) -> float:
    """One step of the compiled train function on one batch (train_on_batch)."""
    if getattr(model, "optimizer", None) is not optimizer:  # compiled once per optimizer
        compile_model(model, optimizer)
    return model.train_on_batch(x, y, return_dict=True)["batch_loss"]


def train(
    model: MLP,
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
def evaluate(model: MLP, x, y) -> tuple[float, float]:
    """(mean loss, accuracy) on a whole split; a regression's (mean squared error, R²)."""
    logits = model(x.astype(model.dtype))
    loss = make_loss(model.cfg, model.dtype)(y, logits)
    return float(loss), float(score(logits, y, model.cfg.head))
