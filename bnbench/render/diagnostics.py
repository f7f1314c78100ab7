"""The report side of per-layer diagnostics (bnbench/diagnostics.py records them): reads the
``diagnostics.csv`` files of a sweep and summarizes them per cell and layer, as tables and, over
training, as plots. No torch here: a report should not pay for importing it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bnbench import records

SUMMARY_FILE = "diagnostics_summary.csv"  # sweep level, per cell and layer
# diagnostics.smoothness (bnbench/smoothness.py): one value per step, repeated on every layer's row
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


# ====================================================================== plots


@dataclass
class _Panel:
    column: str
    label: str
    file: str
    title: str
    log: bool = False
    band: tuple[str, str] | None = None  # columns drawn around the line (15th-85th percentile)
    percent: bool = False
    reference: float | None = None  # a dashed horizontal line (e.g. ratio 1)


_PANELS = [
    _Panel("grad_norm", "weight-gradient norm", "diagnostics_grad_norm.png", "gradient norm per layer", log=True),
    _Panel("act_in_p50", "input to the nonlinearity (median; 15th-85th percentile)", "diagnostics_act_input.png",
           "input to the nonlinearity per layer", band=("act_in_p15", "act_in_p85")),
    _Panel("saturated_frac", "saturated unit outputs", "diagnostics_saturation.png", "saturated units per layer",
           percent=True),
    _Panel("dead_frac", "dead ReLU units", "diagnostics_dead_units.png", "dead ReLU units per layer", percent=True),
    _Panel("bn_mean_gap", "BN |batch mean − running mean| / running std", "diagnostics_bn_mean_gap.png",
           "BN mean gap per layer"),
    _Panel("bn_var_ratio", "BN batch var / running var", "diagnostics_bn_var_ratio.png",
           "BN variance ratio per layer", log=True, reference=1.0),
    _Panel("input_shift", "shift of the layer's input distribution (W2 per unit)", "diagnostics_input_shift.png",
           "input distribution shift per layer", log=True),
    _Panel("ics_l2", "internal covariate shift ||G − G′||", "diagnostics_ics_l2.png",
           "internal covariate shift per layer (Santurkar et al. 2018)"),
    _Panel("ics_cos", "cos(G, G′) (1: no shift)", "diagnostics_ics_cos.png", "gradient cosine per layer",
           reference=1.0),
]
_BAND_FILL_MAX_LINES = 4  # more lines per panel: the band edges are drawn as thin lines instead


def plot_diagnostics(sweep_dir: Path, runs, factors: list[str], out_dir: Path | None = None) -> dict[str, Path]:
    """PNG figures of the sweep's diagnostics over training (mean over each cell's runs):
    one per diagnostic, with one panel per layer (and per level of the first factor when two
    or more factors vary) and one line per cell; plus train- vs eval-mode accuracy and the
    percentile trace of a fixed unit of the last hidden layer (Ioffe & Szegedy 2015,
    Fig. 1b-c). Returns {title: path}; {} when no run of the sweep recorded diagnostics."""
    data = collect(sweep_dir, runs, factors)
    if data is None:
        return {}
    out_dir = Path(out_dir or sweep_dir)
    name = Path(sweep_dir).name
    out: dict[str, Path] = {}
    for panel in _PANELS:
        if panel.column in data and data[panel.column].notna().any():
            out[f"diagnostics: {panel.title}"] = _layer_figure(data, factors, panel, out_dir / panel.file, name)
    if "acc_eval_mode" in data and data["acc_eval_mode"].notna().any():
        out["diagnostics: train- vs eval-mode accuracy"] = _mode_figure(
            data, factors, out_dir / "diagnostics_bn_modes.png", name)
    if "unit_p50" in data and data["unit_p50"].notna().any():
        out["diagnostics: one unit of the last hidden layer"] = _unit_figure(
            data, factors, out_dir / "diagnostics_unit.png", name)
    if "beta_smoothness" in data and data["beta_smoothness"].notna().any():
        out["diagnostics: smoothness along the gradient"] = _smoothness_figure(
            data, factors, out_dir / "diagnostics_smoothness.png", name)
    return out


def _smoothness_figure(data, factors: list[str], out_path: Path, sweep_name: str) -> Path:
    """One panel per smoothness measure over training: per cell, the mean over its runs with the
    range over seeds as a band (a t-band of 3 seeds reaches below zero, which a log axis cannot
    show; the measures are per step: the first layer's rows carry them)."""
    import pandas as pd

    plots, plt = _pyplot()
    rows = data[data["layer"] == data["layer"].min()]
    keys = _cell_keys(rows, factors)
    colors = dict(zip(keys, plots._colors(len(keys))))
    fig, axes = plt.subplots(1, len(SMOOTHNESS), figsize=(4.2 * len(SMOOTHNESS) + 1.5, 3.2), layout="constrained")
    for ax, (column, label) in zip(axes, SMOOTHNESS.items()):
        for key in keys:
            cell = _select(rows, factors, key)
            curves = [run.set_index("step")[column].astype(float) for _, run in cell.groupby("run", sort=False)]
            if not curves:
                continue
            table = pd.concat(curves, axis=1)  # steps x runs
            mean, low, high = table.mean(axis=1), table.min(axis=1), table.max(axis=1)
            ax.plot(mean.index, mean.to_numpy(), color=colors[key], lw=1.5)
            ax.fill_between(mean.index, low.to_numpy(), high.to_numpy(), color=colors[key], alpha=0.15, lw=0)
        positive = pd.to_numeric(rows[column], errors="coerce")
        if (positive > 0).all():
            ax.set_yscale("log")
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    _legend(fig, plt, factors, keys, colors)
    fig.suptitle(f"{sweep_name}: smoothness along the gradient, mean and range over seeds", fontsize=11)
    return plots._save(fig, out_path)


def _pyplot():
    from bnbench.render import plots  # sets matplotlib's Agg backend before pyplot is imported

    import matplotlib.pyplot as plt

    return plots, plt


def _split_factors(factors: list[str]) -> tuple[str | None, list[str]]:
    """As in the learning curves: with two or more factors the first one splits the panels."""
    return (factors[0], factors[1:]) if len(factors) > 1 else (None, list(factors))


def _levels(data, factor: str) -> list[str]:
    return [str(v) for v in data[factor].cat.categories if (data[factor] == v).any()]


def _cell_keys(data, factors: list[str]) -> list[tuple]:
    if not factors:
        return [()]
    present = data[factors].drop_duplicates().sort_values(factors)
    return [tuple(str(v) for v in row) for row in present.itertuples(index=False)]


def _select(frame, factors: list[str], key: tuple):
    import numpy as np

    mask = np.ones(len(frame), dtype=bool)
    for f, level in zip(factors, key):
        mask &= (frame[f].astype(str) == level).to_numpy()
    return frame[mask]


def _mean_over_runs(data, keys: list[str], columns: list[str]):
    """Mean over the runs of each cell at each step (and layer); non-finite values ignored."""
    import numpy as np

    frame = data[[*keys, *columns]].copy()
    frame[columns] = frame[columns].replace([np.inf, -np.inf], np.nan)
    return frame.groupby(keys, observed=True, sort=True)[columns].mean().reset_index()


def _legend(fig, plt, line_factors: list[str], keys: list[tuple], colors: dict, extra=()) -> None:
    handles = [plt.Line2D([], [], color=colors[k], lw=2) for k in keys] + [h for h, _ in extra]
    labels = [" / ".join(k) for k in keys] + [label for _, label in extra]
    if not line_factors:
        handles, labels = handles[len(keys):], labels[len(keys):]
    if handles:
        fig.legend(handles, labels, title=" / ".join(line_factors) or None, loc="outside right center",
                   ncols=math.ceil(len(handles) / 24), fontsize=9, title_fontsize=9, frameon=False)


def _panel_grid(plt, n_rows: int, n_cols: int, width: float = 3.3, height: float = 2.3):
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(width * n_cols + 1.0, height * n_rows + 0.6), squeeze=False,
                             sharex=True, sharey=True, layout="constrained")
    for ax in axes.flat:
        ax.set_visible(False)
    return fig, axes


