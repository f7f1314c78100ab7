"""Run and sweep records on disk: atomic writes (a killed process never leaves half a file),
reading a run's summary (and saying why one cannot be used), the run folders of a sweep, and
the grid a sweep listed (multirun.yaml). Torch- and pandas-free."""

from __future__ import annotations

import csv
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from bnbench.records.schema import METRICS, SUMMARY, RunRecord

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
    why = record_problem(data)
    if why:
        return None, f"{SUMMARY} is corrupt (not a run record: {why})"
    return data, None


_STATUS_WORDS = ("running", "completed", "diverged", "failed", "interrupted")
_METRIC_TABLES = ("final", "best", "at_best_val")


def record_problem(data: dict) -> str | None:
    """Why ``data`` cannot be a bnbench run record, in any part the readers use, or None. A
    record that passes is read everywhere without a second check: a finished record of the
    wrong shape would otherwise be skipped as done on every rerun and break every report."""
    number = (int, float, type(None))
    if data.get("status") not in _STATUS_WORDS:
        return f"status {data.get('status')!r}"
    if not isinstance(data.get("params", {}), dict):
        return "params is not a table"
    if "run_id" in data and not isinstance(data["run_id"], str):
        return "run_id is not text"
    if data.get("seed") is not None and (not isinstance(data["seed"], int) or isinstance(data["seed"], bool)):
        return "seed is not a whole number"
    for table in _METRIC_TABLES:
        values = data.get(table)
        if values is None:
            continue
        if not isinstance(values, dict):
            return f"{table} is not a table"
        bad = [k for k, v in values.items() if not isinstance(v, number) or isinstance(v, bool)]
        if bad:
            return f"{table}.{bad[0]} is not a number"
    for key in ("steps", "epochs", "wall_s", "n_params", "stack_size"):
        value = data.get(key)
        if not isinstance(value, number) or isinstance(value, bool):
            return f"{key} is not a number"
    if data["status"] in ("completed", "diverged") and not isinstance(data.get("run_id"), str):
        return "a finished record without its run_id"
    return None


def run_folders(sweep_dir: Path) -> list[Path]:
    """Every run folder of a sweep: those with a record, and those started without one yet."""
    found = {p.parent for p in sweep_dir.rglob(SUMMARY)}
    found |= {p.parent.parent for p in sweep_dir.rglob(".hydra/overrides.yaml")}
    return sorted(found)


def probe_write(folder: Path) -> None:
    """Make ``folder`` (and its parents) and write and remove a small file in it: OSError, naming
    the path, when it cannot be written, before any work is spent on what would go there."""
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / f".bnbench-write-test-{os.getpid()}"
    probe.write_text("ok")
    probe.unlink()


def held_by_another(run_dir: Path) -> bool:
    """Whether another process holds the run folder's lock (.run.lock) right now: it is
    training that run."""
    import fcntl

    path = run_dir / ".run.lock"
    if not path.is_file():
        return False
    try:
        with open(path, "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(handle, fcntl.LOCK_UN)
    except OSError:
        return False
    return False


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


GRID_SWEEPERS = ("hydra_plugins.bnbench_sweeper.PlannedSweeper",
                 "hydra._internal.core_plugins.basic_sweeper.BasicSweeper")


def grid_sweeper(sweep_dir: Path) -> str | None:
    """None when the sweep ran a grid (bnbench's sweeper or Hydra's basic one: every
    combination of the listed values); else the sweeper that chose its runs (Optuna's: samples,
    so a combination it did not sample is not missing)."""
    saved = read_multirun(sweep_dir)
    target = str(((saved.get("hydra") or {}).get("sweeper") or {}).get("_target_") or "")
    return None if not target or target in GRID_SWEEPERS else target


def read_multirun(sweep_dir: Path) -> dict:
    """Hydra's multirun.yaml of a sweep (its whole config), or {} when it is absent or unreadable."""
    path = sweep_dir / "multirun.yaml"
    if not path.is_file():
        return {}
    try:
        # libyaml's loader when PyYAML has it: this file holds the whole config, and every
        # stacked sweep job reads it (about 10x faster: docs/benchmarks.md)
        return yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}
    except (OSError, yaml.YAMLError):
        return {}


def value_order(sweep_dir: Path) -> dict[str, list[str]]:
    """The order in which the sweep listed each key's values (from Hydra's multirun.yaml)."""
    hydra_cfg = read_multirun(sweep_dir).get("hydra", {}) or {}
    return sweep_lists((hydra_cfg.get("sweeper") or {}).get("params"), (hydra_cfg.get("overrides") or {}).get("task"))
