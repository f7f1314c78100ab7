"""The machine as a sweep's launchers share it, torch-free (the launching process plans with
it): usable cores, the launcher kinds and how many jobs each runs at once, each job's CPU
share, the visible GPUs (CUDA_VISIBLE_DEVICES, the NVIDIA driver's list) and the GPU slots a
sweep plans for, the device names bnbench accepts, and the driver's version."""

from __future__ import annotations

import os
import re
from pathlib import Path

from bnbench.errors import ConfigError

DEVICE_FORMAT = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def check_device_name(name: str) -> None:
    """A one-line error for a device bnbench cannot train on (``mps``, ``cuda0``, ``gpu``)."""
    if not DEVICE_FORMAT.match(str(name)):
        raise ConfigError(f"trainer.device={name} is not a device bnbench trains on: choose auto, cpu, cuda or "
                          "cuda:N (N counts the GPUs CUDA_VISIBLE_DEVICES shows, from 0)")


def visible_gpu_count() -> int:
    """How many GPUs this process may use, without importing torch (the launching process of a
    sweep plans with it): CUDA_VISIBLE_DEVICES when it is set (CUDA stops at its first invalid
    entry), else the NVIDIA driver's list of GPUs. 0 on a machine without an NVIDIA driver."""
    try:
        physical: int | None = len(os.listdir("/proc/driver/nvidia/gpus"))
    except OSError:
        physical = None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return physical or 0
    ids = []
    for part in visible.split(","):
        part = part.strip()
        if not part or part.startswith("-"):
            break
        ids.append(part)
    return len(ids) if physical is None else min(len(ids), physical)


def sweep_gpus(device: str, launcher) -> int:
    """The GPUs a sweep's local jobs share (0: the sweep runs on CPU), as the launching process
    sees them: ``cuda:N`` pins every job to one GPU; a submitit_local launcher shows its jobs
    ``gpus_per_node`` GPUs (0 hides them)."""
    if str(device) == "cpu":
        return 0
    gpus = visible_gpu_count()
    if launcher_kind(launcher) == "submitit_local":
        gpus = min(gpus, int((launcher or {}).get("gpus_per_node") or 0))
    if gpus and str(device).startswith("cuda:"):
        return 1
    return gpus


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


def _ray_remote(launcher) -> dict:
    return dict(((launcher or {}).get("ray") or {}).get("remote") or {})


def parallel_jobs(launcher) -> int:
    """How many of a sweep's jobs run at once on one machine's cores."""
    kind, cores = launcher_kind(launcher), usable_cores()
    if kind == "joblib":
        n_jobs = int(launcher.get("n_jobs") or 1)
        return max(1, cores + 1 + n_jobs if n_jobs < 0 else n_jobs)  # joblib: -1 = all, -2 = all but one
    if kind == "ray":
        return max(1, int(cores // max(1, _ray_remote(launcher).get("num_cpus") or 1)))
    if kind == "submitit_local":
        return max(1, cores // max(1, int(launcher.get("cpus_per_task") or 1)))
    return 1


def gpu_jobs(launcher, gpus: int, per_gpu: int) -> int:
    """How many of a sweep's jobs train at once on ``gpus`` GPUs with ``per_gpu`` jobs each:
    the launcher's workers, but never more than the GPU slots (local launchers) or than Ray's
    GPU shares allow. Slurm runs each job on a GPU of its own: whole cells (1)."""
    kind, slots = launcher_kind(launcher), gpus * max(1, per_gpu)
    if kind in ("joblib", "submitit_local"):
        return max(1, min(parallel_jobs(launcher), slots))
    if kind == "ray":
        share = float(_ray_remote(launcher).get("num_gpus") or 0)
        by_gpu = int(gpus // share) if share > 0 else parallel_jobs(launcher)
        return max(1, min(parallel_jobs(launcher), by_gpu))
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
        return max(1, int(_ray_remote(launcher).get("num_cpus") or 1))
    return None


def uses_gpu_slots(launcher) -> bool:
    """Slurm and Ray give each job its own GPU (CUDA_VISIBLE_DEVICES); local launchers don't."""
    return launcher_kind(launcher) in ("basic", "joblib", "submitit_local", "other")


def driver_version() -> str | None:
    """The NVIDIA driver's version (from the kernel module, without NVML), or None."""
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
    except OSError:
        return None
    found = re.search(r"Kernel Module\s+(?:for \S+\s+)?([0-9][0-9.]+)", text)
    return found.group(1) if found else None
