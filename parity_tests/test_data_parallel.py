"""Data-parallel training (issue 12): N replicas compute what one replica computes on the global batch.

Each framework's chapter (`*/data_parallel.py`) runs every configuration once per session
(tasks.data_parallel.compute: scratch here, torch in 4 worker processes, Keras and JAX each in one
fresh subprocess, started together so they overlap). The tests then compare, in float64:
N replicas against 1 replica in each framework, each framework against scratch, and each trap's
wrong way against its right way.
"""

from __future__ import annotations

import multiprocessing
from dataclasses import replace

import numpy as np
import pytest

from tasks import data_parallel as dp

FRAMEWORKS = ("scratch", "torch_impl", "tf_impl", "jax_impl")
TOL = 1e-12  # relative, float64; measured at most 1.7e-13 (Keras, LeNet-5 with batch norm, SGD)
DIFFERS = 1e-3  # a trap's wrong way ends at least this far (relative) from the 1-replica run


@pytest.fixture(scope="module", autouse=True)
def start_subprocesses(request):
    """Keras and JAX start at once in their own processes, overlapping torch's workers and scratch;
    only those the selected tests need."""
    selected = " ".join(item.nodeid for item in request.session.items)
    for framework in ("tf_impl", "jax_impl"):
        if framework in selected or "uneven_batches_each_engine" in selected:
            dp.start(framework)
    if "multi_process" in selected:
        JAX_PROCESSES.extend(dp.start_jax_processes({"mlp": dp.job(dp.Run("mlp", "sgd", 2))}, 2))
    yield
    for process in JAX_PROCESSES:
        process.kill()


JAX_PROCESSES: list = []


def result(framework: str, config: str, optimizer: str, replicas: int, variant: str = "default"):
    return dp.compute(framework)[dp.Run(config, optimizer, replicas, variant).key]


def reference(framework: str, config: str, optimizer: str = "sgd"):
    """The 1-replica run on the global batch, through the same chapter."""
    return result(framework, config, optimizer, 1)


def rel_diff(a, b) -> float:
    return dp.max_rel_diff(a, b)[0]


def assert_close(actual, expected, what: str, tol: float = TOL) -> None:
    err, name = dp.max_rel_diff(actual, expected)
    assert err <= tol, f"{what}: {name} differs by {err:.1e} (relative) > {tol:.0e}"


def assert_differs(actual, expected, what: str) -> None:
    err, name = dp.max_rel_diff(actual, expected)
    assert err > DIFFERS, (
        f"{what}: the wrong way should differ, largest difference {err:.1e} ({name})"
    )


GRID = [
    pytest.param(fw, c, o, n, id=f"{fw}-{c}-{o}-n{n}")
    for fw in FRAMEWORKS
    for c in dp.PARITY_CONFIGS
    for o in dp.OPTIMIZERS
    for n in dp.REPLICAS
]


# ----------------------------------------------------------------------------- parity
@pytest.mark.parametrize("framework, config, optimizer, replicas", GRID)
def test_n_replicas_equal_one_replica(framework, config, optimizer, replicas):
    """20 steps on N replicas leave every parameter (and batch-norm statistic) of the 1-replica run."""
    expected = reference(framework, config, optimizer)
    actual = result(framework, config, optimizer, replicas)
    assert_close(actual, expected, f"{framework} {config} {optimizer} N={replicas} vs N=1")


@pytest.mark.parametrize("framework, config, optimizer, replicas", [p for p in GRID if p.values[0] != "scratch"])  # fmt: skip
def test_frameworks_agree_with_scratch(framework, config, optimizer, replicas):
    """Every framework's N-replica run ends where scratch's does (Keras's and Flax's biased running
    variances converted to torch's convention first)."""
    actual = result(framework, config, optimizer, replicas)
    if framework in ("tf_impl", "jax_impl"):
        actual = dp.running_var_as_torch(config, actual, dp.STEPS)
    expected = result("scratch", config, optimizer, replicas)
    assert_close(actual, expected, f"{framework} vs scratch, {config} {optimizer} N={replicas}")


def test_the_runs_train():
    """The runs compared are real training: 20 steps move every parameter, and the loss falls."""
    start, trained = dp.initial_weights("lenet5-bn"), result("scratch", "lenet5-bn", "sgd", 4)
    assert min(rel_diff(trained, {k: v}) for k, v in start.items()) > 1e-4
    history = trained[dp.HISTORY]
    assert len(history) == dp.EPOCHS and history[-1] < history[0]


@pytest.mark.parametrize("framework, replicas", [("tf_impl", 2), ("tf_impl", 4), ("jax_impl", 2), ("jax_impl", 4)])  # fmt: skip
def test_explicit_form_equals_one_replica(framework, replicas):
    """Keras's custom replica step with tf.nn.compute_average_loss, and JAX's shard_map with
    jax.lax.pmean of the gradients (and batch norm's axis_name), give the 1-replica run too."""
    variant = "custom-step" if framework == "tf_impl" else "shard-map"
    config = "mlp" if replicas == 2 else "lenet5-bn"
    actual = result(framework, config, "sgd", replicas, variant)
    assert_close(
        actual, reference(framework, config), f"{framework} {variant} {config} N={replicas}"
    )


