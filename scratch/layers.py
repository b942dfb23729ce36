"""The layers every scratch model builds from, as torch.nn serves the torch models: dense, conv,
pooling, activations, embedding, layer and batch norm, dropout, and the losses.

Each layer is one class with `forward(x)` and `backward(dy)` side by side; forward keeps what
backward needs in `self.cache`; `params` and `grads` are dicts under canonical keys ("weight",
"bias"). Backward *adds* to `grads`, as autograd adds to `.grad`: a layer used twice (or a
recurrent cell run T times) sums its contributions, and every train step starts with `zero_grad`.

Srivastava et al. (2014) inverted dropout; Ioffe & Szegedy (2015) batch norm; Ba, Kiros & Hinton
(2016) layer norm; Hendrycks & Gimpel (2016) GELU. Layouts are the canonical ones: dense weight
(out, in), conv kernel (out_c, in_c, kh, kw), images (B, C, H, W).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from scratch.initializers import initialize


# ----------------------------------------------------------------------------- parameters
def init_params(
    shape: tuple[int, ...], *, rng: np.random.Generator, dtype, init: str = "uniform", bias: bool
) -> dict[str, np.ndarray]:
    """A weight of canonical `shape` and its bias: torch's default U(±1/sqrt(fan_in)) for both, or
    a named initialiser (He, Xavier) for the weight and a zero bias; no bias before a batch norm."""
    bound = 1.0 / np.sqrt(np.prod(shape[1:]))  # fan_in = in_c * kh * kw or in_features
    weight = (
        rng.uniform(-bound, bound, shape) if init == "uniform" else initialize(init, shape, rng=rng)
    )
    params = {"weight": weight.astype(dtype)}
    if bias:
        params["bias"] = (
            rng.uniform(-bound, bound, shape[:1]) if init == "uniform" else np.zeros(shape[:1])
        ).astype(dtype)
    return params


def zero_grad(layers) -> None:
    """Fresh zero gradients for every parameter of `layers`: backward only adds to them."""
    for layer in layers:
        for key, value in layer.params.items():
            layer.grads[key] = np.zeros_like(value)


# ----------------------------------------------------------------------------- dense and conv
class Dense:
    """Fully connected layer on the last axis, weight (out, in): y = x @ W.T + b."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        rng: np.random.Generator,
        dtype=np.float64,
        init: str = "uniform",
        bias: bool = True,
    ):
        shape = (out_features, in_features)
        self.params = init_params(shape, rng=rng, dtype=dtype, init=init, bias=bias)
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}
        self.cache: dict[str, np.ndarray] = {}

    def forward(self, x):
        self.cache = {"x": x}
        y = x @ self.params["weight"].T  # (..., in) -> (..., out)
        return y + self.params["bias"] if "bias" in self.params else y

    def backward(self, dy):
        x = self.cache["x"]
        dy_flat = dy.reshape(-1, dy.shape[-1])  # (..., out) -> (N, out)
        self.grads["weight"] += dy_flat.T @ x.reshape(-1, x.shape[-1])  # (out, N) @ (N, in)
        if "bias" in self.params:
            self.grads["bias"] += dy_flat.sum(axis=0)  # (N, out) -> (out,)
        return dy @ self.params["weight"]  # (..., out) @ (out, in) -> (..., in)


def im2col(x, k: int):
    """Every k x k patch of x as one column: (B, C, H, W) -> (C*k*k, B*OH*OW), OH = H - k + 1.

    Rows are ordered (C, kh, kw) like a flattened kernel; the copy's innermost axis is OW, so
    NumPy copies long contiguous runs rather than k-element pieces.
    """
    c = x.shape[1]
    patches = sliding_window_view(x, (k, k), axis=(2, 3))  # -> (B, C, OH, OW, k, k), a view
    # (B, C, OH, OW, k, k) -> (C, k, k, B, OH, OW) -> (C*k*k, B*OH*OW)
    return patches.transpose(1, 4, 5, 0, 2, 3).reshape(c * k * k, -1)


