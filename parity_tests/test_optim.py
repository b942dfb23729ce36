"""Optimisers: 50-step trajectories of the MLP and of LeNet-5 with batch norm agree across the four
frameworks with each stock optimiser, schedule, clipping rule and regulariser (float64, 1e-9); and where a stock formula differs from torch's (Keras
Adam's epsilon hat, RMSprop's epsilon placement, Keras's momentum form, torch's clip_grad_norm_),
the difference is exactly the documented one: zero when the documented condition holds, and the
predicted gap, to rounding, when it does not.

The difference tests feed one fixed gradient sequence to one parameter vector, so the optimiser
state evolves identically in every framework and the predicted gap can be computed in closed form.
"""

from __future__ import annotations

import inspect
from dataclasses import replace

import numpy as np
import pytest

from tasks import parity
from tasks.configs import OptimizerConfig
from tasks.registry import FRAMEWORKS, load_impl

CASES = [case for cases in parity.OPTIMIZER_CASES.values() for case in cases]  # mlp, then lenet5
OTHERS = FRAMEWORKS[1:]


# ----------------------------------------------------------------------------- trajectories
@pytest.mark.parametrize(
    "case, framework",
    [
        pytest.param(case, fw, id=f"{fw}-{case.id}")
        for case in CASES
        for fw in OTHERS
        if fw in case.frameworks  # Keras's RMSprop at eps > 0: test_keras_rmsprop_trajectory_*
    ],
)
def test_trajectory_matches_scratch(case, framework):
    """Every parameter after 50 updates with the framework's stock optimiser, against scratch."""
    actual = parity.compute(case, framework, "float64")
    reference = parity.compute(case, "scratch", "float64")
    assert set(actual) == set(parity.expected_tensors(case))
    for tensor in parity.expected_tensors(case):
        assert actual[tensor].dtype == np.float64, f"{tensor} came back as {actual[tensor].dtype}"
        parity.assert_close(
            actual[tensor], reference[tensor], 1e-9, f"{case.id} {framework} float64 {tensor}"
        )


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_trajectory_frameworks_agree_pairwise(case):
    others = [fw for fw in OTHERS if fw in case.frameworks]
    results = {fw: parity.compute(case, fw, "float64") for fw in others}
    for a, b in [(a, b) for i, a in enumerate(others) for b in others[i + 1 :]]:
        for tensor in parity.expected_tensors(case):
            parity.assert_close(
                results[a][tensor], results[b][tensor], 1e-9, f"{case.id} {a} vs {b} {tensor}"
            )


@pytest.mark.parametrize("model", list(parity.OPTIMIZER_CASES))
def test_trajectories_really_move(model):
    """The runs are not trivially equal: every optimiser moved the weights, and differently."""
    cases = parity.OPTIMIZER_CASES[model]
    finals = {c.name: parity.compute(c, "scratch", "float64") for c in cases}
    for case in cases:
        start = parity.weights.load(parity.canonical_file(case))
        moved = max(
            float(np.max(np.abs(finals[case.name][f"trajectory.{k}"] - v)))
            for k, v in start.items()
        )
        assert moved > 1e-2, f"{case.id} barely moved the weights ({moved:.1e})"
    names = list(finals)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            gap = max(
                float(np.max(np.abs(finals[a][k] - finals[b][k])))
                for k in set(finals[a]) & set(finals[b])
            )
            assert gap > 1e-4, f"{model}: {a} and {b} ended at the same weights"


RMSPROP_EPS = [c for c in CASES if c.name == "optim-rmsprop-eps"]


def eps_inside_the_root(self, p, g, state, lr):
    """Keras's RMSprop update, p -= lr g / sqrt(s + eps), as a scratch optimiser's `update`."""
    s = state["s"] = self.spec.rho * state.get("s", 0.0) + (1 - self.spec.rho) * g * g
    return p - lr * g / np.sqrt(s + self.spec.eps)


