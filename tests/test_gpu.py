"""The GPU box without a GPU: an emulated CUDA machine (tests/conftest.py: emulated_cuda) for
device selection in every launcher path, GPU slots across processes and machines, planning on
1 and 4 GPUs, and checkpoints that move between device types. The first real CUDA kernel
fails with torch's driver error: that is where emulation ends, and scripts/gpu_check.sh begins."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os

import pytest
import torch
from omegaconf import OmegaConf

from bnbench import records
from bnbench.job import devices
from bnbench.launch import resources
from bnbench.job import experiment
from bnbench.launch import planning
from bnbench.errors import ConfigError
from bnbench.job.checkpoint import Checkpoint
from conftest import CutOff, make_cfg, train_until, without_wall_time

QUICK = ("trainer.epochs=2", "+dataset.train_size=300", "dataset.val_size=0")
LAUNCHERS = {  # the _target_ of each launcher kind, as Hydra's plugins name them
    "basic": "hydra._internal.core_plugins.basic_launcher.BasicLauncher",
    "joblib": "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher",
    "submitit_local": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher",
    "slurm": "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher",
    "ray": "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher",
}


# ----------------------------------------------------------------------------- device selection

def test_auto_and_cuda_resolve_to_an_indexed_device(emulated_cuda):
    state = emulated_cuda(2)
    assert devices.resolve_device("auto") == torch.device("cuda", 0)
    assert devices.resolve_device("cuda") == torch.device("cuda", 0)
    assert devices.resolve_device("cuda:1") == torch.device("cuda", 1)
    assert devices.resolve_device("cpu") == torch.device("cpu")
    state["current"] = 1  # e.g. a worker that ran on GPU 1 before
    assert devices.resolve_device("cuda") == torch.device("cuda", 1)
    with pytest.raises(ValueError, match="specified index"):  # the emulation rejects what torch rejects
        torch.cuda.set_device(torch.device("cuda"))


def test_a_gpu_beyond_the_visible_ones_is_one_line_naming_how_many(emulated_cuda):
    emulated_cuda(1)
    with pytest.raises(ConfigError) as err:
        devices.resolve_device("cuda:1")
    assert str(err.value) == ("trainer.device=cuda:1 but 1 CUDA device is visible (cuda:0); CUDA_VISIBLE_DEVICES "
                              "numbers them from 0")
    emulated_cuda(4)
    with pytest.raises(ConfigError, match=r"4 CUDA devices are visible \(cuda:0 to cuda:3\)"):
        devices.resolve_device("cuda:7")


@pytest.mark.parametrize("name", ["mps", "gpu", "cuda0", "cuda:x", "CUDA"])
def test_a_device_bnbench_does_not_train_on_is_a_config_error(name):
    with pytest.raises(ConfigError, match="choose auto, cpu, cuda or cuda:N"):
        devices.resolve_device(name)
    with pytest.raises(ConfigError, match="choose auto, cpu, cuda or cuda:N"):
        from bnbench.config import validate

        validate(make_cfg(f"trainer.device={name}"))


def test_without_a_gpu_auto_is_the_cpu_and_cuda_an_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert devices.resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="no CUDA device is visible"):
        devices.resolve_device("cuda")


@pytest.mark.parametrize("kind", list(LAUNCHERS))
@pytest.mark.parametrize("name", ["auto", "cuda", "cuda:1"])
def test_every_launcher_path_gets_an_indexed_current_device(kind, name, emulated_cuda, gpu_slots):
    """Single runs and Slurm/Ray jobs take the current device (their GPUs come from
    CUDA_VISIBLE_DEVICES); local launchers' jobs claim a slot; cuda:N is always GPU N."""
    state = emulated_cuda(2)
    claim = resources.uses_gpu_slots({"_target_": LAUNCHERS[kind]})
    blocker = devices._open_lock(devices.slots_dir() / f"{devices.socket.gethostname()}.GPU-emulated-0.slot0.lock")
    try:  # another job holds GPU 0: a slot-claiming job gets GPU 1
        device = devices.job_device(name, claim, per_gpu=1)
    finally:
        blocker.close()
        devices.release_gpu_slot()
    expected = 1 if claim or name == "cuda:1" else 0
    assert device == torch.device("cuda", expected)
    assert state["set"] == [expected], "the job's device is made current, with its index"


# ----------------------------------------------------------------------------- GPU slots

