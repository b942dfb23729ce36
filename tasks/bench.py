"""Speed benchmark: one training step of a model in each framework, timed in one run, with ratios.

    python -m tasks.bench lenet5                 # batch 64, float32, one thread per framework
    python -m tasks.bench lenet5 --threads 2 --repeats 50 --json

For LeNet-5 it times one step (forward, backward, SGD update) of each framework's own
`train_step` on the same batch: scratch NumPy, torch eager, Keras (its `tf.function` step) and
jitted JAX; then the first convolution's forward pass, scratch im2col versus `conv2d_loop`, the
four nested Python loops of the lesson (kept here only as a baseline and as a test oracle).

Steps are timed round-robin (one step of each framework in turn, `--repeats` times) so a busy
machine slows every framework alike; the median is reported. `--threads 1` (the default) gives
every framework one thread, so the figures compare implementations rather than thread pools, and
stay meaningful on a machine shared with other jobs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from tasks import weights
from tasks.configs import LeNet5Config
from tasks.registry import FRAMEWORKS, load_impl


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
    """One thread pool size for every framework; must run before any framework is imported."""
    os.environ["OMP_NUM_THREADS"] = str(n)  # torch
    os.environ["TF_NUM_INTRAOP_THREADS"] = os.environ["TF_NUM_INTEROP_THREADS"] = str(
        n
    )  # TensorFlow
    if n == 1:  # XLA's CPU backend reads its flags once, at import
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "")
            + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        )
    from threadpoolctl import threadpool_limits

    threadpool_limits(n)  # NumPy's BLAS


def step_fn(framework: str, cfg: LeNet5Config, params, x, y, lr: float):
    """A zero-argument callable that runs one training step of `framework` and waits for it."""
    impl = load_impl(framework, "lenet5")
    model = impl.create_model(cfg, seed=0, dtype="float32")
    impl.load_canonical(model, params)
    optimizer = impl.make_optimizer(model, lr)
    if framework == "torch_impl":
        import torch

        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        return lambda: impl.train_step(model, optimizer, xt, yt)
    if framework == "tf_impl":
        import tensorflow as tf

        xt, yt = tf.constant(x), tf.constant(y)
        return lambda: float(
            impl.train_step(model, optimizer, xt, yt)
        )  # float() waits for the result
    if framework == "jax_impl":
        import jax.numpy as jnp

        xt, yt = jnp.asarray(x), jnp.asarray(y)
        return lambda: impl.train_step(model, optimizer, xt, yt).block_until_ready()
    return lambda: impl.train_step(model, optimizer, x, y)


def timed(fn) -> tuple[float, float]:
    """(wall, CPU) seconds of one call. CPU time counts every thread of this process but not the time
    spent waiting for a core, so with one thread per framework it is the idle machine's wall time."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def summary(samples: list[tuple[float, float]]) -> dict[str, float]:
    """Medians in milliseconds: {"wall": ..., "cpu": ...}."""
    wall, cpu = np.array(samples).T
    return {"wall": 1e3 * float(np.median(wall)), "cpu": 1e3 * float(np.median(cpu))}


