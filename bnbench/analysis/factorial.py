"""Several factors at once: marginal means (unweighted means of cell means), two-way interaction
tables and the places where one factor's effect changes sign, and the type-II factorial ANOVA
(statsmodels OLS, seed as a block)."""

from __future__ import annotations

import itertools
import warnings
from typing import Iterable, Mapping

import numpy as np
import pandas as pd
from scipy import stats as st


from bnbench.analysis.cells import cell_stats, results_of, with_levels
from bnbench.analysis.paired import holm

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


def test_flips(runs: pd.DataFrame, factors: list[str], flips: list[dict], metric: str = "final_test_acc",
               confidence: float = 0.95) -> list[dict]:
    """Each flip of :func:`sign_flips` with the contrast tests behind it: for every level of
    ``across`` where the effect is positive and every one where it is negative, the difference
    of the two simple effects (an interaction contrast), per seed over the cells of the other
    factors (their unweighted mean, as in the interaction table), and its paired t-test against
    0 over the seeds with a finite score in every cell it needs. One Holm family over all the
    contrasts of all the flips. A flip is ``supported`` when one of its contrasts rejects at
    ``1 − confidence``: the effect does differ between a level where it is positive and one
    where it is negative. Adds ``contrasts`` (dicts positive, negative, seeds, estimate, p,
    p_holm), ``p_holm`` (its smallest) and ``supported``."""
    if not flips:
        return []
    runs = with_levels(runs, factors)
    done = results_of(runs, metric)
    done = done[np.isfinite(done[metric].to_numpy(float))]
    per_seed = done.groupby([*factors, "seed"], observed=True)[metric].mean()
    cells = {}  # (factor value, ..., seed) -> score
    for key, value in per_seed.items():
        cells[tuple(str(v) for v in key)] = float(value)
    seeds = sorted({key[-1] for key in cells})
    levels = {f: [str(v) for v in runs[f].cat.categories] for f in factors}

    def effect(flip: dict, at: str, seed: str) -> float:
        """Per seed: high − low at ``across``=at, averaged over the other factors' levels."""
        a, b = flip["factor"], flip["across"]
        others = [f for f in factors if f not in (a, b)]
        diffs = []
        for combo in itertools.product(*(levels[f] for f in others)):
            where = dict(zip(others, combo), **{b: at})
            high = cells.get((*[str(where.get(f, flip["high"])) for f in factors], seed))
            low = cells.get((*[str(where.get(f, flip["low"])) for f in factors], seed))
            if high is None or low is None:
                return np.nan
            diffs.append(high - low)
        return float(np.mean(diffs)) if diffs else np.nan

    tests = []
    for flip in flips:
        flip = dict(flip, contrasts=[])
        for pos in flip["positive"]:
            for neg in flip["negative"]:
                contrast = np.array([effect(flip, pos, s) - effect(flip, neg, s) for s in seeds])
                contrast = contrast[np.isfinite(contrast)]
                p = np.nan
                if len(contrast) >= 2 and np.std(contrast, ddof=1) > 0:
                    p = float(st.ttest_1samp(contrast, 0.0).pvalue)
                flip["contrasts"].append({"positive": pos, "negative": neg, "seeds": len(contrast),
                                          "estimate": float(np.mean(contrast)) if len(contrast) else np.nan, "p": p})
        tests.append(flip)
    adjusted = iter(holm([c["p"] for flip in tests for c in flip["contrasts"]]))
    alpha = 1 - confidence
    for flip in tests:
        for c in flip["contrasts"]:
            c["p_holm"] = float(next(adjusted))
        ps = [c["p_holm"] for c in flip["contrasts"] if np.isfinite(c["p_holm"])]
        flip["p_holm"] = min(ps) if ps else np.nan
        flip["supported"] = bool(ps) and flip["p_holm"] < alpha
    return tests


ANOVA_COLUMNS = ["term", "order", "df", "sum_sq", "F", "p", "partial_eta2"]
MIN_RESULTS = 2  # per cell of the ANOVA's grid: a cell mean with a within-cell spread
EXHAUSTIVE_LIMIT = 200_000  # sub-grids searched one by one up to this many; greedily beyond


