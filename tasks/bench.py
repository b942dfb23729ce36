"""Speed benchmark: one training step and one inference step of every model in each framework, with ratios.

    python -m tasks.bench all                    # every model, its default size, float32, one thread
    python -m tasks.bench lenet5 --repeats 50    # one model (and, for LeNet-5, the lesson's loop conv)
    python -m tasks.bench mlp gru --json         # a list of rows, one per model, framework and step
    python -m tasks.bench why-jax-lenet5         # where jitted JAX's LeNet-5 step spends its time

Each model is built at its registry default (tasks/registry.py: the default task's config and batch
size) from the same canonical weights, and fed the first mini-batch of that task's training split.
What is timed, through each framework module's public functions:

- train: one step as each framework's `train` runs it per mini-batch, on the model's own default
  optimiser (SGD; Adam for attention and the Transformer; clipped SGD for the recurrent nets):
  scratch NumPy and torch eager `train_step(model, make_optimizer(model, lr), x, y)`; JAX the
  module's `nnx.jit` train_step through `nnx.cached_partial(train_step, model, optimizer)`, as
  `train` calls it; Keras fit's own compiled train function (`model.train_function`) on an iterator
  over the batch, compiled as `train` compiles it (`compile_model`, steps_per_execution = the default
  epoch's number of batches, so one call runs that many steps: the time per call divided by them).
  The perceptron has no gradient step: one epoch of its mistake rule over the training split
  (75 samples), `train(model, data, epochs=1, ...)` in scratch, torch and JAX (scanned under
  `jax.jit`); in Keras the one call of the train function that fit makes per epoch (75 steps; fit's
  set-up before its first epoch is not timed).
- inference: the model's forward pass on the same batch, in eval mode: scratch `model.forward(x)`,
  torch `model(x)` under `torch.inference_mode()`, Keras `model(x, training=False)` under
  `tf.function`, JAX `model(x)` under `nnx.jit`, through `nnx.cached_partial`.

Every step is warmed up first (traces, compiles, allocator pools), then all of a model's steps are
timed round-robin, `--repeats` rounds, the order rotating each round, so a burst of load from
elsewhere hits every framework alike. A fast step is called several times per sample (at least
~2 ms per sample). Each figure is the median in milliseconds per call, as wall clock and as the
process's CPU time; the ratio to torch eager is from CPU time, which does not count waiting for a
core. `--threads 1` (the default) gives every framework one thread, and the process one CPU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

MODEL_ORDER = ("perceptron", "mlp", "lenet5", "rnn", "lstm", "gru", "attention", "transformer")
FRAMEWORK_ORDER = ("scratch", "torch_impl", "tf_impl", "jax_impl")
STEPS = ("train", "inference")
MIN_SAMPLE_S = 2e-3  # a fast step is repeated within one sample until it lasts about this long
FAILED: list[tuple[str, str, str]] = []  # (model, framework, step) that raised: no row, exit 1


# ----------------------------------------------------------------------------- the loop baseline
def conv2d_loop(x, w, b):
    """The lesson's convolution: a Python loop over every batch element, out channel and pixel.

    x (B, C, H, W), w (O, C, kh, kw), b (O,) -> (B, O, H - kh + 1, W - kw + 1); stride 1, no padding.
    Only a baseline for `python -m tasks.bench` and an oracle for the tests: never use it to train.
    """
    batch, _, h, wd = x.shape
    out_c, _, kh, kw = w.shape
    out = np.zeros((batch, out_c, h - kh + 1, wd - kw + 1), dtype=x.dtype)
    for n in range(batch):
        for o in range(out_c):
            for i in range(h - kh + 1):
                for j in range(wd - kw + 1):
                    out[n, o, i, j] = np.sum(x[n, :, i : i + kh, j : j + kw] * w[o]) + b[o]
    return out


# ----------------------------------------------------------------------------- timing
def limit_threads(n: int) -> None:
    """One thread pool size for every framework, and the process held to n of its CPUs; must run
    before any framework is imported. XLA's CPU client sizes its thread pool by the CPUs the
    process may use, whatever XLA_FLAGS say: unpinned on two cores, a JAX step ran its
    convolutions on two threads at once (CPU time 1.6x its wall time)."""
    os.environ["OMP_NUM_THREADS"] = str(n)  # torch
    os.environ["TF_NUM_INTRAOP_THREADS"] = os.environ["TF_NUM_INTEROP_THREADS"] = str(n)
    if n == 1:  # XLA's CPU backend reads its flags once, at import
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
        )
    if hasattr(os, "sched_setaffinity"):  # Linux; the threads started from now on inherit it
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:n])
    from threadpoolctl import threadpool_limits

    threadpool_limits(n)  # NumPy's BLAS


def timed(fn, inner: int = 1) -> tuple[float, float]:
    """(wall, CPU) seconds per call, over `inner` calls. CPU time counts every thread of this process
    but not the time spent waiting for a core, so with one thread it is the idle machine's wall time."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - wall) / inner, (time.process_time() - cpu) / inner


