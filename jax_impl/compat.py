"""What exact float64 parity needs beyond the stock Flax NNX and optax API, in one place.

Each entry names the test that fails without it; docs/PORTING.md has a row for each (the
"compat.py" table). The model files call these and otherwise read as plain Flax code.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx


# ----------------------------------------------------------------------------- batch norm
def batch_stats_in_dtype(layer: nnx.BatchNorm, dtype) -> nnx.BatchNorm:
    """nnx.BatchNorm creates its running mean and variance in float32 whatever param_dtype says, so a
    float64 run would round every running-average update to float32: give them the model's dtype.

    Fails without it: test_regularize.py::test_batch_norm_train_mode[dense-jax_impl] (running_mean,
    ~1e-8) and test_flax_batch_norm_statistics_are_float32_unless_replaced."""
    layer.mean.set_value(layer.mean.get_value().astype(dtype))
    layer.var.set_value(layer.var.get_value().astype(dtype))
    return layer


# ----------------------------------------------------------------------------- schedules
def schedule_on_float_count(schedule, dtype):
    """optax counts updates in int32 and its schedules then compute in float32 (3 / 5 ->
    0.6000000238): hand them the count in the parameters' float dtype instead.

    Fails without it: test_optim.py::test_optax_schedule_on_the_int32_count_leaks_float32 and the
    float64 trajectory records of the schedule cases (lenet5[optim-sgd-warmup-step] and others)."""
    return lambda count: schedule(jnp.asarray(count, dtype))
