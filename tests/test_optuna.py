"""Optuna through Hydra's sweeper plugin (hydra/sweeper=optuna): the real sweeper, end to end."""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import run_cli


@pytest.mark.slow
def test_an_optuna_sweep_optimizes_the_validation_objective_resumes_and_reports(tmp_path):
    """Every trial failed ("Return value must be float-castable"), the default grid's seed and
    norm leaked into the search space, and the report invented missing runs. Now each job
    returns sweep.objective, the space is only what the user gave, and the report treats the
    sampled rate as a profile."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    args = ("run", "-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=4", "hydra.sweeper.direction=maximize",
            "hydra.sweeper.sampler.seed=0", "optimizer.lr=tag(log,interval(0.01,1))", "trainer.epochs=1",
            "trainer.threads=1", "sweep.name=opt", "--quiet")
    first = run_cli(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    sweep = tmp_path / "results" / "opt"
    summaries = [json.loads(p.read_text()) for p in sweep.glob("*/summary.json")]
    assert len(summaries) == 4 and all(s["status"] == "completed" for s in summaries)
    assert not any({"seed", "norm"} & set(s["params"]) for s in summaries), "the default grid did not leak"
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(max(s["final"]["val_acc"] for s in summaries))  # validation, not test
    report_md = (sweep / "report.md").read_text()
    assert "sampled by OptunaSweeper (hydra.sweeper), not a grid" in report_md
    assert "## Profile over `optimizer.lr`" in report_md
    from bnbench import report

    tables = report.build(sweep)
    assert tables.counts["missing cells"] == 0 and tables.profile is not None and tables.comparisons is None
    again = run_cli(*args, cwd=tmp_path)  # the same study again: every trial is on disk, nothing retrains
    assert again.returncode == 0, again.stderr[-3000:]
    assert "4 runs were already complete and were skipped" in again.stdout
    assert [json.loads(p.read_text()) for p in sweep.glob("*/summary.json")] == summaries
    bad = run_cli(*args[:-2], "sweep.name=bad", "sweep.objective=accuracy", "--quiet", cwd=tmp_path)
    assert bad.returncode != 0 and "sweep.objective=accuracy is not a run metric" in bad.stderr
    none = run_cli(*args[:-2], "sweep.name=none", "sweep.objective_seeds=0", "--quiet", cwd=tmp_path)
    assert none.returncode != 0 and "sweep.objective_seeds=0 must be at least 1" in none.stderr


@pytest.mark.slow
def test_a_trial_can_be_the_mean_over_several_seeds(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    proc = run_cli("run", "-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=2", "hydra.sweeper.direction=maximize",
                   "hydra.sweeper.sampler.seed=0", "optimizer.lr=interval(0.05,0.5)", "sweep.objective_seeds=2",
                   "trainer.epochs=1", "trainer.threads=1", "sweep.name=seeds", "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = tmp_path / "results" / "seeds"
    records = {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/summary.json")}
    assert len(records) == 4 and sorted(r["seed"] for r in records.values()) == [0, 0, 1, 1]
    trials = {}
    for name, record in records.items():
        trials.setdefault(name.split(",seed=")[0], []).append(record["final"]["val_acc"])
    assert all(len(v) == 2 for v in trials.values())
    assert all(r.get("stacked_seeds") == [0, 1] for r in records.values()), "a trial's seeds train as one stack"
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())["best_value"]
    assert best == pytest.approx(max(sum(v) / 2 for v in trials.values()))
