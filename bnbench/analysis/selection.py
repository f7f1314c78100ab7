"""Per-arm selection on the validation split: ``bnbench report DIR --select KEY``.

"Does batch norm help?" has no answer at one learning rate: a rate that suits one arm
handicaps the other. With ``--select optimizer.lr`` each *arm* (a cell of the sweep without the
selected key: norm=none, norm=bn_before, ...) gets its own value of the key, the one with the
best mean validation metric over its seeds, and the arms are then compared at their own chosen
values on the test metric, paired by seed, by the report's usual statistics. Selection reads
the validation split only (``dataset.val_size``), never the test set.

The validation criterion follows the reported metric: the final model's validation metric for
``final_*`` metrics, the best validation metric for ``*_at_best_val`` (the evaluation that
metric comes from). A value under which any seed diverged is chosen only when every value had a
diverged seed, and then the best of those with the fewest (said in the arm's note): for every
metric kind, accuracies included (a diverged run's accuracy is finite, that of its final model,
and could otherwise lead). The seeds that chose the values are the ones
reported, which flatters the chosen values a little (a winner's curse): the report says so,
and a rerun of the chosen values on fresh seeds is the clean comparison.

No torch here: pandas on the runs table of bnbench.report.collect_runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from bnbench.analysis import stats


class SelectionError(ValueError):
    """--select cannot be applied to this sweep; the message says why and what to do."""


@dataclass
class Selection:
    key: str  # the selected config key, e.g. optimizer.lr
    criterion: str  # the validation column the values were chosen by
    arms: list[str]  # the factors that define an arm
    # one row per arm: its factor values, chosen, criterion (mean over seeds at the chosen value),
    # n (seeds with a result there), values (per value: (value, mean, results, diverged, failed or
    # unfinished)), note
    table: pd.DataFrame


def criterion_for(metric: str, runs: pd.DataFrame) -> str:
    """The validation column that selects values for ``metric``."""
    if metric.endswith("_at_best_val"):
        return "best_val_acc" if "acc" in metric else "best_val_loss"
    if "acc" in metric and runs["final_val_acc"].notna().any():
        return "final_val_acc"
    return "final_val_loss"


def select_per_arm(runs: pd.DataFrame, factors: list[str], key: str,
                   metric: str) -> tuple[pd.DataFrame, list[str], Selection]:
    """The runs of each arm at its chosen value of ``key``, the factors left (``key`` removed),
    and the selection made (for the report)."""
    if key not in factors:
        swept = ", ".join(factors) or "none"
        raise SelectionError(f"--select {key}: {key} is not swept in this sweep (its swept keys: {swept}); "
                             "select one of those, e.g. --select optimizer.lr on a sweep over optimizer.lr=...")
    criterion = criterion_for(metric, runs)
    results = runs["status"].isin(stats.RESULTS)
    if not runs.loc[results, criterion].notna().any():
        raise SelectionError(f"--select {key}: these runs have no validation metric ({criterion}); they were "
                             "recorded before bnbench 0.5 or with dataset.val_size=0. Rerun the sweep with a "
                             "validation split to select on it (the test set is never used for selection)")
    arms = [f for f in factors if f != key]
    higher = stats.higher_is_better(criterion)
    scored = runs.assign(_score=stats.scores(runs, criterion), _key=runs[key].astype(str))
    levels = [str(v) for v in (runs[key].cat.categories if hasattr(runs[key], "cat") else pd.unique(runs[key]))]
    rows, keep = [], pd.Series(False, index=runs.index)
    for arm_values, arm in stats.split_cells(scored, arms, sort=False).items():
        per_value = []
        for value in levels:
            runs_at = arm[arm["_key"] == value]
            if len(runs_at) == 0:
                continue
            at = runs_at[runs_at["_score"].notna()]
            diverged = int((at["status"] == "diverged").sum())
            lost = len(runs_at) - len(at)  # failed or unfinished: not results, but said
            per_value.append((value, float(at["_score"].mean()) if len(at) else np.nan, len(at), diverged, lost))
        row = dict(zip(arms, arm_values))
        chosen, note = _choose(per_value, higher)
        edge = _at_edge(chosen, levels)
        note = "; ".join(n for n in (note, edge) if n)
        row.update(chosen=chosen, values=per_value, note=note)
        chosen_entry = next((v for v in per_value if v[0] == chosen), None)
        row.update(criterion=chosen_entry[1] if chosen_entry else np.nan, n=chosen_entry[2] if chosen_entry else 0)
        rows.append(row)
        if chosen is not None:
            keep |= runs.index.isin(arm.index[arm["_key"] == chosen])
    table = pd.DataFrame(rows, columns=[*arms, "chosen", "criterion", "n", "values", "note"])
    return runs[keep].reset_index(drop=True), arms, Selection(key, criterion, arms, table)


def _at_edge(chosen: str | None, levels: list[str]) -> str:
    """A note when the chosen value is the smallest or largest of 3 or more numeric values: the
    best may lie beyond the grid, so the arm may be compared below its best."""
    try:
        numbers = sorted(float(v) for v in levels)
        value = float(chosen) if chosen is not None else None
    except ValueError:  # not a numeric key (optimizer=sgd,adam): no order, no edge
        return ""
    if value is None or len(numbers) < 3 or numbers[0] < value < numbers[-1]:
        return ""
    side = "smallest" if value == numbers[0] else "largest"
    return f"the {side} value swept: the best may lie beyond the grid"


def _choose(per_value: list[tuple[str, float, int, int, int]], higher: bool) -> tuple[str | None, str]:
    """The chosen value among (value, mean criterion, results, diverged, failed or unfinished)
    and a note for the reader: ties, and arms where every value had a diverged seed, are said."""
    per_value = [v for v in per_value if v[2] > 0]  # values with no result cannot be chosen
    if not per_value:
        return None, "no results at any value: nothing to compare"
    # The rule holds for every metric kind: a diverged seed's loss is infinite, but its accuracy
    # is finite (that of its final model) and could still lead; a value with one is not stable.
    clean = [v for v in per_value if v[3] == 0 and np.isfinite(v[1])]
    if not clean:  # a diverged seed under every value
        fewest = min(v[3] for v in per_value)
        pool = [v for v in per_value if v[3] == fewest]
        finite = [v for v in pool if np.isfinite(v[1])]
        chosen = _best(finite, higher)[0] if finite else pool[0]
        return chosen[0], (f"every value had a diverged seed; chose {chosen[0]}, the best of those with the fewest "
                           f"({fewest} of {chosen[2]})")
    tied = _best(clean, higher)
    note = f"tie between {', '.join(v[0] for v in tied)}: chose the first in the sweep's order" if len(tied) > 1 else ""
    return tied[0][0], note


def _best(values: list[tuple], higher: bool) -> list[tuple]:
    """The entries with the best mean (ties: every one, in the sweep's order)."""
    best = max(v[1] for v in values) if higher else min(v[1] for v in values)
    return [v for v in values if np.isclose(v[1], best, rtol=0, atol=1e-12)]
