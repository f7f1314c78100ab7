"""The real torchvision loading path, on small files in the real formats written here."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bnbench.job.data import DataError, load_dataset
from conftest import make_cfg, write_cifar, write_mnist_family

CPU = torch.device("cpu")


@pytest.mark.parametrize("name,class_name", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST"), ("kmnist", "KMNIST")])
def test_mnist_family_from_idx_files(tmp_path, name, class_name):
    write_mnist_family(tmp_path, class_name, n_train=120, n_test=50)
    data = load_dataset(make_cfg(f"dataset={name}", f"dataset.root={tmp_path}"), CPU)
    # 1/12 of the training files held out for validation (5,000 of 60,000 on the real files)
    assert data.train_x.shape == (110, 1, 28, 28) and data.val_x.shape == (10, 1, 28, 28)
    assert data.test_x.shape == (50, 1, 28, 28)
    assert data.train_x.dtype == torch.float32 and data.train_y.dtype == torch.int64
    assert data.num_outputs == 10
    # normalized with the training set's statistics
    assert abs(data.train_x.mean().item()) < 1e-4 and abs(data.train_x.std().item() - 1) < 1e-3


def test_gz_files_as_shipped_are_unpacked(tmp_path):
    """Debian's dataset-fashion-mnist ships the .gz files; dropping them in raw/ must work offline."""
    raw = write_mnist_family(tmp_path, "FashionMNIST", n_train=60, n_test=20, compress=True)
    assert not (raw / "train-images-idx3-ubyte").exists()
    data = load_dataset(make_cfg("dataset.val_size=0", "dataset=fashion_mnist", f"dataset.root={tmp_path}", "dataset.download=false"), CPU)
    assert len(data.train_y) == 60 and len(data.test_y) == 20


def test_idx_pixels_and_labels_round_trip(tmp_path):
    write_mnist_family(tmp_path, "MNIST", n_train=30, n_test=10)
    data = load_dataset(make_cfg("dataset.val_size=0", "dataset=mnist", f"dataset.root={tmp_path}", "dataset.normalize=false"), CPU)
    from conftest import synthetic_images

    images, labels = synthetic_images(30, 28, 1, 10, seed=0)
    torch.testing.assert_close(data.train_x, torch.from_numpy(images).float() / 255)
    assert data.train_y.tolist() == labels.tolist()


