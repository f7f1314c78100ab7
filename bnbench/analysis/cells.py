"""Cells of a sweep: each run's score under the one divergence policy (see bnbench.analysis.stats),
the runs split into cells, each cell's interval, status counts and rank, and the time a run
took to reach a target accuracy."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pandas as pd
from scipy import stats as st

from bnbench import records

STATUSES, RESULTS = records.STATUSES, records.RESULTS  # the one status vocabulary (bnbench.records.schema)
COUNT_COLUMNS = ["runs", *STATUSES, "missing"]
STAT_COLUMNS = ["n", "div_rate", "mean", "std", "ci_low", "ci_high", "median", "min", "max"]
# Time-to-accuracy columns are named "<unit>_to_acc_<target>"; units map to metrics.csv columns.
TIME_UNITS = {"epochs": "epoch", "steps": "step", "seconds": "wall_s"}
INTERVALS = ("t", "bootstrap")
BOOTSTRAP_MIN_PAIRS = 15  # below this a BCa interval of a mean covers well under its nominal level
POWER = 0.8  # the power at which seeds_needed is computed


def higher_is_better(metric: str) -> bool:
    """Accuracies go up; losses and times to a target go down."""
    return not ("loss" in metric or "_to_acc_" in metric)


def _levels(runs: pd.DataFrame, factor: str) -> list[str]:
    col = runs[factor]
    if isinstance(col.dtype, pd.CategoricalDtype):  # collect_runs keeps the sweep's value order
        return [str(v) for v in col.cat.categories]
    return sorted(col.dropna().astype(str).unique())


def with_levels(runs: pd.DataFrame, factors: list[str], extra: Iterable[Mapping] = ()) -> pd.DataFrame:
    """A copy whose factor columns are ordered string categoricals, so that values compare as
    strings (configs arrive as "0.1", not 0.1) and tables sort in the sweep's order."""
    runs = runs.copy()
    extra = list(extra)
    for f in factors:
        levels = list(dict.fromkeys([*_levels(runs, f), *(str(c[f]) for c in extra)]))
        runs[f] = pd.Categorical(runs[f].astype(str), categories=levels, ordered=True)
    return runs


def check_metric(runs: pd.DataFrame, metric: str) -> None:
    if metric not in runs:
        numeric = [c for c in runs.columns if c.startswith(("final_", "best_")) or "_to_acc_" in c]
        raise ValueError(f"no metric {metric!r} in the runs table; available: {numeric}")


def scores(runs: pd.DataFrame, metric: str) -> pd.Series:
    """Each run's score under the divergence policy (module docstring): the metric for a
    completed or diverged run; -inf/+inf (the worst end) for a diverged run without a finite
    value and for an infinite value (a target never reached); NaN for a run that is not a
    result (failed, incomplete) or a completed run whose record lacks the value."""
    check_metric(runs, metric)
    values = pd.to_numeric(runs[metric], errors="coerce").astype(float)
    worst = -np.inf if higher_is_better(metric) else np.inf
    diverged = runs["status"] == "diverged"
    completed = runs["status"] == "completed"
    out = pd.Series(np.nan, index=runs.index)
    out[diverged] = values[diverged].where(np.isfinite(values[diverged]), worst)
    # A completed run's infinity is explicit (a target never reached: +inf); NaN means its record
    # lacks the value (an unreadable metrics.csv), which is not a score: the cell is marked.
    out[completed] = values[completed].where(~np.isinf(values[completed]), worst)
    return out


