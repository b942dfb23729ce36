"""LeNet-5, from scratch in NumPy, with a hand-written backward pass and a vectorised convolution.

LeCun, Bottou, Bengio & Haffner (1998), "Gradient-based learning applied to document recognition".
conv 6@5x5 -> pool 2x2 -> conv 16@5x5 -> pool 2x2 -> flatten -> dense 120 -> dense 84 -> dense 10,
with the activation after each conv and hidden dense layer. Images are (B, C, H, W) and kernels
(out_c, in_c, kh, kw): the canonical layouts every other implementation converts to and from.
The convolution is im2col + one matmul, built with `sliding_window_view`: no Python loop over
pixels, channels or batch elements. Optional, from LeNet5Config: batch norm before each hidden
activation (Ioffe & Szegedy 2015), dropout after fc1's and fc2's (Srivastava et al. 2014), He or
Xavier initialisation, an L2 penalty; any optimiser of scratch/optim.py.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from scratch import optim
from scratch.initializers import initialize
from scratch.regularize import BatchNorm, Dropout, add_l2_gradient, l2_penalty
from tasks import weights
from tasks.configs import LeNet5Config, OptimizerConfig
from tasks.data import Dataset, batches


# ----------------------------------------------------------------------------- layers
def im2col(x, k: int):
    """Every k x k patch of x as one column: (B, C, H, W) -> (C*k*k, B*OH*OW), OH = H - k + 1.

    Rows are ordered (C, kh, kw) like a flattened kernel; the copy's innermost axis is OW, so
    NumPy copies long contiguous runs rather than k-element pieces.
    """
    c = x.shape[1]
    patches = sliding_window_view(
        x, (k, k), axis=(2, 3)
    )  # (B, C, H, W) -> (B, C, OH, OW, k, k), a view
    return patches.transpose(1, 4, 5, 0, 2, 3).reshape(
        c * k * k, -1
    )  # -> (C, k, k, B, OH, OW) -> (C*k*k, B*OH*OW)


def init_params(
    shape: tuple[int, ...], *, rng: np.random.Generator, dtype, init: str, bias: bool
) -> dict[str, np.ndarray]:
    """A weight of canonical `shape` and its bias: torch's default U(±1/sqrt(fan_in)) for both, or a
    named initialiser (He, Xavier) for the weight and a zero bias; no bias when a batch norm follows."""
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


class Conv2D:
    """2-D convolution (cross-correlation), stride 1, no padding, kernel (out_c, in_c, kh, kw)."""

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
    ):
        shape = (out_channels, in_channels, kernel_size, kernel_size)
        self.params = init_params(shape, rng=rng, dtype=dtype, init=init, bias=bias)
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}
        self.cache: dict[str, np.ndarray] = {}

    def forward(self, x):
        w = self.params["weight"]
        o, _, k, _ = w.shape
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
        self.grads["weight"] = (dy_mat @ self.cache["cols"].T).reshape(
            w.shape
        )  # (O, B*OH*OW) @ (B*OH*OW, C*k*k) -> (O, C, k, k)
        if "bias" in self.params:
            self.grads["bias"] = dy_mat.sum(axis=1)  # (O, B*OH*OW) -> (O,)
        if not input_grad:
            return None  # the first layer's input is data: skip its gradient in training, as autograd does
        dcols = w.reshape(o, -1).T @ dy_mat  # (C*k*k, O) @ (O, B*OH*OW) -> (C*k*k, B*OH*OW)
        return col2im(dcols, self.cache["x_shape"], k)


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
            dx[:, :, i : i + oh, j : j + ow] += cols[
                :, i, j
            ]  # (C, B, OH, OW) onto the window at offset (i, j)
    return dx.transpose(1, 0, 2, 3)  # (C, B, H, W) -> (B, C, H, W)


def pool_windows(x):
    """Non-overlapping 2x2 windows: (B, C, H, W) -> (B, C, H/2, 2, W/2, 2), a view; odd edges dropped."""
    b, c, h, w = x.shape
    return x[:, :, : h // 2 * 2, : w // 2 * 2].reshape(
        b, c, h // 2, 2, w // 2, 2
    )  # floor, like "valid" pooling


def window_corners(x):
    """The four elements of every 2x2 window, stacked first: (B, C, H, W) -> (4, B, C, H/2, W/2).

    Stacking first makes the reductions run over contiguous rows (fast) instead of over two
    length-2 axes (slow); corner index 0..3 is row-major order within a window.
    """
    win = pool_windows(x)  # (B, C, H/2, 2, W/2, 2)
    return win.transpose(3, 5, 0, 1, 2, 4).reshape(
        4, *win.shape[:3], win.shape[4]
    )  # -> (2, 2, B, C, H/2, W/2) -> (4, ...)


def scatter_corners(dcorners, x_shape):
    """The adjoint of window_corners: (4, B, C, H/2, W/2) -> (B, C, H, W), zeros at dropped edges."""
    dx = np.zeros(x_shape, dcorners.dtype)
    pool_windows(dx)[...] = dcorners.reshape(2, 2, *dcorners.shape[1:]).transpose(
        2, 3, 4, 0, 5, 1
    )  # write through the view
    return dx


class AvgPool2D:
    """2x2 average pooling, stride 2 (the paper's subsampling, without its trainable scale)."""

    def forward(self, x):
        self.cache = {"x_shape": x.shape}
        return window_corners(x).mean(
            axis=0
        )  # (B, C, H, W) -> (4, B, C, H/2, W/2) -> (B, C, H/2, W/2)

    def backward(self, dy):
        dcorners = np.broadcast_to(
            dy / 4, (4, *dy.shape)
        )  # every input gets a quarter of its window's gradient
        return scatter_corners(dcorners, self.cache["x_shape"])


class MaxPool2D:
    """2x2 max pooling, stride 2; the gradient goes to the first maximum of each window, as in torch."""

    def forward(self, x):
        corners = window_corners(x)  # (B, C, H, W) -> (4, B, C, H/2, W/2)
        arg = corners.argmax(axis=0)  # (B, C, H/2, W/2); the first maximum wins ties
        self.cache = {"x_shape": x.shape, "arg": arg}
        return np.take_along_axis(corners, arg[None], axis=0)[0]  # -> (B, C, H/2, W/2)

    def backward(self, dy):
        winner = self.cache["arg"] == np.arange(4).reshape(
            4, 1, 1, 1, 1
        )  # (4, B, C, H/2, W/2): one True per window
        return scatter_corners(winner * dy, self.cache["x_shape"])


class Flatten:
    """(B, C, H, W) -> (B, C*H*W) in C, H, W order: the canonical order of fc1's input rows."""

    def forward(self, x):
        self.cache = {"x_shape": x.shape}
        return x.reshape(len(x), -1)  # (B, C, H, W) -> (B, C*H*W)

    def backward(self, dy):
        return dy.reshape(self.cache["x_shape"])  # (B, C*H*W) -> (B, C, H, W)


class Dense:
    """Fully connected layer, weight (out, in)."""

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
        self.params = init_params(
            (out_features, in_features), rng=rng, dtype=dtype, init=init, bias=bias
        )
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}
        self.cache: dict[str, np.ndarray] = {}

    def forward(self, x):
        self.cache = {"x": x}
        y = x @ self.params["weight"].T  # (B, in) -> (B, out)
        return y + self.params["bias"] if "bias" in self.params else y

    def backward(self, dy):
        x = self.cache["x"]
        self.grads["weight"] = dy.T @ x  # (out, B) @ (B, in) -> (out, in)
        if "bias" in self.params:
            self.grads["bias"] = dy.sum(axis=0)  # (B, out) -> (out,)
        return dy @ self.params["weight"]  # (B, out) @ (out, in) -> (B, in)