def summary(samples: list[tuple[float, float]]) -> dict[str, float]:
    """Medians in milliseconds: {"wall": ..., "cpu": ...}."""
    wall, cpu = np.array(samples).T
    return {"wall": 1e3 * float(np.median(wall)), "cpu": 1e3 * float(np.median(cpu))}


def interleaved(
    fns: dict[Any, Callable], repeats: int, warmup: int = 3, errors: dict | None = None
) -> dict[Any, dict]:
    """Median (wall, CPU) ms per call of each function, timed round-robin with a rotating order.

    A function that raises while warming up is left out; with `errors` given, its exception is
    kept there under its key (a model file may be mid-change), otherwise it propagates."""
    inner = {}
    for key, fn in fns.items():
        try:
            for _ in range(warmup):  # traces, compiles, allocator pools
                fn()
        except Exception as e:
            if errors is None:
                raise
            errors[key] = e
            continue
        once = timed(fn)[0]
        inner[key] = max(1, min(1000, math.ceil(MIN_SAMPLE_S / max(once, 1e-7))))
    keys, times = list(inner), {key: [] for key in inner}
    for r in range(repeats):
        for key in keys[r % len(keys) :] + keys[: r % len(keys)]:
            times[key].append(timed(fns[key], inner[key]))
    return {key: summary(t) for key, t in times.items()}


# ----------------------------------------------------------------------------- workloads
@dataclass
class Workload:
    """A model at its registry default: config, canonical weights, one batch, the step's settings."""

    model: str
    task: str
    cfg: Any
    params: dict[str, np.ndarray]
    x: np.ndarray
    y: np.ndarray
    lr: float
    batch: int
    steps: int  # mini-batches per epoch of the default training (Keras's steps_per_execution)


