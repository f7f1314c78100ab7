"""The runs table: one row per run folder of a sweep (finished or not), one column per swept
key, read from the run records (or, when the folders are gone, from the sweep's results.csv).
What the report, export, evalmodes and confirm read; pandas, no torch."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd
import yaml

from bnbench import records


_FACTOR_ORDER = ("model", "norm", "activation", "optimizer", "dataset", "trainer")


RUN_COLUMNS = [
    "run", "status", "seed", "final_test_acc", "best_test_acc", "final_train_loss", "final_test_loss",
    "best_test_loss", "final_train_acc", "final_train_loss_running", "final_train_acc_running", "final_val_acc",
    "final_val_loss", "best_val_acc", "best_val_loss", "test_acc_at_best_val", "test_loss_at_best_val", "steps",
    "epochs", "wall_s", "n_params", "stack_size", "device", "run_id", "error",
]


# Classes of the built-in classification sets, for records written before bnbench recorded them
DATASET_CLASSES = {"digits": 10, "mnist": 10, "fashion_mnist": 10, "kmnist": 10, "cifar10": 10, "cifar100": 100}


class ReportError(RuntimeError):
    pass


def _row(run_dir: Path, sweep_dir: Path) -> dict:
    summary, problem = records.load_summary(run_dir)
    row: dict = {"run": str(run_dir.relative_to(sweep_dir)) or "."}
    if summary is None:  # started but never wrote its record (killed, or still starting), or a corrupt one
        overrides_file = run_dir / ".hydra" / "overrides.yaml"
        try:
            overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else []
        except (OSError, ValueError, yaml.YAMLError):
            overrides, problem = [], problem or ".hydra/overrides.yaml is corrupt"
        params = records.parse_overrides(overrides if isinstance(overrides, list) else [])
        row.update(status="incomplete", seed=int(params["seed"]) if "seed" in params else None,
                   error=f"{problem}: rerunning the sweep trains it again" if problem else None,
                   _record_problem=problem)
    else:
        params = summary.get("params", {})
        final, best = summary.get("final") or {}, summary.get("best") or {}
        selected = summary.get("at_best_val") or {}  # before 0.5, or dataset.val_size=0: none
        row.update(
            status=summary.get("status", "incomplete"),
            seed=summary.get("seed"),
            final_test_acc=final.get("test_acc"),
            best_test_acc=best.get("test_acc"),
            final_test_loss=final.get("test_loss"),
            best_test_loss=best.get("test_loss"),
            **_train_metrics(final),
            final_val_acc=final.get("val_acc"),
            final_val_loss=final.get("val_loss"),
            best_val_acc=selected.get("val_acc"),
            best_val_loss=selected.get("val_loss"),
            test_acc_at_best_val=selected.get("test_acc"),
            test_loss_at_best_val=selected.get("test_loss"),
            steps=summary.get("steps"),
            epochs=summary.get("epochs"),
            wall_s=summary.get("wall_s"),
            n_params=summary.get("n_params"),
            stack_size=summary.get("stack_size", len(summary.get("stacked_seeds") or [None])),
            device=summary.get("device"),
            run_id=summary.get("run_id"),
            error=summary.get("error"),
            _versions=summary.get("versions"),
            _classes=summary.get("classes") or DATASET_CLASSES.get(str((summary.get("choices") or {}).get("dataset"))),
            _started=summary.get("started_at"),
            _finished=summary.get("finished_at"),
        )
        if row["status"] not in records.STATUSES:  # running, interrupted, or died between start and finish
            row["status"] = "incomplete"
        elif row["status"] in records.RESULTS:
            row["_record_problem"] = records.metrics_problem(run_dir)
    row["params"] = {k: v for k, v in params.items() if k != "seed" and not records.is_runtime_key(k)}
    return row


def _train_metrics(final: Mapping[str, Any]) -> dict[str, Any]:
    """Train metrics of a summary's final evaluation. Since bnbench 0.2 ``train_loss`` and
    ``train_acc`` are the final model's, in eval mode, and the running averages over the last
    evaluation interval are ``*_running``; older records hold only the running averages, under
    the plain names, so they go to the running columns and the model's own stay empty."""
    if "train_loss_running" in final:
        return {"final_train_loss": final.get("train_loss"), "final_train_acc": final.get("train_acc"),
                "final_train_loss_running": final.get("train_loss_running"),
                "final_train_acc_running": final.get("train_acc_running")}
    return {"final_train_loss": None, "final_train_acc": None, "final_train_loss_running": final.get("train_loss"),
            "final_train_acc_running": final.get("train_acc")}


