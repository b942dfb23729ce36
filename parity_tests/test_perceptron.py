"""Perceptron: the same canonical weights give the same weights after every epoch, the same mistakes
per epoch and the same predictions in scratch, torch, Keras and Flax; the rule converges on separable
tasks, never on XOR (which the MLP solves); and the CLI reports it."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from parity_tests.conftest import star_params, xla_defaults_env
from tasks import cli, data, parity, perceptron_run, train, weights
from tasks.configs import PerceptronConfig
from tasks.registry import FRAMEWORKS, MODELS, load_impl

CASES = parity.CASES["perceptron"]
SEPARABLE = ("or", "and", "iris", "blobs")
EPOCH_BOUND = 10  # measured with the defaults (seed 0): or 4, and 6, iris 2, blobs 3 epochs, the clean one included


# ----------------------------------------------------------------------------- parity
@pytest.mark.parametrize("case, framework, dtype, tensor", star_params("perceptron"))
def test_matches_scratch(case, framework, dtype, tensor):
    """Each recorded tensor of each framework against the scratch reference, at the stated tolerance."""
    actual = np.asarray(parity.compute(case, framework, dtype)[tensor])
    reference = parity.compute(case, "scratch", dtype)[tensor]
    expected_dtype = (
        np.int64 if tensor in ("output", "rule.output", "rule.mistakes") else np.dtype(dtype)
    )
    assert actual.dtype == expected_dtype, f"{tensor} came back as {actual.dtype}"
    parity.assert_close(
        actual,
        reference,
        parity.tolerance(tensor, dtype, case),
        f"{case.id} {framework} {dtype} {tensor}",
    )


@pytest.mark.parametrize("dtype", parity.DTYPES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_every_epoch_agrees_pairwise(case, dtype):
    """Epoch by epoch and every pair of frameworks, so a failure names the first epoch that differs."""
    results = {fw: parity.compute(case, fw, dtype) for fw in FRAMEWORKS}
    for i, a in enumerate(FRAMEWORKS):
        for b in FRAMEWORKS[i + 1 :]:
            np.testing.assert_array_equal(
                results[a]["rule.mistakes"],
                results[b]["rule.mistakes"],
                err_msg=f"{a} vs {b} mistakes per epoch",
            )
            for epoch in range(len(results[a]["rule.mistakes"])):
                for name in case.config.param_shapes():
                    tensor = f"rule.{name}"
                    what = f"{case.id} {dtype} {a} vs {b}: {name} after epoch {epoch + 1}"
                    parity.assert_close(
                        results[a][tensor][epoch],
                        results[b][tensor][epoch],
                        parity.tolerance(tensor, dtype, case),
                        what,
                    )
            np.testing.assert_array_equal(
                results[a]["rule.output"],
                results[b]["rule.output"],
                err_msg=f"{a} vs {b} predictions",
            )


def test_parity_cases_exercise_what_they_claim():
    """and-zero-init and separable-3d stop early at a clean epoch; noisy-5d runs to the cap with mistakes."""
    mistakes = {
        case.name: parity.compute(case, "scratch", "float64")["rule.mistakes"] for case in CASES
    }
    for name in ("and-zero-init", "separable-3d"):
        assert mistakes[name][-1] == 0 and (mistakes[name][:-1] > 0).all(), (name, mistakes[name])
    assert len(mistakes["noisy-5d"]) == perceptron_run.EPOCHS and (mistakes["noisy-5d"] > 0).all()
    zero = weights.load(parity.canonical_file(CASES[0]))
    assert all(not v.any() for v in zero.values()), "the and-zero-init case must start from zeros"


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_tie_rule_a_point_on_the_line_is_0(framework):
    """ŷ = 1 only where w·x + b > 0: exactly 0 gives class 0, in every framework."""
    impl = load_impl(framework, "perceptron")
    model = impl.create_model(PerceptronConfig(2), seed=0, dtype="float64")
    impl.load_canonical(
        model, {"neuron.weight": np.array([[1.0, -1.0]]), "neuron.bias": np.array([0.5])}
    )
    x = np.array(
        [[2.0, 2.5], [2.0, 2.0], [0.0, 0.5], [0.0, 0.0]]
    )  # w·x + b = 0, 0.5, 0, 0.5, all exact
    labels = impl.predict(model, x)
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, [0, 1, 0, 1])


def test_a_different_tie_rule_is_caught(monkeypatch):
    """The check can fail: scratch with the lesson's `>= 0` step no longer matches torch from a zero start."""
    case = CASES[0]  # and-zero-init: the first predictions are ties
    impl = load_impl("scratch", "perceptron")
    monkeypatch.setattr(impl, "step", lambda z: (z >= 0).astype(z.dtype))
    broken = perceptron_run.compute(
        case, "scratch", "float64"
    )  # not parity.compute: that one is cached
    reference = parity.compute(case, "torch_impl", "float64")
    with pytest.raises(AssertionError):
        for tensor in perceptron_run.expected_tensors(case):
            parity.assert_close(
                broken[tensor], reference[tensor], parity.tolerance(tensor, "float64", case), tensor
            )