def test_a_worker_takes_the_gpu_it_had_before(emulated_cuda, gpu_slots):
    ids = ["GPU-a", "GPU-b"]
    other = devices._open_lock(devices.slots_dir() / f"{devices.socket.gethostname()}.GPU-a.slot0.lock")
    try:
        assert devices.claim_gpu_slot(gpu_slots, ids, per_gpu=1) == 1
    finally:
        other.close()  # GPU a is free now, and comes first in slot order
    devices.release_gpu_slot()
    assert devices.claim_gpu_slot(gpu_slots, ids, per_gpu=1) == 1, "kept its GPU (its CUDA context and data)"
    devices.release_gpu_slot()


def _claim_and_report(folder, ids, queue, release=None, host=None):
    if host is not None:
        devices.socket.gethostname = lambda: host
    gpu = devices.claim_gpu_slot(folder, ids, per_gpu=1, poll_s=0.05)
    queue.put((os.getpid(), gpu))
    if release is not None:
        release.wait(60)


def test_slots_are_shared_by_every_process_of_a_machine_and_not_across_machines(tmp_path):
    """Two processes (two sweeps of one box) take different GPUs; a third waits for a free one;
    a process on another host sharing the folder (a shared filesystem) never waits for them."""
    import queue as queues

    ctx = multiprocessing.get_context("spawn")
    queue, release = ctx.Queue(), ctx.Event()
    ids = ["GPU-a", "GPU-b"]
    holders = [ctx.Process(target=_claim_and_report, args=(tmp_path, ids, queue, release)) for _ in range(2)]
    for p in holders:
        p.start()
    assert sorted(queue.get(timeout=60)[1] for _ in holders) == [0, 1]
    late = ctx.Process(target=_claim_and_report, args=(tmp_path, ids, queue))
    elsewhere = ctx.Process(target=_claim_and_report, args=(tmp_path, ids, queue, None, "another-node"))
    late.start()
    elsewhere.start()
    try:
        assert queue.get(timeout=60)[0] == elsewhere.pid, "another host's slots are its own"
        with pytest.raises(queues.Empty):  # this host's third process waits while both slots are held
            queue.get(timeout=2)
        release.set()
        assert queue.get(timeout=60)[0] == late.pid
    finally:
        release.set()
        for p in [*holders, late, elsewhere]:
            p.join(timeout=60)


# ----------------------------------------------------------------------------- planning

def _runs(cells: int, seeds: int) -> list[planning.Run]:
    return [planning.Run([f"norm=n{c}", f"seed={s}"], s, f"norm=n{c},seed={s}") for c in range(cells)
            for s in range(seeds)]


@pytest.mark.parametrize("gpus", [1, 4])
def test_a_cuda_sweep_is_planned_for_its_gpus_with_whole_cells(gpus, emulated_cuda, monkeypatch):
    emulated_cuda(gpus)
    monkeypatch.setattr(resources, "usable_cores", lambda: 16)
    joblib = {"_target_": LAUNCHERS["joblib"], "n_jobs": -1}
    workers, found = planning.workers(joblib, {"cuda": 1})
    assert (workers, found) == (gpus, gpus), "GPUs x jobs_per_gpu workers, not 16 cores"
    jobs = planning.plan(_runs(3, 5), workers, whole_cells=bool(found))
    assert [len(job.members) for job in jobs] == [5, 5, 5]
    assert planning.workers(joblib, {"cuda": 2}) == (2 * gpus, gpus)
    assert planning.workers(joblib, {"cuda:0": 3}) == (3, 1), "cuda:N: one GPU"
    assert planning.workers(joblib, {"cpu": 1}) == (16, 0), "a CPU sweep keeps its cores"
    ray = {"_target_": LAUNCHERS["ray"], "ray": {"remote": {"num_cpus": 1, "num_gpus": 0.5}}}
    assert planning.workers(ray, {"auto": 1}) == (2 * gpus, gpus)
    local = {"_target_": LAUNCHERS["submitit_local"], "cpus_per_task": 1, "gpus_per_node": 0}
    assert planning.workers(local, {"auto": 1}) == (16, 0), "gpus_per_node=0 hides the GPUs"


def test_a_cpu_sweep_still_splits_the_last_round():
    jobs = planning.plan(_runs(3, 5), 2)
    assert [len(job.members) for job in jobs] == [5, 5, 3, 2]


def test_the_visible_gpu_count_reads_cuda_visible_devices(monkeypatch):
    monkeypatch.setattr(os, "listdir", lambda path: ["0000:01:00.0", "0000:02:00.0"])
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert resources.visible_gpu_count() == 2
    for value, count in (("1", 1), ("", 0), ("-1", 0), ("0,1,5", 2), ("0,-1,1", 1), ("GPU-abc", 1)):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
        assert resources.visible_gpu_count() == count, value


