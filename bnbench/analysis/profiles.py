"""Profiles over a numeric swept key: ``bnbench report DIR --profile optimizer.lr``.

Batch norm's central practical claim (Ioffe & Szegedy 2015, sec. 3.3) is that it tolerates
much larger learning rates. One rate cannot show that; the profile of the metric over a log grid
of rates can. For each arm (a cell without the key) the profile has, per value of the key, the
mean over seeds with its t-interval and the share of seeds that diverged, and the arm's *stable
range*: the values under which no seed diverged and whose mean is within ``within`` (report
units: points for accuracies) of the best such mean, taken as the unbroken run of such values
around the best one. Its width is the ratio of its ends ("0.03-1.0, 33x"; one value: 1x).

How sure is a width? Seeds are resampled with replacement (the same draw for every value and
every arm: a seed's runs share its data order and initial weights) and the range found again.
A width is a ratio of two grid values, so it can take only a few values: the report shows how
often the resamples give each ("26.7× in 93% of resamples, 13.3× in 7%") and the grid's
resolution (the ratio of neighbouring values), not a percentile interval of a discrete
statistic. With 5 seeds there are only 126 distinct resamples: below 10 seeds the report says
the uncertainty is coarse. The ratio of each arm's width to the baseline arm's is shown the
same way, from the same draws.

A range never crosses a value without results (every run there failed or was never run): it
stops before it, and the report says so.

The metric is the report's: by default the final validation accuracy (loss for regression),
since the stable range picks values and picking happens on held-out data; ``--metric
final_test_acc`` profiles the test metric itself.

No torch here: pandas on the runs table of bnbench.report.collect_runs.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from bnbench.analysis import stats

RESAMPLES = 2000


class ProfileError(ValueError):
    """--profile cannot be drawn for this sweep; the message says why and what to do."""


@dataclass
class Profile:
    key: str
    metric: str
    within: float  # in the metric's own units (a fraction for accuracies)
    arms: list[str]
    cells: pd.DataFrame  # per arm and value: value (float), n, mean, ci_low, ci_high, div_rate
    ranges: pd.DataFrame  # per arm: best, best_mean, low, high, width, width_share, width_resampled, ratio...
    notes: list[str] = field(default_factory=list)


def numeric_levels(runs: pd.DataFrame, key: str) -> list[float]:
    levels = runs[key].cat.categories if hasattr(runs[key], "cat") else pd.unique(runs[key])
    try:
        return sorted(float(v) for v in levels)
    except ValueError:
        raise ProfileError(f"--profile {key}: its values ({', '.join(map(str, levels))}) are not all numbers; "
                           "profile a numeric key such as optimizer.lr or trainer.batch_size") from None


def profile(runs: pd.DataFrame, factors: list[str], key: str, metric: str, within: float,
            confidence: float = 0.95, baseline: dict[str, str] | None = None, seed: int = 0) -> Profile:
    if key not in factors:
        raise ProfileError(f"--profile {key}: {key} is not swept in this sweep (its swept keys: "
                           f"{', '.join(factors) or 'none'}); profile one of those, over three or more values")
    if not (math.isfinite(within) and within >= 0):
        raise ProfileError(f"--within {within}: give 0 or a positive difference in the report's units")
    numeric_levels(runs, key)
    arms = [f for f in factors if f != key]
    runs = runs.assign(_value=pd.to_numeric(runs[key].astype(str)), _score=stats.scores(runs, metric))
    higher = stats.higher_is_better(metric)
    cells = stats.cell_stats(runs, [*arms, key], metric, confidence=confidence)
    cells["value"] = pd.to_numeric(cells[key].astype(str))
    cells = cells.sort_values([*arms, "value"], kind="stable").reset_index(drop=True)
    results = runs[runs["_score"].notna()]
    seeds = np.array(sorted(results["seed"].dropna().unique()))
    # one array per arm: seeds x values of scores and of divergence (NaN where no result)
    values = sorted(results["_value"].unique())
    per_arm = {}
    for arm_values, arm in stats.split_cells(results, arms, sort=False).items():
        score = arm.pivot_table(index="seed", columns="_value", values="_score", aggfunc="first")
        diverged = (arm.assign(_d=(arm["status"] == "diverged").astype(float))
                    .pivot_table(index="seed", columns="_value", values="_d", aggfunc="first"))
        per_arm[tuple(str(v) for v in arm_values)] = (score.reindex(index=seeds, columns=values),
                                                      diverged.reindex(index=seeds, columns=values))
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(seeds), size=(RESAMPLES, len(seeds))) if len(seeds) else np.zeros((0, 0), int)
    rows, widths = [], {}
    grid = np.array(values)
    for arm_key, (score, diverged) in per_arm.items():
        found = _stable_range(score.to_numpy(), diverged.to_numpy(), grid, within, higher)
        boot = np.array([_stable_range(score.to_numpy()[d], diverged.to_numpy()[d], grid, within, higher)["width"]
                         for d in draws])
        widths[arm_key] = boot
        rows.append({**dict(zip(arms, arm_key)), **found, **_resampled("width", boot, found["width"])})
    ranges = pd.DataFrame(rows)
    notes = []
    base = _baseline_arm(arms, per_arm, baseline)
    if base is not None and len(ranges):
        base_row = list(per_arm).index(base)
        extra = []
        for i, arm_key in enumerate(per_arm):
            ratio = float(ranges.loc[i, "width"] / ranges.loc[base_row, "width"])
            with np.errstate(invalid="ignore", divide="ignore"):
                boot = widths[arm_key] / widths[base]
            extra.append({"width_ratio": ratio, **_resampled("ratio", boot, ratio)})
        ranges = pd.concat([ranges, pd.DataFrame(extra)], axis=1)
        ranges.attrs["baseline"] = ", ".join(f"{a}={v}" for a, v in zip(arms, base))
    positive = grid[grid > 0]
    steps = positive[1:] / positive[:-1] if len(positive) > 1 else np.array([])
    ranges.attrs["resolution"] = (float(steps.min()), float(steps.max())) if len(steps) else None
    gaps = [", ".join(str(v) for v in key) for key, row in zip(per_arm, rows) if row.get("stopped_at_gap")]
    if gaps:
        notes.append(f"the stable range of {'; '.join(gaps)} stops at a value of {key} without results (every run "
                     "there failed or was never run): a range never crosses a value it has no results for")
    if len(seeds) < 10:
        notes.append(f"{len(seeds)} seeds: resampling so few seeds gives few distinct draws, so the shares of the "
                     "widths are coarse (read them as a guide, not a test); 10 or more seeds make them finer")
    return Profile(key, metric, within, arms, cells, ranges, notes)


def _resampled(name: str, boot: np.ndarray, point: float) -> dict:
    """How often the resamples give each value of a grid-valued statistic: ``<name>_share`` (of
    the point estimate), ``<name>_resampled`` ("26.7: 93%; 13.3: 7%", most frequent first,
    values under 1% of draws left out) and ``<name>_none_share`` (draws with no range)."""
    if not len(boot):
        return {f"{name}_share": np.nan, f"{name}_resampled": "", f"{name}_none_share": np.nan}
    finite = boot[np.isfinite(boot)]
    rounded = np.round(finite, 10)  # a ratio of grid values, up to float rounding
    values, counts = np.unique(rounded, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    shares = [(float(values[i]), counts[i] / len(boot)) for i in order if counts[i] / len(boot) >= 0.01]
    text = "; ".join(f"{v:.3g}: {100 * share:.0f}%" for v, share in shares)
    point_share = float(np.sum(np.isclose(finite, point)) / len(boot)) if np.isfinite(point) else 0.0
    return {f"{name}_share": point_share, f"{name}_resampled": text,
            f"{name}_none_share": float(np.mean(~np.isfinite(boot)))}


def _stable_range(score: np.ndarray, diverged: np.ndarray, values: np.ndarray, within: float,
                  higher: bool) -> dict:
    """The arm's best value and its stable range from seeds x values arrays (NaN: no result)."""
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a value no resampled seed has: NaN, said by `present`
        present = ~np.all(np.isnan(score), axis=0)
        means = np.where(present, np.nanmean(np.where(np.isnan(score), np.nan, score), axis=0), np.nan)
        any_diverged = np.nansum(diverged, axis=0) > 0
    finite = np.isfinite(means)
    candidates = finite & ~any_diverged
    if not candidates.any():  # a diverged seed under every value: nothing is stable
        return {"best": np.nan, "best_mean": np.nan, "low": np.nan, "high": np.nan, "width": np.nan,
                "stopped_at_gap": False}
    best_index = int(np.argmax(np.where(candidates, means, -np.inf)) if higher
                     else np.argmin(np.where(candidates, means, np.inf)))
    best_mean = means[best_index]
    close = finite & ((means >= best_mean - within) if higher else (means <= best_mean + within))
    stable = close & ~any_diverged
    lo = hi = best_index
    while lo > 0 and stable[lo - 1]:  # stable implies results: a value without any ends the range
        lo -= 1
    while hi < len(values) - 1 and stable[hi + 1]:
        hi += 1
    # a value without results where the range would otherwise have gone on
    gap = any(0 <= i < len(values) and not present[i] and 0 <= j < len(values) and stable[j]
              for i, j in ((lo - 1, lo - 2), (hi + 1, hi + 2)))
    low, high = values[lo], values[hi]
    width = high / low if low > 0 else np.nan
    return {"best": values[best_index], "best_mean": best_mean, "low": low, "high": high, "width": width,
            "stopped_at_gap": gap}


def _baseline_arm(arms: list[str], per_arm: dict, baseline: dict[str, str] | None) -> tuple[str, ...] | None:
    """The arm the widths are compared with: the report's baseline (norm=none by default)."""
    if not baseline or not arms or not set(baseline) <= set(arms):
        return None
    for arm_key in per_arm:
        if all(arm_key[arms.index(k)] == str(v) for k, v in baseline.items()):
            return arm_key
    return None
