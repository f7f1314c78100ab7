"""bnbench.job.diagnostics: values checked against hand computations on tiny networks, the record
on disk, no effect on training (same trajectory, exact resume), and the report side."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from torch import nn

from bnbench import records, report
from bnbench.render import diagnostics as diagnostics_report
from bnbench.job.diagnostics import Diagnostics, find_layers
from bnbench.job.experiment import run_experiment
from bnbench.job.models import build_model
from bnbench.job.checkpoint import Checkpoint
from conftest import CutOff, make_cfg, train_until, without_wall_time

CPU = torch.device("cpu")
QUICK = ("trainer.threads=1", "trainer.log_progress=false")


class Tiny(nn.Module):
    """One hidden block [Linear, (BN), act] and a head, laid out as bnbench's models are."""

    def __init__(self, n_in: int, width: int, act: nn.Module, bn: bool = False, bias: bool = False):
        super().__init__()
        block = [nn.Linear(n_in, width, bias=bias)]
        if bn:
            block.append(nn.BatchNorm1d(width, eps=1e-12))
        block.append(act)
        self.hidden = nn.Sequential(nn.Sequential(*block))
        self.head = nn.Linear(width, 1, bias=False)

    def forward(self, x):
        return self.head(self.hidden(x))


def _probe(model: nn.Module, x: torch.Tensor, unit: int = 0) -> list[dict]:
    """One diagnostics step as the training loop does it, with loss = sum of the outputs."""
    diag = Diagnostics(model, every=1, unit=unit)
    diag.arm()
    loss = model(x).sum()
    loss.backward()
    diag.read_gradients()
    return diag.record(1, 0.5, loss)


def test_layers_are_found_in_order_with_their_activation_and_bn():
    cfg = make_cfg("model=alexnet", "norm=bn_after", "activation=tanh", *QUICK)
    layers = find_layers(build_model(cfg, (1, 28, 28), 10), unit=40)
    assert [layer.name for layer in layers] == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc1", "fc2", "head"]
    assert all(isinstance(layer.bn, nn.BatchNorm2d) for layer in layers[:5])
    assert all(layer.activation_name == "tanh" for layer in layers[:-1])
    assert layers[-1].activation is None and layers[-1].bn is None
    assert layers[0].unit == 40 % 32 and layers[1].unit == 40  # the fixed unit wraps around the width


def test_gradient_norms_match_hand_computation():
    model = Tiny(3, 2, nn.Sigmoid())
    with torch.no_grad():
        model.hidden[0][0].weight.zero_()  # sigmoid(0) = 0.5, sigmoid'(0) = 0.25
        model.head.weight.copy_(torch.tensor([[1.0, 2.0]]))
    n = 4
    rows = _probe(model, torch.ones(n, 3))
    # loss = sum_n v . sigmoid(W x_n): dL/dv = sum_n 0.5 = [n/2, n/2]; dL/dW[j] = v_j * 0.25 * sum_n x_n
    head = rows[1]
    assert head["name"] == "head"
    assert head["grad_norm"] == pytest.approx(n / 2 * math.sqrt(2))
    assert rows[0]["grad_norm"] == pytest.approx(0.25 * n * math.sqrt(3 * (1 + 4)))
    assert rows[0]["weight_norm"] == 0.0 and head["weight_norm"] == pytest.approx(math.sqrt(5))
    assert head["loss"] == pytest.approx(n * 0.5 * 3)


def test_percentiles_and_pre_activation_statistics_match_hand_computation():
    model = Tiny(2, 2, nn.ReLU())
    with torch.no_grad():
        model.hidden[0][0].weight.copy_(torch.eye(2))  # the input to the nonlinearity is x itself
    unit0 = torch.arange(1.0, 22.0)  # 1..21: the 15th/50th/85th percentiles are 4, 11, 18
    unit1 = torch.linspace(-5.0, 0.5, 21) ** 2
    x = torch.stack([unit0, unit1], dim=1)
    row = _probe(model, x, unit=0)[0]
    assert (row["unit_p15"], row["unit_p50"], row["unit_p85"]) == pytest.approx((4.0, 11.0, 18.0))
    everything = x.numpy().ravel()
    expected = np.percentile(everything, [15, 50, 85])  # numpy's linear interpolation
    assert [row["act_in_p15"], row["act_in_p50"], row["act_in_p85"]] == pytest.approx(expected, rel=1e-6)
    assert row["pre_mean"] == pytest.approx(everything.mean(), rel=1e-6)
    assert row["pre_std"] == pytest.approx(everything.std(), rel=1e-6)  # population std
    row1 = _probe(model, x, unit=1)[0]
    assert row1["unit"] == 1
    assert row1["unit_p50"] == pytest.approx(np.percentile(unit1.numpy(), 50), rel=1e-6)