def _sweeper_on(launcher: str, *overrides: str):
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path
    from hydra.core.utils import setup_globals
    from hydra.types import HydraContext, RunMode

    import bnbench.launch.app  # noqa: F401  (registers the schemas and the sweeper)
    from bnbench.config import config_dir
    from hydra_plugins.bnbench_sweeper import PlannedSweeper

    setup_globals()
    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(str(config_dir())))
    master = loader.load_configuration("config", overrides=[f"hydra/launcher={launcher}", *overrides],
                                       run_mode=RunMode.MULTIRUN)
    sweeper = PlannedSweeper()
    sweeper.setup(hydra_context=HydraContext(config_loader=loader, callbacks=None), task_function=lambda cfg: None,
                  config=master)
    return sweeper


class _Recorded:
    """Stands in for the launcher's results (the jobs themselves would need a real GPU)."""

    return_value = None


def test_a_sweep_on_one_emulated_gpu_plans_whole_cells_and_starts_one_worker(emulated_cuda, tmp_path, monkeypatch,
                                                                              caplog):
    emulated_cuda(1)
    monkeypatch.setattr(resources, "usable_cores", lambda: 16)
    sweeper = _sweeper_on("parallel", f"results_dir={tmp_path}", "sweep.name=gpu", "trainer.device=cuda")
    launched = []
    real = sweeper._launcher

    def recording(workers, gpus):
        launcher = real(workers, gpus)
        launched.append(launcher)
        monkeypatch.setattr(launcher, "launch", lambda batch, initial_job_idx: launched.append(batch) or
                            [_Recorded() for _ in batch])
        return launcher

    monkeypatch.setattr(sweeper, "_launcher", recording)
    with caplog.at_level(logging.INFO, logger="bnbench"):
        sweeper.sweep(["norm=none,bn_before,bn_after", "seed=0,1,2,3,4"])
    launcher, batch = launched
    assert launcher.joblib["n_jobs"] == 1, "no workers beyond the GPU's one slot"
    assert "hydra.launcher.n_jobs=-1 asks for 16 workers; this sweep trains on 1 GPU slot" in caplog.text
    assert len(batch) == 3
    plan = json.loads(next((tmp_path / "gpu" / planning.PLANS).glob("*.json")).read_text())
    assert [len(job["members"]) for job in plan["jobs"]] == [5, 5, 5]
    saved = OmegaConf.load(tmp_path / "gpu" / "multirun.yaml")
    assert saved.hydra.launcher.n_jobs == 1, "multirun.yaml says how many workers ran"


def test_the_ray_preset_asks_for_a_gpu_share_where_there_are_gpus(emulated_cuda):
    from bnbench.config import compose_config

    cfg = compose_config("hydra/launcher=ray_local", hydra=True)
    assert cfg.hydra.launcher.ray.remote.num_gpus == (0.0 if not torch.cuda.is_available() else 1.0)
    emulated_cuda(1)
    assert cfg.hydra.launcher.ray.remote.num_gpus == 1.0
    cfg = compose_config("hydra/launcher=ray_local", "trainer.jobs_per_gpu=4", hydra=True)
    assert cfg.hydra.launcher.ray.remote.num_gpus == 0.25
    cfg = compose_config("hydra/launcher=ray_local", "hydra.launcher.ray.remote.num_gpus=2", hydra=True)
    assert cfg.hydra.launcher.ray.remote.num_gpus == 2


# ----------------------------------------------------------------------------- runs on the emulated GPU

def _driver_error(error: str) -> bool:
    """torch's own message when a CUDA kernel is launched with no driver (where emulation ends)."""
    return any(text in error for text in ("NVIDIA driver", "Torch not compiled with CUDA", "CUDA driver",
                                          "no CUDA GPUs are available"))


def test_a_single_run_on_cuda_gets_cuda_0_and_fails_only_at_the_first_kernel(emulated_cuda, tmp_path):
    state = emulated_cuda(1)
    summary = experiment.run_experiment(make_cfg("trainer.device=cuda", *QUICK), tmp_path / "run")
    assert summary["status"] == "failed"
    assert "specified index" not in summary["error"]
    assert _driver_error(summary["error"]), summary["error"]
    assert state["set"] == [0]
    assert summary["device"] == "cuda:0 (Emulated GPU)"
    env = summary["environment"]
    assert env["device"] == "cuda:0" and env["uuid"] == "GPU-emulated-0" and env["gpu_slot"] is False
    assert {"driver", "cuda", "cudnn", "deterministic", "tf32_matmul", "tf32_cudnn"} <= set(env)


