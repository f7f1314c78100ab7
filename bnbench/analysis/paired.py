"""Paired comparisons: each cell against the cell that matches it on every other factor, paired
by seed (t-interval, t-test, Wilcoxon, Holm, Hedges' g_z, TOST), its verdict, and the seeds a
clear answer would need."""

from __future__ import annotations

import math
import warnings
from typing import Iterable, Mapping

import numpy as np
import pandas as pd
from scipy import special
from scipy import stats as st


from bnbench.analysis.cells import (BOOTSTRAP_MIN_PAIRS, INTERVALS, POWER, higher_is_better, results_of, split_cells,
                                    with_levels)

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


def hedges_correction(df: int) -> float:
    """The exact small-sample bias correction J(df) = Γ(df/2) / (√(df/2) Γ((df−1)/2)) of a
    standardized mean difference (Hedges 1981; ≈ 1 − 3/(4·df − 1))."""
    return float(np.exp(special.gammaln(df / 2) - special.gammaln((df - 1) / 2)) / np.sqrt(df / 2))


def seeds_needed(effect: float, sd: float, alpha: float, power: float = POWER) -> float:
    """The fewest seeds (pairs, at least 2) with which a two-sided paired t-test at ``alpha``
    detects a mean difference of ``effect`` with ``power``, when the differences have standard
    deviation ``sd``: statsmodels' TTestPower, searched over whole seed counts (its solve_power
    root-finder gives up on large effects, where the answer is 2 or 3); NaN when the effect is
    zero or undefined; +inf when it needs more than a million seeds."""
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
            return np.inf  # more than a million: no plan can reach it
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if enough(mid) else (mid, high)
    return float(high)


def planned_seeds(effect: float | None, sd: float, pairs: int, alpha: float,
                  confidence: float = 0.95) -> tuple[float, float, float]:
    """Seeds (pairs) a paired t-test at ``alpha`` needs for 80% power against a difference of
    ``effect`` when the pilot's differences had standard deviation ``sd`` over ``pairs`` seeds:
    (at the pilot SD, at the low end of the SD's ``confidence`` chi-square interval, at its
    high end). The true SD lies in that interval in ``confidence`` of pilots (normal
    differences), and the seeds needed grow with the SD, so the range covers the seeds the
    effect truly needs as often. NaN without an effect, or an SD from fewer than 2 pairs."""
    if effect is None or not np.isfinite(sd) or sd <= 0 or pairs < 2:
        return np.nan, np.nan, np.nan
    df, tail = pairs - 1, (1 - confidence) / 2
    sd_low, sd_high = sd * math.sqrt(df / st.chi2.ppf(1 - tail, df)), sd * math.sqrt(df / st.chi2.ppf(tail, df))
    return seeds_needed(effect, sd, alpha), seeds_needed(effect, sd_low, alpha), seeds_needed(effect, sd_high, alpha)


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
                  interval: str, n_resamples: int, random_state: int) -> dict:
    """Paired tests of cell scores ``a`` against baseline scores ``b`` (same seeds, same order);
    NaN with a note where a statistic is undefined."""
    from statsmodels.stats.weightstats import ttost_paired

    out = dict(mean_diff=np.nan, median_diff=np.nan, ci_low=np.nan, ci_high=np.nan, d_z=np.nan, g_z=np.nan,
               p_ttest=np.nan, p_wilcoxon=np.nan, p_tost=np.nan, sd_diff=np.nan, note="")
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
        sd = out["sd_diff"] = float(np.std(d, ddof=1))
        if sd <= tol:
            out["note"] = "constant differences: t-test undefined"
            return out
        n = len(d)
        t = st.ttest_rel(a, b)
        out["p_ttest"] = float(t.pvalue)
        out["d_z"] = out["mean_diff"] / sd
        # Hedges' J is 0 at one degree of freedom (2 pairs): the corrected size is undefined, not zero
        out["g_z"] = out["d_z"] * hedges_correction(n - 1) if n >= 3 else np.nan
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
    return out


