"""One run, from a composed config to its record on disk.

Whatever happens inside (a typo caught by validation, missing data files, a NaN loss, a bug)
ends in a ``summary.json`` with a status, so a sweep always has a row for every run.
"""

from __future__ import annotations

import copy
import fcntl
import logging
import os
import random
import socket
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Mapping

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from bnbench import interrupts, records
from bnbench.config import validate
from bnbench.errors import ConfigError
from bnbench.job.data import DataError, load_dataset
from bnbench.job import devices
from bnbench.job.devices import apply_numerics, job_device, release_gpu_slot, set_threads
from bnbench.job.models import build_model, count_parameters
from bnbench.job.stacking import NotStackable
from bnbench.launch.planning import why_not_stackable
from bnbench.job.checkpoint import Checkpoint
from bnbench.job.engine import TrainResult, steps_plan, train_copies

log = logging.getLogger("bnbench")
epoch_log = logging.getLogger("bnbench.epochs")  # run.log only (conf/hydra/job_logging/bnbench.yaml)

# Errors whose message is the whole story: shown as one line, no traceback.
USER_ERRORS = (ConfigError, DataError)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _format_row(row: Mapping[str, Any]) -> str:
    if row["test_acc"] is None:  # regression
        scores = f"test loss {row['test_loss']:.4f}"
    else:
        scores = f"train acc {100 * row['train_acc']:6.2f}%  test acc {100 * row['test_acc']:6.2f}%"
    return (f"step {row['step']:>6}  epoch {row['epoch']:>6.2f}  train loss {row['train_loss']:.4f}  "
            f"{scores}  ({row['wall_s']:.1f}s)")


def _lock(run_dir: Path, name: str = ".run.lock", wait: bool = False) -> IO | None:
    """An exclusive lock on the run folder (held until the handle closes), or None if another
    process holds it; with ``wait`` (sweep.wait_for_others), the lock once that process lets go
    (the caller then finds its record finished, and skips the run)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = open(run_dir / name, "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        if not wait:
            handle.close()
            return None
        log.info("waiting: another process is running %s (sweep.wait_for_others=true)", run_dir.name)
        fcntl.flock(handle, fcntl.LOCK_EX)
    return handle


def run_experiment(cfg: DictConfig, run_dir: Path, **kwargs: Any) -> records.RunRecord:
    """:func:`_run` under a lock on the run folder, so two processes given the same run (two
    sweep commands racing on one sweep folder) never train it twice: the second skips it."""
    handle = _lock(run_dir, wait=bool(cfg.sweep.get("wait_for_others", False)))
    if handle is None:
        log.info("skipped: another process is running %s right now", run_dir.name)
        return {"status": "running", "skipped": True, "run_id": records.run_identity(cfg)}
    try:
        return _run(cfg, run_dir, **kwargs)
    finally:
        release_gpu_slot()
        handle.close()


def _run(
    cfg: DictConfig,
    run_dir: Path,
    overrides: list[str] | None = None,
    choices: Mapping[str, Any] | None = None,
    console_progress: bool = True,
    cpu_threads: int | None = None,
    gpu_slots: bool = False,
) -> records.RunRecord:
    """Train the run ``cfg`` describes and write its record into ``run_dir``; return the summary.

    ``console_progress=False`` (sweeps) sends the per-evaluation lines to run.log only;
    ``cpu_threads`` is this job's share of the cores under its launcher; ``gpu_slots`` makes a
    sweep's job under a local launcher claim a GPU slot of this machine (see devices.py).

    A run folder that already holds a finished record of the same run (same identity hash) is
    skipped; one cut off mid-way resumes from its checkpoint; one whose config changed since is
    run afresh and its old record replaced (said in the log), never mixed with the new one.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    overrides = list(overrides or [])
    finished = _finished(cfg, run_dir)
    if finished is not None:
        return finished
    return _train_group([Member(cfg, run_dir, overrides)], choices, console_progress, cpu_threads, gpu_slots)[0]


def _finished(cfg: DictConfig, run_dir: Path) -> records.RunRecord | None:
    """The record in ``run_dir`` if it is a finished record of this very run (same identity
    hash), marked skipped; else None, saying in the log why an existing record is replaced."""
    run_id = records.run_identity(cfg)
    previous, problem = records.load_summary(run_dir)
    if problem:  # kept for inspection, like an unusable checkpoint; the run trains again
        aside = run_dir / f"{records.SUMMARY}.unusable"
        try:
            (run_dir / records.SUMMARY).replace(aside)
            where = f"set aside as {aside.name}"
        except OSError:
            where = "left in place"
        log.warning("%s: %s; %s, training the run again", run_dir.name, problem, where)
    if records.is_finished(previous, run_id):
        log.info("skipped: already %s (%s)", previous["status"], run_dir.name)
        return {**previous, "skipped": True}
    if previous is not None and previous.get("run_id") not in (None, run_id):
        log.warning("config or code changed since the run recorded in %s (id %s -> %s): running it afresh",
                    run_dir, previous.get("run_id"), run_id)
    return None


