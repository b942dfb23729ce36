"""The Keras models train the Keras way and stay exact: stock keras.layers.Dropout, compile + fit on
a float64 tf.data pipeline, keras.callbacks.EarlyStopping, and each float64 workaround of
tf_impl/compat.py (each test below fails without the workaround it names)."""

from __future__ import annotations

import numpy as np
import pytest

from tasks import parity, train, weights
from tasks.configs import LeNet5Config, MLPConfig
from tasks.data import Dataset, load_task
from tasks.registry import load_impl


def moons(n: int = 100):
    """A float64 slice of moons with a partial last batch at batch size 32 (100 = 3 * 32 + 4)."""
    data = load_task("moons", seed=0)
    return Dataset("moons", data.x_train[:n], data.y_train[:n], data.x_test, data.y_test, 2)


def trained(framework: str, cfg, data, epochs: int = 3, **kw):
    impl = load_impl(framework, "mlp")
    model = impl.create_model(cfg, seed=0, dtype="float64")
    impl.load_canonical(model, weights.init_uniform(cfg.param_shapes(), 0))
    history = impl.train(model, data, epochs=epochs, lr=0.2, batch_size=32, seed=0, **kw)
    return impl, model, history


# ----------------------------------------------------------------------------- stock layers
@pytest.mark.parametrize("model", ["mlp", "lenet5"])
def test_models_build_the_stock_dropout(model):
    """The default path a learner reads is keras.layers.Dropout itself, seeded; the replaying layer
    is only what the parity tests inject."""
    import keras

    from tasks.replay.tf_impl import ReplayDropout

    impl = load_impl("tf_impl", model)
    cfg = (
        MLPConfig(4, (6, 5), 3, head="softmax", dropout=0.3)
        if model == "mlp"
        else LeNet5Config(dropout=0.3)
    )
    net = impl.create_model(cfg, seed=0)
    layers = parity.dropout_layers(net)
    assert len(layers) == 2 and all(type(d) is keras.layers.Dropout for d in layers)
    assert len({d.seed for d in layers}) == 2, "each dropout layer its own stream"
    injected = impl.create_model(cfg, seed=0, dropout_layer=ReplayDropout)
    assert all(type(d) is ReplayDropout for d in parity.dropout_layers(injected))


# ----------------------------------------------------------------------------- fit
def test_fit_trains_in_float64_and_reports_the_mean_batch_loss():
    """Three epochs through compile + fit (a partial last batch each epoch) end at scratch's
    weights and losses to 1e-12. The reported loss is the plain mean of the batch losses, as in the
    other frameworks; Keras's own "loss" weights each batch by its size and differs."""
    cfg, data = MLPConfig(2, (8,), 2, "tanh", "sigmoid"), moons()
    scratch, reference, expected = trained("scratch", cfg, data)
    impl, model, history = trained("tf_impl", cfg, data)
    assert history == pytest.approx(expected, rel=1e-12, abs=0)
    ours, theirs = impl.export_canonical(model), scratch.export_canonical(reference)
    for k in theirs:
        parity.assert_close(ours[k], theirs[k], 1e-12, f"fit {k}")
    keras_loss = model.history.history["loss"]  # the mean over samples
    assert abs(keras_loss[-1] - history[-1]) > 1e-6, (keras_loss, history)


def test_fit_without_the_floatx_scope_is_float32():
    """compat.floatx around compile: without it the compiled loss and its tracker are float32, and
    the reported float64 loss is off at ~1e-8 (the test_training lockstep bound is 1e-12)."""
    from tf_impl import mlp

    cfg, data = MLPConfig(2, (8,), 2, "tanh", "sigmoid"), moons()
    _, _, exact = trained("tf_impl", cfg, data, epochs=1)
    model = mlp.create_model(cfg, seed=0, dtype="float64")
    mlp.load_canonical(model, weights.init_uniform(cfg.param_shapes(), 0))
    model.compile(optimizer=mlp.make_optimizer(model, 0.2), loss=mlp.make_loss(cfg, "float64"))
    history = model.fit(
        mlp.training.shared_batches(data.x_train, data.y_train, batch_size=32, seed=0, epochs=1),
        steps_per_epoch=4,
        shuffle=False,
        verbose=0,
    )
    leaky = history.history["batch_loss"][0]
    assert 1e-12 < abs(leaky - exact[0]) / exact[0] < 1e-6, (leaky, exact)


def test_an_early_stop_raised_by_on_epoch_ends_fit_and_keeps_the_history():
    cfg, data = MLPConfig(2, (8,), 2, "tanh", "sigmoid"), moons()

    def stop_after_second(epoch, loss):
        if epoch == 1:
            raise train.EarlyStop

    _, _, history = trained("tf_impl", cfg, data, epochs=5, on_epoch=stop_after_second)
    _, _, full = trained("tf_impl", cfg, data, epochs=5)
    assert len(history) == 2 and history == full[:2]