def workload(model: str, batch: int | None = None, dtype: str = "float32") -> Workload:
    """The default task's config and first training batch (the whole split for the perceptron)."""
    from tasks import weights
    from tasks.configs import PerceptronConfig
    from tasks.data import load_task
    from tasks.registry import MODELS
    from tasks.train import TrainOptions, initial_weights, make_config, prepare

    task = MODELS[model].default_task
    opts = TrainOptions(dtype=dtype).with_defaults(model, task)
    data = load_task(task, seed=0)
    if model == "perceptron":  # one epoch of the rule over the training split is its "step"
        cfg = PerceptronConfig(in_features=data.in_features)
        params = weights.init_uniform(cfg.param_shapes(), 0)
        x, y = data.x_train, data.y_train
        steps = 1
    else:
        data = prepare(model, data)
        cfg = make_config(model, data, opts)
        params = initial_weights(cfg, 0)
        n = batch or opts.batch_size
        x, y = data.x_train[:n], data.y_train[:n]
        steps = -(-len(data.x_train) // opts.batch_size)
    x = x.astype(dtype) if x.dtype.kind == "f" else x  # token ids stay integers
    params = weights.cast(params, dtype)
    return Workload(model, task, cfg, params, x, y, opts.lr, len(x), steps)


def step_fns(framework: str, w: Workload) -> dict[str, Callable[[], Any]]:
    """{"train": ..., "inference": ...}: zero-argument callables that run one step and wait for it."""
    from tasks.data import Dataset
    from tasks.registry import load_impl

    impl = load_impl(framework, w.model)

    def fresh():
        net = impl.create_model(w.cfg, seed=0, dtype="float32")
        impl.load_canonical(net, w.params)
        return net

    trained, served = fresh(), fresh()  # one model steps, the other only predicts
    if w.model == "perceptron":
        data = Dataset(w.model, w.x, w.y, w.x[:1], w.y[:1], 2)
        train = lambda: impl.train(trained, data, epochs=1, lr=w.lr, seed=0)
    else:
        optimizer = impl.make_optimizer(trained, w.lr)
        train = None
    x, y = w.x, w.y
    if framework == "scratch":
        if train is None:
            train = lambda: impl.train_step(trained, optimizer, x, y)
        if hasattr(served, "set_training"):
            served.set_training(False)
        return {"train": train, "inference": lambda: served.forward(x)}
    if framework == "torch_impl":
        import torch

        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        if train is None:
            train = lambda: impl.train_step(trained, optimizer, xt, yt)  # .item() waits
        served.eval()

        def infer():
            with torch.inference_mode():
                return served(xt)

        return {"train": train, "inference": infer}
    if framework == "tf_impl":
        import tensorflow as tf

        xt, yt = tf.constant(x), tf.constant(y)
        # what fit runs: its compiled train function, on an iterator, as compiled by `train`
        if train is None:  # steps_per_execution = an epoch's batches: `steps` steps per call
            impl.compile_model(trained, optimizer, steps_per_execution=w.steps)
            trained.make_train_function()
            batches = iter(tf.data.Dataset.from_tensors((xt, yt)).repeat())
        else:  # the perceptron: train compiles an epoch per call; time the call, not fit's set-up
            impl.train(trained, data, epochs=1, lr=w.lr, seed=0)
            stream = impl.samples(w.x, w.y.astype("float32"), seed=0, epochs=1)  # train's stream
            batches = iter(stream.repeat())
        function = trained.train_function
        train = lambda: [v.numpy() for v in tf.nest.flatten(function(batches))]  # .numpy() waits
        train.steps = w.steps
        forward = tf.function(lambda x: served(x, training=False), reduce_retracing=True)
        return {
            "train": train,
            "inference": lambda: forward(xt),
        }  # eager tensors: computed on return
    if framework == "jax_impl":
        import jax
        import jax.numpy as jnp
        from flax import nnx

        xt, yt = jnp.asarray(x), jnp.asarray(y)
        if train is None:  # the step as `train` calls it: through nnx.cached_partial, on its view
            view = getattr(impl, "train_view", lambda model: model)(trained)
            step = nnx.cached_partial(impl.train_step, view, optimizer)
            train = lambda: jax.block_until_ready(step(xt, yt))
        served.eval()
        forward = nnx.cached_partial(nnx.jit(lambda model, x: model(x)), served)
        return {"train": train, "inference": lambda: jax.block_until_ready(forward(xt))}
    raise KeyError(framework)


def bench_model(
    model: str, frameworks=FRAMEWORK_ORDER, repeats: int = 20, batch: int | None = None
) -> list[dict]:
    """The rows of one model: every framework's train and inference step, from one interleaved run."""
    w = workload(model, batch)
    fns, errors = {}, {}
    for fw in frameworks:
        try:
            fns.update({(fw, step): fn for step, fn in step_fns(fw, w).items()})
        except Exception as e:  # the model cannot be built: every step of this framework fails
            errors.update({(fw, step): e for step in STEPS})
    medians = interleaved(fns, repeats, errors=errors)
    for key, t in medians.items():  # a call of several steps (Keras): per step
        medians[key] = {k: v / getattr(fns[key], "steps", 1) for k, v in t.items()}
    for (fw, step), e in errors.items():
        print(f"error: {model} {fw} {step}: {e!r}", file=sys.stderr)
        FAILED.append((model, fw, step))
    rows = []
    for (fw, step), t in medians.items():
        torch_cpu = medians.get(("torch_impl", step), {}).get("cpu")
        rows.append(
            {
                "model": model,
                "framework": fw,
                "step": step,
                "ms_wall": round(t["wall"], 6),  # nanoseconds: a 0.01 ms step keeps 4 digits
                "ms_cpu": round(t["cpu"], 6),
                "ratio_vs_torch": round(t["cpu"] / torch_cpu, 4) if torch_cpu else None,
                "batch": w.batch,
            }
        )
    return rows


# ----------------------------------------------------------------------------- LeNet-5's conv1 vs the loop
def bench_conv1(batch: int = 64, repeats: int = 20, loop_repeats: int = 1) -> dict:
    """conv1's forward pass (6@5x5 on (batch, 1, 32, 32)): scratch im2col, torch, the lesson's loop."""
    import torch

    from tasks.configs import LeNet5Config
    from tasks.registry import load_impl

    cfg = LeNet5Config()
    x = np.random.default_rng(0).uniform(0, 1, (batch, 1, cfg.image_size, cfg.image_size))
    x = x.astype(np.float32)
    scratch = load_impl("scratch", "lenet5")
    net = scratch.create_model(cfg, seed=0, dtype="float32")
    conv = net.conv1  # the scratch convolution layer (im2col + one matmul)
    params = scratch.export_canonical(net)
    w, b = params["conv1.weight"], params["conv1.bias"]
    xt, wt, bt = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b)
    times = interleaved(
        {
            "scratch im2col": lambda: conv.forward(x),
            "torch F.conv2d": lambda: torch.nn.functional.conv2d(xt, wt, bt),
        },
        repeats,
    )
    times["lesson loop"] = summary(
        [timed(lambda: conv2d_loop(x, w, b)) for _ in range(loop_repeats)]
    )
    return {"batch": batch, "ms": times}


