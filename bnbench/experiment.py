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
import re
import socket
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Mapping

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from bnbench import interrupts, records
from bnbench.config import ConfigError, validate
from bnbench.data import DataError, load_dataset
from bnbench.devices import job_device, release_gpu_slot, set_threads
from bnbench.models import build_model, count_parameters
from bnbench.stacking import train_stacked, why_not_stackable
from bnbench.train import Checkpoint, steps_plan, train

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


def _lock(run_dir: Path, name: str = ".run.lock") -> IO | None:
    """An exclusive lock on the run folder (held until the handle closes), or None if another
    process holds it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = open(run_dir / name, "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def run_experiment(cfg: DictConfig, run_dir: Path, **kwargs: Any) -> dict[str, Any]:
    """:func:`_run` under a lock on the run folder, so two processes given the same run (two
    sweep commands racing on one sweep folder) never train it twice: the second skips it."""
    handle = _lock(run_dir)
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
    gpu_slots_dir: Path | None = None,
) -> dict[str, Any]:
    """Train the run ``cfg`` describes and write its record into ``run_dir``; return the summary.

    ``console_progress=False`` (sweeps) sends the per-evaluation lines to run.log only;
    ``cpu_threads`` is this job's share of the cores under its launcher; ``gpu_slots_dir`` makes
    a sweep's job claim a GPU slot (see devices.py).

    A run folder that already holds a finished record of the same run (same identity hash) is
    skipped; one cut off mid-way resumes from its checkpoint; one whose config changed since is
    run afresh and its old record replaced (said in the log), never mixed with the new one.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    overrides = list(overrides or [])
    run_id = records.run_identity(cfg)
    previous, problem = records.load_summary(run_dir)
    if problem:
        log.warning("%s: %s; training the run again", run_dir.name, problem)
    if previous is not None and previous.get("run_id") == run_id and previous.get("status") in records.FINISHED:
        log.info("skipped: already %s (%s)", previous["status"], run_dir.name)
        return {**previous, "skipped": True}
    if previous is not None and previous.get("run_id") not in (None, run_id):
        log.warning("config or code changed since the run recorded in %s (id %s -> %s): running it afresh",
                    run_dir, previous.get("run_id"), run_id)

    started = time.perf_counter()
    summary = _start_summary(cfg, run_dir, run_id, overrides, choices)
    checkpoint = Checkpoint(run_dir / "checkpoint.pt", run_id, cfg.trainer.checkpoint_every)

    def on_eval(row: dict) -> None:
        if cfg.trainer.log_progress:
            (log if console_progress else epoch_log).info(_format_row(row))
        summary["progress"] = {"step": row["step"], "total_steps": total_steps, "epoch": row["epoch"],
                               "test_acc": row["test_acc"], "test_loss": row["test_loss"],
                               "train_loss": row["train_loss"]}
        records.write_json(run_dir / records.SUMMARY, summary)  # what progress displays read

    history: list[dict] = []
    diagnostics_rows: list[dict] = []  # diagnostics.enabled: rows of diagnostics.csv
    try:
        validate(cfg)
        device = job_device(cfg.trainer.device, gpu_slots_dir, cfg.trainer.jobs_per_gpu)
        summary["device"] = f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "cpu"
        if device.type == "cpu":
            summary["threads"] = set_threads(cfg.trainer.threads, cpu_threads)
        seed_everything(cfg.seed)
        data = load_dataset(cfg, device)
        model = build_model(cfg, data.in_shape, data.num_outputs).to(device)
        summary["n_params"] = count_parameters(model)
        total_steps = steps_plan(len(data.train_y), cfg.trainer)[1]
        result = train(model, data, cfg, device, on_eval=on_eval, checkpoint=checkpoint)
        if result.resumed_from_step:
            summary["resumed_from_step"] = result.resumed_from_step
            log.info("resumed from the checkpoint at step %d", result.resumed_from_step)
        history = result.history
        diagnostics_rows = result.diagnostics
        summary["status"] = result.status
        checkpoint.remove()
    except KeyboardInterrupt as err:  # Ctrl-C or SIGTERM, in training (Interrupted) or before it
        summary.update(status="interrupted", error=interrupts.describe(err))
        records.write_json(run_dir / records.SUMMARY, summary)
        raise
    except USER_ERRORS as err:
        summary.update(status="failed", error=str(err))
    except Exception as err:  # a bug or an environment problem: keep the traceback next to the record
        summary.update(status="failed", error=f"{type(err).__name__}: {err}")
        records.write_text(run_dir / "error.txt", traceback.format_exc())
    _finish(run_dir, summary, history, diagnostics_rows, started)
    return summary


