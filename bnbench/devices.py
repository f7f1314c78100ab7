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
from typing import IO, TYPE_CHECKING

from bnbench.errors import ConfigError

if TYPE_CHECKING:
    import torch

# torch is imported inside the functions that use it: the launching process of a sweep reads
# the launcher shares below without paying torch's import (seconds) before the first job starts.

_held_slot: IO | None = None  # the lock file of this process's GPU slot, released on exit


def resolve_device(name: str) -> torch.device:
    import torch

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


def launcher_kind(launcher) -> str:
    """basic | joblib | submitit_local | slurm | ray | other, from the launcher's _target_."""
    target = str((launcher or {}).get("_target_", ""))
    for suffix, kind in (("BasicLauncher", "basic"), ("JoblibLauncher", "joblib"), ("LocalLauncher", "submitit_local"),
                         ("SlurmLauncher", "slurm"), ("RayLauncher", "ray")):
        if target.endswith(suffix):
            return kind
    return "other"


def parallel_jobs(launcher) -> int:
    """How many of a sweep's jobs run at once on one machine's cores."""
    kind, cores = launcher_kind(launcher), usable_cores()
    if kind == "joblib":
        n_jobs = int(launcher.get("n_jobs") or 1)
        return max(1, cores + 1 + n_jobs if n_jobs < 0 else n_jobs)  # joblib: -1 = all, -2 = all but one
    if kind == "ray":
        return max(1, int(cores // max(1, (launcher.get("ray") or {}).get("remote", {}).get("num_cpus") or 1)))
    if kind == "submitit_local":
        return max(1, cores // max(1, int(launcher.get("cpus_per_task") or 1)))
    return 1


def cpu_share(launcher) -> int | None:
    """Threads one job may use: its launcher's share of the cores, or None (all usable cores,
    as for one job at a time, or a Slurm job whose cores Slurm pins)."""
    kind = launcher_kind(launcher)
    if kind == "joblib":
        return max(1, usable_cores() // parallel_jobs(launcher))
    if kind == "submitit_local":  # every job starts at once, unpinned
        return max(1, int(launcher.get("cpus_per_task") or 1))
    if kind == "ray":  # Ray's OMP_NUM_THREADS reaches a reused worker after torch has read it
        return max(1, int((launcher.get("ray") or {}).get("remote", {}).get("num_cpus") or 1))
    return None


def uses_gpu_slots(launcher) -> bool:
    """Slurm and Ray give each job its own GPU (CUDA_VISIBLE_DEVICES); local launchers don't."""
    return launcher_kind(launcher) in ("basic", "joblib", "submitit_local", "other")


def set_threads(requested: int | None, share: int | None = None) -> int:
    """Intra-op threads for this process: ``requested``, else the launcher's ``share`` of the
    cores, else all usable cores divided by BNBENCH_WORKERS (default 1; for bnbench processes
    started by hand side by side)."""
    import torch

    workers = max(1, int(os.environ.get("BNBENCH_WORKERS", "1")))
    threads = requested or share or max(1, usable_cores() // workers)
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
    import torch

    device = resolve_device(name)
    if device.type == "cuda" and device.index is None and slots_dir is not None:
        gpu = claim_gpu_slot(slots_dir, torch.cuda.device_count(), max(1, per_gpu))
        device = torch.device("cuda", gpu)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device
