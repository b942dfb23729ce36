"""Shared datasets: seeded splits and batch order, and the MNIST IDX reader on tiny files."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from tasks import data


def test_split_and_batch_order_are_seeded():
    a, b, c = data.moons(seed=0), data.moons(seed=0), data.moons(seed=1)
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.x_train, c.x_train)
    assert len(a.x_train) == 750 and len(a.x_test) == 250 and a.n_classes == 2
    first = data.batches(10, 4, seed=3, epoch=0)
    assert [len(i) for i in first] == [4, 4, 2]
    assert sorted(np.concatenate(first).tolist()) == list(range(10))
    assert all(np.array_equal(p, q) for p, q in zip(first, data.batches(10, 4, seed=3, epoch=0)))
    assert not np.array_equal(
        np.concatenate(first), np.concatenate(data.batches(10, 4, seed=3, epoch=1))
    )


def test_diabetes_task_is_a_regression_standardised_on_its_training_split():
    """Float targets (B, 1), n_classes counting the one target; mean 0 and std 1 on the training
    split only (the test split's statistics stay unseen); the baselines are the two obvious fits."""
    d = data.diabetes(seed=0)
    assert d.regression and not data.moons(seed=0).regression
    assert d.x_train.shape == (332, 10) and d.y_train.shape == (332, 1) and d.n_classes == 1
    assert d.y_train.dtype == np.float64 and len(d.x_test) == 110
    for a in (d.x_train, d.y_train):
        np.testing.assert_allclose(a.mean(axis=0), 0, atol=1e-12)
        np.testing.assert_allclose(a.std(axis=0), 1, atol=1e-12)
    assert abs(d.y_test.mean()) > 1e-3  # standardised with the training statistics, not its own
    raw = d.y_test[:, 0] * d.meta["target_std"] + d.meta["target_mean"]  # back to the raw scale
    assert 25 <= raw.min() and raw.max() <= 346  # the dataset's progression scores, 25..346
    base = d.meta["baselines"]
    assert 0.4 < base["least_squares_test_mse"] < 0.6 < 0.9 < base["mean_test_mse"] < 1.1


def test_digits_task():
    d = data.digits(seed=0)
    assert d.x_train.shape[1] == 64 and d.n_classes == 10
    assert len(d.x_train) + len(d.x_test) == 1797
    assert 0.0 <= d.x_train.min() and d.x_train.max() <= 1.0


def write_tiny_mnist(folder, n_train=5, n_test=3, gz=False):
    rng = np.random.default_rng(0)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for key, array in arrays.items():
        path = folder / data.MNIST_FILES[key]
        data.write_idx(path, array)
        if gz:
            path.with_name(path.name + ".gz").write_bytes(gzip.compress(path.read_bytes()))
            path.unlink()
    return arrays


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_mnist_reader_reads_idx_files(tmp_path, gz):
    arrays = write_tiny_mnist(tmp_path, gz=gz)
    d = data.load_task("mnist", data_dir=tmp_path)
    assert d.x_train.shape == (5, 1, 28, 28) and d.x_test.shape == (3, 1, 28, 28)
    np.testing.assert_array_equal(d.x_train[:, 0] * 255, arrays["train_images"])
    np.testing.assert_array_equal(d.y_test, arrays["test_labels"])


def test_mnist_missing_file_names_it(tmp_path):
    write_tiny_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(data.DataFileError, match="t10k-labels-idx1-ubyte: file not found"):
        data.load_task("mnist", data_dir=tmp_path)


def test_mnist_truncated_file_names_it_and_what_was_expected(tmp_path):
    write_tiny_mnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(
        data.DataFileError,
        match=r"train-images-idx3-ubyte: truncated .* expected 3936 for shape \(5, 28, 28\)",
    ):
        data.load_task("mnist", data_dir=tmp_path)


def test_mnist_needs_a_folder():
    with pytest.raises(data.DataFileError, match="--data-dir"):
        data.load_task("mnist")


def test_read_idx_checks_the_element_type_and_says_when_a_file_is_gzip_without_gz(tmp_path):
    path = tmp_path / "x-idx1-ubyte"
    data.write_idx(path, np.arange(4, dtype=np.uint8))
    np.testing.assert_array_equal(data.read_idx(path, 1, np.uint8), np.arange(4))
    data.write_idx(path, np.arange(4, dtype=np.int8))
    with pytest.raises(
        data.DataFileError, match=r"type code 0x09 \(int8\); expected 0x08 \(uint8\)"
    ):
        data.read_idx(path, 1, np.uint8)
    path.write_bytes(gzip.compress(path.read_bytes()))
    with pytest.raises(data.DataFileError, match="gzip-compressed .* name it x-idx1-ubyte.gz"):
        data.read_idx(path)