def results_of(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The result runs of ``runs``, with the metric column replaced by their scores."""
    scored = scores(runs, metric)
    out = runs[scored.notna()].copy()
    out[metric] = scored[out.index]
    return out


def split_cells(runs: pd.DataFrame, factors: list[str], sort: bool = True) -> dict[tuple, pd.DataFrame]:
    """The runs of each combination of ``factors``' values, keyed by the tuple of values (one
    group, keyed (), without factors); in the factors' level order, or with ``sort=False`` in
    order of first appearance."""
    if not factors:
        return {(): runs}
    return {key if isinstance(key, tuple) else (key,): g for key, g in runs.groupby(factors, observed=True, sort=sort)}


def _cell_status(counts: Mapping[str, int]) -> str:
    if counts["runs"] == 0:
        return "missing"
    if counts["completed"] == counts["runs"] and counts["missing"] == 0:
        return "completed"
    if counts["completed"]:
        return "partial"
    return max(STATUSES[1:], key=lambda s: counts[s])  # what happened to most of its runs


def mean_interval(x: np.ndarray, confidence: float) -> dict[str, float]:
    """Mean, sample std, the t-interval of the mean (scipy), median, min and max. With an
    infinite score (a diverged run's loss) the mean is infinite and std and interval undefined."""
    n = len(x)
    out = dict(n=n, mean=np.nan, std=np.nan, ci_low=np.nan, ci_high=np.nan, median=np.nan, min=np.nan, max=np.nan)
    if n == 0:
        return out
    out.update(mean=float(np.mean(x)), median=float(np.median(x)), min=float(np.min(x)), max=float(np.max(x)))
    if n >= 2 and np.all(np.isfinite(x)):
        with warnings.catch_warnings():  # identical values: scipy warns, the interval is [m, m]
            warnings.simplefilter("ignore", RuntimeWarning)
            ci = st.ttest_1samp(x, 0.0).confidence_interval(confidence)
        out.update(std=float(np.std(x, ddof=1)), ci_low=float(ci.low), ci_high=float(ci.high))
    return out


def cell_stats(
    runs: pd.DataFrame,
    factors: list[str],
    metric: str = "final_test_acc",
    confidence: float = 0.95,
    expected_cells: Iterable[Mapping[str, str]] | None = None,
) -> pd.DataFrame:
    """One row per cell: factor values, ``status`` (completed | partial | diverged | failed |
    incomplete | missing), counts ``runs, completed, diverged, failed, incomplete, missing``,
    ``complete`` (no failed, unfinished or missing run) and, over the cell's results (completed
    and diverged seeds, scored by :func:`scores`), ``n, div_rate, mean, std, ci_low, ci_high,
    median, min, max``.

    ``missing`` counts the seeds the sweep ran elsewhere but not in this cell; a cell listed in
    ``expected_cells`` (dicts factor -> value) without any run gets status ``missing``.
    """
    expected = list(expected_cells or [])
    runs = with_levels(runs, factors, expected)
    runs["_score"] = scores(runs, metric)
    n_seeds = max(1, runs["seed"].dropna().nunique())
    groups = split_cells(runs, factors)
    for cell in expected:
        groups.setdefault(tuple(str(cell[f]) for f in factors), runs.iloc[0:0])
    rows = []
    for key, group in groups.items():
        counts = {"runs": len(group), **{s: int((group["status"] == s).sum()) for s in STATUSES}}
        counts["missing"] = max(0, n_seeds - len(group))
        values = group["_score"].dropna().to_numpy()
        stats = mean_interval(values, confidence)
        stats["div_rate"] = counts["diverged"] / len(values) if len(values) else np.nan
        unscored = int((group["status"].isin(RESULTS) & group["_score"].isna()).sum())  # a record without the value
        complete = counts["failed"] + counts["incomplete"] + counts["missing"] + unscored == 0 and counts["runs"] > 0
        rows.append({**dict(zip(factors, key)), "status": _cell_status(counts), **counts, "complete": complete,
                     **stats})
    out = pd.DataFrame(rows, columns=[*factors, "status", *COUNT_COLUMNS, "complete", *STAT_COLUMNS])
    for f in factors:
        out[f] = pd.Categorical(out[f], categories=runs[f].cat.categories, ordered=True)
    out = out.sort_values(factors, kind="stable").reset_index(drop=True) if factors else out
    out.attrs.update(metric=metric, confidence=confidence)
    return out


def _rank(mean: pd.Series, median: pd.Series, higher_better: bool) -> pd.Series:
    """1 = best by mean, ties (two infinite means) broken by the median, equal keys share the
    lower rank; NaN for cells without a result."""
    sign = -1.0 if higher_better else 1.0
    keys = [(sign * m, sign * d) if not math.isnan(m) else None for m, d in zip(mean, median)]
    ranks = [np.nan if k is None else 1 + sum(other is not None and other < k for other in keys) for k in keys]
    return pd.Series(ranks, index=mean.index, dtype=float)


def rank_cells(
    runs: pd.DataFrame,
    factors: list[str],
    metric: str = "final_test_acc",
    higher_better: bool | None = None,
    confidence: float = 0.95,
    expected_cells: Iterable[Mapping[str, str]] | None = None,
) -> pd.DataFrame:
    """:func:`cell_stats` sorted best first, with a ``rank`` column (1 = best, ties share the
    lower rank; see :func:`_rank`). Cells without a result come last with rank NaN; the
    ``complete`` column says which ranked cells are missing runs. The direction comes from the
    metric name unless ``higher_better`` is given."""
    if higher_better is None:
        higher_better = higher_is_better(metric)
    cells = cell_stats(runs, factors, metric, confidence, expected_cells)
    cells.insert(0, "rank", _rank(cells["mean"], cells["median"], higher_better))
    cells = cells.sort_values("rank", na_position="last", kind="stable")
    cells.attrs.update(higher_better=higher_better)
    return cells.reset_index(drop=True)


def time_to_accuracy(run_dir: Path, target: float, unit: str = "epochs") -> float:
    """Epochs (or steps, or training seconds) at the first evaluation whose test accuracy reached
    ``target``; +inf if it never did (slower than any time); NaN if the run has no readable
    metrics (unknown). Resolution is the evaluation interval (once per epoch by default)."""
    time_to_acc_column(target, unit)  # checks the unit
    column = TIME_UNITS[unit]
    path = Path(run_dir) / records.METRICS
    try:
        metrics = pd.read_csv(path)
    except (OSError, ValueError):  # missing, empty, unparsable or not text (pandas' errors are ValueErrors)
        return math.nan
    if metrics.empty or "test_acc" not in metrics or column not in metrics:
        return math.nan  # no evaluation: unknown
    hit = metrics[pd.to_numeric(metrics["test_acc"], errors="coerce") >= target]
    return float(hit[column].iloc[0]) if len(hit) else math.inf


def time_to_acc_column(target: float, unit: str = "epochs") -> str:
    if unit not in TIME_UNITS:
        raise ValueError(f"unit must be one of {list(TIME_UNITS)}, not {unit!r}")
    return f"{unit}_to_acc_{target:g}"


def add_time_to_accuracy(runs: pd.DataFrame, sweep_dir: Path, target: float,
                         unit: str = "epochs") -> pd.DataFrame:
    """A copy of ``runs`` with a column ``<unit>_to_acc_<target>`` (see :func:`time_to_acc_column`)
    read from each run's metrics.csv; use that column name as ``metric`` in the other functions.
    A run that never reached the target gets +inf (never is slower than any time); one without
    readable metrics gets NaN, which :func:`scores` does not score."""
    column = time_to_acc_column(target, unit)
    runs = runs.copy()
    runs[column] = [time_to_accuracy(Path(sweep_dir) / str(r), target, unit) for r in runs["run"]]
    return runs
