"""Where a run executes: device choice, CPU threads per worker, GPU slots, numerics settings.

Parallel jobs come from Hydra's launchers (joblib on one machine, submitit or Ray on a
cluster); this module only makes each job use its share of the machine: on CPU, threads =
cores / parallel workers (oversubscribed threads cost far more than they gain on small
models); on GPUs under a local launcher, each job claims a free (GPU, slot) pair with a file
lock, so N workers on N GPUs run one job per GPU, and ``trainer.jobs_per_gpu`` > 1 packs
several small jobs per GPU. Slurm and Ray give each job its own GPUs (CUDA_VISIBLE_DEVICES),
so their jobs take the current device.

The slot locks are per machine, not per sweep: they live in a node-local folder
(``BNBENCH_GPU_SLOTS``, default ``$TMPDIR/bnbench-gpu-slots``) and are named by host and GPU
UUID, so two sweeps on one box share its GPUs, two users' CUDA_VISIBLE_DEVICES orders name the
same physical GPU alike, and nodes that share a sweep folder never block each other.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import socket
import tempfile
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from bnbench.errors import ConfigError

if TYPE_CHECKING:
    import torch

# torch is imported inside the functions that use it: the launching process of a sweep reads
# the launcher shares and the GPU count below without paying torch's import (seconds).

log = logging.getLogger("bnbench")
SLOTS_ENV = "BNBENCH_GPU_SLOTS"
DEVICE_FORMAT = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
# cuBLAS's reproducible workspace setting; it must be in the environment before cuBLAS starts.
CUBLAS_WORKSPACE = ":4096:8"

# The GPU slot this process holds (its lock file) and the GPU it was on. A worker that runs job
# after job (loky, the basic launcher) takes the same GPU again when it is free (claim_gpu_slot).
_held_slot: IO | None = None
_last_gpu: int | None = None


def check_device_name(name: str) -> None:
    """A one-line error for a device bnbench cannot train on (``mps``, ``cuda0``, ``gpu``)."""
    if not DEVICE_FORMAT.match(str(name)):
        raise ConfigError(f"trainer.device={name} is not a device bnbench trains on: choose auto, cpu, cuda or "
                          "cuda:N (N counts the GPUs CUDA_VISIBLE_DEVICES shows, from 0)")


def resolve_device(name: str) -> torch.device:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` as a device with an index when it is a GPU:
    ``auto`` and ``cuda`` take the current CUDA device (torch.cuda.set_device rejects a
    device without an index), ``cuda:N`` must be one of the visible GPUs."""
    import torch

    check_device_name(name)
    if name == "auto" and not torch.cuda.is_available():
        return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={name} but no CUDA device is visible; use trainer.device=cpu or auto")
    device = torch.device(name if name != "auto" else "cuda")
    count = torch.cuda.device_count()
    if device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    if device.index >= count:
        raise ConfigError(f"trainer.device={name} but {count} CUDA device{'s are' if count != 1 else ' is'} visible "
                          f"(cuda:0{f' to cuda:{count - 1}' if count > 1 else ''}); CUDA_VISIBLE_DEVICES numbers "
                          "them from 0")
    return device


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


# ----------------------------------------------------------------------------- GPU slots

def slots_dir() -> Path:
    """The node-local folder of this machine's GPU slot locks, shared by every bnbench process
    (and user) on it: sticky and world-writable, like /tmp."""
    folder = Path(os.environ.get(SLOTS_ENV) or Path(tempfile.gettempdir()) / "bnbench-gpu-slots")
    if not folder.is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        try:
            os.chmod(folder, 0o1777)
        except OSError:  # made by another user in the meantime
            pass
    return folder


def gpu_uuid(index: int) -> str:
    """The physical identity of visible GPU ``index`` (its UUID; the same whatever
    CUDA_VISIBLE_DEVICES's order), read without creating a CUDA context."""
    import torch

    try:
        uuid = str(torch.cuda.get_device_properties(index).uuid)
    except (AttributeError, RuntimeError, AssertionError):  # torch < 2.1 has no uuid
        uuid = ""
    if uuid:
        return uuid if uuid.startswith("GPU-") else f"GPU-{uuid}"
    visible = [p.strip() for p in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if p.strip()]
    return f"GPU-index{visible[index] if index < len(visible) else index}"


