"""What every Keras model's `train` shares: the shared batch order as one tf.data pipeline for
`model.fit`, and the callback that hands each epoch's loss to the caller's `on_epoch`.

The four frameworks step through the same mini-batches (tasks.data.batches: a new order each
epoch, the last batch of an epoch possibly smaller) and report the mean of an epoch's batch losses.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from tasks.data import batches
from tasks.train import EarlyStop


# ----------------------------------------------------------------------------- data
def shared_batches(x, y, *, batch_size: int, seed: int, epochs: int) -> tf.data.Dataset:
    """Every epoch's mini-batches, one epoch after the other: fit(..., steps_per_epoch=
    steps_per_epoch(len(x), batch_size)) cuts the stream back into epochs. x keeps its dtype."""
    index = [i for epoch in range(epochs) for i in batches(len(x), batch_size, seed, epoch)]
    rows = tf.RaggedTensor.from_row_lengths(np.concatenate(index), [len(i) for i in index])
    x, y = tf.constant(x), tf.constant(y)  # eager tensors: captured by reference, not as constants
    return tf.data.Dataset.from_tensor_slices(rows).map(
        lambda i: (tf.gather(x, i), tf.gather(y, i))  # (B,) indices -> (B, ...) examples
    )


def steps_per_epoch(n: int, batch_size: int) -> int:
    """ceil(n / B): a partial last batch is kept.

    Each model's `train` also compiles with `steps_per_execution` set to this: fit then runs a whole
    epoch in one call of its compiled train function (a tf.while_loop over the epoch's batches);
    with the default of 1 it calls that function from Python once per batch, 0.4-0.8 ms of fixed
    cost a step (docs/BENCHMARKS.md), more than the MLP's whole step in torch. The epochs stay
    exact: a value that did not divide the epoch would run its last call on into the next epoch's
    batches (the stream is one dataset). Per-batch callbacks fire once per epoch; ours act at
    epoch ends only."""
    return -(-n // batch_size)


def one_batch(split, dtype: str) -> tf.data.Dataset | None:
    """A whole (x, y) split as one batch: its loss is then exactly evaluate()'s (None: no split)."""
    if split is None:
        return None
    x, y = split
    return tf.data.Dataset.from_tensors((x.astype(dtype) if x.dtype.kind == "f" else x, y))


# ----------------------------------------------------------------------------- epoch reports
class BatchMeanLoss(keras.metrics.Mean):
    """The mean of the batch losses since the last reset (each epoch), unweighted.

    Keras's own "loss" weights each batch by its size (the mean over the epoch's samples); the other
    three frameworks report the mean of the batch losses, which differs when the last batch is
    smaller. A model updates it in `compute_loss`."""

    def __init__(self, dtype: str):
        super().__init__(name="batch_loss", dtype=dtype)


class OnEpochEnd(keras.callbacks.Callback):
    """Calls on_epoch(epoch, the epoch's `metric`: by default the mean batch loss) at each epoch end;
    an EarlyStop it raises ends fit there, keeping the history."""

    def __init__(self, on_epoch=None, metric: str = "batch_loss", kind=float):
        super().__init__()
        self.on_epoch, self.metric, self.kind = on_epoch, metric, kind

    def on_epoch_end(self, epoch, logs=None):
        if self.on_epoch is None:
            return
        # with validation data, the validation loss too (tasks.train.EpochMonitor records it)
        val = (
            {"val_loss": float(logs[f"val_{self.metric}"])} if f"val_{self.metric}" in logs else {}
        )
        try:
            self.on_epoch(epoch, self.kind(logs[self.metric]), **val)
        except EarlyStop:
            self.model.stop_training = True


def early_stopping(patience: int) -> keras.callbacks.EarlyStopping:
    """The stock callback on the validation loss (the one batch of `one_batch`): stop after
    `patience` epochs without a lower one, then restore the weights of the best epoch."""
    return keras.callbacks.EarlyStopping(
        monitor="val_batch_loss", mode="min", patience=patience, restore_best_weights=True
    )
