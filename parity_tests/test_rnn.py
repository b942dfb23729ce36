"""Recurrent parity (rnn, lstm, gru): the same canonical weights give the same per-step hidden states,
final states, outputs, loss, gradients and clipped-SGD trajectory in scratch, torch, Keras and Flax;
each framework's own layer agrees with its step written by hand; the scratch BPTT agrees with finite
differences; and the checks catch a swapped gate or a bias written twice."""

from __future__ import annotations

import functools
from dataclasses import replace

import numpy as np
import pytest

from parity_tests.conftest import (
    FRAMEWORK_IDS,
    assert_frameworks_agree_pairwise,
    assert_matches_scratch,
    numeric_grad,
    star_params,
)
from tasks import parity, train, weights
from tasks.configs import RNNConfig
from tasks.data import Dataset, batches, pytext, python_text
from tasks.registry import FRAMEWORKS, load_impl

CELLS = ("rnn", "lstm", "gru")
CASES = [case for cell in CELLS for case in parity.CASES[cell]]


def loaded(framework: str, cfg: RNNConfig, params: dict, dtype: str = "float64"):
    """(impl, a model of `cfg` holding `params`); Flax builds it without drawing initial weights."""
    impl = load_impl(framework, cfg.cell)
    return impl, parity.loaded_model(impl, framework, cfg, weights.cast(params, dtype), dtype)


def case_params(case) -> dict:
    return weights.load(parity.canonical_file(case))


@pytest.mark.parametrize(
    "case, framework, dtype, tensor", [p for cell in CELLS for p in star_params(cell)]
)
def test_matches_scratch(case, framework, dtype, tensor):
    """Each tensor of each framework against the scratch reference, at the stated tolerance."""
    assert_matches_scratch(case, framework, dtype, tensor)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_frameworks_agree_pairwise(case):
    """torch, Keras and Flax against each other in float64 (not only each against scratch)."""
    assert_frameworks_agree_pairwise(case)


@pytest.mark.parametrize("framework", FRAMEWORK_IDS)
@pytest.mark.parametrize("case", [parity.CASES[cell][0] for cell in CELLS], ids=lambda c: c.id)
def test_layer_and_step_by_hand_agree(case, framework):
    """nn.RNN/LSTM/GRU, Keras SimpleRNN/LSTM/GRU, nnx.RNN(cell) against the lesson's step written out in
    the same framework's ops on the same parameters (fused=False), every tensor, float64."""
    x, y = parity.inputs(case, case.batch, "float64")
    impl, fused = loaded(framework, case.config, case_params(case))
    _, by_hand = loaded(framework, replace(case.config, fused=False), case_params(case))
    a, b = impl.forward_backward(fused, x, y), impl.forward_backward(by_hand, x, y)
    assert a.keys() == b.keys()
    for tensor in a:
        parity.assert_close(
            b[tensor], a[tensor], 1e-12, f"{case.id} {framework} by hand vs layer: {tensor}"
        )


# ----------------------------------------------------------------------------- scratch BPTT
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_scratch_bptt_matches_finite_differences(case):
    """Every parameter entry and every input entry, float64."""
    impl, model = loaded("scratch", case.config, case_params(case))
    x, y = parity.inputs(case, case.batch, "float64")
    analytic = impl.forward_backward(model, x, y)
    loss = lambda: impl.loss_fn(model.forward(x), y)[0]
    # the model's own arrays by canonical name, so numeric_grad perturbs what forward reads
    for name, value in impl.to_canonical(model).items():
        parity.assert_close(
            analytic[f"grad.{name}"], numeric_grad(loss, value), 1e-6, f"{case.id} {name}"
        )
    parity.assert_close(analytic["grad.input"], numeric_grad(loss, x), 1e-6, f"{case.id} input")


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_trajectory_clips_some_steps_and_not_others(case):
    """The clipped-SGD parity trajectory exercises both branches of the clipping rule."""
    impl, model = loaded("scratch", case.config, case_params(case))
    x, y = parity.inputs(case, case.batch * parity.TRAJECTORY_STEPS, "float64")
    optimizer, norms = impl.make_optimizer(model, parity.TRAJECTORY_LR), []
    for idx in batches(len(x), case.batch, case.seed, 0):
        impl.forward_backward(model, x[idx], y[idx])
        norms.append(
            np.sqrt(
                sum(np.sum(g**2) for layer in model.layers().values() for g in layer.grads.values())
            )
        )
        optimizer.step()
    norms = np.array(norms)
    assert (norms > case.config.clip_norm).any() and (norms < case.config.clip_norm).any(), norms


