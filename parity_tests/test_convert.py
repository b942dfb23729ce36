"""`rosetta convert` (tasks/convert.py): every model through every ordered pair of formats (torch
state_dict, Keras .weights.h5, Flax orbax checkpoint, canonical safetensors), float64, small
configs; the probe error of each conversion, the canonical weights unchanged bit for bit, the exit
statuses (1 above tolerance, 2 for a file that does not fit, naming the tensors), --json, and the
README's worked example (rosetta train --save, rosetta convert, plain Keras code)."""

from __future__ import annotations

import json
import re
from itertools import permutations
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import jax_impl  # noqa: F401  (float64 in JAX)
import tf_impl  # noqa: F401  (Keras on TensorFlow)

from tasks import convert, weights  # isort: skip
from tasks.cli import app  # isort: skip
from tasks.configs import (  # isort: skip
    AttentionConfig,
    LeNet5Config,
    MLPConfig,
    RNNConfig,
    TransformerConfig,
)

ROOT = Path(__file__).resolve().parents[1]
rng = np.random.default_rng(0)
CONFIGS = {
    "mlp": (MLPConfig(in_features=3, hidden=(5, 4), n_classes=3, head="softmax"), rng.normal(size=(4, 3))),
    "mlp-batchnorm": (
        MLPConfig(in_features=3, hidden=(5,), n_classes=3, head="softmax", batch_norm=True),
        rng.normal(size=(4, 3)),
    ),
    "lenet5": (LeNet5Config(), rng.normal(size=(2, 1, 32, 32))),
    "rnn": (RNNConfig(cell="rnn", in_features=3, hidden=4, n_classes=2), rng.normal(size=(3, 5, 3))),
    "lstm": (RNNConfig(cell="lstm", in_features=3, hidden=4, n_classes=2, output="last"), rng.normal(size=(3, 5, 3))),
    "gru": (RNNConfig(cell="gru", in_features=3, hidden=4, n_classes=2), rng.normal(size=(3, 5, 3))),
    "attention": (AttentionConfig(d_model=8, n_heads=2), rng.integers(1, 11, size=(3, 6))),
    "transformer": (
        TransformerConfig(d_model=8, n_heads=2, d_ff=12, n_layers=1, norm="pre"),
        rng.integers(1, 11, size=(3, 6)),
    ),
}  # fmt: skip
NAME = {"torch": "m.pt", "keras": "m.weights.h5", "flax": "m.orbax", "canonical": "m.safetensors"}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Per model: its random canonical weights (non-zero biases) and a file in every format, each
    written once from the canonical one (canonical -> torch, keras, flax)."""
    out = {}
    for case, (cfg, x) in CONFIGS.items():
        model = case.split("-")[
            0
        ]  # "mlp-batchnorm" is the mlp with batch norm (running statistics)
        folder = tmp_path_factory.mktemp(case)
        params = weights.init_uniform(cfg.param_shapes(), seed=3)
        for k in params:  # running variances: positive, and not 1 (a dropped statistic would show)
            if k.endswith("running_var"):
                params[k] = np.abs(params[k]) + 0.5
        paths = {"canonical": folder / NAME["canonical"]}
        weights.save(paths["canonical"], params)
        for fmt in ("torch", "keras", "flax"):
            paths[fmt] = folder / NAME[fmt]
            r = convert.convert(
                model, cfg, paths["canonical"], paths[fmt], "canonical", fmt, "float64", x
            )
            assert r["passed"], r
        out[case] = (params, paths)
    return out


@pytest.mark.parametrize("case", list(CONFIGS))
@pytest.mark.parametrize("src,dst", list(permutations(convert.FORMATS, 2)), ids=lambda p: p)
def test_round_trip_every_model_every_pair(files, tmp_path, case, src, dst):
    """SRC file -> DST file: the probe batch agrees to 1e-10 (float64), and the DST file holds the
    original canonical weights bit for bit (read into a fresh DST model by the same reader
    `rosetta convert --from DST` uses, and exported as canonical weights)."""
    cfg, x = CONFIGS[case]
    params, paths = files[case]
    model = case.split("-")[0]
    target = tmp_path / NAME[dst]
    result = convert.convert(model, cfg, paths[src], target, src, dst, "float64", x)
    print(f"{case} {src}->{dst}: max_abs_error {result['max_abs_error']:.3g}")
    assert result["passed"] and result["max_abs_error"] <= 1e-10
    loaded = convert.read(convert.create(dst, model, cfg, "float64", x), target, "float64")
    assert sorted(loaded) == sorted(params)
    for k in params:
        np.testing.assert_array_equal(loaded[k], params[k], err_msg=k)


@pytest.mark.parametrize("fmt", convert.FORMATS)
def test_file_that_does_not_fit_names_the_tensors(files, tmp_path, fmt):
    """An LSTM file read with a GRU config of another size: ConvertError naming the tensors."""
    _, paths = files["lstm"]
    cfg = RNNConfig(cell="lstm", in_features=3, hidden=6, n_classes=2, output="last")
    with pytest.raises(convert.ConvertError) as e:
        convert.convert(
            "lstm",
            cfg,
            paths[fmt],
            tmp_path / NAME["canonical"],
            fmt,
            "canonical",
            "float64",
            CONFIGS["lstm"][1],
        )
    assert re.search(r"W_hh|weight_hh_l0|dense_h\.kernel|vars/1", str(e.value)), str(e.value)


def cli(*args):
    return CliRunner().invoke(app, list(map(str, args)))


def test_cli_json_exit_statuses(tmp_path, monkeypatch):
    """rosetta convert on the MLP's moons config: --json has the six keys and exit 0; a file from
    another --hidden exits 2 naming tensors; a probe above the tolerance exits 1."""
    src = tmp_path / "mlp.safetensors"
    cfg = MLPConfig(in_features=2, hidden=(32, 32), n_classes=2, activation="relu")
    weights.save(src, weights.init_uniform(cfg.param_shapes(), seed=1, dtype=np.float32))
    r = cli(
        "convert", "mlp", src, tmp_path / "mlp.pt", "--from", "canonical", "--to", "torch", "--json"
    )
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert {"model", "from", "to", "max_abs_error", "tolerance", "passed"} <= set(doc)
    assert (doc["model"], doc["from"], doc["to"], doc["passed"]) == (
        "mlp",
        "canonical",
        "torch",
        True,
    )
    r = cli(
        "convert",
        "mlp",
        tmp_path / "mlp.pt",
        tmp_path / "x.weights.h5",
        "--from",
        "torch",
        "--to",
        "keras",
        "--hidden",
        "8",
    )
    assert r.exit_code == 2 and "hidden.0.weight" in r.output, r.output
    monkeypatch.setitem(convert.TOLERANCE, "float32", -1.0)  # any difference, even 0, is above it
    r = cli(
        "convert",
        "mlp",
        tmp_path / "mlp.pt",
        tmp_path / "y.weights.h5",
        "--from",
        "torch",
        "--to",
        "keras",
    )
    assert r.exit_code == 1, r.output
    r = cli(
        "convert", "mlp", tmp_path / "mlp.pt", tmp_path / "y.h5", "--from", "torch", "--to", "keras"
    )
    assert r.exit_code == 2 and ".weights.h5" in r.output


def test_readme_worked_example_runs(tmp_path, monkeypatch):
    """The README's example, as written there: rosetta train lstm --framework torch --save, rosetta
    convert to Keras, then the plain Keras block (exec'd from README.md) loads the file; its logits
    equal the torch model's on the sign task's test sequences (float32 rounding)."""
    import torch

    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- convert-example -->\n```python\n(.*?)```", text, re.S)
    assert block, "README.md lacks the convert example"
    folder = tmp_path / "lstm-port"
    folder.mkdir()
    r = cli(
        "train", "lstm", "--task", "sign", "--framework", "torch", "--epochs", "1", "--save", folder
    )
    assert r.exit_code == 0, r.output
    r = cli(
        "convert",
        "lstm",
        folder / "lstm.pt",
        folder / "lstm.weights.h5",
        "--from",
        "torch",
        "--to",
        "keras",
        "--task",
        "sign",
    )
    assert r.exit_code == 0, r.output
    monkeypatch.chdir(tmp_path)  # the README's paths are runs/lstm-port/...
    (tmp_path / "runs").mkdir()
    folder.rename(tmp_path / "runs" / "lstm-port")
    scope: dict = {}
    exec(compile(block.group(1), "README.md", "exec"), scope)  # noqa: S102
    from tasks.data import load_task
    from torch_impl import recurrent

    x = load_task("sign").x_test[:32].astype("float32")
    net = recurrent.create_model(
        RNNConfig(cell="lstm", in_features=1, hidden=16, n_classes=2, output="last"),
        seed=0,
        dtype="float32",
    )
    net.load_state_dict(torch.load(tmp_path / "runs/lstm-port/lstm.pt", weights_only=True))
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    assert np.max(np.abs(np.asarray(scope["model"](x)) - expected)) <= 1e-5