def test_keras_early_stopping_gives_the_monitors_result():
    """rosetta train --patience: Keras runs keras.callbacks.EarlyStopping(restore_best_weights=True)
    inside fit, the other three tasks.train.EpochMonitor; the same epochs run, the same best epoch,
    validation losses, history and (restored best) test loss and weights as scratch. Two runs: one
    stops early, one runs out of epochs after its best epoch (the best weights restored anyway)."""
    import inspect

    from tf_impl import mlp

    assert "patience" in inspect.signature(mlp.train).parameters  # run() hands Keras the stopping
    for kw, stopped in [
        (dict(epochs=40, patience=2, lr=0.5), "early"),
        (dict(epochs=30, patience=3, lr=1.0, hidden=(16,)), None),
    ]:
        opts = train.TrainOptions(dtype="float64", **kw)
        scratch, keras = train.run("mlp", "moons", ["scratch", "tf_impl"], opts)["results"]
        assert keras["stopped"] == scratch["stopped"] == stopped
        assert keras["epochs_run"] == scratch["epochs_run"]
        assert keras["best_epoch"] == scratch["best_epoch"] < keras["epochs_run"]
        for key in ("history", "val_loss"):
            assert keras[key] == pytest.approx(scratch[key], rel=1e-12, abs=0), key
        assert keras["test_loss"] == pytest.approx(scratch["test_loss"], rel=1e-12, abs=0)
        assert keras["max_param_diff_vs_scratch"] <= 1e-10


@pytest.mark.parametrize("model", [m for m in parity.CASES if m != "perceptron"])
def test_models_are_built_at_creation(model, monkeypatch):
    """Every layer is built when create_model returns (its weights load before a call). Keras builds
    a layer that has an unbuilt sublayer at its first call by running its call() once more on
    symbolic inputs (Layer._maybe_build -> backend.compute_output_spec), and fit's trace is such a
    first call: a whole extra forward trace per fit of LeNet-5 (its Flatten), the attention model
    (its attention layer) and the Transformer (its blocks), until each says self.built = True."""
    from keras.src import backend

    traced, real = [], backend.compute_output_spec
    monkeypatch.setattr(
        backend, "compute_output_spec", lambda fn, *a, **kw: traced.append(fn) or real(fn, *a, **kw)
    )
    impl = load_impl("tf_impl", model)
    for case in parity.CASES[model]:
        net = parity.create(impl, case, "tf_impl", "float64")
        x, _ = parity.inputs(case, 2, "float64")
        net(x)
        assert traced == [], f"{case.id}: {traced}"


def test_fit_traces_the_step_once():
    """make_optimizer builds the optimizer's slots (here momentum's) on the model's variables: left
    to the first step they are made inside fit's trace, and a tf.function that makes variables
    traces the whole step a second time (the optimiser trajectories' Keras time: 27 s -> 17 s)."""
    from tensorflow.python.eager.polymorphic_function import tracing_compilation

    from tasks.configs import OptimizerConfig

    traced, real = [], tracing_compilation.trace_function

    def counting(args=None, kwargs=None, tracing_options=None):
        traced.append(tracing_options.name)
        return real(args, kwargs, tracing_options)

    cfg, data = MLPConfig(2, (8,), 2, "tanh", "sigmoid"), moons()
    impl = load_impl("tf_impl", "mlp")
    model = impl.create_model(cfg, seed=0, dtype="float64")
    optimizer = OptimizerConfig("momentum", lr=0.1, momentum=0.9)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tracing_compilation, "trace_function", counting)
        impl.train(model, data, epochs=1, lr=optimizer, batch_size=32, seed=0)
    assert traced.count("one_step_on_data") == 1, traced


# ----------------------------------------------------------------------------- compat.py
def test_stock_float_factors_leak_float32_and_compat_does_not():
    """Each workaround against the stock behaviour it replaces, in float64: the optimizer's learning
    rate variable, the L2 factor and LeakyReLU's slope."""
    import keras
    from keras import ops

    from tf_impl import compat

    stock = keras.optimizers.SGD(learning_rate=0.1)  # floatx: a float32 variable
    with compat.floatx("float64"):
        exact = keras.optimizers.SGD(learning_rate=0.1)
    assert float(exact.learning_rate) == 0.1 != float(stock.learning_rate)
    assert keras.config.floatx() == "float32", "the scope restores floatx"

    x = ops.convert_to_tensor(np.linspace(-2.0, 3.0, 7))  # float64
    expected = 0.025 * np.sum(np.linspace(-2.0, 3.0, 7) ** 2)
    assert float(compat.L2(0.025)(x)) == pytest.approx(expected, rel=1e-15)
    assert abs(float(keras.regularizers.L2(0.025)(x)) / expected - 1) > 1e-9

    slope = 0.01
    reference = np.where(np.asarray(x) > 0, np.asarray(x), slope * np.asarray(x))
    assert np.array_equal(np.asarray(compat.LeakyReLU(slope, dtype="float64")(x)), reference)
    leaky = np.asarray(keras.layers.LeakyReLU(slope, dtype="float64")(x))
    assert np.abs(leaky - reference).max() > 1e-11