@pytest.mark.parametrize("case", RMSPROP_EPS, ids=lambda c: c.id)
def test_keras_rmsprop_trajectory_is_the_eps_inside_the_root_formula(case, monkeypatch):
    """At the default eps (1e-8) Keras's RMSprop is another formula than torch's: 50 Keras steps land
    on scratch with eps moved inside the root (to 1e-9), and that formula ends measurably away from
    the outside one that scratch, torch and optax share (their records: the case itself). Measured:
    Keras vs the inside formula 1.0e-15 (mlp), 2.1e-12 (lenet5) relative; inside vs outside 1.8e-2
    (mlp), 1.5 (lenet5), which is also how far a scratch with eps inside the root ends from torch."""
    from scratch import optim

    outside = parity.compute(case, "scratch", "float64")
    keras = parity.compute(case, "tf_impl", "float64")
    monkeypatch.setattr(optim.RMSprop, "update", eps_inside_the_root)
    inside = parity.optimizer_trajectory.__wrapped__(case, "scratch", "float64")  # uncached
    for tensor in parity.expected_tensors(case):
        parity.assert_close(keras[tensor], inside[tensor], 1e-9, f"keras vs eps inside, {tensor}")
    gap = max(parity.rel_error(inside[t], outside[t])[1] for t in parity.expected_tensors(case))
    assert gap > 1e-4, f"eps placement barely matters here ({gap:.1e}): the case cannot tell"


def test_parity_records_pass_and_name_the_case():
    """What `rosetta parity --json` reports for one optimiser case (the records reuse the cached runs)."""
    adam = next(c for c in CASES if c.id == "mlp[optim-adam]")
    records = parity.records(adam, list(FRAMEWORKS))
    assert records and all(r["passed"] for r in records)
    assert {r["dtype"] for r in records} == {"float64"}
    assert {r["case"] for r in records} == {"optim-adam"}
    assert all(r["tensor"].startswith("trajectory.") and r["tolerance"] == 1e-9 for r in records)


# ----------------------------------------------------------------------------- one parameter, fixed gradients
STEPS = 50


def gradient_sequence(scale: float = 1.0, n: int = 16, seed: int = 5):
    rng = np.random.default_rng(seed)
    theta0 = rng.normal(size=n)
    # a drift plus noise, so the moments differ from step to step; `scale` sets how much eps matters
    return theta0, [scale * (rng.normal(size=n) + 0.5) for _ in range(STEPS)]


def run_scratch(spec, theta0, grads, lrs=None):
    from scratch import optim

    class Slot:  # a one-tensor "model": what scratch optimisers read (layers() with params/grads)
        params = {"w": theta0.copy()}
        grads = {"w": None}

    class Model:
        slot = Slot()

        def layers(self):
            return {"p": self.slot}

    model = Model()
    opt = optim.make_optimizer(model, spec)
    for g in grads:
        model.slot.grads["w"] = g
        opt.step()
    return model.slot.params["w"]


def run_torch(spec, theta0, grads, lrs=None, eps=None):
    """torch's stock optimizer; `lrs` / `eps` set the param group's lr / eps before each step t = 1.."""
    import torch

    from torch_impl import optim

    p = torch.nn.Parameter(torch.tensor(theta0))
    opt = optim.make_torch_optimizer([p], spec)
    for t, g in enumerate(grads, start=1):
        if lrs is not None:
            opt.param_groups[0]["lr"] = lrs[t - 1]
        if eps is not None:
            opt.param_groups[0]["eps"] = eps(t)
        p.grad = torch.tensor(g)
        opt.step()
    return p.detach().numpy().copy()


def run_keras(spec, theta0, grads, lrs=None):
    import keras
    from keras import ops

    from tf_impl import optim

    step = [0]
    opt = optim.make_keras_optimizer(spec, "float64")
    if (
        lrs is not None
    ):  # SGD with a given lr per step: eager apply_gradients calls the callable each step
        lr = lambda: ops.convert_to_tensor(lrs[step[0]], dtype="float64")
        opt = keras.optimizers.SGD(
            learning_rate=lr,
            momentum=optim.hyper(spec.momentum, "float64"),
            nesterov=spec.name == "nesterov",
        )
    v = keras.Variable(theta0, dtype="float64")
    for g in grads:
        opt.apply_gradients([(ops.convert_to_tensor(g), v)])
        step[0] += 1
    return np.array(v.numpy())


