"""Dropout and batch normalisation: the same mask gives the same outputs and gradients in all four;
each framework's own seeded dropout draws masks of the right rate and scale; batch norm (dense and
conv) agrees in train mode (outputs and every gradient), in eval mode, and in its running mean; the
running variance differs exactly as documented (torch unbiased, Keras and Flax biased) and the
momentum conventions are opposite (torch 0.1 = Keras/Flax 0.9)."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from tasks import parity
from tasks.registry import FRAMEWORKS

OTHERS = FRAMEWORKS[1:]
P = 0.3


# ----------------------------------------------------------------------------- dropout
def dropout_run(framework, x, dy, *, mask=None, training=True, seed=0):
    """(y, dx) of one dropout layer; `mask` (True = keep) supplied, else the framework's own draw."""
    if framework == "scratch":
        from scratch.layers import Dropout
        from tasks.replay.scratch import ReplayDropout, set_mask

        layer = (Dropout if mask is None else ReplayDropout)(P, rng=np.random.default_rng(seed))
        if mask is not None:
            set_mask(layer, mask)
        layer.training = training
        return layer.forward(x), layer.backward(dy)
    if framework == "torch_impl":
        import torch

        from tasks.replay.torch_impl import ReplayDropout, set_mask

        layer = torch.nn.Dropout(P) if mask is None else ReplayDropout(P)
        if mask is not None:
            set_mask(layer, mask)
        layer.train(training)
        xt = torch.tensor(x, requires_grad=True)
        with torch.random.fork_rng(devices=[]):  # nn.Dropout draws from the global generator
            torch.manual_seed(seed)
            y = layer(xt)
        (y * torch.as_tensor(dy)).sum().backward()
        return y.detach().numpy(), xt.grad.numpy()
    if framework == "tf_impl":
        import keras
        import tensorflow as tf

        from tasks.replay.tf_impl import ReplayDropout, set_mask

        if mask is None:  # the stock layer, seeded
            layer = keras.layers.Dropout(P, seed=seed, dtype="float64")
        else:
            layer = ReplayDropout(P, seed=seed, dtype="float64")
            set_mask(layer, mask)
        xt = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            y = layer(xt, training=training)
            loss = tf.reduce_sum(y * dy)
        return y.numpy(), tape.gradient(loss, xt).numpy()
    import jax.numpy as jnp
    from flax import nnx

    from tasks.replay.jax_impl import ReplayDropout, set_mask

    # without a mask, the stock nnx.Dropout the models build
    layer = (nnx.Dropout if mask is None else ReplayDropout)(P, rngs=nnx.Rngs(dropout=seed))
    if mask is not None:
        set_mask(layer, mask)
    layer = nnx.view(layer, deterministic=not training)  # the models' way to set the mode

    def loss(layer, x):  # an nnx transform, so the layer's rng stream may advance inside it
        y = layer(x)
        return jnp.sum(y * dy), y

    (_, y), dx = nnx.value_and_grad(loss, argnums=1, has_aux=True)(layer, jnp.asarray(x))
    return np.asarray(y), np.asarray(dx)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_dropout_with_a_supplied_mask(framework):
    rng = np.random.default_rng(1)
    x, dy, mask = rng.normal(size=(6, 5)), rng.normal(size=(6, 5)), rng.random((6, 5)) >= P
    y, dx = dropout_run(framework, x, dy, mask=mask)
    parity.assert_close(y, x * mask / (1 - P), 1e-15, f"{framework} output")
    parity.assert_close(dx, dy * mask / (1 - P), 1e-15, f"{framework} grad.input")
    y, dx = dropout_run(framework, x, dy, mask=mask, training=False)
    assert np.array_equal(y, x) and np.array_equal(dx, dy), "eval mode is the identity"


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_dropout_own_rng_rate_scale_and_seed(framework):
    """The framework's own seeded draw: values 0 or 1/(1-p), kept fraction 1-p within 5 sigma,
    the same seed gives the same mask, another seed another, and dy follows the same mask."""
    x = np.ones((200, 500))
    y, dx = dropout_run(framework, x, x, seed=3)
    kept = y != 0
    assert np.allclose(y[kept], 1 / (1 - P), rtol=1e-15, atol=0) and np.array_equal(dx, y)
    sigma = np.sqrt(P * (1 - P) / x.size)
    assert abs(kept.mean() - (1 - P)) < 5 * sigma, kept.mean()
    assert np.array_equal(dropout_run(framework, x, x, seed=3)[0], y)
    assert not np.array_equal(dropout_run(framework, x, x, seed=4)[0], y)


