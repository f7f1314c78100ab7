"""Datasets as tensors on the training device.

torchvision's own dataset classes read the files (and download them where the network
allows); each dataset is then held as one normalized float tensor on the device and batched
there by index, with no DataLoader and no per-sample transforms (the airbench approach).
"""

from __future__ import annotations

import gzip
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch


class DataError(RuntimeError):
    """Data that cannot be found or read; the message says where we looked and what to do."""


@dataclass
class TensorDataset:
    name: str
    train_x: torch.Tensor  # float32, (N, C, H, W), normalized
    train_y: torch.Tensor  # int64, (N,)
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int

    @property
    def in_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])


# Raw arrays as loaded from disk: uint8/float images (N, C, H, W), int labels, value scale.
RawSplit = tuple[np.ndarray, np.ndarray]


def _load_digits(root: Path, download: bool) -> tuple[RawSplit, RawSplit, int]:
    """scikit-learn's 8x8 handwritten digits (1797 images, shipped with the package)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    y = digits.target.astype(np.int64)
    # A fixed split (independent of the run seed) so every run is scored on the same 20%.
    order = np.random.default_rng(0).permutation(len(y))
    n_test = len(y) // 5
    test, train = order[:n_test], order[n_test:]
    return (x[train], y[train]), (x[test], y[test]), 10


def _expected_files(cls) -> list[str]:
    if hasattr(cls, "resources"):  # MNIST family: (url-or-name, md5) pairs
        return [Path(str(r[0])).name.removesuffix(".gz") for r in cls.resources]
    return [cls.base_folder + "/" + name for name, _ in (*cls.train_list, *cls.test_list)]


def _data_folder(cls, root: Path) -> Path:
    if hasattr(cls, "resources"):
        return root / cls.__name__ / "raw"
    return root / cls.base_folder


def _extract_local_gz(folder: Path) -> None:
    """Unpack IDX .gz files placed by hand (e.g. Debian's dataset-fashion-mnist) next to where
    torchvision expects the raw files, so no network and no checksum table is needed."""
    if not folder.is_dir():
        return
    for gz in folder.glob("*-ubyte.gz"):
        target = gz.with_suffix("")
        if not target.exists():
            tmp = target.with_name(target.name + ".tmp")
            with gzip.open(gz, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
            tmp.replace(target)


def _torchvision_loader(class_name: str, hint: str = "") -> Callable[[Path, bool], tuple[RawSplit, RawSplit, int]]:
    def load(root: Path, download: bool) -> tuple[RawSplit, RawSplit, int]:
        import torchvision.datasets as tvd

        cls = getattr(tvd, class_name)
        folder = _data_folder(cls, root)
        try:
            _extract_local_gz(folder)
        except (OSError, EOFError, gzip.BadGzipFile) as err:
            raise DataError(f"could not unpack a .gz file in {folder}: {err}; replace or delete it") from err

        def open_split(train: bool):
            try:
                return cls(str(root), train=train, download=False)
            except RuntimeError as not_found:
                if "not found" not in str(not_found).lower():
                    raise
            if download:
                try:
                    return cls(str(root), train=train, download=True)
                except Exception as err:  # network errors come in many types
                    reason = f"download failed ({type(err).__name__}: {str(err).splitlines()[0][:160]})"
            else:
                reason = "dataset.download=false"
            raise DataError(
                f"{class_name} files not found (or failing their checksum) in {folder}: expected "
                f"{', '.join(_expected_files(cls))}; {reason}. Put the files there (the IDX .gz "
                f"files are fine), or point dataset.root / BNBENCH_DATA at a folder that has them{hint}."
            )

        try:
            train_set, test_set = open_split(True), open_split(False)
        except DataError:
            raise
        except Exception as err:
            raise DataError(
                f"could not read {class_name} files in {folder} ({type(err).__name__}: {err}); "
                "they may be truncated or corrupt: delete them and provide fresh copies"
            ) from err
        return _as_arrays(train_set), _as_arrays(test_set), len(train_set.classes)

    return load


def _as_arrays(ds) -> RawSplit:
    data = ds.data.numpy() if isinstance(ds.data, torch.Tensor) else np.asarray(ds.data)
    if data.ndim == 3:  # MNIST family: (N, H, W)
        data = data[:, None, :, :]
    else:  # CIFAR: (N, H, W, C)
        data = data.transpose(0, 3, 1, 2)
    targets = ds.targets.numpy() if isinstance(ds.targets, torch.Tensor) else np.asarray(ds.targets)
    return data, targets.astype(np.int64)


_DEBIAN_FASHION = " (Debian: apt-get install dataset-fashion-mnist, then copy /usr/share/datasets/fashion-mnist/*.gz there)"

# name -> loader; a new dataset is one entry here plus conf/dataset/NAME.yaml
DATASETS: dict[str, Callable[[Path, bool], tuple[RawSplit, RawSplit, int]]] = {
    "digits": _load_digits,
    "mnist": _torchvision_loader("MNIST"),
    "fashion_mnist": _torchvision_loader("FashionMNIST", _DEBIAN_FASHION),
    "kmnist": _torchvision_loader("KMNIST"),
    "cifar10": _torchvision_loader("CIFAR10"),
    "cifar100": _torchvision_loader("CIFAR100"),
}


def _subset(split: RawSplit, size: int | None) -> RawSplit:
    x, y = split
    if size is None or size >= len(y):
        return x, y
    order = np.random.default_rng(0).permutation(len(y))[:size]  # fixed: same subset for every run
    return x[order], y[order]


def _to_float(x: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(x))
    return t.float().div_(255.0) if t.dtype == torch.uint8 else t.float()


def load_dataset(cfg, device: torch.device) -> TensorDataset:
    """Load ``cfg.dataset`` into normalized tensors on ``device``."""
    ds_cfg = cfg.dataset
    if ds_cfg.name not in DATASETS:
        raise DataError(f"unknown dataset {ds_cfg.name!r}; choose one of: {', '.join(sorted(DATASETS))}")
    root = Path(ds_cfg.root).expanduser()
    train, test, num_classes = DATASETS[ds_cfg.name](root, ds_cfg.download)
    train, test = _subset(train, ds_cfg.train_size), _subset(test, ds_cfg.test_size)
    train_x, test_x = _to_float(train[0]), _to_float(test[0])
    if ds_cfg.normalize:
        mean = train_x.mean(dim=(0, 2, 3), keepdim=True)
        std = train_x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
        train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    return TensorDataset(
        name=ds_cfg.name,
        train_x=train_x.to(device),
        train_y=torch.from_numpy(train[1]).to(device),
        test_x=test_x.to(device),
        test_y=torch.from_numpy(test[1]).to(device),
        num_classes=num_classes,
    )


def eval_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for start in range(0, len(y), batch_size):
        yield x[start : start + batch_size], y[start : start + batch_size]
