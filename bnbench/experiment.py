"""One run, from a composed config to its record on disk.

Whatever happens inside (a typo caught by validation, missing data files, a NaN loss, a bug)
ends in a ``summary.json`` with a status, so a sweep always has a row for every run.
"""

from __future__ import annotations

import fcntl
import logging
import os
import random
import socket
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from omegaconf import DictConfig

from bnbench import diagnostics, records
from bnbench.config import ConfigError, validate
from bnbench.data import DataError, load_dataset
from bnbench.devices import job_device, release_gpu_slot, set_threads
from bnbench.models import build_model, count_parameters
from bnbench.train import Checkpoint, Interrupted, steps_plan, train

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


FINISHED = ("completed", "diverged")  # results; a rerun of the same sweep skips them


def run_experiment(cfg: DictConfig, run_dir: Path, **kwargs: Any) -> dict[str, Any]:
    """:func:`_run` under a lock on the run folder, so two processes given the same run (two
    sweep commands racing on one sweep folder) never train it twice: the second skips it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = open(run_dir / ".run.lock", "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
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
    previous = records.read_summary(run_dir)
    if previous is not None and previous.get("run_id") == run_id and previous.get("status") in FINISHED:
        log.info("skipped: already %s (%s)", previous["status"], run_dir.name)
        return {**previous, "skipped": True}
    if previous is not None and previous.get("run_id") not in (None, run_id):
        log.warning("config or code changed since the run recorded in %s (id %s -> %s): running it afresh",
                    run_dir, previous.get("run_id"), run_id)

    started = time.perf_counter()
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
    }
    records.write_json(run_dir / records.SUMMARY, summary)
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
    except Interrupted:
        summary.update(status="interrupted", error="interrupted by the user; rerun the same command to resume")
        records.write_json(run_dir / records.SUMMARY, summary)
        raise
    except USER_ERRORS as err:
        summary.update(status="failed", error=str(err))
    except Exception as err:  # a bug or an environment problem: keep the traceback next to the record
        summary.update(status="failed", error=f"{type(err).__name__}: {err}")
        records.write_text(run_dir / "error.txt", traceback.format_exc())
    summary.pop("progress", None)
    summary["wall_s"] = round(time.perf_counter() - started, 3)
    summary["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    summary.update(_outcome(history))
    records.write_csv(run_dir / records.METRICS, history, records.METRIC_COLUMNS)
    if diagnostics_rows:  # bnbench/diagnostics.py; a stale file of an earlier run is removed
        records.write_csv(run_dir / diagnostics.FILE, diagnostics_rows, diagnostics.COLUMNS)
    else:
        (run_dir / diagnostics.FILE).unlink(missing_ok=True)
    records.write_json(run_dir / records.SUMMARY, summary)  # last: its status marks the run finished
    return summary


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
        "final": {k: last[k] for k in ("train_loss", "train_acc", "test_loss", "test_acc")},
        "best": {"test_acc": best["test_acc"], "test_loss": best["test_loss"], "step": best["step"],
                 "epoch": best["epoch"]},
        "steps": last["step"],
        "epochs": last["epoch"],
        "train_s": last["wall_s"],  # training time, summed over resumed parts
    }