@pytest.mark.parametrize("act, big, below", [(nn.Sigmoid(), 4.7, 4.5), (nn.Tanh(), 2.7, 2.6)])
def test_a_unit_saturated_by_construction(act, big, below):
    """Unit 0 is pushed past the saturation threshold (sigmoid: 0.99 needs input > ln 99 = 4.595;
    tanh: 0.99 needs input > atanh 0.99 = 2.647) with either sign, unit 1 sits at 0."""
    model = Tiny(1, 2, act)
    with torch.no_grad():
        model.hidden[0][0].weight.copy_(torch.tensor([[1.0], [0.0]]))
    x = torch.tensor([[big], [-big], [big], [-big]])
    assert _probe(model, x)[0]["saturated_frac"] == 0.5
    just_below = torch.tensor([[below], [-below]])  # inside the thresholds: not saturated
    assert _probe(model, just_below)[0]["saturated_frac"] == 0.0
    assert _probe(model, x)[0]["dead_frac"] is None  # only ReLU units die


def test_dead_relu_units_are_zero_on_every_sample():
    model = Tiny(1, 3, nn.ReLU(), bias=True)
    with torch.no_grad():
        model.hidden[0][0].weight.copy_(torch.tensor([[1.0], [1.0], [0.0]]))
        model.hidden[0][0].bias.copy_(torch.tensor([-100.0, 0.0, 1.0]))
    x = torch.tensor([[1.0], [-1.0], [2.0]])  # unit 0: dead; unit 1: zero on one sample only; unit 2: alive
    row = _probe(model, x)[0]
    assert row["dead_frac"] == pytest.approx(1 / 3)
    assert row["saturated_frac"] is None


def test_dead_conv_channels():
    model = nn.Sequential(nn.Sequential(nn.Conv2d(1, 2, 1), nn.ReLU()))
    with torch.no_grad():
        model[0][0].weight.copy_(torch.tensor([1.0, 1.0]).view(2, 1, 1, 1))
        model[0][0].bias.copy_(torch.tensor([-10.0, 0.0]))
    x = torch.rand(3, 1, 4, 4)  # channel 0 never passes 10: dead; channel 1 is positive somewhere
    diag = Diagnostics(model, every=1)
    diag.arm()
    model(x).sum().backward()
    diag.read_gradients()
    assert diag.record(1, 0.0, torch.tensor(0.0))[0]["dead_frac"] == 0.5


def test_bn_gap_against_running_statistics_before_the_update():
    model = Tiny(2, 2, nn.Sigmoid(), bn=True)
    bn = model.hidden[0][1]
    with torch.no_grad():
        model.hidden[0][0].weight.copy_(torch.eye(2))
        bn.running_mean.copy_(torch.tensor([0.0, 1.0]))
        bn.running_var.copy_(torch.tensor([1.0, 4.0]))
    x = torch.tensor([[1.0, 0.0], [3.0, 2.0]])  # batch means [2, 1], biased variances [1, 1]
    row = _probe(model, x)[0]
    # |2 - 0| / sqrt(1) = 2 and |1 - 1| / sqrt(4) = 0; variance ratios 1/1 and 1/4
    assert row["bn_mean_gap"] == pytest.approx(1.0)
    assert row["bn_var_ratio"] == pytest.approx(0.625)
    without_bn = _probe(Tiny(2, 2, nn.Sigmoid()), x)[0]
    assert without_bn["bn_mean_gap"] is None and without_bn["bn_var_ratio"] is None


