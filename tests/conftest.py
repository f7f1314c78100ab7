"""Shared test helpers: compose real configs, write small datasets in the real file formats,
and run the real CLI in a subprocess."""

from __future__ import annotations

import gzip
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bnbench.config import compose_config, register_configs

register_configs()
torch.set_num_threads(1)  # 2-core CI machine: one thread per test process is fastest


def make_cfg(*overrides: str):
    """Compose the real config (conf/) with overrides, as `bnbench run` would."""
    return compose_config(*overrides)


class CutOff(Exception):
    """Raised from inside training, as if the process died right after an evaluation."""


def train_until(cfg, checkpoint=None, stop_after_evals=None):
    """Build and train the model ``cfg`` describes on CPU; with ``stop_after_evals``, raise
    CutOff after that many evaluations. Returns (model, TrainResult)."""
    from bnbench.job.data import load_dataset
    from bnbench.job.models import build_model
    from bnbench.job.engine import train

    torch.manual_seed(cfg.seed)
    cpu = torch.device("cpu")
    data = load_dataset(cfg, cpu)
    model = build_model(cfg, data.in_shape, data.num_outputs)
    evals = []

    def on_eval(row):
        evals.append(row)
        if stop_after_evals is not None and len(evals) == stop_after_evals:
            raise CutOff

    return model, train(model, data, cfg, cpu, on_eval=on_eval, checkpoint=checkpoint)


def without_wall_time(rows):
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]


def run_cli(*args: str, cwd: Path, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "BNBENCH_RESULTS": str(cwd / "results"), "COLUMNS": "200", **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [sys.executable, "-m", "bnbench.cli", *args],
        cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
    )


def write_idx_images(path: Path, images: np.ndarray, compress: bool = False) -> None:
    """IDX3 (the MNIST file format): magic 0x00000803, big-endian dims, then uint8 pixels."""
    header = np.array([0x0803, *images.shape], dtype=">i4").tobytes()
    payload = header + images.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        payload = gzip.compress(payload)
    path.write_bytes(payload)


def write_idx_labels(path: Path, labels: np.ndarray, compress: bool = False) -> None:
    header = np.array([0x0801, len(labels)], dtype=">i4").tobytes()
    payload = header + labels.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        payload = gzip.compress(payload)
    path.write_bytes(payload)


def synthetic_images(n: int, size: int, channels: int, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable images: each class is a bright square at its own position, plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, n)
    images = rng.integers(0, 60, (n, channels, size, size)).astype(np.float64)
    cell = max(1, size // 4)
    for i, label in enumerate(labels):
        r, c = divmod(int(label) % 16, 4)
        images[i, :, r * cell:(r + 1) * cell, c * cell:(c + 1) * cell] += 180
    return np.clip(images, 0, 255).astype(np.uint8), labels


def write_mnist_family(root: Path, class_name: str, n_train: int = 300, n_test: int = 100, compress: bool = False) -> Path:
    """Write the four IDX files where torchvision's MNIST-family class looks for them."""
    raw = root / class_name / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels = synthetic_images(n, 28, 1, 10, seed)
        write_idx_images(raw / f"{prefix}-images-idx3-ubyte", images[:, 0], compress)
        write_idx_labels(raw / f"{prefix}-labels-idx1-ubyte", labels, compress)
    return raw


def write_cifar(root: Path, num_classes: int = 10, n_per_batch: int = 40) -> dict[str, str]:
    """Write CIFAR-10/100 python-pickle batches; returns {file: md5} for the class's checksum table."""
    import hashlib

    folder = root / ("cifar-10-batches-py" if num_classes == 10 else "cifar-100-python")
    folder.mkdir(parents=True, exist_ok=True)
    label_key = "labels" if num_classes == 10 else "fine_labels"
    names = ([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]) if num_classes == 10 else ["train", "test"]
    for seed, name in enumerate(names):
        images, labels = synthetic_images(n_per_batch, 32, 3, num_classes, seed)
        batch = {"data": images.reshape(n_per_batch, -1), label_key: labels.tolist()}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    meta_name = "batches.meta" if num_classes == 10 else "meta"
    meta_key = "label_names" if num_classes == 10 else "fine_label_names"
    with open(folder / meta_name, "wb") as f:
        pickle.dump({meta_key: [f"class{i}" for i in range(num_classes)]}, f)
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in folder.iterdir()}


@pytest.fixture
def cifar_checksums(monkeypatch):
    """Point torchvision's CIFAR checksum tables at files the test writes (the format and the
    loading code stay the real ones; only the expected md5 values change)."""
    import torchvision.datasets as tvd

    def apply(cls, md5s: dict[str, str]) -> None:
        monkeypatch.setattr(cls, "train_list", [[n, md5s[n]] for n, _ in cls.train_list])
        monkeypatch.setattr(cls, "test_list", [[n, md5s[n]] for n, _ in cls.test_list])
        monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5s[cls.meta["filename"]]})

    return apply, tvd


def as_float64(data):
    """A float64 copy of a loaded dataset's float tensors (the loaded one is shared, and frozen)."""
    import dataclasses

    floats = {name: getattr(data, name).double() for name in ("train_x", "test_x", "val_x")
              if getattr(data, name) is not None}
    if data.train_y.is_floating_point():
        floats.update({name: getattr(data, name).double() for name in ("train_y", "test_y", "val_y")
                       if getattr(data, name) is not None})
    return dataclasses.replace(data, **floats)


@pytest.fixture
def emulated_cuda(monkeypatch):
    """An emulated CUDA machine: ``apply(n)`` makes torch.cuda report ``n`` GPUs (available,
    count, current device, names, UUIDs) and bnbench's torch-free count agree. ``set_device``
    rejects a device without an index as the real one does ("Expected a torch.device with a
    specified index"). Nothing else is emulated: the first real CUDA kernel (a tensor moved to
    the GPU) fails with torch's own driver error, which is where emulation ends. Returns a dict
    whose "current" is the device index last set."""
    from types import SimpleNamespace

    from bnbench.launch import resources

    state = {"current": 0, "set": []}

    def apply(n: int = 1) -> dict:
        def set_device(device):
            if isinstance(device, torch.device):
                if device.index is None:
                    raise ValueError(f"Expected a torch.device with a specified index or an integer, but got:{device}")
                device = device.index
            if not 0 <= int(device) < n:
                raise RuntimeError("CUDA error: invalid device ordinal")
            state["current"] = int(device)
            state["set"].append(int(device))

        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: state["current"])
        monkeypatch.setattr(torch.cuda, "set_device", set_device)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Emulated GPU")
        monkeypatch.setattr(torch.cuda, "get_device_properties",
                            lambda device: SimpleNamespace(name="Emulated GPU", major=9, minor=0,
                                                           uuid=f"emulated-{int(getattr(device, 'index', device) or 0)}",
                                                           total_memory=80 * 2**30, multi_processor_count=132))
        monkeypatch.setattr(resources, "visible_gpu_count", lambda: n)
        return state

    return apply


@pytest.fixture
def gpu_slots(tmp_path, monkeypatch):
    """This machine's GPU slot folder, private to the test (devices.slots_dir)."""
    from bnbench.job import devices

    folder = tmp_path / "gpu-slots"
    monkeypatch.setenv("BNBENCH_GPU_SLOTS", str(folder))
    yield folder
    devices.release_gpu_slot()
    monkeypatch.setattr(devices, "_last_gpu", None)
