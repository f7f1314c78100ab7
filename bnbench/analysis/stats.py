"""Statistics over a sweep's runs: per-cell intervals, paired comparisons with a baseline and
their verdicts, marginal means, interactions, a factorial ANOVA and rankings.

Every function takes the ``runs`` table of :func:`bnbench.report.collect_runs` (one row per
run folder) and the list of swept factors. A *cell* is one combination of factor values; its
seeds are the repetitions.

Divergence policy (one rule, applied by :func:`scores` to every table below). A run that
completed or diverged is a *result*; a failed, unfinished or missing run is not, and its cell
is marked incomplete wherever it is shown or ranked.
- A diverged run is scored, never dropped. Its accuracy is that of its final model, evaluated
  when the divergence was detected: a sample with a NaN or inf output counts as wrong, so a
  model that outputs NaN everywhere scores 0 (it predicts nothing).
- A result with no finite value (the NaN loss of a diverged run; a time to accuracy of a run
  that never reached the target) is worse than every finite value: -inf for a metric where
  higher is better, +inf where lower is better. A cell mean is then infinite (its median is
  still defined and breaks ties in the ranking), the t-based statistics are undefined, and the
  comparisons fall back to the Wilcoxon signed-rank test, which needs only the order.
- Every cell and marginal shows its divergence rate (diverged / results).
- A completed run whose record lacks the value (an unreadable metrics.csv) is not scored; its
  cell is marked incomplete, like a cell with a failed run.
- Marginal means are unweighted means of cell means (every cell counts once, however many of
  its seeds finished), so cells of different completeness are not mixed.

Intervals of means and of paired differences are t-intervals (a bootstrap under-covers badly
at 3-10 seeds; it is available for paired differences on request). Tests and intervals come
from scipy.stats; multiple testing, equivalence (TOST), power and the ANOVA from statsmodels.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pandas as pd
from scipy import special
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


def holm(pvalues: Iterable[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (statsmodels' multipletests, method="holm"). NaNs stay
    NaN and are not counted in the family size."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(list(pvalues), dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        out[ok] = multipletests(p[ok], method="holm")[1]
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


def _results(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
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


# ---------------------------------------------------------------------------- per cell


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


# ---------------------------------------------------------------------------- vs baseline


def hedges_correction(df: int) -> float:
    """The exact small-sample bias correction J(df) = Γ(df/2) / (√(df/2) Γ((df−1)/2)) of a
    standardized mean difference (Hedges 1981; ≈ 1 − 3/(4·df − 1))."""
    return float(np.exp(special.gammaln(df / 2) - special.gammaln((df - 1) / 2)) / np.sqrt(df / 2))


def seeds_needed(effect: float, sd: float, alpha: float, power: float = POWER) -> float:
    """The fewest seeds (pairs, at least 2) with which a two-sided paired t-test at ``alpha``
    detects a mean difference of ``effect`` with ``power``, when the differences have standard
    deviation ``sd``: statsmodels' TTestPower, searched over whole seed counts (its solve_power
    root-finder gives up on large effects, where the answer is 2 or 3); NaN when the effect is
    zero or undefined, or needs more than a million seeds."""
    from statsmodels.stats.power import TTestPower

    if not (np.isfinite(effect) and np.isfinite(sd)) or effect == 0 or sd <= 0:
        return np.nan
    size, analysis = abs(effect) / sd, TTestPower()

    def enough(n: int) -> bool:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            achieved = analysis.power(effect_size=size, nobs=n, alpha=alpha, alternative="two-sided")
            if not np.isfinite(achieved):  # the noncentral t's far tail underflows to NaN for large
                # effects; that tail (a significant result of the wrong sign) is ~0 there
                df, noncentrality = n - 1, size * math.sqrt(n)
                achieved = st.nct.sf(st.t.ppf(1 - alpha / 2, df), df, noncentrality)
                if not np.isfinite(achieved):
                    achieved = 1.0 if noncentrality > st.t.ppf(1 - alpha / 2, df) else 0.0
        return achieved >= power

    low, high = 1, 2  # enough(high) once found; low is not enough
    while not enough(high):
        low, high = high, high * 2
        if high > 1_000_000:
            return np.nan
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if enough(mid) else (mid, high)
    return float(high)


def _rank_preserving(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """a and b with ±inf replaced by finite values beyond every finite one, far enough that a
    difference with an infinite score is larger in size than any finite difference: the signs
    and the order of |a − b| that the Wilcoxon test uses are kept, two infinite scores tie."""
    both = np.concatenate([a, b])
    finite = both[np.isfinite(both)]
    low, high = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 0.0)
    span = high - low + 1.0
    fix = lambda x: np.where(x == np.inf, high + 2 * span, np.where(x == -np.inf, low - 2 * span, x))  # noqa: E731
    return fix(a), fix(b)


def _paired_tests(a: np.ndarray, b: np.ndarray, confidence: float, margin: float | None,
                  min_effect: float | None, interval: str, n_resamples: int, random_state: int) -> dict:
    """Paired tests of cell scores ``a`` against baseline scores ``b`` (same seeds, same order);
    NaN with a note where a statistic is undefined."""
    from statsmodels.stats.weightstats import ttost_paired

    alpha = 1 - confidence
    out = dict(mean_diff=np.nan, median_diff=np.nan, ci_low=np.nan, ci_high=np.nan, d_z=np.nan, g_z=np.nan,
               p_ttest=np.nan, p_wilcoxon=np.nan, p_tost=np.nan, seeds_needed=np.nan, note="")
    if len(a) < 2:
        out["note"] = f"{len(a)} paired seed(s): need 2"
        return out
    infinite = not (np.all(np.isfinite(a)) and np.all(np.isfinite(b)))
    if infinite:
        a, b = _rank_preserving(a, b)
    d = a - b
    # Differences at float rounding level (0.6 - 0.5 vs 0.7 - 0.6) count as exact.
    tol = 1e-12 * max(1.0, float(np.max(np.abs(a))), float(np.max(np.abs(b))))
    d = np.where(np.abs(d) <= tol, 0.0, d)
    out["median_diff"] = float(np.median(d)) if not infinite else np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # near-constant data: undefined statistics become NaN
        if np.any(d != 0):
            try:
                out["p_wilcoxon"] = float(st.wilcoxon(d).pvalue)
            except ValueError:  # too few non-zero differences for this scipy version
                pass
        if infinite:
            out["note"] = ("a result has no finite value (a diverged loss, a target never reached): t statistics "
                           "undefined, the Wilcoxon test ranks it worst")
            # the direction the signed-rank test saw: the sign of W+ - W-
            out["sign"] = float(np.sign(np.sum(np.sign(d) * st.rankdata(np.abs(d)))))
            return out
        out["mean_diff"] = float(np.mean(d))
        if np.all(d == 0):
            out["note"] = "all differences are zero"
            return out
        sd = float(np.std(d, ddof=1))
        if sd <= tol:
            out["note"] = "constant differences: t-test undefined"
            return out
        n = len(d)
        t = st.ttest_rel(a, b)
        out["p_ttest"] = float(t.pvalue)
        out["d_z"] = out["mean_diff"] / sd
        out["g_z"] = out["d_z"] * hedges_correction(n - 1)
        if interval == "bootstrap":
            ci = st.bootstrap((d,), np.mean, confidence_level=confidence, n_resamples=n_resamples,
                              random_state=random_state).confidence_interval
            if n < BOOTSTRAP_MIN_PAIRS:
                out["note"] = f"bootstrap interval with {n} pairs: it covers less than its nominal level"
        else:
            ci = t.confidence_interval(confidence)
        out.update(ci_low=float(ci.low), ci_high=float(ci.high))
        if margin is not None and margin > 0:
            out["p_tost"] = float(ttost_paired(a, b, -margin, margin)[0])
        effect = min_effect if min_effect is not None else out["mean_diff"]
        out["seeds_needed"] = seeds_needed(effect, sd, alpha)
    return out


def verdict(row: Mapping, higher_better: bool, alpha: float) -> str:
    """better | worse (the Holm-adjusted paired test rejects no difference; the t-test, or the
    Wilcoxon test when a diverged run has no finite value), equivalent (the Holm-adjusted TOST
    puts the difference within ±margin), or inconclusive. "better, within margin": a
    significant difference smaller than the margin."""
    t_defined = np.isfinite(row.get("p_ttest_holm", np.nan))
    p = row["p_ttest_holm"] if t_defined else row.get("p_wilcoxon_holm", np.nan)
    direction = row["mean_diff"] if t_defined else row.get("sign", np.nan)
    equivalent = np.isfinite(row.get("p_tost_holm", np.nan)) and row["p_tost_holm"] < alpha
    if np.isfinite(p) and p < alpha and np.isfinite(direction) and direction != 0:
        word = "better" if (direction > 0) == higher_better else "worse"
        return f"{word}, within margin" if equivalent else word
    return "equivalent" if equivalent else "inconclusive"


COMPARISON_COLUMNS = [
    "baseline", "n_pairs", "diverged", "baseline_diverged", "mean", "baseline_mean", "mean_diff", "median_diff",
    "ci_low", "ci_high", "d_z", "g_z", "p_ttest", "p_wilcoxon", "p_tost", "p_ttest_holm", "p_wilcoxon_holm",
    "p_tost_holm", "verdict", "seeds_needed", "note",
]


def compare_to_baseline(
    runs: pd.DataFrame,
    factors: list[str],
    metric: str,
    baseline: Mapping[str, str],
    confidence: float = 0.95,
    margin: float | None = None,
    min_effect: float | None = None,
    interval: str = "t",
    n_resamples: int = 9999,
    random_state: int = 0,
) -> pd.DataFrame:
    """Each non-baseline cell against the baseline cell that matches it on the other factors
    (e.g. baseline {"norm": "none"}: bn_after/relu vs none/relu), paired by seed over the seeds
    with a result in both (diverged runs included, scored by :func:`scores`).

    Columns: factor values, ``baseline`` (text), ``n_pairs``, ``diverged`` and
    ``baseline_diverged`` (among the pairs), ``mean`` and ``baseline_mean`` over the pairs,
    ``mean_diff`` (cell − baseline), ``ci_low, ci_high`` (the paired t-interval of the mean
    difference at ``confidence``, or a BCa bootstrap interval with ``interval="bootstrap"``),
    ``d_z`` (mean diff / sd of diffs) and ``g_z`` (d_z with Hedges' small-sample correction),
    ``p_ttest`` (paired t), ``p_wilcoxon`` (signed rank), ``p_tost`` (paired TOST against
    ±``margin``, in metric units), their Holm-adjusted ``*_holm`` over the rows of the table,
    ``verdict`` (:func:`verdict`), ``seeds_needed`` (pairs for 80% power to detect the observed
    difference, or ``min_effect``) and ``note``.
    """
    if interval not in INTERVALS:
        raise ValueError(f"interval must be one of {INTERVALS}, not {interval!r}")
    if margin is not None and margin < 0:
        raise ValueError(f"the equivalence margin must be positive, not {margin}")
    unknown = [k for k in baseline if k not in factors]
    if unknown:
        raise ValueError(f"baseline key(s) {unknown} are not swept factors; factors: {factors}")
    runs = with_levels(runs, factors)
    for k, v in baseline.items():
        if str(v) not in runs[k].cat.categories:
            raise ValueError(f"no run has {k}={v}; its values are {list(runs[k].cat.categories)}")
    done = _results(runs, metric)
    done["_diverged"] = done["status"] == "diverged"
    # One value per seed (a seed run twice in a cell, e.g. copied folders, is averaged).
    per_seed_all = done.groupby([*factors, "seed"], observed=True).agg(score=(metric, "mean"),
                                                                       diverged=("_diverged", "max"))
    levels = list(range(len(factors)))
    per_seed = {(key if isinstance(key, tuple) else (key,)): g.droplevel(levels)
                for key, g in per_seed_all.groupby(level=levels, observed=True)}
    empty = pd.DataFrame(columns=["score", "diverged"])
    label = ", ".join(f"{k}={v}" for k, v in baseline.items())
    rows = []
    for key in split_cells(runs, factors):
        cell = dict(zip(factors, key))
        if all(str(cell[k]) == str(v) for k, v in baseline.items()):
            continue
        base_key = tuple(str(baseline.get(f, cell[f])) for f in factors)
        pairs = per_seed.get(key, empty).merge(per_seed.get(base_key, empty), how="inner", left_index=True,
                                               right_index=True, suffixes=("", "_b"))
        a, b = pairs["score"].to_numpy(float), pairs["score_b"].to_numpy(float)
        result = _paired_tests(a, b, confidence, margin, min_effect, interval, n_resamples, random_state)
        if base_key not in per_seed:
            result["note"] = "baseline cell has no result"
        elif key not in per_seed:
            result["note"] = "no result"
        mean, base_mean = (float(a.mean()), float(b.mean())) if len(pairs) >= 2 else (np.nan, np.nan)
        rows.append({**cell, "baseline": label, "n_pairs": len(pairs), "diverged": int(pairs["diverged"].sum()),
                     "baseline_diverged": int(pairs["diverged_b"].sum()), "mean": mean, "baseline_mean": base_mean,
                     **result})
    out = pd.DataFrame(rows, columns=[*factors, *COMPARISON_COLUMNS, "sign"])
    for column in ("p_ttest", "p_wilcoxon", "p_tost"):
        out[f"{column}_holm"] = holm(out[column])
    higher = higher_is_better(metric)
    out["verdict"] = [verdict(row, higher, 1 - confidence) for _, row in out.iterrows()]
    out = out[[*factors, *COMPARISON_COLUMNS]]
    for f in factors:
        out[f] = pd.Categorical(out[f], categories=runs[f].cat.categories, ordered=True)
    out.attrs.update(metric=metric, baseline=dict(baseline), confidence=confidence, margin=margin,
                     min_effect=min_effect, interval=interval)
    return out


# ---------------------------------------------------------------------------- marginals


def _pool(group: pd.DataFrame) -> dict:
    """A marginal over a group of cells (rows of :func:`cell_stats`): the unweighted mean of their
    means and its range, how many cells have a result, and the results and divergences in them."""
    means = group["mean"].dropna().to_numpy()
    results, diverged = int(group["n"].sum()), int(group["diverged"].sum())
    return {"mean": float(np.mean(means)) if len(means) else np.nan,
            "cell_min": float(np.min(means)) if len(means) else np.nan,
            "cell_max": float(np.max(means)) if len(means) else np.nan,
            "cells": len(means), "results": results, "diverged": diverged,
            "div_rate": diverged / results if results else np.nan}


def main_effects(runs: pd.DataFrame, factors: list[str], metric: str = "final_test_acc",
                 expected_cells: Iterable[Mapping[str, str]] | None = None,
                 cells: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per factor and level, the unweighted mean of its cells' means (each cell counts once):
    ``factor, level, cells`` (cells of the level with a result), ``cells_total``,
    ``incomplete_cells`` (cells with failed, unfinished or missing runs, or none at all),
    ``results``, ``diverged``, ``div_rate``, ``mean`` (of cell means), ``cell_min, cell_max``
    (the range of its cell means). ``cells``: the :func:`cell_stats` of these runs, when the
    caller has it already."""
    if cells is None:
        cells = cell_stats(runs, factors, metric, expected_cells=expected_cells)
    rows = []
    for f in factors:
        for level in cells[f].cat.categories:
            group = cells[cells[f] == level]
            rows.append({"factor": f, "level": level, **_pool(group), "cells_total": len(group),
                         "incomplete_cells": int((~group["complete"]).sum())})
    columns = ["factor", "level", "cells", "cells_total", "incomplete_cells", "results", "diverged", "div_rate",
               "mean", "cell_min", "cell_max"]
    out = pd.DataFrame(rows, columns=columns)
    out.attrs.update(metric=metric)
    return out


def interaction_table(runs: pd.DataFrame, factor_a: str, factor_b: str, metric: str = "final_test_acc",
                      factors: list[str] | None = None, cells: pd.DataFrame | None = None) -> pd.DataFrame:
    """Long table, one row per (level of ``factor_a``, level of ``factor_b``): ``mean`` (the
    unweighted mean over the matching cells of all ``factors`` of their means), ``cells``,
    ``results``, ``diverged``, ``div_rate`` and ``complete`` (every matching cell complete).
    ``factors`` defaults to the two; ``cells``: their :func:`cell_stats`, when the caller has it."""
    factors = list(factors or [factor_a, factor_b])
    if cells is None:
        cells = cell_stats(runs, factors, metric)
    rows = []
    for a in cells[factor_a].cat.categories:
        for b in cells[factor_b].cat.categories:
            group = cells[(cells[factor_a] == a) & (cells[factor_b] == b)]
            rows.append({factor_a: a, factor_b: b, **_pool(group),
                         "complete": bool(len(group)) and bool(group["complete"].all())})
    out = pd.DataFrame(rows, columns=[factor_a, factor_b, "mean", "cells", "results", "diverged", "div_rate",
                                      "complete"])
    for f in (factor_a, factor_b):
        out[f] = pd.Categorical(out[f], categories=cells[f].cat.categories, ordered=True)
    out.attrs.update(metric=metric)
    return out


def sign_flips(table: pd.DataFrame, factor_a: str, factor_b: str) -> list[dict]:
    """Where the effect of ``factor_a`` (each pair of its levels: later − earlier) is positive
    at some levels of ``factor_b`` and negative at others, from an :func:`interaction_table`.
    One dict per such pair: ``factor, low, high, across, positive, negative`` (levels of
    ``factor_b``), ``diffs`` (level of b -> difference)."""
    means = table.pivot_table(index=factor_a, columns=factor_b, values="mean", observed=False, dropna=False)
    flips = []
    levels = list(means.index)
    for i, low in enumerate(levels):
        for high in levels[i + 1:]:
            diffs = (means.loc[high] - means.loc[low]).replace([np.inf, -np.inf], np.nan).dropna()
            positive = [str(k) for k, v in diffs.items() if v > 0]
            negative = [str(k) for k, v in diffs.items() if v < 0]
            if positive and negative:
                flips.append({"factor": factor_a, "low": str(low), "high": str(high), "across": factor_b,
                              "positive": positive, "negative": negative,
                              "diffs": {str(k): float(v) for k, v in diffs.items()}})
    return flips


# ---------------------------------------------------------------------------- factorial ANOVA


def anova(runs: pd.DataFrame, factors: list[str], metric: str = "final_test_acc") -> tuple[pd.DataFrame, list[str]]:
    """Type-II ANOVA of the metric on every swept factor and all their interactions, with seed
    as an additive block (statsmodels: OLS, ``anova_lm(typ=2)``), over the results with a
    finite score. Where the residual degrees of freedom run out, the highest interactions are
    left out (the largest order that leaves at least one residual degree of freedom).

    Returns (table, notes): table rows per term (``term`` as "norm × activation", ``order``,
    ``df``, ``sum_sq``, ``F``, ``p``, ``partial_eta2`` = SS / (SS + SS_residual)) plus the
    ``Residual`` row; notes say what the model left out."""
    import statsmodels.formula.api as smf
    from statsmodels.stats.anova import anova_lm

    notes: list[str] = []
    done = _results(with_levels(runs, factors), metric)
    finite = np.isfinite(done[metric])
    if (~finite).any():
        notes.append(f"{int((~finite).sum())} diverged run(s) with no finite {metric} are left out of the "
                     "ANOVA; the comparisons against the baseline rank them instead")
        done = done[finite]
    names = {f: f"f{i}" for i, f in enumerate(factors)}
    data = pd.DataFrame({names[f]: done[f].astype(str).to_numpy() for f in factors})
    data["y"] = done[metric].to_numpy(float)
    data["seed"] = done["seed"].astype(str).to_numpy()
    swept = [f for f in factors if data[names[f]].nunique() > 1]
    if not swept or len(data) < 3 or np.ptp(data["y"]) == 0:
        return pd.DataFrame(columns=["term", "order", "df", "sum_sq", "F", "p", "partial_eta2"]), \
            notes + ["no ANOVA: too few results, or the metric does not vary"]
    block = " + C(seed)" if data["seed"].nunique() > 1 else ""
    terms = " + ".join(f"C({names[f]})" for f in swept)
    fitted, order = None, len(swept)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        while order >= 1:
            formula = f"y ~ ({terms}){f' ** {order}' if order > 1 else ''}{block}"
            model = smf.ols(formula, data=data).fit()
            if model.df_resid >= 1:
                fitted = model
                break
            order -= 1
        if fitted is None:
            return pd.DataFrame(columns=["term", "order", "df", "sum_sq", "F", "p", "partial_eta2"]), \
                notes + ["no ANOVA: no residual degrees of freedom even for the main effects"]
        table = anova_lm(fitted, typ=2)
    if order < len(swept):
        notes.append(f"interactions above order {order} are left out of the model: with these runs they would "
                     "leave no residual degrees of freedom (more seeds would allow them)")
    if data["seed"].nunique() > 1:
        notes.append("seed is an additive block (runs of one seed share the data order and the initial weights)")
    back = {f"C({v})": k for k, v in names.items()}
    ss_resid = float(table.loc["Residual", "sum_sq"])
    rows = []
    for term, row in table.iterrows():
        if term == "Residual":
            label, k = "Residual", 0
        elif term == "C(seed)":
            label, k = "seed (block)", 1
        else:
            parts = term.split(":")
            label, k = " × ".join(back[p] for p in parts), len(parts)
        ss = float(row["sum_sq"])
        rows.append({"term": label, "order": k, "df": float(row["df"]), "sum_sq": ss,
                     "F": float(row["F"]) if term != "Residual" else np.nan,
                     "p": float(row["PR(>F)"]) if term != "Residual" else np.nan,
                     "partial_eta2": ss / (ss + ss_resid) if term != "Residual" and ss + ss_resid > 0 else np.nan})
    out = pd.DataFrame(rows, columns=["term", "order", "df", "sum_sq", "F", "p", "partial_eta2"])
    out.attrs.update(metric=metric, n=len(data), df_resid=float(fitted.df_resid), max_order=order)
    return out, notes


# ---------------------------------------------------------------------------- time to accuracy


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