def test_train_and_eval_mode_accuracy_differ_only_by_bn_and_leave_no_trace():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.ReLU(), nn.Dropout(0.5)))
    bn = model[0][1]
    with torch.no_grad():
        model[0][0].weight.copy_(torch.eye(2))
        model[0][0].bias.zero_()
        bn.running_mean.copy_(torch.tensor([100.0, -100.0]))  # eval mode: always class 1
    x = torch.tensor([[2.0, 0.0], [0.0, 2.0], [3.0, 0.0], [0.0, 3.0]])
    y = torch.tensor([0, 1, 0, 1])  # batch statistics separate them perfectly
    diag = Diagnostics(model, every=1, probe_x=x, probe_y=y, batch_size=4)
    before = [b.clone() for b in bn.buffers()]
    rng = torch.get_rng_state()
    model.train()
    train_acc, eval_acc = (float(a) for a in diag.mode_accuracies())
    assert (train_acc, eval_acc) == (1.0, 0.5)
    assert all(torch.equal(a, b) for a, b in zip(before, bn.buffers()))
    assert torch.equal(rng, torch.get_rng_state())  # dropout was off: no random numbers drawn
    assert model.training and bn.training and model[0][3].training


def test_diagnostics_do_not_change_training_and_remove_their_hooks():
    common = ("norm=bn_before", "trainer.steps=30", "trainer.eval_every=10", "trainer.dropout=0.2", *QUICK)
    plain_model, plain = train_until(make_cfg(*common))
    diag_model, probed = train_until(make_cfg(*common, "diagnostics.enabled=true", "diagnostics.every=15"))
    assert without_wall_time(probed.history) == without_wall_time(plain.history)
    for a, b in zip(plain_model.state_dict().values(), diag_model.state_dict().values()):
        assert torch.equal(a, b)
    assert plain.diagnostics == []
    assert sorted({r["step"] for r in probed.diagnostics}) == [1, 15, 30]
    assert len(probed.diagnostics) == 3 * 4  # 3 hidden layers + head
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in diag_model.modules())
    assert set(probed.diagnostics[0]) == set(records.DIAGNOSTICS_COLUMNS)


@pytest.mark.parametrize("norm", ["ln_before", "gn_after"])
def test_layer_and_group_norm_have_no_running_statistics_gap(norm):
    _, result = train_until(make_cfg(f"norm={norm}", "trainer.steps=20", "trainer.eval_every=10",
                                     "diagnostics.enabled=true", "diagnostics.every=10", *QUICK))
    rows = result.diagnostics
    assert rows and all(r["bn_mean_gap"] is None and r["bn_var_ratio"] is None for r in rows)
    assert all(r["act_in_p50"] is not None for r in rows if r["name"] != "head")
    # no batch statistics: train and eval mode compute the same outputs
    assert all(r["acc_train_mode"] == r["acc_eval_mode"] for r in rows)


def test_diagnostics_resume_exactly(tmp_path):
    cfg = make_cfg("norm=bn_before", "trainer.steps=60", "trainer.eval_every=10", "diagnostics.enabled=true",
                   "diagnostics.every=7", *QUICK)
    _, reference = train_until(cfg)
    checkpoint = Checkpoint(tmp_path / "checkpoint.pt", run_id="r", every=1)
    with pytest.raises(CutOff):
        train_until(cfg, checkpoint, stop_after_evals=3)
    _, resumed = train_until(cfg, checkpoint)
    assert resumed.resumed_from_step == 20  # the checkpoint of evaluation 2
    assert resumed.diagnostics == reference.diagnostics