def run_optax(spec, theta0, grads, lrs=None, eps_in_sqrt=None):
    import jax.numpy as jnp
    import optax

    from jax_impl import optim

    if eps_in_sqrt is not None:  # optax's rmsprop can put eps either side of the root
        tx = optax.rmsprop(spec.lr, decay=spec.rho, eps=spec.eps, eps_in_sqrt=eps_in_sqrt)
    else:
        tx = optim.make_transform(spec, jnp.float64)
    theta = jnp.asarray(theta0)
    state = tx.init(theta)
    for g in grads:
        updates, state = tx.update(jnp.asarray(g), state, theta)
        theta = optax.apply_updates(theta, updates)
    return np.asarray(theta)


# ----------------------------------------------------------------------------- Keras Adam: epsilon hat
def adam_moments(spec, grads):
    """(m_hat_t, v_hat_t) for t = 1..T from the gradients alone (they do not depend on the weights)."""
    m = v = 0.0
    out = []
    for t, g in enumerate(grads, start=1):
        m = spec.beta1 * m + (1 - spec.beta1) * g
        v = spec.beta2 * v + (1 - spec.beta2) * g * g
        out.append((m / (1 - spec.beta1**t), v / (1 - spec.beta2**t)))
    return out


def test_keras_adam_is_torch_adam_at_eps_zero():
    spec = OptimizerConfig("adam", lr=0.01, eps=0.0)
    theta0, grads = gradient_sequence()
    reference = run_torch(spec, theta0, grads)
    for name, run in (("keras", run_keras), ("optax", run_optax), ("scratch", run_scratch)):
        parity.assert_close(run(spec, theta0, grads), reference, 1e-12, f"{name} vs torch, eps = 0")


def test_keras_adam_epsilon_is_epsilon_hat():
    """Keras: lr_t = lr sqrt(1 - b2^t) / (1 - b1^t), p -= lr_t m / (sqrt(v) + eps), which is torch's
    Adam with eps_t = eps / sqrt(1 - b2^t). Proven three ways: torch with that eps per step lands on
    Keras exactly; the measured Keras - torch gap equals the closed-form prediction; and it is large
    enough at these small gradients to matter (not rounding)."""
    spec = OptimizerConfig("adam", lr=0.01, eps=1e-7)  # Keras's default eps
    theta0, grads = gradient_sequence(scale=1e-6)  # sqrt(v) ~ 1e-6, so eps is a 10% effect
    keras_run = run_keras(spec, theta0, grads)
    torch_run = run_torch(spec, theta0, grads)
    eps_hat = lambda t: spec.eps / np.sqrt(1 - spec.beta2**t)
    parity.assert_close(
        run_torch(spec, theta0, grads, eps=eps_hat), keras_run, 1e-12, "torch with eps_t vs keras"
    )
    predicted = sum(
        spec.lr * m_hat * (1 / (np.sqrt(v_hat) + spec.eps) - 1 / (np.sqrt(v_hat) + eps_hat(t)))
        for t, (m_hat, v_hat) in enumerate(adam_moments(spec, grads), start=1)
    )  # torch's update is the larger one (smaller eps), so keras - torch = sum of the update differences
    parity.assert_close(keras_run - torch_run, predicted, 1e-9, "keras - torch vs the closed form")
    assert np.max(np.abs(keras_run - torch_run)) > 1e-3 * np.max(np.abs(torch_run - theta0)), (
        "the gap is not real"
    )
    parity.assert_close(run_optax(spec, theta0, grads), torch_run, 1e-12, "optax is torch's form")
    parity.assert_close(
        run_scratch(spec, theta0, grads), torch_run, 1e-12, "scratch is torch's form"
    )