def mask_stack_run(framework, x, masks, calls: int) -> list[np.ndarray]:
    """Outputs of `calls` training calls of one dropout layer given a (S, B, D) mask stack (None: the
    layer's own draws), through each framework's compiled path where it has one (a tf.function, nnx.jit),
    as a train step would run it."""
    if framework == "scratch":
        from scratch.layers import Dropout
        from tasks.replay.scratch import ReplayDropout, set_mask

        layer = (Dropout if masks is None else ReplayDropout)(P, rng=np.random.default_rng(0))
        if masks is not None:
            set_mask(layer, masks)
        return [layer.forward(x) for _ in range(calls)]
    if framework == "torch_impl":
        import torch

        from tasks.replay.torch_impl import ReplayDropout, set_mask

        layer = torch.nn.Dropout(P) if masks is None else ReplayDropout(P)
        if masks is not None:
            set_mask(layer, masks)
        with torch.random.fork_rng(devices=[]):  # as train() seeds nn.Dropout's global generator
            torch.manual_seed(0)
            return [layer(torch.as_tensor(x)).numpy() for _ in range(calls)]
    if framework == "tf_impl":
        import keras
        import tensorflow as tf

        from tasks.replay.tf_impl import ReplayDropout, set_mask

        stock = masks is None  # the models' keras.layers.Dropout, else the replaying one
        layer = (keras.layers.Dropout if stock else ReplayDropout)(P, seed=0, dtype="float64")
        if masks is not None:
            set_mask(layer, masks)
        step = tf.function(
            lambda x: layer(x, training=True)
        )  # traced once: the step counter must be a variable
        return [step(tf.constant(x)).numpy() for _ in range(calls)]
    import jax.numpy as jnp
    from flax import nnx

    from tasks.replay.jax_impl import ReplayDropout, set_mask

    layer = (nnx.Dropout if masks is None else ReplayDropout)(P, rngs=nnx.Rngs(dropout=0))
    if masks is not None:
        set_mask(layer, masks)
    step = nnx.jit(
        lambda layer, x: layer(x)
    )  # the step counter is nnx state, carried out of the jit
    return [np.asarray(step(layer, jnp.asarray(x))) for _ in range(calls)]


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_mask_stack_gives_one_mask_per_training_step(framework):
    """set_mask with a (S, B, D) stack: training call t uses mask t % S, in every framework, compiled or not."""
    rng = np.random.default_rng(2)
    x, masks = rng.normal(size=(4, 5)), rng.random((3, 4, 5)) >= P
    outputs = mask_stack_run(framework, x, masks, calls=5)
    for t, y in enumerate(outputs):
        parity.assert_close(y, x * masks[t % 3] / (1 - P), 1e-15, f"{framework} call {t}")
    assert not np.array_equal(outputs[0], outputs[1]), "the masks of consecutive steps must differ"


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_own_draws_change_every_compiled_step(framework):
    """Without a supplied mask, each training call draws a new mask from the layer's own seeded stream,
    also inside a tf.function or nnx.jit (a seed captured as a constant would repeat one mask forever)."""
    x = np.ones((8, 50))
    outputs = mask_stack_run(framework, x, None, calls=3)
    kept = [y != 0 for y in outputs]
    assert not np.array_equal(kept[0], kept[1]) and not np.array_equal(kept[1], kept[2])
    assert all(abs(k.mean() - (1 - P)) < 5 * np.sqrt(P * (1 - P) / x.size) for k in kept)