def _start_summary(cfg: DictConfig, run_dir: Path, run_id: str, overrides: list[str],
                   choices: Mapping[str, Any] | None, stack_size: int = 1) -> dict[str, Any]:
    """The record of a run that has started (status running), written to its folder.
    ``stack_size``: how many seeds trained together as one stacked model (1: on its own). In
    float32 a stacked run differs from its unstacked twin by rounding, so the report shows
    which way each run was trained and warns when one cell mixes the two."""
    summary: dict[str, Any] = {
        "run_id": run_id,
        "status": "running",
        "error": None,
        "seed": int(cfg.seed),
        "params": records.parse_overrides(overrides),
        "overrides": overrides,
        "choices": {k: v for k, v in (choices or {}).items() if not str(k).startswith("hydra")},
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "versions": records.library_versions(),
        "stack_size": stack_size,
    }
    records.write_json(run_dir / records.SUMMARY, summary)
    return summary


def _finish(run_dir: Path, summary: dict[str, Any], history: list[dict], diagnostics_rows: list[dict],
            started: float) -> None:
    summary.pop("progress", None)
    summary["wall_s"] = round(time.perf_counter() - started, 3)
    summary["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    summary.update(_outcome(history))
    records.write_csv(run_dir / records.METRICS, history, records.METRIC_COLUMNS)
    if diagnostics_rows:  # bnbench/diagnostics.py; a stale file of an earlier run is removed
        records.write_csv(run_dir / records.DIAGNOSTICS, diagnostics_rows, records.DIAGNOSTICS_COLUMNS)
    else:
        (run_dir / records.DIAGNOSTICS).unlink(missing_ok=True)
    records.write_json(run_dir / records.SUMMARY, summary)  # last: its status marks the run finished


def _outcome(history: list[dict]) -> dict[str, Any]:
    if not history:
        return {"final": {}, "best": {}, "steps": 0, "epochs": 0.0}
    last = history[-1]
    finite = [row for row in history if np.isfinite(row["test_loss"])] or history
    if last["test_acc"] is None:  # regression: the best evaluation is the lowest test loss
        best = min(finite, key=lambda row: row["test_loss"])
    else:
        best = max(finite, key=lambda row: row["test_acc"])
    return {
        "final": {k: last[k] for k in ("train_loss", "train_acc", "test_loss", "test_acc", "train_loss_running",
                                       "train_acc_running")},
        "best": {"test_acc": best["test_acc"], "test_loss": best["test_loss"], "step": best["step"],
                 "epoch": best["epoch"]},
        "steps": last["step"],
        "epochs": last["epoch"],
        "train_s": last["wall_s"],  # training time, summed over resumed parts
    }


# ----------------------------------------------------------------------------- stacked seeds

def sibling_dir(run_dir: Path, own_seed: int, seed: int) -> Path | None:
    """The folder of the run that differs from ``run_dir``'s only by its seed: Hydra names run
    folders by their overrides (``...,seed=0,...``), so it is the same name with the seed
    swapped; None when the name does not hold the seed exactly once (a custom hydra.sweep.subdir)."""
    pattern = re.compile(rf"(^|,)seed={own_seed}(?=,|$)")
    if len(pattern.findall(run_dir.name)) != 1:
        return None
    return run_dir.parent / pattern.sub(lambda m: f"{m.group(1)}seed={seed}", run_dir.name)


def run_stacked(cfg: DictConfig, run_dir: Path, seeds: list[int], overrides: list[str],
                choices: Mapping[str, Any] | None = None, cpu_threads: int | None = None,
                gpu_slots_dir: Path | None = None) -> dict[str, Any]:
    """A sweep job with ``trainer.stack_seeds=true``: train this job's run together with the runs
    of the same cell for the sweep's other ``seeds`` (bnbench/stacking.py), writing each seed's
    record into its own folder exactly as its own job would. Seeds that are finished, or locked
    by another process, are left alone; their own jobs find their records and skip. Returns this
    job's own summary."""
    own_seed = int(cfg.seed)
    reason = why_not_stackable(cfg)
    dirs = {seed: sibling_dir(run_dir, own_seed, seed) for seed in seeds}
    if reason is None and (own_seed not in seeds or any(d is None for d in dirs.values())):
        reason = "the run folder names do not show the seed (hydra.sweep.subdir)"
    if reason is not None:
        log.info("seeds not stacked: %s", reason)
        return run_experiment(cfg, run_dir, overrides=overrides, choices=choices, console_progress=False,
                              cpu_threads=cpu_threads, gpu_slots_dir=gpu_slots_dir)
    # The jobs of one stack start together on parallel workers: the first to take the stack's
    # lock trains it, the others return at once (rather than racing for its seeds one by one
    # and splitting the stack).
    stack_handle = _lock(dirs[seeds[0]], ".stack.lock")
    if stack_handle is None:
        log.info("skipped: another job trains the stack of seeds %s", ",".join(map(str, seeds)))
        return {"status": "running", "skipped": True, "run_id": records.run_identity(cfg)}
    handles: dict[int, IO] = {}
    own: dict[str, Any] | None = None
    cells: list[tuple[int, DictConfig, Path, list[str]]] = []
    try:
        for seed in [own_seed, *(s for s in seeds if s != own_seed)]:
            seed_cfg = copy.deepcopy(cfg)
            seed_cfg.seed = seed
            folder = dirs[seed]
            handle = _lock(folder)
            if handle is None:  # another process trains it right now
                if seed == own_seed:
                    own = {"status": "running", "skipped": True, "run_id": records.run_identity(seed_cfg)}
                continue
            previous = records.read_summary(folder)
            if previous is not None and previous.get("run_id") == records.run_identity(seed_cfg) \
                    and previous.get("status") in records.FINISHED:
                handle.close()
                if seed == own_seed:
                    log.info("skipped: already %s (%s)", previous["status"], folder.name)
                    own = {**previous, "skipped": True}
                continue
            handles[seed] = handle
            seed_overrides = [f"seed={seed}" if o.startswith("seed=") else o for o in overrides]
            if seed != own_seed:  # what the seed's own Hydra job writes into its folder
                (folder / ".hydra").mkdir(parents=True, exist_ok=True)
                OmegaConf.save(seed_cfg, folder / ".hydra" / "config.yaml")
                OmegaConf.save(OmegaConf.create(seed_overrides), folder / ".hydra" / "overrides.yaml")
            cells.append((seed, seed_cfg, folder, seed_overrides))
        if len(cells) == 1:  # nothing to stack it with: an ordinary run (with checkpoints), lock held here
            seed, seed_cfg, folder, seed_overrides = cells[0]
            summary = _run(seed_cfg, folder, overrides=seed_overrides, choices=choices, console_progress=False,
                           cpu_threads=cpu_threads, gpu_slots_dir=gpu_slots_dir)
            own = summary if seed == own_seed else own
        elif cells:
            summaries = _train_stacked_cell(cfg, cells, choices, cpu_threads, gpu_slots_dir)
            own = summaries.get(own_seed, own)
        return own if own is not None else {"status": "running", "skipped": True}
    finally:
        release_gpu_slot()
        for handle in [*handles.values(), stack_handle]:
            handle.close()


def _train_stacked_cell(cfg: DictConfig, cells: list[tuple[int, DictConfig, Path, list[str]]],
                        choices: Mapping[str, Any] | None, cpu_threads: int | None,
                        gpu_slots_dir: Path | None) -> dict[int, dict[str, Any]]:
    started = time.perf_counter()
    seeds = [seed for seed, *_ in cells]
    summaries: dict[int, dict[str, Any]] = {}
    for seed, seed_cfg, folder, seed_overrides in cells:
        summaries[seed] = _start_summary(seed_cfg, folder, records.run_identity(seed_cfg), seed_overrides, choices,
                                         stack_size=len(seeds))
        summaries[seed]["stacked_seeds"] = seeds
    histories: dict[int, list[dict]] = {seed: [] for seed in seeds}
    total_steps = 0

    def on_eval(i: int, row: dict) -> None:
        seed, _, folder, _ = cells[i]
        if cfg.trainer.log_progress:
            epoch_log.info("seed %d: %s", seed, _format_row(row))
        summaries[seed]["progress"] = {"step": row["step"], "total_steps": total_steps, "epoch": row["epoch"],
                                       "test_acc": row["test_acc"], "test_loss": row["test_loss"],
                                       "train_loss": row["train_loss"]}
        records.write_json(folder / records.SUMMARY, summaries[seed])

    def fail_all(**fields: Any) -> None:
        for summary in summaries.values():
            summary.update(**fields)

    try:
        validate(cfg)
        device = job_device(cfg.trainer.device, gpu_slots_dir, cfg.trainer.jobs_per_gpu)
        device_name = f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "cpu"
        threads = set_threads(cfg.trainer.threads, cpu_threads) if device.type == "cpu" else None
        data = load_dataset(cfg, device)
        models = []
        for seed, seed_cfg, _, _ in cells:
            seed_everything(seed)  # the initialization the seed's own run would get
            models.append(build_model(seed_cfg, data.in_shape, data.num_outputs).to(device))
            summaries[seed].update(device=device_name, n_params=count_parameters(models[-1]))
            if threads is not None:
                summaries[seed]["threads"] = threads
        total_steps = steps_plan(len(data.train_y), cfg.trainer)[1]
        results = train_stacked(models, seeds, data, cfg, device, on_eval=on_eval)
        for seed, result in zip(seeds, results):
            histories[seed] = result.history
            summaries[seed]["status"] = result.status
    except KeyboardInterrupt as err:
        for seed, _, folder, _ in cells:
            summaries[seed].update(status="interrupted", error=interrupts.describe(err))
            records.write_json(folder / records.SUMMARY, summaries[seed])
        raise
    except USER_ERRORS as err:
        fail_all(status="failed", error=str(err))
    except Exception as err:
        fail_all(status="failed", error=f"{type(err).__name__}: {err}")
        for _, _, folder, _ in cells:
            records.write_text(folder / "error.txt", traceback.format_exc())
    for seed, _, folder, _ in cells:
        if summaries[seed]["status"] in records.FINISHED:  # a checkpoint left by an earlier, unstacked attempt
            (folder / "checkpoint.pt").unlink(missing_ok=True)
        _finish(folder, summaries[seed], histories[seed], [], started)
    return summaries