def col2im(cols, x_shape, k: int):
    """The adjoint of im2col: add every column back onto the pixels its patch came from.

    (C*k*k, B*OH*OW) -> (B, C, H, W). The loop runs over the k*k kernel offsets (25 for LeNet),
    never over pixels, channels or batch elements: each step adds one whole (C, B, OH, OW) slab,
    shifted by its offset. (The loop-free "full correlation of dy with the rotated kernel" gives the
    same numbers from a patch matrix 5x larger for LeNet's conv2, and ran 3x slower; the tests check
    col2im against it and against finite differences.)
    """
    b, c, h, w = x_shape
    oh, ow = h - k + 1, w - k + 1
    cols = cols.reshape(c, k, k, b, oh, ow)  # (C*k*k, B*OH*OW) -> (C, k, k, B, OH, OW)
    dx = np.zeros((c, b, h, w), cols.dtype)
    for i in range(k):
        for j in range(k):
            dx[:, :, i : i + oh, j : j + ow] += cols[:, i, j]  # (C, B, OH, OW) at offset (i, j)
    return dx.transpose(1, 0, 2, 3)  # (C, B, H, W) -> (B, C, H, W)


class Conv2d:
    """2-D convolution (cross-correlation), stride 1, kernel (out_c, in_c, kh, kw), `padding` zero
    rows and columns on every side (torch's nn.Conv2d(padding=)): pad, im2col, then one matmul."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        rng: np.random.Generator,
        dtype=np.float64,
        init: str = "uniform",
        bias: bool = True,
        padding: int = 0,
    ):
        shape = (out_channels, in_channels, kernel_size, kernel_size)
        self.params = init_params(shape, rng=rng, dtype=dtype, init=init, bias=bias)
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}
        self.padding = padding
        self.cache: dict[str, np.ndarray] = {}

    def forward(self, x):
        w = self.params["weight"]
        o, _, k, _ = w.shape
        p = self.padding
        if p:  # (B, C, H, W) -> (B, C, H + 2p, W + 2p), a zero border
            x = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
        b, _, h, wd = x.shape
        cols = im2col(x, k)  # (B, C, H, W) -> (C*k*k, B*OH*OW)
        self.cache = {"cols": cols, "x_shape": x.shape}
        y = w.reshape(o, -1) @ cols  # (O, C*k*k) @ (C*k*k, B*OH*OW) -> (O, B*OH*OW)
        if "bias" in self.params:
            y += self.params["bias"][:, None]
        return y.reshape(o, b, h - k + 1, wd - k + 1).transpose(1, 0, 2, 3)  # -> (B, O, OH, OW)

    def backward(self, dy, input_grad: bool = True):
        w = self.params["weight"]
        o, _, k, _ = w.shape
        dy_mat = dy.transpose(1, 0, 2, 3).reshape(o, -1)  # (B, O, OH, OW) -> (O, B*OH*OW)
        # (O, B*OH*OW) @ (B*OH*OW, C*k*k) -> (O, C*k*k) -> (O, C, k, k)
        self.grads["weight"] += (dy_mat @ self.cache["cols"].T).reshape(w.shape)
        if "bias" in self.params:
            self.grads["bias"] += dy_mat.sum(axis=1)  # (O, B*OH*OW) -> (O,)
        if not input_grad:
            return None  # a first layer's input is data: skip its gradient, as autograd does
        dcols = w.reshape(o, -1).T @ dy_mat  # (C*k*k, O) @ (O, B*OH*OW) -> (C*k*k, B*OH*OW)
        dx = col2im(dcols, self.cache["x_shape"], k)  # (B, C, H + 2p, W + 2p)
        p, (h, wd) = self.padding, dx.shape[2:]
        return dx[:, :, p : h - p, p : wd - p]  # the border is no input: its gradient goes


# ----------------------------------------------------------------------------- pooling
def pool_windows(x):
    """Non-overlapping 2x2 windows: (B, C, H, W) -> (B, C, H/2, 2, W/2, 2), a view; odd edges go."""
    b, c, h, w = x.shape
    return x[:, :, : h // 2 * 2, : w // 2 * 2].reshape(b, c, h // 2, 2, w // 2, 2)  # floor, "valid"


def window_corners(x):
    """The four elements of every 2x2 window, stacked first: (B, C, H, W) -> (4, B, C, H/2, W/2).

    Stacking first makes the reductions run over contiguous rows (fast) instead of over two
    length-2 axes (slow); corner index 0..3 is row-major order within a window.
    """
    win = pool_windows(x)  # (B, C, H/2, 2, W/2, 2)
    # -> (2, 2, B, C, H/2, W/2) -> (4, B, C, H/2, W/2)
    return win.transpose(3, 5, 0, 1, 2, 4).reshape(4, *win.shape[:3], win.shape[4])


def scatter_corners(dcorners, x_shape):
    """The adjoint of window_corners: (4, B, C, H/2, W/2) -> (B, C, H, W), 0 at dropped edges."""
    dx = np.zeros(x_shape, dcorners.dtype)
    corners = dcorners.reshape(2, 2, *dcorners.shape[1:])  # (2, 2, B, C, H/2, W/2)
    pool_windows(dx)[...] = corners.transpose(2, 3, 4, 0, 5, 1)  # written through the view
    return dx


class AvgPool2d:
    """2x2 average pooling, stride 2 (the paper's subsampling, without its trainable scale)."""

    def forward(self, x):
        self.cache = {"x_shape": x.shape}
        return window_corners(x).mean(axis=0)  # (4, B, C, H/2, W/2) -> (B, C, H/2, W/2)

    def backward(self, dy):
        dcorners = np.broadcast_to(dy / 4, (4, *dy.shape))  # each input gets a quarter
        return scatter_corners(dcorners, self.cache["x_shape"])


class MaxPool2d:
    """2x2 max pooling, stride 2; the gradient goes to each window's first maximum, as in torch."""

    def forward(self, x):
        corners = window_corners(x)  # (B, C, H, W) -> (4, B, C, H/2, W/2)
        arg = corners.argmax(axis=0)  # (B, C, H/2, W/2); the first maximum wins ties
        self.cache = {"x_shape": x.shape, "arg": arg}
        return np.take_along_axis(corners, arg[None], axis=0)[0]  # -> (B, C, H/2, W/2)

    def backward(self, dy):
        winner = self.cache["arg"] == np.arange(4).reshape(4, 1, 1, 1, 1)  # one True per window
        return scatter_corners(winner * dy, self.cache["x_shape"])


class Flatten:
    """(B, C, H, W) -> (B, C*H*W) in C, H, W order: the canonical order of the next dense's inputs."""

    def forward(self, x):
        self.cache = {"x_shape": x.shape}
        return x.reshape(len(x), -1)  # (B, C, H, W) -> (B, C*H*W)

    def backward(self, dy):
        return dy.reshape(self.cache["x_shape"])  # (B, C*H*W) -> (B, C, H, W)


# ----------------------------------------------------------------------------- activations
def sigmoid(x):
    """Logistic function, as (1 + tanh(x / 2)) / 2: the same function, with no overflow for large
    |x| (1 / (1 + exp(-x)) overflows exp below -88 in float32) and in three NumPy calls."""
    return 0.5 * (1 + np.tanh(0.5 * x))


class Identity:
    """The identity activation (scikit-learn's "identity", torch's nn.Identity); it also stands in
    for a layer the config leaves out, so forward and backward read the same anyway."""

    def forward(self, x):
        return x

    def backward(self, dy):
        return dy


class ReLU:
    def forward(self, x):
        self.cache = {"x": x}
        return np.maximum(x, 0)

    def backward(self, dy):
        return dy * (self.cache["x"] > 0)


class LeakyReLU:
    def __init__(self, negative_slope: float):
        self.negative_slope = negative_slope

    def forward(self, x):
        self.cache = {"x": x}
        return np.where(x > 0, x, self.negative_slope * x)

    def backward(self, dy):
        return dy * np.where(self.cache["x"] > 0, 1.0, self.negative_slope)


class Tanh:
    def forward(self, x):
        y = np.tanh(x)
        self.cache = {"y": y}  # the derivative is cheapest from the output: 1 - y^2
        return y

    def backward(self, dy):
        return dy * (1 - self.cache["y"] ** 2)


class Sigmoid:
    def forward(self, x):
        y = sigmoid(x)
        self.cache = {"y": y}
        return y

    def backward(self, dy):
        y = self.cache["y"]
        return dy * y * (1 - y)


def erf(x):
    """SciPy's erf, imported on first use: only GELU needs SciPy, which takes ~0.5 s to import."""
    from scipy.special import erf as scipy_erf

    return scipy_erf(x)


class GELU:
    """x * Phi(x): the exact erf form, or the tanh approximation when `approximate`. Constants are
    Python floats (math.sqrt), so a float32 input stays float32."""

    def __init__(self, approximate: bool = False):
        self.approximate = approximate

    def forward(self, x):
        self.cache = {"x": x}
        if self.approximate:
            return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
        return 0.5 * x * (1 + erf(x / math.sqrt(2)))

    def backward(self, dy):
        x = self.cache["x"]
        if self.approximate:
            t = np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))
            dt = (1 - t**2) * math.sqrt(2 / math.pi) * (1 + 3 * 0.044715 * x**2)
            return dy * (0.5 * (1 + t) + 0.5 * x * dt)
        phi = np.exp(-0.5 * x**2) / math.sqrt(2 * math.pi)
        return dy * (0.5 * (1 + erf(x / math.sqrt(2))) + x * phi)  # Phi + x phi