def verdict(row: Mapping, higher_better: bool, alpha: float) -> str:
    """The row's verdict. "did not learn" (the cell), "baseline did not learn" or "neither
    learned" when an arm learned nothing (:func:`learned`): no winner between arms that both
    failed, and a failed arm's loss is not the other's gain. Otherwise better | worse (the
    table's one Holm family of primary tests rejects no difference: the paired t-test, or the
    Wilcoxon test where a diverged run has no finite value), equivalent (the Holm-adjusted TOST
    puts the difference within ±margin), or inconclusive. "better, within margin": a
    significant difference smaller than the margin."""
    cell_learned, base_learned = row.get("learned", True), row.get("baseline_learned", True)
    if not cell_learned or not base_learned:
        return "neither learned" if not (cell_learned or base_learned) else \
            ("did not learn" if not cell_learned else "baseline did not learn")
    p = row.get("p_holm", np.nan)
    direction = row["mean_diff"] if np.isfinite(row.get("p_ttest", np.nan)) else row.get("sign", np.nan)
    equivalent = np.isfinite(row.get("p_tost_holm", np.nan)) and row["p_tost_holm"] < alpha
    if np.isfinite(p) and p < alpha and np.isfinite(direction) and direction != 0:
        word = "better" if (direction > 0) == higher_better else "worse"
        return f"{word}, within margin" if equivalent else word
    return "equivalent" if equivalent else "inconclusive"


# A run's accuracy this close to chance (1 / classes), or above, is learning: an arm whose mean
# is within it (or whose every seed diverged) learned nothing, and is compared as such.
CHANCE_MARGIN = 0.05

COMPARISON_COLUMNS = [
    "baseline", "n_pairs", "diverged", "baseline_diverged", "mean", "baseline_mean", "mean_diff", "median_diff",
    "ci_low", "ci_high", "d_z", "g_z", "p_ttest", "p_wilcoxon", "p_tost", "test", "p_holm", "p_tost_holm",
    "learned", "baseline_learned", "verdict", "sd_diff", "seeds_needed", "seeds_needed_low", "seeds_needed_high",
    "note",
]


def learned(scores: np.ndarray, diverged: np.ndarray, metric: str, chance: float | None) -> bool:
    """Whether an arm learned anything: not when every seed diverged, nor, for an accuracy, when
    its mean is within CHANCE_MARGIN of chance (``chance``: 1 / classes; None: unknown)."""
    if len(scores) and bool(np.all(diverged)):
        return False
    if chance is not None and "acc" in metric and "_to_acc_" not in metric and len(scores):
        finite = scores[np.isfinite(scores)]
        return bool(len(finite)) and float(np.mean(finite)) > chance + CHANCE_MARGIN
    return True


def compare_to_baseline(
    runs: pd.DataFrame,
    factors: list[str],
    metric: str,
    baseline: Mapping[str, str],
    confidence: float = 0.95,
    margin: float | None = None,
    effect: float | None = None,
    interval: str = "t",
    n_resamples: int = 9999,
    random_state: int = 0,
    chance: float | None = None,
) -> pd.DataFrame:
    """Each non-baseline cell against the baseline cell that matches it on the other factors
    (e.g. baseline {"norm": "none"}: bn_after/relu vs none/relu), paired by seed over the seeds
    with a result in both (diverged runs included, scored by :func:`scores`). See
    :func:`_compare` for the columns."""
    runs = check_baseline(runs, factors, baseline)
    label = ", ".join(f"{k}={v}" for k, v in baseline.items())
    pairs = []
    for key in split_cells(runs, factors):
        cell = dict(zip(factors, key))
        if not all(str(cell[k]) == str(v) for k, v in baseline.items()):
            pairs.append((key, tuple(str(baseline.get(f, cell[f])) for f in factors), label))
    out = _compare(runs, factors, metric, pairs, confidence, margin, effect, interval, n_resamples,
                   random_state, chance)
    out.attrs.update(baseline=dict(baseline), pairs="baseline")
    return out


