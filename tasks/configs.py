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