# ----------------------------------------------------------------------------- batch norm
M, EPS = 0.1, 1e-5  # torch's conventions; Keras and Flax get momentum 1 - M
SHAPES = {"dense": (16, 5), "conv": (4, 3, 5, 5)}


def batch_norm_run(framework, batches, gamma, beta, dy, *, training=True, stats=None):
    """Every batch but the last runs forward (updating the running statistics); the last also runs
    backward against dy. `stats` = (running_mean, running_var) to start from. Canonical layouts."""
    conv = batches[0].ndim == 4
    to_native = (
        (lambda a: a.transpose(0, 2, 3, 1)) if conv else (lambda a: a)
    )  # (B, C, H, W) -> (B, H, W, C)
    to_canonical = (lambda a: a.transpose(0, 3, 1, 2)) if conv else (lambda a: a)
    c = gamma.shape[0]
    if framework == "scratch":
        from scratch.layers import BatchNorm

        layer = BatchNorm(c, momentum=M, eps=EPS)
        layer.params.update(weight=gamma.copy(), bias=beta.copy())
        if stats:
            layer.buffers.update(running_mean=stats[0].copy(), running_var=stats[1].copy())
        layer.training = training
        for xb in batches:
            y = layer.forward(xb)
        dx = layer.backward(dy)
        return dict(
            y=y, dx=dx, dgamma=layer.grads["weight"], dbeta=layer.grads["bias"], **layer.buffers
        )
    if framework == "torch_impl":
        import torch

        from torch_impl.regularize import make_batch_norm

        layer = make_batch_norm(c, momentum=M, eps=EPS, conv=conv)
        with torch.no_grad():
            layer.weight.copy_(torch.tensor(gamma))
            layer.bias.copy_(torch.tensor(beta))
            if stats:
                layer.running_mean.copy_(torch.tensor(stats[0]))
                layer.running_var.copy_(torch.tensor(stats[1]))
        layer.train(training)
        for xb in batches[:-1]:
            layer(torch.tensor(xb))
        x = torch.tensor(batches[-1], requires_grad=True)
        y = layer(x)
        (y * torch.tensor(dy)).sum().backward()
        numpy = lambda t: t.detach().numpy().copy()
        return dict(y=numpy(y), dx=numpy(x.grad), dgamma=numpy(layer.weight.grad), dbeta=numpy(layer.bias.grad),
                    running_mean=numpy(layer.running_mean), running_var=numpy(layer.running_var))  # fmt: skip
    if framework == "tf_impl":
        import tensorflow as tf

        from tf_impl.regularize import make_batch_norm

        layer = make_batch_norm(c, momentum=M, eps=EPS, conv=conv)
        layer.gamma.assign(gamma)
        layer.beta.assign(beta)
        if stats:
            layer.moving_mean.assign(stats[0])
            layer.moving_variance.assign(stats[1])
        for xb in batches[:-1]:
            layer(tf.constant(to_native(xb)), training=training)
        x = tf.constant(to_native(batches[-1]))
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=training)
            loss = tf.reduce_sum(y * to_native(dy))
        dx, dgamma, dbeta = tape.gradient(loss, [x, layer.gamma, layer.beta])
        return dict(y=to_canonical(y.numpy()), dx=to_canonical(dx.numpy()), dgamma=dgamma.numpy(), dbeta=dbeta.numpy(),
                    running_mean=layer.moving_mean.numpy(), running_var=layer.moving_variance.numpy())  # fmt: skip
    import jax.numpy as jnp
    from flax import nnx

    from jax_impl.regularize import make_batch_norm

    layer = make_batch_norm(c, momentum=M, eps=EPS, conv=conv, rngs=nnx.Rngs(0))
    layer.scale.set_value(jnp.asarray(gamma))
    layer.bias.set_value(jnp.asarray(beta))
    if stats:
        layer.mean.set_value(jnp.asarray(stats[0]))
        layer.var.set_value(jnp.asarray(stats[1]))
    layer = nnx.view(layer, use_running_average=not training)  # the models' way to set the mode
    for xb in batches[:-1]:
        layer(jnp.asarray(to_native(xb)))

    def loss(layer, x):
        y = layer(x)
        return jnp.sum(y * to_native(dy)), y

    (_, y), (grads, dx) = nnx.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
        layer, jnp.asarray(to_native(batches[-1]))
    )
    return dict(y=to_canonical(np.asarray(y)), dx=to_canonical(np.asarray(dx)), dgamma=np.asarray(grads["scale"].get_value()),
                dbeta=np.asarray(grads["bias"].get_value()), running_mean=np.asarray(layer.mean.get_value()),
                running_var=np.asarray(layer.var.get_value()))  # fmt: skip


