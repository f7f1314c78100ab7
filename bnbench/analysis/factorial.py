"""Several factors at once: marginal means (unweighted means of cell means), two-way interaction
tables and the places where one factor's effect changes sign, and the type-II factorial ANOVA
(statsmodels OLS, seed as a block)."""

from __future__ import annotations

import warnings
from typing import Iterable, Mapping

import numpy as np
import pandas as pd


from bnbench.analysis.cells import cell_stats, results_of, with_levels

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
    done = results_of(with_levels(runs, factors), metric)
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
