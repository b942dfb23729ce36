"""The multilayer perceptron's spec (scratch/mlp.py and the other three)."""

from __future__ import annotations

from dataclasses import replace

from tasks.cases import Case, OptimizerCase, optimizer_cases, tabular, with_batch_norm
from tasks.configs import ACTIVATIONS, MLPConfig, OptimizerConfig
from tasks.specs.base import (
    GRADIENT_FLAGS,
    REGULARISER_FLAGS,
    ModelSpec,
    flatten,
    regularisers,
    scratch_drawn,
)


def make_config(data, opts) -> MLPConfig:
    """Sizes from the data (flat features, classes or regression targets), the rest from the
    options; float targets (a regression) take the identity head and mean squared error."""
    head = "sigmoid" if data.n_classes == 2 else "softmax"
    return MLPConfig(
        in_features=data.in_features,
        hidden=tuple(opts.hidden),
        n_classes=data.n_classes,
        activation=opts.activation,
        head="identity" if data.regression else head,
        **regularisers(opts),
    )


CASES = (
    # 20 full batches of 8 and a last one of 3: a pipeline that drops it takes one step fewer
    Case("mlp", "sigmoid-tanh", MLPConfig(5, (7, 6), 2, "tanh", "sigmoid"), tabular, remainder=3),
    Case("mlp", "softmax-relu", MLPConfig(5, (7, 6), 4, "relu", "softmax"), tabular),
    # slope 0.2 is no framework's default (torch and jax 0.01, Keras 0.3): a dropped slope fails
    Case(
        "mlp",
        "softmax-leaky0.2",
        MLPConfig(5, (7,), 3, "leaky_relu", "softmax", leaky_slope=0.2),
        tabular,
    ),
    Case("mlp", "sigmoid-sigmoid", MLPConfig(5, (6,), 2, "sigmoid", "sigmoid"), tabular),
    Case("mlp", "softmax-linear", MLPConfig(5, (), 3, "relu", "softmax"), tabular),
    # batch norm in train mode (the hidden layers lose their bias) and dropout with supplied masks
    Case(
        "mlp",
        "relu-batchnorm-dropout",
        MLPConfig(5, (7, 6), 4, "relu", "softmax", batch_norm=True, dropout=0.3),
        tabular,
        init=with_batch_norm,
    ),
    # regression (scikit-learn's MLPRegressor): an identity head, mean squared error, float targets
    # (B, K); a network of identity activations (3 targets, a last partial batch) and a tanh one
    Case(
        "mlp",
        "regression-identity",
        MLPConfig(5, (7, 6), 3, "identity", "identity"),
        tabular,
        remainder=3,
    ),
    Case("mlp", "regression-tanh", MLPConfig(5, (7,), 1, "tanh", "identity"), tabular),
)

# tanh hidden units: no gradient is exactly zero, so eps = 0 (the one setting where Keras's Adam and
# RMSprop are torch's algorithm, docs/PORTING.md) never divides 0 by 0
OPTIMIZER_CONFIG = MLPConfig(5, (7, 6), 3, "tanh", "softmax")
OPTIMIZER_CASES = (
    *optimizer_cases("mlp", OPTIMIZER_CONFIG, tabular),
    # batch norm in train mode; the hidden layers have no bias then (a batch norm cancels it, and
    # its exactly-zero gradient would be rounding noise that Adam turns into lr-sized steps)
    OptimizerCase("mlp", "optim-adam-batchnorm", replace(OPTIMIZER_CONFIG, batch_norm=True), tabular, OptimizerConfig("adam", lr=0.01, eps=0.0), init=with_batch_norm),
    # 50 batches of 6 and a last one of 4, through each framework's input pipeline
    OptimizerCase("mlp", "optim-adam-partial-batch", OPTIMIZER_CONFIG, tabular, OptimizerConfig("adam", lr=0.01, eps=0.0), batch=6, remainder=4),
    # the mean squared error's gradient through Adam's moments (a regression head, 3 targets)
    OptimizerCase("mlp", "optim-adam-regression", replace(OPTIMIZER_CONFIG, head="identity"), tabular, OptimizerConfig("adam", lr=0.01, eps=0.0)),
)  # fmt: skip

SPECS = (
    ModelSpec(
        name="mlp",
        file="mlp",
        tasks=("moons", "digits", "mnist", "xor", "diabetes"),
        defaults={
            "moons": dict(epochs=60, lr=0.2, batch_size=32, hidden=(32, 32), activation="relu"),
            "digits": dict(epochs=40, lr=0.2, batch_size=32, hidden=(64,), activation="relu"),
            "mnist": dict(epochs=10, lr=0.1, batch_size=64, hidden=(128,), activation="relu"),
            # the wall the perceptron cannot pass: one tanh hidden layer, full batch, 100% in 50 of 50 seeds
            "xor": dict(epochs=80, lr=1.0, batch_size=4, hidden=(16,), activation="tanh"),
            # regression: identity activations make the MLP a linear model, which diabetes suits
            # (measured: relu and tanh overfit, test R² 0.37-0.50 against 0.48-0.53 here, within 2%
            # of least squares' test MSE on seeds 0-2)
            "diabetes": dict(
                epochs=60, lr=0.02, batch_size=32, hidden=(16,), activation="identity"
            ),
        },
        summary="multilayer perceptron (any depth; relu/tanh/sigmoid/leaky relu/identity; sigmoid, softmax or identity (regression, MSE) head)",
        config_type=MLPConfig,
        make_config=make_config,
        inputs=tabular,
        prepare=flatten,  # the MLP takes flat feature vectors: images are flattened
        initial_weights=scratch_drawn("mlp"),
        flags=GRADIENT_FLAGS | REGULARISER_FLAGS | {"--hidden", "--activation", "--replicas"},
        activations=ACTIVATIONS,
        cases=CASES,
        optimizer_cases=OPTIMIZER_CASES,
    ),
)
