"""The recurrent networks' specs: rnn, lstm and gru, three models of one framework file
(scratch/recurrent.py and the other three)."""

from __future__ import annotations

from tasks.cases import Case, sequences
from tasks.configs import RNN_NONLINEARITIES, RNNConfig
from tasks.specs.base import GRADIENT_FLAGS, ModelSpec


def one_hidden_size(sizes: tuple[int, ...]) -> str | None:
    return None if len(sizes) == 1 else "a recurrent network has one hidden size"


def config_of(cell: str):
    """make_config for one cell: features per step and classes from the data, H from --hidden."""

    def make_config(data, opts) -> RNNConfig:
        from tasks.train import plain_sgd

        if one_hidden_size(opts.hidden):
            raise ValueError(f"{one_hidden_size(opts.hidden)}, got {opts.hidden}")
        return RNNConfig(
            cell=cell,
            in_features=data.x_train.shape[-1],  # (B, T, D): features per step
            hidden=opts.hidden[0],
            n_classes=data.n_classes,
            # a label per step, or one per sequence
            output="sequence" if data.y_train.ndim == 2 else "last",
            # --activation (the simple RNN's tanh or relu), --num-layers, --bidirectional
            **({"nonlinearity": opts.activation} if getattr(opts, "activation", None) else {}),
            num_layers=getattr(opts, "num_layers", None) or 1,
            bidirectional=bool(getattr(opts, "bidirectional", None)),
            # an OptimizerConfig clips by its own clip_norm (optimizer_config moves the RNN's default there)
            **({} if plain_sgd(opts) else {"clip_norm": None}),
        )

    return make_config


def cases(cell: str, states: tuple[str, ...]) -> tuple[Case, ...]:
    """Every step's hidden state and the final state(s) are compared as outputs too. clip_norm is
    below the gradient norm of some of the SGD steps and above others, so both branches run."""
    return (
        Case(
            cell,
            "sequence",
            RNNConfig(cell, 4, 5, 3, "sequence", clip_norm=0.25),
            sequences,
            batch=4,
            extra_outputs=states,
            remainder=3,  # a last partial batch
        ),
        Case(
            cell,
            "last",
            RNNConfig(cell, 3, 5, 2, "last", clip_norm=0.5),
            sequences,
            batch=4,
            extra_outputs=states,
        ),
    )


SPECS = tuple(
    ModelSpec(
        name=cell,
        file="recurrent",  # one file per framework holds all three cells: recurrent.py
        tasks=("pytext", "sign"),
        defaults={
            "pytext": dict(epochs=20, lr=lr, batch_size=16, hidden=(64,)),
            "sign": dict(epochs=10, lr=sign_lr, batch_size=16, hidden=(16,)),
        },
        summary=summary,
        config_type=RNNConfig,
        make_config=config_of(cell),
        inputs=sequences,
        default_clip=RNNConfig.clip_norm,  # SGD clipped at 1 unless --clip-norm says otherwise
        flags=GRADIENT_FLAGS
        | {"--hidden", "--num-layers", "--bidirectional"}
        | ({"--activation"} if cell == "rnn" else set()),
        activations=RNN_NONLINEARITIES if cell == "rnn" else (),
        check_hidden=one_hidden_size,
        cases=cases(cell, states),
    )
    for cell, lr, sign_lr, summary, states in (
        (
            "rnn",
            2.0,
            0.2,
            "simple tanh RNN (Elman), backpropagation through time, gradient clipping",
            ("hidden", "h_n"),
        ),
        (
            "lstm",
            4.0,
            0.5,
            "LSTM: gates (i, f, g, o), cell state; torch/Keras/Flax converters",
            ("hidden", "h_n", "c_n"),
        ),
        (
            "gru",
            3.0,
            0.2,
            "GRU: gates (r, z, n), reset after the matmul; torch/Keras/Flax converters",
            ("hidden", "h_n"),
        ),  # sign at 0.5: Keras's float32 run ended at 88%
    )
)