def test_scratch_clipping_rescales_to_the_max_norm():
    from scratch.optim import clip_by_global_norm  # the one the RNN's SGD steps with

    grads = clip_by_global_norm([np.array([3.0, 0.0]), np.array([[4.0]])], 1.0)
    np.testing.assert_allclose(np.sqrt(sum(np.sum(g**2) for g in grads)), 1.0, rtol=1e-15)
    np.testing.assert_allclose(grads[0], [0.6, 0.0], rtol=1e-15)
    small = clip_by_global_norm([np.array([0.3, 0.4])], 1.0)
    np.testing.assert_array_equal(small[0], [0.3, 0.4])  # under the threshold: untouched


# ----------------------------------------------------------------------------- the checks can fail
def permute_gates(params: dict, cfg: RNNConfig, order: list[int]) -> dict:
    """Canonical weights with their gate blocks reordered: what a converter with a wrong gate order loads."""
    out = dict(params)
    for name in ("W_xh", "W_hh", "b_h"):
        w = params[name]
        out[name] = w.reshape(cfg.gates, cfg.hidden, *w.shape[1:])[order].reshape(w.shape)
    return out


@pytest.mark.parametrize(
    "framework, cell, order",
    [
        ("tf_impl", "gru", [1, 0, 2]),
        ("torch_impl", "gru", [1, 0, 2]),
        ("jax_impl", "lstm", [1, 0, 2, 3]),
        ("torch_impl", "lstm", [0, 1, 3, 2]),
    ],
    ids=["keras-gru-z-r", "torch-gru-r-z", "flax-lstm-i-f", "torch-lstm-g-o"],
)
def test_a_swapped_gate_is_caught(framework, cell, order):
    """The check can fail: a GRU loaded in Keras's (z, r, h) order as if it were canonical (r, z, n), or
    two LSTM gates swapped, changes outputs and gradients far beyond the float64 tolerance."""
    case = parity.CASES[cell][0]
    x, y = parity.inputs(case, case.batch, "float64")
    impl, model = loaded(
        framework, case.config, permute_gates(case_params(case), case.config, order)
    )
    broken = impl.forward_backward(model, x, y)
    reference = parity.compute(case, "scratch", "float64")
    for tensor in ("output", "hidden", "grad.W_xh"):
        with pytest.raises(AssertionError):
            parity.assert_close(
                broken[tensor], reference[tensor], parity.tolerance(tensor, "float64"), tensor
            )


@pytest.mark.parametrize("cell", CELLS)
def test_a_bias_written_twice_is_caught(cell):
    """The check can fail: canonical b_h written into both of torch's biases (bias_ih and bias_hh), the
    bug random non-zero biases exist to catch."""
    import torch

    case = parity.CASES[cell][0]
    x, y = parity.inputs(case, case.batch, "float64")
    impl, model = loaded("torch_impl", case.config, case_params(case))
    with torch.no_grad():
        model.rnn.bias_hh_l0.copy_(model.rnn.bias_ih_l0)
    broken = impl.forward_backward(model, x, y)["output"]
    with pytest.raises(AssertionError):
        parity.assert_close(
            broken, parity.compute(case, "scratch", "float64")["output"], 1e-10, "output"
        )


def torch_trajectory_error(
    unmask_bias_hh: bool = False, stock_clipping: bool = False
) -> dict[str, float]:
    """Relative error of torch's 20-step clipped-SGD GRU trajectory against scratch, float64, with one
    rule of torch_impl/recurrent.py undone."""
    import torch

    from torch_impl import compat

    impl = load_impl("torch_impl", "gru")
    case = parity.CASES["gru"][0]
    steps = case.batch * parity.TRAJECTORY_STEPS + case.remainder  # as parity.compute's trajectory
    x, y = parity.inputs(case, steps, "float64")
    _, model = loaded("torch_impl", case.config, case_params(case))
    if unmask_bias_hh:
        model.rnn.bias_hh_l0._backward_hooks.clear()  # both bias copies train
    clip = compat.clip_grad_norm_
    if stock_clipping:
        compat.clip_grad_norm_ = torch.nn.utils.clip_grad_norm_
    try:
        impl.train(
            model,
            Dataset("gru", x, y, x[:1], y[:1], 3),
            epochs=1,
            lr=parity.TRAJECTORY_LR,
            batch_size=case.batch,
            seed=case.seed,
        )
    finally:
        compat.clip_grad_norm_ = clip
    reference = parity.compute(case, "scratch", "float64")
    return {
        k: parity.rel_error(v, reference[f"sgd.{k}"])[1]
        for k, v in impl.export_canonical(model).items()
    }