@pytest.mark.parametrize("name,num_classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_from_pickle_batches(tmp_path, cifar_checksums, name, num_classes):
    apply, tvd = cifar_checksums
    md5s = write_cifar(tmp_path, num_classes=num_classes, n_per_batch=20)
    apply(tvd.CIFAR10 if num_classes == 10 else tvd.CIFAR100, md5s)
    data = load_dataset(make_cfg("dataset.val_size=0", f"dataset={name}", f"dataset.root={tmp_path}", "dataset.download=false"), CPU)
    n_train = 100 if num_classes == 10 else 20
    assert data.train_x.shape == (n_train, 3, 32, 32) and data.test_x.shape == (20, 3, 32, 32)
    assert data.num_outputs == num_classes


def test_missing_files_name_the_folder_and_files(tmp_path):
    with pytest.raises(DataError) as err:
        load_dataset(make_cfg("dataset=kmnist", f"dataset.root={tmp_path}", "dataset.download=false"), CPU)
    message = str(err.value)
    assert str(tmp_path / "KMNIST" / "raw") in message
    assert "train-images-idx3-ubyte" in message and "t10k-labels-idx1-ubyte" in message
    assert "\n" not in message


def test_corrupt_file_is_a_clear_error(tmp_path):
    raw = write_mnist_family(tmp_path, "MNIST", n_train=30, n_test=10)
    (raw / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03garbage")
    with pytest.raises(DataError, match="corrupt"):
        load_dataset(make_cfg("dataset=mnist", f"dataset.root={tmp_path}", "dataset.download=false"), CPU)


def test_corrupt_cifar_fails_checksum(tmp_path):
    write_cifar(tmp_path, num_classes=10, n_per_batch=5)  # real checksum table: these files cannot match
    with pytest.raises(DataError, match="checksum"):
        load_dataset(make_cfg("dataset=cifar10", f"dataset.root={tmp_path}", "dataset.download=false"), CPU)


def test_subsets_are_fixed_across_seeds(tmp_path):
    a = load_dataset(make_cfg("dataset.train_size=100", "dataset.test_size=40", "seed=1"), CPU)
    b = load_dataset(make_cfg("dataset.train_size=100", "dataset.test_size=40", "seed=2"), CPU)
    assert len(a.train_y) == 100 and len(a.test_y) == 40
    assert torch.equal(a.train_x, b.train_x)


def test_friedman1_is_a_fixed_standardized_regression_set():
    a = load_dataset(make_cfg("dataset.val_size=0", "dataset=friedman1", "seed=1"), CPU)
    b = load_dataset(make_cfg("dataset.val_size=0", "dataset=friedman1", "seed=2"), CPU)
    assert (a.task, a.num_outputs, a.in_shape) == ("regression", 1, (10,))
    assert a.train_x.shape == (8000, 10) and a.test_y.shape == (2000, 1) and a.train_y.dtype == torch.float32
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y), "the run seed must not change the data"
    assert a.train_y.mean().abs() < 1e-4 and (a.train_y.std() - 1).abs() < 1e-4  # standardized targets
    assert torch.allclose(a.train_x.mean(dim=0), torch.zeros(10), atol=1e-4)


def test_friedman1_follows_its_formula():
    from sklearn.datasets import make_friedman1

    data = load_dataset(make_cfg("dataset.val_size=0", "dataset=friedman1", "dataset.noise=0", "dataset.normalize=false",
                                 "dataset.train_size=50", "dataset.test_size=10"), CPU)
    x, y = data.train_x.double().numpy(), data.train_y.double().numpy()[:, 0]
    expected = 10 * np.sin(np.pi * x[:, 0] * x[:, 1]) + 20 * (x[:, 2] - 0.5) ** 2 + 10 * x[:, 3] + 5 * x[:, 4]
    assert np.allclose(y, expected, atol=1e-4)
    assert np.allclose(x, make_friedman1(60, n_features=10, noise=0, random_state=0)[0][:50], atol=1e-6)


def test_friedman1_needs_five_features():
    with pytest.raises(DataError, match="at least 5 features"):
        load_dataset(make_cfg("dataset=friedman1", "dataset.features=3"), CPU)


def test_train_batch_gathers_as_indexing_does():
    data = load_dataset(make_cfg("dataset=digits"), CPU)
    idx = torch.randperm(len(data.train_y), generator=torch.Generator().manual_seed(0))[:60]
    x, y = data.train_batch(idx)
    assert torch.equal(x, data.train_x[idx]) and torch.equal(y, data.train_y[idx])
    stacked = idx.view(3, 20)  # stacked seeds: one row of indices per copy
    x, y = data.train_batch(stacked)
    assert x.shape == (3, 20, 1, 8, 8) and torch.equal(x, data.train_x[stacked]) and torch.equal(y, data.train_y[stacked])


def test_a_process_reuses_loaded_data_until_the_config_or_files_change(tmp_path):
    """Jobs of a sweep worker share one loaded copy; a changed config or data file is read again."""
    raw = write_mnist_family(tmp_path, "MNIST", n_train=40, n_test=10)
    cfg = make_cfg("dataset.val_size=0", "dataset=mnist", f"dataset.root={tmp_path}")
    first = load_dataset(cfg, CPU)
    assert load_dataset(make_cfg("dataset.val_size=0", "dataset=mnist", f"dataset.root={tmp_path}", "seed=7"), CPU) is first
    smaller = load_dataset(make_cfg("dataset.val_size=0", "dataset=mnist", f"dataset.root={tmp_path}", "dataset.train_size=20"), CPU)
    assert len(smaller.train_y) == 20
    assert load_dataset(cfg, CPU) is not first, "only the last dataset is kept"
    again = load_dataset(cfg, CPU)
    write_mnist_family(tmp_path, "MNIST", n_train=50, n_test=10)  # new files in place
    fresh = load_dataset(cfg, CPU)
    assert fresh is not again and len(fresh.train_y) == 50
    (raw / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03 truncated")
    with pytest.raises(DataError, match="corrupt"):
        load_dataset(cfg, CPU)


def test_a_loaded_dataset_cannot_be_changed_by_one_run_for_the_next():
    data = load_dataset(make_cfg("dataset=digits"), CPU)
    with pytest.raises(AttributeError):
        data.train_x = data.train_x.double()


def test_one_missing_mnist_file_is_named(tmp_path):
    raw = write_mnist_family(tmp_path, "MNIST", n_train=30, n_test=10)
    (raw / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError) as err:
        load_dataset(make_cfg("dataset=mnist", f"dataset.root={tmp_path}", "dataset.download=false"), CPU)
    message = str(err.value)
    assert "missing t10k-labels-idx1-ubyte;" in message and "train-images" not in message.split(";")[0]


def test_random_bytes_in_an_idx_file_name_the_file(tmp_path):
    raw = write_mnist_family(tmp_path, "FashionMNIST", n_train=30, n_test=10)
    (raw / "t10k-images-idx3-ubyte").write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(DataError) as err:
        load_dataset(make_cfg("dataset=fashion_mnist", f"dataset.root={tmp_path}", "dataset.download=false"), CPU)
    assert str(raw / "t10k-images-idx3-ubyte") in str(err.value) and "not an IDX images file" in str(err.value)


def test_a_truncated_gz_leaves_no_temporary_file(tmp_path):
    raw = write_mnist_family(tmp_path, "MNIST", n_train=30, n_test=10, compress=True)
    gz = raw / "train-images-idx3-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[: len(gz.read_bytes()) // 2])
    with pytest.raises(DataError, match="could not unpack .*train-images-idx3-ubyte.gz"):
        load_dataset(make_cfg("dataset=mnist", f"dataset.root={tmp_path}", "dataset.download=false"), CPU)
    assert not list(raw.glob("*tmp*")) and not (raw / "train-images-idx3-ubyte").exists()


def _unpack(folder, barrier):
    from bnbench.job.data import _extract_local_gz

    barrier.wait()
    _extract_local_gz(folder)


def test_parallel_workers_unpacking_the_same_gz_files_at_once_all_succeed(tmp_path):
    """The workers of a first parallel sweep on Debian's .gz files all unpack them at once; with
    one shared temporary name, one worker renamed another's file away (FileNotFoundError)."""
    import multiprocessing

    raw = write_mnist_family(tmp_path, "FashionMNIST", n_train=3000, n_test=500, compress=True)
    for _ in range(3):
        for path in raw.glob("*-ubyte"):
            path.unlink()
        context = multiprocessing.get_context("spawn")
        barrier = context.Barrier(4)
        workers = [context.Process(target=_unpack, args=(raw, barrier)) for _ in range(4)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(60)
        assert [w.exitcode for w in workers] == [0, 0, 0, 0]
        assert len(list(raw.glob("*-ubyte"))) == 4 and not list(raw.glob("*tmp*"))
    load_dataset(make_cfg("dataset=fashion_mnist", f"dataset.root={tmp_path}", "dataset.download=false"), CPU)


def test_missing_cifar_files_are_named_once_with_the_meta_file(tmp_path):
    with pytest.raises(DataError) as err:
        load_dataset(make_cfg("dataset=cifar10", f"dataset.root={tmp_path}", "dataset.download=false"), CPU)
    message = str(err.value)
    assert f"in {tmp_path / 'cifar-10-batches-py'}:" in message and "batches-py/data_batch" not in message
    assert "data_batch_1" in message and "batches.meta" in message and "IDX" not in message


def _indexed_mnist(root, n_train: int, n_test: int) -> None:
    """MNIST files whose images carry their own index (pixels 0 and 1) and whose test images
    are marked (pixel 2), so every loaded row says where it came from."""
    from conftest import write_idx_images, write_idx_labels

    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n, mark in (("train", n_train, 0), ("t10k", n_test, 1)):
        images = np.zeros((n, 28, 28), dtype=np.uint8)
        images[:, 0, 0], images[:, 0, 1], images[:, 0, 2] = np.arange(n) % 256, np.arange(n) // 256, mark
        images[:, 5:, 5:] = np.random.default_rng(mark).integers(0, 255, (n, 23, 23))
        write_idx_images(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx_labels(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)


def _ids(x: torch.Tensor) -> set[tuple[int, int]]:
    """(test mark, index) of each row of unnormalized images."""
    pixels = (x[:, 0, 0, :3] * 255).round().long()
    return {(int(m), int(a + 256 * b)) for a, b, m in pixels.tolist()}


def test_the_validation_split_is_disjoint_fixed_and_carved_before_the_subset(tmp_path):
    _indexed_mnist(tmp_path, n_train=600, n_test=100)
    base = ("dataset=mnist", f"dataset.root={tmp_path}", "dataset.normalize=false")
    data = load_dataset(make_cfg(*base, "dataset.val_size=120"), CPU)
    train, val, test = _ids(data.train_x), _ids(data.val_x), _ids(data.test_x)
    assert (len(train), len(val), len(test)) == (480, 120, 100)
    assert not train & val and not (train | val) & test, "the three splits share no image"
    assert {m for m, _ in train | val} == {0} and train | val == {(0, i) for i in range(600)}
    # the same validation images whatever the seed and the arm (a different config loads anew)
    other = load_dataset(make_cfg(*base, "dataset.val_size=120", "seed=7", "norm=none", "dataset.download=false"), CPU)
    assert other is not data and _ids(other.val_x) == val
    # a training subset is drawn from what validation left, and validation stays the same
    subset = load_dataset(make_cfg(*base, "dataset.val_size=120", "dataset.train_size=50"), CPU)
    assert len(subset.train_y) == 50 and _ids(subset.val_x) == val and not _ids(subset.train_x) & val
    # a fraction of the training files; 0 turns it off
    assert len(load_dataset(make_cfg(*base, "dataset.val_size=0.25"), CPU).val_y) == 150
    off = load_dataset(make_cfg(*base, "dataset.val_size=0"), CPU)
    assert off.val_x is None and len(off.train_y) == 600


def test_standardization_uses_the_training_images_left_after_validation(tmp_path):
    _indexed_mnist(tmp_path, n_train=600, n_test=100)
    data = load_dataset(make_cfg("dataset=mnist", f"dataset.root={tmp_path}", "dataset.val_size=200"), CPU)
    assert abs(data.train_x.mean().item()) < 1e-5 and abs(data.train_x.std().item() - 1) < 1e-4
    raw = load_dataset(make_cfg("dataset=mnist", f"dataset.root={tmp_path}", "dataset.val_size=200",
                                "dataset.normalize=false"), CPU)
    mean, std = raw.train_x.mean(), raw.train_x.std()
    torch.testing.assert_close(data.val_x, (raw.val_x - mean) / std)  # the training rest's statistics


def test_the_60000_image_sets_hold_out_5000_and_the_others_a_tenth():
    from bnbench.job.data import val_count

    for name in ("mnist", "fashion_mnist", "kmnist"):
        assert val_count(make_cfg(f"dataset={name}").dataset.val_size, 60000) == 5000
    assert val_count(make_cfg("dataset=cifar10").dataset.val_size, 50000) == 5000
    assert len(load_dataset(make_cfg(), CPU).val_y) == round(0.1 * 1438)  # digits: 1438 training images


@pytest.mark.parametrize("val_size, message", [("-1", "must be 0"), ("600", "is not smaller than the training set"),
                                               ("12.5", "a count must be a whole number")])
def test_a_validation_size_that_cannot_be_is_one_clear_error(tmp_path, val_size, message):
    _indexed_mnist(tmp_path, n_train=600, n_test=100)
    with pytest.raises(DataError, match=message):
        load_dataset(make_cfg("dataset=mnist", f"dataset.root={tmp_path}", f"dataset.val_size={val_size}"), CPU)