ACTIVATIONS = {"relu": ReLU, "tanh": Tanh, "sigmoid": Sigmoid, "identity": Identity}


# ----------------------------------------------------------------------------- embedding
class Embedding:
    """Token embedding: row `token` of weight (V, E), drawn N(0, 1) as torch's nn.Embedding."""

    def __init__(self, vocab: int, dim: int, *, rng: np.random.Generator, dtype=np.float64):
        self.params = {"weight": rng.normal(0, 1, (vocab, dim)).astype(dtype)}
        self.grads = {"weight": np.zeros_like(self.params["weight"])}
        self.cache: dict[str, np.ndarray] = {}

    def forward(self, tokens):
        self.cache = {"tokens": tokens}
        return self.params["weight"][tokens]  # (B, T) -> (B, T, E)

    def backward(self, dy):
        tokens, dim = self.cache["tokens"], self.params["weight"].shape[1]
        # (B*T, E) rows added onto their tokens' rows: a token used twice gets both
        np.add.at(self.grads["weight"], tokens.reshape(-1), dy.reshape(-1, dim))


# ----------------------------------------------------------------------------- normalisation
class LayerNorm:
    """Normalise each position's E features to mean 0, variance 1 (biased), then scale and shift."""

    def __init__(self, dim: int, eps: float = 1e-5, *, dtype=np.float64):
        self.eps = eps
        self.params = {"weight": np.ones(dim, dtype), "bias": np.zeros(dim, dtype)}
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}
        self.cache: dict[str, np.ndarray] = {}

    def forward(self, x):
        mu = x.mean(axis=-1, keepdims=True)  # (B, T, E) -> (B, T, 1)
        inv = 1.0 / np.sqrt(((x - mu) ** 2).mean(axis=-1, keepdims=True) + self.eps)
        xhat = (x - mu) * inv
        self.cache = {"xhat": xhat, "inv": inv}
        return xhat * self.params["weight"] + self.params["bias"]

    def backward(self, dy):
        xhat, inv = self.cache["xhat"], self.cache["inv"]
        dim = xhat.shape[-1]
        self.grads["weight"] += (dy * xhat).reshape(-1, dim).sum(axis=0)  # (B, T, E) -> (E,)
        self.grads["bias"] += dy.reshape(-1, dim).sum(axis=0)
        dxhat = dy * self.params["weight"]
        # d/dx of (x - mu) * inv, with mu and inv both depending on x
        return inv * (
            dxhat
            - dxhat.mean(axis=-1, keepdims=True)
            - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True)
        )