def batch_norm_inputs(layer: str, steps: int = 4, seed: int = 2):
    rng = np.random.default_rng(seed)
    shape = SHAPES[layer]
    batches = [
        rng.normal(2.0, 3.0, size=shape) for _ in range(steps)
    ]  # far from (0, 1): the stats matter
    gamma, beta = rng.uniform(0.5, 1.5, shape[1]), rng.normal(size=shape[1])
    return batches, gamma, beta, rng.normal(size=shape)


@pytest.mark.parametrize("framework", OTHERS)
@pytest.mark.parametrize("layer", list(SHAPES))
def test_batch_norm_train_mode(framework, layer):
    """Outputs, input/gamma/beta gradients and the running mean after 4 batches, against scratch."""
    batches, gamma, beta, dy = batch_norm_inputs(layer)
    actual, reference = (
        batch_norm_run(framework, batches, gamma, beta, dy),
        batch_norm_run("scratch", batches, gamma, beta, dy),
    )
    for key in ("y", "dx", "dgamma", "dbeta", "running_mean"):
        parity.assert_close(
            actual[key], reference[key], 1e-10, f"batch norm {layer} {framework} {key}"
        )
    if framework == "torch_impl":  # torch's running variance is the unbiased one, like scratch's
        parity.assert_close(
            actual["running_var"], reference["running_var"], 1e-10, f"{layer} torch running_var"
        )


@pytest.mark.parametrize("framework", ["tf_impl", "jax_impl"])
@pytest.mark.parametrize("layer", list(SHAPES))
def test_running_variance_is_biased_in_keras_and_flax(framework, layer):
    """Starting from 1, after K batches of n values per feature, torch's running variance minus the
    decayed start (1 - m)^K is exactly n / (n - 1) times Keras's and Flax's: torch averages the
    unbiased batch variance, they the biased one. The check can fail: the ratio is not 1."""
    batches, gamma, beta, dy = batch_norm_inputs(layer)
    shape = SHAPES[layer]
    n = shape[0] * int(np.prod(shape[2:]))
    decayed = (1 - M) ** len(batches)
    actual, reference = (
        batch_norm_run(framework, batches, gamma, beta, dy),
        batch_norm_run("scratch", batches, gamma, beta, dy),
    )
    parity.assert_close(
        (actual["running_var"] - decayed) * n / (n - 1),
        reference["running_var"] - decayed,
        1e-12,
        "unbiased = biased * n/(n-1)",
    )
    with pytest.raises(AssertionError):
        parity.assert_close(
            actual["running_var"], reference["running_var"], 1e-9, "biased vs unbiased"
        )


