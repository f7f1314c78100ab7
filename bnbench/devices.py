"""Where a run executes: device choice, CPU threads per worker, one GPU slot per job.

Parallel jobs come from Hydra's launchers (joblib on one machine, submitit or Ray on a
cluster); this module only makes each job use its share of the machine: on CPU, threads =
cores / parallel workers (oversubscribed threads cost far more than they gain on small
models); on GPUs, each job claims a free (GPU, slot) pair with a file lock, so N workers on N
GPUs run one job per GPU, and ``trainer.jobs_per_gpu`` > 1 packs several small jobs per GPU.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from typing import IO

import torch

from bnbench.config import ConfigError

_held_slot: IO | None = None  # the lock file of this process's GPU slot, released on exit


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={name} but no CUDA device is visible; use trainer.device=cpu or auto")
    return device


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # respects taskset and SLURM's cpusets
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def set_threads(requested: int | None, workers: int = 1) -> int:
    """Intra-op threads for this process: ``requested``, or the cores divided among the
    launcher's parallel workers (BNBENCH_WORKERS overrides the worker count)."""
    workers = max(1, int(os.environ.get("BNBENCH_WORKERS", workers)))
    threads = requested or max(1, usable_cores() // workers)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def claim_gpu_slot(slots_dir: Path, n_gpus: int, per_gpu: int, poll_s: float = 1.0) -> int:
    """Block until one of ``n_gpus x per_gpu`` slots is free; hold it until this process exits
    or claims again. Slot 0 of every GPU is tried before slot 1, so jobs spread out first."""
    global _held_slot
    release_gpu_slot()
    slots_dir.mkdir(parents=True, exist_ok=True)
    while True:
        for slot in range(per_gpu):
            for gpu in range(n_gpus):
                handle = open(slots_dir / f"gpu{gpu}.slot{slot}.lock", "w")
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    handle.close()
                    continue
                _held_slot = handle
                return gpu
        time.sleep(poll_s)  # more workers than slots: wait for a job to finish


def release_gpu_slot() -> None:
    global _held_slot
    if _held_slot is not None:
        _held_slot.close()  # closing the file drops the lock
        _held_slot = None


def job_device(name: str, slots_dir: Path | None, per_gpu: int) -> torch.device:
    """The device for one job; in a sweep on CUDA, a GPU claimed through ``slots_dir``."""
    device = resolve_device(name)
    if device.type == "cuda" and device.index is None and slots_dir is not None:
        gpu = claim_gpu_slot(slots_dir, torch.cuda.device_count(), max(1, per_gpu))
        device = torch.device("cuda", gpu)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device