def _label_bottom(axes, positions: list[tuple[int, int]]) -> None:
    """x labels on the lowest visible panel of each column (sharex hides the others'), with
    at most five compact ticks (20k, not 20000) so that narrow panels stay legible."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    lowest: dict[int, int] = {}
    for r, c in positions:
        lowest[c] = max(lowest.get(c, -1), r)
    for c, r in lowest.items():
        ax = axes[r, c]
        ax.set_xlabel("step")
        ax.xaxis.set_tick_params(labelbottom=True)
        ax.xaxis.set_major_locator(MaxNLocator(5, integer=True))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x / 1000:g}k" if abs(x) >= 1000 else f"{x:g}"))


def _layer_figure(data, factors: list[str], panel: _Panel, out_path: Path, sweep_name: str) -> Path:
    import numpy as np
    from matplotlib.ticker import PercentFormatter

    plots, plt = _pyplot()
    columns = [panel.column, *(panel.band or ())]
    has = data.groupby("layer")[panel.column].apply(lambda s: s.notna().any())
    layers = [int(layer) for layer, ok in has.items() if ok]
    names = layer_names(data)
    kinds = data.groupby("layer")["nonlinearity"].apply(lambda s: set(s.fillna("")))
    acts = {layer: next(iter(k)) for layer, k in kinds.items() if len(k) == 1}  # named when all cells agree

    def layer_label(layer: int) -> str:
        return names.get(layer, str(layer)) + (f" ({acts[layer]})" if acts.get(layer) else "")

    panel_factor, line_factors = _split_factors(factors)
    levels = _levels(data, panel_factor) if panel_factor else [None]
    keys = _cell_keys(data, line_factors)
    colors = dict(zip(keys, plots._colors(len(keys))))
    means = _mean_over_runs(data, [*factors, "layer", "step"], columns)
    if panel_factor:  # a row per layer, a column per level of the first factor
        n_rows, n_cols = len(layers), len(levels)
        cells = [((i, j), layer, level) for i, layer in enumerate(layers) for j, level in enumerate(levels)]
    else:  # the layers, wrapped four to a row
        n_cols = min(4, len(layers))
        n_rows = math.ceil(len(layers) / n_cols)
        cells = [((i // n_cols, i % n_cols), layer, None) for i, layer in enumerate(layers)]
    fig, axes = _panel_grid(plt, n_rows, n_cols)
    values: list[float] = []
    drawn: set[tuple] = set()
    fill = len(keys) <= _BAND_FILL_MAX_LINES
    for (r, c), layer, level in cells:
        ax = axes[r, c]
        ax.set_visible(True)
        subset = means[means["layer"] == layer]
        if panel_factor:
            subset = subset[subset[panel_factor].astype(str) == level]
        for key in keys:
            curve = _select(subset, line_factors, key).sort_values("step")
            if not len(curve) or curve[panel.column].isna().all():
                continue
            ax.plot(curve["step"], curve[panel.column], color=colors[key], lw=1.4)
            drawn.add(key)
            values.extend(v for v in curve[panel.column] if np.isfinite(v))
            if panel.band:
                lo, hi = curve[panel.band[0]], curve[panel.band[1]]
                if fill:
                    ax.fill_between(curve["step"], lo, hi, color=colors[key], alpha=0.15, lw=0)
                else:
                    ax.plot(curve["step"], lo, color=colors[key], lw=0.7, ls=":")
                    ax.plot(curve["step"], hi, color=colors[key], lw=0.7, ls=":")
                values.extend(v for v in (*lo, *hi) if np.isfinite(v))
        if panel.reference is not None:
            ax.axhline(panel.reference, color="0.5", lw=0.8, ls="--")
        ax.grid(alpha=0.3)
        if panel.percent:
            ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
        if panel_factor:
            if r == 0:
                ax.set_title(f"{panel_factor} = {level}", fontsize=10)
            if c == 0:
                ax.set_ylabel(layer_label(layer), fontsize=10)
        else:
            ax.set_title(layer_label(layer), fontsize=10)
            if c == 0:
                ax.set_ylabel(panel.label if len(panel.label) < 30 else panel.label.replace(" (", "\n("),
                              fontsize=9)
    _label_bottom(axes, [pos for pos, _, _ in cells])
    positive = [v for v in values if v > 0]
    if panel.log and positive:
        axes[0, 0].set_yscale("log")  # shared by every panel
        axes[0, 0].set_ylim(min(positive) / 1.5, max(positive) * 1.5)
    elif panel.percent:
        axes[0, 0].set_ylim(-0.03, 1.03)
    extra = []
    if panel.band and not fill:
        extra = [(plt.Line2D([], [], color="0.3", lw=0.7, ls=":"), "15th / 85th percentile")]
    _legend(fig, plt, line_factors, [k for k in keys if k in drawn], colors, extra)
    rows = "rows: layers; " if panel_factor else ""
    fig.suptitle(f"{sweep_name}: {panel.label} over training\n({rows}mean over each cell's runs)", fontsize=11)
    return plots._save(fig, out_path)


def _mode_figure(data, factors: list[str], out_path: Path, sweep_name: str) -> Path:
    from matplotlib.ticker import PercentFormatter

    plots, plt = _pyplot()
    per_step = data.drop_duplicates(["run", "step"])
    means = _mean_over_runs(per_step, [*factors, "step"], ["acc_train_mode", "acc_eval_mode"])
    panel_factor, line_factors = _split_factors(factors)
    levels = _levels(data, panel_factor) if panel_factor else [None]
    keys = _cell_keys(data, line_factors)
    colors = dict(zip(keys, plots._colors(len(keys))))
    n_cols = min(4, len(levels))
    n_rows = math.ceil(len(levels) / n_cols)
    fig, axes = _panel_grid(plt, n_rows, n_cols, width=3.8, height=2.8)
    positions = []
    for i, level in enumerate(levels):
        ax = axes[i // n_cols, i % n_cols]
        positions.append((i // n_cols, i % n_cols))
        ax.set_visible(True)
        subset = means if panel_factor is None else means[means[panel_factor].astype(str) == level]
        for key in keys:
            curve = _select(subset, line_factors, key).sort_values("step")
            ax.plot(curve["step"], curve["acc_eval_mode"], color=colors[key], lw=1.6)
            ax.plot(curve["step"], curve["acc_train_mode"], color=colors[key], lw=1.2, ls="--")
        ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
        ax.grid(alpha=0.3)
        if panel_factor:
            ax.set_title(f"{panel_factor} = {level}", fontsize=10)
        if i % n_cols == 0:
            ax.set_ylabel("probe-set accuracy")
    axes[0, 0].set_ylim(-0.03, 1.03)
    _label_bottom(axes, positions)
    extra = [(plt.Line2D([], [], color="0.3", lw=1.6), "eval mode (running statistics)"),
             (plt.Line2D([], [], color="0.3", lw=1.2, ls="--"), "train mode (batch statistics)")]
    _legend(fig, plt, line_factors, keys, colors, extra)
    fig.suptitle(f"{sweep_name}: accuracy on a fixed test batch with BN in train vs eval mode\n"
                 "(mean over each cell's runs; the two coincide without BN)", fontsize=11)
    return plots._save(fig, out_path)


def _unit_figure(data, factors: list[str], out_path: Path, sweep_name: str) -> Path:
    """Per cell: the 15th/50th/85th percentiles of the input to the nonlinearity of one unit
    of the last hidden layer (the last layer with an activation), over training."""
    plots, plt = _pyplot()
    hidden = data[data["unit_p50"].notna()]
    last_layer = int(hidden["layer"].max())
    in_layer = hidden[hidden["layer"] == last_layer]
    name = str(in_layer["name"].iloc[0])
    unit = int(in_layer["unit"].dropna().iloc[0]) if in_layer["unit"].notna().any() else 0
    means = _mean_over_runs(in_layer, [*factors, "step"], ["unit_p15", "unit_p50", "unit_p85"])
    panel_factor, line_factors = _split_factors(factors)
    rest = _cell_keys(in_layer, line_factors)
    if panel_factor and len(rest) <= 6:  # rows: the first factor; columns: the rest
        levels = _levels(in_layer, panel_factor)
        cells = [((i, j), (level, *key)) for i, level in enumerate(levels) for j, key in enumerate(rest)]
        n_rows, n_cols = len(levels), len(rest)
    else:
        keys = _cell_keys(in_layer, factors)
        n_cols = min(4, len(keys))
        n_rows = math.ceil(len(keys) / n_cols)
        cells = [((i // n_cols, i % n_cols), key) for i, key in enumerate(keys)]
    fig, axes = _panel_grid(plt, n_rows, n_cols)
    styles = {"unit_p85": ("85th", "tab:red", "--"), "unit_p50": ("50th", "black", "-"),
              "unit_p15": ("15th", "tab:blue", "--")}
    for (r, c), key in cells:
        ax = axes[r, c]
        ax.set_visible(True)
        curve = _select(means, factors, key).sort_values("step")
        for column, (label, color, ls) in styles.items():
            ax.plot(curve["step"], curve[column], color=color, ls=ls, lw=1.3, label=f"{label} percentile")
        ax.set_title(" / ".join(key) or "all runs", fontsize=10)
        ax.grid(alpha=0.3)
        if c == 0:
            ax.set_ylabel("input to the nonlinearity", fontsize=9)
    _label_bottom(axes, [pos for pos, _ in cells])
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", fontsize=9, frameon=False)
    fig.suptitle(f"{sweep_name}: input to the nonlinearity of unit {unit} of {name} (last hidden layer), "
                 "percentiles over the batch\n(Ioffe & Szegedy 2015, Fig. 1b-c; mean over each cell's runs)",
                 fontsize=11)
    return plots._save(fig, out_path)
