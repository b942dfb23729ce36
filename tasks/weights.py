"""Canonical weights: a flat dict of named NumPy arrays in the scratch layout, saved as safetensors.

The scratch layout follows the lesson: dense weight `(out, in)`, conv kernel `(out_c, in_c, kh, kw)`.
Each framework converts to and from it in one `load_canonical` / `export_canonical` pair; the
transforms are tabulated in docs/PORTING.md.

Files are checked before the safetensors library sees them (`read_header`): an empty, truncated,
padded or foreign file gets one sentence naming what is wrong instead of a library traceback.
`load_as` is what a command uses: floating tensors are converted to the run's dtype (float16 and
bfloat16 up-cast exactly; float64 into a float32 run rounds) and the conversion is reported;
integer and boolean tensors are refused, as are NaN and inf (`check`, which every framework's
`load_canonical` calls, refuses non-finite values too).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from pathlib import Path

import numpy as np

Params = dict[str, np.ndarray]
Shapes = Mapping[str, tuple[int, ...]]

# The stock layers each framework's porting.py maps both ways (`{layer}_to_canonical`,
# `{layer}_from_canonical`): one list, so the three porting modules cannot drift apart.
PORTED_LAYERS = (
    "dense", "conv2d", "embedding", "layer_norm", "batch_norm", "simple_rnn", "lstm", "gru", "mha",
)  # fmt: skip
# the layers whose gradients map to canonical differently from their weights (`grads=True`):
# batch norm's running statistics have none; torch's two RNN biases act as one
GRAD_LAYERS = ("batch_norm", "simple_rnn", "lstm", "gru")

# safetensors dtype codes -> bytes per element; the floats this suite loads, and what it refuses
FLOAT_CODES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": None}
INTEGER_CODES = {"BOOL", "U8", "I8", "U16", "I16", "U32", "I32", "U64", "I64"}
ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "BOOL": 1, "U8": 1, "I8": 1, "U16": 2,
            "I16": 2, "U32": 4, "I32": 4, "U64": 8, "I64": 8, "F8_E4M3": 1, "F8_E5M2": 1}  # fmt: skip
CODE_NAMES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}
MAX_HEADER = 100_000_000  # the safetensors library's own limit on the JSON header


class CanonicalWeightsError(ValueError):
    """Canonical weights do not match what a model expects; names every offending tensor."""


class WeightsFileError(CanonicalWeightsError):
    """A weights file is not a valid safetensors file (or holds tensors this suite cannot load)."""


def nonfinite(name: str, value) -> str | None:
    """'fc1.weight: 2 NaN, 1 inf' for a tensor holding non-finite values, else None."""
    value = np.asarray(value)
    if not np.issubdtype(value.dtype, np.floating) or np.isfinite(value).all():
        return None
    n_nan, n_inf = int(np.isnan(value).sum()), int(np.isinf(value).sum())
    return f"{name}: " + ", ".join(f"{n} {w}" for n, w in ((n_nan, "NaN"), (n_inf, "inf")) if n)


def check(params: Mapping[str, np.ndarray], shapes: Shapes, dtype) -> None:
    """Raise one CanonicalWeightsError listing every missing, extra, mis-shaped, mis-typed or
    non-finite (NaN, inf) tensor. Every framework's load_canonical calls this first."""
    dtype = np.dtype(dtype)
    problems = []
    for name in sorted(set(shapes) - set(params)):
        problems.append(f"missing {name}: expected shape {tuple(shapes[name])} {dtype}")
    for name in sorted(set(params) - set(shapes)):
        problems.append(
            f"extra {name}: shape {tuple(np.shape(params[name]))}, not a parameter of this model"
        )
    for name in sorted(set(params) & set(shapes)):
        value = params[name]
        actual_shape, actual_dtype = tuple(np.shape(value)), np.asarray(value).dtype
        if actual_shape != tuple(shapes[name]):
            problems.append(f"{name}: expected shape {tuple(shapes[name])}, got {actual_shape}")
        if actual_dtype != dtype:
            problems.append(f"{name}: expected dtype {dtype}, got {actual_dtype}")
        if bad := nonfinite(name, value):
            problems.append(bad)
    if problems:
        raise CanonicalWeightsError(
            f"{len(problems)} problem(s) in canonical weights: " + "; ".join(problems)
        )