def test_torch_rules_for_training_are_needed():
    """The trajectory check can fail: with both torch biases training, the acting bias moves twice as
    fast (b_h off by ~1e-2); with nn.utils.clip_grad_norm_ (norm + 1e-6) parameters drift ~1e-7."""
    tol = parity.tolerance("sgd.b_h", "float64")
    assert max(torch_trajectory_error().values()) <= tol
    assert torch_trajectory_error(unmask_bias_hh=True)["b_h"] > 1e-3
    assert max(torch_trajectory_error(stock_clipping=True).values()) > 100 * tol


def test_flax_gru_without_b_hn_is_caught():
    """The check can fail: Flax's stock GRUCell has no bias inside the reset product (b_hn = 0)."""
    case = parity.CASES["gru"][0]
    x, y = parity.inputs(case, case.batch, "float64")
    impl, model = loaded("jax_impl", case.config, case_params(case))
    bias = model.rnn.cell.b_hn  # jax_impl's GRUCell: nnx.GRUCell plus the b_hn it lacks
    bias.set_value(bias.get_value() * 0)
    broken = impl.forward_backward(model, x, y)["output"]
    with pytest.raises(AssertionError):
        parity.assert_close(
            broken, parity.compute(case, "scratch", "float64")["output"], 1e-10, "output"
        )


# ----------------------------------------------------------------------------- canonical weights
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_load_rejects_bad_weights_and_leaves_model_unchanged(framework):
    cfg = RNNConfig("gru", 3, 4, 2, "last")
    impl = load_impl(framework, "gru")
    model = impl.create_model(cfg, seed=0, dtype="float64")
    before = impl.export_canonical(model)
    good = weights.init_uniform(cfg.param_shapes(), 7)
    bad = dict(good)
    del bad["b_hn"]  # missing: the GRU's second bias
    bad["W_hh"] = np.zeros((4, 12))  # transposed: Keras/Flax (H, 3H) instead of canonical (3H, H)
    bad["b_h"] = good["b_h"].astype(np.float32)  # wrong dtype
    bad["bias_hh_l0"] = np.zeros(12)  # extra: a torch name
    with pytest.raises(weights.CanonicalWeightsError) as info:
        impl.load_canonical(model, bad)
    message = str(info.value)
    for expected in (
        "missing b_hn",
        "W_hh: expected shape (12, 4), got (4, 12)",
        "b_h: expected dtype float64, got float32",
        "extra bias_hh_l0",
    ):
        assert expected in message
    after = impl.export_canonical(model)
    assert all(np.array_equal(before[k], after[k]) for k in before), (
        "a failed load changed the model"
    )
    impl.load_canonical(model, good)
    assert all(np.array_equal(good[k], v) for k, v in impl.export_canonical(model).items())


# ----------------------------------------------------------------------------- tasks and training
def test_pytext_split_and_baseline():
    d = pytext(seed=0)
    assert d.x_train.shape[1:] == (32, d.n_classes) and d.y_train.shape[1] == 32
    assert np.array_equal(d.x_train.argmax(-1)[:, 1:], d.y_train[:, :-1]), (
        "targets are the inputs shifted by one"
    )
    train_windows = {row.tobytes() for row in d.y_train}
    assert not any(row.tobytes() in train_windows for row in d.y_test), (
        "a validation window is also a training window"
    )
    assert python_text().startswith(
        "The Zen of Python, by Tim Peters\n\nBeautiful is better than ugly."
    )
    assert 3.0 < d.meta["baselines"]["unigram_test_loss"] < 3.5
    again = pytext(seed=0)
    assert np.array_equal(again.y_test, d.y_test)


