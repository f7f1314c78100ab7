"""Sweep reports, rebuilt from the run records on disk.

``results.csv`` has one row per run folder (finished or not). ``report.md`` has, per cell (a
config without its seed), the seeds' mean, std, confidence interval, divergence rate and status
counts; paired comparisons with a baseline cell (paired t-interval, t-test, Wilcoxon, Holm,
effect size, equivalence test, a verdict and the seeds a clear answer would need); with two or
more factors, a type-II ANOVA, main effects and every two-way interaction; plots; and the
provenance of the runs. Diverged runs are scored under one policy (bnbench.stats), never
dropped; failed and unfinished runs are counted and their cells marked wherever they are ranked.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
import yaml
from rich.console import Console
from rich.table import Table

from bnbench import diagnostics_report, profiles, records, stats
from bnbench import selection as selection_mod

STATUSES = stats.STATUSES
# Known factors first, in the order a reader scans a placement ablation; others follow.
_FACTOR_ORDER = ("model", "norm", "activation", "optimizer", "dataset", "trainer")

RUN_COLUMNS = [
    "run", "status", "seed", "final_test_acc", "best_test_acc", "final_train_loss", "final_test_loss",
    "best_test_loss", "final_train_acc", "final_train_loss_running", "final_train_acc_running", "final_val_acc",
    "final_val_loss", "best_val_acc", "best_val_loss", "test_acc_at_best_val", "test_loss_at_best_val", "steps",
    "epochs", "wall_s", "n_params", "stack_size", "device", "run_id", "error",
]
METRICS = ("final_test_acc", "best_test_acc", "final_train_loss", "final_test_loss", "best_test_loss",
           "final_train_acc", "final_train_loss_running", "final_train_acc_running", "final_val_acc", "final_val_loss",
           "best_val_acc", "best_val_loss", "test_acc_at_best_val", "test_loss_at_best_val")
FORMATS = ("md", "csv", "latex")
INCOMPLETE_MARK = "*"  # next to the rank of a cell with failed, unfinished or missing runs


class ReportError(RuntimeError):
    pass


@dataclass
class ReportOptions:
    metric: str | None = None  # None: final_test_acc, or final_test_loss for regression sweeps
    baseline: dict[str, str] | None = None  # None: norm=none when norm is swept
    confidence: float = 0.95
    margin: float | None = None  # equivalence margin, in the units shown (points for accuracies)
    min_effect: float | None = None  # seeds needed to detect this difference (units shown); None: the observed
    interval: str = "t"  # paired differences: t-interval, or "bootstrap" (BCa; sound from about 15 pairs)
    target_acc: float | None = None  # with time_unit: report the time to reach this accuracy
    time_unit: str = "epochs"
    formats: tuple[str, ...] = ("md", "csv")
    plots: bool = True
    out: Path | None = None  # where the report files go; None: the sweep folder itself
    select: str | None = None  # a swept key chosen per arm on the validation split (bnbench.selection)
    profile: str | None = None  # a numeric swept key to profile the metric over (bnbench.profiles)
    within: float = 1.0  # --profile: a stable range's distance from the best, in the units shown


@dataclass
class SweepTables:
    sweep_dir: Path
    runs: pd.DataFrame
    factors: list[str]
    constants: dict[str, str]
    metric: str
    cells: pd.DataFrame
    comparisons: pd.DataFrame | None = None
    effects: pd.DataFrame | None = None
    interactions: dict[tuple[str, str], pd.DataFrame] = field(default_factory=dict)
    flips: list[dict] = field(default_factory=list)  # stats.sign_flips over every pair of factors
    anova: pd.DataFrame | None = None
    anova_notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # shown at the top of the report
    provenance: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    plots: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    diagnostics: pd.DataFrame | None = None  # per cell and layer: bnbench.diagnostics_report.summarize
    selection: selection_mod.Selection | None = None  # --select: the value each arm was compared at
    all_runs: pd.DataFrame | None = None  # with --select, every run (runs holds the chosen ones)
    profile: profiles.Profile | None = None  # --profile: the metric over a numeric key, per arm

    @property
    def failed_runs(self) -> pd.DataFrame:
        return self.runs[self.runs["status"] == "failed"]


# ------------------------------------------------------------------ reading run records


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
            _started=summary.get("started_at"),
            _finished=summary.get("finished_at"),
        )
        if row["status"] not in STATUSES:  # running, interrupted, or died between start and finish
            row["status"] = "incomplete"
        elif row["status"] in stats.RESULTS:
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


def _factor_sort_key(name: str) -> tuple[int, str]:
    return (_FACTOR_ORDER.index(name), name) if name in _FACTOR_ORDER else (len(_FACTOR_ORDER), name)


def collect_runs(sweep_dir: Path) -> tuple[pd.DataFrame, list[str], dict[str, str]]:
    """One row per run folder under ``sweep_dir``, with one column per swept config key.

    Returns (runs, factors, constants): factors are the keys whose value varies between runs
    (seed excluded); constants are the overrides shared by every run.
    """
    if not sweep_dir.is_dir():
        raise ReportError(f"{sweep_dir} is not a folder; give the sweep folder that `bnbench run -m` printed")
    rows = [_row(d, sweep_dir) for d in records.run_folders(sweep_dir)]
    source = "run records"
    if not rows and (sweep_dir / "results.csv").is_file():
        rows, source = _rows_from_results_csv(sweep_dir / "results.csv"), "results.csv"
    if not rows:
        raise ReportError(f"no runs found under {sweep_dir} (no summary.json or .hydra/overrides.yaml)")
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
        seen = list(dict.fromkeys([*order.get(k, []), *sorted(present)]))
        runs[k] = pd.Categorical(runs[k].astype(str), categories=[v for v in seen if v in present], ordered=True)
    runs = runs.sort_values([*factors, "seed"], kind="stable").reset_index(drop=True)
    private = [c for c in runs.columns if c.startswith("_")]
    runs = runs[[*RUN_COLUMNS[:3], *keys, *RUN_COLUMNS[3:], *private]]
    runs.attrs["source"] = source
    return runs, factors, constants


def _rows_from_results_csv(path: Path) -> list[dict]:
    """Rows of a sweep whose run folders are gone but whose ``results.csv`` (this module's own
    output, one row per run) remains, e.g. a published table. Columns that are not run columns
    are the swept keys; a file written before bnbench 0.2 holds the running train averages
    under the plain train names (see :func:`_train_metrics`)."""
    try:
        table = pd.read_csv(path)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise ReportError(f"cannot read {path}: {err}") from err
    if "final_train_loss_running" not in table:
        table = table.rename(columns={"final_train_loss": "final_train_loss_running",
                                      "final_train_acc": "final_train_acc_running"})
    keys = [c for c in table.columns if c not in RUN_COLUMNS and c not in ("final_train_loss", "final_train_acc")]
    rows = []
    for record in table.to_dict("records"):
        row = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in record.items() if k not in keys}
        row["params"] = {k: str(record[k]) for k in keys}
        rows.append(row)
    return rows


def _expected_cells(sweep_dir: Path, runs: pd.DataFrame, factors: list[str]) -> list[dict[str, str]]:
    """Cells of the grid the last sweep command asked for, so a cell with no run at all shows
    as missing. Only for grids that list every factor (a Cartesian product)."""
    order = records.value_order(sweep_dir)
    if not factors or not all(f in order for f in factors):
        return []
    levels = [order[f] for f in factors]
    return [dict(zip(factors, combo)) for combo in itertools.product(*levels)]


# ------------------------------------------------------------------ provenance


def _provenance(sweep_dir: Path, runs: pd.DataFrame) -> dict[str, Any]:
    info: dict[str, Any] = {}
    path = sweep_dir / records.SWEEP_INFO
    if path.is_file():
        try:
            info = json.loads(path.read_text())
        except json.JSONDecodeError:
            info = {}
    versions = [v for v in runs.get("_versions", pd.Series(dtype=object)) if isinstance(v, dict)]
    lib = {}
    for name in ("bnbench", "torch", "torchvision", "cuda", "hydra", "python"):
        values = sorted({str(v.get(name)) for v in versions if v.get(name) is not None})
        if values:
            lib[name] = ", ".join(values)
    wall = pd.to_numeric(runs["wall_s"], errors="coerce").dropna()
    started = [s for s in runs.get("_started", []) if isinstance(s, str)]
    finished = [s for s in runs.get("_finished", []) if isinstance(s, str)]
    done = runs[runs["status"].isin(stats.RESULTS)]
    sizes = pd.to_numeric(done["stack_size"], errors="coerce").fillna(1).astype(int)
    return {
        "source": runs.attrs.get("source", "run records"),
        "stacking": {"stacked": int((sizes > 1).sum()), "unstacked": int((sizes <= 1).sum()),
                     "sizes": sorted({int(v) for v in sizes if v > 1})},
        "command": info.get("command"),
        "git": info.get("git") or records.git_state(Path(__file__).resolve().parent),
        "host": info.get("host"),
        "versions": lib,
        "devices": sorted({str(d) for d in runs["device"].dropna()}),
        "first_run_started": min(started) if started else None,
        "last_run_finished": max(finished) if finished else None,
        "report_built": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wall_total_s": float(wall.sum()) if len(wall) else None,
        "wall_per_run_s": (float(wall.mean()), float(wall.min()), float(wall.max())) if len(wall) else None,
    }


# ------------------------------------------------------------------ building


def _confirmed_sweep(sweep_dir: Path) -> str | None:
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


def _default_baseline(runs: pd.DataFrame, factors: list[str]) -> dict[str, str] | None:
    if "norm" in factors and "none" in set(runs["norm"].astype(str)):
        return {"norm": "none"}
    return None


def default_metric(runs: pd.DataFrame) -> str:
    """Final test accuracy; final test loss when no run has an accuracy (regression sweeps)."""
    has_accuracy = "final_test_acc" in runs and runs["final_test_acc"].notna().any()
    has_loss = "final_test_loss" in runs and runs["final_test_loss"].notna().any()
    return "final_test_loss" if has_loss and not has_accuracy else "final_test_acc"


def _units(value: float | None, metric: str) -> float | None:
    """A value given in the units the report shows (points for accuracies) in metric units."""
    return None if value is None else (value / 100 if _is_fraction(metric) else value)


def _stacking_warnings(runs: pd.DataFrame, factors: list[str]) -> list[str]:
    """Cells whose results mix stacked and unstacked training, or devices (CPU and GPU, or GPU
    models): float32 rounding differs."""
    done = runs[runs["status"].isin(stats.RESULTS)].copy()
    done["_stacked"] = pd.to_numeric(done["stack_size"], errors="coerce").fillna(1) > 1
    # the kind of device, not its index: "cpu", or the GPU's model ("cuda:1 (NVIDIA H100)" -> "NVIDIA H100")
    done["_device"] = done["device"].astype(str).str.replace(r"^cuda:\d+ \((.*)\)$", r"\1", regex=True) \
        if "device" in done else "cpu"
    cells = stats.split_cells(done, factors)
    warnings = []
    for column, what, advice in (
            ("_stacked", "stacked and unstacked runs", "rerun the cell one way (trainer.stack_seeds)"),
            ("_device", "devices", "a run's identity leaves its device out (docs/gpu.md): rerun the cell on one")):
        mixed = [key for key, g in cells.items() if g[column].nunique() > 1]
        if not mixed:
            continue
        names = "; ".join(", ".join(f"{f}={v}" for f, v in zip(factors, key)) or "the only cell" for key in mixed[:5])
        more = f" and {len(mixed) - 5} more" if len(mixed) > 5 else ""
        warnings.append(f"{len(mixed)} cell(s) mix {what} ({names}{more}); in float32 they differ by rounding, "
                        f"which can reach seed-noise size: {advice}")
    return warnings


def build(sweep_dir: Path, options: ReportOptions | None = None) -> SweepTables:
    options = options or ReportOptions()
    runs, factors, constants = collect_runs(sweep_dir)
    metric = options.metric or default_metric(runs)
    if options.profile and options.metric is None:
        # the stable range picks values: on the validation split by default, never silently on the test set
        metric = selection_mod.criterion_for(metric, runs)
        if not runs.loc[runs["status"].isin(stats.RESULTS), metric].notna().any():
            raise ReportError(f"--profile {options.profile}: these runs have no validation metric ({metric}); they "
                              "were recorded before bnbench 0.5 or with dataset.val_size=0. Rerun with a validation "
                              "split, or give --metric final_test_acc to profile the test metric itself")
    if options.target_acc is not None:
        if default_metric(runs) != "final_test_acc":
            raise ReportError("--target-acc needs test accuracies, and this sweep's runs have none (a regression "
                              "task); report a loss with --metric instead")
        runs = stats.add_time_to_accuracy(runs, sweep_dir, options.target_acc, options.time_unit)
        metric = stats.time_to_acc_column(options.target_acc, options.time_unit)
    elif metric not in METRICS:
        raise ReportError(f"unknown metric {metric!r}; choose one of: {', '.join(METRICS)} (or --target-acc)")
    for name, value in (("--margin", options.margin), ("--min-effect", options.min_effect)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ReportError(f"{name} {value}: give a positive difference in the units of the report "
                              f"(points for accuracies), e.g. {name} 0.5")
    if options.interval not in stats.INTERVALS:
        raise ReportError(f"--interval {options.interval!r}: choose {' or '.join(stats.INTERVALS)}")
    if metric in ("final_train_loss", "final_train_acc") and runs[metric].isna().all() \
            and runs["status"].isin(stats.RESULTS).any():
        raise ReportError(f"these runs were recorded before bnbench 0.2 and have no {metric} of the final model; "
                          f"use --metric {metric}_running (the running average over the last evaluation interval)")
    chosen, all_runs, prof = None, runs, None
    if options.select:
        if options.profile == options.select:
            raise ReportError(f"--profile and --select both name {options.select}: --profile shows every value of a "
                              "key, --select keeps one per arm; profile another key over the selected runs (e.g. "
                              "--select optimizer.lr --profile trainer.batch_size)")
        try:
            runs, factors, chosen = selection_mod.select_per_arm(runs, factors, options.select, metric)
        except selection_mod.SelectionError as err:
            raise ReportError(str(err)) from err
    if options.profile:  # with --select: over the runs each arm chose (every point at its own selected value)
        baseline = options.baseline if options.baseline is not None else _default_baseline(runs, factors)
        try:
            prof = profiles.profile(runs, factors, options.profile, metric, _units(options.within, metric) or 0.0,
                                    options.confidence, baseline)
        except profiles.ProfileError as err:
            raise ReportError(str(err)) from err
        if chosen is not None:
            prof.notes.append(f"each point of the {options.profile} profile is at its own {options.select}, chosen "
                              "on the validation split (see the selection table)")
    tables = SweepTables(sweep_dir, runs, factors, constants, metric, cells=pd.DataFrame(), selection=chosen,
                         all_runs=all_runs, profile=prof)
    if prof is not None:
        tables.notes += prof.notes
    confirms = _confirmed_sweep(sweep_dir)
    if chosen is not None and confirms:
        tables.notes.append(f"{chosen.key} per arm as chosen on the validation split of {confirms}; these seeds "
                            "took no part in the choice (bnbench confirm)")
    elif chosen is not None:
        tables.warnings.append(
            f"{chosen.key} was chosen per arm on the validation split ({chosen.criterion}), on the same seeds that "
            "are reported here: the chosen values are flattered a little (a winner's curse); rerun them on fresh "
            "seeds for the comparison to publish")
    if metric.startswith("best_test"):
        tables.warnings.append(f"{metric} is selected on the test set (the best of all evaluations, by the data it "
                               "reports): it overstates what a run would score on new data; publish final_test_* "
                               f"or {metric.replace('best_test', 'test')}_at_best_val (selected on the validation split)")
    if (metric.endswith("_at_best_val") or metric.startswith("final_val")) and runs[metric].isna().all() \
            and runs["status"].isin(stats.RESULTS).any():
        raise ReportError(f"these runs have no validation metrics (recorded before bnbench 0.5, or with "
                          f"dataset.val_size=0); use --metric final_test_{'acc' if 'acc' in metric else 'loss'}")
    if metric.endswith("_running"):
        tables.warnings.append(f"{metric} is a running average over the last evaluation interval, in train mode, "
                               "not a metric of the final model")
    tables.warnings += _stacking_warnings(runs, factors)
    if "_record_problem" in runs:
        broken = runs[runs["_record_problem"].notna()]
        if len(broken):
            listed = "; ".join(f"{run}: {why}" for run, why in zip(broken["run"][:5], broken["_record_problem"][:5]))
            more = f" and {len(broken) - 5} more" if len(broken) > 5 else ""
            tables.warnings.append(f"{len(broken)} run record(s) are damaged ({listed}{more}); the tables use what "
                                   "is readable, and a run without a usable summary.json is retrained by the next sweep")
    expected = _expected_cells(sweep_dir, runs, factors)
    cells = stats.rank_cells(runs, factors, metric, confidence=options.confidence, expected_cells=expected)
    # Tables read best in the sweep's own order (none, bn_before, bn_after); rank says the rest.
    tables.cells = cells.sort_values(factors, kind="stable").reset_index(drop=True) if factors else cells
    tables.cells.attrs.update(cells.attrs)
    baseline = options.baseline if options.baseline is not None else _default_baseline(runs, factors)
    if baseline:
        try:
            tables.comparisons = stats.compare_to_baseline(
                runs, factors, metric, baseline, confidence=options.confidence,
                margin=_units(options.margin, metric), min_effect=_units(options.min_effect, metric),
                interval=options.interval)
        except ValueError as err:
            raise ReportError(f"--baseline: {err}") from err
        if len(tables.comparisons) and tables.comparisons["n_pairs"].max() <= 5:
            tables.notes.append("With 5 or fewer seed pairs the Wilcoxon signed-rank test cannot reach p < 0.05 "
                                "(exact minimum p = 1/2^(n-1)); use 6 or more seeds for it to be informative.")
    if len(factors) > 1:
        tables.anova, tables.anova_notes = stats.anova(runs, factors, metric)
        # one cell table (grid cells with no run included, so they mark their marginals) for all of them
        tables.effects = stats.main_effects(runs, factors, metric, cells=tables.cells)
        for a, b in itertools.combinations(factors, 2):
            tables.interactions[(a, b)] = stats.interaction_table(runs, a, b, metric, factors, cells=tables.cells)
            tables.flips += stats.sign_flips(tables.interactions[(a, b)], a, b)
            tables.flips += stats.sign_flips(tables.interactions[(a, b)], b, a)
    tables.counts = {status: int((runs["status"] == status).sum()) for status in STATUSES}
    tables.counts["missing cells"] = int((tables.cells["status"] == "missing").sum())
    tables.diagnostics = diagnostics_report.summarize(sweep_dir, runs, factors)
    tables.provenance = _provenance(sweep_dir, runs)
    return tables


# ------------------------------------------------------------------ formatting


def _is_fraction(metric: str) -> bool:
    return "acc" in metric and "_to_acc_" not in metric


def _fmt(value: Any, metric: str, signed: bool = False, clip: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float) and math.isinf(value):
        return "+∞" if value > 0 else "−∞"
    if _is_fraction(metric):
        if clip:  # a t-interval can reach past 0% or 100%; accuracy cannot
            value = min(1.0, max(0.0, value))
        return f"{100 * value:+.2f}" if signed else f"{100 * value:.2f}"
    return f"{value:+.4g}" if signed else f"{value:.4g}"


def _p(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.2g}" if value >= 0.001 else "<0.001"


def _metric_title(metric: str) -> str:
    titles = {"final_test_acc": "final test accuracy", "best_test_acc": "best test accuracy",
              "final_train_loss": "final train loss", "final_test_loss": "final test loss",
              "best_test_loss": "best test loss", "final_train_acc": "final train accuracy",
              "final_train_loss_running": "running train loss (last interval)",
              "final_train_acc_running": "running train accuracy (last interval)",
              "final_val_acc": "final validation accuracy", "final_val_loss": "final validation loss",
              "best_val_acc": "best validation accuracy", "best_val_loss": "best validation loss",
              "test_acc_at_best_val": "test accuracy at the best validation accuracy",
              "test_loss_at_best_val": "test loss at the best validation loss"}
    title = titles.get(metric, metric.replace("_", " "))
    return title + (" (%)" if _is_fraction(metric) else "")


def _pct(tables: SweepTables) -> str:
    return f"{100 * tables.cells.attrs.get('confidence', 0.95):g}%"


def _status_text(cell: pd.Series) -> str:
    """Results over runs, then what happened to the others."""
    text = f"{int(cell['n'])}/{int(cell['runs']) + int(cell['missing'])}"
    extra = [f"{int(cell[s])} {s}" for s in ("failed", "incomplete", "missing") if cell.get(s)]
    return text + (f" ({', '.join(extra)})" if extra else "")


def _diverged_text(diverged: Any, results: Any) -> str:
    if not results or pd.isna(results):
        return "—"
    return f"{int(diverged)}/{int(results)}" + (f" ({100 * diverged / results:.0f}%)" if diverged else "")


def cell_rows(tables: SweepTables) -> tuple[list[str], list[list[str]]]:
    m = tables.metric
    header = ["rank", *tables.factors, "results", "diverged", "mean ± std", f"{_pct(tables)} CI", "median",
              "min – max"]
    rows = []
    for _, cell in tables.cells.iterrows():
        ci = "—" if pd.isna(cell["ci_low"]) else f"{_fmt(cell['ci_low'], m, clip=True)} – {_fmt(cell['ci_high'], m, clip=True)}"
        spread = "—" if pd.isna(cell["min"]) else f"{_fmt(cell['min'], m)} – {_fmt(cell['max'], m)}"
        mean = _fmt(cell["mean"], m) + ("" if pd.isna(cell["std"]) else f" ± {_fmt(cell['std'], m)}")
        rank = "—" if pd.isna(cell["rank"]) else str(int(cell["rank"]))
        if rank != "—" and not cell["complete"]:
            rank += INCOMPLETE_MARK
        rows.append([rank, *[str(cell[f]) for f in tables.factors], _status_text(cell),
                     _diverged_text(cell["diverged"], cell["n"]), mean, ci, _fmt(cell["median"], m), spread])
    return header, rows


def selection_rows(tables: SweepTables) -> tuple[list[str], list[list[str]]]:
    sel = tables.selection
    assert sel is not None
    header = [*sel.arms, f"chosen {sel.key}", f"mean {sel.criterion}", "seeds", "every value", "note"]
    rows = []
    for _, arm in sel.table.iterrows():
        values = "; ".join(f"{v}: {_fmt(mean, sel.criterion)} ({n}{f', {d} diverged' if d else ''}"
                           f"{f', {lost} failed or unfinished' if lost else ''})"
                           for v, mean, n, d, lost in arm["values"])
        rows.append([*(str(arm[a]) for a in sel.arms), str(arm["chosen"] if arm["chosen"] is not None else "—"),
                     _fmt(arm["criterion"], sel.criterion), str(arm["n"]), values, arm["note"] or ""])
    return header, rows


def _profile_lines(tables: SweepTables) -> list[str]:
    prof = tables.profile
    assert prof is not None
    m = prof.metric
    within = 100 * prof.within if _is_fraction(m) else prof.within
    unit = (" point" if within == 1 else " points") if _is_fraction(m) else ""
    header = [*prof.arms, f"best {prof.key}", "its mean", "stable range", "width", f"width {_pct(tables)} (seeds resampled)"]
    has_ratio = "width_ratio" in prof.ranges
    if has_ratio:
        header += [f"width / {prof.ranges.attrs['baseline']}", "its interval"]
    rows = []
    for _, arm in prof.ranges.iterrows():
        stable = f"{arm['low']:g} – {arm['high']:g}" if np.isfinite(arm["low"]) else "none"
        width = f"{arm['width']:.3g}×" if np.isfinite(arm["width"]) else "—"
        interval = (f"{arm['width_low']:.3g}× – {arm['width_high']:.3g}×" if np.isfinite(arm["width_low"]) else "—")
        if arm.get("no_range_share", 0) > 0:
            interval += f" (no range in {100 * arm['no_range_share']:.0f}% of draws)"
        row = [*(str(arm[a]) for a in prof.arms), f"{arm['best']:g}" if np.isfinite(arm["best"]) else "—",
               _fmt(arm["best_mean"], m), stable, width, interval]
        if has_ratio:
            row += [f"{arm['width_ratio']:.3g}" if np.isfinite(arm["width_ratio"]) else "—",
                    f"{arm['ratio_low']:.3g} – {arm['ratio_high']:.3g}" if np.isfinite(arm["ratio_low"]) else "—"]
        rows.append(row)
    per_value_header = [*prof.arms, prof.key, "results", "diverged", "failed / unfinished", "mean",
                        f"{_pct(tables)} CI"]
    per_value = [[*(str(c[a]) for a in prof.arms), f"{c['value']:g}", str(int(c["n"])),
                  f"{int(c['diverged'])}/{int(c['n'])}", str(int(c["failed"]) + int(c["incomplete"])),
                  _fmt(c["mean"], m),
                  f"{_fmt(c['ci_low'], m, clip=True)} – {_fmt(c['ci_high'], m, clip=True)}"]
                 for _, c in prof.cells.iterrows()]
    return [f"## Profile over `{prof.key}`", "",
            f"Per arm, the {_metric_title(m)} at every value of `{prof.key}` (mean over seeds, {_pct(tables)} "
            "t-interval; `profile.png`). Stable range: the unbroken run of values around the best one under "
            f"which no seed diverged and whose mean is within {within:g}{unit} of the best such mean (`--within`); "
            "its width is the ratio of its ends. Intervals of the widths and of their ratio to the baseline arm "
            "come from resampling seeds (2,000 draws, the same seeds for every value and arm).", "",
            *_md_table(header, rows), "", *_md_table(per_value_header, per_value), ""]


def _interval_label(tables: SweepTables) -> str:
    kind = "BCa bootstrap" if tables.comparisons.attrs.get("interval") == "bootstrap" else "t"
    return f"{_pct(tables)} CI ({kind})"


def comparison_rows(tables: SweepTables) -> tuple[list[str], list[list[str]]]:
    m, comp = tables.metric, tables.comparisons
    tost = comp.attrs.get("margin") is not None
    header = [*tables.factors, "pairs", "diverged", "difference", _interval_label(tables), "g_z", "p (t)",
              "p (Wilcoxon)", "p Holm (t)", "p Holm (W)", *(["p Holm (TOST)"] if tost else []), "verdict",
              "seeds for 80% power", "note"]
    rows = []
    for _, row in comp.iterrows():
        ci = "—" if pd.isna(row["ci_low"]) else f"{_fmt(row['ci_low'], m, True)} – {_fmt(row['ci_high'], m, True)}"
        diverged = f"{int(row['diverged'])} vs {int(row['baseline_diverged'])}" if row["n_pairs"] else "—"
        needed = "—" if pd.isna(row["seeds_needed"]) else f"{int(row['seeds_needed'])}"
        rows.append([*[str(row[f]) for f in tables.factors], str(int(row["n_pairs"])), diverged,
                     _fmt(row["mean_diff"], m, True), ci, "—" if pd.isna(row["g_z"]) else f"{row['g_z']:.2f}",
                     _p(row["p_ttest"]), _p(row["p_wilcoxon"]), _p(row["p_ttest_holm"]), _p(row["p_wilcoxon_holm"]),
                     *([_p(row["p_tost_holm"])] if tost else []), row["verdict"], needed,
                     row["note"] if isinstance(row["note"], str) else ""])
    return header, rows


def effect_rows(tables: SweepTables) -> tuple[list[str], list[list[str]]]:
    m = tables.metric
    header = ["factor", "level", "mean of cell means", "cell means (min – max)", "cells with results", "diverged"]
    rows = []
    for _, r in tables.effects.iterrows():
        cells = f"{int(r['cells'])}/{int(r['cells_total'])}"
        if r["incomplete_cells"]:
            cells += f" ({int(r['incomplete_cells'])} incomplete{INCOMPLETE_MARK})"
        spread = "—" if pd.isna(r["cell_min"]) else f"{_fmt(r['cell_min'], m)} – {_fmt(r['cell_max'], m)}"
        rows.append([str(r["factor"]), str(r["level"]), _fmt(r["mean"], m), spread, cells,
                     _diverged_text(r["diverged"], r["results"])])
    return header, rows


def anova_rows(tables: SweepTables) -> tuple[list[str], list[list[str]]]:
    header = ["term", "df", "sum of squares", "F", "p", "partial η²"]
    rows = []
    for _, r in tables.anova.iterrows():
        rows.append([r["term"], f"{r['df']:g}", f"{r['sum_sq']:.4g}", "—" if pd.isna(r["F"]) else f"{r['F']:.3g}",
                     _p(r["p"]), "—" if pd.isna(r["partial_eta2"]) else f"{r['partial_eta2']:.2f}"])
    return header, rows


def _interaction_p(tables: SweepTables, a: str, b: str) -> float:
    if tables.anova is None or not len(tables.anova):
        return math.nan
    terms = {f"{a} × {b}", f"{b} × {a}"}
    match = tables.anova[tables.anova["term"].isin(terms)]
    return float(match["p"].iloc[0]) if len(match) else math.nan


def flip_lines(tables: SweepTables) -> list[str]:
    alpha = 1 - tables.cells.attrs.get("confidence", 0.95)
    lines = []
    for flip in tables.flips:
        p = _interaction_p(tables, flip["factor"], flip["across"])
        where = lambda levels: ", ".join(f"{lv} ({_fmt(flip['diffs'][lv], tables.metric, True)})" for lv in levels)  # noqa: E731
        term = f"the {flip['factor']} × {flip['across']} interaction"
        verdict = (f"{term} is significant" if p < alpha else f"{term} is not significant") \
            if math.isfinite(p) else f"{term} is not in the ANOVA"
        lines.append(f"- {flip['factor']} {flip['high']} − {flip['low']} changes sign with {flip['across']}: "
                     f"positive at {where(flip['positive'])}, negative at {where(flip['negative'])}; "
                     f"{verdict} (p {_p(p)}).")
    return lines


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return out + ["| " + " | ".join(r) + " |" for r in rows]


def _summary_line(tables: SweepTables) -> str:
    counts = ", ".join(f"{n} {s}" for s, n in tables.counts.items() if n or s in STATUSES)
    return f"{len(tables.runs)} runs: {counts}"


_POLICY = ("A diverged run is a result, never dropped: its accuracy is that of its final model (a sample "
           "with a NaN output counts as wrong), and a value that is not finite (a diverged run's loss, a target "
           "never reached) is worse than every finite one (±∞: the mean is then infinite and the median ranks). "
           "Failed, unfinished and missing runs are not results; their cells are marked "
           f"{INCOMPLETE_MARK} wherever they are ranked.")


def to_markdown(tables: SweepTables) -> str:
    m = tables.metric
    pct = _pct(tables)
    lines = [f"# bnbench report: {tables.sweep_dir.name}", "", _summary_line(tables) + ".", ""]
    lines += [f"> **Warning:** {w}" for w in tables.warnings] + ([""] if tables.warnings else [])
    if tables.constants:
        lines += ["Fixed: " + ", ".join(f"`{k}={v}`" for k, v in tables.constants.items()), ""]
    lines += [f"Metric: **{_metric_title(m)}**; mean ± std (n−1) over the results (completed and diverged seeds) "
              f"of each cell, {pct} t-interval of the mean; rank 1 is best. {_POLICY}", ""]
    if tables.selection is not None:
        sel = tables.selection
        lines += [f"## `{sel.key}` chosen per arm", "",
                  f"Each arm's value of `{sel.key}` is the one with the best mean {_metric_title(sel.criterion)} over "
                  "its seeds (the validation split; the test set plays no part). A diverged seed scores the worst "
                  "value, so a value under which a seed diverged is chosen only when every value had one. Every "
                  f"table below compares the arms at their own chosen values. Each value: mean {_metric_title(sel.criterion)} "
                  "(results, diverged).", "", *_md_table(*selection_rows(tables)), ""]
    if tables.profile is not None:
        lines += _profile_lines(tables)
    lines += ["## Cells", "", *_md_table(*cell_rows(tables)), ""]
    if (~tables.cells["complete"] & tables.cells["rank"].notna()).any():
        lines += [f"{INCOMPLETE_MARK} the cell has failed, unfinished or missing runs: its statistics cover only "
                  "the results it has.", ""]
    if tables.comparisons is not None and len(tables.comparisons):
        comp = tables.comparisons
        label = comp["baseline"].iloc[0]
        margin = comp.attrs.get("margin")
        unit = " points" if _is_fraction(m) else ""
        equivalence = (f"equivalent when the Holm-adjusted paired TOST puts the difference within ±{_fmt(margin, m)}{unit} "
                       "(`--margin`)" if margin is not None else "equivalence is not tested (`--margin` sets a margin)")
        lines += [f"## Against the baseline `{label}`", "",
                  "Each cell minus the baseline cell that matches it on every other factor, paired by seed "
                  "(runs of one seed share the data order and the initial weights of every layer they have in "
                  f"common), over the seeds with a result in both. The interval is the paired {pct} "
                  + ("BCa bootstrap interval (it covers less than its level below about 15 pairs)"
                     if comp.attrs.get("interval") == "bootstrap" else "t-interval of the mean difference")
                  + ", not adjusted for the rows; p-values are Holm-adjusted over the rows of this table. "
                  "g_z = mean difference / std of the differences, with Hedges' small-sample correction. "
                  f"Verdict at α = {1 - tables.cells.attrs.get('confidence', 0.95):.2g}: better or worse when the "
                  "Holm-adjusted paired t-test (the Wilcoxon test where a diverged run has no finite value) "
                  f"rejects the hypothesis of no difference; {equivalence}; otherwise inconclusive. Seeds for 80% "
                  "power: the pairs a paired t-test would need to detect "
                  + (f"a difference of {_fmt(comp.attrs['min_effect'], m)}{unit} (`--min-effect`)"
                     if comp.attrs.get("min_effect") is not None else "the observed difference (`--min-effect` sets one)")
                  + " at this α, unadjusted.", "",
                  *_md_table(*comparison_rows(tables)), ""]
        lines += [f"> {note}" for note in tables.notes] + ([""] if tables.notes else [])
    if tables.anova is not None and len(tables.factors) > 1:
        lines += ["## Factorial ANOVA", "",
                  f"Type-II ANOVA (statsmodels) of the {_metric_title(m)} on every swept factor and their "
                  "interactions, over the results with a finite value; sums of squares in the metric's own units "
                  "(accuracy as a fraction); partial η² = SS / (SS + SS residual). "
                  "Where an interaction is significant, the main effects and marginal means below average over "
                  "effects that differ between levels: read the interaction tables first.", ""]
        lines += [f"> {note}" for note in tables.anova_notes] + ([""] if tables.anova_notes else [])
        if len(tables.anova):
            lines += [*_md_table(*anova_rows(tables)), ""]
    if tables.effects is not None and len(tables.factors) > 1:
        lines += ["## Main effects", "",
                  "Marginal mean of each level: the unweighted mean of its cells' means (each cell counts once, "
                  "however many of its seeds finished); the divergence rate over all its results.", "",
                  *_md_table(*effect_rows(tables)), ""]
    if tables.interactions:
        lines += ["## Interactions", ""]
        lines += (["Where a factor's effect changes sign across the levels of another (means of cell means). The p-value "
                   "is that of the whole interaction in the ANOVA, not of this pair of levels: compare the pair with "
                   "`--baseline` set to one of them.", "", *flip_lines(tables), ""]
                  if tables.flips else ["No factor's effect changes sign across the levels of another.", ""])
    for (a, b), table in tables.interactions.items():
        lines += [f"### {a} × {b}", "", f"Mean {_metric_title(m)} per {a} (rows) and {b} (columns): the "
                  "unweighted mean of the matching cells' means, with the divergence rate where runs diverged.", ""]
        header = [f"{a} \\ {b}", *[str(c) for c in table[b].cat.categories]]
        rows = []
        for level_a in table[a].cat.categories:
            row = [str(level_a)]
            for _, entry in table[table[a] == level_a].iterrows():
                text = _fmt(entry["mean"], m)
                if entry["diverged"]:
                    text += f" ({int(entry['diverged'])}/{int(entry['results'])} div.)"
                if not entry["complete"]:
                    text += INCOMPLETE_MARK
                row.append(text)
            rows.append(row)
        lines += [*_md_table(header, rows), ""]
    lines += diagnostics_report.markdown_lines(tables.diagnostics, tables.factors)
    if tables.plots:
        lines += ["## Plots", ""]
        lines += [f"![{name}]({path.name})" for name, path in tables.plots.items()] + [""]
    unfinished = tables.runs[tables.runs["status"].isin(["failed", "incomplete"])]
    if len(unfinished):
        lines += ["## Runs without a result", ""]
        for _, run in unfinished.iterrows():
            reason = run["error"] if isinstance(run["error"], str) else "no summary.json (killed or still running)"
            lines.append(f"- `{run['run']}`: {run['status']}: {reason}")
        lines.append("")
    lines += ["## Provenance", "", *_provenance_lines(tables.provenance)]
    return "\n".join(lines) + "\n"


def _provenance_lines(p: Mapping[str, Any]) -> list[str]:
    git = p.get("git") or {}
    commit = git.get("commit")
    code = f"{commit[:12]}{' (uncommitted changes)' if git.get('dirty') else ''}" if commit else "not a git checkout"
    lines = [f"- command: `{p['command']}`" if p.get("command") else "- command: not recorded",
             f"- bnbench code: {code}",
             "- versions: " + (", ".join(f"{k} {v}" for k, v in p.get("versions", {}).items()) or "not recorded"),
             f"- device: {', '.join(p.get('devices') or ['not recorded'])}" + (f" on {p['host']}" if p.get("host") else ""),
             f"- runs: first started {p.get('first_run_started') or '—'}, last finished "
             f"{p.get('last_run_finished') or '—'}; report built {p.get('report_built')}"]
    stacking = p.get("stacking") or {}
    if stacking.get("stacked"):
        sizes = ", ".join(map(str, stacking["sizes"]))
        lines.append(f"- stacked seeds: {stacking['stacked']} result(s) trained in stacks of {sizes}, "
                     f"{stacking['unstacked']} on their own")
    elif stacking:
        lines.append("- stacked seeds: none (every run trained on its own)")
    if p.get("source") == "results.csv":
        lines.append("- rebuilt from results.csv: the run folders are not here (no learning curves or diagnostics)")
    if p.get("wall_per_run_s"):
        mean, low, high = p["wall_per_run_s"]
        lines.append(f"- wall time: {p['wall_total_s']:.1f} s in all; per run {mean:.1f} s (min {low:.1f}, max {high:.1f})")
    return lines


# ------------------------------------------------------------------ writing and printing


def _render_plots(tables: SweepTables, confidence: float, out_dir: Path) -> None:
    from bnbench import plots

    out = {}
    # a sweep rebuilt from results.csv alone has no metrics.csv to draw curves from
    has_history = tables.runs["status"].isin(stats.RESULTS).any() and tables.runs.attrs.get("source") != "results.csv"
    if has_history:
        curve = "test_acc" if "acc" in tables.metric else "test_loss"
        out["learning curves"] = plots.learning_curves(tables.sweep_dir, tables.runs, tables.factors,
                                                       out_dir / "learning_curves.png", metric=curve,
                                                       confidence=confidence)
    if (tables.cells["n"] > 0).any():
        out["final metric per cell"] = plots.cell_intervals(tables.cells, tables.factors,
                                                            out_dir / "cells.png", metric=tables.metric)
    if tables.profile is not None:
        out["profile"] = plots.profile(tables.profile, out_dir / "profile.png", confidence)
    out.update(diagnostics_report.plot_diagnostics(tables.sweep_dir, tables.runs, tables.factors, out_dir))
    tables.plots = out


def output_dir(sweep_dir: Path, out: Path | None) -> Path:
    """Where the report of ``sweep_dir`` goes: ``out`` when given; else the sweep folder, but
    never a single run's folder or the folder of single runs (results/runs) unasked."""
    if out is not None:
        return out
    if (sweep_dir / records.SUMMARY).is_file():
        raise ReportError(f"{sweep_dir} is a single run's folder; a report of it goes elsewhere: add --out FOLDER")
    if sweep_dir.name == "runs" and not (sweep_dir / "multirun.yaml").is_file():
        raise ReportError(f"{sweep_dir} holds single runs, not a sweep; to tabulate them together add --out FOLDER")
    return sweep_dir


