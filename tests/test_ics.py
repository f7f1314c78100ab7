"""Internal covariate shift (Santurkar et al. 2018, Definition 2.1), on cases whose value is known."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from bnbench.job import ics
from bnbench.job.data import load_dataset
from bnbench.job.models import build_model
from bnbench.job.engine import train, train_copies
from conftest import as_float64, make_cfg

CPU = torch.device("cpu")


def _mse(out, y):
    return 0.5 * ((out - y) ** 2).sum()


def test_a_two_layer_linear_net_matches_the_hand_computed_gradients():
    """y = W2 W1 x, L = ||y - t||^2 / 2: G1 = W2^T r x^T, G2 = r (W1 x)^T with r = W2 W1 x - t;
    after an SGD step of W1 (lr eta), G2' = r' (W1' x)^T with W1' = W1 - eta G1, r' = W2 W1' x - t."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4, bias=False), nn.Linear(4, 2, bias=False)).double()
    x, t = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    eta = 0.05
    before = ics.before_step(net, x, t, _mse, CPU)
    W1, W2 = net[0].weight.detach().numpy().copy(), net[1].weight.detach().numpy().copy()
    X, T = x.numpy().T, t.numpy().T  # columns are samples
    R = W2 @ W1 @ X - T
    G1, G2 = W2.T @ R @ X.T, R @ (W1 @ X).T
    np.testing.assert_allclose(before.grads[0].numpy(), G1, rtol=1e-12)
    np.testing.assert_allclose(before.grads[1].numpy(), G2, rtol=1e-12)
    with torch.no_grad():  # the step: plain SGD on both layers
        net[0].weight -= eta * torch.from_numpy(G1)
        net[1].weight -= eta * torch.from_numpy(G2)
    after_weights = [p.detach().clone() for p in net.parameters()]
    shift = ics.after_step(net, before, x, t, _mse, CPU)
    W1p = W1 - eta * G1
    G2p = (W2 @ W1p @ X - T) @ (W1p @ X).T  # layer 2 itself not updated: W2 as before the step
    assert shift[0] == {"ics_l2": 0.0, "ics_cos": pytest.approx(1.0)}, "the first layer has no layer before it"
    assert shift[1]["ics_l2"] == pytest.approx(np.linalg.norm(G2 - G2p), rel=1e-10)
    cos = (G2 * G2p).sum() / (np.linalg.norm(G2) * np.linalg.norm(G2p))
    assert shift[1]["ics_cos"] == pytest.approx(cos, rel=1e-10) and shift[1]["ics_l2"] > 0
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), after_weights)), "the step's weights are kept"


def test_no_update_no_shift_and_the_model_is_left_as_the_step_left_it():
    """Earlier layers that did not move give G' = G exactly (the issue's zero-learning-rate case),
    also with BN in train mode and dropout, whose masks are the step's own in every pass."""
    cfg = make_cfg("norm=bn_before", "trainer.dropout=0.3", "model.width=16")
    model = build_model(cfg, (1, 8, 8), 10)
    x, y = torch.randn(20, 1, 8, 8), torch.randint(0, 10, (20,))
    loss = nn.functional.cross_entropy
    buffers = [b.clone() for b in model.buffers()]
    before = ics.before_step(model, x, y, loss, CPU)
    assert all(torch.equal(a, b) for a, b in zip(buffers, model.buffers())), "BN statistics restored"
    shift = ics.after_step(model, before, x, y, loss, CPU)  # no step in between
    assert len(shift) == 4 and all(s["ics_l2"] == 0.0 and s["ics_cos"] == pytest.approx(1.0) for s in shift)
    with torch.no_grad():  # a layer whose gradient vanished to exactly 0: no direction, no cosine
        model.head.weight.zero_()
    before = ics.before_step(model, x, y, loss, CPU)
    shift = ics.after_step(model, before, x, y, loss, CPU)
    assert [math.isnan(s["ics_cos"]) for s in shift] == [True, True, True, False], "zero gradient: undefined"
    assert [s["ics_l2"] for s in shift[:3]] == [0.0, 0.0, 0.0]