# The epochs of the default 10 each cell's bar needs, sized by the measured default run (float32,
# test accuracy after epochs 1-10, the same in the four frameworks unless two figures are given):
# lstm 93.2, 98.8, 99.6, 99.8, 98.6, 100 (epochs 6-10); gru 84.0, 98.6, 89.0-99.0, 91.4-94.8,
# 84.2-85.2, 96.2-98.8, 99.4, 96.4-97.2, 99.8, 99.2; rnn 88.4, 88.2, 90.6-93.2, 91.6-98.4,
# 93.6-95.8, 94.0-95.8, 96.8-99.0, 97.2-99.4, 98.0-99.8, 98.0-99.4 (torch lowest from epoch 7).
# A k-epoch run is the default run's first k epochs (clipped SGD at a constant lr, each epoch's
# batch order seeded by its number). The rnn keeps all 10 (1.8 points to spare at epoch 7).
SIGN_EPOCHS = {"rnn": 10, "lstm": 3, "gru": 7}


@pytest.mark.slow  # a quality run: the default training to its bar
@pytest.mark.parametrize("cell", CELLS)
def test_every_cell_learns_the_sign_task_in_every_framework(cell):
    """The issue's bar, many-to-one: >= 95% test accuracy with the default settings, in all four
    frameworks, for the epochs of the default 10 the cell's bar needs (SIGN_EPOCHS)."""
    result = train.run(cell, "sign", list(FRAMEWORKS), train.TrainOptions(epochs=SIGN_EPOCHS[cell]))
    assert [row["framework"] for row in result["results"]] == list(FRAMEWORKS)
    for row in result["results"]:
        assert row["test_accuracy"] >= 0.95, row


def test_sample_cli_trains_saves_loads_and_is_seeded(tmp_path, monkeypatch):
    """`rosetta sample`: trains and saves canonical weights, a second call loads them (in another
    framework) and prints the same seeded text; a prompt character outside the vocabulary exits 2.
    In process through typer's CliRunner (the process boundary is test_cli's and test_errors' SIGINT
    test): three Python start-ups and a torch import fewer."""
    from typer.testing import CliRunner

    from tasks.cli import app

    monkeypatch.chdir(tmp_path)  # runs/ is relative to the working directory
    path = tmp_path / "rnn.safetensors"
    run = lambda *args: CliRunner().invoke(app, ["sample", "rnn", *args])
    common = [
        "--prompt",
        "Beautiful",
        "--temperature",
        "0.8",
        "--length",
        "60",
        "--epochs",
        "2",
        "--weights",
        str(path),
    ]
    first = run("--framework", "scratch", *common)
    assert first.exit_code == 0, first.output[-2000:]
    assert "trained and saved to" in first.stderr and path.exists()
    text = first.stdout.rstrip("\n")
    assert text.startswith("Beautiful") and len(text) == len("Beautiful") + 60
    second = run("--framework", "torch", *common)
    assert second.exit_code == 0, second.output[-2000:]
    assert "loaded from" in second.stderr and second.stdout.rstrip("\n") == text
    bad = run("--framework", "scratch", "--prompt", "naïve", "--weights", str(path))
    assert (
        bad.exit_code == 2
        and "never saw" in bad.stderr
        and len(bad.stderr.strip().splitlines()) == 1
    ), bad.output[-2000:]


def test_char_rnn_gets_well_below_the_unigram_baseline():
    """The issue's bar on the default task, shortened: after 6 of the default 20 epochs the validation
    loss is already 0.5 nats under the unigram model's (scratch and torch; the full run in all four is
    `rosetta train rnn`)."""
    result = train.run("rnn", "pytext", ["scratch", "torch_impl"], train.TrainOptions(epochs=6))
    baseline = result["baselines"]["unigram_test_loss"]
    for row in result["results"]:
        assert row["test_loss"] < baseline - 0.5, (row, baseline)


