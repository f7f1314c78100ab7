"""Devices for parallel jobs: thread shares and GPU slot claims (locks tested without a GPU)."""

from __future__ import annotations

import fcntl
import threading
import time

import torch

from bnbench.job import devices
from bnbench.launch import resources


def _hold(path):
    handle = open(path, "w")
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return handle


def test_threads_are_the_cores_shared_among_workers(monkeypatch):
    monkeypatch.delenv("BNBENCH_WORKERS", raising=False)
    monkeypatch.setattr(resources, "usable_cores", lambda: 8)
    before = torch.get_num_threads()
    try:
        joblib = {"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"}
        assert devices.set_threads(None, resources.cpu_share({**joblib, "n_jobs": 4})) == 2
        assert devices.set_threads(None, resources.cpu_share({**joblib, "n_jobs": 16})) == 1
        assert devices.set_threads(None, resources.cpu_share({**joblib, "n_jobs": -1})) == 1
        assert devices.set_threads(None, resources.cpu_share({**joblib, "n_jobs": -2})) == 1  # 7 workers
        assert devices.set_threads(3, 2) == 3  # an explicit trainer.threads wins
        assert devices.set_threads(None, None) == 8  # one job at a time: every core
        monkeypatch.setenv("BNBENCH_WORKERS", "8")
        assert devices.set_threads(None, None) == 1
    finally:
        torch.set_num_threads(before)


def test_launcher_shares(monkeypatch):
    monkeypatch.setattr(resources, "usable_cores", lambda: 8)
    basic = {"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}
    joblib = {"_target_": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", "n_jobs": -2}
    local = {"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher", "cpus_per_task": 2}
    slurm = {"_target_": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher", "cpus_per_task": 4}
    ray = {"_target_": "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher", "ray": {"remote": {"num_cpus": 2}}}
    assert [resources.parallel_jobs(x) for x in (basic, joblib, local, slurm, ray, None)] == [1, 7, 4, 1, 4, 1]
    assert [resources.cpu_share(x) for x in (basic, joblib, local, slurm, ray)] == [None, 1, 2, None, 2]
    assert [resources.uses_gpu_slots(x) for x in (basic, joblib, local, slurm, ray)] == [True, True, True, False, False]


def _slot(folder, gpu_id, slot):
    return folder / f"{devices.socket.gethostname()}.{gpu_id}.slot{slot}.lock"


def test_gpu_slots_spread_jobs_one_per_gpu_then_pack(tmp_path):
    ids = ["GPU-a", "GPU-b"]
    held = [_hold(_slot(tmp_path, "GPU-a", 0))]  # another worker runs on GPU a
    try:
        assert devices.claim_gpu_slot(tmp_path, ids, per_gpu=2) == 1
        devices._held_slot, mine = None, devices._held_slot  # keep holding it as "another worker"
        held.append(mine)
        devices._last_gpu = None  # a fresh worker
        assert devices.claim_gpu_slot(tmp_path, ids, per_gpu=2) == 0  # second slot of GPU a
        devices.release_gpu_slot()
    finally:
        devices._last_gpu = None
        for handle in held:
            handle.close()


def test_gpu_slot_waits_until_one_is_free(tmp_path):
    blocker = _hold(_slot(tmp_path, "GPU-a", 0))
    threading.Timer(0.3, blocker.close).start()
    start = time.monotonic()
    assert devices.claim_gpu_slot(tmp_path, ["GPU-a"], per_gpu=1, poll_s=0.05) == 0
    assert time.monotonic() - start >= 0.25
    devices.release_gpu_slot()
    devices._last_gpu = None
