"""Statistics over a sweep's runs: per-cell intervals, paired comparisons with a baseline,
marginal means and rankings.

Every function takes the ``runs`` table of :func:`bnbench.report.collect_runs` (one row per
run folder) and the list of swept factors. A *cell* is one combination of factor values; its
seeds are the repetitions. Statistics use completed runs with a finite metric only, but every
cell that has a run (or is listed in ``expected_cells``) appears in the output with its status
counts, so a placement that diverged on every seed is shown, never silently dropped.
Tests and intervals come from scipy.stats; only Holm's correction (no scipy function) is here.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pandas as pd
from scipy import stats as st

from bnbench import records

STATUSES = ("completed", "diverged", "failed", "incomplete")  # as in report (which may import this module)
COUNT_COLUMNS = ["runs", *STATUSES, "missing"]
STAT_COLUMNS = ["n", "mean", "std", "ci_low", "ci_high", "min", "max"]
# Time-to-accuracy columns are named "<unit>_to_acc_<target>"; units map to metrics.csv columns.
TIME_UNITS = {"epochs": "epoch", "steps": "step", "seconds": "wall_s"}


def higher_is_better(metric: str) -> bool:
    """Accuracies go up; losses and times to a target go down."""
    return not ("loss" in metric or "_to_acc_" in metric)


def holm(pvalues: Iterable[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1). NaNs stay NaN and
    are not counted in the family size."""
    p = np.asarray(list(pvalues), dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = len(ok)
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    scaled = (m - np.arange(m)) * p[order]  # smallest p times m, next times m-1, ...
    out[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return out


# ---------------------------------------------------------------------------- helpers


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


def _completed(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    if metric not in runs:
        numeric = [c for c in runs.columns if c.startswith(("final_", "best_")) or "_to_acc_" in c]
        raise ValueError(f"no metric {metric!r} in the runs table; available: {numeric}")
    values = pd.to_numeric(runs[metric], errors="coerce")
    done = runs[(runs["status"] == "completed") & np.isfinite(values)].copy()
    done[metric] = values[done.index].astype(float)
    return done


def split_cells(runs: pd.DataFrame, factors: list[str]) -> dict[tuple, pd.DataFrame]:
    if not factors:
        return {(): runs}
    return {key: g for key, g in runs.groupby(factors, observed=True, sort=True)}


def _cell_status(counts: Mapping[str, int]) -> str:
    if counts["runs"] == 0:
        return "missing"
    if counts["completed"] == counts["runs"] and counts["missing"] == 0:
        return "completed"
    if counts["completed"]:
        return "partial"
    return max(STATUSES[1:], key=lambda s: counts[s])  # what happened to most of its runs


def _interval(x: np.ndarray, confidence: float) -> dict[str, float]:
    """Mean, sample std and the t-based confidence interval of the mean (scipy)."""
    n = len(x)
    out = dict(n=n, mean=np.nan, std=np.nan, ci_low=np.nan, ci_high=np.nan, min=np.nan, max=np.nan)
    if n == 0:
        return out
    out.update(mean=float(np.mean(x)), min=float(np.min(x)), max=float(np.max(x)))
    if n >= 2:
        with warnings.catch_warnings():  # identical values: scipy warns, the interval is [m, m]
            warnings.simplefilter("ignore", RuntimeWarning)
            ci = st.ttest_1samp(x, 0.0).confidence_interval(confidence)
        out.update(std=float(np.std(x, ddof=1)), ci_low=float(ci.low), ci_high=float(ci.high))
    return out


# ---------------------------------------------------------------------------- per cell


def cell_stats(
    runs: pd.DataFrame,
    factors: list[str],
    metric: str = "final_test_acc",
    confidence: float = 0.95,
    expected_cells: Iterable[Mapping[str, str]] | None = None,
) -> pd.DataFrame:
    """One row per cell: factor values, ``status`` (completed | partial | diverged | failed |
    incomplete | missing), counts ``runs, completed, diverged, failed, incomplete, missing``
    and, over the completed seeds with a finite metric, ``n, mean, std, ci_low, ci_high, min, max``.

    ``missing`` counts the seeds the sweep ran elsewhere but not in this cell; a cell listed in
    ``expected_cells`` (dicts factor -> value) without any run gets status ``missing``.
    """
    expected = list(expected_cells or [])
    runs = with_levels(runs, factors, expected)
    n_seeds = max(1, runs["seed"].dropna().nunique())
    groups = split_cells(runs, factors)
    for cell in expected:
        groups.setdefault(tuple(str(cell[f]) for f in factors), runs.iloc[0:0])
    rows = []
    for key, group in groups.items():
        counts = {"runs": len(group), **{s: int((group["status"] == s).sum()) for s in STATUSES}}
        counts["missing"] = max(0, n_seeds - len(group))
        values = _completed(group, metric)[metric].to_numpy()
        rows.append({**dict(zip(factors, key)), "status": _cell_status(counts), **counts,
                     **_interval(values, confidence)})
    out = pd.DataFrame(rows, columns=[*factors, "status", *COUNT_COLUMNS, *STAT_COLUMNS])
    for f in factors:
        out[f] = pd.Categorical(out[f], categories=runs[f].cat.categories, ordered=True)
    out = out.sort_values(factors, kind="stable").reset_index(drop=True) if factors else out
    out.attrs.update(metric=metric, confidence=confidence)
    return out


def rank_cells(
    runs: pd.DataFrame,
    factors: list[str],
    metric: str = "final_test_acc",
    higher_better: bool | None = None,
    confidence: float = 0.95,
    expected_cells: Iterable[Mapping[str, str]] | None = None,
) -> pd.DataFrame:
    """:func:`cell_stats` sorted best first by mean, with a ``rank`` column (1 = best, ties share
    the lower rank). Cells without a completed run come last with rank NaN. The direction comes
    from the metric name unless ``higher_better`` is given."""
    if higher_better is None:
        higher_better = higher_is_better(metric)
    cells = cell_stats(runs, factors, metric, confidence, expected_cells)
    cells.insert(0, "rank", cells["mean"].rank(ascending=not higher_better, method="min"))
    cells = cells.sort_values("mean", ascending=not higher_better, na_position="last", kind="stable")
    cells.attrs.update(higher_better=higher_better)
    return cells.reset_index(drop=True)


# ---------------------------------------------------------------------------- vs baseline


def _paired_tests(a: np.ndarray, b: np.ndarray, confidence: float, n_resamples: int,
                  random_state: int) -> dict:
    """Paired tests of cell values ``a`` against baseline values ``b`` (same seeds, same order);
    NaN with a note where a statistic is undefined."""
    d = a - b
    out = dict(mean_diff=np.nan, ci_low=np.nan, ci_high=np.nan, d_z=np.nan,
               p_ttest=np.nan, p_wilcoxon=np.nan, note="")
    if len(d) < 2:
        out["note"] = f"{len(d)} paired seed(s): need 2"
        return out
    # Differences at float rounding level (0.6 - 0.5 vs 0.7 - 0.6) count as exact.
    tol = 1e-12 * max(1.0, float(np.max(np.abs(a))), float(np.max(np.abs(b))))
    d = np.where(np.abs(d) <= tol, 0.0, d)
    out["mean_diff"] = float(np.mean(d))
    if np.all(d == 0):
        out["note"] = "all differences are zero"
        return out
    sd = float(np.std(d, ddof=1))
    constant = sd <= tol
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # near-constant data; degenerate bootstrap (-> NaN)
        if not constant:
            out["d_z"] = out["mean_diff"] / sd
            out["p_ttest"] = float(st.ttest_rel(a, b).pvalue)
        else:
            out["note"] = "constant differences: t-test undefined"
        try:
            out["p_wilcoxon"] = float(st.wilcoxon(d).pvalue)
        except ValueError:  # too few non-zero differences for this scipy version
            pass
        if not constant:
            ci = st.bootstrap((d,), np.mean, confidence_level=confidence, n_resamples=n_resamples,
                              random_state=random_state).confidence_interval
            out.update(ci_low=float(ci.low), ci_high=float(ci.high))
    return out


def compare_to_baseline(
    runs: pd.DataFrame,
    factors: list[str],
    metric: str,
    baseline: Mapping[str, str],
    confidence: float = 0.95,
    n_resamples: int = 9999,
    random_state: int = 0,
) -> pd.DataFrame:
    """Each non-baseline cell against the baseline cell that matches it on the other factors
    (e.g. baseline {"norm": "none"}: bn_after/relu vs none/relu), paired by seed.

    Columns: factor values, ``baseline`` (text), ``n_pairs`` (seeds completed in both),
    ``mean`` and ``baseline_mean`` over those seeds, ``mean_diff`` (cell - baseline),
    ``ci_low, ci_high`` (bootstrap BCa interval of the mean difference), ``d_z`` (Cohen's d_z:
    mean diff / sd of diffs), ``p_ttest`` (paired t), ``p_wilcoxon`` (signed rank), the Holm-
    adjusted ``p_ttest_holm, p_wilcoxon_holm`` over all rows of the table, and ``note``.
    """
    unknown = [k for k in baseline if k not in factors]
    if unknown:
        raise ValueError(f"baseline key(s) {unknown} are not swept factors; factors: {factors}")
    runs = with_levels(runs, factors)
    for k, v in baseline.items():
        if str(v) not in runs[k].cat.categories:
            raise ValueError(f"no run has {k}={v}; its values are {list(runs[k].cat.categories)}")
    done = _completed(runs, metric)
    # One value per seed (a seed run twice in a cell, e.g. copied folders, is averaged).
    scores = {key: g.groupby("seed")[metric].mean() for key, g in split_cells(done, factors).items()}
    label = ", ".join(f"{k}={v}" for k, v in baseline.items())
    rows = []
    for key in split_cells(runs, factors):
        cell = dict(zip(factors, key))
        if all(str(cell[k]) == str(v) for k, v in baseline.items()):
            continue
        base_key = tuple(str(baseline.get(f, cell[f])) for f in factors)
        pairs = pd.concat([scores.get(key, pd.Series(dtype=float)),
                           scores.get(base_key, pd.Series(dtype=float))], axis=1, join="inner").dropna()
        a, b = pairs.iloc[:, 0].to_numpy(), pairs.iloc[:, 1].to_numpy()
        result = _paired_tests(a, b, confidence, n_resamples, random_state)
        if base_key not in scores:
            result["note"] = "baseline cell has no completed run"
        elif key not in scores:
            result["note"] = "no completed run"
        mean, base_mean = (float(a.mean()), float(b.mean())) if len(pairs) >= 2 else (np.nan, np.nan)
        rows.append({**cell, "baseline": label, "n_pairs": len(pairs), "mean": mean,
                     "baseline_mean": base_mean, **result})
    columns = [*factors, "baseline", "n_pairs", "mean", "baseline_mean", "mean_diff", "ci_low", "ci_high",
               "d_z", "p_ttest", "p_wilcoxon", "p_ttest_holm", "p_wilcoxon_holm", "note"]
    out = pd.DataFrame(rows, columns=columns)
    out["p_ttest_holm"] = holm(out["p_ttest"])
    out["p_wilcoxon_holm"] = holm(out["p_wilcoxon"])
    for f in factors:
        out[f] = pd.Categorical(out[f], categories=runs[f].cat.categories, ordered=True)
    out.attrs.update(metric=metric, baseline=dict(baseline), confidence=confidence)
    return out


# ---------------------------------------------------------------------------- marginals


def main_effects(runs: pd.DataFrame, factors: list[str], metric: str = "final_test_acc") -> pd.DataFrame:
    """Per factor and level, over the completed runs of all other factors' cells (each run
    weighs the same): ``factor, level, runs, n, mean, std``. ``runs`` counts every run of the
    level, so ``n < runs`` shows how many diverged, failed or did not finish."""
    runs = with_levels(runs, factors)
    done = _completed(runs, metric)
    rows = []
    for f in factors:
        for level in runs[f].cat.categories:
            x = done.loc[done[f] == level, metric].to_numpy()
            rows.append({"factor": f, "level": level, "runs": int((runs[f] == level).sum()), "n": len(x),
                         "mean": float(np.mean(x)) if len(x) else np.nan,
                         "std": float(np.std(x, ddof=1)) if len(x) > 1 else np.nan})
    out = pd.DataFrame(rows, columns=["factor", "level", "runs", "n", "mean", "std"])
    out.attrs.update(metric=metric)
    return out


def interaction_table(runs: pd.DataFrame, factor_a: str, factor_b: str,
                      metric: str = "final_test_acc") -> pd.DataFrame:
    """Mean metric over completed runs, rows = levels of ``factor_a``, columns = levels of
    ``factor_b``; NaN where a combination has no completed run."""
    runs = with_levels(runs, [factor_a, factor_b])
    done = _completed(runs, metric)
    table = done.pivot_table(index=factor_a, columns=factor_b, values=metric, aggfunc="mean",
                             observed=False, dropna=False)
    table = table.reindex(index=runs[factor_a].cat.categories, columns=runs[factor_b].cat.categories)
    table.attrs.update(metric=metric)
    return table


# ---------------------------------------------------------------------------- time to accuracy


def time_to_accuracy(run_dir: Path, target: float, unit: str = "epochs") -> float:
    """Epochs (or steps, or training seconds) at the first evaluation whose test accuracy reached
    ``target``; NaN if it never did or the run has no metrics. Resolution is the evaluation
    interval (once per epoch by default)."""
    time_to_acc_column(target, unit)  # checks the unit
    column = TIME_UNITS[unit]
    path = Path(run_dir) / records.METRICS
    try:
        metrics = pd.read_csv(path)
    except (OSError, pd.errors.EmptyDataError, pd.errors.ParserError):
        return math.nan
    if metrics.empty or "test_acc" not in metrics or column not in metrics:
        return math.nan
    hit = metrics[pd.to_numeric(metrics["test_acc"], errors="coerce") >= target]
    return float(hit[column].iloc[0]) if len(hit) else math.nan


def time_to_acc_column(target: float, unit: str = "epochs") -> str:
    if unit not in TIME_UNITS:
        raise ValueError(f"unit must be one of {list(TIME_UNITS)}, not {unit!r}")
    return f"{unit}_to_acc_{target:g}"


def add_time_to_accuracy(runs: pd.DataFrame, sweep_dir: Path, target: float,
                         unit: str = "epochs") -> pd.DataFrame:
    """A copy of ``runs`` with a column ``<unit>_to_acc_<target>`` (see :func:`time_to_acc_column`)
    read from each run's metrics.csv; use that column name as ``metric`` in the other functions.
    Runs that never reach the target get NaN and so drop out of ``n`` (compare with ``completed``)."""
    column = time_to_acc_column(target, unit)
    runs = runs.copy()
    runs[column] = [time_to_accuracy(Path(sweep_dir) / str(r), target, unit) for r in runs["run"]]
    return runs