def print_conv1(r: dict) -> None:
    t = r["ms"]
    print(f"\nLeNet-5 conv1 forward, 6@5x5 on {r['batch']}x1x32x32     wall ms    CPU ms")
    for name, v in t.items():
        print(f"  {name:<16} {v['wall']:>30.2f} {v['cpu']:>9.2f}")
    loop, scratch, torch_ = (
        t[k]["cpu"] for k in ("lesson loop", "scratch im2col", "torch F.conv2d")
    )
    print(
        f"  lesson loop / scratch im2col: {loop / scratch:,.0f}x CPU; lesson loop / torch: {loop / torch_:,.0f}x CPU"
    )


# ----------------------------------------------------------------------------- why jitted JAX LeNet-5 is slower
def why_jax_lenet5(batch: int = 32, repeats: int = 20) -> dict:
    """LeNet-5's step cut into pieces, torch eager against JAX, all timed in one interleaved run.

    - the whole training step: the module's `nnx.jit` train_step; the same body under
      `nnx.jit(graph=False)` (tree mode: no graph traversal per call) and through
      `nnx.cached_partial`; under plain `jax.jit` on the `nnx.split` state (functional); and an
      `nnx.jit` / `jax.jit` function that does nothing with the same arguments (pure dispatch cost);
    - the forward pass (inference) under `nnx.jit` and `jax.jit`;
    - each convolution's kernels alone at the model's shapes: forward in Flax's NHWC/HWIO layout
      and in torch's NCHW/OIHW, kernel gradient dW, input gradient dX (conv2 only: no step
      needs conv1's); torch's via `aten.convolution_backward`, which runs only the asked-for
      gradient, JAX's as a jitted `jax.grad` whose forward XLA drops as dead code.
    """
    import jax
    import jax.numpy as jnp
    import optax
    import torch
    import torch.nn.functional as F
    from flax import nnx

    from tasks.registry import load_impl

    w = workload("lenet5", batch)
    tj, tt = load_impl("jax_impl", "lenet5"), load_impl("torch_impl", "lenet5")

    def make(impl):
        net = impl.create_model(w.cfg, seed=0, dtype="float32")
        impl.load_canonical(net, w.params)
        return net, impl.make_optimizer(net, w.lr)

    xt, yt = torch.from_numpy(w.x), torch.from_numpy(w.y)
    xj, yj = jnp.asarray(w.x), jnp.asarray(w.y)
    ready = jax.block_until_ready
    fns = {}
    mt, ot = make(tt)
    fns["step: torch eager train_step"] = lambda: tt.train_step(mt, ot, xt, yt)
    mj, oj = make(tj)
    fns["step: jax train_step (nnx.jit)"] = lambda: ready(tj.train_step(mj, oj, xj, yj))

    def body(model, optimizer, x, y):  # the default LeNet-5 step (no L2 term)
        loss_of = lambda m: optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()
        loss, grads = nnx.value_and_grad(loss_of)(model)
        optimizer.update(model, grads)
        return loss

    m2, o2 = make(tj)
    tree = nnx.jit(body, graph=False)
    fns["step: jax nnx.jit(graph=False)"] = lambda: ready(tree(m2, o2, xj, yj))
    m3, o3 = make(tj)
    cached = nnx.cached_partial(nnx.jit(body), m3, o3)
    fns["step: jax nnx.cached_partial"] = lambda: ready(cached(xj, yj))
    graphdef, state = nnx.split(make(tj))

    @jax.jit
    def functional(state, x, y):
        model, optimizer = nnx.merge(graphdef, state)
        loss = body(model, optimizer, x, y)
        return loss, nnx.state((model, optimizer))

    box = [state]

    def run_functional():
        loss, box[0] = functional(box[0], xj, yj)
        ready(loss)

    fns["step: jax jax.jit(split state)"] = run_functional
    noop = nnx.jit(lambda model, optimizer, x, y: y)
    fns["dispatch: nnx.jit no-op (model, opt)"] = lambda: ready(noop(mj, oj, xj, yj))
    noop_state = jax.jit(lambda state, x, y: y)
    fns["dispatch: jax.jit no-op (state)"] = lambda: ready(noop_state(box[0], xj, yj))
    served_t, _ = make(tt)
    served_t.eval()

    def torch_forward():
        with torch.inference_mode():
            return served_t(xt)

    fns["forward: torch eager"] = torch_forward
    served_j, _ = make(tj)
    served_j.eval()
    forward = nnx.jit(lambda model, x: model(x))
    fns["forward: jax nnx.jit"] = lambda: ready(forward(served_j, xj))
    gd, st = nnx.split(served_j)
    forward_functional = jax.jit(lambda st, x: nnx.merge(gd, st)(x))
    fns["forward: jax jax.jit(split state)"] = lambda: ready(forward_functional(st, xj))

    rng = np.random.default_rng(0)
    conv = lambda lay: (
        lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), "VALID", dimension_numbers=lay)
    )
    nhwc, nchw = conv(("NHWC", "HWIO", "NHWC")), conv(("NCHW", "OIHW", "NCHW"))
    (c1, c2), k = w.cfg.channels, w.cfg.kernel_size
    size = w.cfg.image_size
    for name, (cin, cout, hw) in {
        "conv1": (1, c1, size),
        "conv2": (c1, c2, (size - k + 1) // 2),
    }.items():
        x = rng.standard_normal((batch, cin, hw, hw)).astype(np.float32)
        kern = rng.standard_normal((cout, cin, k, k)).astype(np.float32)
        g = rng.standard_normal((batch, cout, hw - k + 1, hw - k + 1)).astype(np.float32)
        X, K, G = torch.from_numpy(x), torch.from_numpy(kern), torch.from_numpy(g)
        xn, kn, gn = (
            jnp.asarray(a.transpose(p))
            for a, p in ((x, (0, 2, 3, 1)), (kern, (2, 3, 1, 0)), (g, (0, 2, 3, 1)))
        )
        xc, kc = jnp.asarray(x), jnp.asarray(kern)
        fwd_n, fwd_c = jax.jit(nhwc), jax.jit(nchw)
        dw = jax.jit(lambda x, k, g: jax.grad(lambda k: jnp.vdot(nhwc(x, k), g))(k))
        dx = jax.jit(lambda x, k, g: jax.grad(lambda x: jnp.vdot(nhwc(x, k), g))(x))
        back = lambda mask, X=X, K=K, G=G: torch.ops.aten.convolution_backward(
            G, X, K, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1, mask
        )
        fns[f"{name}: torch forward NCHW"] = lambda X=X, K=K: F.conv2d(X, K)
        fns[f"{name}: jax forward NHWC"] = lambda f=fwd_n, a=xn, b=kn: ready(f(a, b))
        fns[f"{name}: jax forward NCHW"] = lambda f=fwd_c, a=xc, b=kc: ready(f(a, b))
        fns[f"{name}: torch dW"] = lambda back=back: back([False, True, False])
        fns[f"{name}: jax dW"] = lambda f=dw, a=xn, b=kn, g=gn: ready(f(a, b, g))
        if name == "conv2":
            fns[f"{name}: torch dX"] = lambda back=back: back([True, False, False])
            fns[f"{name}: jax dX"] = lambda f=dx, a=xn, b=kn, g=gn: ready(f(a, b, g))
    return {"batch": batch, "repeats": repeats, "ms": interleaved(fns, repeats)}


def show_why(r: dict) -> None:
    t = r["ms"]
    print(
        f"LeNet-5, batch {r['batch']}, float32, one thread, median of {r['repeats']} interleaved rounds"
    )
    print(f"  {'':<40}{'wall ms':>9}{'CPU ms':>9}")
    for name, v in t.items():
        print(f"  {name:<40}{v['wall']:9.3f}{v['cpu']:9.3f}")
    cpu = lambda k: t[k]["cpu"]
    kernels = {  # the convolutions one training step runs: two forwards, two dW, conv2's dX
        fw: [
            "conv1: {} forward {}",
            "conv2: {} forward {}",
            "conv1: {} dW",
            "conv2: {} dW",
            "conv2: {} dX",
        ]
        for fw in ("torch", "jax")
    }
    layout = {"torch": "NCHW", "jax": "NHWC"}
    pieces = lambda fw: sum(cpu(k.format(fw, layout[fw]).strip()) for k in kernels[fw])
    print(
        f"  convolutions of one step (forward x2, dW x2, dX): torch {pieces('torch'):.2f} ms, jax {pieces('jax'):.2f} ms"
    )
    print(
        f"  nnx.jit's per-call overhead (no-op nnx.jit - no-op jax.jit): {cpu('dispatch: nnx.jit no-op (model, opt)') - cpu('dispatch: jax.jit no-op (state)'):.2f} ms"
    )
    print(f"machine: {machine()}")


# ----------------------------------------------------------------------------- output
SHORT = {"scratch": "scratch", "torch_impl": "torch", "tf_impl": "keras", "jax_impl": "jax"}


def machine() -> str:
    """'AMD EPYC, 2 cores, load 1.23 1.10 0.90' (lscpu's model name, os.cpu_count(), uptime's load)."""
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(
                line.split(":", 1)[1].strip() for line in f if line.startswith("model name")
            )
    except (OSError, StopIteration):
        pass
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    return f"{model}, {os.cpu_count()} cores, load average {load}"


def print_rows(rows: list[dict], threads: int, repeats: int) -> None:
    """One table: a row per model and framework, wall / CPU ms and the CPU ratio to torch, per step."""
    print(
        f"one step, float32, {threads} thread(s), median of {repeats} interleaved rounds; ratio = CPU time / torch eager's"
    )
    head = "".join(f"{s + ' wall ms':>18}{'CPU ms':>9}{'vs torch':>9}" for s in STEPS)
    print(f"{'model':<12}{'batch':>6} {'framework':<9}{head}")
    by = {(r["model"], r["framework"], r["step"]): r for r in rows}
    for model in dict.fromkeys(r["model"] for r in rows):
        for fw in dict.fromkeys(r["framework"] for r in rows if r["model"] == model):
            cells = ""
            for step in STEPS:
                r = by.get((model, fw, step))
                ratio = (
                    f"{r['ratio_vs_torch']:.2f}x" if r and r["ratio_vs_torch"] is not None else "—"
                )
                cells += f"{r['ms_wall']:18.3f}{r['ms_cpu']:9.3f}{ratio:>9}" if r else f"{'—':>36}"
            batch = next(r["batch"] for r in rows if r["model"] == model)
            print(f"{model:<12}{batch:>6} {SHORT.get(fw, fw):<9}{cells}")
    print(f"machine: {machine()}")


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tasks.bench", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "models", nargs="+", help=f"'all', 'why-jax-lenet5', or models: {', '.join(MODEL_ORDER)}"
    )
    parser.add_argument(
        "--framework",
        default="all",
        help="scratch, torch, tf, jax or all (torch is always timed: the ratios need it)",
    )
    parser.add_argument(
        "--batch", type=int, default=None, help="batch size (default: the model's default)"
    )
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="threads per framework (default 1)")
    parser.add_argument(
        "--json", action="store_true", help="print one JSON list of rows instead of the table"
    )
    args = parser.parse_args(argv)
    if args.models == ["why-jax-lenet5"]:
        if args.repeats < 1 or args.threads < 1:
            print("error: --repeats and --threads must be positive integers", file=sys.stderr)
            return 2
        limit_threads(args.threads)
        result = why_jax_lenet5(batch=args.batch or 32, repeats=args.repeats)
        print(json.dumps(result, indent=1)) if args.json else show_why(result)
        return 0
    models = list(MODEL_ORDER) if args.models == ["all"] else args.models
    unknown = [m for m in models if m not in MODEL_ORDER]
    if unknown:
        print(
            f"error: no benchmark for model {unknown[0]!r}; choose from: all, {', '.join(MODEL_ORDER)}",
            file=sys.stderr,
        )
        return 2
    if (args.batch is not None and args.batch < 1) or args.repeats < 1 or args.threads < 1:
        print("error: --batch, --repeats and --threads must be positive integers", file=sys.stderr)
        return 2
    from tasks.registry import FRAMEWORK_ALIASES, resolve_framework

    try:
        chosen = resolve_framework(args.framework)
    except KeyError:
        print(
            f"error: unknown framework {args.framework!r}; choose from: all, {', '.join(sorted(set(FRAMEWORK_ALIASES)))}",
            file=sys.stderr,
        )
        return 2
    frameworks = [fw for fw in FRAMEWORK_ORDER if fw in chosen or fw == "torch_impl"]
    limit_threads(args.threads)
    rows = []
    for model in models:
        rows += bench_model(model, frameworks, repeats=args.repeats, batch=args.batch)
        if sys.stderr.isatty():
            print(f"  {model}: done", file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps([{k: v for k, v in r.items() if k != "batch"} for r in rows], indent=1))
        print(
            f"machine: {machine()}; {args.threads} thread(s), {args.repeats} rounds",
            file=sys.stderr,
        )
        return 1 if FAILED else 0
    print_rows(rows, args.threads, args.repeats)
    if "lenet5" in models and set(frameworks) >= {"scratch", "torch_impl"}:
        print_conv1(bench_conv1(batch=64, repeats=args.repeats))
    if FAILED:
        print(f"{len(FAILED)} step(s) failed: no row for them (errors above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