def test_keras_adam_gap_at_default_eps_is_within_the_bound():
    """At ordinary gradient sizes the gap is tiny but present; |gap| <= lr sum_t |m_hat| (eps_t - eps) / v_hat."""
    spec = OptimizerConfig("adam", lr=0.01, eps=1e-7)
    theta0, grads = gradient_sequence()
    gap = np.abs(run_keras(spec, theta0, grads) - run_torch(spec, theta0, grads))
    bound = sum(
        spec.lr * np.abs(m_hat) * (spec.eps / np.sqrt(1 - spec.beta2**t) - spec.eps) / v_hat
        for t, (m_hat, v_hat) in enumerate(adam_moments(spec, grads), start=1)
    )
    assert np.all(gap <= bound + 1e-15) and np.max(gap) > 0, (gap.max(), bound.max())


# ----------------------------------------------------------------------------- RMSprop: epsilon placement
def test_rmsprop_epsilon_placement():
    """torch: g / (sqrt(s) + eps); Keras: g / sqrt(s + eps); optax does either (eps_in_sqrt).
    Equal at eps = 0; otherwise the gap is exactly sum_t lr g (1/(sqrt(s)+eps) - 1/sqrt(s+eps))."""
    theta0, grads = gradient_sequence(scale=1e-3)
    exact = OptimizerConfig("rmsprop", lr=0.01, rho=0.9, eps=0.0)
    reference = run_torch(exact, theta0, grads)
    for name, run in (("keras", run_keras), ("optax", run_optax), ("scratch", run_scratch)):
        parity.assert_close(
            run(exact, theta0, grads), reference, 1e-12, f"{name} vs torch, eps = 0"
        )
    spec = replace(exact, eps=1e-7)
    keras_run, torch_run = run_keras(spec, theta0, grads), run_torch(spec, theta0, grads)
    parity.assert_close(
        run_optax(spec, theta0, grads, eps_in_sqrt=True),
        keras_run,
        1e-12,
        "optax eps_in_sqrt=True is Keras",
    )
    parity.assert_close(
        run_optax(spec, theta0, grads), torch_run, 1e-12, "optax eps_in_sqrt=False is torch"
    )
    s, predicted = 0.0, 0.0
    for g in grads:
        s = spec.rho * s + (1 - spec.rho) * g * g
        predicted = predicted + spec.lr * g * (
            1 / (np.sqrt(s) + spec.eps) - 1 / np.sqrt(s + spec.eps)
        )
    parity.assert_close(keras_run - torch_run, predicted, 1e-9, "keras - torch vs the closed form")
    assert np.max(np.abs(predicted)) > 1e-6, "eps should matter at these gradient sizes"


def test_rmsprop_and_adam_defaults_differ_as_documented():
    """The defaults the suite never relies on (every field of OptimizerConfig is passed explicitly)."""
    import keras
    import optax
    import torch

    default = lambda f, name: inspect.signature(f).parameters[name].default
    assert (default(torch.optim.RMSprop, "alpha"), default(torch.optim.RMSprop, "eps")) == (
        0.99,
        1e-8,
    )
    assert (
        default(keras.optimizers.RMSprop, "rho"),
        default(keras.optimizers.RMSprop, "epsilon"),
    ) == (0.9, 1e-7)
    assert (
        default(optax.rmsprop, "decay"),
        default(optax.rmsprop, "eps"),
        default(optax.rmsprop, "eps_in_sqrt"),
    ) == (0.9, 1e-8, True)
    assert (
        default(torch.optim.Adam, "eps") == 1e-8
        and default(keras.optimizers.Adam, "epsilon") == 1e-7
        and default(optax.adam, "eps") == 1e-8
    )
    assert (
        default(torch.optim.AdamW, "weight_decay") == 0.01
        and default(keras.optimizers.AdamW, "weight_decay") == 0.004
    )
    assert default(optax.adamw, "weight_decay") == 1e-4