def write(tables: SweepTables, options: ReportOptions | None = None) -> list[Path]:
    """Write results.csv and the report in the requested formats; return the paths."""
    options = options or ReportOptions()
    unknown = set(options.formats) - set(FORMATS)
    if unknown:
        raise ReportError(f"unknown format(s) {sorted(unknown)}; choose from {', '.join(FORMATS)}")
    d = output_dir(tables.sweep_dir, options.out)
    d.mkdir(parents=True, exist_ok=True)
    if options.plots:
        _render_plots(tables, options.confidence, d)
    every_run = tables.all_runs if tables.all_runs is not None else tables.runs  # one row per run, always
    public_runs = every_run[[c for c in every_run.columns if not c.startswith("_")]]
    written = [d / "results.csv"]
    records.write_text(written[0], public_runs.to_csv(index=False))
    interactions = None
    if tables.interactions:  # one long table: the two factors of each pair and their levels
        interactions = pd.concat(
            [t.rename(columns={a: "level_a", b: "level_b"}).assign(factor_a=a, factor_b=b)
             for (a, b), t in tables.interactions.items()], ignore_index=True)
        interactions = interactions[["factor_a", "level_a", "factor_b", "level_b",
                                     *[c for c in interactions.columns if c not in
                                       ("factor_a", "level_a", "factor_b", "level_b")]]]
    frames = {"cells": tables.cells, "comparisons": tables.comparisons, "main_effects": tables.effects,
              "anova": tables.anova, "interactions": interactions, "diagnostics_summary": tables.diagnostics,
              "profile": None if tables.profile is None else tables.profile.cells,
              "stable_ranges": None if tables.profile is None else tables.profile.ranges,
              "selection": None if tables.selection is None else tables.selection.table.assign(key=tables.selection.key,
                                                                                             criterion=tables.selection.criterion)}
    if "md" in options.formats:
        written.append(d / "report.md")
        records.write_text(written[-1], to_markdown(tables))
    if "csv" in options.formats:
        for name, frame in frames.items():
            if frame is not None:
                written.append(d / f"{name}.csv")
                records.write_text(written[-1], frame.to_csv(index=False))
    if "latex" in options.formats:
        written.append(d / "report.tex")
        records.write_text(written[-1], to_latex(tables))
    return written