XLA_FMA_PROBE = """
import numpy as np, jax
import jax_impl  # noqa: F401  (switches on float64)
rng = np.random.default_rng(0)
w, x, error = rng.normal(size=1000), rng.normal(size=1000), rng.choice([-1.0, 0.0, 1.0], size=1000)
lr = 0.1
reference = w + error * (lr * x)
ours = np.asarray(jax.jit(lambda w, x, e, lr: w + e * (lr * x))(w, x, error, lr))
fused = np.asarray(jax.jit(lambda w, x, e, lr: w + lr * e * x)(w, x, error, lr))
print(np.array_equal(ours, reference), np.array_equal(fused, reference))
"""


def test_update_order_keeps_xla_bit_exact():
    """w + error * (lr * x) gives NumPy's bits under jit; w + lr * error * x is fused into an FMA and
    does not. Compiled as users' runs compile (XLA's defaults, in a fresh process: the suite compiles
    without LLVM optimisation, which fuses nothing; conftest.py)."""
    probe = subprocess.run(
        [sys.executable, "-c", XLA_FMA_PROBE],
        capture_output=True, text=True, env=xla_defaults_env(), timeout=300,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr[-3000:]
    ours_exact, fused_exact = probe.stdout.split()[-2:]
    assert ours_exact == "True"
    assert fused_exact == "False", (
        "XLA did not fuse the multiply-add: the comment in */perceptron.py is stale"
    )


def test_torch_update_needs_no_grad():
    """Without torch.no_grad() the in-place update of a parameter is an autograd error."""
    impl = load_impl("torch_impl", "perceptron")
    import torch

    model = impl.create_model(PerceptronConfig(2), seed=0, dtype="float64")
    x, y, lr = (
        torch.tensor([1.0, 1.0], dtype=torch.float64),
        torch.tensor(1.0, dtype=torch.float64),
        torch.tensor(0.1, dtype=torch.float64),
    )
    impl.load_canonical(
        model, {"neuron.weight": np.array([[-1.0, -1.0]]), "neuron.bias": np.array([0.0])}
    )  # a sure mistake
    with pytest.raises(RuntimeError, match="requires grad"):
        impl.train_step.__wrapped__(model, x, y, lr)  # the function without its @torch.no_grad()
    assert impl.train_step(model, x, y, lr) == 1


def test_jax_train_step_is_pure():
    """The scanned step returns a new state and leaves its input state and the model untouched."""
    from flax import nnx

    impl = load_impl("jax_impl", "perceptron")
    import jax.numpy as jnp

    model = impl.create_model(PerceptronConfig(2), seed=0, dtype="float64")
    impl.load_canonical(
        model, {"neuron.weight": np.array([[-1.0, -1.0]]), "neuron.bias": np.array([0.0])}
    )
    graphdef, state = nnx.split(model)
    before = impl.export_canonical(model)
    sample = (jnp.array([1.0, 2.0]), jnp.array(1.0))
    new_state, mistake = impl.train_step(graphdef, jnp.asarray(0.1), state, sample)
    again, _ = impl.train_step(graphdef, jnp.asarray(0.1), state, sample)
    assert int(mistake) == 1
    assert all(np.array_equal(before[k], v) for k, v in impl.export_canonical(model).items()), (
        "the step changed the model"
    )
    nnx.update(model, new_state)
    np.testing.assert_array_equal(impl.export_canonical(model)["neuron.weight"], [[-0.9, -0.8]])
    nnx.update(model, again)
    np.testing.assert_array_equal(impl.export_canonical(model)["neuron.weight"], [[-0.9, -0.8]])


# ----------------------------------------------------------------------------- canonical weights
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_load_rejects_bad_weights_and_leaves_model_unchanged(framework):
    cfg = PerceptronConfig(3)
    impl = load_impl(framework, "perceptron")
    model = impl.create_model(cfg, seed=0, dtype="float64")
    before = impl.export_canonical(model)
    good = weights.init_uniform(cfg.param_shapes(), 7)
    bad = {
        "neuron.weight": good["neuron.weight"].T,
        "neuron.bias": good["neuron.bias"].astype(np.float32),
        "fc.weight": np.zeros((1, 1)),
    }
    with pytest.raises(weights.CanonicalWeightsError) as info:
        impl.load_canonical(model, bad)
    for expected in (
        "neuron.weight: expected shape (1, 3), got (3, 1)",
        "neuron.bias: expected dtype float64, got float32",
        "extra fc.weight",
    ):
        assert expected in str(info.value)
    with pytest.raises(weights.CanonicalWeightsError, match="missing neuron.bias"):
        impl.load_canonical(model, {"neuron.weight": good["neuron.weight"]})
    assert all(np.array_equal(before[k], v) for k, v in impl.export_canonical(model).items()), (
        "a failed load changed the model"
    )
    impl.load_canonical(model, good)
    assert all(np.array_equal(good[k], v) for k, v in impl.export_canonical(model).items())


# ----------------------------------------------------------------------------- training
@pytest.mark.parametrize("task", SEPARABLE)
def test_converges_on_separable_tasks_and_stops_early(task):
    result = perceptron_run.run("perceptron", task, list(FRAMEWORKS), train.TrainOptions())
    for row in result["results"]:
        mistakes = row["mistakes_per_epoch"]
        assert row["converged"] and mistakes[-1] == 0, row
        assert row["epochs_to_converge"] == len(mistakes) <= EPOCH_BOUND, row
        assert all(m > 0 for m in mistakes[:-1]), (
            f"{row['framework']} ran on after a clean epoch: {mistakes}"
        )
        assert row["train_accuracy"] == 1.0, row
        assert row["max_param_diff_vs_scratch"] == 0.0, row
    assert len({tuple(row["mistakes_per_epoch"]) for row in result["results"]}) == 1, result[
        "results"
    ]


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_updates_within_the_convergence_theorem_bound(framework):
    """From zero weights the rule makes at most (R / γ)² mistakes in all (Novikoff 1962), whatever lr:
    R the largest |(x, 1)|, γ the margin of the unit separator (n, 0), n the blobs' line normal."""
    d = data.blobs(seed=0)
    normal = np.array([1.0, 1.0]) / np.sqrt(2.0)
    gamma = np.min((2 * d.y_train - 1) * (d.x_train @ normal))  # >= 0.5 by construction
    radius = np.max(
        np.linalg.norm(np.c_[d.x_train, np.ones(len(d.x_train))], axis=1)
    )  # (x, 1): the bias input
    impl = load_impl(framework, "perceptron")
    model = impl.create_model(PerceptronConfig(2), seed=0, dtype="float64")
    impl.load_canonical(model, {"neuron.weight": np.zeros((1, 2)), "neuron.bias": np.zeros(1)})
    mistakes = impl.train(model, d, epochs=100, lr=0.1, seed=0)
    assert mistakes[-1] == 0 and sum(mistakes) <= (radius / gamma) ** 2, (
        mistakes,
        (radius / gamma) ** 2,
    )


def test_xor_never_reaches_zero_mistakes():
    """No line separates XOR: every epoch makes a mistake, and at most 3 of the 4 rows are ever right."""
    result = perceptron_run.run("perceptron", "xor", list(FRAMEWORKS), train.TrainOptions())
    cap = MODELS["perceptron"].defaults["xor"]["epochs"]
    for row in result["results"]:
        assert not row["converged"] and row["epochs_to_converge"] is None, row
        assert row["epochs_run"] == cap and min(row["mistakes_per_epoch"]) >= 1, row
        assert row["train_accuracy"] <= 0.75, row


@pytest.mark.slow  # a quality run: the default training to its bar
def test_mlp_reaches_100_percent_on_xor():
    """The foundation MLP (one tanh hidden layer, registry defaults) gets all four XOR rows right."""
    result = train.run("mlp", "xor", list(FRAMEWORKS), train.TrainOptions())
    for row in result["results"]:
        assert row["test_accuracy"] == 1.0, row


# ----------------------------------------------------------------------------- CLI
def invoke(*args):
    result = CliRunner().invoke(cli.app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_cli_train_xor_json_shows_no_framework_converging():
    code, stdout, stderr = invoke(
        "train", "perceptron", "--task", "xor", "--framework", "all", "--json"
    )
    assert code == 0, stderr
    doc = json.loads(stdout)
    assert doc["model"] == "perceptron" and doc["task"] == "xor"
    assert [r["framework"] for r in doc["results"]] == list(FRAMEWORKS)
    assert not any(r["converged"] for r in doc["results"])


def test_cli_train_iris_json_all_converge_in_the_same_epoch():
    code, stdout, stderr = invoke(
        "train", "perceptron", "--task", "iris", "--framework", "all", "--json"
    )
    assert code == 0, stderr
    rows = json.loads(stdout)["results"]
    assert len(rows) == 4 and all(r["converged"] for r in rows)
    assert len({r["epochs_to_converge"] for r in rows}) == 1, rows


def test_cli_train_table():
    code, stdout, stderr = invoke("train", "perceptron", "--task", "xor", "--framework", "torch")
    assert code == 0, stderr
    for needle in (
        "perceptron on xor",
        "mistakes per epoch",
        "epochs to converge",
        "did not converge",
        "torch_impl",
    ):
        assert needle in stdout


def test_cli_parity_json_joins_the_suite_records():
    code, stdout, stderr = invoke("parity", "perceptron", "--json")
    assert code == 0, stderr[-2000:]
    records = json.loads(stdout)
    fields = {
        "model",
        "case",
        "framework",
        "reference",
        "dtype",
        "tensor",
        "max_abs_error",
        "rel_error",
        "tolerance",
        "passed",
    }
    assert records and all(set(r) == fields for r in records)
    assert all(r["passed"] for r in records) and {r["model"] for r in records} == {"perceptron"}
    assert {r["framework"] for r in records} == set(FRAMEWORKS)
    assert max(r["rel_error"] for r in records if r["dtype"] == "float64") <= 1e-12


def test_cli_bad_task_exits_2():
    code, _, stderr = invoke("train", "perceptron", "--task", "moons")
    assert code == 2
    assert (
        stderr.strip()
        == "error: unknown task 'moons' for model perceptron; choose from: iris, or, and, xor, blobs"
    )


def test_scratch_train_imports_no_framework():
    code = (
        "import sys, tasks.cli as c\n"
        "sys.argv = ['rosetta', 'train', 'perceptron', '--task', 'or', '--framework', 'scratch', '--json']\n"
        "try:\n    c.main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "bad = sorted(m for m in ('torch', 'tensorflow', 'jax', 'keras', 'flax') if m in sys.modules)\n"
        "print('IMPORTED', bad, file=sys.stderr)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "IMPORTED []" in result.stderr
    (row,) = json.loads(result.stdout)["results"]
    assert row["framework"] == "scratch" and row["converged"]