# ----------------------------------------------------------------------------- momentum conventions
@pytest.mark.parametrize("name", ["momentum", "nesterov"])
def test_keras_momentum_matches_torch_only_at_constant_lr(name):
    """torch/optax: v = mu v + g, p -= lr v. Keras: v = mu v - lr g, p += v. Same at constant lr;
    with a changing lr, Keras's velocity remembers old learning rates: the gap is exactly the one
    the two closed forms predict."""
    spec = OptimizerConfig(name, lr=0.05, momentum=0.9)
    theta0, grads = gradient_sequence()
    parity.assert_close(
        run_keras(spec, theta0, grads), run_torch(spec, theta0, grads), 1e-12, "constant lr"
    )
    lrs = [0.05 * (t + 1) / STEPS for t in range(STEPS)]  # a warmup ramp
    keras_run, torch_run = run_keras(spec, theta0, grads, lrs), run_torch(spec, theta0, grads, lrs)
    mu, v_torch, v_keras = spec.momentum, 0.0, 0.0
    p_torch, p_keras = theta0.copy(), theta0.copy()
    for lr, g in zip(lrs, grads):
        v_torch = mu * v_torch + g
        p_torch = p_torch - lr * ((g + mu * v_torch) if name == "nesterov" else v_torch)
        v_keras = mu * v_keras - lr * g
        p_keras = p_keras + ((mu * v_keras - lr * g) if name == "nesterov" else v_keras)
    parity.assert_close(torch_run, p_torch, 1e-12, "torch is the lr-outside form")
    parity.assert_close(keras_run, p_keras, 1e-12, "keras is the lr-inside form")
    assert np.max(np.abs(keras_run - torch_run)) > 1e-3, "a changing lr must separate the two forms"


# ----------------------------------------------------------------------------- clipping
def test_torch_clip_grad_norm_differs_by_its_epsilon():
    """nn.utils.clip_grad_norm_ scales by max_norm / (norm + 1e-6); ours, Keras's and optax's by
    max_norm / norm. The ratio is exactly norm / (norm + 1e-6); below max_norm nothing changes."""
    import jax.numpy as jnp
    import keras
    import optax
    import torch

    import jax_impl  # noqa: F401  (float64 in JAX: this test must not rely on another having run first)
    import tf_impl  # noqa: F401  (the TensorFlow backend, set in one place)
    from scratch import optim as scratch_optim
    from torch_impl import compat

    rng = np.random.default_rng(0)
    grads = [rng.normal(size=(4, 3)), rng.normal(size=(4,))]
    norm = np.sqrt(sum(np.sum(g * g) for g in grads))
    for max_norm in (0.5 * norm, 2.0 * norm):
        expected = [g * min(1.0, max_norm / norm) for g in grads]
        params = [torch.nn.Parameter(torch.zeros(g.shape, dtype=torch.float64)) for g in grads]
        for p, g in zip(params, grads):
            p.grad = torch.tensor(g)
        compat.clip_grad_norm_(params, max_norm)
        stock = [torch.tensor(g) for g in grads]
        stock_params = [torch.nn.Parameter(torch.zeros_like(g)) for g in stock]
        for p, g in zip(stock_params, stock):
            p.grad = g
        torch.nn.utils.clip_grad_norm_(stock_params, max_norm)
        # Keras: one SGD step with lr 1 from zero weights leaves minus the clipped gradients
        keras_vars = [keras.Variable(np.zeros(g.shape), dtype="float64") for g in grads]
        one = lambda: keras.ops.convert_to_tensor(1.0, dtype="float64")
        keras.optimizers.SGD(
            learning_rate=one, global_clipnorm=np.float64(max_norm)
        ).apply_gradients(zip([keras.ops.convert_to_tensor(g) for g in grads], keras_vars))
        keras_clipped = [-v.numpy() for v in keras_vars]
        optax_clipped, _ = optax.clip_by_global_norm(max_norm).update(
            [jnp.asarray(g) for g in grads], None
        )
        for i, e in enumerate(expected):
            parity.assert_close(
                scratch_optim.clip_by_global_norm(grads, max_norm)[i], e, 1e-15, "scratch"
            )
            parity.assert_close(params[i].grad.numpy(), e, 1e-15, "torch_impl.compat")
            parity.assert_close(np.asarray(keras_clipped[i]), e, 1e-15, "keras global_clipnorm")
            parity.assert_close(np.asarray(optax_clipped[i]), e, 1e-15, "optax")
            ratio = norm / (norm + 1e-6) if max_norm < norm else 1.0
            parity.assert_close(
                stock_params[i].grad.numpy(),
                e * ratio,
                1e-15,
                "clip_grad_norm_ = ours * norm / (norm + 1e-6)",
            )
        if max_norm < norm:
            assert not np.allclose(stock_params[0].grad.numpy(), expected[0], rtol=1e-9, atol=0), (
                "the 1e-6 shows at 1e-9"
            )


