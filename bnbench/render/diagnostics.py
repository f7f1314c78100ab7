"""The report side of per-layer diagnostics (bnbench/job/diagnostics.py records them): reads the
``diagnostics.csv`` files of a sweep and summarizes them per cell and layer, as tables; the
figures over training are render/diagnostics_plots.py. No torch here: a report should not pay
for importing it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from bnbench import records

SUMMARY_FILE = "diagnostics_summary.csv"  # sweep level, per cell and layer
# diagnostics.smoothness (bnbench/job/smoothness.py): one value per step, repeated on every layer's row
SMOOTHNESS = {"loss_variation": "loss variation", "grad_change": "gradient change",
              "beta_smoothness": "effective β-smoothness"}


def read_diagnostics(run_dir: Path):
    """A run's diagnostics.csv as a DataFrame, or None when it has none (or it is unreadable)."""
    import pandas as pd

    try:
        frame = pd.read_csv(Path(run_dir) / records.DIAGNOSTICS)
    except (OSError, ValueError):  # missing, empty, unparsable or not text
        return None
    return frame if len(frame) and {"step", "layer"} <= set(frame.columns) else None


def collect(sweep_dir: Path, runs, factors: list[str]):
    """Every run's diagnostics rows, with the run's factor levels, seed and status (or None)."""
    import pandas as pd

    frames = []
    for _, run in runs.iterrows():
        frame = read_diagnostics(Path(sweep_dir) / str(run["run"]))
        if frame is None:
            continue
        frame = frame.copy()
        frame.insert(0, "run", run["run"])
        frame.insert(1, "seed", run["seed"])
        frame.insert(2, "status", run["status"])
        for i, f in enumerate(factors):
            frame.insert(3 + i, f, str(run[f]))
        frames.append(frame)
    if not frames:
        return None
    data = pd.concat(frames, ignore_index=True)
    for f in factors:  # the sweep's value order, as in the other tables
        levels = [str(v) for v in runs[f].cat.categories] if isinstance(runs[f].dtype, pd.CategoricalDtype) \
            else sorted(data[f].unique())
        data[f] = pd.Categorical(data[f], categories=[v for v in levels if v in set(data[f])], ordered=True)
    return data


_SUMMARY_LAST = ("grad_norm", "pre_mean", "pre_std", "act_in_p15", "act_in_p50", "act_in_p85", "saturated_frac",
                 "dead_frac", "bn_mean_gap", "bn_var_ratio", "acc_train_mode", "acc_eval_mode")


def summarize(sweep_dir: Path, runs, factors: list[str]):
    """Per cell (factors) and layer: how many runs have diagnostics, the gradient norm at the
    first diagnostics step (initialization), and every diagnostic at each run's last
    diagnostics step (``*_last`` columns are means over those runs). None when no run of the
    sweep recorded diagnostics."""
    import numpy as np

    data = collect(sweep_dir, runs, factors)
    if data is None:
        return None
    data = data.replace([np.inf, -np.inf], np.nan)
    ordered = data.sort_values(["run", "layer", "step"], kind="stable")
    first = ordered.groupby(["run", "layer"], sort=False).head(1)
    last = ordered.groupby(["run", "layer"], sort=False).tail(1)
    keys = [*factors, "layer"]
    group = dict(observed=True, sort=True)
    summary = last.groupby(keys, **group).agg(
        name=("name", "first"), runs=("run", "nunique"),
        last_step=("step", "max"))
    summary["grad_norm_first"] = first.groupby(keys, **group)["grad_norm"].mean()
    for column in _SUMMARY_LAST:
        if column in last:
            summary[f"{column}_last"] = last.groupby(keys, **group)[column].mean()
    # input shift, ics, smoothness: over all of training, not just the end
    for column in ("input_shift", "ics_l2", "ics_cos", *SMOOTHNESS):
        if column in data and data[column].notna().any():
            per_run = data.groupby(["run", *keys], **group)[column].mean()
            summary[f"{column}_mean"] = per_run.groupby(keys, **group).mean()
    summary = summary.reset_index()
    summary["layer"] = summary["layer"].astype(int)
    return summary


def layer_names(frame) -> dict[int, str]:
    """Layer position -> its name; positions whose name differs between cells (a sweep over
    model=mlp,alexnet: fc1 of one, conv1 of the other) get every name, "fc1/conv1"."""
    out: dict[int, str] = {}
    for layer, names in frame.groupby("layer", sort=True)["name"]:
        out[int(layer)] = "/".join(dict.fromkeys(str(n) for n in names))
    return out


def _num(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:.{digits}g}"


