"""Bad input to `rosetta` (issue 11, items 1-10): exit status 2 and one line on stderr naming the
argument or file and the reason, or valid output; nothing finished is lost.

In process through typer's CliRunner (fast; a traceback there is `exit_code` 1 with `exception`
set), and in a real process only for Ctrl-C (SIGINT to a running `python -m tasks.cli`).
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tasks import data, weights
from tasks.cli import FLAG_MODELS, SEED_RANGE, app
from tasks.registry import FRAMEWORKS, MODELS, load_impl

ROOT = Path(__file__).resolve().parents[1]


def invoke(*args, **kwargs):
    return CliRunner().invoke(app, [str(a) for a in args], **kwargs)


def assert_refused(result, *needles):
    """Exit 2, one line on stderr, no traceback; the line contains every needle."""
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert result.exit_code == 2, (result.exit_code, result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


# ----------------------------------------------------------------------------- 1. --seed
SEED_COMMANDS = {
    "train": ["train", "mlp", "--framework", "scratch", "--epochs", "1"],
    "sample": ["sample", "rnn", "--framework", "scratch", "--epochs", "1", "--hidden", "4"],
    "saliency": ["saliency", "lenet5", "--framework", "scratch", "--epochs", "1"],
    "attention-map": ["attention-map", "--framework", "scratch", "--epochs", "0"],
}


@pytest.mark.parametrize("seed", [-1, 2**32, 2**64], ids=["-1", "2^32", "2^64"])
@pytest.mark.parametrize("command", list(SEED_COMMANDS))
def test_seed_outside_what_every_framework_accepts_is_refused(command, seed):
    result = invoke(*SEED_COMMANDS[command], "--seed", seed)
    assert_refused(result, "--seed", f"0..{2**32 - 1}", str(seed))


def test_the_largest_seed_runs_in_every_framework():
    """2**32 - 1 (scikit-learn's limit, the tightest measured) reaches NumPy, scikit-learn's moons,
    torch.Generator, keras.random.SeedGenerator and nnx.Rngs without an error."""
    assert SEED_RANGE == (0, 2**32 - 1)
    result = invoke("train", "mlp", "--epochs", "1", "--seed", 2**32 - 1, "--json")
    assert result.exit_code == 0, result.stderr[-2000:]
    rows = json.loads(result.stdout)["results"]
    assert [r["framework"] for r in rows] == list(FRAMEWORKS)


# ----------------------------------------------------------------------------- 9. flags a model does not use
@pytest.mark.parametrize(
    "args, flag",
    [
        (["train", "mlp", "--pooling", "max"], "--pooling"),
        (["train", "mlp", "--padding", "2"], "--padding"),
        (["train", "lenet5", "--final-norm"], "--final-norm"),
        (["train", "attention", "--no-final-norm"], "--final-norm"),
        (["train", "lenet5", "--hidden", "7"], "--hidden"),
        (["train", "attention", "--hidden", "7"], "--hidden"),
        (["train", "transformer", "--hidden", "7"], "--hidden"),
        (["train", "lstm", "--task", "sign", "--activation", "sigmoid"], "--activation"),
        (["train", "mlp", "--num-layers", "2"], "--num-layers"),
        (["train", "lenet5", "--bidirectional"], "--bidirectional"),
        (["train", "attention", "--activation", "relu"], "--activation"),
        (["train", "perceptron", "--hidden", "5"], "--hidden"),
        (["train", "perceptron", "--batch-size", "3"], "--batch-size"),
        (["train", "perceptron", "--activation", "tanh"], "--activation"),
        (["train", "perceptron", "--plot", "curves.png"], "--plot"),
        (["train", "gru", "--replicas", "2"], "--replicas"),
        (["train", "mlp", "--data-dir", "."], "--data-dir"),
        (["train", "perceptron", "--data-dir", "."], "--data-dir"),
        (["saliency", "lenet5", "--data-dir", "."], "--data-dir"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_a_flag_the_model_would_ignore_is_refused(args, flag):
    named = (
        "task" if flag == "--data-dir" else args[1]
    )  # --data-dir depends on the task, not the model
    assert_refused(invoke(*args, "--framework", "scratch"), flag, named)


def test_the_flag_table_names_real_models_and_flags():
    """FLAG_MODELS is the one table: its models exist, and each flag it names is a train option."""
    result = invoke("train", "--help")
    for flag, (models, why) in FLAG_MODELS.items():
        assert flag in result.stdout and why and set(models) <= set(MODELS), flag


# ----------------------------------------------------------------------------- 10. a diverged run
def strict_json(text: str):
    """json.loads that refuses NaN and Infinity, as strict parsers (JavaScript's JSON.parse) do."""

    def refuse(token):
        raise ValueError(f"not JSON: {token}")

    return json.loads(text, parse_constant=refuse)


def test_a_diverged_run_writes_valid_json_and_is_marked_in_every_framework():
    result = invoke("train", "mlp", "--lr", "1e10", "--epochs", "2", "--json")
    assert result.exit_code == 1, result.stderr[-2000:]
    rows = strict_json(result.stdout)["results"]
    assert [r["framework"] for r in rows] == list(FRAMEWORKS)
    for row in rows:
        assert row["diverged"] is True and row["diverged_epoch"] == 1, row
        assert row["final_loss"] is None and row["max_param_diff_vs_scratch"] is None, row
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 4 and all("diverged" in line and "--lr" in line for line in lines), lines


def test_a_diverged_run_is_marked_in_the_table():
    result = invoke("train", "mlp", "--framework", "scratch", "--lr", "1e10", "--epochs", "2")
    assert result.exit_code == 1 and "diverged" in result.stdout, result.output
    assert result.stderr.strip().splitlines()[-1] == (  # after the progress bar
        "mlp scratch diverged (the training loss became NaN or inf in epoch 1); try a smaller --lr"
    )


def test_a_sane_run_is_not_marked_diverged():
    result = invoke("train", "mlp", "--framework", "scratch", "--epochs", "2", "--json")
    assert result.exit_code == 0 and strict_json(result.stdout)["results"][0]["diverged"] is False


# ----------------------------------------------------------------------------- 7. Ctrl-C
def interrupt_when_loading(monkeypatch, module, framework):
    """Ctrl-C while `framework` is imported: the runner's load_impl raises KeyboardInterrupt for it."""
    real = module.load_impl

    def load_impl(fw, model):
        if fw == framework:
            raise KeyboardInterrupt
        return real(fw, model)

    monkeypatch.setattr(module, "load_impl", load_impl)


@pytest.mark.parametrize("as_json", [False, True], ids=["table", "json"])
def test_ctrl_c_while_a_framework_is_imported_keeps_the_finished_rows(monkeypatch, as_json):
    import tasks.train

    interrupt_when_loading(monkeypatch, tasks.train, "tf_impl")
    result = invoke("train", "mlp", "--epochs", "1", *(["--json"] if as_json else []))
    assert result.exit_code == 130, result.output[-2000:]
    if as_json:
        doc = strict_json(result.stdout)
        assert [r["framework"] for r in doc["results"]] == ["scratch", "torch_impl"]
        assert doc["interrupted"] is True and doc["interrupted_framework"] == "tf_impl"
    else:
        assert "scratch" in result.stdout and "torch_impl" in result.stdout
    assert result.stderr.strip().splitlines()[-1] == (
        "interrupted (Ctrl-C) while running tf_impl; finished: scratch, torch_impl"
    )


def test_ctrl_c_in_the_perceptron_keeps_the_finished_rows(monkeypatch):
    import tasks.perceptron_run

    interrupt_when_loading(monkeypatch, tasks.perceptron_run, "torch_impl")
    result = invoke("train", "perceptron", "--json")
    assert result.exit_code == 130, result.output[-2000:]
    assert [r["framework"] for r in strict_json(result.stdout)["results"]] == ["scratch"]
    assert "while running torch_impl; finished: scratch" in result.stderr


def test_ctrl_c_before_any_framework_ran_exits_130_with_one_line(monkeypatch):
    import tasks.train

    def load_task(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tasks.train, "load_task", load_task)
    result = invoke("train", "mlp", "--framework", "scratch")
    assert result.exit_code == 130
    assert result.stderr.strip().splitlines() == [
        "interrupted (Ctrl-C) in rosetta train; nothing had finished"
    ]


def test_sigint_to_a_real_rosetta_process_prints_the_finished_rows():
    """SIGINT once scratch has finished and torch is training (its progress bar has appeared)."""
    env = {**os.environ, "TTY_COMPATIBLE": "1"}  # rich draws the bars live into the pipe
    proc = subprocess.Popen(
        [sys.executable, "-m", "tasks.cli", "train", "mlp", "--epochs", "200"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    stderr, started = [], threading.Event()

    def read():
        for chunk in iter(lambda: proc.stderr.read1(4096), b""):
            stderr.append(chunk)
            if b"torch_impl" in b"".join(stderr[-3:]):
                started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert started.wait(timeout=240), b"".join(stderr)[-2000:]
        time.sleep(0.5)  # into torch's 200 epochs (3 s of CPU after its bar; scratch's: 0.2 s)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)  # the table is small: the pipe holds it until read
        stdout = proc.stdout.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(timeout=10)
    err_text = b"".join(stderr).decode(errors="replace")
    assert proc.returncode == 130, err_text[-2000:]
    assert "Traceback" not in err_text
    assert "scratch" in stdout and "tf_impl" not in stdout, stdout
    assert (
        err_text.strip()
        .splitlines()[-1]
        .endswith("interrupted (Ctrl-C) while running torch_impl; finished: scratch")
    ), err_text[-500:]


# ----------------------------------------------------------------------------- 2-4. weight files
def lenet5_weights(dtype=np.float64) -> dict[str, np.ndarray]:
    from tasks.configs import LeNet5Config

    return weights.cast(weights.init_uniform(LeNet5Config().param_shapes(), 0), dtype)


@pytest.fixture(scope="module")
def rnn_file(tmp_path_factory):
    """Weights written by `rosetta sample` itself (scratch, H = 4, one epoch)."""
    path = tmp_path_factory.mktemp("rnn") / "rnn.safetensors"
    result = invoke(*SAMPLE, "--weights", path, "--length", "1")
    assert result.exit_code == 0 and path.exists(), result.output[-2000:]
    return path


SAMPLE = ["sample", "rnn", "--framework", "scratch", "--epochs", "1", "--hidden", "4"]
SALIENCY = ["saliency", "lenet5", "--framework", "scratch", "--images", "2"]


def broken_files(raw: bytes) -> dict[str, bytes]:
    """Ways a weights file is not safetensors, made from a valid file's bytes."""
    (n,) = struct.unpack("<Q", raw[:8])
    return {
        "empty": b"",
        "random bytes": np.random.default_rng(0).bytes(len(raw)),
        "truncated in the length": raw[:5],
        "truncated in the header": raw[: 8 + n // 2],
        "truncated in the data": raw[: 8 + n + (len(raw) - 8 - n) // 2],
        "truncated by one byte": raw[:-1],
        "header length too large": struct.pack("<Q", n + 4) + raw[8:],
        "header length too small": struct.pack("<Q", n - 4) + raw[8:],
        "trailing bytes": raw + b"\0" * 8,
    }


def test_every_truncation_of_a_weights_file_is_named_not_a_traceback(tmp_path):
    """read_header checks the layout itself: every prefix of a valid file is refused by name."""
    good = tmp_path / "good.safetensors"
    weights.save(good, {"a.weight": np.ones((2, 3)), "a.bias": np.zeros(2, np.float32)})
    raw = good.read_bytes()
    cut = tmp_path / "cut.safetensors"
    for n in range(len(raw)):
        cut.write_bytes(raw[:n])
        with pytest.raises(weights.WeightsFileError, match=str(cut)):
            weights.load(cut)
    assert set(weights.load(good)) == {"a.weight", "a.bias"}


@pytest.mark.parametrize("kind", [*broken_files(struct.pack("<Q", 8) + b"\0" * 16), "a directory"])
@pytest.mark.parametrize("command", ["saliency", "sample"])
def test_a_weights_file_that_is_not_safetensors_is_refused(command, kind, tmp_path, rnn_file):
    if command == "saliency":
        weights.save(tmp_path / "w.safetensors", lenet5_weights())
        args = [*SALIENCY, "--out", tmp_path / "s.png"]
    else:
        (tmp_path / "w.safetensors").write_bytes(rnn_file.read_bytes())
        args = SAMPLE
    path = tmp_path / "w.safetensors"
    if kind == "a directory":
        path = tmp_path / "folder.safetensors"
        path.mkdir()
    else:
        path.write_bytes(broken_files(path.read_bytes())[kind])
    assert_refused(invoke(*args, "--weights", path), "--weights", str(path))
    assert not (tmp_path / "s.png").exists()


def test_integer_weights_are_refused_naming_them(tmp_path):
    path = tmp_path / "int.safetensors"
    weights.save(path, {k: (v * 100).astype(np.int64) for k, v in lenet5_weights().items()})
    result = invoke(*SALIENCY, "--weights", path, "--out", tmp_path / "s.png")
    assert_refused(
        result, "--weights", str(path), "integer", "conv1.weight (I64)", "fc3.bias (I64)"
    )


@pytest.mark.parametrize("stored", ["float16", "bfloat16", "float32"])
def test_other_float_dtypes_are_converted_and_said_so(stored, tmp_path):
    """float16 and bfloat16 (and float32 into a float64 run) are up-cast exactly, with a note."""
    path = tmp_path / "w.safetensors"
    params = lenet5_weights(np.float32)
    if stored == "bfloat16":
        import torch
        from safetensors.torch import save_file

        save_file({k: torch.from_numpy(v).to(torch.bfloat16) for k, v in params.items()}, path)
    else:
        weights.save(path, weights.cast(params, stored))
    result = invoke(*SALIENCY, "--weights", path, "--out", tmp_path / "s.png")
    assert result.exit_code == 0, result.output[-2000:]
    assert f"note: {path}: converted 10 {stored} tensor(s) to float64 (exact)" in result.stderr
    loaded, note = weights.load_as(path, "float64")
    assert all(loaded[k].dtype == np.float64 for k in loaded) and "exact" in note
    if stored == "bfloat16":  # bfloat16 keeps float32's top 16 bits: within 2**-8 relatively
        np.testing.assert_allclose(loaded["fc1.weight"], params["fc1.weight"], rtol=2**-8)


def test_float64_weights_into_a_float32_run_say_they_were_rounded(tmp_path):
    path = tmp_path / "w.safetensors"
    weights.save(path, lenet5_weights())
    _, note = weights.load_as(path, "float32")
    assert note == f"{path}: converted 10 float64 tensor(s) to float32 (rounded to nearest)"
    assert weights.load_as(path, "float64")[1] is None


def poisoned(params: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], str, str]:
    """A copy with one NaN in the first tensor and one inf in the last; their names."""
    params = {k: v.copy() for k, v in params.items()}
    first, last = sorted(params)[0], sorted(params)[-1]
    params[first].flat[0], params[last].flat[-1] = np.nan, -np.inf
    return params, first, last


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_load_canonical_refuses_nan_and_inf_in_every_model(framework):
    """weights.check, which every load_canonical calls first, names each non-finite tensor. The
    model is built holding finite weights (parity.loaded_model: in jax_impl no initial weights are
    drawn, an XLA program per shape), then loaded with the poisoned copy and with the finite one."""
    from tasks import parity

    for model, cases in parity.CASES.items():
        cfg = cases[0].config
        impl = load_impl(framework, model)
        finite = weights.init_uniform(cfg.param_shapes(), 0)
        net = parity.loaded_model(impl, framework, cfg, finite, "float64")
        params, first, last = poisoned(finite)
        with pytest.raises(weights.CanonicalWeightsError) as info:
            impl.load_canonical(net, params)
        assert f"{first}: 1 NaN" in str(info.value) and f"{last}: 1 inf" in str(info.value), model
        impl.load_canonical(net, weights.init_uniform(cfg.param_shapes(), 0))  # finite: accepted


@pytest.mark.parametrize("command", ["saliency", "sample"])
def test_non_finite_weights_are_refused_by_the_cli_naming_each_tensor(command, tmp_path, rnn_file):
    path = tmp_path / "w.safetensors"
    start = lenet5_weights() if command == "saliency" else weights.load(rnn_file)
    params, first, last = poisoned(start)
    weights.save(path, params)
    args = [*SALIENCY, "--out", tmp_path / "s.png"] if command == "saliency" else SAMPLE
    result = invoke(*args, "--weights", path)
    assert_refused(result, "--weights", str(path), f"{first}: 1 NaN", f"{last}: 1 inf")
    assert not (tmp_path / "s.png").exists()


# ----------------------------------------------------------------------------- 8. a corrupt cached run
def test_a_corrupt_cached_run_names_the_file_and_retrain(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # runs/ is relative to the working directory
    first = invoke(*SAMPLE, "--length", "5")
    assert first.exit_code == 0, first.output[-2000:]
    (cached,) = (tmp_path / "runs").iterdir()
    cached.write_bytes(cached.read_bytes()[:-100])  # a run cut short by a full disk, say
    assert_refused(invoke(*SAMPLE), str(Path("runs") / cached.name), "truncated", "--retrain")
    again = invoke(*SAMPLE, "--retrain", "--length", "5")
    assert again.exit_code == 0 and "trained and saved to" in again.stderr, again.output[-2000:]
    later = invoke(*SAMPLE, "--length", "5")
    assert later.exit_code == 0 and "loaded from" in later.stderr, later.output[-2000:]


# ----------------------------------------------------------------------------- 5. MNIST IDX folders
def mnist_folder(folder: Path, **replace) -> Path:
    """The four tiny MNIST IDX files (parity_tests.test_data), with some arrays replaced."""
    from parity_tests.test_data import write_tiny_mnist

    write_tiny_mnist(folder, n_train=6, n_test=4)
    for key, array in replace.items():
        data.write_idx(folder / data.MNIST_FILES[key], array)
    return folder


def images(n: int, size: int = 28, dtype=np.uint8) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (n, size, size)).astype(dtype)


def gzipped(folder: Path, key: str, transform=lambda raw: raw) -> Path:
    """Replace one file by its .gz twin, its compressed bytes passed through `transform`."""
    path = folder / data.MNIST_FILES[key]
    gz = path.with_name(path.name + ".gz")
    gz.write_bytes(transform(gzip.compress(path.read_bytes())))
    path.unlink()
    return gz


MNIST_CASES = {
    # name: (how to break the folder, what the one line must say)
    "corrupt gzip": (lambda d: gzipped(d, "train_images", lambda raw: raw[:10] + b"x" * 50), "gzip"),
    "not gzip at all": (lambda d: gzipped(d, "test_labels", lambda raw: b"plain bytes"), "gzip"),
    "truncated gzip stream": (lambda d: gzipped(d, "train_images", lambda raw: raw[:-30]), "truncated"),
    "a directory in a file's place": (
        lambda d: ((d / data.MNIST_FILES["test_images"]).unlink(), (d / data.MNIST_FILES["test_images"]).mkdir()),
        "is a directory",
    ),
    "label 10": (lambda d: mnist_folder(d, train_labels=np.array([0, 1, 2, 10, 4, 5], np.uint8)), "label 10 at index 3"),
    "label -1 as int8": (lambda d: mnist_folder(d, test_labels=np.array([0, -1, 2, 3], np.int8)), "type code 0x09"),
    "zero images": (lambda d: mnist_folder(d, train_images=images(0), train_labels=np.zeros(0, np.uint8)), "no images"),
    "train and test sizes differ": (lambda d: mnist_folder(d, test_images=images(4, 20)), "test images 20x20"),
    "float images": (lambda d: mnist_folder(d, train_images=images(6, dtype=">f4")), "type code 0x0D"),
    "images of 0 rows": (lambda d: mnist_folder(d, test_images=np.zeros((4, 0, 28), np.uint8)), "no images"),
    "header says more images than the data holds": (
        lambda d: (d / data.MNIST_FILES["train_images"]).write_bytes(
            struct.pack(">HBBIII", 0, 8, 3, 7, 28, 28) + images(6).tobytes()
        ),
        "expected 5504 for shape (7, 28, 28)",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(MNIST_CASES))
def test_a_broken_mnist_folder_is_refused_naming_the_file(case, tmp_path):
    mnist_folder(tmp_path)
    breaks, needle = MNIST_CASES[case]
    breaks(tmp_path)
    result = invoke("train", "mlp", "--task", "mnist", "--data-dir", tmp_path, "--framework", "scratch", "--epochs", "1")  # fmt: skip
    assert_refused(result, str(tmp_path), needle)


def test_mnist_images_too_large_for_lenet5_are_refused(tmp_path):
    mnist_folder(tmp_path, train_images=images(6, 40), test_images=images(4, 40))
    args = ["--task", "mnist", "--data-dir", tmp_path, "--framework", "scratch", "--epochs", "1"]
    assert_refused(invoke("train", "lenet5", *args), f"--data-dir {tmp_path}", "40x40", "32x32")
    assert invoke("train", "mlp", *args).exit_code == 0  # the MLP takes any size: 1,600 inputs


# ----------------------------------------------------------------------------- 6. output paths
@pytest.fixture
def no_training(monkeypatch):
    """Any training or map computation fails the test: the path must be refused before any work."""
    import tasks.cli
    import tasks.sample
    import tasks.train

    def forbidden(*args, **kwargs):
        raise AssertionError("work started before the output path was checked")

    for module, name in (
        (tasks.train, "run"),
        (tasks.cli, "saliency_maps"),
        (tasks.sample, "sample"),
    ):
        monkeypatch.setattr(module, name, forbidden)
    monkeypatch.setattr(tasks.cli, "load_task", forbidden, raising=False)


READ_ONLY = Path("/sys/rosetta-test.png")  # sysfs: no new files, not even for root


@pytest.mark.parametrize(
    "where", ["missing directory", "a directory", "read-only place", "unknown format"]
)
@pytest.mark.parametrize(
    "command", ["train --plot", "saliency --out", "attention-map --out", "sample --weights"]
)
def test_an_unwritable_output_path_is_refused_before_any_work(
    command, where, tmp_path, no_training
):
    if where == "unknown format" and command == "sample --weights":
        pytest.skip("weights are safetensors whatever the suffix")
    if where == "read-only place" and not READ_ONLY.parent.is_dir():
        pytest.skip("no /sys on this system")
    path = {
        "missing directory": tmp_path / "no" / "such" / "dir" / "out.png",
        "a directory": tmp_path,
        "read-only place": READ_ONLY,
        "unknown format": tmp_path / "out.xyz",
    }[where]
    if command == "sample --weights" and where == "missing directory":
        path = Path(
            "/sys/no/such/dir/w.safetensors"
        )  # sample creates runs/-like folders: make that fail
    name, flag = command.split()
    args = {
        "train": ["train", "mlp", "--framework", "scratch"],
        "saliency": ["saliency", "lenet5", "--framework", "scratch"],
        "attention-map": ["attention-map", "--framework", "scratch"],
        "sample": SAMPLE,
    }[name]
    assert_refused(
        invoke(*args, flag, path), flag, str(path.parent if where != "a directory" else path)
    )


def test_plot_without_a_suffix_reports_the_file_it_wrote(tmp_path):
    result = invoke(
        "train", "mlp", "--framework", "scratch", "--epochs", "2", "--plot", tmp_path / "curves"
    )
    assert result.exit_code == 0, result.output[-2000:]
    assert (tmp_path / "curves.png").is_file() and not (tmp_path / "curves").exists()
    assert (
        result.stderr.strip().splitlines()[-1]
        == f"loss curves written to {tmp_path / 'curves.png'}"
    )


def test_sample_creates_the_folder_of_a_new_weights_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "new" / "folder" / "rnn.safetensors"
    result = invoke(*SAMPLE, "--weights", path, "--length", "3")
    assert result.exit_code == 0 and path.is_file(), result.output[-2000:]


def test_every_json_document_is_strict():
    """train, parity and all print through dump_json: NaN and inf become null, never bare NaN."""
    from tasks.cli import dump_json

    doc = {"a": float("nan"), "b": [1.5, float("inf"), {"c": -float("inf")}], "d": "NaN"}
    assert strict_json(dump_json(doc, indent=1)) == {
        "a": None,
        "b": [1.5, None, {"c": None}],
        "d": "NaN",
    }
