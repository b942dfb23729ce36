"""Shared datasets: NumPy arrays with a fixed, seeded split and a seeded batch order.

Every framework trains on exactly these arrays, in exactly the order `batches` gives, so a
difference between two runs is the framework's, never the data's.

Layouts (the suite's legend): tabular `(B, D)`, images `(B, C, H, W)`, sequences `(B, T, D)`.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

TEST_FRACTION = 0.25  # one split rule for every shipped task


@dataclass(frozen=True)
class Dataset:
    """A task's arrays: float features, integer labels (a regression: float targets (B, K), and
    n_classes counts the K targets), and what they mean."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int
    meta: dict = field(default_factory=dict)

    @property
    def in_features(self) -> int:
        return int(np.prod(self.x_train.shape[1:]))

    @property
    def regression(self) -> bool:
        """Float targets to predict (an identity head, mean squared error), not class labels."""
        return self.y_train.dtype.kind == "f"


def split(name: str, x: np.ndarray, y: np.ndarray, n_classes: int, seed: int, **meta) -> Dataset:
    """Seeded train/test split; the same seed gives the same split on every machine."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    n_test = int(round(TEST_FRACTION * len(x)))
    test, train = order[:n_test], order[n_test:]
    return Dataset(name, x[train], y[train], x[test], y[test], n_classes, dict(meta))


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The permutation of `n` training examples used in `epoch` (seeded by seed and epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def batches(n: int, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """Index arrays of one epoch's mini-batches; the last one may be smaller."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = epoch_order(n, seed, epoch)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


# ----------------------------------------------------------------------------- shipped tasks
def moons(seed: int = 0, n_samples: int = 1000, noise: float = 0.2) -> Dataset:
    """scikit-learn's two interleaving half circles: 2 features, 2 classes."""
    from sklearn.datasets import make_moons

    x, y = make_moons(n_samples=n_samples, noise=noise, random_state=seed)
    return split("moons", x.astype(np.float64), y.astype(np.int64), 2, seed, noise=noise)


def digits(seed: int = 0) -> Dataset:
    """scikit-learn's shipped 8x8 handwritten digits (1,797 images), scaled to [0, 1], flattened."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype(np.float64)  # (B, 64); pixel values are 0..16
    return split("digits", x, d.target.astype(np.int64), 10, seed, image_shape=(8, 8))


def diabetes(seed: int = 0) -> Dataset:
    """scikit-learn's shipped diabetes regression (442 patients): 10 features (age, sex, bmi, blood
    pressure, six blood serum measurements) -> disease progression one year later, a target (B, 1).

    Features and target are standardised with the training split's mean and standard deviation (so
    the test split stays unseen): a test mean squared error of about 1 is predicting the mean.
    meta holds the target's mean and std (to turn predictions back into the raw scale) and two
    baselines: the test MSE of the training mean and of least squares (a linear model, the best an
    identity-activation MLP can do).
    """
    from sklearn.datasets import load_diabetes

    d = load_diabetes()
    x, y = d.data.astype(np.float64), d.target.astype(np.float64)[:, None]  # (442, 10), (442, 1)
    data = split("diabetes", x, y, 1, seed, features=list(d.feature_names))
    (x_mean, x_std), (y_mean, y_std) = [
        (a.mean(axis=0), a.std(axis=0)) for a in (data.x_train, data.y_train)
    ]
    norm_x, norm_y = lambda a: (a - x_mean) / x_std, lambda a: (a - y_mean) / y_std
    data = replace(
        data,
        x_train=norm_x(data.x_train), x_test=norm_x(data.x_test),
        y_train=norm_y(data.y_train), y_test=norm_y(data.y_test),
    )  # fmt: skip
    with_bias = lambda a: np.c_[a, np.ones(len(a))]  # (B, 10) -> (B, 11)
    w = np.linalg.lstsq(with_bias(data.x_train), data.y_train, rcond=None)[0]  # (11, 1)
    mse = lambda pred: float(np.mean((pred - data.y_test) ** 2))
    baselines = {
        "mean_test_mse": mse(data.y_train.mean()),
        "least_squares_test_mse": mse(with_bias(data.x_test) @ w),
    }
    meta = {"target_mean": float(y_mean[0]), "target_std": float(y_std[0]), "baselines": baselines}
    return replace(data, meta={**data.meta, **meta})


def resize_bilinear(images: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resampling of (B, C, H, W) images to (B, C, size, size), half-pixel centres.

    Deterministic and separable: one (size, H) interpolation matrix per axis, output pixel i
    sampling the input at (i + 0.5) * H / size - 0.5 (torch's `align_corners=False` rule).
    """

    def matrix(n_in: int) -> np.ndarray:
        src = np.clip((np.arange(size) + 0.5) * n_in / size - 0.5, 0, n_in - 1)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        m = np.zeros((size, n_in))
        np.add.at(m, (np.arange(size), lo), 1 - (src - lo))
        np.add.at(m, (np.arange(size), hi), src - lo)
        return m  # (size, n_in), each row sums to 1

    rows, cols = matrix(images.shape[2]), matrix(images.shape[3])
    return np.einsum("ih,bchw,jw->bcij", rows, images, cols)  # (B, C, H, W) -> (B, C, size, size)