def save(path: str | Path, params: Mapping[str, np.ndarray]) -> None:
    """Write canonical weights to a safetensors file."""
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in params.items()}, str(path))


def read_header(path: str | Path) -> dict[str, dict]:
    """The tensor entries of a safetensors file, after checking the whole layout against its size.

    A safetensors file is an 8-byte little-endian header length N, N bytes of JSON mapping each
    tensor name to {dtype, shape, data_offsets}, then the tensors' bytes, back to back from offset 0
    to the end of the file: no gaps, no overlaps, nothing after the last tensor.
    """
    path = Path(path)
    if not path.exists():
        raise WeightsFileError(f"{path}: no such canonical weights file")
    if not path.is_file():
        raise WeightsFileError(f"{path}: is a directory, not a safetensors file")
    size = path.stat().st_size
    not_st = "not a safetensors file"
    if size < 8:
        what = "empty" if size == 0 else f"only {size} bytes"
        raise WeightsFileError(f"{path}: {what}, {not_st} (it starts with an 8-byte header length)")
    try:
        with path.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > min(size - 8, MAX_HEADER):
                raise WeightsFileError(
                    f"{path}: header length {n} (first 8 bytes) exceeds the {size - 8} bytes that "
                    f"follow: truncated, or {not_st}"
                )
            raw = f.read(n)
    except OSError as e:
        raise WeightsFileError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise WeightsFileError(f"{path}: the {n}-byte header is not JSON: {not_st}") from None
    if not isinstance(header, dict):
        raise WeightsFileError(f"{path}: the header is not a JSON object: {not_st}")
    header.pop("__metadata__", None)
    spans = []
    for name, entry in header.items():
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("dtype"), str)
            and isinstance(entry.get("shape"), list)
            and all(isinstance(d, int) and d >= 0 for d in entry["shape"])
            and isinstance(entry.get("data_offsets"), list)
            and len(entry["data_offsets"]) == 2
            and all(isinstance(o, int) and o >= 0 for o in entry["data_offsets"])
        ):
            raise WeightsFileError(f"{path}: tensor {name!r} has a malformed header entry: {entry}")
        code, (begin, end) = entry["dtype"], entry["data_offsets"]
        if code not in ITEMSIZE:
            raise WeightsFileError(f"{path}: tensor {name!r} has an unknown dtype {code!r}")
        need = int(np.prod(entry["shape"], dtype=np.int64)) * ITEMSIZE[code]
        if end - begin != need:
            raise WeightsFileError(
                f"{path}: tensor {name!r} ({code}, shape {tuple(entry['shape'])}) needs {need} bytes, "
                f"its data_offsets [{begin}, {end}] hold {end - begin}"
            )
        spans.append((begin, end, name))
    data = size - 8 - n
    expected = 0
    for begin, end, name in sorted(spans):
        if begin != expected:
            raise WeightsFileError(
                f"{path}: tensor {name!r} starts at byte {begin} of the data, expected {expected}: "
                "tensors overlap or leave a gap"
            )
        expected = end
    if expected > data:
        raise WeightsFileError(
            f"{path}: truncated: the header places {expected} bytes of tensors, the file holds {data}"
        )
    if expected < data:
        raise WeightsFileError(
            f"{path}: {data - expected} trailing bytes after the last tensor: {not_st}, "
            "or one written over a longer file"
        )
    return header


def read(path: str | Path) -> tuple[Params, dict[str, str]]:
    """(tensors as stored, their safetensors dtype codes); bfloat16 tensors come back as float32
    (exact: bfloat16 is float32's upper half), since NumPy has no bfloat16."""
    from safetensors import SafetensorError, safe_open

    header = read_header(path)
    params: Params = {}
    try:
        with safe_open(str(path), framework="numpy") as f:
            for name, entry in header.items():
                if entry["dtype"] in ITEMSIZE and entry["dtype"] not in (
                    "BF16",
                    "F8_E4M3",
                    "F8_E5M2",
                ):
                    params[name] = f.get_tensor(name)
    except (SafetensorError, OSError, TypeError, ValueError) as e:  # a layout read_header missed
        raise WeightsFileError(f"{Path(path)}: not a readable safetensors file: {e}") from None
    if any(e["dtype"] == "BF16" for e in header.values()):
        raw = Path(path).read_bytes()
        start = 8 + struct.unpack("<Q", raw[:8])[0]
        for name, entry in header.items():
            if entry["dtype"] == "BF16":
                begin, end = entry["data_offsets"]
                bits = np.frombuffer(raw[start + begin : start + end], dtype="<u2")
                params[name] = (
                    (bits.astype(np.uint32) << 16).view(np.float32).reshape(entry["shape"])
                )
    return params, {name: entry["dtype"] for name, entry in header.items()}