@dataclass
class Member:
    """One run of a job's group: its config (seed included), folder and Hydra overrides."""

    cfg: DictConfig
    folder: Path
    overrides: list[str]

    @property
    def seed(self) -> int:
        return int(self.cfg.seed)


def _train_group(members: list[Member], choices: Mapping[str, Any] | None, console_progress: bool,
                 cpu_threads: int | None, gpu_slots: bool) -> list[records.RunRecord]:
    """The one run lifecycle, for S >= 1 runs that differ only by seed, trained together
    (bnbench.job.engine.train_copies): each gets its own record, checkpoint and outcome in its own
    folder. Whatever happens inside (a typo caught by validation, missing data files, a NaN
    loss, a bug) ends in each run's ``summary.json`` with a status. Runs that cannot train as one
    stack (NotStackable: the reason goes to the log) train one by one instead, never as a
    failure. Returns the summaries, in the order of ``members``."""
    cfg, s = members[0].cfg, len(members)
    seeds = [m.seed for m in members]
    started = time.perf_counter()
    summaries = [_start_summary(m.cfg, m.folder, records.run_identity(m.cfg), m.overrides, choices, stack_size=s)
                 for m in members]
    if s > 1:
        for summary in summaries:
            summary["stacked_seeds"] = seeds
    checkpoints = [Checkpoint(m.folder / "checkpoint.pt", summary["run_id"], m.cfg.trainer.checkpoint_every,
                              m.cfg.trainer.checkpoint_every_s) for m, summary in zip(members, summaries)]
    results: list[TrainResult | None] = [None] * s
    total_steps = 0

    def on_eval(i: int, row: dict) -> None:
        if cfg.trainer.log_progress:
            line = _format_row(row) if s == 1 else f"seed {seeds[i]}: {_format_row(row)}"
            (log if console_progress else epoch_log).info(line)
        summaries[i]["progress"] = {"step": row["step"], "total_steps": total_steps, "epoch": row["epoch"],
                                    "test_acc": row["test_acc"], "test_loss": row["test_loss"],
                                    "train_loss": row["train_loss"]}
        records.write_json(members[i].folder / records.SUMMARY, summaries[i])  # what progress displays read

    try:
        validate(cfg)
        reason = why_not_stackable(cfg) if s > 1 else None
        if reason is not None:
            raise NotStackable(reason)
        apply_numerics(cfg.trainer.deterministic, cfg.trainer.tf32)  # before CUDA starts (cuBLAS reads its setting)
        device = job_device(cfg.trainer.device, gpu_slots, cfg.trainer.jobs_per_gpu)
        environment = devices.environment(device, slot=gpu_slots)
        device_name = f"{device} ({environment['name']})" if device.type == "cuda" else "cpu"
        if device.type == "cuda":  # which GPU this job got, in its log (run.log in a sweep) and its record
            log.info("on %s, %s%s", device_name, environment["uuid"], " (a GPU slot of this machine)" if gpu_slots else "")
        threads = set_threads(cfg.trainer.threads, cpu_threads) if device.type == "cpu" else None
        for summary in summaries:  # recorded before the first CUDA kernel, so a failed run says where it was
            summary.update(device=device_name, environment=environment)
            if threads is not None:
                summary["threads"] = threads
        seed_everything(seeds[0])
        data = load_dataset(cfg, device)
        models = [build_model(m.cfg, data.in_shape, data.num_outputs).to(device) for m in members]
        if cfg.trainer.deterministic and device.type == "cuda":
            _check_deterministic(models[0])
        for summary in summaries:
            summary["n_params"] = count_parameters(models[0])
            if data.task == "classification":  # chance is 1 / classes (a report names arms that learned nothing)
                summary["classes"] = data.num_outputs
        total_steps = steps_plan(len(data.train_y), cfg.trainer)[1]
        results = train_copies(models, seeds, data, cfg, device, on_eval=on_eval, checkpoints=checkpoints,
                               keep_final=bool(cfg.trainer.save_final))
        for summary, result, checkpoint in zip(summaries, results, checkpoints):
            if result.resumed_from_step:
                summary["resumed_from_step"] = result.resumed_from_step
            summary.update(status=result.status, first_step_s=result.first_step_s)
            checkpoint.remove()
        if results[0].resumed_from_step:
            log.info("resumed from the checkpoint%s at step %d", "s" if s > 1 else "", results[0].resumed_from_step)
    except NotStackable as err:
        log.info("seeds %s not stacked: %s; training them one by one", ",".join(map(str, seeds)), err)
        return [_train_group([m], choices, console_progress, cpu_threads, gpu_slots)[0] for m in members]
    except KeyboardInterrupt as err:  # Ctrl-C, SIGTERM or a time limit, in training (Interrupted) or before it
        for m, summary in zip(members, summaries):
            summary.update(status="interrupted", error=interrupts.describe(err))
            records.write_json(m.folder / records.SUMMARY, summary)
        interrupts.hand_over(err)  # a time limit: submitit's handler requeues (and exits) now that all is saved
        raise
    except USER_ERRORS as err:
        for summary in summaries:
            summary.update(status="failed", error=str(err))
    except Exception as err:  # a bug or an environment problem: keep the traceback next to the record
        if type(err).__name__ == "UncompletedJobError":  # submitit: the time limit, out of requeues
            for m, summary in zip(members, summaries):
                summary.update(status="interrupted", error=f"stopped by the cluster's time limit, out of requeues "
                               f"({err}); its checkpoint is kept: run the sweep again to resume")
                records.write_json(m.folder / records.SUMMARY, summary)
            raise
        for m, summary in zip(members, summaries):
            summary.update(status="failed", error=f"{type(err).__name__}: {err}")
            records.write_text(m.folder / "error.txt", traceback.format_exc())
    for m, summary, result in zip(members, summaries, results):
        _save_final(m.folder, summary, result)
        # no result: training raised; its metrics.csv (and the checkpoint it belongs to) stay as they are
        _finish(m.folder, summary, result.history if result else None, result.diagnostics if result else [], started)
    return summaries


