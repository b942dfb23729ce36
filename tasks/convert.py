"""`rosetta convert`: a checkpoint of one of the suite's models from one framework's own format to
another's, through the canonical weights, then a probe batch through both sides.

Formats (each framework's own save/load, nothing of ours inside the files):

| format | file | written with | read with |
|---|---|---|---|
| torch | `.pt` or `.safetensors` | `torch.save(model.state_dict())` / `safetensors.torch.save_file` | `torch.load(weights_only=True)` / `safetensors.torch.load_file`, `load_state_dict` |
| keras | `.weights.h5` | `model.save_weights` | `model.load_weights` (the model built first) |
| flax | a directory | orbax-checkpoint `StandardCheckpointer().save(path, nnx.state(model, (nnx.Param, nnx.BatchStat)))` | `StandardCheckpointer().restore(path, abstract state)`, `nnx.update` |
| canonical | `.safetensors` | `tasks.weights.save` | `tasks.weights.load_as` |

orbax-checkpoint is the library Flax's own documentation uses to save an `nnx.State`, and it is
installed with flax (a dependency of flax 0.12), so it adds nothing to the environment.

Every model goes through its public `create_model` / `load_canonical` / `export_canonical` (the
stable contract); the canonical side of a probe runs the scratch NumPy model.
"""

from __future__ import annotations

import functools
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks import weights
from tasks.registry import load_impl

FORMATS = ("torch", "keras", "flax", "canonical")
FRAMEWORK = {"torch": "torch_impl", "keras": "tf_impl", "flax": "jax_impl", "canonical": "scratch"}
TOLERANCE = {"float32": 1e-5, "float64": 1e-10}


class ConvertError(ValueError):
    """A file that does not fit the model config (names the tensors), or an unusable path."""


@dataclass
class Side:
    fmt: str
    impl: object
    model: object


def _mismatch(kind: str, expected: dict, found: dict) -> None:
    """Raise one ConvertError naming every missing, extra and mis-shaped tensor."""
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    shapes = [
        f"{k} {tuple(found[k])} (expected {tuple(expected[k])})"
        for k in sorted(set(expected) & set(found))
        if tuple(found[k]) != tuple(expected[k])
    ]
    problems = []
    if missing:
        problems.append("missing " + ", ".join(missing))
    if extra:
        problems.append("unexpected " + ", ".join(extra))
    if shapes:
        problems.append("wrong shape " + "; ".join(shapes))
    if problems:
        raise ConvertError(f"{kind} does not fit the config: " + " | ".join(problems))


# ----------------------------------------------------------------------------- per format
def _torch_read(model, path: Path):
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, weights_only=True, map_location="cpu")
    if not isinstance(state, dict):
        raise ConvertError(f"{path}: not a state_dict (a {type(state).__name__})")
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    _mismatch(f"torch state_dict {path}", expected, {k: tuple(v.shape) for k, v in state.items()})
    model.load_state_dict(state)


def _torch_write(model, path: Path) -> None:
    import torch

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)


def _h5_shapes(path: Path) -> dict[str, tuple]:
    import h5py

    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(
            lambda name, obj: out.update({name: obj.shape}) if hasattr(obj, "shape") else None
        )
    return out


def _keras_read(model, path: Path):
    if not path.name.endswith(".weights.h5"):
        raise ConvertError(f"{path}: a Keras weights file ends in .weights.h5")
    with tempfile.TemporaryDirectory() as tmp:  # what this config's model writes, to compare with
        reference = Path(tmp) / "reference.weights.h5"
        model.save_weights(reference)
        expected = _h5_shapes(reference)
    try:
        found = _h5_shapes(path)
    except OSError as e:
        raise ConvertError(f"{path}: not an HDF5 file ({e})") from None
    _mismatch(f"Keras weights {path}", expected, found)
    model.load_weights(path)


