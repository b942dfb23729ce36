"""Data-parallel training in Keras 3 (TensorFlow backend): tf.distribute.MirroredStrategy, compile + fit.

MirroredStrategy keeps one replica of every variable on each of N devices. The model and its
optimizer are built inside `strategy.scope()`; `fit` then hands each replica its chunk of every
global batch (the dataset is distributed with `experimental_distribute_dataset`), runs the step on
each, divides each replica's mean loss by N and sums the gradients over the replicas before the
optimizer applies them, so every replica takes the one-device step on the whole global batch.
`BatchNormalization(synchronized=True)` all-reduces the batch statistics.

The explicit form beside it, a custom replica step under `strategy.run`, must divide the summed
per-example loss by the *global* batch (`tf.nn.compute_average_loss`): the optimizer sums the
replicas' gradients, so a per-replica mean would give N times the gradient.

Here the devices are N logical CPUs (`tf.config.set_logical_device_configuration`), which must be
made before TensorFlow starts: tasks/data_parallel.py runs this file in a fresh process. On GPUs the
strategy takes the GPUs; over several machines it is MultiWorkerMirroredStrategy (README).
"""

from __future__ import annotations

import functools
import itertools
import os

import keras
import numpy as np
import tensorflow as tf

from tasks import data_parallel as dp
from tasks.configs import LeNet5Config, OptimizerConfig
from tasks.registry import load_impl


# ----------------------------------------------------------------------------- replicas: the strategy
def make_logical_devices(n: int) -> None:
    """Split the one physical CPU into n logical devices; only before TensorFlow has started."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)


@functools.cache
def make_strategy(replicas: int) -> tf.distribute.MirroredStrategy:
    """A strategy over the first `replicas` logical CPUs, one per replica count in a process: every
    run on N replicas shares it (a strategy holds no model; each run builds its own in its scope)."""
    return MirroredStrategy(devices=[f"/cpu:{i}" for i in range(replicas)])


class MirroredStrategy(tf.distribute.MirroredStrategy):
    """The stock strategy with collective keys of its own. TensorFlow numbers every strategy's
    collective groups and instances from 1, so in one process a second strategy reuses the first
    one's: with another replica count a synchronised batch norm fails ("... is joining a group with
    size4, but that group has size 2 (group_key=1)"), with another model the gradient all-reduce
    ("Shape mismatch in the collective instance 100 ... expected shape [685] but another member in
    the group expected shape [111]")."""

    strategies = itertools.count(1)

    def __init__(self, devices: list[str]):
        # read by the stock constructor: this strategy's keys start after every earlier one's
        self._collective_key_base = 1_000_000 * next(MirroredStrategy.strategies)
        super().__init__(devices=devices)


# ----------------------------------------------------------------------------- each replica's data
def epoch_dataset(x, y, batches: list[np.ndarray], replicas: int) -> tf.data.Dataset:
    """Global batches in by_replica order: the strategy gives replica r the r-th contiguous chunk
    of each, which is batch[r::N], torch's rank r's slice."""
    order = np.concatenate([dp.by_replica(batch, replicas) for batch in batches])
    return tf.data.Dataset.from_tensor_slices((x[order], y[order])).batch(len(batches[0]))


# ----------------------------------------------------------------------------- synchronised batch norm
def synchronise_batch_norm(model: keras.Model) -> None:
    """Every BatchNormalization all-reduces its statistics over the replicas (synchronized=True)."""
    for layer in model._flatten_layers():
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = True


# ----------------------------------------------------------------------------- loss
def per_example_loss(cfg, y, logits):
    """Each example's loss, (B,): Keras reduces it (sum / B / N under a strategy) itself."""
    if getattr(cfg, "head", None) == "identity":  # a regression: (B, K) -> (B,), the mean over K
        return keras.losses.mean_squared_error(tf.cast(y, logits.dtype), logits)
    y = tf.cast(y, "int64")  # the compiled loss hands labels over in the loss's float dtype
    if isinstance(cfg, LeNet5Config) or cfg.head == "softmax":
        return keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
    return keras.losses.binary_crossentropy(  # (B, 1) -> (B,)
        tf.cast(y, logits.dtype)[:, None], logits, from_logits=True
    )


class PerExampleLoss(keras.losses.Loss):
    """The model's loss for compile: per example, so Keras's reduction (and its 1 / N) applies.
    A loss returning the batch mean, a scalar, would skip Keras's division by N (losses/loss.py)."""

    def __init__(self, cfg, dtype: str):
        super().__init__(name="loss", dtype=dtype)  # not floatx: a float64 run stays float64
        self.cfg = cfg

    def call(self, y_true, y_pred):
        return per_example_loss(self.cfg, y_true, y_pred)


# ----------------------------------------------------------------------------- the all-reduce: the explicit replica step
def make_custom_step(model, optimizer, strategy, global_batch: int, variant: str):
    """The step written out: each replica's loss, its gradients, the summing all-reduce inside
    apply_gradients. The loss must be divided by the global batch; "loss-per-replica" is the trap."""

    def replica_step(x, y):
        with tf.GradientTape() as tape:
            losses = per_example_loss(model.cfg, y, model(x, training=True))  # (B/N,)
            if variant == "loss-per-replica":
                loss = tf.reduce_mean(losses)  # the trap: / (B/N), so the summed gradient is N x
            else:
                loss = tf.nn.compute_average_loss(losses, global_batch_size=global_batch)  # / B
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))  # all-reduce (sum)
        return loss

    @tf.function
    def train_step(x, y):
        per_replica = strategy.run(replica_step, args=(x, y))
        return strategy.reduce("SUM", per_replica, axis=None)

    return train_step


