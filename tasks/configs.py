"""One frozen config dataclass per model, shared by all four implementations.

Each config also states its canonical parameter names and shapes (`param_shapes`), which every
framework's loader checks against before it touches a model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# "identity" is scikit-learn's name (MLPRegressor(activation="identity")): a stack of linear layers
ACTIVATIONS = ("relu", "tanh", "sigmoid", "leaky_relu", "identity")
# "uniform" is torch's nn.Linear default U(±1/sqrt(fan_in)); the others are the named initialisers
INITS = ("uniform", "he_normal", "he_uniform", "xavier_normal", "xavier_uniform")
BN_TENSORS = (
    "weight",
    "bias",
    "running_mean",
    "running_var",
)  # torch's BatchNorm names: gamma, beta, stats
# the output function and its loss: sigmoid + binary cross-entropy, softmax + cross-entropy, identity
# + mean squared error (regression: scikit-learn's MLPRegressor, out_activation_ "identity")
HEADS = ("sigmoid", "softmax", "identity")


def check_regularisers(cfg) -> None:
    """The regularisation and initialisation fields the MLP and LeNet-5 configs share."""
    if not 0.0 <= cfg.dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {cfg.dropout}")
    if cfg.init not in INITS:
        raise ValueError(f"unknown init {cfg.init!r}; choose from {', '.join(INITS)}")
    if cfg.l2 < 0:
        raise ValueError(f"l2 must be >= 0, got {cfg.l2}")


@dataclass(frozen=True)
class MLPConfig:
    """Multilayer perceptron: dense layers with one hidden activation and a classification or
    regression head."""

    in_features: int = 2
    hidden: tuple[int, ...] = (
        32,
        32,
    )  # one entry per hidden layer; () is logistic/softmax regression
    # 2 with head="sigmoid" gives one logit; softmax gives n_classes logits; identity gives
    # n_classes outputs, one per regression target (1 or more: the targets are (B, n_classes) floats)
    n_classes: int = 2
    activation: str = "relu"  # one of ACTIVATIONS
    head: str = "sigmoid"  # one of HEADS: "sigmoid" + BCE, "softmax" + CE, "identity" + MSE
    leaky_slope: float = (
        0.01  # torch and jax default 0.01; Keras LeakyReLU defaults to 0.3, so pass it
    )
    dropout: float = 0.0  # drop probability after each hidden activation; 0 adds no layer at all
    batch_norm: bool = False  # BatchNorm between each hidden dense layer and its activation; the hidden layers then have no bias
    init: str = "uniform"  # one of INITS: the weight initialiser create_model uses (biases start at 0 except "uniform")
    l2: float = 0.0  # L2 penalty (l2 / 2) * sum of every squared weight and bias, added to the training loss

    def __post_init__(self):
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown activation {self.activation!r}; choose from {', '.join(ACTIVATIONS)}"
            )
        if self.head not in HEADS:
            raise ValueError(f"unknown head {self.head!r}; choose from {', '.join(HEADS)}")
        if self.head == "sigmoid" and self.n_classes != 2:
            raise ValueError(f"a sigmoid head is binary: n_classes must be 2, got {self.n_classes}")
        min_outputs = 1 if self.head == "identity" else 2  # a regression may have one target
        if self.in_features < 1 or self.n_classes < min_outputs or any(h < 1 for h in self.hidden):
            raise ValueError(f"layer sizes must be positive: {self}")
        check_regularisers(self)

    @property
    def out_features(self) -> int:
        return 1 if self.head == "sigmoid" else self.n_classes

    @property
    def regression(self) -> bool:
        """An identity head: float targets (B, n_classes), mean squared error, R² as the score."""
        return self.head == "identity"

    @property
    def sizes(self) -> list[int]:
        return [self.in_features, *self.hidden, self.out_features]

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Canonical names and scratch-layout shapes: dense weight (out, in), bias (out,)."""
        shapes = {}
        for i, (n_in, n_out) in enumerate(zip(self.sizes[:-2], self.sizes[1:-1])):
            shapes[f"hidden.{i}.weight"] = (n_out, n_in)
            if (
                not self.batch_norm
            ):  # a batch norm's mean subtraction would cancel the bias (its gradient is exactly 0)
                shapes[f"hidden.{i}.bias"] = (n_out,)
        if self.batch_norm:  # gamma, beta and the running statistics of each hidden BatchNorm
            for i, n_out in enumerate(self.sizes[1:-1]):
                for key in BN_TENSORS:
                    shapes[f"bn.{i}.{key}"] = (n_out,)
        shapes["head.weight"] = (self.out_features, self.sizes[-2])
        shapes["head.bias"] = (self.out_features,)
        return shapes


