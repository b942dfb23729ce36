"""One frozen config dataclass per model, shared by all four implementations.

Each config also states its canonical parameter names and shapes (`param_shapes`), which every
framework's loader checks against before it touches a model.
"""

from __future__ import annotations

from dataclasses import dataclass

ACTIVATIONS = ("relu", "tanh", "sigmoid", "leaky_relu")
HEADS = ("sigmoid", "softmax")


@dataclass(frozen=True)
class MLPConfig:
    """Multilayer perceptron: dense layers with one hidden activation and a classification head."""

    in_features: int = 2
    hidden: tuple[int, ...] = (32, 32)  # one entry per hidden layer; () is logistic/softmax regression
    n_classes: int = 2  # 2 with head="sigmoid" gives one logit; softmax gives n_classes logits
    activation: str = "relu"  # one of ACTIVATIONS
    head: str = "sigmoid"  # "sigmoid" + binary cross-entropy, or "softmax" + cross-entropy
    leaky_slope: float = 0.01  # torch and jax default 0.01; Keras LeakyReLU defaults to 0.3, so pass it

    def __post_init__(self):
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; choose from {', '.join(ACTIVATIONS)}")
        if self.head not in HEADS:
            raise ValueError(f"unknown head {self.head!r}; choose from {', '.join(HEADS)}")
        if self.head == "sigmoid" and self.n_classes != 2:
            raise ValueError(f"a sigmoid head is binary: n_classes must be 2, got {self.n_classes}")
        if self.in_features < 1 or self.n_classes < 2 or any(h < 1 for h in self.hidden):
            raise ValueError(f"layer sizes must be positive: {self}")

    @property
    def out_features(self) -> int:
        return 1 if self.head == "sigmoid" else self.n_classes

    @property
    def sizes(self) -> list[int]:
        return [self.in_features, *self.hidden, self.out_features]

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Canonical names and scratch-layout shapes: dense weight (out, in), bias (out,)."""
        shapes = {}
        for i, (n_in, n_out) in enumerate(zip(self.sizes[:-2], self.sizes[1:-1])):
            shapes[f"hidden.{i}.weight"] = (n_out, n_in)
            shapes[f"hidden.{i}.bias"] = (n_out,)
        shapes["head.weight"] = (self.out_features, self.sizes[-2])
        shapes["head.bias"] = (self.out_features,)
        return shapes


LENET_ACTIVATIONS = ("tanh", "relu")
POOLINGS = ("avg", "max")


@dataclass(frozen=True)
class LeNet5Config:
    """LeNet-5: conv 6@5x5 -> pool 2x2 -> conv 16@5x5 -> pool 2x2 -> dense 120 -> dense 84 -> dense 10.

    With the defaults it has 61,706 parameters: conv1 156, conv2 2,416, fc1 48,120, fc2 10,164, fc3 850.
    """

    in_channels: int = 1  # grey images
    image_size: int = 32  # square input, H = W; the paper pads 28x28 MNIST digits to 32x32
    channels: tuple[int, int] = (6, 16)  # output channels of conv1 and conv2
    kernel_size: int = 5  # square kernels, stride 1, no padding ("valid")
    hidden: tuple[int, int] = (120, 84)  # the two dense layers after the flatten (fc1, fc2)
    n_classes: int = 10  # fc3 outputs logits for a softmax cross-entropy
    activation: str = "tanh"  # the paper's squashing function; "relu" is the modern choice
    pooling: str = "avg"  # the paper's subsampling averages 2x2 blocks; "max" is the modern choice

    def __post_init__(self):
        if self.activation not in LENET_ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r} for lenet5; choose from {', '.join(LENET_ACTIVATIONS)}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {self.pooling!r}; choose from {', '.join(POOLINGS)}")
        if self.feature_size < 1:
            raise ValueError(f"image_size {self.image_size} is too small for two {self.kernel_size}x{self.kernel_size} convs and 2x2 pools")

    @property
    def feature_size(self) -> int:
        """Height (= width) of conv2's pooled output: 32 -> conv 28 -> pool 14 -> conv 10 -> pool 5."""
        return ((self.image_size - self.kernel_size + 1) // 2 - self.kernel_size + 1) // 2

    @property
    def flat_features(self) -> int:
        """Inputs of fc1: C * H * W of the last pooled map, 16 * 5 * 5 = 400 by default."""
        return self.channels[1] * self.feature_size**2

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Canonical names and scratch-layout shapes: conv (out_c, in_c, kh, kw), dense (out, in)."""
        k, (c1, c2), (h1, h2) = self.kernel_size, self.channels, self.hidden
        return {
            "conv1.weight": (c1, self.in_channels, k, k),
            "conv1.bias": (c1,),
            "conv2.weight": (c2, c1, k, k),
            "conv2.bias": (c2,),
            "fc1.weight": (h1, self.flat_features),  # input rows in (C, H, W) order: the canonical flatten
            "fc1.bias": (h1,),
            "fc2.weight": (h2, h1),
            "fc2.bias": (h2,),
            "fc3.weight": (self.n_classes, h2),
            "fc3.bias": (self.n_classes,),
        }
