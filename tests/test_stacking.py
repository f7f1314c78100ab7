"""Stacked seeds (bnbench/job/stacking.py): the same runs as separate training, up to float rounding."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
import torch

from bnbench import report
from bnbench.records import BestMetrics, FinalMetrics, RunRecord
from bnbench.job.data import load_dataset
from bnbench.job.models import build_model
from bnbench.launch.planning import seed_stacks
from bnbench.job.stacking import StackedNet
from bnbench.job.engine import train_copies as train_stacked
from bnbench.job.engine import train
from conftest import as_float64, make_cfg, run_cli

CPU = torch.device("cpu")
SEEDS = [0, 1, 2]


def _models(cfg, data, seeds):
    out = []
    for seed in seeds:
        torch.manual_seed(seed)  # what a run does before building its model
        out.append(build_model(cfg, data.in_shape, data.num_outputs))
    return out


def _separate(cfg, data, seeds):
    histories = []
    for seed, model in zip(seeds, _models(cfg, data, seeds)):
        seed_cfg = cfg.copy()
        seed_cfg.seed = seed
        histories.append(train(model, data, seed_cfg, CPU).history)
    return histories


def _assert_same_runs(separate, stacked, rel):
    for alone, together in zip(separate, stacked):
        assert [r["step"] for r in alone] == [r["step"] for r in together.history]
        for a, b in zip(alone, together.history):
            for key in ("train_loss", "test_loss"):
                assert b[key] == pytest.approx(a[key], rel=rel, abs=rel), key
            for key in ("train_acc", "test_acc"):
                assert (b[key] is None) == (a[key] is None)
                if a[key] is not None:
                    assert b[key] == pytest.approx(a[key], abs=0.002 if rel > 1e-6 else 1e-12), key


@pytest.fixture
def float64():
    """Double precision: the stacked and separate computations are the same math, so they agree
    to ~1e-15 (in float32 they drift apart by rounding, then by the chaos of training)."""
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


@pytest.mark.parametrize("overrides", [
    ("norm=bn_before",),
    ("norm=bn_after", "activation=tanh", "optimizer=adam", "optimizer.lr=0.003"),
    ("norm=none", "optimizer=nesterov", "optimizer.lr=0.05", "trainer.lr_schedule=cosine"),
    ("norm=bn_before", "norm.drop_bias=true", "optimizer=rmsprop", "optimizer.lr=0.001", "optimizer.weight_decay=0.01"),
    ("model=alexnet", "model.channels=[4,8,8,8,4]", "model.fc_width=16", "norm=bn_before", "trainer.steps=30",
     "trainer.eval_every=10"),
    ("model=alexnet", "model.channels=[4,8,8,8,4]", "model.fc_width=16", "norm=bn_after", "activation=elu",
     "optimizer=adamw", "optimizer.lr=0.003", "trainer.steps=30", "trainer.eval_every=10"),
    ("dataset=friedman1", "model.widths=[18,18,4]", "optimizer=adam", "optimizer.lr=0.01", "dataset.train_size=600",
     "norm=bn_before"),
    ("norm=ln_before", "optimizer=momentum", "optimizer.lr=0.05"),
    ("norm=gn_after", "activation=sigmoid", "trainer.lr_schedule=cosine"),
    ("model=alexnet", "model.channels=[4,8,8,8,4]", "model.fc_width=16", "norm=gn_before", "norm.groups=2",
     "trainer.steps=30", "trainer.eval_every=10"),
    ("model=alexnet", "model.channels=[4,8,8,8,4]", "model.fc_width=16", "norm=ln_after", "optimizer=adam",
     "optimizer.lr=0.003", "trainer.steps=30", "trainer.eval_every=10"),
    ("norm=rms_before", "optimizer=adam", "optimizer.lr=0.003"),
    ("model=alexnet", "model.channels=[4,8,8,8,4]", "model.fc_width=16", "norm=rms_after", "trainer.steps=30",
     "trainer.eval_every=10"),
    ("norm=noisy_bn_before", "activation=sigmoid", "trainer.dropout=0.2"),  # noise and dropout streams per copy
    ("model=alexnet", "model.channels=[4,8,8,8,4]", "model.fc_width=16", "norm=noisy_bn_before", "trainer.steps=30",
     "trainer.eval_every=10"),
])
def test_stacked_seeds_are_their_separate_runs(overrides, float64):
    cfg = make_cfg(*overrides, "trainer.epochs=2", "trainer.log_progress=false")
    data = as_float64(load_dataset(cfg, CPU))
    stacked = train_stacked(_models(cfg, data, SEEDS), SEEDS, data, cfg, CPU)
    assert all(r.status == "completed" for r in stacked)
    _assert_same_runs(_separate(cfg, data, SEEDS), stacked, rel=1e-9)


def test_stacked_seeds_in_float32_agree_within_rounding():
    cfg = make_cfg("norm=bn_before", "trainer.epochs=2", "trainer.log_progress=false")
    data = load_dataset(cfg, CPU)
    stacked = train_stacked(_models(cfg, data, SEEDS), SEEDS, data, cfg, CPU)
    _assert_same_runs(_separate(cfg, data, SEEDS), stacked, rel=1e-4)


@pytest.mark.parametrize("norm", ["bn_before", "ln_after", "gn_before", "rms_before"])
def test_stacked_model_holds_each_copy_unchanged(norm):
    cfg = make_cfg("model=alexnet", "model.channels=[4,8,8,8,4]", "model.fc_width=16", f"norm={norm}")
    models = [build_model(cfg, (1, 28, 28), 10) for _ in SEEDS]
    for m in models:
        m.eval()
    net = StackedNet(models).eval()
    x = torch.randn(len(SEEDS), 7, 1, 28, 28)
    with torch.no_grad():
        expected = torch.stack([m(x[i]) for i, m in enumerate(models)])
        assert torch.allclose(net(x), expected, atol=1e-5)


def test_a_diverging_copy_leaves_the_others_untouched():
    cfg = make_cfg("norm=bn_before", "trainer.epochs=2", "trainer.log_progress=false")
    data = load_dataset(cfg, CPU)
    models = _models(cfg, data, SEEDS)
    with torch.no_grad():
        models[1].head.weight.fill_(float("nan"))  # copy 1 is broken from the start
    stacked = train_stacked(models, SEEDS, data, cfg, CPU)
    assert [r.status for r in stacked] == ["completed", "diverged", "completed"]
    assert len(stacked[1].history) == 1, "a diverged copy's record ends at the evaluation that saw it"
    separate = _separate(cfg, data, [0, 2])
    _assert_same_runs(separate, [stacked[0], stacked[2]], rel=1e-4)


def _records(folder):
    return {p.parent.name: json.loads(p.read_text()) for p in folder.glob("*/summary.json")}


@pytest.mark.slow
def test_sweep_with_stacked_seeds_writes_every_seed_record(tmp_path):
    common = ("norm=none,bn_before", "seed=0,1,2", "trainer.epochs=2", "trainer.threads=1",
              "trainer.log_progress=false")
    plain = run_cli("run", "-m", *common, "sweep.name=plain", "trainer.stack_seeds=false", "--quiet", cwd=tmp_path)
    stacked = run_cli("run", "-m", *common, "sweep.name=stacked", "--quiet", cwd=tmp_path)  # stacking is the default
    assert plain.returncode == 0 and stacked.returncode == 0, stacked.stderr[-2000:]
    a, b = _records(tmp_path / "results" / "plain"), _records(tmp_path / "results" / "stacked")
    assert sorted(a) == sorted(b) and len(b) == 6, "same run folders, one per seed"
    for summary in [*a.values(), *b.values()]:  # the typed record declares every key written
        assert set(summary) <= set(RunRecord.__annotations__) - {"skipped", "progress"}
        assert set(summary["final"]) == set(FinalMetrics.__annotations__)
        assert set(summary["best"]) == set(BestMetrics.__annotations__)
    for name, summary in b.items():
        assert summary["status"] == "completed" and summary["stacked_seeds"] == [0, 1, 2]
        assert summary["stack_size"] == 3 and a[name]["stack_size"] == 1, "each record says how it was trained"
        assert summary["run_id"] == a[name]["run_id"], "stacking is how a run is computed, not which run"
        # float32: equal up to rounding, which training amplifies (3e-3 on one of these six runs after
        # 46 steps); that the computation is the same is checked in float64 above, to 1e-9
        assert summary["final"]["test_loss"] == pytest.approx(a[name]["final"]["test_loss"], rel=2e-2)
        assert (tmp_path / "results" / "stacked" / name / ".hydra" / "overrides.yaml").is_file()
    assert "6 runs: 6 completed" in (tmp_path / "results" / "stacked" / "report.md").read_text()
    again = run_cli("run", "-m", *common, "sweep.name=stacked", "--quiet", cwd=tmp_path)
    assert again.returncode == 0 and "6 runs were already complete and were skipped" in again.stdout
    assert _records(tmp_path / "results" / "stacked") == b, "a rerun redoes nothing"
    # one cell mixing stacked and unstacked records: the report says so and names the cell
    mixed = tmp_path / "results" / "mixed"
    shutil.copytree(tmp_path / "results" / "plain", mixed)
    (name,) = [n for n in b if "norm=bn_before" in n and "seed=1" in n]
    shutil.rmtree(mixed / name)
    shutil.copytree(tmp_path / "results" / "stacked" / name, mixed / name)
    tables = report.build(mixed)
    (warning,) = [w for w in tables.warnings if "stacked and unstacked" in w]
    assert "norm=bn_before" in warning and "norm=none" not in warning
    assert "stacked seeds: 1 result(s) trained in stacks of 3, 5 on their own" in report.to_markdown(tables)
    # a cell mixing devices (a run's identity leaves the device out): said too, naming the cell
    (gpu_run,) = [p for p in mixed.glob("norm=none*seed=2*/summary.json")]
    record = json.loads(gpu_run.read_text())
    gpu_run.write_text(json.dumps({**record, "device": "cuda:1 (NVIDIA H100 80GB HBM3)"}))
    (warning,) = [w for w in report.build(mixed).warnings if "mix devices" in w]
    assert "norm=none" in warning and "norm=bn_before" not in warning


@pytest.mark.slow
def test_a_sweep_with_diagnostics_stacks_and_writes_each_seed_s_diagnostics(tmp_path):
    result = run_cli("run", "-m", "seed=0,1", "trainer.steps=5", "trainer.threads=1", "trainer.log_progress=false",
                     "diagnostics.enabled=true", "diagnostics.every=2", "sweep.name=d", "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    records = _records(tmp_path / "results" / "d")
    assert len(records) == 6 and all(r["stacked_seeds"] == [0, 1] for r in records.values())
    for name in records:
        rows = pd.read_csv(tmp_path / "results" / "d" / name / "diagnostics.csv")
        assert sorted(rows["step"].unique()) == [1, 2, 4] and rows["grad_norm"].notna().all()


@pytest.mark.parametrize("overrides", [
    ("norm=bn_before", "activation=sigmoid", "trainer.dropout=0.2"),
    ("norm=gn_before", "activation=tanh", "optimizer=adam", "optimizer.lr=0.003"),
    ("model=alexnet", "model.channels=[4,8,8,8,4]", "model.fc_width=16", "norm=bn_after", "trainer.steps=12",
     "trainer.eval_every=6"),
    ("model=alexnet", "model.channels=[4,8,8,8,4]", "model.fc_width=16", "norm=noisy_bn_before",
     "trainer.steps=12", "trainer.eval_every=6"),
])
def test_a_stack_records_each_copy_s_diagnostics_as_its_own_run_would(overrides, float64):
    """Per-copy diagnostics: each copy's rows equal those of its separate run, and recording
    them (a replay of the step on the copy) leaves the stack's training unchanged."""
    cfg = make_cfg(*overrides, "trainer.epochs=1", "diagnostics.enabled=true", "diagnostics.every=5",
                   "trainer.log_progress=false")
    data = as_float64(load_dataset(cfg, CPU))
    stacked = train_stacked(_models(cfg, data, SEEDS), SEEDS, data, cfg, CPU)
    separate = []
    for seed, model in zip(SEEDS, _models(cfg, data, SEEDS)):
        seed_cfg = cfg.copy()
        seed_cfg.seed = seed
        separate.append(train(model, data, seed_cfg, CPU))
    _assert_same_runs([r.history for r in separate], stacked, rel=1e-9)
    for alone, together in zip(separate, stacked):
        assert len(together.diagnostics) == len(alone.diagnostics) > 0
        for a, b in zip(alone.diagnostics, together.diagnostics):
            assert set(a) == set(b)
            for key, value in a.items():
                if isinstance(value, float):  # float32 statistics, kept to 7 digits: a last-digit tie may differ
                    assert b[key] == pytest.approx(value, rel=1e-6, abs=1e-7), (key, a["step"], a["name"])
                else:
                    assert b[key] == value, key