def test_a_sweep_job_claims_a_free_gpu_and_records_it(emulated_cuda, gpu_slots, tmp_path):
    state = emulated_cuda(2)
    other = devices._open_lock(devices.slots_dir() / f"{devices.socket.gethostname()}.GPU-emulated-0.slot0.lock")
    try:
        cfg = make_cfg("trainer.device=auto", *QUICK)
        planned = [{"seed": s, "folder": f"seed={s}", "overrides": [f"seed={s}"]} for s in (0, 1)]
        outcomes = experiment.run_stacked(cfg, tmp_path, planned, ["seed=0"], gpu_slots=True)
    finally:
        other.close()
    assert state["set"] == [1]
    for _, summary in outcomes:
        assert summary["device"] == "cuda:1 (Emulated GPU)" and summary["environment"]["gpu_slot"] is True
        assert _driver_error(summary["error"]), summary["error"]


# ----------------------------------------------------------------------------- checkpoints across devices

def _cut_off(cfg, path, run_id="r"):
    with pytest.raises(CutOff):
        train_until(cfg, Checkpoint(path, run_id=run_id, every=1), stop_after_evals=2)
    return torch.load(path, weights_only=True)


def test_a_checkpoint_records_its_device_type_and_torch_version(tmp_path):
    state = _cut_off(make_cfg(*QUICK, "trainer.epochs=3"), tmp_path / "c.pt")
    assert state["device_type"] == "cpu" and state["torch_version"] == str(torch.__version__)


def test_a_gpu_checkpoint_without_random_streams_resumes_on_cpu_exactly(tmp_path):
    """Weights, optimizer state (loaded to the CPU) and the data order (a CPU generator on every
    device) move between device types: the resumed run equals an uninterrupted one."""
    cfg = make_cfg(*QUICK, "trainer.epochs=3", "optimizer=adam", "optimizer.lr=0.01")
    path = tmp_path / "c.pt"
    state = _cut_off(cfg, path)
    state.update(device_type="cuda", cuda_rng=torch.zeros(16, dtype=torch.uint8))  # as a CUDA job writes it
    torch.save(state, path)
    _, resumed = train_until(cfg, Checkpoint(path, run_id="r", every=1))
    _, whole = train_until(cfg)
    assert resumed.resumed_from_step > 0
    assert without_wall_time(resumed.history) == without_wall_time(whole.history)


def test_a_gpu_checkpoint_with_dropout_streams_is_set_aside_on_cpu_and_the_run_restarts(tmp_path, caplog):
    cfg = make_cfg(*QUICK, "trainer.epochs=3", "trainer.dropout=0.2")
    path = tmp_path / "c.pt"
    state = _cut_off(cfg, path)
    state.update(device_type="cuda", dropout_rng=[torch.zeros(16, dtype=torch.uint8) for _ in state["dropout_rng"]])
    torch.save(state, path)
    with caplog.at_level(logging.WARNING, logger="bnbench"):
        _, again = train_until(cfg, Checkpoint(path, run_id="r", every=1))
    _, whole = train_until(cfg)
    assert "written on cuda and this run is on cpu" in caplog.text
    assert (tmp_path / "c.pt.unusable").is_file()
    assert again.resumed_from_step == 0
    assert without_wall_time(again.history) == without_wall_time(whole.history)


def test_a_data_order_state_of_another_generator_is_set_aside_not_a_crash(tmp_path, caplog):
    """Until 2026-12 the order generator lived on the run's device: a CUDA generator's 16-byte
    state cannot be set on a CPU generator ("RNG state is wrong size")."""
    cfg = make_cfg(*QUICK, "trainer.epochs=3")
    path = tmp_path / "c.pt"
    state = _cut_off(cfg, path)
    state["epoch_rng"] = torch.zeros(16, dtype=torch.uint8)
    torch.save(state, path)
    with caplog.at_level(logging.WARNING, logger="bnbench"):
        _, again = train_until(cfg, Checkpoint(path, run_id="r", every=1))
    assert "set aside" in caplog.text and again.resumed_from_step == 0 and again.status == "completed"


