"""Seeded text from a character-level recurrent model (`rosetta sample rnn --framework torch`).

The model is trained on the `pytext` task (the Zen of Python and stdlib docstrings) with the
registry's defaults, or loaded from canonical weights saved by an earlier run under `runs/`. Any
framework can load any run's weights: the file is canonical. Characters are drawn one at a time from
softmax(logits / temperature) with a seeded NumPy generator; the model sees the last `seq_len`
characters from a zero state, exactly as in training.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tasks import weights
from tasks.data import load_task
from tasks.registry import load_impl
from tasks.train import TrainOptions, make_config

RUNS = Path("runs")
TASK = "pytext"


def default_path(model: str, framework: str, opts: TrainOptions) -> Path:
    return (
        RUNS
        / f"{model}-{TASK}-{framework}-h{opts.hidden[0]}-e{opts.epochs}-seed{opts.seed}-{opts.dtype}.safetensors"
    )


def train_or_load(
    model: str,
    framework: str,
    opts: TrainOptions,
    path: str | Path | None = None,
    retrain: bool = False,
    progress=None,
):
    """(impl, net, data, path, trained, note): load `path` (or the default run file) if it exists, else
    train with the registry's defaults for the task and save the canonical weights there. `note` says
    what loading converted (weights.load_as), or is None. A file that cannot be loaded (corrupt,
    another model's, NaN) raises CanonicalWeightsError naming it and the way out, --retrain."""
    opts = opts.with_defaults(model, TASK)
    data = load_task(TASK, seed=opts.seed)
    cfg = make_config(model, data, opts)
    impl = load_impl(framework, model)
    net = impl.create_model(cfg, seed=opts.seed, dtype=opts.dtype)
    path = Path(path) if path else default_path(model, framework, opts)
    if path.exists() and not retrain:
        try:
            params, note = weights.load_as(path, opts.dtype)
            impl.load_canonical(net, params)
        except weights.CanonicalWeightsError as e:
            named = (
                "" if isinstance(e, weights.WeightsFileError) else f"{path}: "
            )  # it names the file
            raise weights.CanonicalWeightsError(
                f"{named}{e}; run again with --retrain to train anew and overwrite it"
            ) from None
        return impl, net, data, path, False, note
    impl.load_canonical(
        net, weights.cast(weights.init_uniform(cfg.param_shapes(), opts.seed), opts.dtype)
    )
    on_epoch = progress.start(framework, opts.epochs) if progress else None
    impl.train(
        net,
        data,
        epochs=opts.epochs,
        lr=opts.lr,
        batch_size=opts.batch_size,
        seed=opts.seed,
        on_epoch=on_epoch,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    weights.save(path, impl.export_canonical(net))
    return impl, net, data, path, True, None


def generate(
    impl, net, vocab: str, prompt: str, *, length: int, temperature: float, seed: int, window: int
) -> str:
    """The prompt followed by `length` sampled characters."""
    index = {ch: i for i, ch in enumerate(vocab)}
    missing = sorted(set(prompt) - set(index))
    if missing:
        raise ValueError(f"the prompt has characters the model never saw: {''.join(missing)!r}")
    rng, one_hot, ids = (
        np.random.default_rng(seed),
        np.eye(len(vocab)),
        [index[ch] for ch in prompt],
    )
    for _ in range(length):
        x = one_hot[ids[-window:]][None]  # (1, T, V): the last `window` characters
        logits = (
            np.asarray(impl.predict_logits(net, x)[0, -1], np.float64) / temperature
        )  # (V,): the next character
        p = np.exp(logits - logits.max())
        ids.append(int(rng.choice(len(vocab), p=p / p.sum())))
    return "".join(vocab[i] for i in ids)


def sample(
    model: str,
    framework: str,
    prompt: str,
    *,
    temperature: float = 0.8,
    length: int = 200,
    opts: TrainOptions | None = None,
    path=None,
    retrain=False,
    progress=None,
) -> dict:
    opts = opts or TrainOptions()
    missing = sorted(set(prompt) - set(load_task(TASK, seed=opts.seed).meta["vocab"]))
    if missing:  # before any training
        raise ValueError(f"the prompt has characters the model never saw: {''.join(missing)!r}")
    impl, net, data, path, trained, note = train_or_load(
        model, framework, opts, path, retrain, progress
    )
    text = generate(
        impl,
        net,
        data.meta["vocab"],
        prompt,
        length=length,
        temperature=temperature,
        seed=opts.seed,
        window=data.meta["seq_len"],
    )
    return {
        "text": text,
        "weights": str(path),
        "trained": trained,
        "note": note,
        "test_loss": impl.evaluate(net, data.x_test, data.y_test)[0],
        "baselines": data.meta["baselines"],
    }