class ReLU:
    def forward(self, x):
        self.cache = {"x": x}
        return np.maximum(x, 0)

    def backward(self, dy):
        return dy * (self.cache["x"] > 0)


class Tanh:
    def forward(self, x):
        y = np.tanh(x)
        self.cache = {"y": y}  # the derivative is cheapest from the output: 1 - y^2
        return y

    def backward(self, dy):
        return dy * (1 - self.cache["y"] ** 2)


class Identity:
    """Stands in for a regulariser the config leaves out, so forward and backward read the same either way."""

    def forward(self, x):
        return x

    def backward(self, dy):
        return dy


def make_activation(cfg: LeNet5Config):
    return {"relu": ReLU, "tanh": Tanh}[cfg.activation]()


def make_pool(cfg: LeNet5Config):
    return {"avg": AvgPool2D, "max": MaxPool2D}[cfg.pooling]()


# ----------------------------------------------------------------------------- model
class LeNet5:
    """Two conv + pool stages, a flatten, two hidden dense layers and a linear head (logits)."""

    def __init__(
        self,
        cfg: LeNet5Config,
        *,
        rng: np.random.Generator,
        dtype=np.float64,
        dropout_layer=Dropout,
    ):
        self.cfg = cfg
        (c1, c2), (h1, h2), k = cfg.channels, cfg.hidden, cfg.kernel_size
        bias = (
            not cfg.batch_norm
        )  # a batch norm's mean subtraction cancels the bias of the layer before it
        self.conv1 = Conv2D(cfg.in_channels, c1, k, rng=rng, dtype=dtype, init=cfg.init, bias=bias)
        self.conv2 = Conv2D(c1, c2, k, rng=rng, dtype=dtype, init=cfg.init, bias=bias)
        self.fc1 = Dense(
            cfg.flat_features, h1, rng=rng, dtype=dtype, init=cfg.init, bias=bias
        )  # 16 * 5 * 5 = 400 inputs by default
        self.fc2 = Dense(h1, h2, rng=rng, dtype=dtype, init=cfg.init, bias=bias)
        self.fc3 = Dense(h2, cfg.n_classes, rng=rng, dtype=dtype, init=cfg.init)
        # one activation object per use: each caches its own input for backward
        self.act1, self.act2, self.act3, self.act4 = (make_activation(cfg) for _ in range(4))
        self.pool1, self.pool2 = make_pool(cfg), make_pool(cfg)
        self.flatten = Flatten()
        # optional regularisers: batch norm before each hidden activation, dropout after fc1's and fc2's
        norm = lambda n: (
            BatchNorm(n, dtype=dtype) if cfg.batch_norm else Identity()
        )  # one class: it normalises (B, C, H, W) per channel
        self.bn1, self.bn2, self.bn3, self.bn4 = norm(c1), norm(c2), norm(h1), norm(h2)
        self.drop1, self.drop2 = (
            dropout_layer(cfg.dropout, rng=rng) if cfg.dropout else Identity() for _ in range(2)
        )

    def forward(self, x):
        x = self.pool1.forward(
            self.act1.forward(self.bn1.forward(self.conv1.forward(x)))
        )  # (B, 1, 32, 32) -> (B, 6, 28, 28) -> (B, 6, 14, 14)
        x = self.pool2.forward(
            self.act2.forward(self.bn2.forward(self.conv2.forward(x)))
        )  # -> (B, 16, 10, 10) -> (B, 16, 5, 5)
        x = self.flatten.forward(x)  # (B, 16, 5, 5) -> (B, 400)
        x = self.drop1.forward(
            self.act3.forward(self.bn3.forward(self.fc1.forward(x)))
        )  # (B, 400) -> (B, 120)
        x = self.drop2.forward(
            self.act4.forward(self.bn4.forward(self.fc2.forward(x)))
        )  # (B, 120) -> (B, 84)
        return self.fc3.forward(x)  # (B, 84) -> (B, C) logits

    def backward(self, dlogits, input_grad: bool = True):
        dx = self.bn4.backward(self.act4.backward(self.drop2.backward(self.fc3.backward(dlogits))))
        dx = self.bn3.backward(self.act3.backward(self.drop1.backward(self.fc2.backward(dx))))
        dx = self.flatten.backward(self.fc1.backward(dx))
        dx = self.bn2.backward(self.act2.backward(self.pool2.backward(dx)))
        dx = self.bn1.backward(self.act1.backward(self.pool1.backward(self.conv2.backward(dx))))
        return self.conv1.backward(dx, input_grad)  # (B, 1, 32, 32): the saliency map, or None

    def set_training(self, training: bool) -> None:
        """Train mode (batch statistics, dropout on) or eval mode (running statistics, dropout off)."""
        for layer in (self.bn1, self.bn2, self.bn3, self.bn4, self.drop1, self.drop2):
            layer.training = training

    def layers(self) -> dict[str, Conv2D | Dense | BatchNorm]:
        """Layers with parameters, by canonical prefix."""
        norms = {
            f"bn{i}": norm
            for i, norm in enumerate((self.bn1, self.bn2, self.bn3, self.bn4), 1)
            if isinstance(norm, BatchNorm)
        }
        return {
            "conv1": self.conv1,
            "conv2": self.conv2,
            "fc1": self.fc1,
            "fc2": self.fc2,
            "fc3": self.fc3,
            **norms,
        }