def test_adam_step_counters_stay_on_the_cpu_after_a_resume(tmp_path):
    """Loaded to the CPU, the optimizer state moves to the parameters' device in
    load_state_dict, except Adam's ``step`` (torch keeps it on the CPU unless capturable/fused).
    The "meta" device stands in for the GPU here: tensors elsewhere than the CPU."""
    from bnbench.job.models import build_model
    from bnbench.job.optim import make_optimizer

    cfg = make_cfg(*QUICK, "trainer.epochs=3", "optimizer=adam")
    _cut_off(cfg, tmp_path / "c.pt")
    state = Checkpoint(tmp_path / "c.pt", "r", 1).load()
    assert all(t.device.type == "cpu" for st in state["optimizer"]["state"].values() for t in st.values())
    model = build_model(cfg, (64,), 10).to("meta")
    optimizer = make_optimizer(model, cfg.optimizer)
    optimizer.load_state_dict(state["optimizer"])
    for st in optimizer.state.values():
        assert st["step"].device.type == "cpu"
        assert st["exp_avg"].device.type == "meta"


def test_checkpoints_wait_for_checkpoint_every_s(tmp_path):
    cfg = make_cfg(*QUICK, "trainer.epochs=3")
    for every_s, written in ((0.0, True), (3600.0, False)):
        path = tmp_path / f"every{every_s}.pt"
        with pytest.raises(CutOff):
            train_until(cfg, Checkpoint(path, run_id="r", every=1, every_s=every_s), stop_after_evals=2)
        assert path.is_file() == written


def test_checkpoint_every_s_is_a_runtime_setting():
    base = records.run_identity(make_cfg())
    for override in ("trainer.checkpoint_every_s=0", "trainer.deterministic=true", "trainer.tf32=true",
                     "trainer.device=cuda:0"):
        assert records.run_identity(make_cfg(override)) == base, override
    with pytest.raises(ConfigError, match="trainer.checkpoint_every_s"):
        from bnbench.config import validate

        validate(make_cfg("trainer.checkpoint_every_s=-1"))


# ----------------------------------------------------------------------------- determinism

def test_deterministic_settings_are_set_and_recorded(tmp_path, monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    try:
        devices.apply_numerics(deterministic=True, tf32=True)
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        env = devices.environment(torch.device("cpu"))
        assert env["deterministic"] and env["cudnn_deterministic"] and not env["cudnn_benchmark"]
        assert env["tf32_matmul"] and env["tf32_cudnn"]
    finally:
        devices.apply_numerics(deterministic=False, tf32=False)
    env = devices.environment(torch.device("cpu"))
    assert not env["deterministic"] and not env["tf32_cudnn"] and not env["tf32_matmul"]
    summary = experiment.run_experiment(make_cfg(*QUICK, "trainer.epochs=1"), tmp_path / "run")
    assert summary["environment"]["device"] == "cpu" and summary["environment"]["tf32_cudnn"] is False


@pytest.mark.parametrize("size,pooled", [(4, 3), (6, 3), (3, 3), (2, 2), (1, 1), (8, 2), (5, 3)])
def test_the_fixed_pool_computes_what_the_adaptive_pool_does(size, pooled):
    from torch import nn

    from bnbench.job.models import fixed_pool

    pool = fixed_pool(size, pooled)
    assert isinstance(pool, nn.AdaptiveAvgPool2d) == ((size, pooled) == (5, 3)), "only uneven windows stay adaptive"
    x = torch.randn(3, 4, size, size, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    mine, theirs = pool(x), nn.AdaptiveAvgPool2d(pooled)(x2)
    assert torch.equal(mine, theirs)
    grad = torch.randn_like(mine)
    mine.backward(grad)
    theirs.backward(grad)
    assert torch.equal(x.grad, x2.grad)


def test_a_deterministic_gpu_run_names_a_layer_without_a_deterministic_kernel():
    from torch import nn

    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.AdaptiveAvgPool2d(3))
    with pytest.raises(ConfigError, match=r"1 \(AdaptiveAvgPool2d\) has no deterministic CUDA kernel"):
        experiment._check_deterministic(model)
    cifar_like = experiment.build_model(make_cfg("model=alexnet"), (3, 32, 32), 10)
    experiment._check_deterministic(cifar_like)  # 4 -> 3: a fixed AvgPool2d


def test_an_unwritable_slot_folder_is_one_line(emulated_cuda, tmp_path, monkeypatch):
    emulated_cuda(1)
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("BNBENCH_GPU_SLOTS", str(blocked / "slots"))
    with pytest.raises(ConfigError, match="cannot lock a GPU slot in .*; set BNBENCH_GPU_SLOTS to a writable folder"):
        devices.job_device("cuda", claim_slot=True, per_gpu=1)