def to_latex(tables: SweepTables) -> str:
    """Booktabs tables (cells; comparisons) ready for \\input in a paper."""
    def table(header: list[str], rows: list[list[str]], caption: str) -> str:
        escape = lambda s: s.replace("_", r"\_").replace("%", r"\%").replace("±", r"$\pm$").replace("—", "--")  # noqa: E731
        body = "\n".join(" & ".join(escape(c) for c in r) + r" \\" for r in rows)
        return (f"\\begin{{table}}[ht]\n\\centering\n\\caption{{{escape(caption)}}}\n"
                f"\\begin{{tabular}}{{{'l' * len(header)}}}\n\\toprule\n"
                + " & ".join(escape(h) for h in header) + " \\\\\n\\midrule\n" + body
                + "\n\\bottomrule\n\\end{tabular}\n\\end{table}\n")

    parts = [f"% bnbench report: {tables.sweep_dir.name}; needs \\usepackage{{booktabs}}\n",
             table(*cell_rows(tables), f"{_metric_title(tables.metric)} per cell")]
    if tables.comparisons is not None and len(tables.comparisons):
        parts.append(table(*comparison_rows(tables),
                           f"Paired differences against {tables.comparisons['baseline'].iloc[0]}"))
    if tables.anova is not None and len(tables.anova):
        parts.append(table(*anova_rows(tables), f"Type-II ANOVA of the {_metric_title(tables.metric)}"))
    return "\n".join(parts)