@pytest.mark.slow
def test_parallel_workers_share_cells_without_training_a_seed_twice(tmp_path):
    """Two joblib workers: the sweep's plan gives every seed to exactly one stack, and every
    record is complete."""
    result = run_cli("run", "-m", "norm=none,bn_before", "seed=0,1,2", "trainer.epochs=2", "trainer.log_progress=false",
                     "hydra/launcher=parallel", "trainer.stack_seeds=true", "sweep.name=p", "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    records = _records(tmp_path / "results" / "p")
    assert len(records) == 6 and all(r["status"] == "completed" for r in records.values())
    for norm in ("none", "bn_before"):
        cell = [r for name, r in records.items() if f"norm={norm}," in name]
        stacks = {(r["job"], tuple(r["stacked_seeds"])) for r in cell}
        trained = sorted(seed for _, seeds in stacks for seed in seeds)
        assert trained == [0, 1, 2], f"each seed in exactly one stack: {stacks}"


@pytest.mark.slow
def test_a_seed_left_alone_trains_as_an_ordinary_run(tmp_path):
    common = ("norm=bn_before", "trainer.epochs=1", "trainer.threads=1", "trainer.log_progress=false", "sweep.name=s",
              "trainer.stack_seeds=true", "--quiet")
    first = run_cli("run", "-m", "seed=0,1", *common, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    before = _records(tmp_path / "results" / "s")
    assert all(r["stacked_seeds"] == [0, 1] for r in before.values())
    second = run_cli("run", "-m", "seed=0,1,2", *common, cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]
    after = _records(tmp_path / "results" / "s")
    new = {name: r for name, r in after.items() if name not in before}
    assert len(new) == 1 and "stacked_seeds" not in next(iter(new.values())), "one seed left: no stack of one"
    assert all(after[name] == r for name, r in before.items()), "finished seeds are not retrained"


@pytest.mark.slow
def test_the_plan_is_made_before_launch_and_each_job_trains_one_stack(tmp_path):
    result = run_cli("run", "-m", "norm=none,bn_before", "seed=0,1,2", "trainer.epochs=1", "trainer.threads=1",
                     "trainer.log_progress=false", "sweep.name=p", "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "6 runs as 2 jobs: seeds stacked 3 3" in result.stderr + result.stdout
    (plan_file,) = (tmp_path / "results" / "p" / ".plans").glob("*.json")
    jobs = json.loads(plan_file.read_text())["jobs"]
    assert [[m["seed"] for m in job["members"]] for job in jobs] == [[0, 1, 2], [0, 1, 2]]
    assert {m["folder"] for job in jobs for m in job["members"]} == set(_records(tmp_path / "results" / "p"))
    # every seed has its own Hydra snapshot, written by its own job or by its stack's
    for folder in _records(tmp_path / "results" / "p"):
        overrides = (tmp_path / "results" / "p" / folder / ".hydra" / "overrides.yaml").read_text()
        assert f"seed={folder.split('seed=')[1][0]}" in overrides


@pytest.mark.slow
def test_folders_named_by_job_number_cannot_be_planned_and_train_one_by_one(tmp_path):
    result = run_cli("run", "-m", "norm=none", "seed=0,1", "trainer.epochs=1", "trainer.threads=1",
                     "trainer.log_progress=false", "sweep.name=n", "hydra.sweep.subdir=${hydra.job.num}", "--quiet",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    records = _records(tmp_path / "results" / "n")
    assert sorted(records) == ["0", "1"] and all("stacked_seeds" not in r for r in records.values())


def test_what_cannot_stack_says_why():
    from bnbench.launch.planning import why_not_stackable

    cfg = make_cfg()
    assert why_not_stackable(cfg) is None
    assert why_not_stackable(make_cfg("trainer.stack_seeds=false")) == "trainer.stack_seeds=false"
    assert why_not_stackable(make_cfg("diagnostics.enabled=true")) is None, "each copy records its own"
    cfg.optimizer.name = "lars"  # a per-tensor optimizer (not in bnbench's table)
    assert why_not_stackable(cfg) == "optimizer lars is not per-element: stacked copies would share its statistics"


def test_a_model_without_a_stacked_form_is_not_stackable():
    from bnbench.job.stacking import NotStackable

    odd = [torch.nn.Sequential(torch.nn.Linear(4, 2)) for _ in range(2)]
    with pytest.raises(NotStackable, match="Sequential is not built of hidden blocks and a linear head"):
        StackedNet(odd)
    cfg = make_cfg("model.width=8")
    models = [build_model(cfg, (4,), 2) for _ in range(2)]
    for m in models:
        m.hidden[0][1] = torch.nn.InstanceNorm1d(8)
    with pytest.raises(NotStackable, match="a InstanceNorm1d layer has no stacked form"):
        StackedNet(models)


def test_seed_stacks_keep_every_worker_busy_to_the_end():
    five = [0, 1, 2, 3, 4]
    # 3 cells of 5 seeds on 2 workers: two whole cells, then the third as stacks of 3 + 2
    assert [seed_stacks(five, cell, cells=3, workers=2) for cell in range(3)] == [[five], [five], [[0, 1, 2], [3, 4]]]
    assert seed_stacks(five, 0, cells=1, workers=2) == [[0, 1, 2], [3, 4]]
    # cells that divide among the workers stay whole
    assert seed_stacks([0, 1, 2], 47, cells=48, workers=2) == [[0, 1, 2]]
    assert seed_stacks(five, 2, cells=3, workers=1) == [five]
    # 2 cells left for 16 workers: 8 stacks each, as far as the seeds go
    assert seed_stacks([5, 6, 7], 0, cells=2, workers=16) == [[5], [6], [7]]
    assert seed_stacks(five, 4, cells=5, workers=4) == [[0, 1], [2], [3], [4]]
    # trainer.stack_size caps a stack
    assert seed_stacks(five, 0, cells=3, workers=1, size=2) == [[0, 1], [2, 3], [4]]
    assert seed_stacks([0, 1, 2], 0, cells=1, workers=1, size=5) == [[0, 1, 2]]


@pytest.mark.slow
def test_stack_size_splits_a_cell(tmp_path):
    result = run_cli("run", "-m", "norm=bn_before", "seed=0,1,2", "trainer.epochs=1", "trainer.threads=1",
                     "trainer.log_progress=false", "trainer.stack_seeds=true", "trainer.stack_size=2", "sweep.name=s",
                     "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    stacks = {name.split("seed=")[1][0]: r.get("stacked_seeds") for name, r in _records(tmp_path / "results" / "s").items()}
    assert stacks == {"0": [0, 1], "1": [0, 1], "2": None}, "seeds 0 and 1 stacked, seed 2 an ordinary run"


# ------------------------------------------------------------------ one engine: stacks have it all

def test_dropout_masks_are_the_seeds_own_in_a_stack(float64):
    """Each copy draws its masks from its own stream: a stack with dropout is its separate runs."""
    cfg = make_cfg("norm=bn_before", "trainer.dropout=0.3", "trainer.epochs=2", "trainer.log_progress=false")
    data = as_float64(load_dataset(cfg, CPU))
    stacked = train_stacked(_models(cfg, data, SEEDS), SEEDS, data, cfg, CPU)
    _assert_same_runs(_separate(cfg, data, SEEDS), stacked, rel=1e-9)
    # and a seed's masks do not depend on its stack-mates
    pair = train_stacked(_models(cfg, data, [2, 0]), [2, 0], data, cfg, CPU)
    _assert_same_runs([stacked[2].history, stacked[0].history], pair, rel=1e-9)


def _checkpoints(folder, seeds):
    from bnbench.job.checkpoint import Checkpoint

    return [Checkpoint(folder / f"seed{seed}.pt", run_id=f"r{seed}", every=1) for seed in seeds]


class _Cut(Exception):
    pass


def _cut_after(evals):
    seen = []

    def on_eval(i, row):
        seen.append(row)
        if len(seen) == evals:
            raise _Cut

    return on_eval


@pytest.mark.parametrize("overrides", [
    ("norm=bn_before", "optimizer=adam", "optimizer.lr=0.003", "trainer.dropout=0.2", "trainer.lr_schedule=cosine"),
    ("model=alexnet", "model.channels=[4,8,8,8,4]", "model.fc_width=16", "norm=gn_before", "norm.groups=2",
     "optimizer=momentum", "optimizer.lr=0.05", "trainer.dropout=0.2"),
    ("norm=noisy_bn_before", "trainer.dropout=0.2"),
])
def test_a_stack_resumes_each_copy_from_its_own_checkpoint(tmp_path, float64, overrides):
    """A stack cut off mid-way writes each copy's checkpoint in the plain model's format; the
    stack resumes from them, and so does each seed alone: all equal the uninterrupted runs."""
    cfg = make_cfg(*overrides, "trainer.steps=60", "trainer.eval_every=10", "trainer.log_progress=false")
    data = as_float64(load_dataset(cfg, CPU))
    reference = _separate(cfg, data, SEEDS)
    checkpoints = _checkpoints(tmp_path, SEEDS)
    with pytest.raises(_Cut):  # cut at the 3rd evaluation of the stack's first copy ...
        train_stacked(_models(cfg, data, SEEDS), SEEDS, data, cfg, CPU, on_eval=_cut_after(7),
                      checkpoints=checkpoints)
    saved = [torch.load(ck.path, weights_only=True) for ck in checkpoints]
    assert {st["step"] for st in saved} == {20}, "each copy saved at the last evaluation before the cut"
    plain_keys = set(build_model(cfg, data.in_shape, data.num_outputs).state_dict())
    assert all(set(st["model"]) == plain_keys for st in saved), "a plain model's checkpoint"
    for seed in SEEDS:
        shutil.copy(tmp_path / f"seed{seed}.pt", tmp_path / f"alone{seed}.pt")
    resumed = train_stacked(_models(cfg, data, SEEDS), SEEDS, data, cfg, CPU, checkpoints=checkpoints)
    assert [r.resumed_from_step for r in resumed] == [20, 20, 20]
    # float64: a wrong state would show at 1e-4 and more; a resumed stack is a freshly built
    # grouped model, whose convolutions oneDNN may sum in another order (6e-9 seen with torch 2.14)
    _assert_same_runs(reference, resumed, rel=1e-7)
    for i, seed in enumerate(SEEDS):  # the stack's checkpoint of one seed resumes it on its own
        from bnbench.job.checkpoint import Checkpoint

        seed_cfg = cfg.copy()
        seed_cfg.seed = seed
        (alone,) = train_stacked(_models(cfg, data, [seed]), [seed], data, seed_cfg, CPU,
                                 checkpoints=[Checkpoint(tmp_path / f"alone{seed}.pt", run_id=f"r{seed}", every=1)])
        assert alone.resumed_from_step == 20
        _assert_same_runs([reference[i]], [alone], rel=1e-7)


def test_checkpoints_at_different_steps_do_not_stack(tmp_path):
    from bnbench.job.stacking import NotStackable

    cfg = make_cfg("norm=bn_before", "trainer.steps=40", "trainer.eval_every=10", "trainer.log_progress=false")
    data = load_dataset(cfg, CPU)
    checkpoints = _checkpoints(tmp_path, [0, 1])
    with pytest.raises(_Cut):
        train_stacked(_models(cfg, data, [0]), [0], data, cfg, CPU, on_eval=_cut_after(3), checkpoints=checkpoints[:1])
    with pytest.raises(NotStackable, match=r"checkpoints are at different steps \(seed 0: step 20, seed 1: no "):
        train_stacked(_models(cfg, data, [0, 1]), [0, 1], data, cfg, CPU, checkpoints=checkpoints)


@pytest.mark.slow
def test_a_killed_stacked_sweep_resumes_every_seed_from_its_checkpoint(tmp_path):
    import os
    import signal
    import time

    from test_resume import _start_sweep, _summaries, _wait_for

    args = ("norm=bn_before,gn_before", "seed=0,1,2", "sweep.name=k", "trainer.epochs=20", "trainer.threads=1",
            "dataset.train_size=600", "trainer.stack_seeds=true", "trainer.checkpoint_every_s=0")
    sweep = tmp_path / "results" / "k"
    proc = _start_sweep(tmp_path, *args)
    try:  # the first cell's stack has checkpointed every seed
        _wait_for(lambda: len(list(sweep.glob("*/checkpoint.pt"))) == 3)
        time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    steps = {p.parent.name: torch.load(p, weights_only=True)["step"] for p in sweep.glob("*/checkpoint.pt")}
    assert len(steps) == 3
    rerun = run_cli("run", "-m", *args, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    after = _summaries(sweep)
    assert len(after) == 6 and {s["status"] for s in after.values()} == {"completed"}
    for name, step in steps.items():
        assert after[name]["resumed_from_step"] == step, name
        # killed between two of the stack's checkpoint writes, its seeds are at different steps:
        # they then resume one by one (said in the log), otherwise as the same stack
        assert after[name]["stack_size"] == (3 if len(set(steps.values())) == 1 else 1)
    assert not list(sweep.glob("*/checkpoint.pt"))


def test_a_plan_that_is_not_there_is_one_clear_error(tmp_path):
    from bnbench.launch import planning
    from bnbench.errors import ConfigError

    with pytest.raises(ConfigError, match="sweep.plan=nope sweep.stack=0: there is no plan .*not by hand"):
        planning.members(tmp_path, "nope", 0)


@pytest.mark.slow
def test_every_norm_kind_trains_stacked_in_a_sweep_of_both_models(tmp_path):
    """The issue's check: norm=ln_before,gn_before,bn_after sweeps train stacked on the MLP and
    the AlexNet-style CNN (each at its own default size, on digits)."""
    result = run_cli("run", "-m", "model=mlp,alexnet", "norm=ln_before,gn_before,bn_after", "seed=0,1",
                     "trainer.steps=4", "trainer.threads=1", "trainer.log_progress=false", "sweep.name=n", "--quiet",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    records = _records(tmp_path / "results" / "n")
    assert len(records) == 12
    assert all(r["status"] == "completed" and r["stacked_seeds"] == [0, 1] for r in records.values())
    assert "not stacked" not in result.stdout + result.stderr


@pytest.mark.slow
def test_a_config_file_edited_while_the_sweep_runs_stops_the_jobs_that_would_train_it(tmp_path):
    """Editing a config file (or switching git branch) under a running sweep: the jobs composed
    after the edit would train optimizer.lr=0.5 beside the planned 0.1, in one comparison. Each
    job checks its config against the plan's run id and refuses in one line."""
    import os
    import subprocess
    import sys
    import time

    conf = tmp_path / "myconf" / "ablation"
    conf.mkdir(parents=True)
    (conf / "mine.yaml").write_text("# @package _global_\noptimizer:\n  lr: 0.1\n")
    env = {**os.environ, "BNBENCH_RESULTS": str(tmp_path / "results"), "COLUMNS": "200"}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "bnbench.cli", "run", "-m", f"hydra.searchpath=[file://{tmp_path / 'myconf'}]",
         "ablation=mine", "norm=none,bn_before", "trainer.stack_seeds=false", "trainer.epochs=4", "trainer.threads=1",
         "trainer.log_progress=false", "sweep.name=edit", "--quiet"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    plans = tmp_path / "results" / "edit" / ".plans"
    deadline = time.time() + 120
    while not (plans.is_dir() and any(plans.glob("*.json"))) and time.time() < deadline:
        time.sleep(0.02)
    (conf / "mine.yaml").write_text("# @package _global_\noptimizer:\n  lr: 0.5\n")  # the edit
    out, err = proc.communicate(timeout=300)
    assert proc.returncode != 0, out + err
    assert "the config files changed since this sweep was planned" in err, err[-2000:]
    assert "Traceback" not in err
    trained = [json.loads(p.read_text()) for p in (tmp_path / "results" / "edit").glob("*/summary.json")]
    assert len(trained) < 2 and all(r["params"].get("optimizer.lr", "0.1") != "0.5" for r in trained)
    plan = json.loads(next(plans.glob("*.json")).read_text())
    assert all(m["run_id"] for job in plan["jobs"] for m in job["members"])


@pytest.mark.slow
def test_a_sweep_with_hydra_job_chdir_runs_its_plan(tmp_path):
    """hydra.job.chdir=true starts each job in its run folder: the plan's path (relative to where
    the command ran) failed every job."""
    result = run_cli("run", "-m", "norm=none,bn_before", "seed=0,1", "hydra.job.chdir=true", "trainer.epochs=1",
                     "trainer.threads=1", "trainer.log_progress=false", "sweep.name=chdir", "--quiet", cwd=tmp_path,
                     env={"BNBENCH_RESULTS": "results"})  # relative, as by default
    assert result.returncode == 0, result.stderr[-2000:]
    records = _records(tmp_path / "results" / "chdir")
    assert len(records) == 4 and all(r["status"] == "completed" for r in records.values())
    assert (tmp_path / "results" / "chdir" / "report.md").is_file()
