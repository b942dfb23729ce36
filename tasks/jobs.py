"""`rosetta all --jobs N`: each model's training and its parity checks as jobs for N worker processes.

`rosetta all` is one model after another, and each model's work is one thread: the training loops
and JAX's and Keras's compilation of ~770 small XLA programs and traced functions. With N processes
N cores work. The parent imports no framework (a worker is started by `spawn`, a fresh interpreter:
`rosetta list` and the start-up checks stay as fast); each worker sets the one-thread and JAX-cache
settings of a serial run before it imports a framework, runs the jobs it is sent, and sends back the
training result or the parity records, pickled. The parent hands out the most expensive jobs first
and puts the results back in model order, so the output (and `--json`) is the serial run's.

Ctrl-C: the workers ignore SIGINT (a terminal sends it to the whole process group); the parent stops
them (SIGTERM, then SIGKILL) and reports what finished. A worker that dies names its job and the
run exits 1; a worker whose parent died exits by itself (no orphans left computing).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import wait

# CPU seconds of each job in a first run (JAX's compilation cache empty; `rosetta all --jobs 2` at
# commit 0949eb6 + these workers, 21:04-21:16 UTC 30 Nov 2026, 390 s of CPU in all; the workers
# report them). Only the order matters: the longest jobs start first and the short ones fill
# the cores at the end. A model not listed counts as the most expensive.
COST = {
    ("lenet5", "parity"): 90,
    ("transformer", "parity"): 72,
    ("mlp", "parity"): 46,
    ("gru", "train"): 26,
    ("lenet5", "train"): 22,
    ("attention", "parity"): 20,
    ("lstm", "train"): 19,
    ("transformer", "train"): 18,
    ("lstm", "parity"): 16,
    ("gru", "parity"): 14,
    ("attention", "train"): 13,
    ("rnn", "train"): 11,
    ("rnn", "parity"): 10,
    ("mlp", "train"): 5,
    ("perceptron", "parity"): 4,
    ("perceptron", "train"): 1,
}
PARTS = ("train", "parity")


def default_jobs(n_models: int) -> int:
    """One worker per CPU this process may run on, no more than there are models."""
    return max(1, min(len(os.sched_getaffinity(0)), n_models))


def schedule(models: list[str]) -> list[tuple[int, str, str]]:
    """Every (model index, model, part), the most expensive first (stable: model order on ties)."""
    jobs = [(i, model, part) for i, model in enumerate(models) for part in PARTS]
    most = max(COST.values()) + 1
    return sorted(jobs, key=lambda job: -COST.get(job[1:], most))


# ----------------------------------------------------------------------------- the worker
def _exit_with_parent(parent: int) -> None:
    """A worker whose parent is gone (SIGKILL, a crash) stops instead of computing on as an orphan."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def worker(conn, parent: int, frameworks: list[str]) -> None:
    """Run the jobs `conn` sends (None: stop); send back ("done", job, value, (wall s, CPU s)) per
    job, or ("failed", job, message, exit status)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    os.dup2(2, 1)  # nothing a worker prints can reach the parent's stdout (the --json document)
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    from tasks import cli  # no framework yet: the settings below are read when they start

    cli.one_thread_for_torch()
    cli.jax_compilation_cache()
    cli.one_thread_for_numpy()
    from tasks.train import TrainOptions

    while (job := conn.recv()) is not None:
        _, model, part = job
        start, cpu = time.perf_counter(), time.process_time()
        try:
            if part == "train":
                value = cli.train_model(
                    model, None, frameworks, TrainOptions(), show_progress=False
                )
            else:
                value = cli.parity_records([model], frameworks, show_progress=False)
        except Exception as e:  # noqa: BLE001 (reported by name; the other jobs go on)
            status = getattr(e, "exit_code", None)  # typer.Exit from cli.fail: its line is printed
            message = f"exit status {status}" if status else traceback.format_exc().rstrip()
            conn.send(("failed", job, message, status or 1))
            continue
        conn.send(("done", job, value, (time.perf_counter() - start, time.process_time() - cpu)))


# ----------------------------------------------------------------------------- the parent
@dataclass
class Outcome:
    """What the jobs produced, by model index: the training results, the parity records, the seconds
    (train, parity) of wall time and of CPU time; the jobs that failed (model, part, message); the exit status a failure asks."""

    trained: dict[int, dict] = field(default_factory=dict)
    records: dict[int, list[dict]] = field(default_factory=dict)
    seconds: dict[int, dict[str, float]] = field(default_factory=dict)
    cpu: dict[int, dict[str, float]] = field(default_factory=dict)
    failed: list[tuple[str, str, str]] = field(default_factory=list)
    status: int = 0
    interrupted: list[str] = field(default_factory=list)  # the jobs Ctrl-C stopped, "model part"

    def finished(self, index: int) -> bool:
        return index in self.trained and index in self.records


@dataclass
class _Worker:
    process: multiprocessing.Process
    conn: object
    job: tuple | None = None


def _describe_death(process) -> str:
    code = process.exitcode
    if code is not None and code < 0:
        return f"its worker process was killed by {signal.Signals(-code).name}"
    return f"its worker process ended with exit status {code}"


def run(models: list[str], frameworks: list[str], n_jobs: int, report) -> Outcome:
    """Run every model's training and parity in `n_jobs` worker processes. `report(event, job,
    outcome, running)` is called as jobs start ("start") and end ("done", "failed"); a
    KeyboardInterrupt stops the workers and returns what finished, with `interrupted` set."""
    context = multiprocessing.get_context("spawn")
    pending = deque(schedule(models))
    outcome, workers = Outcome(), []

    def start_worker() -> _Worker:
        ours, theirs = context.Pipe()
        process = context.Process(
            target=worker, args=(theirs, os.getpid(), frameworks), daemon=True, name="rosetta-all"
        )
        # started with SIGINT ignored, which the new interpreter inherits: a Ctrl-C while it
        # starts up cannot print a KeyboardInterrupt traceback from it
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            process.start()
        finally:
            signal.signal(signal.SIGINT, previous)
        theirs.close()
        return _Worker(process, ours)

    def running() -> list[str]:
        return [f"{w.job[1]} {w.job[2]}" for w in workers if w.job is not None]

    def hand_out(w: _Worker) -> None:
        w.job = pending.popleft() if pending else None
        try:
            w.conn.send(w.job)
        except (BrokenPipeError, OSError):  # died before its first job: seen by wait() below
            return
        if w.job is not None:
            report("start", w.job, outcome, running())

    try:
        for _ in range(min(n_jobs, len(pending))):
            workers.append(start_worker())
        for w in workers:
            hand_out(w)
        while any(w.job is not None for w in workers):
            busy = [w for w in workers if w.job is not None]
            ready = wait([w.conn for w in busy] + [w.process.sentinel for w in busy])
            for w in busy:
                if w.conn not in ready and w.process.sentinel not in ready:
                    continue
                index, model, part = w.job
                try:
                    message = w.conn.recv() if w.conn.poll() else None
                except (EOFError, OSError):
                    message = None
                if message is None:  # the process ended without an answer
                    w.process.join()
                    outcome.failed.append((model, part, _describe_death(w.process)))
                    outcome.status = max(outcome.status, 1)
                    job, w.job = w.job, None
                    report("failed", job, outcome, running())
                    workers.remove(w)
                    if pending:
                        workers.append(new := start_worker())
                        hand_out(new)
                    continue
                kind, _, value, extra = message
                if kind == "done":
                    (outcome.trained if part == "train" else outcome.records)[index] = value
                    outcome.seconds.setdefault(index, {})[part] = extra[0]
                    outcome.cpu.setdefault(index, {})[part] = extra[1]
                else:
                    outcome.failed.append((model, part, value))
                    outcome.status = max(outcome.status, extra)
                job, w.job = w.job, None
                report(kind, job, outcome, running())
                hand_out(w)
    except KeyboardInterrupt:
        outcome.interrupted = running()
    finally:
        stop(workers)
    return outcome


def stop(workers: list[_Worker]) -> None:
    """SIGTERM to every worker still running, SIGKILL to any that has not ended 5 s later."""
    for w in workers:
        if w.process.is_alive():
            w.process.terminate()
    deadline = time.monotonic() + 5.0
    for w in workers:
        w.process.join(max(0.0, deadline - time.monotonic()))
        if w.process.is_alive():
            w.process.kill()
            w.process.join()
        w.conn.close()
