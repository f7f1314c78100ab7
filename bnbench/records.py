"""The run and sweep records on disk: the single source of truth for reports, resume and progress.

A run folder holds Hydra's config snapshot (``.hydra/``), ``metrics.csv`` (one row per
evaluation) and ``summary.json`` (status, final and best metrics, provenance). Files are
written to a temporary name and renamed, so a killed process never leaves half a file. A sweep
folder holds Hydra's ``multirun.yaml`` (the grid: ``value_order``) and ``sweep.json`` (the
command and git state). This module imports neither torch (only library_versions, in a job,
does), pandas nor scipy: the launching process of a sweep and the report read these records
without them.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import platform
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Optional, TypedDict

import yaml
from omegaconf import DictConfig, OmegaConf

SUMMARY = "summary.json"
SWEEP_INFO = "sweep.json"  # written when a multirun starts: command line, git state, date
CONFIRM_PLAN = "confirm.json"  # a `bnbench confirm` folder: the sweep and choices it reruns (bnbench/confirm.py)
FINISHED = ("completed", "diverged")  # statuses of results; a rerun of the same sweep skips them
METRICS = "metrics.csv"
FINAL_WEIGHTS = "final.pt"  # trainer.save_final=true: {"run_id", "step", "model": state_dict} (torch.save)
EVAL_MODES = "eval_modes.csv"  # sweep level, from `bnbench evalmodes` (bnbench/evalmodes.py)

METRIC_COLUMNS = ["step", "epoch", "train_loss_running", "train_acc_running", "train_loss", "train_acc",
                  "val_loss", "val_acc", "test_loss", "test_acc", "lr", "wall_s"]
# train_*_running: averages over the steps since the previous evaluation, in train mode (the loss
# the optimizer saw); train_*: the model at the evaluation, in eval mode, on a fixed training
# subset (bnbench.train.train_probe). Records before bnbench 0.2 hold only the running averages,
# under the names train_loss and train_acc; records before 0.5 have no val_* (no validation split),
# and neither do runs with dataset.val_size=0 (empty cells).
# diagnostics.enabled=true: one row per layer every diagnostics.every steps (bnbench/diagnostics.py)
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
    job: str  # "PLAN/STACK": the planned sweep job that trained it (bnbench/planning.py)
    device: str  # "cpu", or "cuda:N (GPU name)"
    environment: dict[str, Any]  # device, GPU name/UUID, driver, CUDA, cuDNN, numerics flags (devices.environment)
    n_params: int
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


def is_runtime_key(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in RUNTIME_KEYS)


_UMASK = os.umask(0)
os.umask(_UMASK)


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; use the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    _atomic_write(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def write_csv(path: Path, rows: Iterable[Mapping[str, Any]], columns: list[str]) -> None:
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    _atomic_write(path, buffer.getvalue())


# The CLI's outcome of one `bnbench run` command: where its run or sweep went (and, for a sweep,
# how many jobs were planned and why no report was written). The CLI names a file in this
# variable; the job (single run) or the sweep callback writes it; the CLI then reads the run
# records themselves from the folder it names.
OUTCOME_ENV = "BNBENCH_OUTCOME"


def note_outcome(**fields: Any) -> None:
    """Add ``fields`` to the outcome file the CLI asked for (no-op outside the CLI)."""
    path = os.environ.get(OUTCOME_ENV)
    if not path:
        return
    try:
        known = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        known = {}
    write_json(Path(path), {**known, **fields})


def read_outcome(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def write_text(path: Path, text: str) -> None:
    _atomic_write(path, text)


def read_summary(run_dir: Path) -> RunRecord | None:
    """The run's summary.json, or None when it is absent or unusable (:func:`load_summary` says why)."""
    return load_summary(run_dir)[0]


def load_summary(run_dir: Path) -> tuple[RunRecord | None, str | None]:
    """(summary, None), (None, None) when there is no summary.json, or (None, why) when there
    is one that cannot be used: unreadable, not JSON (a torn or overwritten file), not a record."""
    path = run_dir / SUMMARY
    if not path.is_file():
        return None, None
    try:
        data = json.loads(path.read_text())
    except OSError as err:
        return None, f"{SUMMARY} cannot be read ({err.strerror or err})"
    except ValueError:  # JSONDecodeError, or bytes that are not UTF-8
        return None, f"{SUMMARY} is corrupt (not JSON)"
    if not isinstance(data, dict) or "status" not in data:
        return None, f"{SUMMARY} is corrupt (not a run record)"
    return data, None