def test_measuring_it_leaves_training_unchanged_and_a_stack_measures_each_copy(float64_default):
    """ICS and smoothness on together: the run's numbers are those without them, and each copy
    of a stack of three seeds measures what its own run measures."""
    base = ("norm=bn_before", "activation=sigmoid", "trainer.dropout=0.1", "trainer.epochs=1",
            "diagnostics.enabled=true", "diagnostics.every=7", "trainer.log_progress=false")
    cfg_on = make_cfg(*base, "diagnostics.ics=true", "diagnostics.smoothness=true")  # both measurements
    cfg_off = make_cfg(*base)
    data = as_float64(load_dataset(cfg_on, CPU))
    runs = {}
    for name, cfg in (("on", cfg_on), ("off", cfg_off)):
        torch.manual_seed(0)
        runs[name] = train(build_model(cfg, data.in_shape, data.num_outputs), data, cfg, CPU)
    without_time = [[{k: v for k, v in row.items() if k != "wall_s"} for row in runs[name].history]
                    for name in ("on", "off")]
    assert without_time[0] == without_time[1], "the measurement's extra passes leave no trace"
    on_rows = runs["on"].diagnostics
    assert all(r["ics_l2"] is not None for r in on_rows) and all(r.get("ics_l2") is None for r in runs["off"].diagnostics)
    assert {r["ics_l2"] for r in on_rows if r["layer"] == 0} == {0.0}
    assert any(r["ics_l2"] > 0 for r in on_rows if r["layer"] > 0)
    # a stack of three seeds: each copy's shift is its own run's
    seeds = [0, 1, 2]
    models = []
    for seed in seeds:
        torch.manual_seed(seed)
        models.append(build_model(cfg_on, data.in_shape, data.num_outputs))
    stacked = train_copies(models, seeds, data, cfg_on, CPU)
    for seed, together in zip(seeds, stacked):
        torch.manual_seed(seed)
        seed_cfg = cfg_on.copy()
        seed_cfg.seed = seed
        alone = train(build_model(cfg_on, data.in_shape, data.num_outputs), data, seed_cfg, CPU)
        for a, b in zip(alone.diagnostics, together.diagnostics):
            for key in ("ics_l2", "ics_cos", "loss_variation", "grad_change", "beta_smoothness"):
                assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-9), (key, a["step"], a["layer"])


@pytest.fixture
def float64_default():
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def test_the_report_tabulates_the_shift_per_cell_and_layer(tmp_path):
    from bnbench import report
    from bnbench.render import diagnostics as diagnostics_report
    from bnbench.job.experiment import run_experiment

    for norm in ("none", "bn_before"):
        overrides = [f"norm={norm}", "seed=0"]
        cfg = make_cfg(*overrides, "trainer.steps=20", "diagnostics.enabled=true", "diagnostics.every=5",
                       "diagnostics.ics=true", "trainer.threads=1", "trainer.log_progress=false")
        run_experiment(cfg, tmp_path / f"norm={norm},seed=0", overrides=overrides)
    tables = report.build(tmp_path)
    summary = tables.diagnostics.set_index(["norm", "layer"])
    assert summary.loc[("none", 0), "ics_l2_mean"] == 0.0 and summary.loc[("none", 1), "ics_l2_mean"] > 0
    assert "Internal covariate shift" in "\n".join(diagnostics_report.markdown_lines(tables.diagnostics, ["norm"]))


@pytest.mark.parametrize("flag", ["diagnostics.ics=true", "diagnostics.smoothness=true"])
def test_a_measurement_without_diagnostics_is_refused_not_ignored(tmp_path, flag):
    from bnbench.job.experiment import run_experiment

    summary = run_experiment(make_cfg(flag), tmp_path)
    assert summary["status"] == "failed" and "needs diagnostics.enabled=true" in summary["error"]