class BatchNorm:
    """Batch norm of dense (B, D) input over B, or conv (B, C, H, W) input over B, H, W.

    Training normalises by the batch's mean and biased variance and updates running averages, as
    torch: `momentum` is the weight of the *new* batch, the running variance takes the unbiased one.
    """

    def __init__(
        self, num_features: int, *, momentum: float = 0.1, eps: float = 1e-5, dtype=np.float64
    ):
        self.momentum, self.eps = momentum, eps
        self.params = {  # gamma, beta
            "weight": np.ones(num_features, dtype),
            "bias": np.zeros(num_features, dtype),
        }
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}
        self.buffers = {
            "running_mean": np.zeros(num_features, dtype),
            "running_var": np.ones(num_features, dtype),
        }
        self.training = True
        self.cache: dict[str, np.ndarray] = {}

    @staticmethod
    def axes(x) -> tuple[int, ...]:
        return (0,) if x.ndim == 2 else (0, 2, 3)  # every axis but the feature / channel axis

    @staticmethod
    def per_feature(v, x):
        return v if x.ndim == 2 else v[None, :, None, None]  # (C,) -> (1, C, 1, 1)

    def forward(self, x):
        axes = self.axes(x)
        if self.training:
            mean, var = x.mean(axis=axes), x.var(axis=axes)  # biased variance normalises the batch
            n, m = x.size // mean.size, self.momentum
            self.buffers["running_mean"] = (1 - m) * self.buffers["running_mean"] + m * mean
            unbiased = var * n / (n - 1)
            self.buffers["running_var"] = (1 - m) * self.buffers["running_var"] + m * unbiased
        else:
            mean, var = self.buffers["running_mean"], self.buffers["running_var"]
        inv_std = 1 / np.sqrt(var + self.eps)
        x_hat = (x - self.per_feature(mean, x)) * self.per_feature(inv_std, x)
        self.cache = {"x_hat": x_hat, "inv_std": inv_std}
        gamma, beta = (self.per_feature(self.params[k], x) for k in ("weight", "bias"))
        return gamma * x_hat + beta

    def backward(self, dy):
        x_hat, inv_std = self.cache["x_hat"], self.cache["inv_std"]
        axes = self.axes(dy)
        self.grads["weight"] += (dy * x_hat).sum(axis=axes)
        self.grads["bias"] += dy.sum(axis=axes)
        dx_hat = dy * self.per_feature(self.params["weight"], dy)
        if not self.training:  # the statistics are constants in eval mode
            return dx_hat * self.per_feature(inv_std, dy)
        n = dy.size // inv_std.size
        # mean and variance depend on every x of the batch:
        # dx = (n dx_hat - sum dx_hat - x_hat sum(dx_hat x_hat)) / (n std)
        sum_dx_hat = self.per_feature(dx_hat.sum(axis=axes), dy)
        sum_dx_hat_x_hat = self.per_feature((dx_hat * x_hat).sum(axis=axes), dy)
        dx = n * dx_hat - sum_dx_hat - x_hat * sum_dx_hat_x_hat
        return dx * self.per_feature(inv_std, dy) / n


