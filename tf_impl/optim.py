"""keras.optimizers configured to the algorithms of scratch/optim.py: SGD, momentum, Nesterov,
RMSprop, Adam and AdamW, a CosineDecay (or warmup + ExponentialDecay staircase) schedule, and
clipping by global norm (`global_clipnorm`).

Robbins & Monro (1951); Polyak (1964); Sutskever et al. (2013); Tieleman & Hinton (2012);
Kingma & Ba (2015); Loshchilov & Hutter (2017, 2019); Goyal et al. (2017); Pascanu et al. (2013).
Two stock formulas differ from torch's and cannot be configured away (docs/PORTING.md): Adam's
epsilon is Kingma & Ba's "epsilon hat", and RMSprop's epsilon sits inside the square root; with
eps = 0 both are the same algorithm as torch's.
"""

from __future__ import annotations

import keras
from keras import ops

from tasks.configs import OptimizerConfig
from tf_impl.compat import floatx, hyper  # float64-exact hyperparameters and learning rate


# ----------------------------------------------------------------------------- schedules
class WarmupStepDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup, then the stock ExponentialDecay(staircase=True); Keras has no warmup for it."""

    def __init__(self, spec: OptimizerConfig, dtype: str):
        super().__init__()
        self.lr, self.warmup_steps, self.dtype = hyper(spec.lr, dtype), spec.warmup_steps, dtype
        gamma = (
            spec.gamma if spec.schedule == "step" else 1.0
        )  # warmup then a constant lr: never decays
        self.decay = keras.optimizers.schedules.ExponentialDecay(
            self.lr, spec.step_size, hyper(gamma, dtype), staircase=True
        )

    def __call__(self, step):
        step = ops.cast(step, self.dtype)
        warmup = ops.cast(self.warmup_steps, self.dtype)
        ramp = (
            step * self.lr / max(self.warmup_steps, 1)
        )  # tensor first: a NumPy scalar first would try to convert it
        return ops.where(step < warmup, ramp, self.decay(step - warmup))


def make_schedule(spec: OptimizerConfig, dtype: str):
    if spec.schedule == "cosine":
        if not spec.warmup_steps:
            return keras.optimizers.schedules.CosineDecay(
                hyper(spec.lr, dtype), spec.decay_steps, alpha=spec.min_lr_ratio
            )
        # warmup from initial_learning_rate (0) to warmup_target, then cosine from warmup_target
        return keras.optimizers.schedules.CosineDecay(
            hyper(0.0, dtype),
            spec.decay_steps,
            alpha=spec.min_lr_ratio,
            warmup_target=hyper(spec.lr, dtype),
            warmup_steps=spec.warmup_steps,
        )
    if spec.schedule == "step" or spec.warmup_steps:
        return WarmupStepDecay(spec, dtype)
    return spec.lr  # a floatx variable: make_keras_optimizer builds it under compat.floatx(dtype)


# ----------------------------------------------------------------------------- optimisers
def as_config(lr: float | OptimizerConfig, **defaults) -> OptimizerConfig:
    """An OptimizerConfig as given; a bare learning rate becomes one (SGD unless `defaults`)."""
    return lr if isinstance(lr, OptimizerConfig) else OptimizerConfig(lr=lr, **defaults)


def make_optimizer(model: keras.Model, spec: OptimizerConfig) -> keras.optimizers.Optimizer:
    optimizer = make_keras_optimizer(spec, model.dtype)
    # its slots (momentum, the moment estimates) now: left to the first step, they are made inside
    # fit's trace, and a tf.function that makes variables traces the whole step a second time
    optimizer.build(model.trainable_variables)
    return optimizer


def make_keras_optimizer(spec: OptimizerConfig, dtype: str) -> keras.optimizers.Optimizer:
    """The stock optimizer, every hyperparameter passed (Keras's defaults differ from torch's); its
    learning-rate variable in `dtype` (compat.floatx)."""
    with floatx(dtype):
        return stock_optimizer(spec, dtype)


def stock_optimizer(spec: OptimizerConfig, dtype: str) -> keras.optimizers.Optimizer:
    lr = make_schedule(spec, dtype)
    clip = {"global_clipnorm": hyper(spec.clip_norm, dtype)} if spec.clip_norm is not None else {}
    if spec.name == "sgd":
        return keras.optimizers.SGD(learning_rate=lr, **clip)
    if spec.name in ("momentum", "nesterov"):
        # Keras keeps v = mu v - lr g and adds it: the same as torch's only while lr is constant
        return keras.optimizers.SGD(
            learning_rate=lr,
            momentum=hyper(spec.momentum, dtype),
            nesterov=spec.name == "nesterov",
            **clip,
        )
    if spec.name == "rmsprop":
        return keras.optimizers.RMSprop(
            learning_rate=lr, rho=hyper(spec.rho, dtype), epsilon=hyper(spec.eps, dtype), **clip
        )
    betas = {
        "beta_1": hyper(spec.beta1, dtype),
        "beta_2": hyper(spec.beta2, dtype),
        "epsilon": hyper(spec.eps, dtype),
    }
    if spec.name == "adam":
        return keras.optimizers.Adam(learning_rate=lr, **betas, **clip)
    return keras.optimizers.AdamW(
        learning_rate=lr, weight_decay=hyper(spec.weight_decay, dtype), **betas, **clip
    )