def complete_subgrid(counts: np.ndarray, min_results: int = MIN_RESULTS) -> list[list[int]]:
    """The largest sub-grid (a subset of each factor's levels, all their combinations) in which
    every cell has at least ``min_results`` results; ``counts`` holds the results per cell (one
    axis per factor). Largest: most factors left with two or more levels, then most cells, then
    most results; found by trying every subset of levels where there are few enough, else by
    removing, one at a time, the level with the most short cells. Returns the kept level
    indices per factor (an empty list for every factor when no cell has enough)."""
    shape = counts.shape
    if counts.size == 0 or counts.max() < min_results:
        return [[] for _ in shape]
    ok = counts >= min_results

    def score(keep: list[list[int]]) -> tuple:
        block = counts[np.ix_(*keep)]
        return (sum(len(k) > 1 for k in keep), block.size, int(block.sum()))

    def whole(keep: list[list[int]]) -> bool:
        return bool(ok[np.ix_(*keep)].all())

    if np.prod([2.0 ** n - 1 for n in shape]) <= EXHAUSTIVE_LIMIT:  # counted before any is built
        subsets = [[list(c) for r in range(n, 0, -1) for c in itertools.combinations(range(n), r)] for n in shape]
        best, best_score = None, None
        for keep in itertools.product(*subsets):
            keep = list(keep)
            if whole(keep) and (best_score is None or score(keep) > best_score):
                best, best_score = keep, score(keep)
        return best
    keep = [list(range(n)) for n in shape]
    while not whole(keep):
        short = ~ok[np.ix_(*keep)]
        block = counts[np.ix_(*keep)]
        # the level in the most short cells (ties: the one with the fewest results) goes first
        worst = max(((axis, i) for axis in range(len(shape)) for i in range(len(keep[axis])) if len(keep[axis]) > 1),
                    key=lambda ai: (short.take(ai[1], axis=ai[0]).sum(), -block.take(ai[1], axis=ai[0]).sum()),
                    default=None)
        if worst is None:  # one level left of every factor and its cell is short
            return [[] for _ in shape]
        del keep[worst[0]][worst[1]]
    return keep


def anova(runs: pd.DataFrame, factors: list[str], metric: str = "final_test_acc") -> tuple[pd.DataFrame, list[str]]:
    """Type-II ANOVA of the metric on every swept factor and all their interactions, with seed
    as an additive block (statsmodels: OLS, ``anova_lm(typ=2)``).

    Fitted on the finite results of runs that did not diverge (a diverged run's score is a
    floor, not a measurement: one 0% among 90% accuracies is most of the residual), over the
    largest complete sub-grid (:func:`complete_subgrid`: the levels where every cell keeps at
    least two such results), so every term's degrees of freedom are estimable. Where the
    residual degrees of freedom run out, the highest interactions are left out (the largest
    order that leaves at least one).

    Returns (table, notes): table rows per term (``term`` as "norm × activation", ``order``,
    ``df``, ``sum_sq``, ``F``, ``p``, ``partial_eta2`` = SS / (SS + SS_residual)) plus the
    ``Residual`` row; attrs ``n``, ``df_resid``, ``max_order``, ``levels`` (the levels fitted,
    per factor) and ``left_out`` (per factor, the levels left out); notes say what the model
    left out and why."""
    notes: list[str] = []
    runs = with_levels(runs, factors)
    done = results_of(runs, metric)
    diverged = done["status"] == "diverged"
    finite = np.isfinite(done[metric].to_numpy(float))
    if diverged.any() or (~finite).any():
        notes.append(f"{int((diverged | ~finite).sum())} diverged run(s) are left out (a diverged run's score is a "
                     "floor, not a measurement); the comparisons count them")
    done = done[~diverged & finite]
    data, kept, left_out = _on_complete_subgrid(done, runs, factors, metric, notes)
    if data is None:
        return pd.DataFrame(columns=ANOVA_COLUMNS), notes + [
            f"no ANOVA: no two levels of a factor whose every cell has {MIN_RESULTS} or more results that did not "
            "diverge"]
    swept = [f for f in factors if len(kept[f]) > 1]
    if len(data) < 3 or np.ptp(data["y"]) == 0:
        return pd.DataFrame(columns=ANOVA_COLUMNS), notes + ["no ANOVA: too few results, or the metric does not vary"]
    table, fitted, order = _fit(data, [f"f{factors.index(f)}" for f in swept])
    if fitted is None:
        return pd.DataFrame(columns=ANOVA_COLUMNS), \
            notes + ["no ANOVA: no residual degrees of freedom even for the main effects"]
    if order < len(swept):
        notes.append(f"interactions above order {order} are left out of the model: with these runs they would "
                     "leave no residual degrees of freedom (more seeds would allow them)")
    if fitted.model.rank < len(fitted.params):  # cannot happen on a complete grid; said if it does
        notes.append(f"the design is rank deficient ({fitted.model.rank} of {len(fitted.params)} parameters "
                     "estimable): the degrees of freedom shown overstate what these runs can estimate")
    if data["seed"].nunique() > 1:
        notes.append("seed is an additive block (runs of one seed share the data order and the initial weights)")
    out = _rows(table, {f"C(f{factors.index(f)})": f for f in factors})
    out.attrs.update(metric=metric, n=len(data), df_resid=float(fitted.df_resid), max_order=order,
                     levels={f: kept[f] for f in factors}, left_out=left_out)
    return out, notes