def all_numbers(values: Iterable[Any]) -> bool:
    """Whether every value reads as a number (a swept optimizer.lr, trainer.batch_size)."""
    try:
        [float(v) for v in values]
    except (TypeError, ValueError):
        return False
    return True


def _level_key(value: str) -> tuple:
    """Values no grid ordered: numbers by value (2 before 10), then the rest by name."""
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


def _factor_sort_key(name: str) -> tuple[int, str]:
    return (_FACTOR_ORDER.index(name), name) if name in _FACTOR_ORDER else (len(_FACTOR_ORDER), name)


def collect_runs(sweep_dir: Path) -> tuple[pd.DataFrame, list[str], dict[str, str]]:
    """One row per run folder under ``sweep_dir``, with one column per swept config key.

    Returns (runs, factors, constants): factors are the keys whose value varies between runs
    (seed excluded); constants are the overrides shared by every run.
    """
    if not sweep_dir.is_dir():
        raise ReportError(f"{sweep_dir} is not a folder; give the sweep folder that `bnbench run -m` printed")
    folders = records.run_folders(sweep_dir)
    _check_one_sweep(sweep_dir, folders)
    rows = [_row(d, sweep_dir) for d in folders]
    source = "run records"
    if not rows and (sweep_dir / "results.csv").is_file():
        rows, source = _rows_from_results_csv(sweep_dir / "results.csv"), "results.csv"
    if not rows:
        raise ReportError(f"no runs found under {sweep_dir} (no summary.json or .hydra/overrides.yaml)")
    # ours: the sweep's own sweep.json, or a run record that passes records.record_problem (only
    # records read from a summary.json carry _versions); another tool's summary.json or another
    # Hydra app's multirun is neither
    if source == "run records" and not (sweep_dir / records.SWEEP_INFO).is_file() \
            and not any("_versions" in r for r in rows):
        raise ReportError(f"{sweep_dir} is not a bnbench sweep: it has no {records.SWEEP_INFO}, and none of its "
                          f"{len(rows)} run folder(s) holds a bnbench run record; bnbench reports only its own runs "
                          "(and writes its tables nowhere else)")
    # A damaged record with no overrides of its own cannot be placed in any cell: it is named,
    # never a phantom "(default)" cell beside the sweep's own.
    unplaced = [r for r in rows if r.get("_record_problem") and not r["params"]]
    if len(unplaced) < len(rows) and any(r["params"] for r in rows):
        rows = [r for r in rows if not (r.get("_record_problem") and not r["params"])]
    else:
        unplaced = []
    keys = sorted({k for r in rows for k in r["params"]}, key=_factor_sort_key)
    for r in rows:
        params = r.pop("params")
        for k in keys:
            r[k] = params.get(k, "(default)")
    runs = pd.DataFrame(rows)
    for col in RUN_COLUMNS:
        if col not in runs:
            runs[col] = None
    factors = [k for k in keys if runs[k].nunique(dropna=False) > 1]
    constants = {k: str(runs[k].iloc[0]) for k in keys if k not in factors}
    order = {**records.value_order(sweep_dir), **_confirmed_order(sweep_dir)}
    for k in factors:
        present = set(runs[k].astype(str))
        seen = list(dict.fromkeys([*order.get(k, []), *sorted(present, key=_level_key)]))
        runs[k] = pd.Categorical(runs[k].astype(str), categories=[v for v in seen if v in present], ordered=True)
    runs = runs.sort_values([*factors, "seed"], kind="stable").reset_index(drop=True)
    private = [c for c in runs.columns if c.startswith("_")]
    runs = runs[[*RUN_COLUMNS[:3], *keys, *RUN_COLUMNS[3:], *private]]
    runs.attrs["source"] = source
    runs.attrs["unplaced"] = [f"{r['run']}: {r['_record_problem']}" for r in unplaced]
    return runs, factors, constants


