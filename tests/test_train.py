"""Training engine: BN modes, reproducibility, divergence and failure records."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from torch import nn

from bnbench.job.data import load_dataset
from bnbench.job.experiment import run_experiment
from bnbench.job.models import build_model
from bnbench.job.tasks import evaluate
from bnbench.job.engine import train
from conftest import as_float64, make_cfg

QUICK = ("trainer.epochs=2", "trainer.threads=1", "trainer.log_progress=false")


def test_bn_running_stats_update_in_training_and_serve_evaluation():
    cfg = make_cfg("norm=bn_before", "norm.momentum=0.5", *QUICK)
    torch.manual_seed(0)
    model = build_model(cfg, (1, 8, 8), 10)
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm1d))
    x = torch.randn(32, 1, 8, 8) * 3 + 1

    model.train()
    pre_bn = model.hidden[0][0](model.flatten(x))  # input of the first BN layer
    model(x)
    # PyTorch convention: running = (1 - m) * running + m * batch, unbiased batch variance.
    torch.testing.assert_close(bn.running_mean, 0.5 * pre_bn.mean(0).detach())
    torch.testing.assert_close(bn.running_var, 0.5 * 1 + 0.5 * pre_bn.var(0, unbiased=True).detach())
    assert bn.num_batches_tracked.item() == 1

    model.eval()
    with torch.no_grad():
        frozen = bn.running_mean.clone()
        out_eval = bn(pre_bn)
        expected = (pre_bn - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
        torch.testing.assert_close(out_eval, expected)
        model(x)
    assert torch.equal(bn.running_mean, frozen), "evaluation must not update running statistics"


def test_evaluate_uses_eval_mode_and_restores_train_mode():
    cfg = make_cfg("norm=bn_before", *QUICK)
    data = load_dataset(cfg, torch.device("cpu"))
    model = build_model(cfg, data.in_shape, data.num_outputs)
    model.train()
    seen_modes = []
    model.hidden[0][1].register_forward_hook(lambda m, i, o: seen_modes.append(m.training))
    evaluate(model, data.test_x, data.test_y, 1000)
    assert seen_modes and not any(seen_modes)
    assert model.training


def _run(tmp_path, *overrides):
    cfg = make_cfg(*QUICK, *overrides)
    summary = run_experiment(cfg, tmp_path, overrides=list(overrides))
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    return summary, rows


def test_same_seed_same_metrics_different_seed_differs(tmp_path):
    a, rows_a = _run(tmp_path / "a", "seed=3")
    b, rows_b = _run(tmp_path / "b", "seed=3")
    c, _ = _run(tmp_path / "c", "seed=4")
    strip = lambda rows: [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]  # noqa: E731
    assert strip(rows_a) == strip(rows_b)
    assert a["final"] == b["final"]
    assert a["final"] != c["final"]
    assert a["run_id"] == b["run_id"] != c["run_id"]


def test_record_contents(tmp_path):
    summary, rows = _run(tmp_path, "norm=bn_after", "seed=1")
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert summary["status"] == "completed"
    assert summary["params"] == {"norm": "bn_after", "seed": "1"}
    assert summary["n_params"] > 0 and summary["device"] == "cpu"
    assert set(summary["versions"]) >= {"torch", "torchvision", "bnbench", "python"}
    # 1437 digits training images, 144 held out for validation: 1293 // 60 = 21 steps per epoch
    assert [int(r["step"]) for r in rows] == [21, 42]
    assert summary["final"]["test_acc"] == pytest.approx(float(rows[-1]["test_acc"]))
    assert summary["best"]["test_acc"] == max(float(r["test_acc"]) for r in rows)
    # selection on validation: the test metric of the evaluation with the best validation accuracy
    assert all(r["val_acc"] != "" and r["val_loss"] != "" for r in rows)
    chosen = max(rows, key=lambda r: float(r["val_acc"]))
    assert summary["at_best_val"]["step"] == int(chosen["step"])
    assert summary["at_best_val"]["test_acc"] == pytest.approx(float(chosen["test_acc"]))
    assert summary["final"]["val_acc"] == pytest.approx(float(rows[-1]["val_acc"]))


def test_without_a_validation_split_the_val_columns_stay_empty(tmp_path):
    summary, rows = _run(tmp_path, "dataset.val_size=0")
    assert [int(r["step"]) for r in rows] == [23, 46]  # all 1437 training images: 23 steps per epoch
    assert all(r["val_acc"] == "" and r["val_loss"] == "" for r in rows)
    assert summary["at_best_val"] == {} and summary["final"]["val_acc"] is None
    assert 0.5 < summary["final"]["test_acc"] <= 1.0, "two epochs on digits should learn something"


def test_nan_loss_is_a_diverged_result_not_a_crash(tmp_path):
    summary, rows = _run(tmp_path, "norm=none", "optimizer.lr=1e6", "trainer.epochs=5")
    assert summary["status"] == "diverged"
    assert summary["error"] is None
    assert len(rows) < 5, "a diverged run stops early"
    assert (tmp_path / "summary.json").is_file()
    # its final model is evaluated: NaN outputs predict nothing, so they score 0, not the
    # frequency of the class argmax would pick for a NaN
    assert summary["final"]["test_acc"] == 0.0 and math.isnan(summary["final"]["test_loss"])


def test_nan_outputs_count_as_wrong():
    from bnbench.job.tasks import TASKS

    logits = torch.tensor([[0.1, 2.0], [float("nan"), 0.0], [3.0, float("inf")], [1.0, 0.0]])
    hits = TASKS["classification"].hits(logits, torch.tensor([1, 0, 1, 0]))
    assert hits.tolist() == [True, False, False, True]
    stacked = TASKS["classification"].hits(logits.expand(2, 4, 2), torch.tensor([1, 0, 1, 0]).expand(2, 4))
    assert stacked.tolist() == [[True, False, False, True]] * 2


def test_train_metrics_are_the_final_model_in_eval_mode_on_a_fixed_subset(tmp_path):
    from bnbench.job.tasks import evaluate, train_probe

    cfg = make_cfg(*QUICK, "norm=bn_before", "trainer.dropout=0.3")
    data = load_dataset(cfg, torch.device("cpu"))
    x, y = train_probe(data)
    assert len(y) == min(len(data.train_y), len(data.test_y))
    assert torch.equal(train_probe(data)[0], x)  # the same samples for every run
    torch.manual_seed(0)
    model = build_model(cfg, data.in_shape, data.num_outputs)
    result = train(model, data, cfg, torch.device("cpu"))
    last = result.history[-1]
    loss, acc = evaluate(model, x, y, 500)  # eval mode: running BN statistics, no dropout
    assert (last["train_loss"], last["train_acc"]) == pytest.approx((loss, acc))
    # the running averages are kept, named as such, and differ (train mode, averaged over steps)
    assert last["train_loss_running"] != pytest.approx(last["train_loss"])
    _, rows = _run(tmp_path, "norm=bn_before")
    assert {"train_loss", "train_acc", "train_loss_running", "train_acc_running"} <= set(rows[0])


def test_steps_mode_and_eval_interval(tmp_path):
    summary, rows = _run(tmp_path, "trainer.steps=50", "trainer.eval_every=20")
    assert [int(r["step"]) for r in rows] == [20, 40, 50]
    assert summary["steps"] == 50


def test_failure_is_recorded_with_its_message(tmp_path):
    summary, _ = _run(tmp_path, "activation.name=swish")
    assert summary["status"] == "failed"
    assert "activation.name='swish'" in summary["error"] and "relu" in summary["error"]
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "failed"


def test_training_reduces_loss():
    cfg = make_cfg("norm=bn_before", *QUICK)
    data = load_dataset(cfg, torch.device("cpu"))
    torch.manual_seed(0)
    model = build_model(cfg, data.in_shape, data.num_outputs)
    result = train(model, data, cfg, torch.device("cpu"))
    assert result.status == "completed"
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.history[-1]["train_loss_running"] < result.history[0]["train_loss_running"]
    assert result.history[-1]["test_acc"] > 0.8


@pytest.mark.parametrize("override,key", [("trainer.eval_every=0", "trainer.eval_every"),
                                          ("dataset.train_size=0", "dataset.train_size"),
                                          ("trainer.jobs_per_gpu=0", "trainer.jobs_per_gpu"),
                                          ("trainer.checkpoint_every=-1", "trainer.checkpoint_every"),
                                          ("norm.momentum=2", "norm.momentum=2.0 must be in [0, 1]"),
                                          ("norm.momentum=-1", "norm.momentum=-1.0 must be in [0, 1]"),
                                          ("norm.eps=0", "norm.eps=0.0 must be greater than 0"),
                                          ("seed=99999999999999999999", "seed=99999999999999999999 must be"),
                                          ("seed=-1", "seed=-1 must be"),
                                          ("optimizer.lr=0", "optimizer.lr=0.0 must be positive"),
                                          ("optimizer.weight_decay=-0.1", "optimizer.weight_decay"),
                                          ("optimizer=momentum optimizer.momentum=1", "optimizer.momentum"),
                                          ("optimizer=adam optimizer.betas=[0.9,1.5]", "optimizer.betas"),
                                          ("optimizer=rmsprop optimizer.alpha=1", "optimizer.alpha"),
                                          ("model.init_std=0", "model.init_std"),
                                          ("trainer.diverge_above=0", "trainer.diverge_above")])
def test_out_of_range_settings_fail_before_training(tmp_path, override, key):
    summary, rows = _run(tmp_path, *override.split())
    assert summary["status"] == "failed" and key in summary["error"] and rows == []


def test_regression_run_trains_with_mse_and_records_no_accuracy(tmp_path):
    summary, rows = _run(tmp_path, "dataset=friedman1", "model.widths=[18,18,4]", "optimizer=adam",
                         "optimizer.lr=0.01", "trainer.epochs=3")
    assert summary["status"] == "completed"
    assert [r["test_acc"] for r in rows] == ["", "", ""] and summary["final"]["test_acc"] is None
    losses = [float(r["test_loss"]) for r in rows]
    assert losses[-1] < 0.5 < 1.0, "standardized targets: 1.0 is the mean predictor; the net must do better"
    assert summary["best"]["test_loss"] == min(losses)
    cfg = make_cfg("dataset=friedman1", "model.widths=[18,18,4]", "trainer.epochs=1", *QUICK[1:])
    data = load_dataset(cfg, torch.device("cpu"))
    model = build_model(cfg, data.in_shape, data.num_outputs)
    from bnbench.job.tasks import TASKS
    loss, acc = evaluate(model, data.test_x, data.test_y, 700, TASKS["regression"])
    model.eval()
    with torch.no_grad():
        expected = torch.nn.functional.mse_loss(model(data.test_x), data.test_y).item()
    assert acc is None and loss == pytest.approx(expected, rel=1e-5)  # uneven batches: still the mean over rows


def test_channels_last_is_how_a_cnn_computes_not_what(tmp_path):
    """trainer.channels_last (on by default) holds the conv weights, and so the activations,
    channels-last; in float64 the run matches the channels-first one to rounding."""
    torch.set_default_dtype(torch.float64)
    try:
        histories, models = {}, {}
        for flag in ("true", "false"):
            cfg = make_cfg("model=alexnet", "norm=bn_before", "trainer.steps=6", "trainer.eval_every=3",
                           "trainer.batch_size=32", f"trainer.channels_last={flag}")
            data = load_dataset(cfg, torch.device("cpu"))
            data = as_float64(data)
            torch.manual_seed(0)
            models[flag] = build_model(cfg, data.in_shape, data.num_outputs)
            histories[flag] = train(models[flag], data, cfg, torch.device("cpu")).history
    finally:
        torch.set_default_dtype(torch.float32)
    convs = {flag: [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)] for flag, model in models.items()}
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in convs["true"])
    assert not all(w.is_contiguous() for w in convs["true"]), "(the first conv, with one input channel, is both)"
    assert all(w.is_contiguous() for w in convs["false"])
    for a, b in zip(histories["true"], histories["false"]):
        for key in ("train_loss", "test_loss", "test_acc"):
            assert a[key] == pytest.approx(b[key], rel=1e-9, abs=1e-12), key


@pytest.mark.parametrize("overrides, key", [(("model=alexnet", "model.depth=3"), "model.depth"),
                                            (("optimizer=adam", "optimizer.momentum=0.9"), "optimizer.momentum"),
                                            (("dataset=digits", "dataset.noise=0.5"), "dataset.noise")])
def test_a_key_of_another_option_fails_at_composition(overrides, key):
    """Each option has its own schema: a key that only another option has is not silently ignored."""
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match=key.replace(".", r"\.")):
        make_cfg(*overrides)


def test_the_learning_rate_can_follow_the_batch_size(tmp_path):
    """trainer.lr_reference_batch: the rate per sample stays (linear scaling); records show it."""
    summary, rows = _run(tmp_path, "trainer.batch_size=30", "trainer.lr_reference_batch=60", "optimizer.lr=0.2")
    assert [float(r["lr"]) for r in rows] == pytest.approx([0.1] * len(rows))
    from bnbench.job.optim import learning_rate

    assert learning_rate(make_cfg("optimizer.lr=0.2")) == 0.2
    assert learning_rate(make_cfg("trainer.batch_size=2", "trainer.lr_reference_batch=64", "optimizer.lr=0.64")) == \
        pytest.approx(0.02)
