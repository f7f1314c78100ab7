"""bnbench.render.plots: figures render headless to valid PNGs from a sweep folder written here in
the real layout (.hydra/overrides.yaml, metrics.csv, summary.json), failures included."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import yaml

from bnbench import records, report
from bnbench.render import plots
from bnbench.analysis import stats

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_run(sweep: Path, params: dict, seed: int, status: str, level: float = 0.9, epochs: int = 4) -> None:
    """One run folder as bnbench writes it. ``incomplete``: only Hydra's snapshot; ``failed``:
    a summary with an error and no metrics; ``diverged``: NaN losses from the second epoch."""
    items = [*(f"{k}={v}" for k, v in params.items()), f"seed={seed}"]
    run = sweep / ",".join(items)
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(items))
    if status == "incomplete":
        return
    rng = np.random.default_rng(seed)
    history = []
    for epoch in range(1, epochs + 1):
        acc = level - (level - 0.1) * math.exp(-epoch) + rng.normal(0, 0.01)
        loss = 2.3 * math.exp(-epoch * level) + 0.01
        if status == "diverged" and epoch >= 2:
            acc, loss = 0.1, math.nan
        history.append({"step": 10 * epoch, "epoch": float(epoch), "train_loss": loss, "train_acc": acc,
                        "test_loss": loss, "test_acc": acc, "lr": 0.1, "wall_s": 0.5 * epoch})
        if status == "diverged" and epoch >= 2:
            break
    if status == "failed":
        history = []
    else:
        records.write_csv(run / records.METRICS, history, records.METRIC_COLUMNS)
    last = history[-1] if history else {}
    records.write_json(run / records.SUMMARY, {
        "status": status, "seed": seed, "params": {**params, "seed": str(seed)},
        "error": "RuntimeError: out of memory" if status == "failed" else None,
        "final": {k: last[k] for k in ("train_loss", "train_acc", "test_loss", "test_acc")} if last else {},
        "best": {"test_acc": max(r["test_acc"] for r in history)} if history else {},
        "steps": last.get("step", 0), "epochs": last.get("epoch", 0.0), "wall_s": 1.0, "n_params": 100,
        "device": "cpu", "run_id": f"id{seed}",
    })


@pytest.fixture
def sweep(tmp_path) -> Path:
    """norm x activation x 3 seeds; none/sigmoid fails on every seed, one run diverges, one
    never finished."""
    sweep = tmp_path / "sweep"
    level = {"none": 0.8, "bn_before": 0.95, "bn_after": 0.96}
    for norm in level:
        for act in ("relu", "sigmoid"):
            for seed in range(3):
                status = "completed"
                if norm == "none" and act == "sigmoid":
                    status = "failed"
                elif (norm, act, seed) == ("bn_after", "relu", 1):
                    status = "diverged"
                elif (norm, act, seed) == ("bn_before", "sigmoid", 2):
                    status = "incomplete"
                write_run(sweep, {"norm": norm, "activation": act}, seed, status, level[norm])
    return sweep


def assert_png(path: Path) -> tuple[int, int]:
    assert path.is_file() and path.read_bytes()[:8] == PNG_MAGIC
    image = plt.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert image[..., :3].std() > 0.01  # not a blank canvas
    return image.shape[:2]


@pytest.fixture
def figures(monkeypatch) -> list:
    """The figures the plot functions save, kept open for inspection."""
    kept = []

    def keep(fig, out_path):
        kept.append(fig)
        fig.savefig(out_path, dpi=60)
        return out_path

    monkeypatch.setattr(plots, "_save", keep)
    yield kept
    for fig in kept:
        plt.close(fig)


def test_plots_render_from_a_sweep_with_failed_and_diverged_runs(sweep, tmp_path):
    runs, factors, _ = report.collect_runs(sweep)
    assert set(runs["status"]) == {"completed", "failed", "diverged", "incomplete"}
    curves = plots.learning_curves(sweep, runs, factors, tmp_path / "out" / "curves.png")
    assert curves == tmp_path / "out" / "curves.png"
    assert_png(curves)
    cells = stats.cell_stats(runs, factors)
    assert_png(plots.cell_intervals(cells, factors, tmp_path / "cells.png"))
    assert_png(plots.cell_intervals(stats.rank_cells(runs, factors, "final_train_loss"), factors,
                                    tmp_path / "loss.png"))


def test_failures_are_visible_in_the_figures(sweep, tmp_path, figures):
    runs, factors, _ = report.collect_runs(sweep)
    plots.learning_curves(sweep, runs, factors, tmp_path / "curves.png")
    titles = [ax.get_title() for ax in figures[0].axes if ax.get_visible()]
    assert any("3 failed" in t for t in titles) and any("1 diverged" in t for t in titles)
    legend = [t.get_text() for t in figures[0].legends[0].get_texts()]
    assert "relu" in legend and any("diverged" in t for t in legend)
    # the diverged run is drawn (dashed) up to its last finite value, outside the mean
    dashed = [line for ax in figures[0].axes for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert dashed and all(np.isfinite(line.get_ydata()).all() for line in dashed)

    expected = [{"norm": n, "activation": a} for n in ("none", "bn_before", "bn_after", "gn")
                for a in ("relu", "sigmoid")]
    cells = stats.cell_stats(runs, factors, expected_cells=expected)
    plots.cell_intervals(cells, factors, tmp_path / "cells.png")
    texts = [t.get_text() for t in figures[1].axes[0].texts]
    assert texts.count("no result") == 3  # none/sigmoid (failed) and the two gn cells
    assert any("3 failed" in t for t in texts) and any("3 missing" in t for t in texts)
    labels = [t.get_text() for t in figures[1].axes[0].get_yticklabels()]
    assert len(labels) == 8 and "gn / sigmoid" in labels


def test_one_factor_and_a_chosen_panel_factor(sweep, tmp_path, figures):
    runs, factors, _ = report.collect_runs(sweep)
    plots.learning_curves(sweep, runs, factors, tmp_path / "a.png", panel_factor="activation")
    assert sum(ax.get_visible() for ax in figures[0].axes) == 4  # 2 panels x (accuracy, loss)
    relu = runs[runs["activation"] == "relu"]
    assert_png(plots.learning_curves(sweep, relu, ["norm"], tmp_path / "b.png", metric="train_acc"))
    assert sum(ax.get_visible() for ax in figures[1].axes) == 2  # one factor: one panel, a line per level
    with pytest.raises(ValueError, match="not a swept factor"):
        plots.learning_curves(sweep, runs, factors, tmp_path / "c.png", panel_factor="optimizer")


def test_many_levels_wrap_and_many_cells_grow_the_figure_without_overlap(tmp_path, figures):
    sweep = tmp_path / "big"
    for act in ("relu", "tanh", "elu", "gelu", "selu", "silu"):
        for norm in ("none", "bn"):
            write_run(sweep, {"activation": act, "norm": norm}, 0, "completed", epochs=2)
    runs, factors, _ = report.collect_runs(sweep)
    plots.learning_curves(sweep, runs, factors, tmp_path / "wrap.png", panel_factor="activation")
    visible = [ax for ax in figures[0].axes if ax.get_visible()]
    assert len(visible) == 12 and figures[0].axes[0].get_gridspec().ncols == 4  # 6 panels -> 4 + 2

    def table(n_cells):
        rows = [{"norm": f"norm{i // 6}", "activation": f"act{i % 6}", "seed": s, "status": "completed",
                 "final_test_acc": 0.5 + 0.4 * i / n_cells + 0.01 * s} for i in range(n_cells) for s in range(3)]
        runs = pd.DataFrame(rows)
        return stats.cell_stats(runs, ["norm", "activation"])

    small = assert_png(plots.cell_intervals(table(4), ["norm", "activation"], tmp_path / "small.png"))
    large = assert_png(plots.cell_intervals(table(48), ["norm", "activation"], tmp_path / "large.png"))
    assert large[0] > 3 * small[0]
    fig = figures[-1]
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in fig.axes[0].get_yticklabels()]
    assert len(boxes) == 48
    assert not any(a.overlaps(b) for a, b in zip(boxes, boxes[1:]))  # neighbouring labels stay apart


def test_a_sweep_of_many_values_has_no_legend_that_covers_the_axes(tmp_path, figures):
    """200 widths drew a legend of 200 entries over the axes; above 24 lines the colours go in
    order and the title names the ends."""
    sweep = tmp_path / "wide"
    for width in range(30):
        write_run(sweep, {"model.width": f"{width + 1}"}, 0, "completed", epochs=2)
    runs, factors, _ = report.collect_runs(sweep)
    plots.learning_curves(sweep, runs, factors, tmp_path / "wide.png")
    fig = figures[0]
    assert not fig.legends
    assert "30 lines of model.width, coloured in order from 1 to 30" in fig._suptitle.get_text()