def _open_lock(path: Path) -> IO | None:
    """``path`` opened and exclusively locked, or None if another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    handle = os.fdopen(fd, "r+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    try:
        os.chmod(path, 0o666)  # other users' sweeps on this machine lock it too
    except OSError:
        pass
    return handle


def claim_gpu_slot(folder: Path, gpu_ids: list[str], per_gpu: int, poll_s: float = 1.0) -> int:
    """Block until one of ``len(gpu_ids) x per_gpu`` slots is free and return its GPU's
    position in ``gpu_ids``;
    the lock is held until :func:`release_gpu_slot` or this process exits. The GPU this process
    claimed before is tried first (a worker keeps its CUDA context and cached data on one GPU);
    then slot 0 of every GPU before slot 1, so jobs spread out before they pack."""
    global _held_slot, _last_gpu
    release_gpu_slot()
    folder.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname()
    order = [(gpu, slot) for slot in range(per_gpu) for gpu in range(len(gpu_ids))]
    if _last_gpu is not None and _last_gpu < len(gpu_ids):
        order.sort(key=lambda pair: pair[0] != _last_gpu)  # stable: the same slot order otherwise
    waited = False
    while True:
        for gpu, slot in order:
            handle = _open_lock(folder / f"{host}.{gpu_ids[gpu]}.slot{slot}.lock")
            if handle is not None:
                _held_slot, _last_gpu = handle, gpu
                if waited:
                    log.info("GPU slot free after waiting: cuda:%d", gpu)
                return gpu
        if not waited:
            log.info("every GPU slot of this machine is taken (%d GPU%s x %d): waiting for one", len(gpu_ids),
                     "s" if len(gpu_ids) != 1 else "", per_gpu)
            waited = True
        time.sleep(poll_s)  # more workers than slots, or another sweep on this machine


def release_gpu_slot() -> None:
    global _held_slot
    if _held_slot is not None:
        _held_slot.close()  # closing the file drops the lock
        _held_slot = None


def job_device(name: str, claim_slot: bool, per_gpu: int) -> torch.device:
    """The device for one job, always with an index when it is a GPU; a sweep job under a local
    launcher (``claim_slot``) with ``auto``/``cuda`` claims a GPU slot of this machine.
    The device is made current (torch.cuda.set_device), so library calls without an explicit
    device use it too."""
    import torch

    device = resolve_device(name)
    if device.type == "cuda" and claim_slot:
        # cuda:N pins the job to GPU N: its slots still keep jobs_per_gpu jobs on it at once
        candidates = list(range(torch.cuda.device_count())) if name in ("auto", "cuda") else [device.index]
        chosen = claim_gpu_slot(slots_dir(), [gpu_uuid(i) for i in candidates], max(1, per_gpu))
        device = torch.device("cuda", candidates[chosen])
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


# ----------------------------------------------------------------------------- numerics settings

def apply_numerics(deterministic: bool, tf32: bool) -> None:
    """Set torch's process-wide numerics flags for one job, before it touches CUDA.

    ``deterministic``: cuBLAS's fixed workspace (CUBLAS_WORKSPACE_CONFIG, read when cuBLAS
    starts), torch.use_deterministic_algorithms (an op without a deterministic kernel raises,
    naming itself), cuDNN's deterministic kernels. cuDNN's benchmark mode (timing kernels and
    keeping the fastest, which may differ from run to run) stays off either way. ``tf32``:
    TensorFloat-32 for matmuls and convolutions on Ampere and later GPUs (about 10 mantissa
    bits); off, they compute in full float32 as on CPU. torch's own default turns it on for
    cuDNN convolutions only: bnbench makes it an explicit choice."""
    import torch

    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(bool(deterministic))
    torch.backends.cudnn.deterministic = bool(deterministic)
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.matmul.allow_tf32 = bool(tf32)
    torch.backends.cudnn.allow_tf32 = bool(tf32)


def driver_version() -> str | None:
    """The NVIDIA driver's version (from the kernel module, without NVML), or None."""
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
    except OSError:
        return None
    found = re.search(r"Kernel Module\s+(?:for \S+\s+)?([0-9][0-9.]+)", text)
    return found.group(1) if found else None


def environment(device: torch.device, slot: bool = False) -> dict[str, Any]:
    """What a run's numbers depend on besides its config, for its summary.json: the device and
    its name, the GPU's UUID, driver, CUDA and cuDNN versions, and the numerics flags."""
    import torch

    env: dict[str, Any] = {"device": str(device)}
    if device.type == "cuda":
        env["name"] = torch.cuda.get_device_name(device)
        env["uuid"] = gpu_uuid(device.index)
        env["gpu_slot"] = slot  # claimed through this machine's GPU slots (a local sweep)
        env["driver"] = driver_version()
        env["cuda"] = torch.version.cuda
        try:
            env["cudnn"] = torch.backends.cudnn.version()
        except (RuntimeError, OSError):
            env["cudnn"] = None
        env["cuda_visible_devices"] = os.environ.get("CUDA_VISIBLE_DEVICES")
    env.update({
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
        "tf32_cudnn": bool(torch.backends.cudnn.allow_tf32),
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    })
    return env