def _keras_write(model, path: Path) -> None:
    if not path.name.endswith(".weights.h5"):
        raise ConvertError(f"{path}: Keras's save_weights needs a name ending in .weights.h5")
    model.save_weights(path)


def _flax_state(model):
    from flax import nnx

    return nnx.state(model, (nnx.Param, nnx.BatchStat))


def _flax_read(model, path: Path):
    import jax
    import orbax.checkpoint as ocp
    from flax import nnx

    if not path.is_dir():
        raise ConvertError(f"{path}: an orbax checkpoint is a directory")
    state = _flax_state(model)
    expected = {
        "/".join(map(str, k)): v.shape
        for k, v in jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(state))
    }
    with ocp.StandardCheckpointer() as ckptr:
        try:
            meta = ckptr.metadata(path.resolve())
        except (FileNotFoundError, ValueError) as e:
            raise ConvertError(f"{path}: not an orbax checkpoint ({e})") from None
        tree = getattr(meta, "item_metadata", meta)
        tree = getattr(tree, "tree", tree)
        found = {"/".join(map(str, k)): v.shape for k, v in jax.tree_util.tree_leaves_with_path(
            tree, is_leaf=lambda x: hasattr(x, "shape"))}  # fmt: skip
        expected = {_path_key(k): v for k, v in expected.items()}
        found = {_path_key(k): v for k, v in found.items()}
        _mismatch(f"Flax checkpoint {path}", expected, found)
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
        restored = ckptr.restore(path.resolve(), abstract)
    nnx.update(model, restored)


def _path_key(key: str) -> str:
    """A tree path written by jax ("['rnn']/['cell']/...", ".value") as rnn.cell...."""
    parts = [p.strip("[]'\".") for p in key.split("/")]
    return ".".join(p for p in parts if p and p != "value")


def _flax_write(model, path: Path) -> None:
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(path.resolve(), _flax_state(model), force=True)
        ckptr.wait_until_finished()


# ----------------------------------------------------------------------------- the conversion
def create(fmt: str, model_name: str, cfg, dtype: str, probe_x: np.ndarray) -> Side:
    impl = load_impl(FRAMEWORK[fmt], model_name)
    model = impl.create_model(cfg, seed=0, dtype=dtype)
    if fmt == "keras":  # Keras creates the weights on the first call
        model(probe_x[:1])
    return Side(fmt, impl, model)


def read(side: Side, path: Path, dtype: str) -> dict[str, np.ndarray]:
    """Load `path` into the side's model; return the canonical weights."""
    if side.fmt == "canonical":
        try:
            params, _ = weights.load_as(path, dtype)
        except weights.WeightsFileError as e:
            raise ConvertError(str(e)) from None
        try:
            side.impl.load_canonical(side.model, params)
        except weights.CanonicalWeightsError as e:
            raise ConvertError(f"canonical weights {path} do not fit the config: {e}") from None
        return side.impl.export_canonical(side.model)
    reader = {"torch": _torch_read, "keras": _keras_read, "flax": _flax_read}[side.fmt]
    try:
        reader(side.model, path)
    except ConvertError:
        raise
    except Exception as e:  # not a file of that format at all (unpickling, HDF5, orbax errors)
        raise ConvertError(f"{path}: cannot be read as a {side.fmt} checkpoint ({e})") from None
    return side.impl.export_canonical(side.model)


def write(side: Side, params: dict[str, np.ndarray], path: Path) -> None:
    side.impl.load_canonical(side.model, params)
    if side.fmt == "canonical":
        weights.save(path, side.impl.export_canonical(side.model))
    else:
        {"torch": _torch_write, "keras": _keras_write, "flax": _flax_write}[side.fmt](
            side.model, path
        )