def _sweep(tmp_path):
    """A sweep folder as `bnbench run -m` writes it, diagnostics on: norm x activation, one seed,
    and a second seed in the cell norm=bn_before, activation=sigmoid."""
    sweep = tmp_path / "sweep"
    cells = [(norm, act, 0) for norm in ("none", "bn_before") for act in ("sigmoid", "relu")]
    for norm, act, seed in [*cells, ("bn_before", "sigmoid", 1)]:
        overrides = [f"norm={norm}", f"activation={act}", f"seed={seed}"]
        run_dir = sweep / ",".join(overrides)
        (run_dir / ".hydra").mkdir(parents=True)
        (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
        cfg = make_cfg(*overrides, "trainer.steps=20", "diagnostics.enabled=true", "diagnostics.every=10", *QUICK)
        run_experiment(cfg, run_dir, overrides=overrides)
    return sweep


def test_run_record_and_report_side(tmp_path):
    sweep = _sweep(tmp_path)
    on_disk = pd.read_csv(sweep / "norm=bn_before,activation=sigmoid,seed=0" / records.DIAGNOSTICS)
    assert list(on_disk.columns) == records.DIAGNOSTICS_COLUMNS
    assert sorted(on_disk["step"].unique()) == [1, 10, 20]
    assert on_disk.loc[on_disk["name"] == "head", "bn_mean_gap"].isna().all()
    assert on_disk.loc[on_disk["name"] != "head", "bn_mean_gap"].notna().all()
    assert on_disk["acc_eval_mode"].between(0, 1).all()
    assert on_disk.loc[on_disk["step"] == 1, "input_shift"].isna().all(), "no step before the first to compare"
    assert (on_disk.loc[on_disk["step"] > 1, "input_shift"] > 0).all()

    runs, factors, _ = report.collect_runs(sweep)
    assert factors == ["norm", "activation"]  # "activation" is a factor and a diagnostics subject
    summary = diagnostics_report.summarize(sweep, runs, factors)
    assert len(summary) == 4 * 4  # cells x (3 hidden layers + head)
    assert list(summary["norm"].astype(str).unique()) == list(runs["norm"].cat.categories)  # the report's order
    pick = (summary["norm"] == "bn_before") & (summary["activation"] == "sigmoid") & (summary["name"] == "fc2")
    cell = summary[pick].iloc[0]
    first = [pd.read_csv(sweep / f"norm=bn_before,activation=sigmoid,seed={s}" / records.DIAGNOSTICS)
             .query("step == 1 and name == 'fc2'") for s in (0, 1)]
    assert cell["runs"] == 2 and cell["last_step"] == 20
    assert cell["grad_norm_first"] == pytest.approx(np.mean([f["grad_norm"].iloc[0] for f in first]))
    assert summary.loc[summary["norm"] == "none", "bn_mean_gap_last"].isna().all()
    assert summary.loc[summary["activation"] == "relu", "saturated_frac_last"].isna().all()

    lines = diagnostics_report.markdown_lines(summary, factors)
    text = "\n".join(lines)
    assert "## Diagnostics" in text and "| bn_before / sigmoid |" in text
    assert "**Shift of each layer's input distribution" in text
    start = lines.index("**Dead ReLU units, last (% of units zero on the whole batch)**")
    dead = list(itertools.takewhile(bool, lines[start + 2:]))  # header, rule, one row per cell
    assert sorted(row.split(" | ")[0] for row in dead[2:]) == ["| bn_before / relu", "| none / relu"]  # ReLU only

    figures = diagnostics_report.plot_diagnostics(sweep, runs, factors)
    assert {p.name for p in figures.values()} == {
        "diagnostics_grad_norm.png", "diagnostics_act_input.png", "diagnostics_saturation.png",
        "diagnostics_dead_units.png", "diagnostics_bn_mean_gap.png", "diagnostics_bn_var_ratio.png",
        "diagnostics_bn_modes.png", "diagnostics_unit.png", "diagnostics_input_shift.png"}
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in figures.values())


def test_off_writes_nothing_and_a_stale_file_goes(tmp_path):
    (tmp_path / records.DIAGNOSTICS).write_text("stale\n")
    run_experiment(make_cfg("trainer.epochs=1", *QUICK), tmp_path, overrides=[])
    assert not (tmp_path / records.DIAGNOSTICS).exists()
    assert (tmp_path / records.METRICS).is_file()
    assert diagnostics_report.summarize(tmp_path, *report.collect_runs(tmp_path)[:2]) is None


def test_layers_of_different_models_at_one_position_are_named_by_all_their_names():
    frame = pd.DataFrame({"layer": [0, 1, 0, 1, 2], "name": ["fc1", "head", "conv1", "conv2", "head"]})
    assert diagnostics_report.layer_names(frame) == {0: "fc1/conv1", 1: "head/conv2", 2: "head"}