# ----------------------------------------------------------------------------- train
def train(
    impl, cfg, params, x, y, *, replicas: int, optimizer: OptimizerConfig, epochs: int,
    global_batch: int, seed: int, variant: str = "default", dtype: str = "float64", on_epoch=None,
) -> dict[str, np.ndarray]:  # fmt: skip
    """Train on `replicas` logical devices from canonical `params` on the shared global batches."""
    dp.check_divisible(global_batch, replicas)
    x = np.asarray(x, dtype)
    steps = len(dp.global_batches(len(x), global_batch, seed, 0))  # global batches per epoch
    strategy = make_strategy(replicas)
    with strategy.scope():  # every variable made here is mirrored on each replica
        model = impl.create_model(cfg, seed=seed, dtype=dtype)
        impl.load_canonical(model, params)
        if variant != "bn-per-replica":
            synchronise_batch_norm(model)
        opt = impl.make_optimizer(model, optimizer)
        model.compile(optimizer=opt, loss=PerExampleLoss(cfg, dtype=dtype))
    batches = [b for epoch in range(epochs) for b in dp.global_batches(len(x), global_batch, seed, epoch)]  # fmt: skip
    dataset = epoch_dataset(x, y, batches, replicas)  # every epoch's global batches, in order
    if variant in ("custom-step", "loss-per-replica"):
        train_step = make_custom_step(model, opt, strategy, global_batch, variant)
        losses = [
            train_step(xb, yb) for xb, yb in strategy.experimental_distribute_dataset(dataset)
        ]
        for epoch in range(epochs):
            if on_epoch:
                on_epoch(epoch, float(np.mean(losses[epoch * steps : (epoch + 1) * steps])))
    else:  # with steps_per_epoch, fit's iterator runs on across epochs: epoch e takes batches e*S..
        report = keras.callbacks.LambdaCallback(
            on_epoch_end=lambda epoch, logs: on_epoch and on_epoch(epoch, logs["loss"])
        )
        model.fit(dataset, epochs=epochs, steps_per_epoch=steps, verbose=0, shuffle=False, callbacks=[report])  # fmt: skip
    return impl.export_canonical(model)


# ----------------------------------------------------------------------------- the suite's runs
def run_job(job: dp.Job) -> dict[str, np.ndarray]:
    """One job of tasks/data_parallel.py: the canonical weights and the loss history."""
    history = []
    params = train(
        load_impl("tf_impl", job.model), job.config, job.params, job.x, job.y,
        replicas=job.replicas, optimizer=job.optimizer, epochs=job.epochs,
        global_batch=job.global_batch, seed=job.seed, variant=job.variant, dtype=job.dtype,
        on_epoch=lambda epoch, loss: history.append(loss),
    )  # fmt: skip
    return {**params, dp.HISTORY: np.asarray(history)}


def uneven_behaviour() -> dict[str, np.ndarray]:
    """What a global batch of 10 does on 4 replicas: the distributed dataset splits it unevenly."""
    strategy = make_strategy(4)
    dataset = tf.data.Dataset.range(10).batch(10)
    batch = next(iter(strategy.experimental_distribute_dataset(dataset)))
    sizes = [int(tf.size(t)) for t in strategy.experimental_local_results(batch)]
    return {"batch_10_on_4": np.asarray(sizes)}


def run_jobs(jobs: dict[str, dp.Job]) -> dict[str, dict[str, np.ndarray]]:
    return {**{key: run_job(job) for key, job in jobs.items()}, "uneven": uneven_behaviour()}


def fast_small_runs() -> None:
    """For the suite's runs (20 small steps, each traced once): no grappler graph optimisation, which
    costs more there than it saves, and one thread per op (the ops are tiny). Measured over every run
    of the suite, with one strategy per replica count: 34.6 s -> 28.2 s of CPU; the same results but
    for Adam's update and batch norm's statistics, at most 5e-14 (relative) from the default's."""
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    tf.config.threading.set_intra_op_parallelism_threads(1)


# python -m tf_impl.data_parallel JOBS OUT, started by tasks/data_parallel.py
if __name__ == "__main__":
    make_logical_devices(int(os.environ.get("ROSETTA_DP_DEVICES", dp.MAX_REPLICAS)))
    if os.environ.get("ROSETTA_DP_FAST"):
        fast_small_runs()
    dp.subprocess_main(run_jobs)