def test_jax_multi_process_equals_one_replica():
    """Two JAX processes of one CPU device each, joined by jax.distributed.initialize over 127.0.0.1
    (jax 0.10.2 runs CPU collectives with gloo): the same train() on a mesh across both processes
    gives the 1-replica run."""
    assert len(JAX_PROCESSES) == 2
    results = [process.results()["mlp"] for process in JAX_PROCESSES]
    for got in results:  # each process holds the replicated parameters
        assert_close(got, reference("jax_impl", "mlp"), "jax, 2 processes vs 1 device")


# ----------------------------------------------------------------------------- traps
@pytest.mark.parametrize("framework", ["scratch", "torch_impl", "jax_impl"])
def test_trap_gradients_summed_instead_of_averaged(framework):
    """Summing the replicas' gradients (a DDP comm hook without the division, jax.lax.psum, the sum in
    scratch) steps N times too far; the mean (DDP's default, pmean) is the 1-replica step. The
    wrong way is the same arithmetic in every framework: it equals scratch's summed run."""
    wrong = result(framework, "mlp", "sgd", 2, "grad-sum")
    assert_differs(wrong, reference(framework, "mlp"), f"{framework} summed gradients")
    assert_close(wrong, result("scratch", "mlp", "sgd", 2, "grad-sum"), f"{framework} vs scratch, summed")  # fmt: skip
    assert_close(
        result(framework, "mlp", "sgd", 2), reference(framework, "mlp"), f"{framework} mean"
    )


@pytest.mark.parametrize("framework", ["tf_impl", "jax_impl"])
def test_trap_loss_divided_by_the_replica_batch(framework):
    """A custom replica step whose loss is the mean over its own B/N examples, then summed over the
    replicas (Keras's apply_gradients; JAX's shard_map, whose default check_vma already sums the
    gradient of a replicated parameter before the pmean), takes N times the step: it equals the
    summed-gradient run. Dividing by the global batch (tf.nn.compute_average_loss) or pmean-ing the
    device's own gradient (check_vma=False) gives the 1-replica run."""
    wrong = result(framework, "mlp", "sgd", 2, "loss-per-replica")
    assert_differs(wrong, reference(framework, "mlp"), f"{framework} loss / (B/N)")
    assert_close(wrong, result("scratch", "mlp", "sgd", 2, "grad-sum"), f"{framework} = summed gradients")  # fmt: skip
    right = "custom-step" if framework == "tf_impl" else "shard-map"
    assert_close(result(framework, "mlp", "sgd", 2, right), reference(framework, "mlp"), right)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_trap_per_replica_batch_norm(framework):
    """Batch norm over each replica's B/N examples normalises by other statistics than the global
    batch's: the run differs. Synchronised (SyncBatchNorm, synchronized=True, axis_name, the sums in
    scratch), it is the 1-replica run."""
    wrong = result(framework, "lenet5-bn", "sgd", 2, "bn-per-replica")
    ref = reference(framework, "lenet5-bn")
    assert_differs(dp.trainable(wrong), dp.trainable(ref), f"{framework} per-replica batch norm")
    assert_close(result(framework, "lenet5-bn", "sgd", 2), ref, f"{framework} synchronised")


def test_trap_sampler_without_set_epoch():
    """Without set_epoch a DistributedSampler yields epoch 0's order every epoch, so the run differs;
    with it each epoch takes the shared order of that epoch and the run is the 1-replica run."""
    from torch_impl.data_parallel import ReplicaSampler

    x = np.arange(dp.N_TRAIN)
    sampler = ReplicaSampler(x, global_batch=dp.GLOBAL_BATCH, seed=dp.SEED, num_replicas=2, rank=1)
    without = [list(sampler) for _ in range(3)]
    assert without[0] == without[1] == without[2]
    with_epoch = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        with_epoch.append(list(sampler))
    assert with_epoch[0] != with_epoch[1] != with_epoch[2]
    assert with_epoch[1] == list(
        np.concatenate(dp.global_batches(dp.N_TRAIN, 16, dp.SEED, 1))[1::2]
    )
    wrong = result("torch_impl", "mlp", "sgd", 2, "no-set-epoch")
    assert_differs(wrong, reference("torch_impl", "mlp"), "no set_epoch")