def logits(side: Side, x: np.ndarray) -> np.ndarray:
    """The model's output (its logits) for a probe batch, in inference mode."""
    if side.fmt == "torch":
        import torch

        side.model.eval()
        with torch.no_grad():
            return side.model(torch.from_numpy(x)).cpu().numpy()
    if side.fmt == "keras":
        out = side.model(x, training=False)
    elif side.fmt == "flax":
        import jax.numpy as jnp

        from jax_impl.regularize import eval_view

        out = _flax_forward()(eval_view(side.model), jnp.asarray(x))
    else:
        if hasattr(side.model, "set_training"):
            side.model.set_training(False)
        out = side.model.forward(x)
    return np.asarray(out)


@functools.cache
def _flax_forward():
    """The model's forward under nnx.jit: compiled once per config and probe shape (models of one
    config share the static graph), where eager calls compiled a recurrent model's nnx.scan anew for
    every model (0.45 s each, 27 times in test_convert's grid)."""
    from flax import nnx

    return nnx.jit(lambda model, x: model(x))


def convert(
    model_name: str, cfg, src: Path, dst: Path, src_fmt: str, dst_fmt: str, dtype: str, probe_x
) -> dict:
    """SRC (src_fmt) -> canonical -> DST (dst_fmt); then both files reloaded into fresh models and
    compared on `probe_x`. Raises ConvertError for a file that does not fit the config."""
    a = create(src_fmt, model_name, cfg, dtype, probe_x)
    params = read(a, src, dtype)
    b = create(dst_fmt, model_name, cfg, dtype, probe_x)
    write(b, params, dst)
    # reload the written file into a fresh model, so the probe checks the file, not the memory
    b = create(dst_fmt, model_name, cfg, dtype, probe_x)
    read(b, dst, dtype)
    err = float(np.max(np.abs(logits(a, probe_x) - logits(b, probe_x))))
    tol = TOLERANCE[dtype]
    return {
        "model": model_name,
        "from": src_fmt,
        "to": dst_fmt,
        "src": str(src),
        "dst": str(dst),
        "dtype": dtype,
        "probe_batch": int(len(probe_x)),
        "max_abs_error": err,
        "tolerance": tol,
        "passed": bool(err <= tol),
    }


# ----------------------------------------------------------------------------- the command's helpers
def convertible() -> tuple[str, ...]:
    """The models `rosetta convert` takes: every gradient model (the perceptron's rule has no
    framework checkpoint of its own), in the README's order."""
    from tasks.specs import SPECS, in_file_order

    return in_file_order(name for name, spec in SPECS.items() if spec.gradient)


MODELS = convertible()  # mlp, lenet5, rnn, lstm, gru, attention, transformer
SUFFIX = {
    "torch_impl": ".pt",
    "tf_impl": ".weights.h5",
    "jax_impl": ".orbax",
    "scratch": ".safetensors",
}


def config_and_probe(model: str, task: str, opts, n_probe: int = 8):
    """The model config exactly as `rosetta train` builds it (tasks.train.make_config on the task's
    data) and a probe batch: the first `n_probe` test inputs, floats in the run's dtype."""
    from tasks.data import load_task
    from tasks.train import make_config, prepare

    opts = opts.with_defaults(model, task)
    data = prepare(model, load_task(task, seed=opts.seed, data_dir=opts.data_dir), opts)
    x = np.asarray(data.x_test[:n_probe])
    if np.issubdtype(x.dtype, np.floating):
        x = x.astype(opts.dtype)
    return make_config(model, data, opts), x


def save_native(framework: str, impl, net, folder: Path, model: str) -> Path:
    """A trained model in its framework's own format (`rosetta train --save DIR`): the file
    `rosetta convert --from <format>` reads. Returns the path written."""
    fmt = {v: k for k, v in FRAMEWORK.items()}[framework]
    path = Path(folder) / f"{model}{SUFFIX[framework]}"
    side = Side(fmt, impl, net)
    if fmt == "canonical":
        weights.save(path, impl.export_canonical(net))
    else:
        {"torch": _torch_write, "keras": _keras_write, "flax": _flax_write}[fmt](side.model, path)
    return path