def check_baseline(runs: pd.DataFrame, factors: list[str], baseline: Mapping[str, str]) -> pd.DataFrame:
    """ValueError unless every key of ``baseline`` is a swept factor with that value among its
    runs; the runs with their factors as ordered levels."""
    unknown = [k for k in baseline if k not in factors]
    if unknown:
        raise ValueError(f"baseline key(s) {unknown} are not swept factors; factors: {factors}")
    runs = with_levels(runs, factors)
    for k, v in baseline.items():
        if str(v) not in runs[k].cat.categories:
            raise ValueError(f"no run has {k}={v}; its values are {list(runs[k].cat.categories)}")
    return runs


def compare_pairs(
    runs: pd.DataFrame,
    factors: list[str],
    metric: str,
    factor: str,
    confidence: float = 0.95,
    margin: float | None = None,
    effect: float | None = None,
    interval: str = "t",
    n_resamples: int = 9999,
    random_state: int = 0,
    chance: float | None = None,
) -> pd.DataFrame:
    """Every pair of levels of ``factor`` within otherwise matching cells (norm none, bn_before,
    bn_after: bn_before − none, bn_after − none and bn_after − bn_before, per activation...),
    each later level minus the earlier one in the sweep's order, paired by seed; one Holm family
    over the whole table. See :func:`_compare` for the columns; ``baseline`` names the earlier
    level of each row."""
    if factor not in factors:
        raise ValueError(f"{factor} is not a swept factor; factors: {factors}")
    runs = with_levels(runs, factors)
    levels = [str(v) for v in runs[factor].cat.categories]
    where = factors.index(factor)
    contexts = list(dict.fromkeys(key[:where] + key[where + 1:] for key in split_cells(runs, factors)))
    pairs = []
    for context in contexts:
        for i, earlier in enumerate(levels):
            for later in levels[i + 1:]:
                key = tuple(str(v) for v in (*context[:where], later, *context[where:]))
                base = tuple(str(v) for v in (*context[:where], earlier, *context[where:]))
                pairs.append((key, base, f"{factor}={earlier}"))
    out = _compare(runs, factors, metric, pairs, confidence, margin, effect, interval, n_resamples,
                   random_state, chance)
    out.attrs.update(baseline={}, pairs="all", factor=factor)
    return out


