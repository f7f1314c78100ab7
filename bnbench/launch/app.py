"""The Hydra application: composes the config, then runs one job.

``bnbench run`` hands its arguments to :func:`main` unchanged, so every Hydra feature
(overrides, ``-m`` multirun, ``hydra.sweeper.params`` grids, launcher plugins, ``--cfg``)
works as Hydra documents it.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from bnbench import interrupts, records
from bnbench.launch import planning
from bnbench.config import check_complete, config_dir, register_configs
from bnbench.errors import ConfigError
from bnbench.launch import channel
from bnbench.launch.channel import FAIL_FAST_MARKER, LIVE_VIEW
from bnbench.launch.progress import outcome_line
from bnbench.launch.resources import cpu_share, uses_gpu_slots

log = logging.getLogger("bnbench")
register_configs()



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


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
def main(cfg: DictConfig) -> records.RunRecord:
    # Imported here, in the job: the launching process of a sweep never needs torch.
    from bnbench.job.experiment import run_experiment, run_stacked

    hydra_cfg = HydraConfig.get()
    try:
        check_complete(cfg)
    except ConfigError as err:
        if hydra_cfg.mode == RunMode.MULTIRUN:
            raise  # the sweeper said it before any job; a job here was launched by hand
        # a single run: the CLI says it in one line (an exception here gets a line of Hydra's first)
        channel.note_outcome(config_error=str(err))
        run_dir = Path(hydra_cfg.runtime.output_dir)
        if {p.name for p in run_dir.iterdir()} <= {".hydra", "run.log"}:  # what Hydra made for it, nothing else
            shutil.rmtree(run_dir, ignore_errors=True)
        return {"status": "cancelled"}
    run_dir = Path(hydra_cfg.runtime.output_dir)
    # Paths in the config are relative to where the command ran; with hydra.job.chdir=true the job
    # starts in its run folder, so they are made absolute here (runtime keys: identity unchanged).
    started_in = Path(hydra_cfg.runtime.cwd)
    sweep_dir = started_in / hydra_cfg.sweep.dir
    if hydra_cfg.job.chdir and "root" in cfg.dataset and not Path(cfg.dataset.root).expanduser().is_absolute():
        with open_dict(cfg):
            cfg.dataset.root = str(started_in / cfg.dataset.root)
    # --fail-fast: launchers start a whole batch of jobs at once, so the first failure leaves a
    # marker in the sweep folder and the jobs after it return without running.
    stop_marker = sweep_dir / FAIL_FAST_MARKER
    if hydra_cfg.mode == RunMode.MULTIRUN and cfg.sweep.fail_fast and stop_marker.exists():
        log.info("cancelled: an earlier run failed (--fail-fast)")
        return {"status": "cancelled"}
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    # another sweeper than bnbench's or Hydra's basic grid: one that optimizes, and needs a number
    optimizing = multirun and str(hydra_cfg.sweeper.get("_target_", "")) not in records.store.GRID_SWEEPERS
    if optimizing and cfg.sweep.objective not in records.schema.METRIC_FIELDS:
        raise ConfigError(f"sweep.objective={cfg.sweep.objective} is not a run metric; choose one of: "
                          f"{', '.join(records.schema.METRIC_FIELDS)} (validation ones to choose on)")
    if optimizing and cfg.sweep.objective_seeds < 1:
        raise ConfigError(f"sweep.objective_seeds={cfg.sweep.objective_seeds} must be at least 1 (the seeds a "
                          "trial's value is the mean over)")
    if multirun:
        interrupts.exit_with_launcher()  # joblib's workers: do not outlive the sweep command
        _quiet_console_in_worker()
    job = dict(
        overrides=list(hydra_cfg.overrides.task),
        choices=OmegaConf.to_container(hydra_cfg.runtime.choices),
        cpu_threads=cpu_share(hydra_cfg.launcher),
        gpu_slots=multirun and uses_gpu_slots(hydra_cfg.launcher),
    )
    # The sweeper planned which runs this job trains (bnbench/launch/planning.py): one, or a stack of seeds.
    members = planning.members(sweep_dir, cfg.sweep.plan, cfg.sweep.stack) \
        if multirun and cfg.sweep.plan is not None else []
    if optimizing and cfg.sweep.objective_seeds > 1:
        members = _trial_seeds(cfg, run_dir, sweep_dir, list(hydra_cfg.overrides.task))
    if members:  # the first member is this job's own config; the others differ from it by the seed alone
        planning.check_planned(members[0], records.run_identity(cfg), run_dir.name)
    if len(members) > 1:
        outcomes = run_stacked(cfg, sweep_dir, members, **job)
    else:
        outcomes = [(run_dir, run_experiment(cfg, run_dir, console_progress=not multirun, **job))]
    for folder, summary in outcomes:
        _say(summary, folder if multirun else run_dir, multirun)
    if not multirun:
        channel.note_outcome(run_dir=str(run_dir))  # the CLI reads the record there
    failed = [(folder, s) for folder, s in outcomes if s["status"] == "failed" and not s.get("skipped")]
    if failed and multirun and cfg.sweep.fail_fast:
        stop_marker.touch()
        folder, summary = failed[0]
        raise FailFast(f"{folder.name}: {summary['error']} (bnbench report {folder.parent} tabulates what ran)")
    if optimizing:
        values = [_objective(summary, cfg.sweep.objective, hydra_cfg.sweeper.get("direction"))
                  for _, summary in outcomes]
        return sum(values) / len(values)  # one seed's, or the mean over the trial's seeds
    return outcomes[0][1]


def _trial_seeds(cfg: DictConfig, run_dir: Path, sweep_dir: Path, overrides: list[str]) -> list[dict[str, Any]]:
    """The runs of one trial of an optimizing sweeper with sweep.objective_seeds > 1: this job's
    own folder for its seed, and a sibling folder ``<its name>,seed=S`` for each further seed."""
    base = [o for o in overrides if not o.startswith("seed=")]
    first = int(cfg.seed)
    out = [{"seed": first, "folder": str(run_dir.relative_to(sweep_dir)), "overrides": overrides}]
    for seed in range(first + 1, first + cfg.sweep.objective_seeds):
        out.append({"seed": seed, "folder": f"{run_dir.relative_to(sweep_dir)},seed={seed}",
                    "overrides": [*base, f"seed={seed}"]})
    return out


def _objective(summary: records.RunRecord, metric: str, direction: Any) -> float:
    """The number an optimizing sweeper (Optuna) gets for a run: ``sweep.objective`` of its record.
    A run without a finite value (a diverged run's loss, a failed run) gets the worst value in
    the study's direction, so it is a bad trial, not a lost one."""
    value = records.metric_value(summary, metric) if summary.get("status") in records.RESULTS else float("nan")
    if math.isfinite(value):
        return value
    worst = {"maximize": -math.inf, "minimize": math.inf}
    return worst.get(str(direction).split(".")[-1].lower(), math.nan)


def _say(summary: records.RunRecord, run_dir: Path, multirun: bool) -> None:
    """One log line with a finished run's outcome (a single run's error is printed by the CLI)."""
    if summary.get("skipped") or (summary["status"] == "failed" and not multirun):
        return
    line = outcome_line(summary, run_dir.name if multirun else str(run_dir))
    (log.error if summary["status"] == "failed" else log.info)("%s", line)