# Layers with no deterministic CUDA kernel in their backward pass (torch's list); the model
# builder uses a fixed AvgPool2d (or nothing) instead of an adaptive pool wherever it can.
NONDETERMINISTIC_ON_CUDA = (torch.nn.AdaptiveAvgPool2d, torch.nn.AdaptiveMaxPool2d, torch.nn.FractionalMaxPool2d)


def _check_deterministic(model: torch.nn.Module) -> None:
    found = [f"{name} ({type(m).__name__})" for name, m in model.named_modules()
             if isinstance(m, NONDETERMINISTIC_ON_CUDA)]
    if found:
        raise ConfigError(f"trainer.deterministic=true, but {', '.join(found)} has no deterministic CUDA kernel "
                          "for its backward pass; use trainer.deterministic=false, or an input size whose pooling "
                          "windows are even")


def _save_final(run_dir: Path, summary: records.RunRecord, result: TrainResult | None) -> None:
    """trainer.save_final: the run's final weights and buffers into final.pt (atomically, with
    the run's identity, read back with weights_only=True); otherwise a stale file of an earlier
    run is removed, so a final.pt always belongs to the record beside it."""
    path = run_dir / records.FINAL_WEIGHTS
    if result is None or result.final_state is None or summary["status"] not in records.FINISHED:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"run_id": summary["run_id"], "step": result.history[-1]["step"] if result.history else 0,
                "model": result.final_state}, tmp)
    os.replace(tmp, path)


def _start_summary(cfg: DictConfig, run_dir: Path, run_id: str, overrides: list[str],
                   choices: Mapping[str, Any] | None, stack_size: int = 1) -> records.RunRecord:
    """The record of a run that has started (status running), written to its folder.
    ``stack_size``: how many seeds trained together as one stacked model (1: on its own). In
    float32 a stacked run differs from its unstacked twin by rounding, so the report shows
    which way each run was trained and warns when one cell mixes the two."""
    summary: records.RunRecord = {
        "run_id": run_id,
        "status": "running",
        "error": None,
        "seed": int(cfg.seed),
        "params": records.parse_overrides(overrides),
        "overrides": overrides,
        "choices": {k: v for k, v in (choices or {}).items() if not str(k).startswith("hydra")},
        "started_at": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "versions": records.library_versions(),
        "stack_size": stack_size,
    }
    if cfg.sweep.get("plan") is not None:  # the sweep job that trained it (bnbench/launch/planning.py)
        summary["job"] = f"{cfg.sweep.plan}/{cfg.sweep.stack}"
    records.write_json(run_dir / records.SUMMARY, summary)
    return summary