def create_model(
    cfg: LeNet5Config, *, seed: int, dtype: str = "float64", dropout_layer=Dropout
) -> LeNet5:
    """dropout_layer: the parity tests pass a mask-replaying layer (tasks/replay/)."""
    return LeNet5(
        cfg, rng=np.random.default_rng(seed), dtype=np.dtype(dtype), dropout_layer=dropout_layer
    )


# ----------------------------------------------------------------------------- canonical weights
def load_canonical(model: LeNet5, params: dict[str, np.ndarray]) -> None:
    """Copy canonical weights in; scratch *is* the canonical layout, so no transform."""
    weights.check(params, model.cfg.param_shapes(), model.fc3.params["weight"].dtype)
    for prefix, layer in model.layers().items():
        for store in (
            layer.params,
            getattr(layer, "buffers", {}),
        ):  # batch norm's running statistics are buffers
            for key in store:
                store[key] = np.array(params[f"{prefix}.{key}"])


def export_canonical(model: LeNet5) -> dict[str, np.ndarray]:
    tensors = lambda layer: {**layer.params, **getattr(layer, "buffers", {})}
    return {
        f"{prefix}.{key}": value.copy()
        for prefix, layer in model.layers().items()
        for key, value in tensors(layer).items()
    }


# ----------------------------------------------------------------------------- loss
def loss_fn(logits, y):
    """Mean softmax cross-entropy from logits and its gradient d loss / d logits."""
    batch = logits.shape[0]
    shifted = logits - logits.max(axis=1, keepdims=True)  # log-softmax without overflow
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))  # (B, C)
    loss = -np.mean(log_probs[np.arange(batch), y])
    dlogits = np.exp(log_probs)
    dlogits[np.arange(batch), y] -= 1
    return loss, dlogits / batch