# ----------------------------------------------------------------------------- stock configurations
# Issue 14 item 4: the stock layers' options beyond one tanh layer from a zero state. Each case runs
# the whole parity (outputs, states, every gradient, round trip, 20 clipped-SGD steps) against scratch.
# Four cases hold every option: the relu RNN stacked and bidirectional, the LSTM's two-part state
# and the GRU through a stacked bidirectional layer, and Keras's GRU(reset_after=False) (one layer:
# torch's and Flax's cells are written by hand).
STOCK_CASES = [
    parity.Case(
        "rnn",
        "relu-2-layers-bidirectional",
        RNNConfig(
            "rnn",
            3,
            4,
            3,
            "sequence",
            clip_norm=0.25,
            nonlinearity="relu",
            num_layers=2,
            bidirectional=True,
        ),
        parity.sequences,
        batch=4,
        extra_outputs=("hidden", "h_n"),
    ),
    parity.Case(
        "lstm",
        "2-layers-bidirectional",
        RNNConfig("lstm", 3, 3, 2, "last", clip_norm=0.5, num_layers=2, bidirectional=True),
        parity.sequences,
        batch=4,
        extra_outputs=("hidden", "h_n", "c_n"),
    ),
    parity.Case(  # the stacked bidirectional GRU: gradients, trajectory and float32 too
        "gru",
        "2-layers-bidirectional",
        RNNConfig("gru", 3, 3, 3, "sequence", clip_norm=0.25, num_layers=2, bidirectional=True),
        parity.sequences,
        batch=4,
        extra_outputs=("hidden", "h_n"),
    ),
    parity.Case(
        "gru",
        "reset-before",
        RNNConfig("gru", 3, 4, 3, "sequence", clip_norm=0.25, reset_after=False),
        parity.sequences,
        batch=4,
        extra_outputs=("hidden", "h_n"),
    ),
]
# the one-layer relu RNN (the step written by hand in each framework takes one forward layer):
# scratch checks only (by hand, finite differences)
RELU_ONE_LAYER = parity.Case(
    "rnn",
    "relu",
    RNNConfig("rnn", 3, 4, 3, "sequence", clip_norm=0.25, nonlinearity="relu"),
    parity.sequences,
    batch=4,
    extra_outputs=("hidden", "h_n"),
)


def stock_star_params():
    return [
        pytest.param(case, fw, dtype, tensor, id=f"{case.id}-{fw}-{dtype}-{tensor}")
        for case in STOCK_CASES
        for fw in FRAMEWORK_IDS
        for dtype in parity.DTYPES
        for tensor in parity.expected_tensors(case)
    ]


@pytest.mark.parametrize("case, framework, dtype, tensor", stock_star_params())
def test_stock_configuration_matches_scratch(case, framework, dtype, tensor):
    assert_matches_scratch(case, framework, dtype, tensor)


@pytest.mark.parametrize("case", STOCK_CASES, ids=lambda c: c.id)
def test_stock_configuration_frameworks_agree_pairwise(case):
    assert_frameworks_agree_pairwise(case)


@pytest.mark.parametrize("framework", FRAMEWORK_IDS)
@pytest.mark.parametrize(
    "case",
    # by hand: one forward layer
    [c for c in [RELU_ONE_LAYER, *STOCK_CASES] if c.config.layer_prefixes() == [""]],
    ids=lambda c: c.id,
)
def test_stock_configuration_layer_and_step_by_hand_agree(case, framework):
    test_layer_and_step_by_hand_agree(case, framework)


@pytest.mark.parametrize("case", [*STOCK_CASES, RELU_ONE_LAYER], ids=lambda c: c.id)
def test_stock_configuration_scratch_bptt_matches_finite_differences(case):
    test_scratch_bptt_matches_finite_differences(case)


