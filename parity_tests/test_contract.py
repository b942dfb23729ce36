"""Every framework module of every model satisfies the declared contract (tasks/contract.py),
every model's spec (tasks/specs/) satisfies the spec protocol, and the hub needs nothing else: it
does not branch on model names, and a new spec is picked up by training, the CLI and parity."""

from __future__ import annotations

import ast
import json
import types
from dataclasses import replace
from pathlib import Path

import pytest

from tasks import contract
from tasks.cli import FLAG_RULES
from tasks.registry import FRAMEWORKS, MODELS, load_impl

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("model", list(MODELS))
def test_module_satisfies_the_contract(model, framework):
    assert contract.violations(load_impl(framework, model), contract.protocol_for(model)) == []


def test_the_check_can_fail():
    """A module missing a function, a keyword or with an extra required argument is reported."""

    def train(model, data, *, epochs, lr, seed):  # no batch_size, no on_epoch
        return []

    def evaluate(model, x, y, extra):  # a fourth positional argument nobody passes
        return 0.0, 1.0

    broken = types.SimpleNamespace(__name__="broken", train=train, evaluate=evaluate)
    found = contract.violations(broken, contract.GradientModelModule)
    for expected in (
        "broken: no create_model()",
        "broken: no forward_backward()",
        "broken.train: got an unexpected keyword argument 'batch_size'",
        "broken.evaluate: missing a required argument: 'extra'",
    ):
        assert expected in found, found


# ----------------------------------------------------------------------------- one spec per model
@pytest.mark.parametrize("model", list(MODELS))
def test_every_spec_satisfies_the_spec_protocol(model):
    spec = MODELS[model]
    assert contract.spec_violations(spec) == []
    assert spec.name == model
    for framework in FRAMEWORKS:  # its file (and any it shares) exists in every framework folder
        for name in (spec.file, *spec.shared_files):
            assert (ROOT / framework / f"{name}.py").is_file(), (framework, name)
    assert spec.flags <= set(FLAG_RULES), spec.flags - set(FLAG_RULES)


def test_the_spec_check_can_fail():
    """A wrong field type, a function the hub cannot call, and self-contradicting data are reported."""
    mlp, rnn = MODELS["mlp"], MODELS["rnn"]
    assert contract.spec_violations(replace(mlp, default_clip="1")) == [
        "spec mlp: default_clip is a str"
    ]
    assert contract.spec_violations(replace(mlp, prepare=lambda: None)) == [
        "spec mlp.prepare: too many positional arguments"
    ]
    found = contract.spec_violations(replace(mlp, activations=(), cases=rnn.cases[:1]))
    assert found == [
        "spec mlp: --activation in flags but no activations, or the reverse",
        "spec mlp: case rnn[sequence] is another model's",
    ], found
    assert contract.spec_violations(replace(mlp, tasks=("moons",))) == [
        "spec mlp: defaults for tasks it does not list, or no task"
    ]


# Model names that may appear in branching only inside tasks/specs/ and these files:
EXEMPT = {
    # the models' config dataclasses themselves (a GRU config knows its three gates): model
    # definitions, which a new model may keep in its spec module instead
    "configs.py": "model definitions",
    # benchmarks of named models on purpose (LeNet-5's loop convolution, the perceptron's epoch
    # as its step); not on the path a new model takes through training, parity or the CLI
    "bench.py": "named benchmarks",
}