# ----------------------------------------------------------------------------- float32 leaks (the check can fail)
def test_keras_python_float_momentum_leaks_float32():
    """Keras casts a Python-float momentum through float32 (0.9 -> 0.8999999762); the NumPy float64
    that tf_impl/optim.py passes stays exact. The 1e-9 trajectory check catches the leak."""
    import keras
    from keras import ops

    spec = OptimizerConfig("momentum", lr=0.05, momentum=0.9)
    theta0, grads = gradient_sequence()
    reference = run_torch(spec, theta0, grads)
    parity.assert_close(run_keras(spec, theta0, grads), reference, 1e-12, "np.float64 momentum")
    leaky = keras.optimizers.SGD(
        learning_rate=lambda: ops.convert_to_tensor(0.05, dtype="float64"), momentum=0.9
    )
    v = keras.Variable(theta0, dtype="float64")
    for g in grads:
        leaky.apply_gradients([(ops.convert_to_tensor(g), v)])
    with pytest.raises(AssertionError):
        parity.assert_close(np.array(v.numpy()), reference, 1e-9, "python float momentum")


def test_optax_schedule_on_the_int32_count_leaks_float32():
    """optax schedules evaluated on the int32 update count compute in float32 (3/5 -> 0.6000000238);
    jax_impl/optim.py hands them the count as float64. The bare schedule fails the 1e-9 check."""
    import jax.numpy as jnp

    from jax_impl import optim

    spec = OptimizerConfig("sgd", lr=0.2, schedule="step", warmup_steps=5, step_size=15, gamma=0.5)
    ours = optim.make_schedule(spec, jnp.float64)
    bare = optim.make_stock_schedule(spec)
    for t in range(40):
        count = jnp.asarray(t, jnp.int32)
        assert abs(float(ours(count)) - spec.learning_rate(t)) <= 1e-15 * spec.lr, t
    worst = max(
        abs(float(bare(jnp.asarray(t, jnp.int32))) - spec.learning_rate(t)) for t in range(40)
    )
    assert worst > 1e-9 * spec.lr, worst


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_schedules_follow_the_reference_formula(framework):
    """Each framework's lr at every step of both schedules equals OptimizerConfig.learning_rate."""
    specs = [
        OptimizerConfig(
            "sgd", lr=0.3, schedule="cosine", warmup_steps=7, decay_steps=20, min_lr_ratio=0.1
        ),
        OptimizerConfig("sgd", lr=0.3, schedule="cosine", decay_steps=20),
        OptimizerConfig("sgd", lr=0.3, schedule="step", warmup_steps=4, step_size=6, gamma=0.5),
        OptimizerConfig("sgd", lr=0.3, schedule="constant", warmup_steps=4),
    ]
    for spec in specs:
        # SGD with a gradient of -1 moves the weight by exactly the lr of each step
        theta = run_framework(framework, spec, np.zeros(1), [-np.ones(1)] * 35)
        expected = sum(spec.learning_rate(t) for t in range(35))
        assert abs(theta[0] - expected) <= 1e-13, (framework, spec.schedule, theta[0], expected)


