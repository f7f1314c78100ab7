"""Where a job runs (torch side): its device, CPU threads, GPU slot, numerics settings, and the
environment its record names. The torch-free half (cores, launcher shares, the GPU count) is
bnbench.launch.resources.

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
import socket
import tempfile
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from bnbench.errors import ConfigError
from bnbench.launch import resources
from bnbench.launch.resources import check_device_name, driver_version

if TYPE_CHECKING:
    import torch

# torch is imported inside the functions that use it: the launching process of a sweep reads
# the launcher shares and the GPU count below without paying torch's import (seconds).

log = logging.getLogger("bnbench")
SLOTS_ENV = "BNBENCH_GPU_SLOTS"
# cuBLAS's reproducible workspace setting; it must be in the environment before cuBLAS starts.
CUBLAS_WORKSPACE = ":4096:8"

# The GPU slot this process holds (its lock file) and the GPU it was on. A worker that runs job
# after job (loky, the basic launcher) takes the same GPU again when it is free (claim_gpu_slot).
_held_slot: IO | None = None
_last_gpu: int | None = None


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


def set_threads(requested: int | None, share: int | None = None) -> int:
    """Intra-op threads for this process: ``requested``, else the launcher's ``share`` of the
    cores, else all usable cores divided by BNBENCH_WORKERS (default 1; for bnbench processes
    started by hand side by side)."""
    import torch

    workers = max(1, int(os.environ.get("BNBENCH_WORKERS", "1")))
    cores = resources.usable_cores()
    if requested and requested > cores:
        log.warning("trainer.threads=%d is more than the %d core(s) this job may use: oversubscribed threads make "
                    "training slower, not faster (leave it null for cores / parallel workers)", requested, cores)
    threads = requested or share or max(1, cores // workers)
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
        try:
            chosen = claim_gpu_slot(slots_dir(), [gpu_uuid(i) for i in candidates], max(1, per_gpu))
        except OSError as err:
            where = err.filename or os.environ.get(SLOTS_ENV) or tempfile.gettempdir()
            raise ConfigError(f"cannot lock a GPU slot in {where} ({err.strerror or err}); set {SLOTS_ENV} to a "
                              "writable folder on this machine") from None
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
