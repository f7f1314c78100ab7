"""trainer.save_final (final.pt) and `bnbench evalmodes` (bnbench/evalmodes.py): BN with running
averages, batch statistics and precise statistics, on the final weights of real runs."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import yaml
from omegaconf import OmegaConf

from bnbench import evalmodes, records
from bnbench.job.data import load_dataset
from bnbench.job.experiment import run_experiment
from bnbench.job.models import build_model
from bnbench.report import ReportError
from bnbench.job.engine import train, train_copies
from conftest import as_float64, make_cfg, run_cli

CPU = torch.device("cpu")
QUICK = ("trainer.threads=1", "trainer.log_progress=false")


def _models(cfg, data, seeds):
    return [build_model(make_cfg(*cfg, f"seed={s}"), data.in_shape, data.num_outputs) for s in seeds]


def test_a_stack_keeps_each_copy_s_final_weights_as_its_own_run_ends(float64_default):
    overrides = ("norm=bn_before", "optimizer=adam", "optimizer.lr=0.003", "trainer.steps=30",
                 "trainer.eval_every=10", *QUICK)
    cfg = make_cfg(*overrides)
    data = as_float64(load_dataset(cfg, CPU))
    seeds = [0, 1, 2]
    models = _models(overrides, data, seeds)
    with torch.no_grad():
        models[1].head.weight.fill_(float("nan"))  # copy 1 diverges at the first evaluation
    stacked = train_copies(models, seeds, data, cfg, CPU, keep_final=True)
    assert [r.status for r in stacked] == ["completed", "diverged", "completed"]
    assert stacked[1].final_state is not None and len(stacked[1].history) == 1
    for i in (0, 2):
        alone = build_model(make_cfg(*overrides, f"seed={seeds[i]}"), data.in_shape, data.num_outputs)
        seed_cfg = make_cfg(*overrides, f"seed={seeds[i]}")
        assert train(alone, data, seed_cfg, CPU).status == "completed"
        kept = stacked[i].final_state
        assert set(kept) == set(alone.state_dict())
        for name, value in alone.state_dict().items():
            assert torch.allclose(kept[name], value, rtol=1e-7, atol=1e-8), name  # Adam: rounding to ~1e-10
    assert train_copies(_models(overrides, data, [0]), [0], data, cfg, CPU)[0].final_state is None, "only if asked"


@pytest.fixture
def float64_default():
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def _sweep(tmp_path, cells, *extra):
    """A sweep folder as `bnbench run -m` writes it (records and .hydra files), final weights kept."""
    sweep = tmp_path / "sweep"
    for overrides in cells:
        run_dir = sweep / ",".join(overrides)
        (run_dir / ".hydra").mkdir(parents=True)
        (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(list(overrides)))
        cfg = make_cfg(*overrides, "trainer.save_final=true", *extra, *QUICK)
        OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
        run_experiment(cfg, run_dir, overrides=list(overrides))
    return sweep


def test_final_weights_are_the_run_s_and_every_mode_is_checked(tmp_path):
    cells = [(f"norm={norm}", f"seed={seed}") for norm in ("none", "bn_before") for seed in (0, 1)]
    sweep = _sweep(tmp_path, cells, "trainer.steps=40", "trainer.eval_every=20", "dataset.test_size=352")
    run_dir = sweep / "norm=bn_before,seed=0"
    state = torch.load(run_dir / records.FINAL_WEIGHTS, weights_only=True)
    summary = records.load_summary(run_dir)[0]
    assert state["run_id"] == summary["run_id"] and state["step"] == 40

    frame, factors, missing = evalmodes.evaluate_sweep(sweep, batch_sizes=(2, 16))
    assert factors == ["norm"] and missing == 0
    assert len(frame) == 4 * 4  # runs x (running, batch 2, batch 16, precise)
    for (run, seed), rows in frame.groupby(["run", "seed"]):
        by_mode = {(m, b if pd.notna(b) else None): acc for m, b, acc in
                   zip(rows["mode"], rows["batch_size"], rows["test_acc"])}
        final = records.load_summary(sweep / run)[0]["final"]["test_acc"]
        assert by_mode[("running", None)] == pytest.approx(final, abs=1e-12), "running = the run's own metric"
        if "norm=none" in run:  # no batch statistics: every mode is the same network
            assert len(set(by_mode.values())) == 1
    assert set(frame["samples"]) == {352}, "2 and 16 divide the test set: every sample in every mode"

    lines = evalmodes.markdown(frame, factors, missing, "sweep")
    text = "\n".join(lines)
    assert "| norm | runs | diverged | running | batch 2 | batch 16 | precise |" in text
    assert "| none | 2 | 0 |" in text and "| bn_before | 2 | 0 |" in text
    # batch B beside running on its own samples (the two means shown compare; "64.21 / 62.50 (Δ +0.00)" did not)
    assert "vs running" in text and "on its samples" in text

    # a final.pt of another run (the record was replaced since) is not used
    other = torch.load(run_dir / records.FINAL_WEIGHTS, weights_only=True)
    other["run_id"] = "someone-else"
    torch.save(other, run_dir / records.FINAL_WEIGHTS)
    assert evalmodes.evaluate_sweep(sweep, batch_sizes=(16,))[2] == 1
    (sweep / "norm=none,seed=1" / records.FINAL_WEIGHTS).write_bytes(b"torn")  # a torn file: left out, counted
    assert evalmodes.evaluate_sweep(sweep, batch_sizes=(16,))[2] == 2
    cut = evalmodes.evaluate_sweep(sweep, batch_sizes=(50,))[0]
    assert set(cut.loc[cut["mode"] == "batch", "samples"]) == {350}, "batch statistics over full batches only"
    none = cut[cut["run"].str.startswith("norm=none")]  # the same network in every mode: on the same 350 samples
    assert (none["test_acc"] == none["running_test_acc"]).all()


def test_precise_statistics_are_the_training_set_averages_of_the_final_weights():
    """One BN layer after the first Linear: precise BN's running mean is the mean, over the
    training batches, of that Linear's output, i.e. over the samples of the full batches."""
    cfg = make_cfg("norm=bn_before", "norm.momentum=0.0001", *QUICK)
    data = load_dataset(cfg, CPU)
    model = build_model(cfg, data.in_shape, data.num_outputs)
    twin = evalmodes._precise(model, data.train_x, batch_size=50)
    bn = twin.hidden[0][1]
    order = torch.randperm(len(data.train_x), generator=torch.Generator().manual_seed(0))
    used = order[: len(order) // 50 * 50]
    with torch.no_grad():
        fc1 = model.hidden[0][0](data.train_x[used].flatten(1))
    assert torch.allclose(bn.running_mean, fc1.mean(dim=0), atol=1e-5)
    per_batch_var = fc1.view(-1, 50, fc1.shape[1]).var(dim=1, correction=1).mean(dim=0)
    assert torch.allclose(bn.running_var, per_batch_var, rtol=1e-4), "the batches' unbiased variances, averaged"
    assert torch.equal(model.hidden[0][1].running_mean, torch.zeros_like(bn.running_mean)), "the run's model as it was"


def test_lagging_running_averages_cost_accuracy_that_precise_statistics_recover(tmp_path):
    """A momentum of 1e-4 over 60 steps: the running averages hardly leave their start (0, 1),
    so eval mode is far off while the network itself (batch or precise statistics) is not."""
    sweep = _sweep(tmp_path, [("norm=bn_before", "seed=0")], "norm.momentum=0.0001", "trainer.steps=60",
                   "activation=sigmoid")
    frame, _, _ = evalmodes.evaluate_sweep(sweep, batch_sizes=(32,))
    acc = dict(zip(frame["mode"], frame["test_acc"]))
    assert acc["precise"] > acc["running"] + 0.2
    assert acc["batch"] > acc["running"] + 0.2


def test_no_final_weights_is_one_clear_error(tmp_path):
    sweep = tmp_path / "sweep"
    run_dir = sweep / "seed=0"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["seed=0"]))
    run_experiment(make_cfg("trainer.steps=5", *QUICK), run_dir, overrides=["seed=0"])
    assert not (run_dir / records.FINAL_WEIGHTS).exists(), "off by default"
    with pytest.raises(ReportError, match="trainer.save_final=true"):
        evalmodes.evaluate_sweep(sweep)