# ----------------------------------------------------------------------------- dropout
class Dropout:
    """Inverted dropout: in training, keep each unit with probability 1 - p and scale it by
    1 / (1 - p), so evaluation is the identity. Masks come from the generator it is given."""

    def __init__(self, p: float, *, rng: np.random.Generator):
        self.p, self.rng = p, rng
        self.training = True
        self.cache: dict[str, np.ndarray | None] = {}

    def forward(self, x):
        if not self.training or self.p == 0:
            self.cache = {"scale": None}
            return x
        keep = self.rng.random(x.shape) >= self.p  # (B, D), True = keep
        scale = keep.astype(x.dtype) / x.dtype.type(1 - self.p)  # 0 or 1 / (1 - p)
        self.cache = {"scale": scale}
        return x * scale

    def backward(self, dy):
        scale = self.cache["scale"]
        return dy if scale is None else dy * scale


# ----------------------------------------------------------------------------- losses
def cross_entropy(logits, y, ignore_index: int | None = None):
    """Mean softmax cross-entropy of (..., C) logits against integer labels (...), and d loss / d
    logits. Positions labelled `ignore_index` count for nothing, as in torch's F.cross_entropy."""
    flat, labels = logits.reshape(-1, logits.shape[-1]), y.reshape(-1)  # -> (N, C), (N,)
    rows = np.arange(len(labels))
    valid = np.ones(len(labels), bool) if ignore_index is None else labels != ignore_index
    n = int(valid.sum())  # a Python int, so dividing keeps the logits' dtype
    shifted = flat - flat.max(axis=1, keepdims=True)  # log-softmax without overflow
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))  # (N, C)
    loss = -(log_probs[rows, labels] * valid).sum() / n
    dlogits = np.exp(log_probs)  # (softmax - one_hot(y)) / n on the scored positions, 0 elsewhere
    dlogits[rows, labels] -= 1
    dlogits *= valid[:, None]
    return loss, (dlogits / n).reshape(logits.shape)


def binary_cross_entropy_with_logits(z, t):
    """Mean BCE of logits z (B,) against targets t in {0, 1}, and d loss / dz."""
    t = t.astype(z.dtype)
    # stable form: max(z, 0) - z t + log(1 + exp(-|z|))
    loss = np.mean(np.maximum(z, 0) - z * t + np.log1p(np.exp(-np.abs(z))))
    return loss, (sigmoid(z) - t) / len(z)


def mean_squared_error(pred, t):
    """Mean of (pred - t)^2 over every element of (B, K) predictions and float targets (torch's
    F.mse_loss with reduction "mean"), and d loss / d pred = 2 (pred - t) / (B K)."""
    diff = pred - t.astype(pred.dtype)
    return np.mean(diff * diff), 2 * diff / diff.size  # a Python int keeps pred's dtype


def l2_penalty(layers, l2: float) -> float:
    """(l2 / 2) * the sum of every squared parameter: a term of the loss (not decoupled decay)."""
    return 0.5 * l2 * sum(float(np.sum(v * v)) for layer in layers for v in layer.params.values())


def add_l2_gradient(layers, l2: float) -> None:
    """The penalty's gradient, l2 * p, added to each parameter's gradient (after backward)."""
    for layer in layers:
        for key, value in layer.params.items():
            layer.grads[key] += l2 * value