def branches_on_models(name: str, source: str, models: set[str], configs: set[str]) -> list[str]:
    """Every comparison (==, !=, in, not in, is) with a model name as a string literal on one side,
    alone or in a tuple/list/set literal, and every isinstance() against a model's config class,
    in a file's source. Model names in help text, docstrings, dict keys of data or call arguments
    are not branches and are not reported."""
    found = []
    for node in ast.walk(ast.parse(source, name)):
        if isinstance(node, ast.Compare):
            for side in (node.left, *node.comparators):
                items = side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [side]
                if {i.value for i in items if isinstance(i, ast.Constant)} & models:
                    found.append(f"{name}:{node.lineno}: {ast.unparse(node)}")
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "isinstance"
            and len(node.args) == 2
        ):
            classes = node.args[1].elts if isinstance(node.args[1], ast.Tuple) else [node.args[1]]
            if {c.id for c in classes if isinstance(c, ast.Name)} & configs:
                found.append(f"{name}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_the_hub_does_not_branch_on_model_names():
    """A new model is four framework files, one spec and its tests: no file of the hub
    (tasks/*.py outside tasks/specs/) compares a model's name or config class to choose what to
    do, so nothing there needs a new branch. EXEMPT says which files may and why."""
    models = {*MODELS, *(spec.file for spec in MODELS.values())}
    configs = {spec.config_type.__name__ for spec in MODELS.values()}
    hub = sorted(p for p in (ROOT / "tasks").glob("*.py") if p.name not in EXEMPT)
    assert len(hub) >= 10
    found = [
        line for p in hub for line in branches_on_models(p.name, p.read_text(), models, configs)
    ]
    assert found == []
    # the scan finds what it is meant to find (the branches train.py had before the specs)
    old = (
        "def make_config(model, cfg):\n"
        "    if model in ('rnn', 'lstm', 'gru'): pass\n"
        "    if isinstance(cfg, (MLPConfig, LeNet5Config)): pass\n"
        "    print('mlp' if cfg else 'lenet5', {'mlp': 1})\n"  # data, not a branch
    )
    assert branches_on_models("old.py", old, models, configs) == [
        "old.py:2: model in ('rnn', 'lstm', 'gru')",
        "old.py:3: isinstance(cfg, (MLPConfig, LeNet5Config))",
    ]


def toy_spec():
    """A model the hub has never heard of: the MLP's framework files under another name, with one
    task, its own config rule (always one tanh hidden layer of 3), its own flags (no --hidden,
    --activation or regularisers) and one parity case."""
    from tasks.cases import Case, tabular
    from tasks.configs import MLPConfig
    from tasks.specs.base import GRADIENT_FLAGS, ModelSpec

    def make_config(data, opts):
        return MLPConfig(data.in_features, (3,), data.n_classes, "tanh", "sigmoid")

    return ModelSpec(
        name="toy",
        file="mlp",
        tasks=("xor",),
        defaults={"xor": dict(epochs=2, lr=0.5, batch_size=4)},
        summary="a toy: the MLP's files, one tanh layer of 3",
        config_type=MLPConfig,
        make_config=make_config,
        inputs=tabular,
        flags=GRADIENT_FLAGS,
        cases=(Case("toy", "tiny", MLPConfig(2, (3,), 2, "tanh", "sigmoid"), tabular, batch=4),),
    )


def test_a_new_spec_is_all_the_hub_needs(monkeypatch):
    """A spec added to tasks.specs.SPECS, and nothing else, is listed, trained with its own config
    rule and defaults, refused the flags it does not take, and parity-checked."""
    from typer.testing import CliRunner

    from tasks import parity, specs
    from tasks.cli import app

    spec = toy_spec()
    assert contract.spec_violations(spec) == []
    monkeypatch.setitem(specs.SPECS, "toy", spec)
    run = lambda *args: CliRunner().invoke(app, [str(a) for a in args])  # noqa: E731
    listed = run("list")
    assert listed.exit_code == 0 and "toy" in listed.stdout and spec.summary in listed.stdout
    refused = run("train", "toy", "--hidden", "8")
    assert refused.exit_code == 2
    assert "--hidden does not apply to toy (only to mlp, rnn, lstm, gru)" in refused.stderr
    trained = run("train", "toy", "--framework", "scratch", "--json")
    assert trained.exit_code == 0, trained.output[-2000:]
    doc = json.loads(trained.stdout)
    assert (doc["task"], doc["options"]["epochs"], doc["config"]["hidden"]) == ("xor", 2, [3])
    assert len(doc["results"][0]["history"]) == 2
    assert parity.CASES["toy"] == list(spec.cases) and "toy" not in parity.OPTIMIZER_CASES
    checked = run("parity", "toy", "--framework", "scratch", "--json")
    assert checked.exit_code == 0, checked.output[-2000:]
    records = json.loads(checked.stdout)
    assert (
        records and {r["case"] for r in records} == {"tiny"} and all(r["passed"] for r in records)
    )
    assert contract.protocol_for("toy") is contract.GradientModelModule


# ----------------------------------------------------------------------------- porting rules
PORTED = ("torch_impl", "tf_impl", "jax_impl")
SECTION = "# " + "-" * 77 + " canonical weights"
LAYOUT_CALLS = {  # what a layout rule is made of: each belongs in porting.py, not in a model file
    "transpose", "permute", "reshape", "view", "swapaxes", "moveaxis", "swapdims",
    "concatenate", "stack", "chunk", "split", "flip", "slice",
}  # fmt: skip


def layout_operations(source: str, first: int = 1, last: int | None = None) -> list[str]:
    """Layout operations inside the functions defined on lines first..last of `source`, and inside
    `forward_backward` (where the gradients are converted): `.T`, a call of LAYOUT_CALLS (`x.T`,
    `w.transpose(3, 2, 0, 1)`, `np.concatenate`, `slice(E, 2 * E)`, ...), and a subscript that
    slices (`bias_hh[2 * H :]`, `w[k * H : (k + 1) * H]`). Each as "line: code"."""
    found = []
    for fn in ast.walk(ast.parse(source)):
        if not isinstance(fn, ast.FunctionDef):
            continue
        inside = first <= fn.lineno and (last is None or fn.lineno <= last)
        if not inside and fn.name != "forward_backward":
            continue
        for node in ast.walk(fn):
            called = node.func if isinstance(node, ast.Call) else None
            name = getattr(called, "attr", getattr(called, "id", None))
            if (
                (isinstance(node, ast.Attribute) and node.attr in ("T", "mT"))
                or name in LAYOUT_CALLS
                or (isinstance(node, ast.Subscript) and any(
                    isinstance(s, ast.Slice) for s in ast.walk(node.slice)
                ))
            ):  # fmt: skip
                found.append(f"{node.lineno}: {ast.get_source_segment(source, node)}")
    return found


def canonical_section(source: str) -> tuple[int, int]:
    """Lines of the "canonical weights" section: its header to the next section header."""
    lines = source.splitlines()
    start = next(i for i, line in enumerate(lines, 1) if line == SECTION)
    end = next(
        (i for i, line in enumerate(lines, 1) if i > start and line.startswith("# " + "-" * 20)),
        len(lines),
    )
    return start, end


def model_files():
    """Every framework model file that writes canonical weights (transformer.py reuses attention.py's
    and writes none: it must not define them either)."""
    files = sorted({(fw, MODELS[m].file) for fw in PORTED for m in MODELS})
    return [pytest.param(fw, name, id=f"{fw}/{name}") for fw, name in files]


@pytest.mark.parametrize("framework, name", model_files())
def test_each_layout_rule_is_written_once_in_porting(framework, name):
    """issue 14: every model's load_canonical/export_canonical (and forward_backward's gradients) is
    built from its framework's porting.py, so each layout rule is written once, there.

    Precisely: in the model file's "canonical weights" section and in forward_backward, no function
    transposes, reshapes, permutes, concatenates, stacks, splits or slices anything (the operations
    every layout rule is made of: kernel `.T`, conv `transpose(2, 3, 1, 0)`, fc1's
    `reshape(-1, 16, 5, 5)`, the GRU gate-block swap, torch's in_proj and bias_hh row slices,
    LSTMCell's per-gate blocks); load_canonical calls porting.load_layers and the section calls
    porting.layers_to_canonical. A file with no section must not define load_canonical."""
    source = (ROOT / framework / f"{name}.py").read_text()
    if SECTION not in source:
        defined = {n.name for n in ast.walk(ast.parse(source)) if isinstance(n, ast.FunctionDef)}
        assert not defined & {"load_canonical", "export_canonical"}, f"{name}: no section"
        assert "load_canonical" in source  # imported from the file that writes them
        return
    start, end = canonical_section(source)
    assert layout_operations(source, start, end) == []
    section = "\n".join(source.splitlines()[start - 1 : end])
    assert "porting.load_layers(" in section and "porting.layers_to_canonical(" in section


def test_the_layout_check_can_fail():
    """The converters the model files had before the porting API are each reported."""
    before = """
def load_canonical(model, params):
    layer.kernel.assign(params["w"].T)
    variable.assign(value.reshape(-1, c, s, s).transpose(2, 3, 1, 0).reshape(c * s * s, -1))
    bias_hh[2 * hidden :] = t("b_hn")
    out[name] = (p, slice(i * E, (i + 1) * E))
    out["W_xh"] = np.concatenate([get(cell.ii.kernel) for i in gates])
    return w.reshape(3, hidden, *w.shape[1:])[GRU_ORDER].reshape(w.shape)

def unrelated():
    return x.T

def forward_backward(model, x, y):
    grads = {k: g.numpy().T for k, g in grads.items()}
"""
    found = layout_operations(before, 2, 9)
    for code in (
        'params["w"].T',
        "value.reshape(-1, c, s, s)",
        "bias_hh[2 * hidden :]",
        "slice(i * E, (i + 1) * E)",
        "np.concatenate(",
        "w.reshape(3, hidden, *w.shape[1:])",
        "g.numpy().T",
    ):
        assert any(code in f for f in found), code
    assert not any("x.T" in f for f in found)  # outside the section and forward_backward