@pytest.mark.slow
def test_the_command_writes_its_tables_and_refuses_bad_input(tmp_path):
    result = run_cli("run", "-m", "norm=none,bn_before", "seed=0,1", "trainer.steps=20", "trainer.save_final=true",
                     "sweep.name=s", "trainer.threads=1", "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    sweep = tmp_path / "results" / "s"
    kept = sorted(p.parent.name for p in sweep.glob("*/final.pt"))
    assert len(kept) == 4 and not any("save_final" in name for name in kept), "not in the folder names"
    done = run_cli("evalmodes", str(sweep), "--batch-sizes", "4,32", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| bn_before | 2 | 0 |" in done.stdout
    frame = pd.read_csv(sweep / records.EVAL_MODES)
    assert len(frame) == 4 * 4 and (sweep / "eval_modes.md").is_file()
    bad = run_cli("evalmodes", str(sweep), "--batch-sizes", "1,8", cwd=tmp_path)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "at least 2" in bad.stderr
    bad = run_cli("evalmodes", str(sweep), "--device", "tpu", cwd=tmp_path)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "choose auto, cpu, cuda" in bad.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    none = run_cli("evalmodes", str(empty), cwd=tmp_path)
    assert none.returncode == 1 and none.stderr.count("\n") == 1 and "no runs found" in none.stderr