def pad_to(images: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad (B, C, H, W) images evenly to (B, C, size, size), as LeNet-5 pads 28x28 MNIST to 32x32."""
    ph, pw = size - images.shape[2], size - images.shape[3]
    if (
        ph < 0 or pw < 0
    ):  # a DataFileError (a ValueError): the files hold images the model cannot take
        raise DataFileError(
            f"images of {images.shape[2]}x{images.shape[3]} do not fit in the model's {size}x{size} input"
        )
    return np.pad(images, ((0, 0), (0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)))


def digits32(seed: int = 0) -> Dataset:
    """The `digits` images as LeNet-5 sees MNIST: (B, 1, 32, 32), a 28x28 digit centred in a 32x32 field.

    Each 8x8 image is resampled bilinearly to 28x28 (`resize_bilinear`) and zero-padded by 2 on
    every side (`pad_to`), like the paper's MNIST input. Same images, labels and split as `digits`.
    """
    d = digits(seed)
    to32 = lambda a: pad_to(
        resize_bilinear(a.reshape(-1, 1, 8, 8), 28), 32
    )  # (B, 64) -> (B, 1, 32, 32)
    return replace(
        d,
        name="digits32",
        x_train=to32(d.x_train),
        x_test=to32(d.x_test),
        meta={**d.meta, "image_shape": (32, 32)},
    )


# ----------------------------------------------------------------------------- perceptron tasks
GATE_INPUTS = np.array(
    [[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float64
)  # (4, 2): the whole truth table
GATE_OUTPUTS = {"or": [0, 1, 1, 1], "and": [0, 0, 0, 1], "xor": [0, 1, 1, 0]}


def gate(name: str) -> Dataset:
    """A two-input logic gate: its truth table is both the training and the test set (4 rows).

    OR and AND are linearly separable; XOR is not, so no single line (no perceptron) gets all four.
    """
    y = np.array(GATE_OUTPUTS[name], dtype=np.int64)
    return Dataset(name, GATE_INPUTS.copy(), y, GATE_INPUTS.copy(), y.copy(), 2, {"gate": name})


def or_gate(seed: int = 0) -> Dataset:
    return gate("or")  # the seed is unused: a truth table has no randomness


def and_gate(seed: int = 0) -> Dataset:
    return gate("and")


def xor_gate(seed: int = 0) -> Dataset:
    return gate("xor")


def iris(seed: int = 0) -> Dataset:
    """scikit-learn's shipped iris: setosa (0) versus versicolor (1), all four features in cm.

    The two species are linearly separable (petal length alone splits them), so the perceptron converges.
    """
    from sklearn.datasets import load_iris

    d = load_iris()
    keep = d.target < 2  # drop virginica, which overlaps versicolor
    x = d.data[keep].astype(np.float64)  # (100, 4)
    return split(
        "iris", x, d.target[keep].astype(np.int64), 2, seed, features=list(d.feature_names)
    )


def blobs(seed: int = 0, n_samples: int = 200, margin: float = 0.5) -> Dataset:
    """Two seeded 2-D Gaussian blobs, centres (-2, -2) and (2, 2), unit spread.

    Separable by construction: a point is kept only if it lies on its own side of the line
    x0 + x1 = 0 and at least `margin` from it, so the perceptron convergence theorem applies.
    """
    rng = np.random.default_rng(seed)
    normal = np.array([1.0, 1.0]) / np.sqrt(2.0)  # unit normal of the separating line
    xs, ys = [], []
    while sum(len(y) for y in ys) < n_samples:
        y = rng.integers(0, 2, n_samples)
        x = rng.normal(size=(n_samples, 2)) + np.where(y[:, None] == 1, 2.0, -2.0)  # (B, 2)
        keep = (2 * y - 1) * (
            x @ normal
        ) >= margin  # signed distance to the line, >= margin on its own side
        xs.append(x[keep])
        ys.append(y[keep])
    x, y = np.concatenate(xs)[:n_samples], np.concatenate(ys)[:n_samples].astype(np.int64)
    return split("blobs", x, y, 2, seed, margin=margin)


# ----------------------------------------------------------------------------- MNIST (IDX files)
MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_CODES = {np.dtype(v): k for k, v in _IDX_DTYPES.items()}


class DataFileError(ValueError):
    """A data file is missing, truncated or not what it claims to be."""


def read_idx(path: str | Path, expected_ndim: int | None = None, expected_dtype=None) -> np.ndarray:
    """Read one IDX file (plain or .gz), checking its header against its length (and, if given, its
    number of dimensions and element type). Every problem is a DataFileError naming the file."""
    path = Path(path)
    if not path.exists():
        raise DataFileError(f"{path}: file not found (expected an IDX file)")
    if not path.is_file():
        raise DataFileError(f"{path}: is a directory, not an IDX file")
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except EOFError:  # gzip's own words: "Compressed file ended before the end-of-stream marker"
        raise DataFileError(f"{path}: truncated gzip stream (the file ends mid-stream)") from None
    except (gzip.BadGzipFile, zlib.error) as e:
        raise DataFileError(f"{path}: not a valid gzip file ({e})") from None
    except OSError as e:
        raise DataFileError(f"{path}: cannot read: {e.strerror or e}") from None
    if raw[:2] == b"\x1f\x8b" and path.suffix != ".gz":
        raise DataFileError(
            f"{path}: gzip-compressed data in a file without .gz: name it {path.name}.gz"
        )
    if len(raw) < 4:
        raise DataFileError(
            f"{path}: truncated: {len(raw)} bytes, expected at least a 4-byte IDX magic number"
        )
    zero, code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or code not in _IDX_DTYPES:
        raise DataFileError(f"{path}: not an IDX file (magic bytes {raw[:4].hex()})")
    if expected_dtype is not None and np.dtype(_IDX_DTYPES[code]) != np.dtype(expected_dtype):
        raise DataFileError(
            f"{path}: IDX type code 0x{code:02X} ({np.dtype(_IDX_DTYPES[code]).name}); expected "
            f"0x{_IDX_CODES[np.dtype(expected_dtype)]:02X} ({np.dtype(expected_dtype).name})"
        )
    if expected_ndim is not None and ndim != expected_ndim:
        raise DataFileError(f"{path}: expected {expected_ndim} dimensions, the header says {ndim}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataFileError(f"{path}: truncated header: {len(raw)} bytes, expected {header}")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = header + math.prod(shape) * dtype.itemsize  # exact: 3 x uint32 overflows int64
    if len(raw) != expected:
        raise DataFileError(
            f"{path}: truncated or padded: {len(raw)} bytes, expected {expected} for shape {shape} of {dtype}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def _find(data_dir: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (data_dir / name).exists():
            return data_dir / name
    raise DataFileError(
        f"{data_dir / stem}: file not found (expected the MNIST IDX file {stem} or {stem}.gz)"
    )


def mnist(data_dir: str | Path, seed: int = 0) -> Dataset:
    """MNIST from the four IDX files in `data_dir` (the official train/test split is kept)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataFileError(
            f"{data_dir}: not a directory (expected a folder with the four MNIST IDX files)"
        )
    arrays, paths = {}, {}
    for key, stem in MNIST_FILES.items():
        paths[key] = _find(data_dir, stem)
        # MNIST's pixels and labels are unsigned bytes: another type would be scaled by 255 all the same
        arrays[key] = read_idx(
            paths[key], expected_ndim=3 if "images" in key else 1, expected_dtype=np.uint8
        )
    for part in ("train", "test"):
        images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        n_img, n_lab = len(images), len(labels)
        if n_img != n_lab:
            raise DataFileError(f"{data_dir}: {part} has {n_img} images but {n_lab} labels")
        if n_img == 0 or 0 in images.shape[1:]:
            raise DataFileError(
                f"{paths[f'{part}_images']}: no images (header shape {images.shape})"
            )
        if labels.max() > 9:  # uint8: never below 0
            first = int(np.flatnonzero(labels > 9)[0])
            raise DataFileError(
                f"{paths[f'{part}_labels']}: label {labels[first]} at index {first}; MNIST labels are 0-9"
            )
    train_hw, test_hw = arrays["train_images"].shape[1:], arrays["test_images"].shape[1:]
    if train_hw != test_hw:
        raise DataFileError(
            f"{data_dir}: train images are {train_hw[0]}x{train_hw[1]}, test images {test_hw[0]}x{test_hw[1]}"
        )
    scale = lambda a: (a.astype(np.float64) / 255.0)[:, None]  # (B, 28, 28) -> (B, 1, 28, 28)
    return Dataset(
        "mnist",
        scale(arrays["train_images"]),
        arrays["train_labels"].astype(np.int64),
        scale(arrays["test_images"]),
        arrays["test_labels"].astype(np.int64),
        10,
        {"image_shape": arrays["train_images"].shape[1:], "seed": seed},
    )


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write an array as an IDX file (used by tests to make tiny MNIST folders)."""
    codes = {np.dtype(v).str: k for k, v in _IDX_DTYPES.items()}
    array = np.ascontiguousarray(array)
    big = array.astype(array.dtype.newbyteorder(">")) if array.dtype.itemsize > 1 else array
    code = codes.get(big.dtype.str) or codes[np.dtype(np.uint8).str]
    header = struct.pack(">HBB", 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    Path(path).write_bytes(header + big.tobytes())


# ----------------------------------------------------------------------------- sequence tasks
def reverse(
    seed: int = 0, n_samples: int = 4000, max_len: int = 10, min_len: int = 3, n_digits: int = 10
) -> Dataset:
    """Reverse a sequence of digit tokens: left-padded input, the same row reversed as the answer.

    Tokens: 0 is PAD (tasks.configs.PAD), 1..n_digits are the digits. Lengths are drawn from
    [min_len, max_len]; a sequence of length L fills the last L of max_len positions, so
    `x = [PAD, PAD, 3, 1, 4]` has the answer `y = [4, 1, 3, PAD, PAD]`. PAD targets carry no answer
    (losses and token accuracy skip them). Duplicate sequences are dropped before the split, so
    every test sequence is unseen in training.
    """
    rng = np.random.default_rng(seed)
    lengths = rng.integers(min_len, max_len + 1, n_samples)  # (B,)
    digits = rng.integers(1, n_digits + 1, (n_samples, max_len))  # (B, T)
    x = np.where(np.arange(max_len)[None, :] >= max_len - lengths[:, None], digits, 0).astype(
        np.int64
    )
    x = np.unique(x, axis=0)  # sorted unique rows; split() shuffles them again
    y = x[:, ::-1].copy()  # (B, T): the reversed row; its PADs end up on the right
    return split("reverse", x, y, n_digits + 1, seed, max_len=max_len, min_len=min_len)


# ----------------------------------------------------------------------------- recurrent tasks
PYTEXT_MODULES = (
    "textwrap",
    "json",
    "collections",
    "functools",
    "contextlib",
)  # pure-Python stdlib modules


def python_text() -> str:
    """The Zen of Python (stored rot13-encoded in the `this` module), then stdlib docstrings.

    Only text that ships with Python: the module docstrings of PYTEXT_MODULES and of their public
    functions and classes, in definition order (about 24,000 characters on Python 3.11).
    """
    import codecs
    import contextlib
    import importlib
    import inspect
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # `import this` prints the Zen on first import
        import this
    parts = [codecs.decode(this.s, "rot13")]
    for name in PYTEXT_MODULES:
        module = importlib.import_module(name)
        parts.append(inspect.getdoc(module) or "")
        for attr, obj in vars(module).items():
            if (
                not attr.startswith("_")
                and (inspect.isfunction(obj) or inspect.isclass(obj))
                and obj.__module__ == name
            ):
                parts.append(inspect.getdoc(obj) or "")
    return "\n\n".join(p for p in parts if p)


def pytext(seed: int = 0, seq_len: int = 32) -> Dataset:
    """Character-level language model: predict each next character of python_text().

    The text is cut into non-overlapping windows of seq_len + 1 characters (input: the first
    seq_len, one-hot; target: the last seq_len), and the windows are split train/validation with
    the seeded rule of every task, so no validation character is ever a training target.
    meta["baselines"] holds the unigram model's validation loss (training character frequencies,
    add-one smoothed): the number a model must get well below.
    """
    text = python_text()
    vocab = sorted(set(text))
    ids = np.array([vocab.index(ch) for ch in text], dtype=np.int64)
    n = (len(ids) - 1) // seq_len
    inputs = ids[: n * seq_len].reshape(n, seq_len)  # (N, T) character ids
    targets = ids[1 : n * seq_len + 1].reshape(
        n, seq_len
    )  # (N, T): the next character at every step
    x = np.eye(len(vocab))[inputs]  # (N, T) -> (N, T, V) one-hot
    d = split("pytext", x, targets, len(vocab), seed, vocab="".join(vocab), seq_len=seq_len)
    counts = np.bincount(d.y_train.ravel(), minlength=len(vocab)) + 1.0
    unigram = float(-np.mean(np.log(counts / counts.sum())[d.y_test]))
    return replace(d, meta={**d.meta, "baselines": {"unigram_test_loss": unigram}})


def sign(seed: int = 0, n_samples: int = 2000, length: int = 15) -> Dataset:
    """Many-to-one: is the sum of a sequence of +1/-1 steps positive? (x (N, T, 1), odd T: never 0)."""
    rng = np.random.default_rng(seed)
    x = rng.choice([-1.0, 1.0], size=(n_samples, length, 1))  # (N, T, 1)
    y = (x.sum(axis=(1, 2)) > 0).astype(np.int64)
    return split("sign", x, y, 2, seed, length=length)


# ----------------------------------------------------------------------------- lookup by name
TASKS = {
    "moons": moons, "digits": digits, "mnist": mnist, "digits32": digits32, "diabetes": diabetes,
    "or": or_gate, "and": and_gate, "xor": xor_gate, "iris": iris, "blobs": blobs,
    "reverse": reverse, "pytext": pytext, "sign": sign,
}  # fmt: skip


def load_task(name: str, *, seed: int = 0, data_dir: str | Path | None = None) -> Dataset:
    """A dataset by task name; tasks that read files (mnist) need `data_dir`."""
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; choose from {', '.join(TASKS)}")
    if name == "mnist":
        if data_dir is None:
            raise DataFileError("task mnist reads IDX files: give the folder with --data-dir")
        return mnist(data_dir, seed=seed)
    return TASKS[name](seed=seed)
