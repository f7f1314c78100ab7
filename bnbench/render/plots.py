"""Figures of a sweep, rendered headless to PNG (matplotlib's Agg backend).

``learning_curves`` reads each run's metrics.csv and draws the mean over completed seeds with
a t-based confidence band; ``cell_intervals`` draws the per-cell mean and interval of a
:func:`bnbench.analysis.stats.cell_stats` table. Runs that diverged are drawn thin and dashed up to
where they stopped (they are not in the mean); failed and missing runs are named in the panel
titles or next to their cell, so no run disappears without a trace.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and in CI; must precede pyplot

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import PercentFormatter  # noqa: E402
from scipy import stats as st  # noqa: E402

from bnbench import records  # noqa: E402
from bnbench.analysis.stats import higher_is_better, split_cells, with_levels
from bnbench.records import STATUSES, is_fraction  # noqa: E402

_LABELS = {"test_acc": "test accuracy", "train_acc": "train accuracy", "train_loss": "train loss",
           "train_loss_running": "train loss (running mean)", "train_acc_running": "train accuracy (running mean)",
           "test_loss": "test loss", "final_test_acc": "final test accuracy",
           "best_test_acc": "best test accuracy", "final_train_loss": "final train loss",
           "best_test_loss": "best test loss",
           "final_test_loss": "final test loss", "val_acc": "validation accuracy", "val_loss": "validation loss",
           "final_val_acc": "final validation accuracy", "final_val_loss": "final validation loss",
           "best_val_acc": "best validation accuracy", "best_val_loss": "best validation loss",
           "test_acc_at_best_val": "test accuracy at the best validation accuracy",
           "test_loss_at_best_val": "test loss at the best validation loss"}
_MAX_COLS = 4  # panels per row before wrapping, so many levels grow the figure downwards


def _label(metric: str) -> str:
    return _LABELS.get(metric, metric.replace("_", " "))


MAX_LEGEND = 24  # lines a learning-curve legend names; beyond, the colours go in order instead


def _colors(n: int) -> list:
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20" if n <= 20 else "turbo")
    return [cmap(i) for i in range(n)] if n <= 20 else [cmap(x) for x in np.linspace(0.05, 0.95, n)]


def _read_metrics(run_dir: Path) -> pd.DataFrame | None:
    try:
        frame = pd.read_csv(run_dir / records.METRICS)
    except (OSError, ValueError):  # missing, empty, unparsable or not text: the report lists it
        return None
    frame = frame.rename(columns=records.legacy_metric_names(frame.columns))  # a record before bnbench 0.2
    return frame if len(frame) and "epoch" in frame else None


def _mean_band(curves: list[pd.Series], confidence: float) -> tuple[pd.Series, pd.Series, pd.Series]:
    """Mean over seeds per epoch, with a t-interval half-width from scipy (0 where n < 2)."""
    table = pd.concat(curves, axis=1)
    n = table.notna().sum(axis=1)
    mean = table.mean(axis=1)
    with warnings.catch_warnings():  # single-seed epochs: sem is NaN, replaced by 0 below
        warnings.simplefilter("ignore", RuntimeWarning)
        sem = pd.Series(st.sem(table, axis=1, nan_policy="omit"), index=table.index)
    half = pd.Series(st.t.ppf((1 + confidence) / 2, np.maximum(n - 1, 1)), index=table.index) * sem
    half = half.where(n >= 2, 0.0)
    return mean, mean - half, mean + half


def _limits(metric: str, means: list[float], bands: list[float]) -> tuple[float, float, bool]:
    """(low, high, log) for a metric row from the completed runs' curves: accuracies span
    0-100%; losses that span more than a decade get a log axis fitted to the means (a linear
    t-band reaches below zero there); otherwise the bands fit."""
    if is_fraction(metric) or not means:
        return -0.03, 1.03, False
    lo, hi = min(means), max(means)
    if "loss" in metric and lo > 0 and hi / lo > 10:
        return lo / 1.5, hi * 1.5, True
    lo, hi = min(lo, *bands), max(hi, *bands)
    pad = 0.05 * (hi - lo) or 0.05 * abs(hi) or 0.05
    return lo - pad, hi + pad, False


def _format_axis(ax, metric: str, axis: str = "y") -> None:
    target = ax.yaxis if axis == "y" else ax.xaxis
    if is_fraction(metric):
        target.set_major_formatter(PercentFormatter(xmax=1.0))


def learning_curves(
    sweep_dir: Path,
    runs: pd.DataFrame,
    factors: list[str],
    out_path: Path,
    metric: str = "test_acc",
    panel_factor: str | None = None,
    confidence: float = 0.95,
) -> Path:
    """Per-epoch ``metric`` (top row) and the running train loss (bottom row) for every cell: one panel
    per level of ``panel_factor`` (default: the first factor, or a single panel when only one
    factor varies), one coloured line per combination of the remaining factors, mean over
    completed seeds with a ``confidence`` band. Returns ``out_path``."""
    sweep_dir, out_path = Path(sweep_dir), Path(out_path)
    runs = with_levels(runs, factors)
    if panel_factor is None and len(factors) > 1:
        panel_factor = factors[0]
    if panel_factor is not None and panel_factor not in factors:
        raise ValueError(f"panel factor {panel_factor!r} is not a swept factor; factors: {factors}")
    if metric not in records.METRIC_COLUMNS:
        raise ValueError(f"metric must be a metrics.csv column {records.METRIC_COLUMNS[2:6]}, not {metric!r}")
    line_factors = [f for f in factors if f != panel_factor]
    panels = list(runs[panel_factor].cat.categories) if panel_factor else [None]
    line_keys = list(split_cells(runs, line_factors))  # in the sweep's value order
    colors = dict(zip(line_keys, _colors(len(line_keys))))
    # The loss the optimizer saw (train mode, averaged since the last evaluation): every record has it.
    rows = list(dict.fromkeys([metric, "train_loss_running"]))
    curves = {r: _read_metrics(sweep_dir / str(r)) for r in runs["run"]}

    ncols = min(_MAX_COLS, len(panels))
    blocks = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(blocks * len(rows), ncols, figsize=(3.6 * ncols + 0.5, 2.7 * blocks * len(rows)),
                             squeeze=False, sharex=True, layout="constrained")
    for ax in axes.flat:
        ax.set_visible(False)
    by_metric: dict[str, list] = {m: [] for m in rows}  # axes of each metric row, to share limits
    means: dict[str, list] = {m: [] for m in rows}  # completed curves: what the limits are set from
    bands: dict[str, list] = {m: [] for m in rows}
    diverged: list = []  # drawn last, clipped to those limits
    for i, panel in enumerate(panels):
        in_panel = runs if panel is None else runs[runs[panel_factor] == panel]
        cells = split_cells(in_panel, line_factors)
        for m, row_metric in enumerate(rows):
            ax = axes[(i // ncols) * len(rows) + m, i % ncols]
            ax.set_visible(True)
            by_metric[row_metric].append(ax)
            for key, cell in cells.items():
                series = {r: curves[r].set_index("epoch")[row_metric] for r in cell["run"]
                          if curves[r] is not None and row_metric in curves[r]}
                done = [series[r] for r in cell.loc[cell["status"] == "completed", "run"] if r in series]
                if done:
                    mean, low, high = _mean_band(done, confidence)
                    if is_fraction(row_metric):  # a t-band can pass 0% or 100%; accuracy cannot
                        low, high = low.clip(0, 1), high.clip(0, 1)
                    ax.plot(mean.index, mean, color=colors[key], lw=1.6)
                    ax.fill_between(mean.index, low, high, color=colors[key], alpha=0.18, lw=0)
                    means[row_metric].extend(mean[np.isfinite(mean)])
                    bands[row_metric].extend(v for v in (*low, *high) if np.isfinite(v))
                for r in cell.loc[cell["status"] == "diverged", "run"]:
                    ok = series[r][np.isfinite(series[r])] if r in series else []
                    if len(ok):  # NaN from the first evaluation on: nothing to draw
                        diverged.append((ax, row_metric, ok, colors[key]))
            ax.grid(alpha=0.3)
            if i % ncols == 0:
                ax.set_ylabel(_label(row_metric))
            else:
                ax.tick_params(labelleft=False)  # same scale as the first column
            _format_axis(ax, row_metric)
            if m == len(rows) - 1:  # bottom of each block: sharex hid the others' labels
                ax.set_xlabel("epoch")
                ax.xaxis.set_tick_params(labelbottom=True)
            if m == 0:
                title = "all runs" if panel is None else f"{panel_factor} = {panel}"
                lost = {s: int((in_panel["status"] == s).sum()) for s in STATUSES[1:]}
                lost = ", ".join(f"{n} {s}" for s, n in lost.items() if n)
                ax.set_title(title + (f"\n({lost})" if lost else ""), fontsize=10)

    limits = {m: _limits(m, means[m], bands[m]) for m in rows}
    for m, axs in by_metric.items():
        for ax in axs:  # one y scale per metric, so panels compare at a glance
            if limits[m][2]:
                ax.set_yscale("log")
            ax.set_ylim(*limits[m][:2])
    for ax, m, curve, color in diverged:
        # A loss that exploded before NaN would flatten every other curve: pin it to the edge.
        lo, hi, _ = limits[m]
        ax.plot(curve.index, curve.clip(lo, hi), color=color, lw=0.8, ls="--", marker="x",
                markevery=[len(curve) - 1], clip_on=False)  # the x may sit on the edge
    handles = [plt.Line2D([], [], color=colors[k], lw=2) for k in line_keys]
    labels = [" / ".join(k) or "mean over seeds" for k in line_keys]
    if (runs["status"] == "diverged").any():
        handles.append(plt.Line2D([], [], color="gray", lw=0.8, ls="--", marker="x"))
        labels.append("diverged run (not in mean)")
    title = f"{sweep_dir.name}: mean over completed seeds, {confidence:.0%} confidence band"
    if len(line_keys) > MAX_LEGEND:
        # a legend of 200 entries covered the axes: the lines go in order along the colour map
        # (the sweep's value order), named at its ends
        first, last = (" / ".join(k) for k in (line_keys[0], line_keys[-1]))
        title += f"\n{len(line_keys)} lines of {' / '.join(line_factors)}, coloured in order from {first} to {last}"
        if len(handles) > len(line_keys):
            fig.legend(handles[-1:], labels[-1:], loc="outside lower center", fontsize=9, frameon=False)
    elif line_factors or len(handles) > len(line_keys):
        fig.legend(handles, labels, title=" / ".join(line_factors) or None, loc="outside right center",
                   ncols=math.ceil(len(handles) / 24), fontsize=9, title_fontsize=9, frameon=False)
    fig.suptitle(title, fontsize=11)
    return _save(fig, out_path)


def cell_intervals(
    cell_stats_df: pd.DataFrame,
    factors: list[str],
    out_path: Path,
    metric: str | None = None,
    title: str | None = None,
) -> Path:
    """One row per cell (in the table's order): mean of the final metric with its confidence
    interval; colour groups the first factor. The right margin says how many results (completed
    and diverged seeds) each point stands on, and cells without a finite mean say why in place of
    a point."""
    cells = cell_stats_df.reset_index(drop=True)
    metric = metric or cells.attrs.get("metric", "final_test_acc")
    confidence = cells.attrs.get("confidence", 0.95)
    n = len(cells)
    fig, ax = plt.subplots(figsize=(7.5, 1.3 + 0.3 * max(n, 2)), layout="constrained")
    y = np.arange(n)[::-1]  # first cell on top, as in the tables
    groups = cells[factors[0]].astype(str) if factors else pd.Series(["all"] * n)
    levels = [str(v) for v in cells[factors[0]].cat.categories] if factors and isinstance(
        cells[factors[0]].dtype, pd.CategoricalDtype) else list(dict.fromkeys(groups))
    palette = dict(zip(levels, _colors(len(levels))))  # by level, not by row: same colours once ranked
    low, high = cells["ci_low"], cells["ci_high"]
    if is_fraction(metric):  # a t-interval can pass 0% or 100%; accuracy cannot
        low, high = low.clip(0, 1), high.clip(0, 1)
    has_ci = low.notna().to_numpy()
    ax.errorbar(cells["mean"][has_ci], y[has_ci], xerr=[(cells["mean"] - low)[has_ci], (high - cells["mean"])[has_ci]],
                fmt="none", ecolor="0.35", elinewidth=1.2, capsize=3)
    finite = np.isfinite(cells["mean"].to_numpy(float))  # a diverged run's loss makes a mean infinite
    ax.scatter(cells["mean"][finite], y[finite], c=[palette[g] for g in groups[finite]], s=30, zorder=3)
    for yi, (_, cell) in zip(y, cells.iterrows()):
        runs = int(cell.get("runs", cell["n"])) + int(cell.get("missing", 0))
        lost = [f"{int(cell[s])} {s}" for s in (*STATUSES[1:], "missing") if cell.get(s, 0)]
        note = f"n={int(cell['n'])}" + (f"  ({int(cell['n'])}/{runs} results; {', '.join(lost)})" if lost else "")
        ax.annotate(note, (1.0, yi), xycoords=("axes fraction", "data"), xytext=(6, 0),
                    textcoords="offset points", va="center", fontsize=8, color="0.3")
        if cell["n"] == 0 or not np.isfinite(cell["mean"]):  # nothing to plot: say so on the row itself
            text = "no result" if cell["n"] == 0 else "mean not finite (a diverged run)"
            ax.annotate(text, (0.0, yi), xycoords=("axes fraction", "data"), xytext=(6, 0),
                        textcoords="offset points", va="center", fontsize=8, style="italic", color="firebrick")
    labels = [" / ".join(str(cell[f]) for f in factors) or "all runs" for _, cell in cells.iterrows()]
    ax.set_yticks(y, labels, fontsize=9)
    ax.set_ylim(-0.7, n - 0.3)
    boundaries = np.flatnonzero(groups.to_numpy()[1:] != groups.to_numpy()[:-1])
    if len(boundaries) == groups.nunique() - 1:  # rows grouped by the first factor (not ranked)
        for boundary in boundaries:
            ax.axhline(y[boundary] - 0.5, color="0.85", lw=0.8)
    ax.set_ylabel(" / ".join(factors))
    direction = "higher is better" if higher_is_better(metric) else "lower is better"
    ax.set_xlabel(f"{_label(metric)} ({direction})")
    _format_axis(ax, metric, "x")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(title or f"{_label(metric)}: mean and {confidence:.0%} CI over the results", fontsize=11)
    return _save(fig, out_path)


def profile(prof, out_path: Path, confidence: float = 0.95) -> Path:
    """The metric against a numeric key, per arm: mean over seeds with its t-interval band and
    each arm's stable range shaded on the axis; below, the share of seeds that diverged per
    value. A log axis when the values span a decade or more (learning rates)."""
    cells = prof.cells
    arms = prof.arms
    labels = cells[arms].astype(str).agg(" / ".join, axis=1) if arms else pd.Series(["all runs"] * len(cells))
    order = list(dict.fromkeys(labels))
    palette = dict(zip(order, _colors(len(order))))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7.5, 5.5), sharex=True, height_ratios=(3, 1),
                                      layout="constrained")
    values = cells["value"].astype(float)
    log = bool((values > 0).all() and values.max() / values.min() >= 10)
    for label in order:
        at = cells[labels == label]
        x = at["value"].astype(float).to_numpy()
        mean = at["mean"].to_numpy(float)
        low, high = at["ci_low"].to_numpy(float), at["ci_high"].to_numpy(float)
        if is_fraction(prof.metric):
            low, high = np.clip(low, 0, 1), np.clip(high, 0, 1)
        finite = np.isfinite(mean)
        top.plot(x[finite], mean[finite], marker="o", ms=4, color=palette[label], label=label)
        band = finite & np.isfinite(low) & np.isfinite(high)
        top.fill_between(x[band], low[band], high[band], color=palette[label], alpha=0.15, lw=0)
        bottom.plot(x, at["div_rate"].to_numpy(float), marker="o", ms=4, color=palette[label])
    for _, arm in prof.ranges.iterrows():  # the stable range: a thick bar at the arm's best mean
        label = " / ".join(str(arm[a]) for a in arms) if arms else "all runs"
        if np.isfinite(arm["low"]):
            top.plot([arm["low"], arm["high"]], [arm["best_mean"]] * 2, lw=7, alpha=0.3, solid_capstyle="round",
                     color=palette.get(label, "0.5"))
    if log:
        top.set_xscale("log")
    _format_axis(top, prof.metric)
    top.set_ylabel(_label(prof.metric))
    top.grid(alpha=0.3)
    top.legend(fontsize=8, title=" / ".join(arms) or None, title_fontsize=8)
    top.set_title(f"{_label(prof.metric)} against {prof.key}: mean and {confidence:.0%} CI over seeds; "
                  "thick bars: stable ranges", fontsize=10)
    bottom.set_ylim(-0.05, 1.05)
    bottom.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    bottom.set_ylabel("diverged")
    bottom.set_xlabel(prof.key)
    bottom.grid(alpha=0.3)
    return _save(fig, out_path)


def _save(fig, out_path: Path) -> Path:
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=120, bbox_inches="tight")  # tight: keep outside legends and notes
    plt.close(fig)
    return out_path
