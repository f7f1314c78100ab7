"""Smoothness along the gradient (Santurkar et al. 2018, sec. 3), on losses whose values are known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from bnbench.job.data import load_dataset
from bnbench.job.models import build_model
from bnbench.job.smoothness import along_gradient
from bnbench.job.engine import train
from conftest import make_cfg

CPU = torch.device("cpu")


class Quadratic(nn.Module):
    """L(w) = w'Aw / 2 (the loss function below ignores the batch): gradient A w."""

    def __init__(self, w: np.ndarray):
        super().__init__()
        self.w = nn.Parameter(torch.from_numpy(w))

    def forward(self, x):
        return self.w


def test_a_quadratic_loss_gives_its_known_smoothness():
    A = np.diag([4.0, 1.0, 0.25])
    w = np.array([1.0, -2.0, 3.0])
    model = Quadratic(w.copy())
    loss = lambda out, _: 0.5 * out @ torch.from_numpy(A) @ out  # noqa: E731
    steps = [0.05, 0.1, 0.2]
    got = along_gradient(model, torch.zeros(1), torch.zeros(1), loss, CPU, steps)
    g = A @ w
    # moving by -eta g changes the gradient by eta A g: its norm over eta ||g|| is ||A g|| / ||g||
    assert got["beta_smoothness"] == pytest.approx(np.linalg.norm(A @ g) / np.linalg.norm(g), rel=1e-12)
    assert got["grad_change"] == pytest.approx(max(steps) * np.linalg.norm(A @ g), rel=1e-12)
    losses = [0.5 * (w - eta * g) @ A @ (w - eta * g) for eta in [0.0, *steps]]
    assert got["loss_variation"] == pytest.approx(max(losses) - min(losses), rel=1e-12)
    assert torch.equal(model.w.detach(), torch.from_numpy(w)), "the weights are put back"
    # along an eigenvector the effective smoothness is that eigenvalue, the largest one here
    top = Quadratic(np.array([1.0, 0.0, 0.0]))
    assert along_gradient(top, torch.zeros(1), torch.zeros(1), loss, CPU, steps)["beta_smoothness"] == \
        pytest.approx(4.0, rel=1e-12)


def test_measuring_it_leaves_training_unchanged():
    base = ("norm=bn_before", "trainer.dropout=0.1", "trainer.steps=30", "diagnostics.enabled=true",
            "diagnostics.every=10", "trainer.log_progress=false")
    histories, rows = {}, {}
    for flag in ("true", "false"):
        cfg = make_cfg(*base, f"diagnostics.smoothness={flag}")
        data = load_dataset(cfg, CPU)
        torch.manual_seed(0)
        result = train(build_model(cfg, data.in_shape, data.num_outputs), data, cfg, CPU)
        histories[flag] = [{k: v for k, v in r.items() if k != "wall_s"} for r in result.history]
        rows[flag] = result.diagnostics
    assert histories["true"] == histories["false"]
    first = [r for r in rows["true"] if r["layer"] == 0]
    assert len(first) == 4 and all(r["beta_smoothness"] > 0 and r["loss_variation"] >= 0 for r in first)
    assert all(r["beta_smoothness"] is None for r in rows["false"])
    # one value per step, on every layer's row
    assert len({(r["step"], r["beta_smoothness"]) for r in rows["true"]}) == 4


def test_bad_step_sizes_are_refused_before_training(tmp_path):
    from bnbench.job.experiment import run_experiment

    cfg = make_cfg("diagnostics.enabled=true", "diagnostics.smoothness=true", "diagnostics.smoothness_steps=[1,-1]")
    summary = run_experiment(cfg, tmp_path)
    assert summary["status"] == "failed" and "diagnostics.smoothness_steps" in summary["error"]


def test_the_report_tabulates_and_plots_the_smoothness_per_cell(tmp_path):
    from bnbench import report
    from bnbench.render import diagnostics as diagnostics_report
    from bnbench.job.experiment import run_experiment

    for norm in ("none", "bn_before"):
        for seed in (0, 1):
            overrides = [f"norm={norm}", f"seed={seed}"]
            cfg = make_cfg(*overrides, "trainer.steps=20", "diagnostics.enabled=true", "diagnostics.every=5",
                           "diagnostics.smoothness=true", "trainer.threads=1", "trainer.log_progress=false")
            run_experiment(cfg, tmp_path / ",".join(overrides), overrides=overrides)
    tables = report.build(tmp_path)
    assert tables.diagnostics["beta_smoothness_mean"].notna().all()
    assert "Smoothness of the loss along the gradient" in "\n".join(
        diagnostics_report.markdown_lines(tables.diagnostics, ["norm"]))
    written = diagnostics_report.plot_diagnostics(tmp_path, tables.runs, ["norm"], tmp_path)
    assert (tmp_path / "diagnostics_smoothness.png").is_file() and len(written) >= 3