def print_tables(tables: SweepTables, console: Console | None = None) -> None:
    console = console or Console()
    for warning in tables.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}", markup=True, highlight=False)
    wide = console.width >= 120  # an 80-column terminal gets the columns that matter most, unwrapped
    if tables.selection is not None:
        header, rows = selection_rows(tables)
        keep = [i for i, h in enumerate(header) if wide or h != "every value"]
        chosen = Table(title=f"{tables.selection.key} chosen per arm on the validation split", title_justify="left")
        for i in keep:
            chosen.add_column(header[i], justify="left" if i < len(tables.selection.arms) + 1 else "right")
        for row in rows:
            chosen.add_row(*(row[i] for i in keep))
        console.print(chosen)
    header, rows = cell_rows(tables)
    if not wide:
        keep = [i for i, h in enumerate(header) if h not in ("median", "min – max")]
        header, rows = [header[i] for i in keep], [[r[i] for i in keep] for r in rows]
    table = Table(title=f"{tables.sweep_dir}  ({_summary_line(tables)})\n{_metric_title(tables.metric)}",
                  title_justify="left")
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if 0 < i <= len(tables.factors) else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    if tables.comparisons is not None and len(tables.comparisons):
        header, rows = comparison_rows(tables)
        dropped = ("p (t)", "p (Wilcoxon)", "p Holm (W)", "g_z", "note") + (() if wide else ("p Holm (TOST)",))
        keep = [i for i, h in enumerate(header) if h not in dropped]
        header, rows = [header[i] for i in keep], [[r[i] for i in keep] for r in rows]
        comp = Table(title=f"against {tables.comparisons['baseline'].iloc[0]} (paired by seed)", title_justify="left")
        for i, name in enumerate(header):
            comp.add_column(name, justify="left" if i < len(tables.factors) else "right")
        for row in rows:
            comp.add_row(*row)
        console.print(comp)
    if tables.anova is not None and len(tables.anova):
        alpha = 1 - tables.cells.attrs.get("confidence", 0.95)
        strong = tables.anova[(tables.anova["order"] >= 2) & (tables.anova["p"] < alpha)]
        if len(strong):
            console.print("ANOVA: significant interactions " + ", ".join(
                f"{r.term} (p {_p(r.p)})" for r in strong.itertuples()) + "; read report.md before the marginal "
                "means", highlight=False)
    if tables.constants:
        console.print("fixed: " + " ".join(f"{k}={v}" for k, v in tables.constants.items()), style="dim")
    for _, run in tables.failed_runs.iterrows():
        console.print(f"[red]failed[/red] {run['run']}: {run['error']}", markup=True, highlight=False)