@pytest.mark.parametrize("framework", OTHERS)
@pytest.mark.parametrize("layer", list(SHAPES))
def test_batch_norm_eval_mode_uses_the_running_statistics(framework, layer):
    batches, gamma, beta, dy = batch_norm_inputs(layer)
    rng = np.random.default_rng(9)
    stats = (rng.normal(size=gamma.shape), rng.uniform(0.5, 2.0, gamma.shape))
    actual = batch_norm_run(framework, batches[:1], gamma, beta, dy, training=False, stats=stats)
    reference = batch_norm_run("scratch", batches[:1], gamma, beta, dy, training=False, stats=stats)
    for key in ("y", "dx", "dgamma", "dbeta", "running_mean", "running_var"):
        parity.assert_close(
            actual[key], reference[key], 1e-10, f"eval batch norm {layer} {framework} {key}"
        )
    parity.assert_close(
        actual["running_mean"], stats[0], 0.0, "eval mode leaves the statistics alone"
    )


def test_batch_norm_momentum_conventions_are_opposite():
    """Keras's momentum weights the old average: passing torch's 0.1 unconverted keeps 90% of the
    *new* batch mean after one step instead of 10%."""
    import keras
    import torch

    x = np.random.default_rng(0).normal(4.0, 1.0, size=(32, 3))
    torch_bn = torch.nn.BatchNorm1d(3, momentum=0.1, dtype=torch.float64)
    torch_bn(torch.tensor(x))
    keras_bn = keras.layers.BatchNormalization(momentum=0.1, dtype="float64")
    keras_bn(x, training=True)
    mean = x.mean(axis=0)
    parity.assert_close(
        torch_bn.running_mean.numpy(), 0.1 * mean, 1e-15, "torch: 0.1 of the new batch"
    )
    parity.assert_close(
        keras_bn.moving_mean.numpy(), 0.9 * mean, 1e-15, "keras momentum 0.1: 0.9 of the new batch"
    )


def test_batch_norm_defaults_differ_as_documented():
    """eps torch 1e-5, Keras 1e-3, Flax 1e-5; momentum torch 0.1 (new), Keras 0.99 and Flax 0.99 (old)."""
    import keras
    import torch
    from flax import nnx

    default = lambda cls, name: inspect.signature(cls.__init__).parameters[name].default
    assert (default(torch.nn.BatchNorm1d, "eps"), default(torch.nn.BatchNorm1d, "momentum")) == (
        1e-5,
        0.1,
    )
    assert (
        default(keras.layers.BatchNormalization, "epsilon"),
        default(keras.layers.BatchNormalization, "momentum"),
    ) == (1e-3, 0.99)
    assert (default(nnx.BatchNorm, "epsilon"), default(nnx.BatchNorm, "momentum")) == (1e-5, 0.99)


@pytest.mark.filterwarnings(
    "ignore:scatter inputs have incompatible types"
)  # the float32 stock layer, on purpose
def test_flax_batch_norm_statistics_are_float32_unless_replaced():
    """nnx.BatchNorm(param_dtype=float64) still keeps float32 running statistics; jax_impl's
    make_batch_norm replaces them, and the float64 check above fails without that."""
    import jax.numpy as jnp
    from flax import nnx

    from jax_impl.regularize import make_batch_norm

    stock = nnx.BatchNorm(3, dtype=jnp.float64, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    assert (
        stock.mean.get_value().dtype == jnp.float32 and stock.scale.get_value().dtype == jnp.float64
    )
    ours = make_batch_norm(3, rngs=nnx.Rngs(0))
    assert ours.mean.get_value().dtype == jnp.float64 and ours.var.get_value().dtype == jnp.float64
    x = jnp.asarray(np.random.default_rng(0).normal(2.0, 3.0, size=(16, 3)))
    stock(x)
    ours(x)
    with pytest.raises(AssertionError):
        parity.assert_close(
            np.asarray(stock.mean.get_value()),
            np.asarray(ours.mean.get_value()),
            1e-10,
            "float32 running mean",
        )