def _pct(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{100 * value:.1f}"


def markdown_lines(summary, factors: list[str]) -> list[str]:
    """A ``## Diagnostics`` section for report.md: per-layer pivots (cells x layers) of the
    gradient norm at the start and end of training, the input to the nonlinearity,
    saturation / dead units and the BN statistics gap, then train- vs eval-mode accuracy."""
    import pandas as pd

    if summary is None or not len(summary):
        return []
    cell_label = (lambda row: " / ".join(str(row[f]) for f in factors)) if factors else (lambda row: "all runs")
    frame = summary.copy()
    frame["cell"] = frame.apply(cell_label, axis=1)
    cells = list(dict.fromkeys(frame["cell"]))
    names = layer_names(frame)
    lines = ["## Diagnostics", "",
             "From each run's `diagnostics.csv` (mean over the runs of a cell that recorded them; \"last\" is each "
             "run's last diagnostics step). Plots over training, per layer, are under Plots.", ""]

    def pivot(column: str, title: str, fmt) -> None:
        if column not in frame or frame[column].isna().all():
            return
        table = frame.pivot_table(index="cell", columns="layer", values=column, aggfunc="first", dropna=False)
        table = table.reindex(index=cells).dropna(how="all")  # cells it does not apply to: left out
        keep = [c for c in table.columns if table[c].notna().any()]
        header = [" / ".join(factors) or "cell", *[names[c] for c in keep]]
        lines.append(f"**{title}**")
        lines.append("")
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join("---" for _ in header) + "|")
        for cell, row in table.iterrows():
            lines.append("| " + " | ".join([cell, *[fmt(row[c]) for c in keep]]) + " |")
        lines.append("")

    pivot("grad_norm_first", "Weight-gradient norm at step 1", _num)
    pivot("grad_norm_last", "Weight-gradient norm, last", _num)
    pivot("input_shift_mean", "Shift of each layer's input distribution between diagnostics steps (mean over "
          "units of the W2 distance of Gaussian fits; mean over the steps)", _num)
    pivot("ics_l2_mean", "Internal covariate shift ||G − G′|| (Santurkar et al. 2018, Def. 2.1), mean over "
          "the diagnostics steps", _num)
    pivot("ics_cos_mean", "cos(G, G′), mean over the diagnostics steps (1: no shift)", _num)
    if {"act_in_p15_last", "act_in_p85_last"} <= set(frame.columns):
        frame["act_in_last"] = [
            "—" if pd.isna(a) else " / ".join(f"{v:.2f}".replace("-0.00", "0.00") for v in (a, b, c))
            for a, b, c in zip(frame["act_in_p15_last"], frame["act_in_p50_last"], frame["act_in_p85_last"])]
        frame.loc[frame["act_in_p15_last"].isna(), "act_in_last"] = None
        pivot("act_in_last", "Input to the nonlinearity, last: 15th / 50th / 85th percentiles",
              lambda v: "—" if v is None or (isinstance(v, float) and math.isnan(v)) else v)
    pivot("saturated_frac_last", "Saturated unit outputs, last (%; sigmoid < 0.01 or > 0.99, |tanh| > 0.99)", _pct)
    pivot("dead_frac_last", "Dead ReLU units, last (% of units zero on the whole batch)", _pct)
    pivot("bn_mean_gap_last", "BN |batch mean − running mean| / running std, last", _num)
    pivot("bn_var_ratio_last", "BN batch var / running var, last", _num)
    if all(f"{c}_mean" in frame for c in SMOOTHNESS):
        per_cell = frame.drop_duplicates("cell")
        lines += ["**Smoothness of the loss along the gradient (Santurkar et al. 2018, sec. 3), mean over the "
                  "diagnostics steps**", "", f"| {' / '.join(factors) or 'cell'} | "
                  + " | ".join(SMOOTHNESS.values()) + " |", "|---|---|---|---|"]
        for _, row in per_cell.iterrows():
            lines.append(f"| {row['cell']} | " + " | ".join(_num(row[f"{c}_mean"]) for c in SMOOTHNESS) + " |")
        lines.append("")
    if "acc_eval_mode_last" in frame and frame["acc_eval_mode_last"].notna().any():
        per_cell = frame.drop_duplicates("cell")
        lines += ["**Probe-set accuracy (%), last: BN with batch statistics (train mode) vs running statistics "
                  "(eval mode)**", "", f"| {' / '.join(factors) or 'cell'} | train mode | eval mode | difference (points) |",
                  "|---|---|---|---|"]
        for _, row in per_cell.iterrows():
            a, b = row["acc_train_mode_last"], row["acc_eval_mode_last"]
            diff = "—" if pd.isna(a) or pd.isna(b) else f"{100 * (a - b):+.1f}"
            lines.append(f"| {row['cell']} | {_pct(a)} | {_pct(b)} | {diff} |")
        lines.append("")
    return lines


def plot_diagnostics(sweep_dir: Path, runs, factors: list[str], out_dir: Path | None = None) -> dict[str, Path]:
    """The diagnostics figures (render/diagnostics_plots.py; matplotlib is imported there)."""
    from bnbench.render.diagnostics_plots import plot_diagnostics as plot

    return plot(sweep_dir, runs, factors, out_dir)
