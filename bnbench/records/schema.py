"""The record format: what a run folder and a sweep folder hold, the one status vocabulary, the
metric names, the runtime keys and a run's identity. Torch-, pandas- and scipy-free: the
launching process of a sweep and the report read these records without them.

A run folder holds Hydra's config snapshot (``.hydra/``), ``metrics.csv`` (one row per
evaluation) and ``summary.json`` (status, final and best metrics, provenance). A sweep folder
holds Hydra's ``multirun.yaml`` (the grid) and ``sweep.json`` (the command and git state).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Iterable, Literal, Mapping, Optional, TypedDict

from omegaconf import DictConfig, OmegaConf

SUMMARY = "summary.json"
SWEEP_INFO = "sweep.json"  # written when a multirun starts: command line, git state, date
CONFIRM_PLAN = "confirm.json"  # a `bnbench confirm` folder: the sweep and choices it reruns (bnbench/confirm.py)
# The status vocabulary. A run record's status is one of Status; a report counts each run as
# one of STATUSES ("incomplete": running, interrupted, or no record at all). RESULTS are the
# outcomes of a run (a diverged run is a result: it is scored, never dropped); a rerun of the
# same sweep skips them.
RESULTS = ("completed", "diverged")
FINISHED = RESULTS
STATUSES = ("completed", "diverged", "failed", "incomplete")
METRICS = "metrics.csv"
FINAL_WEIGHTS = "final.pt"  # trainer.save_final=true: {"run_id", "step", "model": state_dict} (torch.save)
EVAL_MODES = "eval_modes.csv"  # sweep level, from `bnbench evalmodes` (bnbench/evalmodes.py)

METRIC_COLUMNS = ["step", "epoch", "train_loss_running", "train_acc_running", "train_loss", "train_acc",
                  "val_loss", "val_acc", "test_loss", "test_acc", "lr", "wall_s"]
# train_*_running: averages over the steps since the previous evaluation, in train mode (the loss
# the optimizer saw); train_*: the model at the evaluation, in eval mode, on a fixed training
# subset (bnbench.job.tasks.train_probe). Records before bnbench 0.2 hold only the running averages,
# under the names train_loss and train_acc; records before 0.5 have no val_* (no validation split),
# and neither do runs with dataset.val_size=0 (empty cells).
# The metrics of a run that a report can compare (columns of the runs table; bnbench report --metric)
RUN_METRICS = ("final_test_acc", "best_test_acc", "final_train_loss", "final_test_loss", "best_test_loss",
               "final_train_acc", "final_train_loss_running", "final_train_acc_running", "final_val_acc",
               "final_val_loss", "best_val_acc", "best_val_loss", "test_acc_at_best_val", "test_loss_at_best_val")
# diagnostics.enabled=true: one row per layer every diagnostics.every steps (bnbench/job/diagnostics.py)
DIAGNOSTICS = "diagnostics.csv"
DIAGNOSTICS_COLUMNS = [
    "step", "epoch", "layer", "name", "module", "nonlinearity", "grad_norm", "weight_norm", "pre_mean", "pre_std",
    "act_in_p15", "act_in_p50", "act_in_p85", "unit", "unit_p15", "unit_p50", "unit_p85", "saturated_frac",
    "dead_frac", "bn_mean_gap", "bn_var_ratio", "loss", "acc_train_mode", "acc_eval_mode", "input_shift", "ics_l2",
    "ics_cos",
    "loss_variation", "grad_change", "beta_smoothness",
]

Status = Literal["running", "completed", "diverged", "failed", "interrupted"]


class FinalMetrics(TypedDict, total=False):
    """The model at the last evaluation (``train_*``: eval mode on the training probe;
    ``*_running``: averages of the steps since the evaluation before, in train mode)."""

    train_loss: float
    train_acc: Optional[float]  # None for regression, as every *_acc
    test_loss: float
    test_acc: Optional[float]
    train_loss_running: float
    train_acc_running: Optional[float]
    val_loss: Optional[float]  # None without a validation split (dataset.val_size=0)
    val_acc: Optional[float]


class AtBestVal(TypedDict, total=False):
    """The evaluation with the best validation metric (accuracy; loss for regression): the
    model a practitioner would keep, selected without looking at the test set."""

    val_acc: Optional[float]
    val_loss: float
    test_acc: Optional[float]
    test_loss: float
    step: int
    epoch: float


class BestMetrics(TypedDict, total=False):
    """The evaluation with the best test metric (selected on the test set: optimistic)."""

    test_acc: Optional[float]
    test_loss: float
    step: int
    epoch: float


class Progress(TypedDict):
    """While a run trains: its last evaluation, for the live view."""

    step: int
    total_steps: int
    epoch: float
    test_acc: Optional[float]
    test_loss: float
    train_loss: float


class RunRecord(TypedDict, total=False):
    """A run's ``summary.json``: every key bnbench writes (a test checks the file against this).

    Written when the run starts (status running), at each evaluation (``progress``) and when it
    ends (status, outcome, times). Older records may lack keys added later; readers use .get()."""

    run_id: str  # run_identity(): equal id, same run
    status: Status
    error: Optional[str]  # why the run failed or was interrupted
    seed: int
    params: dict[str, str]  # the run's own overrides, key -> value
    overrides: list[str]
    choices: dict[str, Any]  # config group -> option (norm: bn_before, ...)
    started_at: str  # ISO 8601, UTC, milliseconds
    host: str
    pid: int
    versions: dict[str, str]
    stack_size: int  # seeds trained together as one stacked model (1: on its own)
    stacked_seeds: list[int]
    job: str  # "PLAN/STACK": the planned sweep job that trained it (bnbench/launch/planning.py)
    device: str  # "cpu", or "cuda:N (GPU name)"
    environment: dict[str, Any]  # device, GPU name/UUID, driver, CUDA, cuDNN, numerics flags (devices.environment)
    n_params: int
    classes: int  # classification: how many classes (chance accuracy is 1 / classes)
    threads: int
    resumed_from_step: int
    first_step_s: float  # seconds from the job's start to the end of its first optimizer step
    progress: Progress
    wall_s: float
    finished_at: str
    final: FinalMetrics
    best: BestMetrics
    at_best_val: AtBestVal  # empty without a validation split
    steps: int
    epochs: float
    train_s: float  # training time, summed over resumed parts
    skipped: bool  # in memory only: a finished run this job left alone (never written)


# Config keys that do not change a run's result (paths, runtime and display settings): left out
# of its identity hash and of the factors of a report. conf/config.yaml keeps them out of run
# folder names too (hydra.job.config.override_dirname.exclude_keys).
RUNTIME_KEYS = ("results_dir", "sweep", "dataset.root", "dataset.download", "trainer.threads",
                "trainer.log_progress", "trainer.device", "trainer.jobs_per_gpu", "trainer.stack_seeds",
                "trainer.stack_size", "trainer.channels_last", "trainer.checkpoint_every_s", "trainer.deterministic",
                "trainer.tf32")


def is_finished(summary: Mapping[str, Any] | None, run_id: str | None = None) -> bool:
    """Whether ``summary`` is a finished record (a result: completed or diverged), and, given
    ``run_id``, of that very run. A rerun of the sweep skips such runs; the one rule that the
    sweeper's plan, the job, the live view and the sweep callback follow."""
    return bool(summary) and summary.get("status") in FINISHED and (run_id is None or summary.get("run_id") == run_id)