def stock_torch(cfg: RNNConfig, seed: int):
    """A stock nn.RNN / nn.LSTM / nn.GRU of the configuration and an nn.Linear head, every weight and
    both biases random and non-zero (drawn from a generator, not torch's default init); and the
    canonical weights by docs/PORTING.md's rule (b_h = bias_ih + bias_hh; the GRU's b_hn = bias_hh's
    n block, its r and z blocks folded into b_h)."""
    import torch
    from torch import nn

    kwargs = {"nonlinearity": cfg.nonlinearity} if cfg.cell == "rnn" else {}
    layer = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[cfg.cell](
        cfg.in_features,
        cfg.hidden,
        num_layers=cfg.num_layers,
        bidirectional=cfg.bidirectional,
        batch_first=True,
        dtype=torch.float64,
        **kwargs,
    )
    head = nn.Linear(cfg.directions * cfg.hidden, cfg.n_classes, dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in [*layer.parameters(), *head.parameters()]:
            p.uniform_(-0.6, 0.6, generator=generator)
    w = {k: v.detach().numpy().copy() for k, v in layer.state_dict().items()}
    params = {"W_hy": head.weight.detach().numpy(), "b_y": head.bias.detach().numpy()}
    for p in cfg.layer_prefixes():  # "", "reverse.", "l1.", ... <-> _l0, _l0_reverse, _l1, ...
        layer_k = p.removesuffix("reverse.").removesuffix(".").removeprefix("l") or "0"
        sfx = f"_l{layer_k}" + ("_reverse" if p.endswith("reverse.") else "")
        b_hh = w["bias_hh" + sfx].copy()
        params |= {p + "W_xh": w["weight_ih" + sfx], p + "W_hh": w["weight_hh" + sfx]}
        if cfg.cell == "gru":
            b_hh[2 * cfg.hidden :] = 0  # stays inside the reset product: b_hn
            params[p + "b_hn"] = w["bias_hh" + sfx][2 * cfg.hidden :]
        params[p + "b_h"] = w["bias_ih" + sfx] + b_hh
    return layer, head, {k: params[k] for k in cfg.param_shapes()}


def states_of(framework: str, model, x: np.ndarray, initial_state=None) -> tuple:
    """(logits, hidden, state) of a suite model as NumPy arrays."""
    if framework == "torch_impl":
        import torch

        x = torch.as_tensor(x)
    logits, hidden, state = model.logits_and_states(x, initial_state)
    as_np = lambda t: t.detach().numpy() if hasattr(t, "detach") else np.asarray(t)
    return as_np(logits), as_np(hidden), tuple(as_np(s) for s in state)


STOCK_ORACLE_CONFIGS = [  # (config, from a given initial state)
    (RNNConfig("rnn", 3, 4, 3, "sequence", nonlinearity="relu"), False),
    (RNNConfig("rnn", 3, 4, 3, "sequence", nonlinearity="relu"), True),
    (RNNConfig("lstm", 3, 4, 3, "sequence"), True),
    (RNNConfig("gru", 3, 4, 3, "sequence"), True),
    (RNNConfig("rnn", 3, 4, 3, "sequence", nonlinearity="relu", num_layers=2), True),
    (RNNConfig("lstm", 3, 4, 3, "sequence", num_layers=2, bidirectional=True), True),
    (RNNConfig("gru", 3, 4, 3, "sequence", num_layers=3, bidirectional=True), False),
]


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize(
    "cfg, with_state",
    STOCK_ORACLE_CONFIGS,
    ids=lambda c: (
        f"{c.cell}-{c.nonlinearity}-{c.num_layers}-{c.directions}"
        if isinstance(c, RNNConfig)
        else f"h0-{c}"
    ),
)
def test_stock_torch_layer_is_the_oracle(cfg, with_state, framework):
    """A stock torch layer with random non-zero biases, mapped to canonical by PORTING's rule, gives
    the suite model's outputs, hidden states and final states in every framework, float64; from a
    given initial state, the stock layer's hx = h0[None] (nn.LSTM: (h0[None], c0[None]))."""
    import torch

    layer, head, params = stock_torch(cfg, seed=7)
    rng = np.random.default_rng(8)
    x = rng.normal(size=(2, 5, cfg.in_features))
    n, one = len(cfg.layer_prefixes()), len(cfg.layer_prefixes()) == 1
    shape = (2, cfg.hidden) if one else (n, 2, cfg.hidden)  # (B, H), or torch's (L*dirs, B, H)
    state = tuple(rng.normal(size=shape) for _ in range(2 if cfg.cell == "lstm" else 1))
    hx = tuple(torch.as_tensor(s)[None] if one else torch.as_tensor(s) for s in state)
    with torch.no_grad():
        hidden, last = layer(
            torch.as_tensor(x), (hx if cfg.cell == "lstm" else hx[0]) if with_state else None
        )
        last = last if cfg.cell == "lstm" else (last,)  # (h_n,) or (h_n, c_n), each (1, B, H)
        reference = {"output": head(hidden).numpy(), "hidden": hidden.numpy()}
        reference |= {name: (s[0] if one else s).numpy() for name, s in zip(("h_n", "c_n"), last)}
    if cfg.nonlinearity == "relu":  # the kink is reached: a tanh in its place would not match
        assert (reference["hidden"] == 0).mean() > 0.2
    _, model = loaded(framework, cfg, params)
    if framework == "torch_impl":
        state = tuple(torch.as_tensor(s) for s in state)
    logits, hidden, final = states_of(framework, model, x, state if with_state else None)
    got = {"output": logits, "hidden": hidden, **dict(zip(("h_n", "c_n"), final))}
    assert got.keys() == reference.keys()
    for name, value in got.items():
        parity.assert_close(value, np.asarray(reference[name]), 1e-12, f"{framework} {name}")


# A given initial state: model(x, initial_state) and logits_and_states(x, initial_state), the state
# (h0,) or (h0, c0); forward_backward(model, x, y, initial_state) adds grad.h0 (and grad.c0).
def initial_state_of(case, dtype: str) -> tuple:
    rng = np.random.default_rng(case.seed + 3)
    n = 2 if case.config.cell == "lstm" else 1
    return tuple(rng.normal(size=(case.batch, case.config.hidden)).astype(dtype) for _ in range(n))


@functools.cache
def from_initial_state(case, framework: str, dtype: str, fused: bool = True) -> dict:
    impl, model = loaded(framework, replace(case.config, fused=fused), case_params(case), dtype)
    x, y = parity.inputs(case, case.batch, dtype)
    return impl.forward_backward(model, x, y, initial_state_of(case, dtype))


@pytest.mark.parametrize("dtype", parity.DTYPES)
@pytest.mark.parametrize("framework", FRAMEWORK_IDS)
@pytest.mark.parametrize("case", [parity.CASES[cell][0] for cell in CELLS], ids=lambda c: c.id)
def test_initial_state_matches_scratch(case, framework, dtype):
    """Outputs, states and every gradient, grad.h0 and grad.c0 included, against scratch; and
    each framework's layer (torch rnn(x, hx), Keras initial_state=[...], nnx.RNN initial_carry=)
    against its step by hand from the same state, float64."""
    reference = from_initial_state(case, "scratch", dtype)
    got = from_initial_state(case, framework, dtype)
    states = ["grad.h0", "grad.c0"][: len(initial_state_of(case, dtype))]
    assert got.keys() == reference.keys() and set(states) <= got.keys()
    for tensor, value in got.items():
        tol = parity.tolerance(tensor, dtype)
        parity.assert_close(value, reference[tensor], tol, f"{case.id} {framework} {tensor}")
    if dtype == "float64":
        by_hand = from_initial_state(case, framework, dtype, fused=False)
        for tensor, value in got.items():
            parity.assert_close(by_hand[tensor], value, 1e-12, f"{framework} by hand: {tensor}")
    impl, model = loaded("scratch", case.config, case_params(case), dtype)
    x, y = parity.inputs(case, case.batch, dtype)
    zero_start = impl.forward_backward(model, x, y)["output"]
    assert np.abs(zero_start - reference["output"]).max() > 1e-2  # the given state is used


@pytest.mark.parametrize("case", [parity.CASES[cell][0] for cell in CELLS], ids=lambda c: c.id)
def test_scratch_initial_state_gradient_matches_finite_differences(case):
    impl, model = loaded("scratch", case.config, case_params(case))
    x, y = parity.inputs(case, case.batch, "float64")
    state = initial_state_of(case, "float64")
    analytic = impl.forward_backward(model, x, y, state)
    for name, s in zip(("grad.h0", "grad.c0"), state):
        loss = lambda: impl.loss_fn(model.forward(x, state), y)[0]
        parity.assert_close(analytic[name], numeric_grad(loss, s), 1e-6, f"{case.id} {name}")


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_stock_keras_gru_reset_before_is_the_oracle(framework):
    """Keras's stock GRU(reset_after=False) with random non-zero weights and bias, mapped to its
    canonical form (W_xh, W_hh, b_h, no b_hn) by tf_impl/porting.py, gives the suite model's outputs
    and states in every framework (torch and Flax: a hand-written cell), float64; the reset_after
    model on the same numbers (b_hn = 0) does not."""
    import keras

    from tf_impl import porting as keras_porting

    cfg = RNNConfig("gru", 3, 4, 3, "sequence", reset_after=False)
    layer = keras.layers.GRU(
        cfg.hidden, return_sequences=True, return_state=True, reset_after=False, dtype="float64"
    )
    head = keras.layers.Dense(cfg.n_classes, dtype="float64")
    x = np.random.default_rng(8).normal(size=(2, 5, cfg.in_features))
    hidden, h_n = layer(x)
    head(hidden)
    rng = np.random.default_rng(9)
    for part in (layer, head):
        part.set_weights([rng.uniform(-0.6, 0.6, w.shape) for w in part.get_weights()])
    hidden, h_n = layer(x)
    reference = {"output": np.asarray(head(hidden)), "hidden": np.asarray(hidden)}
    reference["h_n"] = np.asarray(h_n)
    w, b = head.get_weights()
    params = keras_porting.gru_to_canonical(layer.get_weights(), reset_after=False)
    params |= {"W_hy": w.T.copy(), "b_y": b}
    _, model = loaded(framework, cfg, params)
    logits, hidden, final = states_of(framework, model, x)
    got = {"output": logits, "hidden": hidden, "h_n": final[0]}
    for name, value in got.items():
        parity.assert_close(value, reference[name], 1e-12, f"{framework} {name}")
    _, reset_after = loaded(
        framework, replace(cfg, reset_after=True), {**params, "b_hn": np.zeros(cfg.hidden)}
    )
    with pytest.raises(AssertionError):
        wrong = states_of(framework, reset_after, x)[0]
        parity.assert_close(wrong, reference["output"], 1e-6, "the reset_after GRU")


def test_cli_flags_build_the_stock_configurations():
    """rosetta train/convert rnn|lstm|gru --num-layers N --bidirectional (rnn: --activation relu)
    reach RNNConfig through the spec; other models refuse them, the LSTM and GRU refuse --activation."""
    from tasks.cli import FLAG_RULES
    from tasks.specs import recurrent as spec_module
    from tasks.train import TrainOptions

    specs = {spec.name: spec for spec in spec_module.SPECS}
    data = Dataset(
        "sign", np.zeros((4, 5, 1)), np.zeros(4, int), np.zeros((1, 5, 1)), np.zeros(1, int), 2
    )
    opts = TrainOptions(hidden=(8,), num_layers=2, bidirectional=True, activation="relu")
    cfg = specs["rnn"].make_config(data, opts)
    assert (cfg.nonlinearity, cfg.num_layers, cfg.bidirectional) == ("relu", 2, True)
    assert specs["gru"].make_config(data, TrainOptions(hidden=(8,))).num_layers == 1
    assert {"--num-layers", "--bidirectional"} <= specs["lstm"].flags & set(FLAG_RULES)
    assert "--activation" in specs["rnn"].flags and "--activation" not in specs["gru"].flags


def initial_state_trajectory(cell: str, framework: str, zero_start: bool = False) -> dict:
    """Canonical weights after 20 plain-SGD steps (lr 0.1, no clipping) from a given non-zero
    initial state, float64. Each step's gradient is the framework's own forward_backward(model, x, y,
    initial_state) in canonical names; the update w -= lr * grad.w is applied with NumPy to the
    canonical weights, which load_canonical reloads into the model (train_step takes no state)."""
    cfg = RNNConfig(cell, 3, 4, 3, "sequence", clip_norm=None)  # D=3, H=4, C=3
    rng = np.random.default_rng(41)
    params = {k: 0.5 * rng.normal(size=s) for k, s in cfg.param_shapes().items()}
    x = rng.normal(size=(4, 5, cfg.in_features))  # (B, T, D)
    y = rng.integers(0, cfg.n_classes, size=(4, 5))  # (B, T)
    state = tuple(rng.normal(size=(4, cfg.hidden)) for _ in range(2 if cell == "lstm" else 1))
    if zero_start:
        state = tuple(np.zeros_like(s) for s in state)
    impl, model = loaded(framework, cfg, params)
    for _ in range(parity.TRAJECTORY_STEPS):
        grads = impl.forward_backward(model, x, y, state)
        params = {
            k: v - parity.TRAJECTORY_LR * np.asarray(grads[f"grad.{k}"]) for k, v in params.items()
        }
        impl.load_canonical(model, params)
    return impl.export_canonical(model)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_initial_state_trajectory_matches_scratch(cell):
    """20 SGD steps from the same given (h0,) or (h0, c0): every framework's weights equal scratch's
    to the trajectory tolerance (1e-9 of each tensor's size; measured ~1e-16). The check can fail:
    from zeros instead of the given state, every scratch tensor parts by 2e-2 to 2e-1 of its size."""
    reference = initial_state_trajectory(cell, "scratch")
    tol = parity.TOLERANCES["float64"]["trajectory"]
    for framework in FRAMEWORK_IDS:
        got = initial_state_trajectory(cell, framework)
        assert got.keys() == reference.keys()
        for name, value in got.items():
            parity.assert_close(value, reference[name], tol, f"{cell} {framework} {name}")
    zero = initial_state_trajectory(cell, "scratch", zero_start=True)
    errors = {k: parity.rel_error(v, reference[k])[1] for k, v in zero.items()}
    assert min(errors.values()) > 1e-3, errors  # a million times the tolerance