@pytest.mark.parametrize("framework", ["scratch", "torch_impl", "jax_impl"])
def test_trap_one_dropout_seed_shared_by_all_replicas(framework):
    """One seed on every replica (nnx.Dropout's key replicated into shard_map; nn.Dropout after the
    same torch.manual_seed; scratch's Dropout) draws the same (B/N, D) mask on each: the run differs
    from the 1-replica run, where every example has its own mask. Each replica keeping its own rows
    of the global batch's mask (ReplicaDropout; JAX's global-view jit does it by itself) matches."""
    ref = result(framework, "mlp-dropout", "sgd", 1)
    wrong = result(framework, "mlp-dropout", "sgd", 2, "dropout-shared-seed")
    assert_differs(wrong, ref, f"{framework} shared dropout seed")
    assert_close(result(framework, "mlp-dropout", "sgd", 2), ref, f"{framework} replica rows")


def test_shared_seed_draws_identical_masks():
    """The mechanism of the trap above: two replicas' stock dropout layers from one seed drop the
    same units of their (different) examples."""
    from scratch import data_parallel as sdp
    from scratch import mlp

    cfg, params = dp.CONFIGS["mlp-dropout"], dp.initial_weights("mlp-dropout")
    x = dp.dataset("mlp-dropout")[0][:8]
    masks = {}
    for variant in ("dropout-shared-seed", "default"):
        models = [
            sdp.make_replica(
                mlp,
                cfg,
                params,
                rank=r,
                replicas=2,
                group=None,
                seed=0,
                dtype="float64",
                variant=variant,
            )  # fmt: skip
            for r in range(2)
        ]
        for m, half in zip(models, (x[0::2], x[1::2])):
            m.forward(half)
        masks[variant] = [m.dropouts[0].cache["scale"] for m in models]
    assert np.array_equal(*masks["dropout-shared-seed"])
    assert not np.array_equal(*masks["default"])


# ----------------------------------------------------------------------------- uneven batches
def test_uneven_batches_each_engine():
    """A global batch of 10 on 4 replicas, as each engine has it (docs/PORTING.md): torch's
    DistributedSampler pads with repeated indices (or drops with drop_last), Keras's distributed
    dataset splits unevenly (3, 3, 3, 1), a JAX NamedSharding refuses the array, and the suite's
    rule refuses the batch in every chapter."""
    torch_notes = dp.compute("torch_impl")["uneven"]
    assert torch_notes["sampler_pads"].tolist() == [[0, 4, 8], [1, 5, 9], [2, 6, 0], [3, 7, 1]]
    assert torch_notes["sampler_drop_last"].tolist() == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert dp.compute("tf_impl")["uneven"]["batch_10_on_4"].tolist() == [3, 3, 3, 1]
    jax_note = str(dp.compute("jax_impl")["uneven"]["batch_10_on_4"])
    assert jax_note.startswith("ValueError") and "should evenly divide" in jax_note
    for framework in ("scratch", "torch_impl"):
        assert "must divide by the number of replicas" in str(dp.compute(framework)["uneven"]["batch_10_on_4"])  # fmt: skip


def test_suite_refuses_indivisible_batch_and_drops_the_last():
    """The suite's choice: a global batch N does not divide is refused before any replica starts, and
    an epoch's last, smaller global batch is dropped (90 examples: 5 batches of 16, 10 left out)."""
    from scratch import data_parallel as sdp
    from scratch import mlp

    x, y = dp.dataset("mlp")
    with pytest.raises(ValueError, match="must divide by the number of replicas"):
        sdp.train(mlp, dp.CONFIGS["mlp"], dp.initial_weights("mlp"), x, y, replicas=4,
                  optimizer=dp.OPTIMIZERS["sgd"], epochs=1, global_batch=10, seed=0)  # fmt: skip
    batches = dp.global_batches(dp.N_TRAIN, dp.GLOBAL_BATCH, dp.SEED, 0)
    assert [len(b) for b in batches] == [16] * 5
    assert len(set(np.concatenate(batches))) == 80
    for b in batches:  # the replicas' slices b[r::N] are the whole batch, each example once
        assert sorted(np.concatenate([b[r::4] for r in range(4)])) == sorted(b)


# ----------------------------------------------------------------------------- processes
def test_failed_workers_leave_no_process():
    """A worker that raises ends the launch with its error, and every worker process is gone."""
    from torch_impl import data_parallel as tdp

    bad = dp.Job("mlp", dp.CONFIGS["mlp"], dp.initial_weights("mlp"), *dp.dataset("mlp"),
                 dp.OPTIMIZERS["sgd"], replicas=2, global_batch=3)  # fmt: skip
    with pytest.raises(Exception, match="must divide by the number of replicas"):
        tdp.launch({"bad": bad}, 2, timeout=120)
    assert multiprocessing.active_children() == []


def test_timed_out_workers_are_killed():
    """Workers still running at the timeout are killed, and the launch raises TimeoutError."""
    from torch_impl import data_parallel as tdp

    # far more epochs than 0.5 s allows: the workers (forked ready to run) are still training
    job = replace(dp.job(dp.Run("mlp", "sgd", 2)), epochs=100_000)
    with pytest.raises(TimeoutError):
        tdp.launch({"slow": job}, 2, timeout=0.5)
    assert multiprocessing.active_children() == []