def load(path: str | Path) -> Params:
    """Read canonical weights from a safetensors file, checked first (`read_header`); dtypes as stored."""
    params, codes = read(path)
    odd = sorted(n for n, c in codes.items() if c in ("F8_E4M3", "F8_E5M2"))
    if odd:
        raise WeightsFileError(
            f"{Path(path)}: 8-bit float tensors cannot be loaded: {', '.join(odd)}"
        )
    return params


def load_as(path: str | Path, dtype) -> tuple[Params, str | None]:
    """Weights from a file for a run in `dtype`, and a note saying what was converted (None if nothing).

    Checked as stored: integer and boolean tensors are refused (a model's weights are real numbers;
    casting ints would hide a wrong file), so are NaN and inf. Floating tensors of another precision
    are converted: float16 and bfloat16 up-cast exactly, float32 into float64 too; float64 into a
    float32 run rounds to nearest. Raises WeightsFileError naming the file and every offending tensor.
    """
    path, dtype = Path(path), np.dtype(dtype)
    params, codes = read(path)
    ints = sorted(n for n, c in codes.items() if c in INTEGER_CODES)
    if ints:
        raise WeightsFileError(
            f"{path}: integer tensors, weights must be floating point: "
            + ", ".join(f"{n} ({codes[n]})" for n in ints)
        )
    odd = sorted(n for n, c in codes.items() if c not in FLOAT_CODES)
    if odd:
        raise WeightsFileError(
            f"{path}: unsupported dtypes (float64, float32, float16 or bfloat16 only): "
            + ", ".join(f"{n} ({codes[n]})" for n in odd)
        )
    bad = [b for n in sorted(params) if (b := nonfinite(n, params[n]))]
    if bad:
        raise WeightsFileError(f"{path}: non-finite weights: " + "; ".join(bad))
    converted: dict[str, int] = {}
    for code in codes.values():
        if CODE_NAMES[code] != dtype.name:
            converted[CODE_NAMES[code]] = converted.get(CODE_NAMES[code], 0) + 1
    note = None
    if converted:
        how = "rounded to nearest" if dtype == np.float32 and "float64" in converted else "exact"
        note = (
            f"{path}: converted "
            + ", ".join(f"{v} {k} tensor(s)" for k, v in sorted(converted.items()))
            + f" to {dtype.name} ({how})"
        )
    return cast(params, dtype), note


def cast(params: Mapping[str, np.ndarray], dtype) -> Params:
    """A copy of `params` in `dtype` (float64 master weights -> float32 runs)."""
    return {k: np.asarray(v, dtype=dtype).copy() for k, v in params.items()}


def init_uniform(shapes: Shapes, seed: int, dtype=np.float64, nonzero_bias: bool = True) -> Params:
    """Seeded canonical init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for every tensor, torch's default rule.

    fan_in is the product of all but the first axis of a weight, (out, in, ...) -> in * ...;
    a 1-D tensor (a bias) takes the fan_in of the weight that precedes it in `shapes`.
    Biases are non-zero so a converter that drops or doubles a bias fails parity.
    """
    rng = np.random.default_rng(seed)
    params, fan_in = {}, 1
    for name, shape in shapes.items():
        if len(shape) >= 2:
            fan_in = int(np.prod(shape[1:]))
        bound = 1.0 / np.sqrt(fan_in)
        value = rng.uniform(-bound, bound, size=shape)
        if len(shape) == 1 and not nonzero_bias:
            value = np.zeros(shape)
        params[name] = value.astype(dtype)
    return params
