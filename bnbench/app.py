"""The Hydra application: composes the config, then runs one job.

``bnbench run`` hands its arguments to :func:`main` unchanged, so every Hydra feature
(overrides, ``-m`` multirun, ``hydra.sweeper.params`` grids, launcher plugins, ``--cfg``)
works as Hydra documents it.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from bnbench import interrupts, records
from bnbench.config import config_dir, register_configs
from bnbench.devices import cpu_share, parallel_jobs, uses_gpu_slots

log = logging.getLogger("bnbench")
register_configs()

FAIL_FAST_MARKER = ".fail-fast-stop"
LIVE_VIEW = "BNBENCH_LIVE_VIEW"  # set while the sweep command draws its live view on the terminal


def _quiet_console_in_worker() -> None:
    """In a parallel worker of a sweep whose command draws the live view: no log lines on the
    shared terminal (each one would leave a stale copy of the view); run.log keeps them all."""
    if not os.environ.get(LIVE_VIEW) or os.environ.get(interrupts.LAUNCHER_PID) == str(os.getpid()):
        return
    for handler in logging.getLogger().handlers:
        if type(handler) is logging.StreamHandler:  # the console; FileHandler (run.log) is a subclass
            handler.setLevel(logging.CRITICAL + 1)


class FailFast(RuntimeError):
    """A run failed and the sweep was started with --fail-fast."""


# Summary of the last single (non-multirun) run in this process, for the CLI.
last_run: dict[str, Any] | None = None


def seed_stack(cfg: DictConfig, sweep_dir: Path, overrides: list[str], launcher: Any) -> list[int]:
    """The seeds this sweep job trains as one stacked model, its own among them (bnbench/
    stacking.py), from the grid in the multirun.yaml Hydra's sweeper saves before launching;
    [] when the sweep lists no other seed."""
    from bnbench.stacking import seed_stacks

    grid = records.value_order(sweep_dir)
    try:
        seeds = [int(float(v)) for v in grid.get("seed", [])]
    except ValueError:
        return []
    size = cfg.trainer.stack_size
    if int(cfg.seed) not in seeds or (size is not None and size < 1):  # the run's validate() reports a bad size
        return []
    # This job's cell in launch order: the basic sweeper launches the product of the lists in
    # the order given, the first key varying slowest.
    mine = records.parse_overrides(overrides)
    cell = 0
    for key, values in grid.items():
        if key != "seed":
            position = values.index(mine[key]) if mine.get(key) in values else 0
            cell = cell * len(values) + position
    cells = math.prod(len(values) for key, values in grid.items() if key != "seed")
    stacks = seed_stacks(seeds, cell, cells, parallel_jobs(launcher), size)
    return next(stack for stack in stacks if int(cfg.seed) in stack)


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
def main(cfg: DictConfig) -> dict[str, Any]:
    # Imported here, in the job: the launching process of a sweep never needs torch.
    from bnbench.experiment import run_experiment, run_stacked

    global last_run
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    # --fail-fast: launchers start a whole batch of jobs at once, so the first failure leaves a
    # marker in the sweep folder and the jobs after it return without running.
    stop_marker = Path(hydra_cfg.sweep.dir) / FAIL_FAST_MARKER
    if hydra_cfg.mode == RunMode.MULTIRUN and cfg.sweep.fail_fast and stop_marker.exists():
        log.info("cancelled: an earlier run failed (--fail-fast)")
        return {"status": "cancelled"}
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    if multirun:
        interrupts.exit_with_launcher()  # joblib's workers: do not outlive the sweep command
        _quiet_console_in_worker()
    job = dict(
        overrides=list(hydra_cfg.overrides.task),
        choices=OmegaConf.to_container(hydra_cfg.runtime.choices),
        cpu_threads=cpu_share(hydra_cfg.launcher),
        gpu_slots_dir=Path(hydra_cfg.sweep.dir) / ".gpu-slots" if multirun and uses_gpu_slots(hydra_cfg.launcher) else None,
    )
    seeds = seed_stack(cfg, Path(hydra_cfg.sweep.dir), job["overrides"], hydra_cfg.launcher) \
        if multirun and cfg.trainer.stack_seeds else []
    if len(seeds) > 1:
        summary = run_stacked(cfg, run_dir, seeds, **job)
    else:
        summary = run_experiment(cfg, run_dir, console_progress=not multirun, **job)
    status = summary["status"]
    if summary.get("skipped"):
        return summary
    if status == "failed":
        if hydra_cfg.mode == RunMode.MULTIRUN:  # a single run's error is printed once, by the CLI
            log.error("failed: %s", summary["error"])
    else:
        final, best = summary["final"], summary["best"]
        if final.get("test_acc") is None:  # regression
            score = f"test loss {final['test_loss']:.4f} (best {best['test_loss']:.4f} at epoch {best['epoch']:.2f})"
        else:
            score = f"test acc {100 * final['test_acc']:.2f}% (best {100 * best['test_acc']:.2f}% at epoch {best['epoch']:.2f})"
        log.info("%s: %s, train loss %.4f, %.1fs, %s", status, score, final["train_loss"], summary["wall_s"],
                 run_dir if hydra_cfg.mode == RunMode.RUN else run_dir.name)
    if hydra_cfg.mode == RunMode.RUN:
        last_run = summary
    elif status == "failed" and cfg.sweep.fail_fast:
        stop_marker.touch()
        raise FailFast(f"{run_dir.name}: {summary['error']} (bnbench report {run_dir.parent} tabulates what ran)")
    return summary