def run_folders(sweep_dir: Path) -> list[Path]:
    """Every run folder of a sweep: those with a record, and those started without one yet."""
    found = {p.parent for p in sweep_dir.rglob(SUMMARY)}
    found |= {p.parent.parent for p in sweep_dir.rglob(".hydra/overrides.yaml")}
    return sorted(found)


def metrics_problem(run_dir: Path) -> str | None:
    """Why the run's metrics.csv cannot be read, or None when it can: absent, not text, or
    without the header bnbench writes."""
    path = run_dir / METRICS
    if not path.is_file():
        return f"{METRICS} is missing"
    try:
        with open(path, newline="") as handle:
            header = handle.readline().strip().split(",")
            handle.read()  # the whole file must be text
    except OSError as err:
        return f"{METRICS} cannot be read ({err.strerror or err})"
    except UnicodeDecodeError:
        return f"{METRICS} is corrupt (not text)"
    if not {"step", "epoch"} <= set(header):
        return f"{METRICS} is corrupt (no step/epoch header)"
    return None


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


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    import torch

    from bnbench import __version__

    def installed(name: str) -> str:
        try:
            return version(name)  # without importing it: torchvision's import costs seconds per worker
        except PackageNotFoundError:
            return "not installed"

    return {
        "bnbench": __version__,
        "python": platform.python_version(),
        # str(): torch.__version__ is a TorchVersion, and unpickling one (a sweep job's return
        # value, in the launching process) imports torch there
        "torch": str(torch.__version__),
        "torchvision": installed("torchvision"),
        "hydra": installed("hydra-core"),
        "cuda": torch.version.cuda or "none",
    }


# ------------------------------------------------------------------ the sweep's grid (multirun.yaml)

def sweep_lists(params: Mapping[str, Any] | None, task_overrides: list[str] | None) -> dict[str, list[str]]:
    """Each swept key's values, in the order given, from the sweeper's params and the command
    line (which wins), read with Hydra's own parser so they match what the jobs saw
    (1e6 -> 1000000.0, ranges expanded)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    items = [f"{k}={v}" for k, v in (params or {}).items()] + list(task_overrides or [])
    try:
        parsed = OverridesParser.create().parse_overrides(items)
    except Exception:  # an override this parser cannot read without the config (rare): no order
        return {}
    order: dict[str, list[str]] = {}
    for override in parsed:
        key = override.get_key_element().lstrip("+~")
        if override.is_discrete_sweep():
            order[key] = list(override.sweep_string_iterator())
        elif not override.is_sweep_override():
            order[key] = [override.get_value_element_as_str()]
    return order


def value_order(sweep_dir: Path) -> dict[str, list[str]]:
    """The order in which the sweep listed each key's values (from Hydra's multirun.yaml)."""
    path = sweep_dir / "multirun.yaml"
    if not path.is_file():
        return {}
    try:
        # libyaml's loader when PyYAML has it: this file holds the whole config, and every
        # stacked sweep job reads it (about 10x faster: docs/benchmarks.md)
        saved = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}
    except yaml.YAMLError:
        return {}
    hydra_cfg = saved.get("hydra", {}) or {}
    return sweep_lists((hydra_cfg.get("sweeper") or {}).get("params"), (hydra_cfg.get("overrides") or {}).get("task"))


# ------------------------------------------------------------------ the sweep's provenance

def git_state(path: Path) -> dict[str, Any]:
    """Commit and dirty flag of the git checkout holding ``path`` (bnbench's own code)."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": dirty}


def sweep_info(argv: list[str]) -> dict[str, Any]:
    import shlex
    import socket

    return {
        # the CLI passes the command as typed; sys.argv is what it handed to Hydra
        "command": os.environ.get("BNBENCH_COMMAND") or " ".join(shlex.quote(a) for a in argv),
        "started_at": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        "host": socket.gethostname(),
        "git": git_state(Path(__file__).resolve().parent),
    }