LENET_ACTIVATIONS = ("tanh", "relu", "sigmoid")  # sigmoid: d2l's LeNet (with average pooling)
POOLINGS = ("avg", "max")


@dataclass(frozen=True)
class LeNet5Config:
    """LeNet-5: conv 6@5x5 -> pool 2x2 -> conv 16@5x5 -> pool 2x2 -> dense 120 -> dense 84 -> dense 10.

    With the defaults it has 61,706 parameters: conv1 156, conv2 2,416, fc1 48,120, fc2 10,164, fc3 850.
    """

    in_channels: int = 1  # grey images
    image_size: int = 32  # square input, H = W; the paper pads 28x28 MNIST digits to 32x32
    channels: tuple[int, int] = (6, 16)  # output channels of conv1 and conv2
    kernel_size: int = 5  # square kernels, stride 1
    # zero padding on every side of conv1's and conv2's input; (2, 0) on 28x28 is d2l's modern
    # LeNet-5 (conv1 keeps 28x28, so fc1 still has 16 * 5 * 5 inputs); (0, 0) is the paper's "valid"
    padding: tuple[int, int] = (0, 0)
    hidden: tuple[int, int] = (120, 84)  # the two dense layers after the flatten (fc1, fc2)
    n_classes: int = 10  # fc3 outputs logits for a softmax cross-entropy
    activation: str = "tanh"  # the paper's squashing function; "relu" is the modern choice
    pooling: str = "avg"  # the paper's subsampling averages 2x2 blocks; "max" is the modern choice
    # regularisation and initialisation (issue 7), all off by default: the 1998 network
    batch_norm: bool = False  # BatchNorm after conv1, conv2 (per channel), fc1, fc2 (per unit), before the activation
    dropout: float = 0.0  # drop probability after the activations of fc1 and fc2; 0 adds no layer
    init: str = "uniform"  # one of INITS, for every conv and dense weight (biases start at 0 except "uniform")
    l2: float = (
        0.0  # L2 penalty (l2 / 2) * sum of every squared parameter, added to the training loss
    )

    def __post_init__(self):
        check_regularisers(self)
        if self.activation not in LENET_ACTIVATIONS:
            raise ValueError(
                f"unknown activation {self.activation!r} for lenet5; choose from {', '.join(LENET_ACTIVATIONS)}"
            )
        if self.pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {self.pooling!r}; choose from {', '.join(POOLINGS)}")
        if len(self.padding) != 2 or any(p < 0 for p in self.padding):
            raise ValueError(f"padding is (conv1, conv2), each >= 0, got {self.padding}")
        if self.feature_size < 1:
            raise ValueError(
                f"image_size {self.image_size} is too small for two {self.kernel_size}x{self.kernel_size} convs and 2x2 pools"
            )

    @property
    def feature_size(self) -> int:
        """Height (= width) of conv2's pooled output: 32 -> conv 28 -> pool 14 -> conv 10 -> pool 5."""
        return self.conv_sizes[1] // 2

    @property
    def flat_features(self) -> int:
        """Inputs of fc1: C * H * W of the last pooled map, 16 * 5 * 5 = 400 by default."""
        return self.channels[1] * self.feature_size**2

    @property
    def conv_sizes(self) -> tuple[int, int]:
        """Height (= width) of conv1's and conv2's outputs, before pooling: 28 and 10 by default
        (and for 28x28 inputs with padding (2, 0)): H + 2 * padding - kernel_size + 1."""
        (p1, p2), k = self.padding, self.kernel_size
        first = self.image_size + 2 * p1 - k + 1
        return first, first // 2 + 2 * p2 - k + 1

    def bn_positions(self) -> dict[str, int]:
        """Values per feature a batch norm averages over for each sample: H * W for a conv, 1 for a dense layer."""
        s1, s2 = self.conv_sizes
        return {"bn1": s1 * s1, "bn2": s2 * s2, "bn3": 1, "bn4": 1}

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Canonical names and scratch-layout shapes: conv (out_c, in_c, kh, kw), dense (out, in).

        With batch norm, conv1, conv2, fc1 and fc2 have no bias (the norm's mean subtraction would
        cancel it, and its gradient is exactly 0), and bn1..bn4 hold gamma, beta and the statistics."""
        k, (c1, c2), (h1, h2) = self.kernel_size, self.channels, self.hidden
        shapes = {
            "conv1.weight": (c1, self.in_channels, k, k),
            "conv1.bias": (c1,),
            "conv2.weight": (c2, c1, k, k),
            "conv2.bias": (c2,),
            "fc1.weight": (
                h1,
                self.flat_features,
            ),  # input rows in (C, H, W) order: the canonical flatten
            "fc1.bias": (h1,),
            "fc2.weight": (h2, h1),
            "fc2.bias": (h2,),
            "fc3.weight": (self.n_classes, h2),
            "fc3.bias": (self.n_classes,),
        }
        if self.batch_norm:
            for prefix in ("conv1", "conv2", "fc1", "fc2"):
                del shapes[f"{prefix}.bias"]
            for prefix, n in zip(("bn1", "bn2", "bn3", "bn4"), (c1, c2, h1, h2)):
                shapes.update({f"{prefix}.{key}": (n,) for key in BN_TENSORS})
        return shapes


# ----------------------------------------------------------------------------- attention
PAD = 0  # token id 0 is padding in every sequence task; a padded key is never attended to
NORMS = ("post", "pre")
FF_ACTIVATIONS = (
    "relu",
    "gelu",
    "gelu_tanh",
)  # gelu = exact erf form; gelu_tanh = the tanh approximation
OPTIMIZERS = ("sgd", "adam")


def attention_shapes(
    prefix: str, d_model: int, kdim: int | None = None, vdim: int | None = None
) -> dict[str, tuple[int, ...]]:
    """Canonical multi-head attention: separate W_q, W_k, W_v, W_o as dense (out, in), each (E, E);
    a cross-attention layer's key and value inputs may have their own widths: W_k (E, kdim),
    W_v (E, vdim) (default E). Every bias is (E,)."""
    widths = {"q": d_model, "k": kdim or d_model, "v": vdim or d_model, "o": d_model}
    shapes = {}
    for proj, width in widths.items():
        shapes[f"{prefix}.{proj}.weight"] = (d_model, width)
        shapes[f"{prefix}.{proj}.bias"] = (d_model,)
    return shapes


@dataclass(frozen=True)
class AttentionConfig:
    """One multi-head self-attention layer between a token embedding and a per-token head."""

    vocab: int = 11  # PAD + the digits 0..9 (tokens 1..10)
    d_model: int = 32  # E; must split evenly into n_heads heads of size HS = E / NH
    n_heads: int = 4
    causal: bool = False  # add a causal mask (query t sees keys <= t) to the key-padding mask
    stock: bool = False  # run the framework's own MHA layer (same canonical weights) instead of the hand-written one
    optimizer: str = "adam"  # adam trains the task quickly; parity trajectories use "sgd" (Keras Adam's epsilon differs)

    def __post_init__(self):
        if self.d_model < 2 or self.n_heads < 1 or self.d_model % self.n_heads or self.d_model % 2:
            raise ValueError(
                f"d_model must be an even multiple of n_heads (positions pair a sin and a cos): {self}"
            )
        if self.vocab < 2:
            raise ValueError(f"vocab must hold PAD and at least one token: {self}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"unknown optimizer {self.optimizer!r}; choose from {', '.join(OPTIMIZERS)}"
            )

    @property
    def n_classes(self) -> int:
        return self.vocab  # one logit per token id at every position

    @property
    def head_size(self) -> int:
        return self.d_model // self.n_heads

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return {
            "embed.weight": (self.vocab, self.d_model),
            **attention_shapes("attn", self.d_model),
            "head.weight": (self.vocab, self.d_model),
            "head.bias": (self.vocab,),
        }


@dataclass(frozen=True)
class TransformerConfig:
    """A tiny Transformer encoder: embedding + sinusoidal positions, N blocks, a per-token head."""

    vocab: int = 11
    d_model: int = 32
    n_heads: int = 4
    d_ff: int = 64  # hidden width of the position-wise feed-forward network
    n_layers: int = 2
    norm: str = (
        "post"  # "post": x = LN(x + f(x)) as in the paper; "pre": x = x + f(LN(x)), plus a final LN
    )
    # a final LayerNorm ln_f after the last block (torch: nn.TransformerEncoder(norm=...)); None
    # means the placement's usual choice: on for pre-LN, off for post-LN (has_final_norm)
    final_norm: bool | None = None
    activation: str = "relu"  # one of FF_ACTIVATIONS, passed explicitly: torch/Keras GELU default to erf, jax.nn.gelu to tanh
    ln_eps: float = 1e-5  # passed explicitly: the defaults are torch 1e-5, Keras 1e-3, Flax 1e-6
    causal: bool = False
    stock: bool = False
    optimizer: str = "adam"

    def __post_init__(self):
        if self.d_model < 2 or self.n_heads < 1 or self.d_model % self.n_heads or self.d_model % 2:
            raise ValueError(
                f"d_model must be an even multiple of n_heads (positions pair a sin and a cos): {self}"
            )
        if self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}; choose from {', '.join(NORMS)}")
        if self.activation not in FF_ACTIVATIONS:
            raise ValueError(
                f"unknown activation {self.activation!r}; choose from {', '.join(FF_ACTIVATIONS)}"
            )
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"unknown optimizer {self.optimizer!r}; choose from {', '.join(OPTIMIZERS)}"
            )
        if self.n_layers < 1 or self.d_ff < 1 or self.vocab < 2 or self.ln_eps <= 0:
            raise ValueError(f"sizes must be positive: {self}")

    @property
    def n_classes(self) -> int:
        return self.vocab

    @property
    def head_size(self) -> int:
        return self.d_model // self.n_heads

    @property
    def has_final_norm(self) -> bool:
        """Whether ln_f follows the last block: final_norm, or by default pre-LN yes, post-LN no
        (torch's nn.TransformerEncoder has no final norm unless given one, in either placement)."""
        return self.norm == "pre" if self.final_norm is None else self.final_norm

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """LayerNorm weight/bias are (E,); feed-forward ff1 (d_ff, E), ff2 (E, d_ff)."""
        E, F = self.d_model, self.d_ff
        shapes = {"embed.weight": (self.vocab, E)}
        for i in range(self.n_layers):
            p = f"blocks.{i}"
            shapes.update(attention_shapes(f"{p}.attn", E))
            shapes.update({f"{p}.ln1.weight": (E,), f"{p}.ln1.bias": (E,)})
            shapes.update(
                {
                    f"{p}.ff1.weight": (F, E),
                    f"{p}.ff1.bias": (F,),
                    f"{p}.ff2.weight": (E, F),
                    f"{p}.ff2.bias": (E,),
                }
            )
            shapes.update({f"{p}.ln2.weight": (E,), f"{p}.ln2.bias": (E,)})
        if self.has_final_norm:  # pre-LN leaves the residual stream unnormalised without it
            shapes.update({"ln_f.weight": (E,), "ln_f.bias": (E,)})
        shapes.update({"head.weight": (self.vocab, E), "head.bias": (self.vocab,)})
        return shapes


# ----------------------------------------------------------------------------- perceptron
@dataclass(frozen=True)
class PerceptronConfig:
    """Rosenblatt's perceptron: one neuron, a weighted sum then a step; labels 0 and 1."""

    in_features: int = 2

    def __post_init__(self):
        if self.in_features < 1:
            raise ValueError(f"in_features must be positive: {self}")

    @property
    def n_classes(self) -> int:
        return 2  # a single step output separates two classes

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """One dense neuron in the canonical layout: weight (1, in), bias (1,)."""
        return {"neuron.weight": (1, self.in_features), "neuron.bias": (1,)}


# ----------------------------------------------------------------------------- optimisers
OPTIMIZER_NAMES = ("sgd", "momentum", "nesterov", "rmsprop", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "step")


@dataclass(frozen=True)
class OptimizerConfig:
    """One optimiser, schedule and clipping rule, taken by every framework's optim.make_optimizer.

    Each field is the *algorithm's* hyperparameter; the frameworks' own names and defaults differ
    (docs/PORTING.md, "Optimisers, regularisation and initialisation"), so every one is passed
    explicitly and none is left to a framework default.
    """

    name: str = "sgd"  # one of OPTIMIZER_NAMES
    lr: float = 0.1  # peak learning rate (after warmup)
    momentum: float = 0.9  # momentum / nesterov: v = momentum * v + g (torch's form)
    beta1: float = 0.9  # adam / adamw first-moment decay
    beta2: float = 0.999  # adam / adamw second-moment decay
    rho: float = 0.99  # rmsprop square-average decay: torch alpha (default 0.99), Keras rho (0.9), optax decay (0.9)
    eps: float = 1e-8  # added to sqrt(v) (torch, optax); Keras puts it elsewhere, see PORTING
    weight_decay: float = 0.0  # decoupled decay p -= lr * wd * p, before the adam step (adamw only)
    schedule: str = "constant"  # one of SCHEDULES
    warmup_steps: int = 0  # linear warmup lr * t / warmup_steps for t < warmup_steps
    decay_steps: int = 1000  # cosine: steps after warmup to reach min_lr_ratio * lr
    min_lr_ratio: float = 0.0  # cosine floor as a fraction of lr (Keras alpha)
    step_size: int = 100  # step: multiply the lr by gamma every step_size steps after warmup
    gamma: float = 0.1
    clip_norm: float | None = None  # clip the global gradient norm to this (None: no clipping)

    def __post_init__(self):
        if self.name not in OPTIMIZER_NAMES:
            raise ValueError(
                f"unknown optimizer {self.name!r}; choose from {', '.join(OPTIMIZER_NAMES)}"
            )
        if self.schedule not in SCHEDULES:
            raise ValueError(
                f"unknown schedule {self.schedule!r}; choose from {', '.join(SCHEDULES)}"
            )
        if not (
            self.lr > 0
            and 0 <= self.momentum < 1
            and 0 <= self.beta1 < 1
            and 0 <= self.beta2 < 1
            and 0 <= self.rho < 1
        ):
            raise ValueError(f"need lr > 0 and momentum, beta1, beta2, rho in [0, 1): {self}")
        if (
            self.eps < 0
            or self.weight_decay < 0
            or self.warmup_steps < 0
            or self.decay_steps < 1
            or self.step_size < 1
        ):
            raise ValueError(
                f"need eps, weight_decay, warmup_steps >= 0 and decay_steps, step_size >= 1: {self}"
            )
        if self.weight_decay and self.name != "adamw":
            # torch's SGD/Adam weight_decay is an L2 gradient term, Keras's is decoupled: refuse the ambiguity
            raise ValueError(
                f"weight_decay (decoupled) is for adamw only, got optimizer {self.name!r}"
            )
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise ValueError(f"clip_norm must be positive, got {self.clip_norm}")

    def learning_rate(self, step: int) -> float:
        """The reference schedule: the lr of the update that follows `step` earlier updates."""
        if step < self.warmup_steps:
            return self.lr * step / self.warmup_steps
        t = step - self.warmup_steps
        if self.schedule == "cosine":
            cosine = 0.5 * (1 + math.cos(math.pi * min(t, self.decay_steps) / self.decay_steps))
            return self.lr * ((1 - self.min_lr_ratio) * cosine + self.min_lr_ratio)
        if self.schedule == "step":
            return self.lr * self.gamma ** (t // self.step_size)
        return self.lr


RNN_CELLS = {
    "rnn": 1,
    "lstm": 4,
    "gru": 3,
}  # cell -> number of gate blocks stacked in W_xh, W_hh, b_h
RNN_OUTPUTS = ("sequence", "last")
RNN_NONLINEARITIES = ("tanh", "relu")  # the simple RNN's f in h' = f(W_xh x + W_hh h + b_h)


@dataclass(frozen=True)
class RNNConfig:
    """Recurrent network: one recurrent layer (tanh RNN, LSTM or GRU) from a zero state, then a linear head.

    Canonical gate order, stacked along the first axis of W_xh, W_hh and b_h: LSTM (i, f, g, o),
    GRU (r, z, n). The GRU's b_hn is the bias inside the reset product, r * (W_hn h + b_hn).
    """

    cell: str = "rnn"  # one of RNN_CELLS
    in_features: int = 1  # D: features per step (the vocabulary size for one-hot characters)
    hidden: int = 64  # H
    n_classes: int = 2  # C: logits per scored step
    output: str = (
        "sequence"  # "sequence": logits at every step (many-to-many); "last": at the last step only
    )
    clip_norm: float | None = (
        1.0  # train() rescales the gradients to this global L2 norm at most; None: no clipping
    )
    fused: bool = True  # torch/Keras/Flax: the framework's recurrent layer; False: the step written out by hand
    # the simple RNN's h' = f(W_xh x + W_hh h + b_h): torch nn.RNN(nonlinearity=), Keras
    # SimpleRNN(activation=), Flax nnx.SimpleCell(activation_fn=); the LSTM and GRU keep their own
    nonlinearity: str = "tanh"
    num_layers: int = 1  # stacked layers: layer k > 0 reads layer k - 1's outputs (B, T, dirs*H)
    bidirectional: bool = False  # a second layer reads the sequence backwards; outputs concatenated
    # the GRU's reset after the matmul, r * (W_hn h + b_hn) (torch, Keras's default); False: Keras's
    # GRU(reset_after=False), n = tanh(W_in x + b_in + W_hn (r * h)), one bias b_h and no b_hn
    reset_after: bool = True

    def __post_init__(self):
        if self.cell not in RNN_CELLS:
            raise ValueError(f"unknown cell {self.cell!r}; choose from {', '.join(RNN_CELLS)}")
        if self.nonlinearity not in RNN_NONLINEARITIES:
            raise ValueError(
                f"unknown nonlinearity {self.nonlinearity!r}; choose from "
                f"{', '.join(RNN_NONLINEARITIES)}"
            )
        if self.nonlinearity != "tanh" and self.cell != "rnn":
            raise ValueError(f"nonlinearity applies to the simple RNN only, not {self.cell!r}")
        if self.output not in RNN_OUTPUTS:
            raise ValueError(
                f"unknown output {self.output!r}; choose from {', '.join(RNN_OUTPUTS)}"
            )
        if self.in_features < 1 or self.hidden < 1 or self.n_classes < 2:
            raise ValueError(f"layer sizes must be positive: {self}")
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise ValueError(f"clip_norm must be positive or None, got {self.clip_norm}")
        if self.num_layers < 1:
            raise ValueError(f"num_layers must be at least 1, got {self.num_layers}")
        if not self.reset_after and (self.cell != "gru" or self.layer_prefixes() != [""]):
            raise ValueError("reset_after=False is a one-layer, one-direction GRU's option")
        if not self.fused and self.layer_prefixes() != [""]:
            raise ValueError("the step by hand (fused=False) runs one forward layer only")

    @property
    def gates(self) -> int:
        return RNN_CELLS[self.cell]

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    def layer_prefixes(self) -> list[str]:
        """The canonical prefix of each recurrent layer and direction, in torch's order (layer by
        layer, forward then reverse): "" for layer 0 forward (every one-layer checkpoint's names),
        "reverse.", "l1.", "l1.reverse.", ...; torch's parameter suffixes _l0, _l0_reverse, _l1, ..."""
        return [
            ("" if k == 0 else f"l{k}.") + ("reverse." if d else "")
            for k in range(self.num_layers)
            for d in range(self.directions)
        ]

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Canonical names and scratch-layout shapes: W_xh (G*H, D), W_hh (G*H, H), one b_h (G*H,),
        W_hy (C, H); each further layer and direction the same under its layer_prefixes() prefix."""
        gh, shapes = self.gates * self.hidden, {}
        for i, p in enumerate(self.layer_prefixes()):
            d_in = self.in_features if i < self.directions else self.directions * self.hidden
            shapes |= {f"{p}W_xh": (gh, d_in), f"{p}W_hh": (gh, self.hidden), f"{p}b_h": (gh,)}
            if self.cell == "gru" and self.reset_after:
                shapes[f"{p}b_hn"] = (self.hidden,)
        width = self.directions * self.hidden  # the head reads (B, T, dirs*H)
        return {**shapes, "W_hy": (self.n_classes, width), "b_y": (self.n_classes,)}