def bench_lenet5(batch: int = 64, repeats: int = 20, loop_repeats: int = 1) -> dict:
    cfg = LeNet5Config()
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (batch, 1, cfg.image_size, cfg.image_size)).astype(
        np.float32
    )  # (B, 1, 32, 32)
    y = rng.integers(0, cfg.n_classes, batch)
    params = weights.cast(weights.init_uniform(cfg.param_shapes(), 0), "float32")
    steps = {fw: step_fn(fw, cfg, params, x, y, lr=0.01) for fw in FRAMEWORKS}
    for fn in steps.values():  # warm-up: traces, compiles and allocator pools
        fn(), fn()
    times = {fw: [] for fw in FRAMEWORKS}
    for _ in range(repeats):  # round-robin: a burst of load from elsewhere hits every framework
        for fw, fn in steps.items():
            times[fw].append(timed(fn))
    step = {fw: summary(t) for fw, t in times.items()}

    # the first convolution alone, forward, on the same batch
    scratch = load_impl("scratch", "lenet5")
    conv = scratch.Conv2D(1, cfg.channels[0], cfg.kernel_size, rng=rng, dtype=np.float32)
    w, b = conv.params["weight"], conv.params["bias"]
    import torch

    xt, wt, bt = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b)
    conv1 = {
        "scratch im2col": summary([timed(lambda: conv.forward(x)) for _ in range(repeats)]),
        "torch F.conv2d": summary(
            [timed(lambda: torch.nn.functional.conv2d(xt, wt, bt)) for _ in range(repeats)]
        ),
        "lesson loop": summary([timed(lambda: conv2d_loop(x, w, b)) for _ in range(loop_repeats)]),
    }
    ratio = lambda table, a, b: {
        clock: table[a][clock] / table[b][clock] for clock in ("wall", "cpu")
    }
    return {
        "model": "lenet5",
        "batch": batch,
        "dtype": "float32",
        "repeats": repeats,
        "step_ms": step,
        "step_vs_torch": {fw: ratio(step, fw, "torch_impl") for fw in FRAMEWORKS},
        "conv1_forward_ms": conv1,
        "loop_vs_scratch": ratio(conv1, "lesson loop", "scratch im2col"),
        "loop_vs_torch": ratio(conv1, "lesson loop", "torch F.conv2d"),
    }


def print_lenet5(r: dict) -> None:
    print(
        f"LeNet-5, one training step (forward + backward + SGD), batch {r['batch']}, {r['dtype']}, median of {r['repeats']}, {r['threads']} thread(s)"
    )
    print(f"  {'':<14} {'wall ms':>9} {'vs torch':>9} {'CPU ms':>9} {'vs torch':>9}")
    for fw, t in r["step_ms"].items():
        v = r["step_vs_torch"][fw]
        print(f"  {fw:<14} {t['wall']:9.2f} {v['wall']:8.2f}x {t['cpu']:9.2f} {v['cpu']:8.2f}x")
    print(f"conv1 forward, 6@5x5 on {r['batch']}x1x32x32")
    for name, t in r["conv1_forward_ms"].items():
        print(f"  {name:<14} {t['wall']:9.2f} {'':9} {t['cpu']:9.2f}")
    lv, lt = r["loop_vs_scratch"], r["loop_vs_torch"]
    print(
        f"  lesson loop / scratch im2col: {lv['wall']:.0f}x wall, {lv['cpu']:.0f}x CPU;  lesson loop / torch: {lt['wall']:.0f}x wall, {lt['cpu']:.0f}x CPU"
    )
    print(
        f"load average while running: {r['load_average']:.2f} on {os.cpu_count()} cores (on a shared machine trust CPU time and ratios)"
    )


BENCHMARKS = {"lenet5": (bench_lenet5, print_lenet5)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tasks.bench", description=__doc__.split("\n")[0]
    )
    parser.add_argument("model", help=f"one of: {', '.join(BENCHMARKS)}")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="threads per framework (default 1)")
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object instead of the table"
    )
    args = parser.parse_args(argv)
    if args.model not in BENCHMARKS:
        print(
            f"error: no benchmark for model {args.model!r}; choose from: {', '.join(BENCHMARKS)}",
            file=sys.stderr,
        )
        return 2
    if args.batch < 1 or args.repeats < 1 or args.threads < 1:
        print("error: --batch, --repeats and --threads must be positive integers", file=sys.stderr)
        return 2
    limit_threads(args.threads)
    run, show = BENCHMARKS[args.model]
    result = run(batch=args.batch, repeats=args.repeats)
    result.update(threads=args.threads, load_average=os.getloadavg()[0])
    print(json.dumps(result, indent=2)) if args.json else show(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