def run_framework(framework, spec, theta0, grads):
    if framework == "tf_impl":
        return run_keras(spec, theta0, grads)
    if framework == "jax_impl":
        return run_optax(spec, theta0, grads)
    if framework == "torch_impl":
        import torch

        from torch_impl import optim

        p = torch.nn.Parameter(torch.tensor(theta0))
        opt = optim.make_torch_optimizer([p], spec)
        scheduler = optim.make_scheduler(opt, spec)
        for g in grads:
            p.grad = torch.tensor(g)
            opt.step()
            scheduler.step()  # as the train loops do, after every optimizer.step()
        return p.detach().numpy().copy()
    return run_scratch(spec, theta0, grads)


# ----------------------------------------------------------------------------- the training driver
def test_train_flags_plot_early_stopping_and_ctrl_c(tmp_path):
    """`rosetta train` with an optimiser, schedule, init and regularisers; early stopping; the plot;
    and Ctrl-C in the second framework keeps the first framework's row."""
    import json

    from typer.testing import CliRunner

    from tasks import train
    from tasks.cli import app

    plot = tmp_path / "curves.png"
    args = ["train", "mlp", "--framework", "scratch", "--epochs", "3", "--optimizer", "adam", "--lr", "0.01", "--schedule", "cosine",
            "--warmup-steps", "5", "--clip-norm", "1.0", "--init", "he_uniform", "--dropout", "0.1", "--batch-norm", "--plot", str(plot), "--json"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout[result.stdout.index("{") :])["results"][0]
    assert len(row["history"]) == 3 and row["test_accuracy"] > 0.5
    assert plot.exists() and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = CliRunner().invoke(app, ["train", "mlp", "--optimizer", "adagrad"])
    assert bad.exit_code == 2 and "unknown optimizer 'adagrad'" in bad.output

    # patience 1 at lr 2: the validation loss goes 0.315, 0.255, 0.466 and training stops there
    stopped = train.run(
        "mlp", "moons", ["scratch"], train.TrainOptions(epochs=30, lr=2.0, patience=1)
    )["results"][0]
    assert (
        stopped["stopped"] == "early"
        and stopped["epochs_run"] < 30
        and len(stopped["val_loss"]) == stopped["epochs_run"]
    )
    # the reported model is the best epoch's (epoch 2), not the last one's: the same as training 2 epochs
    assert (
        stopped["best_epoch"]
        == int(np.argmin(stopped["val_loss"])) + 1
        == 2
        < stopped["epochs_run"]
    )
    two = train.run("mlp", "moons", ["scratch"], train.TrainOptions(epochs=2, lr=2.0, patience=5))[
        "results"
    ][0]
    assert two["stopped"] is None and two["test_loss"] == stopped["test_loss"], (
        two["test_loss"],
        stopped["test_loss"],
    )

    class CtrlC:  # the progress reporter: Ctrl-C during the second framework's second epoch
        def start(self, framework, epochs):
            def on_epoch(epoch, loss):
                if framework == "torch_impl" and epoch == 1:
                    raise KeyboardInterrupt

            return on_epoch

    result = train.run(
        "mlp",
        "moons",
        ["scratch", "torch_impl", "jax_impl"],
        train.TrainOptions(epochs=3),
        progress=CtrlC(),
    )
    assert result["interrupted"] and [r["framework"] for r in result["results"]] == [
        "scratch",
        "torch_impl",
    ]
    assert (
        result["results"][0]["epochs_run"] == 3 and result["results"][1]["stopped"] == "interrupted"
    )