def is_runtime_key(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in RUNTIME_KEYS)


def run_identity(cfg: DictConfig) -> str:
    """Hash of the resolved config without paths and runtime settings: equal hash, same run."""
    from bnbench import __version__

    data = OmegaConf.to_container(cfg, resolve=True)
    data = {k: v for k, v in data.items() if k != "hydra"}
    if not (data.get("diagnostics") or {}).get("enabled"):
        data.pop("diagnostics", None)  # diagnostics off change nothing; on, they add a file
    for dotted in RUNTIME_KEYS:
        node = data
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(last, None)
    payload = json.dumps({"config": data, "bnbench": __version__}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def parse_overrides(overrides: Iterable[str]) -> dict[str, str]:
    """Hydra override strings (``key=value``, ``+key=value``) as a dict; deletions are skipped."""
    params = {}
    for item in overrides:
        if item.startswith("~") or "=" not in item:
            continue
        key, value = item.split("=", 1)
        params[key.lstrip("+")] = value
    return params


# Records before bnbench 0.2 hold only the running averages of the training metrics, under the
# plain names (train_loss, train_acc); from 0.2 those are *_running and the plain names are the
# model in eval mode on a fixed training subset. These are the old names -> today's.
LEGACY_TRAIN_METRICS = {"train_loss": "train_loss_running", "train_acc": "train_acc_running"}


def is_fraction(metric: str) -> bool:
    """Whether ``metric`` is an accuracy (a fraction in the records, shown in points: 0.9 is
    90.00); ``time_to_acc_*`` metrics are times, not accuracies."""
    return "acc" in metric and "_to_acc_" not in metric


def legacy_metric_names(columns: Iterable[str]) -> dict[str, str]:
    """The renames that bring a pre-0.2 table of metrics (``metrics.csv`` columns, or a sweep's
    ``final_*`` columns) to today's names; empty for a table of today's."""
    columns = set(columns)
    renames = {}
    for prefix in ("", "final_"):
        for old, new in LEGACY_TRAIN_METRICS.items():
            if prefix + old in columns and prefix + new not in columns:
                renames[prefix + old] = prefix + new
    return renames


# Where each run metric of the runs table lives in a run record (records.runs reads the same).
METRIC_FIELDS = {
    "final_test_acc": ("final", "test_acc"), "final_test_loss": ("final", "test_loss"),
    "final_train_acc": ("final", "train_acc"), "final_train_loss": ("final", "train_loss"),
    "final_val_acc": ("final", "val_acc"), "final_val_loss": ("final", "val_loss"),
    "best_test_acc": ("best", "test_acc"), "best_test_loss": ("best", "test_loss"),
    "best_val_acc": ("at_best_val", "val_acc"), "best_val_loss": ("at_best_val", "val_loss"),
    "test_acc_at_best_val": ("at_best_val", "test_acc"), "test_loss_at_best_val": ("at_best_val", "test_loss"),
}


def metric_value(summary: Mapping[str, Any], metric: str) -> float:
    """A run metric (final_val_acc, ...) from a run record; NaN where the record has none."""
    table, key = METRIC_FIELDS[metric]
    value = (summary.get(table) or {}).get(key)
    return float(value) if isinstance(value, (int, float)) else float("nan")