def forward_backward(model: LeNet5, x, y) -> dict[str, np.ndarray]:
    """Outputs, loss and every gradient in the canonical layout (what the parity tests compare)."""
    logits = model.forward(x)
    loss, dlogits = loss_fn(logits, y)
    dx = model.backward(dlogits)
    grads = {
        f"grad.{prefix}.{k}": g
        for prefix, layer in model.layers().items()
        for k, g in layer.grads.items()
    }
    return {"output": logits, "loss": np.asarray(loss), "grad.input": dx, **grads}


# ----------------------------------------------------------------------------- train step
def make_optimizer(model: LeNet5, lr: float | OptimizerConfig) -> optim.Optimizer:
    """A learning rate gives plain SGD (p -= lr * g); an OptimizerConfig any of scratch/optim.py."""
    return optim.make_optimizer(
        model, lr if isinstance(lr, OptimizerConfig) else OptimizerConfig("sgd", lr=lr)
    )


def train_step(model: LeNet5, optimizer: optim.Optimizer, x, y) -> float:
    logits = model.forward(x)
    loss, dlogits = loss_fn(logits, y)
    model.backward(dlogits, input_grad=False)  # like autograd: no gradient for the data
    if model.cfg.l2:  # the penalty (l2 / 2) * sum p^2 is part of the loss: its gradient l2 * p joins each gradient
        loss += l2_penalty(model.layers().values(), model.cfg.l2)
        add_l2_gradient(model.layers().values(), model.cfg.l2)
    optimizer.step()
    return float(loss)


def train(
    model: LeNet5,
    data: Dataset,
    *,
    epochs: int,
    lr: float | OptimizerConfig,
    batch_size: int,
    seed: int,
    on_epoch=None,
) -> list[float]:
    """Mini-batches in the shared order, stepped by make_optimizer(model, lr); returns the mean training loss of each epoch."""
    dtype = model.fc3.params["weight"].dtype
    x, y = data.x_train.astype(dtype), data.y_train
    optimizer, history = make_optimizer(model, lr), []
    model.set_training(True)
    for epoch in range(epochs):
        losses = [
            train_step(model, optimizer, x[idx], y[idx])
            for idx in batches(len(x), batch_size, seed, epoch)
        ]
        history.append(float(np.mean(losses)))
        if on_epoch:
            on_epoch(epoch, history[-1])
    return history


# ----------------------------------------------------------------------------- evaluation
def evaluate(model: LeNet5, x, y) -> tuple[float, float]:
    """(mean loss, accuracy) on a whole split."""
    model.set_training(False)
    logits = model.forward(x.astype(model.fc3.params["weight"].dtype))
    loss, _ = loss_fn(logits, y)
    return float(loss), float(np.mean(logits.argmax(axis=1) == y))