# ----------------------------------------------------------------------------- L2 in the loss vs decoupled decay
def test_l2_in_the_loss_and_decoupled_weight_decay_are_distinct():
    """MLPConfig.l2 adds (l2/2)·Σp² to the loss, so plain SGD steps p -= lr·(g + l2·p); with Adam the
    penalty's gradient passes through the moments, while AdamW's decoupled decay does not: the
    two end 50 steps apart although the coefficient is the same."""
    from scratch import mlp

    cfg = replace(parity.OPTIMIZER_CASES["mlp"][0].config, l2=0.05)
    case = parity.OPTIMIZER_CASES["mlp"][0]
    params = parity.weights.load(parity.canonical_file(case))
    x, y = parity.inputs(case, case.batch, "float64")
    model = mlp.create_model(cfg, seed=0)
    mlp.load_canonical(model, params)
    grads = mlp.forward_backward(model, x, y)  # the data loss's gradients, without the penalty
    mlp.train_step(model, mlp.make_optimizer(model, 0.1), x, y)
    for k, p in mlp.export_canonical(model).items():
        parity.assert_close(
            p, params[k] - 0.1 * (grads[f"grad.{k}"] + 0.05 * params[k]), 1e-12, f"sgd + l2 {k}"
        )
    coupled = parity.OptimizerCase(
        "mlp", "adam-l2", cfg, case.make_inputs, OptimizerConfig("adam", lr=0.01, eps=0.0)
    )
    decoupled = parity.OptimizerCase(
        "mlp",
        "adamw",
        case.config,
        case.make_inputs,
        OptimizerConfig("adamw", lr=0.01, eps=0.0, weight_decay=0.05),
    )
    a, b = (
        parity.compute(coupled, "scratch", "float64"),
        parity.compute(decoupled, "scratch", "float64"),
    )
    assert max(float(np.max(np.abs(a[k] - b[k]))) for k in a) > 1e-2


# ----------------------------------------------------------------------------- every model takes the flags
def test_every_gradient_model_takes_the_optimiser_flags():
    """`rosetta train` passes --optimizer, --schedule and --clip-norm to LeNet-5, the recurrent nets and
    attention (their make_optimizer builds the stock optimiser of tasks.configs.OptimizerConfig), and
    LeNet-5 takes --init, --batch-norm, --dropout and --l2 too; two frameworks stay in lockstep."""
    from tasks import train

    def run(model, task, **options):
        return train.run(
            model,
            task,
            ["scratch", "torch_impl"],
            train.TrainOptions(epochs=1, dtype="float64", **options),
        )

    lenet = run(
        "lenet5",
        "digits32",
        optimizer="adam",
        lr=0.002,
        schedule="cosine",
        init="he_uniform",
        batch_norm=True,
        l2=1e-4,
    )
    assert lenet["config"]["batch_norm"] and lenet["config"]["init"] == "he_uniform"
    assert all(r["test_accuracy"] > 0.8 for r in lenet["results"]), [
        r["test_accuracy"] for r in lenet["results"]
    ]
    assert lenet["results"][1]["max_param_diff_vs_scratch"] < 1e-9
    gru = run("gru", "sign", optimizer="momentum", lr=0.05, clip_norm=0.5)
    assert (
        gru["config"]["clip_norm"] is None and gru["results"][1]["max_param_diff_vs_scratch"] < 1e-9
    )  # one clip: the optimiser's
    attention = run("attention", "reverse", optimizer="sgd", lr=0.5, warmup_steps=10)
    assert (
        attention["config"]["optimizer"] == "sgd"
        and attention["results"][1]["max_param_diff_vs_scratch"] < 1e-9
    )
    for (
        framework
    ) in FRAMEWORKS:  # the RNN's own clip and an OptimizerConfig's would clip twice: refused
        impl = load_impl(framework, "gru")
        with pytest.raises(ValueError, match="clips at its own clip_norm"):
            impl.make_optimizer(
                impl.create_model(parity.CASES["gru"][0].config, seed=0),
                OptimizerConfig("sgd", lr=0.1),
            )


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["train", "gru", "--dropout", "0.1"],
            "--init, --dropout, --batch-norm and --l2 are for mlp and lenet5",
        ),
        (["train", "perceptron", "--optimizer", "adam"], "mistake-driven rule"),
        (["train", "lenet5", "--optimizer", "adagrad"], "unknown optimizer 'adagrad'"),
    ],
)
def test_flags_a_model_does_not_use_are_refused(args, message):
    from typer.testing import CliRunner

    from tasks.cli import app

    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and message in result.output, result.output