def _finish(run_dir: Path, summary: records.RunRecord, history: list[dict] | None, diagnostics_rows: list[dict],
            started: float) -> None:
    """The run's final record. ``history`` None: training raised before it had one, and an
    earlier part's metrics.csv is never rewritten shorter than its checkpoint."""
    summary.pop("progress", None)
    summary["wall_s"] = round(time.perf_counter() - started, 3)
    summary["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
    summary.update(_outcome(history or []))
    if history is not None or not (run_dir / records.METRICS).is_file():
        records.write_csv(run_dir / records.METRICS, history or [], records.METRIC_COLUMNS)
    if diagnostics_rows:  # bnbench/job/diagnostics.py; a stale file of an earlier run is removed
        records.write_csv(run_dir / records.DIAGNOSTICS, diagnostics_rows, records.DIAGNOSTICS_COLUMNS)
    else:
        (run_dir / records.DIAGNOSTICS).unlink(missing_ok=True)
    records.write_json(run_dir / records.SUMMARY, summary)  # last: its status marks the run finished


def _outcome(history: list[dict]) -> dict[str, Any]:
    if not history:
        return {"final": {}, "best": {}, "at_best_val": {}, "steps": 0, "epochs": 0.0}
    last = history[-1]
    regression = last["test_acc"] is None
    return {
        "final": {k: last.get(k) for k in ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc",
                                           "train_loss_running", "train_acc_running")},
        "best": {k: v for k, v in _best(history, "test", regression).items() if k in ("test_acc", "test_loss", "step",
                                                                                       "epoch")},
        "at_best_val": _at_best_val(history, regression),
        "steps": last["step"],
        "epochs": last["epoch"],
        "train_s": last["wall_s"],  # training time, summed over resumed parts
    }


def _best(history: list[dict], split: str, regression: bool) -> dict:
    """The evaluation with the best ``split`` metric (the lowest loss for regression; the first
    of equals), among those with a finite loss when there are any."""
    finite = [row for row in history if row.get(f"{split}_loss") is not None and np.isfinite(row[f"{split}_loss"])]
    rows = finite or history
    if regression:
        return min(rows, key=lambda row: row[f"{split}_loss"])
    return max(rows, key=lambda row: row[f"{split}_acc"])


def _at_best_val(history: list[dict], regression: bool) -> dict:
    """The test metric at the evaluation with the best validation metric: selection on held-out
    data, never on the test set (empty without a validation split)."""
    if history[-1].get("val_loss") is None:
        return {}
    row = _best(history, "val", regression)
    return {k: row[k] for k in ("val_acc", "val_loss", "test_acc", "test_loss", "step", "epoch")}


# ----------------------------------------------------------------------------- stacked seeds

def run_stacked(cfg: DictConfig, sweep_dir: Path, planned: list[dict[str, Any]], overrides: list[str],
                choices: Mapping[str, Any] | None = None, cpu_threads: int | None = None,
                gpu_slots: bool = False) -> list[tuple[Path, records.RunRecord]]:
    """A sweep job that trains the runs the sweep planned for it (bnbench/launch/planning.py: seeds of
    one cell, this job's own first) as one stack, writing each seed's record, and the Hydra files
    its own job would have written, into that seed's folder. Runs finished since the plan, or
    locked by another process (a second sweep command on the same folder), are left alone
    (their summaries are marked skipped). Returns each run's folder and summary, in plan order."""
    handles: list[IO] = []
    outcomes: dict[Path, records.RunRecord] = {}
    todo: list[Member] = []
    try:
        for entry in planned:
            seed, folder = int(entry["seed"]), sweep_dir / entry["folder"]
            seed_cfg = copy.deepcopy(cfg)
            seed_cfg.seed = seed
            handle = _lock(folder, wait=bool(cfg.sweep.get("wait_for_others", False)))
            if handle is None:
                log.info("skipped: another process is running %s right now", folder.name)
                outcomes[folder] = {"status": "running", "skipped": True, "run_id": records.run_identity(seed_cfg)}
                continue
            finished = _finished(seed_cfg, folder)
            if finished is not None:
                handle.close()
                outcomes[folder] = finished
                continue
            handles.append(handle)
            outcomes[folder] = {}
            if seed != int(cfg.seed):  # what the seed's own Hydra job writes into its folder
                (folder / ".hydra").mkdir(parents=True, exist_ok=True)
                OmegaConf.save(seed_cfg, folder / ".hydra" / "config.yaml")
                OmegaConf.save(OmegaConf.create(list(entry["overrides"])), folder / ".hydra" / "overrides.yaml")
            todo.append(Member(seed_cfg, folder, list(entry["overrides"])))
        if todo:
            for member, summary in zip(todo, _train_group(todo, choices, False, cpu_threads, gpu_slots)):
                outcomes[member.folder] = summary
        return list(outcomes.items())
    finally:
        release_gpu_slot()
        for handle in handles:
            handle.close()