def _compare(runs: pd.DataFrame, factors: list[str], metric: str, pairs: list[tuple[tuple, tuple, str]],
             confidence: float, margin: float | None, effect: float | None, interval: str, n_resamples: int,
             random_state: int, chance: float | None) -> pd.DataFrame:
    """Cell ``key`` against cell ``base`` for each (key, base, label) of ``pairs``, paired by
    seed over the seeds with a result in both.

    Columns: factor values (of the cell), ``baseline`` (the label), ``n_pairs``, ``diverged``
    and ``baseline_diverged`` (among the pairs), ``mean`` and ``baseline_mean`` over the pairs,
    ``mean_diff`` (cell − baseline), ``ci_low, ci_high`` (the paired t-interval of the mean
    difference at ``confidence``, or a BCa bootstrap interval with ``interval="bootstrap"``),
    ``d_z`` (mean diff / sd of diffs) and ``g_z`` (d_z with Hedges' small-sample correction),
    ``p_ttest`` (paired t), ``p_wilcoxon`` (signed rank), ``p_tost`` (paired TOST against
    ±``margin``, in metric units), ``test`` (the row's primary test: t, or Wilcoxon where a
    score is infinite) and ``p_holm`` (its p, Holm-adjusted over the rows: one family per
    table; the Wilcoxon p of a t row is a check, not adjusted), ``p_tost_holm``, ``learned`` and
    ``baseline_learned`` (:func:`learned`, over each arm's own results), ``verdict``
    (:func:`verdict`), ``sd_diff`` (the SD of the differences), ``seeds_needed`` and its range
    ``seeds_needed_low, seeds_needed_high`` (:func:`planned_seeds`: pairs for 80% power against a
    difference of ``effect`` at the family's strictest Holm level, α / rows with a test; NaN
    without ``effect``) and ``note``.
    """
    if interval not in INTERVALS:
        raise ValueError(f"interval must be one of {INTERVALS}, not {interval!r}")
    if margin is not None and margin < 0:
        raise ValueError(f"the equivalence margin must be positive, not {margin}")
    done = results_of(runs, metric)
    done["_diverged"] = done["status"] == "diverged"
    # One value per seed (a seed run twice in a cell, e.g. copied folders, is averaged).
    per_seed_all = done.groupby([*factors, "seed"], observed=True).agg(score=(metric, "mean"),
                                                                       diverged=("_diverged", "max"))
    levels = list(range(len(factors)))
    per_seed = {tuple(str(v) for v in (key if isinstance(key, tuple) else (key,))): g.droplevel(levels)
                for key, g in per_seed_all.groupby(level=levels, observed=True)}
    empty = pd.DataFrame(columns=["score", "diverged"])

    def arm_learned(key: tuple) -> bool:
        arm = per_seed.get(key, empty)
        return learned(arm["score"].to_numpy(float), arm["diverged"].to_numpy(bool), metric, chance)

    rows = []
    for key, base_key, label in pairs:
        key, base_key = tuple(str(v) for v in key), tuple(str(v) for v in base_key)
        pairs_ = per_seed.get(key, empty).merge(per_seed.get(base_key, empty), how="inner", left_index=True,
                                                right_index=True, suffixes=("", "_b"))
        a, b = pairs_["score"].to_numpy(float), pairs_["score_b"].to_numpy(float)
        result = _paired_tests(a, b, confidence, margin, interval, n_resamples, random_state)
        if base_key not in per_seed:
            result["note"] = "baseline cell has no result"
        elif key not in per_seed:
            result["note"] = "no result"
        mean, base_mean = (float(a.mean()), float(b.mean())) if len(pairs_) >= 2 else (np.nan, np.nan)
        rows.append({**dict(zip(factors, key)), "baseline": label, "n_pairs": len(pairs_),
                     "diverged": int(pairs_["diverged"].sum()), "baseline_diverged": int(pairs_["diverged_b"].sum()),
                     "mean": mean, "baseline_mean": base_mean, "learned": arm_learned(key),
                     "baseline_learned": arm_learned(base_key), **result})
    out = pd.DataFrame(rows, columns=[*factors, *COMPARISON_COLUMNS, "sign"])
    t_defined = out["p_ttest"].notna()
    out["test"] = np.where(t_defined, "t", np.where(out["p_wilcoxon"].notna(), "Wilcoxon", ""))
    out["p_holm"] = holm(np.where(t_defined, out["p_ttest"], out["p_wilcoxon"]))
    out["p_tost_holm"] = holm(out["p_tost"])
    higher = higher_is_better(metric)
    out["verdict"] = [verdict(row, higher, 1 - confidence) for _, row in out.iterrows()]
    family = max(1, int(out["p_holm"].notna().sum()))
    level = (1 - confidence) / family
    plan = np.array([planned_seeds(effect, sd, n, level, confidence)
                     for sd, n in zip(out["sd_diff"], out["n_pairs"])], dtype=float).reshape(-1, 3)
    out["seeds_needed"], out["seeds_needed_low"], out["seeds_needed_high"] = plan.T
    out = out[[*factors, *COMPARISON_COLUMNS]]
    for f in factors:
        out[f] = pd.Categorical(out[f], categories=runs[f].cat.categories, ordered=True)
    out.attrs.update(metric=metric, confidence=confidence, margin=margin, effect=effect, interval=interval,
                     chance=chance, chance_margin=CHANCE_MARGIN, power_level=level, family=family)
    return out