def _on_complete_subgrid(done: pd.DataFrame, runs: pd.DataFrame, factors: list[str], metric: str,
                         notes: list[str]) -> tuple[pd.DataFrame | None, dict, dict]:
    """The ANOVA's data (columns f0, f1, ..., y, seed) on the complete sub-grid of ``done``, the
    levels kept and left out per factor; a note for what was left out and why."""
    levels = {f: [str(v) for v in runs[f].cat.categories] for f in factors}
    counts = np.zeros([len(levels[f]) for f in factors], dtype=int)
    index = [done[f].cat.codes.to_numpy() for f in factors]
    np.add.at(counts, tuple(index), 1)
    # A sweep of one seed has one result per cell: its grid needs only that (and its model has no
    # room for interactions); with more seeds, two per cell, so each cell has a spread.
    needed = min(MIN_RESULTS, max(1, runs["seed"].nunique()))
    keep = complete_subgrid(counts, needed)
    if not keep or not any(len(k) > 1 for k in keep):
        return None, {}, {}
    kept = {f: [levels[f][i] for i in k] for f, k in zip(factors, keep)}
    left_out = {f: [v for v in levels[f] if v not in kept[f]] for f in factors}
    if any(left_out.values()):
        short = [(cell, int(n)) for cell, n in np.ndenumerate(counts) if n < needed]
        examples = "; ".join(", ".join(f"{f}={levels[f][i]}" for f, i in zip(factors, cell)) + f": {n}"
                             for cell, n in short[:4]) + (f" and {len(short) - 4} more" if len(short) > 4 else "")
        dropped = "; ".join(f"{f} {', '.join(v)}" for f, v in left_out.items() if v)
        notes.append(f"fitted on the largest grid whose every cell has {needed} or more results that did not "
                     f"diverge; left out: {dropped} (results per short cell: {examples})")
    constant = [f for f in factors if len(kept[f]) == 1 and len(levels[f]) > 1]
    if constant:
        notes.append(f"{', '.join(constant)} keep(s) one level on that grid and are not in the model")
    inside = np.ones(len(done), dtype=bool)
    for f in factors:
        inside &= done[f].astype(str).isin(kept[f]).to_numpy()
    done = done[inside]
    data = pd.DataFrame({f"f{i}": done[f].astype(str).to_numpy() for i, f in enumerate(factors)})
    data["y"] = done[metric].to_numpy(float)
    data["seed"] = done["seed"].astype(str).to_numpy()
    return data, kept, left_out


def _fit(data: pd.DataFrame, names: list[str]):
    """The OLS fit with every interaction of ``names`` the residual df allow, and its type-II table."""
    import statsmodels.formula.api as smf
    from statsmodels.stats.anova import anova_lm

    block = " + C(seed)" if data["seed"].nunique() > 1 else ""
    terms = " + ".join(f"C({n})" for n in names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for order in range(len(names), 0, -1):
            formula = f"y ~ ({terms}){f' ** {order}' if order > 1 else ''}{block}"
            model = smf.ols(formula, data=data).fit()
            if model.df_resid >= 1:
                return anova_lm(model, typ=2), model, order
    return None, None, 0


def _rows(table: pd.DataFrame, back: dict[str, str]) -> pd.DataFrame:
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
    return pd.DataFrame(rows, columns=ANOVA_COLUMNS)