def _sweep_root(run_dir: Path, sweep_dir: Path) -> Path:
    """The sweep a run folder belongs to: its nearest folder below ``sweep_dir`` that holds a
    sweep's files (sweep.json, Hydra's multirun.yaml), else ``sweep_dir`` itself."""
    for folder in run_dir.parents:
        if folder == sweep_dir or sweep_dir not in folder.parents:
            break
        if (folder / records.SWEEP_INFO).is_file() or (folder / "multirun.yaml").is_file():
            return folder
    return sweep_dir


def _check_one_sweep(sweep_dir: Path, folders: list[Path]) -> None:
    """ReportError when ``sweep_dir`` holds other sweeps' run folders (results/ with lr/ and
    act/ in it): their seeds would be pooled, a run of each counted as two seeds of one cell."""
    nested = sorted({root for root in (_sweep_root(f, sweep_dir) for f in folders) if root != sweep_dir})
    if not nested:
        return
    names = ", ".join(str(p.relative_to(sweep_dir)) for p in nested[:4]) + (" ..." if len(nested) > 4 else "")
    raise ReportError(f"{sweep_dir} holds {len(nested)} sweep(s) ({names}): report each on its own, e.g. "
                      f"bnbench report {nested[0]}; one report never pools the runs of two sweeps")


def _rows_from_results_csv(path: Path) -> list[dict]:
    """Rows of a sweep whose run folders are gone but whose ``results.csv`` (this module's own
    output, one row per run) remains, e.g. a published table. Columns that are not run columns
    are the swept keys; a file written before bnbench 0.2 holds the running train averages
    under the plain train names (see :func:`_train_metrics`)."""
    try:
        table = pd.read_csv(path)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise ReportError(f"cannot read {path}: {err}") from err
    if not {"run", "status"} <= set(table.columns):
        raise ReportError(f"{path} is not a bnbench results.csv (no run and status columns); bnbench reports only "
                          "its own runs")
    table = table.rename(columns=records.legacy_metric_names(table.columns))
    keys = [c for c in table.columns if c not in RUN_COLUMNS and c not in ("final_train_loss", "final_train_acc")]
    rows = []
    for record in table.to_dict("records"):
        row = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in record.items() if k not in keys}
        row["params"] = {k: str(record[k]) for k in keys}
        rows.append(row)
    return rows


def confirmed_sweep(sweep_dir: Path) -> str | None:
    """The sweep whose choices this folder reruns on fresh seeds (bnbench confirm), if it is one."""
    try:
        return str(json.loads((sweep_dir / records.CONFIRM_PLAN).read_text())["confirms"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _confirmed_order(sweep_dir: Path) -> dict[str, list[str]]:
    """A bnbench confirm folder runs one sweep per arm (its multirun.yaml is the last arm's):
    the arms' values in the order of the sweep it confirms, from its confirm.json."""
    try:
        plan = json.loads((sweep_dir / records.CONFIRM_PLAN).read_text())
        order: dict[str, list[str]] = {}
        for arm in plan["arms"]:
            for key, value in {**arm["arm"], plan["select"]: arm["chosen"]}.items():
                if str(value) not in order.setdefault(key, []):
                    order[key].append(str(value))
        return order
    except (OSError, ValueError, KeyError, TypeError):
        return {}
