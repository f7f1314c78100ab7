"""Figures of a sweep's per-layer diagnostics over training (mean over each cell's runs): one
figure per diagnostic with a panel per layer, the smoothness along the gradient, BN's train- vs
eval-mode accuracy, and one unit of the last hidden layer (Ioffe & Szegedy 2015, Fig. 1)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from bnbench.render.diagnostics import SMOOTHNESS, collect, layer_names


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
