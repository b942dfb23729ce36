"""Scaled dot-product and multi-head self-attention in Keras 3 (TensorFlow backend): written out with
keras.ops, and keras.layers.MultiHeadAttention; compile and fit.

Vaswani et al. (2017), "Attention Is All You Need", sections 3.2 (attention) and 3.5 (positions).
The hand-written layer keeps separate Dense q, k, v, o (kernel (in, out): transposed to and from the
canonical (out, in)); the stock MultiHeadAttention keeps q/k/v kernels (E, NH, HS), biases (NH, HS)
and an output kernel (NH, HS, E), and is called value before key: mha(query, value, key).

Canonical mask: `allowed` (B, 1, T, T) bool, True = may attend; Keras's attention_mask has the same
polarity, shape (B, T, T). A fully masked row gives zero weights and output, here and in Keras 3.15
(its softmax zeroes masked entries after normalising).
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from tasks import weights
from tasks.configs import PAD, AttentionConfig, OptimizerConfig
from tasks.data import Dataset
from tf_impl import compat, optim, porting, training


# ----------------------------------------------------------------------------- layers
def masked_softmax(scores, allowed):
    """Softmax over the last axis where `allowed`; masked entries and fully masked rows give exactly 0."""
    shifted = ops.where(allowed, scores, -math.inf)
    top = ops.stop_gradient(
        ops.max(shifted, axis=-1, keepdims=True)
    )  # the shift cancels out: no gradient through it
    top = ops.where(ops.isfinite(top), top, ops.zeros_like(top))  # a fully masked row: shift by 0
    e = ops.exp(shifted - top)  # exp(-inf) = 0 on masked entries
    total = ops.sum(e, axis=-1, keepdims=True)
    return e / ops.where(total > 0, total, ops.ones_like(total))  # 0 / 1 = 0 on a fully masked row


def scaled_dot_product_attention(q, k, v, allowed):
    """softmax(Q K^T / sqrt(HS) + mask) V, returning the output and the weights."""
    scores = ops.matmul(q, ops.swapaxes(k, -1, -2)) / math.sqrt(
        q.shape[-1]
    )  # (B, NH, T, HS) @ (B, NH, HS, T) -> (B, NH, T, T)
    w = masked_softmax(scores, allowed)
    return ops.matmul(w, v), w  # (B, NH, T, T) @ (B, NH, T, HS) -> (B, NH, T, HS)


def make_dense(
    in_features: int, out_features: int, *, seed: keras.random.SeedGenerator, dtype: str, name: str
):
    bound = 1.0 / np.sqrt(
        in_features
    )  # torch's nn.Linear default range, so every framework starts alike
    init = keras.initializers.RandomUniform(-bound, bound, seed=seed)
    layer = keras.layers.Dense(
        out_features, kernel_initializer=init, bias_initializer=init, dtype=dtype, name=name
    )
    layer.build(
        (None, in_features)
    )  # create the variables now, so canonical weights can load before a call
    return layer


class MultiHeadAttention(keras.layers.Layer):
    """Attention with NH heads: project to Q, K, V, attend per head, concatenate, project out.

    Self-attention: call(x, allowed). Cross-attention: call(x, allowed, key, value), the key
    (B, S, kdim) and value (B, S, vdim) inputs with their own widths (W_k (E, kdim), W_v (E, vdim);
    default kdim = vdim = E) and `allowed` (B, 1, T, S).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        *,
        kdim: int | None = None,
        vdim: int | None = None,
        seed: keras.random.SeedGenerator,
        dtype: str,
        name: str,
    ):
        super().__init__(dtype=dtype, name=name)
        self.n_heads = n_heads
        widths = (d_model, kdim or d_model, vdim or d_model, d_model)  # in_features of q, k, v, o
        self.q, self.k, self.v, self.o = (
            make_dense(w, d_model, seed=seed, dtype=dtype, name=p) for w, p in zip(widths, "qkvo")
        )
        # every sublayer is built above: built, so the first call (and fit's trace) need not run
        # call() once more on symbolic inputs to build them, for this layer and every one around it
        self.built = True

    def split(self, x):
        T, E = x.shape[1], x.shape[2]
        return ops.transpose(
            ops.reshape(x, (-1, T, self.n_heads, E // self.n_heads)), (0, 2, 1, 3)
        )  # (B, T, E) -> (B, NH, T, HS)

    def merge(self, x):
        NH, T, HS = x.shape[1], x.shape[2], x.shape[3]
        return ops.reshape(
            ops.transpose(x, (0, 2, 1, 3)), (-1, T, NH * HS)
        )  # (B, NH, T, HS) -> (B, T, E)

    def call(self, x, allowed, key=None, value=None):
        if (key is None) != (value is None):
            raise ValueError(
                "cross-attention takes both key and value (the same tensor if need be)"
            )
        key, value = (x, x) if key is None else (key, value)  # (B, S, kdim), (B, S, vdim)
        q, k, v = self.split(self.q(x)), self.split(self.k(key)), self.split(self.v(value))
        out, w = scaled_dot_product_attention(q, k, v, allowed)  # w (B, NH, T, S)
        return self.o(self.merge(out)), w


class StockMultiHeadAttention(keras.layers.Layer):
    """keras.layers.MultiHeadAttention behind the same call: (x, allowed[, key, value]) -> (output,
    weights). Its key/value kernels take their widths (kdim, vdim) from the shapes given to build."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        *,
        kdim: int | None = None,
        vdim: int | None = None,
        seed: keras.random.SeedGenerator,
        dtype: str,
        name: str,
    ):
        super().__init__(dtype=dtype, name=name)
        init = keras.initializers.GlorotUniform(
            seed=seed
        )  # Keras's default initialiser, seeded from the generator we were given
        self.mha = keras.layers.MultiHeadAttention(
            n_heads, d_model // n_heads, kernel_initializer=init, dtype=dtype, name="mha"
        )
        # query, value, key shapes: the key/value kernels are (kdim, NH, HS), (vdim, NH, HS)
        kdim, vdim = kdim or d_model, vdim or d_model
        self.mha.build((None, None, d_model), (None, None, vdim), (None, None, kdim))
        compat.exact_query_scale(self.mha, d_model // n_heads)  # 1 / sqrt(HS), float64-exact
        self.built = True  # its one sublayer is built above (MultiHeadAttention: why)

    def call(self, x, allowed, key=None, value=None):
        if (key is None) != (value is None):
            raise ValueError(
                "cross-attention takes both key and value (the same tensor if need be)"
            )
        key, value = (x, x) if key is None else (key, value)
        # value before key; attention_mask has the canonical polarity (True = attend), shape (B, T, S)
        return self.mha(
            x, value, key=key, attention_mask=allowed[:, 0], return_attention_scores=True
        )


def positional_encoding(T: int, E: int, dtype="float64"):
    """Sinusoidal positions: PE[t, 2i] = sin(t / 10000^(2i/E)), PE[t, 2i+1] = cos(same)."""
    position = ops.arange(T, dtype="float64")[:, None]  # (T, 1)
    freq = ops.exp(-math.log(10000.0) * ops.arange(0, E, 2, dtype="float64") / E)  # (E/2,)
    angles = position * freq  # (T, 1) * (E/2,) -> (T, E/2)
    pe = ops.reshape(
        ops.stack([ops.sin(angles), ops.cos(angles)], axis=-1), (T, E)
    )  # interleave: sin at 2i, cos at 2i+1
    return ops.cast(pe, dtype)


def attention_mask(tokens, causal: bool):
    """The canonical mask: (B, 1, T, T) bool, True = may attend (key is not PAD, and s <= t if causal)."""
    T = tokens.shape[1]
    allowed = (tokens != PAD)[
        :, None, None, :
    ]  # (B, T) -> (B, 1, 1, T): one row of keys per sequence
    if causal:
        allowed = ops.logical_and(
            allowed, ops.tril(ops.ones((T, T), dtype="bool"))
        )  # -> (B, 1, T, T)
    return ops.broadcast_to(allowed, (ops.shape(tokens)[0], 1, T, T))


def make_attention(cfg, *, seed, dtype: str, name: str) -> keras.layers.Layer:
    return (StockMultiHeadAttention if cfg.stock else MultiHeadAttention)(
        cfg.d_model, cfg.n_heads, seed=seed, dtype=dtype, name=name
    )


def make_embedding(cfg, *, seed: keras.random.SeedGenerator, dtype: str) -> keras.layers.Embedding:
    layer = keras.layers.Embedding(
        cfg.vocab,
        cfg.d_model,
        embeddings_initializer=keras.initializers.RandomNormal(seed=seed),
        dtype=dtype,
        name="embed",
    )
    layer.build((None, None))
    return layer


# ----------------------------------------------------------------------------- model
class AttentionModel(keras.Model):
    """Embedding * sqrt(E) + positions, one self-attention layer with a residual, a per-token head.

    model(tokens) returns the logits (B, T, V); model.logits_and_weights(tokens, dx=None) returns
    (logits, weights): the attention weights of the one layer, a list of one (B, NH, T, T).
    """

    def __init__(
        self, cfg: AttentionConfig, *, seed: keras.random.SeedGenerator, dtype: str = "float64"
    ):
        super().__init__(dtype=dtype)
        self.cfg = cfg
        self.embed = make_embedding(cfg, seed=seed, dtype=dtype)
        self.attn = make_attention(cfg, seed=seed, dtype=dtype, name="attn")
        self.head = make_dense(cfg.d_model, cfg.vocab, seed=seed, dtype=dtype, name="head")
        self.batch_loss = training.BatchMeanLoss(dtype)  # what train reports per epoch

    def embed_tokens(self, tokens):
        """The model's input: embedding scaled by sqrt(E) plus positions (B, T) -> (B, T, E)."""
        x = self.embed(tokens) * math.sqrt(self.cfg.d_model)
        return x + positional_encoding(tokens.shape[1], self.cfg.d_model, x.dtype)

    def logits_and_weights(self, tokens, dx=None):
        """Logits (B, T, V) and the attention weights of each layer; `dx` (zeros) is added to the
        embedded input so that its gradient is the input gradient."""
        x = self.embed_tokens(tokens) if dx is None else self.embed_tokens(tokens) + dx
        a, w = self.attn(x, attention_mask(tokens, self.cfg.causal))
        return self.head(x + a), [w]  # (B, T, E) -> (B, T, V)

    def call(self, tokens, training=False):
        return self.logits_and_weights(tokens)[0]

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        loss = super().compute_loss(x, y, y_pred, sample_weight, training)
        self.batch_loss.update_state(loss)
        return loss

    def layers_by_name(self) -> dict[str, keras.layers.Layer]:
        """Layers by canonical prefix."""
        return {"embed": self.embed, "attn": self.attn, "head": self.head}


def create_model(cfg: AttentionConfig, *, seed: int, dtype: str = "float64") -> AttentionModel:
    return AttentionModel(cfg, seed=keras.random.SeedGenerator(seed), dtype=dtype)


# ----------------------------------------------------------------------------- canonical weights
def canonical_layers(model) -> dict:
    """Each stock layer by canonical prefix, with its tf_impl/porting.py function and layout
    (dense kernels transposed; the stock attention's kernels split by head)."""
    out = {}
    for prefix, layer in model.layers_by_name().items():
        if isinstance(layer, MultiHeadAttention):
            out.update({f"{prefix}.{p}.": ("dense", getattr(layer, p), {}) for p in "qkvo"})
        elif isinstance(layer, StockMultiHeadAttention):
            out[f"{prefix}."] = ("mha", layer.mha, {"num_heads": layer.mha.num_heads})
        elif isinstance(layer, keras.layers.Dense):
            out[f"{prefix}."] = ("dense", layer, {})
        elif isinstance(layer, keras.layers.Embedding):
            out[f"{prefix}."] = ("embedding", layer, {})
        elif isinstance(layer, keras.layers.LayerNormalization):
            out[f"{prefix}."] = ("layer_norm", layer, {})
    return out


def load_canonical(model, params: dict[str, np.ndarray]) -> None:
    weights.check(params, model.cfg.param_shapes(), model.head.kernel.dtype)
    porting.load_layers(canonical_layers(model), params)


def export_canonical(model) -> dict[str, np.ndarray]:
    return porting.layers_to_canonical(canonical_layers(model))


# ----------------------------------------------------------------------------- loss
def make_loss(dtype: str) -> keras.losses.Loss:
    """Cross-entropy from logits averaged over the non-PAD targets, in `dtype`."""
    return keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, ignore_class=PAD, dtype=dtype
    )


def forward_backward(model, x, y) -> dict[str, np.ndarray]:
    """Outputs, attention weights, loss and every gradient in the canonical layout."""
    tokens, y = tf.constant(x), tf.constant(y)
    layers = canonical_layers(model)
    variables = {p: layer.trainable_variables for p, (_, layer, _) in layers.items()}
    dx = tf.zeros((*tokens.shape, model.cfg.d_model), dtype=model.dtype)  # (B, T, E)
    with tf.GradientTape() as tape:
        tape.watch(dx)
        logits, attn = model.logits_and_weights(tokens, dx=dx)
        loss = make_loss(model.dtype)(y, logits)
    grads = tape.gradient(loss, {"input": dx, **variables})
    # the embedding gradient comes back as IndexedSlices (rows touched): densify it
    grads = tf.nest.map_structure(lambda g: tf.convert_to_tensor(g).numpy(), grads)
    out = {f"grad.{k}": g for k, g in porting.layers_to_canonical(layers, grads).items()}
    out.update({"output": logits.numpy(), "loss": loss.numpy(), "grad.input": grads["input"]})
    return out | {f"attn_weights.{i}": w.numpy() for i, w in enumerate(attn)}


# ----------------------------------------------------------------------------- train step
def make_optimizer(model, lr: float | OptimizerConfig) -> keras.optimizers.Optimizer:
    """A learning rate gives the config's optimizer (Adam or SGD); an OptimizerConfig any of tf_impl/optim.py."""
    if isinstance(lr, OptimizerConfig):
        return optim.make_optimizer(model, lr)
    # Adam's epsilon 1e-8 in Keras's "epsilon hat" form (docs/PORTING.md)
    name = "adam" if model.cfg.optimizer == "adam" else "sgd"
    return optim.make_optimizer(model, OptimizerConfig(name, lr=lr, eps=1e-8))


def compile_model(
    model, optimizer: keras.optimizers.Optimizer, steps_per_execution: int = 1
) -> None:
    with compat.floatx(model.dtype):  # the compiled loss in the model's dtype
        model.compile(
            optimizer=optimizer,
            loss=make_loss(model.dtype),
            steps_per_execution=steps_per_execution,
        )


def train_step(model, optimizer: keras.optimizers.Optimizer, x, y) -> float:
    """One step of the compiled train function on one batch (train_on_batch)."""
    if getattr(model, "optimizer", None) is not optimizer:  # compiled once per optimizer
        compile_model(model, optimizer)
    return model.train_on_batch(x, y, return_dict=True)["batch_loss"]


def train(
    model,
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
    x = data.x_train  # token ids (B, T): no dtype cast
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
def evaluate(model, x, y) -> tuple[float, float]:
    """(mean loss, token accuracy over the non-PAD targets) on a whole split."""
    logits = model(tf.constant(x))
    valid = y != PAD
    accuracy = ((np.asarray(ops.argmax(logits, axis=-1)) == y) & valid).sum() / valid.sum()
    return float(make_loss(model.dtype)(tf.constant(y), logits)), float(accuracy)
