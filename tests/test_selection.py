"""Per-arm selection on the validation split (bnbench report --select)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bnbench.analysis.selection import SelectionError, select_per_arm


def _runs(cells: dict[tuple[str, str], list], val="final_val_acc", test="final_test_acc") -> pd.DataFrame:
    """norm x lr cells; each entry per seed: (val, test), or ("diverged", test)."""
    rows = []
    for (norm, lr), entries in cells.items():
        for seed, entry in enumerate(entries):
            status = "diverged" if entry[0] == "diverged" else "completed"
            rows.append({"run": f"norm={norm},optimizer.lr={lr},seed={seed}", "status": status, "seed": seed,
                         "norm": norm, "optimizer.lr": lr, val: np.nan if status == "diverged" else entry[0],
                         test: entry[1], "final_val_loss": np.nan, "best_val_acc": np.nan, "best_val_loss": np.nan})
    runs = pd.DataFrame(rows)
    for f, levels in (("norm", ["none", "bn_before"]), ("optimizer.lr", ["0.01", "0.1", "1.0"])):
        runs[f] = pd.Categorical(runs[f], categories=[v for v in levels if v in set(runs[f])], ordered=True)
    return runs


def test_each_arm_gets_the_value_with_its_best_mean_validation_metric():
    runs = _runs({("none", "0.01"): [(0.80, 0.79), (0.82, 0.80)], ("none", "0.1"): [(0.85, 0.84), (0.86, 0.99)],
                  ("none", "1.0"): [("diverged", 0.1), (0.9, 0.9)],
                  ("bn_before", "0.01"): [(0.84, 0.83), (0.84, 0.85)], ("bn_before", "0.1"): [(0.87, 0.86), (0.88, 0.5)],
                  ("bn_before", "1.0"): [(0.89, 0.10), (0.90, 0.11)]})
    chosen, factors, selection = select_per_arm(runs, ["norm", "optimizer.lr"], "optimizer.lr", "final_test_acc")
    assert factors == ["norm"] and selection.criterion == "final_val_acc"
    table = selection.table.set_index("norm")
    # none: 1.0 had a diverged seed (the worst score), so 0.1 wins; bn_before: 1.0 by validation,
    # although its test accuracy is poor: the test set plays no part in the choice
    assert table.loc["none", "chosen"] == "0.1" and table.loc["bn_before", "chosen"] == "1.0"
    assert table.loc["bn_before", "criterion"] == pytest.approx(0.895) and table.loc["bn_before", "n"] == 2
    assert sorted(zip(chosen["norm"].astype(str), chosen["optimizer.lr"].astype(str))) == \
        [("bn_before", "1.0"), ("bn_before", "1.0"), ("none", "0.1"), ("none", "0.1")]
    # bn_before's 1.0 is the largest rate swept: its best may lie beyond the grid, and that is said
    assert "largest value swept" in table.loc["bn_before", "note"] and table.loc["none", "note"] == ""


def test_ties_and_arms_where_every_value_diverged_are_said():
    runs = _runs({("none", "0.01"): [("diverged", 0.1), (0.8, 0.8)], ("none", "0.1"): [("diverged", 0.1),
                                                                                       ("diverged", 0.1)],
                  ("bn_before", "0.01"): [(0.8, 0.8), (0.9, 0.9)], ("bn_before", "0.1"): [(0.9, 0.9), (0.8, 0.7)]})
    _, _, selection = select_per_arm(runs, ["norm", "optimizer.lr"], "optimizer.lr", "final_test_acc")
    table = selection.table.set_index("norm")
    assert table.loc["none", "chosen"] == "0.01" and "every value had a diverged seed" in table.loc["none", "note"]
    assert table.loc["bn_before", "chosen"] == "0.01" and "tie between 0.01, 0.1" in table.loc["bn_before", "note"]


def test_a_value_with_a_diverged_seed_loses_on_an_accuracy_too():
    """A diverged run's validation accuracy is finite (its final model's): the rule that a value
    with a diverged seed is chosen only when every value had one holds for it as for a loss."""
    runs = _runs({("none", "0.01"): [(0.80, 0.8), (0.81, 0.8)], ("none", "0.1"): [(0.86, 0.85), (0.85, 0.85)],
                  ("none", "1.0"): [(0.95, 0.9), (0.93, 0.9)],
                  ("bn_before", "0.01"): [(0.7, 0.7), (0.7, 0.7)], ("bn_before", "0.1"): [(0.8, 0.8), (0.9, 0.9)],
                  ("bn_before", "1.0"): [(0.85, 0.85), (0.9, 0.9)]})
    runs.loc[(runs["norm"] == "none") & (runs["optimizer.lr"] == "1.0") & (runs["seed"] == 0), "status"] = "diverged"
    for lr in ("0.01", "0.1", "1.0"):  # bn_before: a diverged seed everywhere, one at 0.1 and 1.0, two at 0.01
        for seed in ((0, 1) if lr == "0.01" else (1,)):
            runs.loc[(runs["norm"] == "bn_before") & (runs["optimizer.lr"] == lr) & (runs["seed"] == seed),
                     "status"] = "diverged"
    _, _, selection = select_per_arm(runs, ["norm", "optimizer.lr"], "optimizer.lr", "final_test_acc")
    table = selection.table.set_index("norm")
    assert table.loc["none", "chosen"] == "0.1"  # 1.0 leads on the mean (0.94) but a seed diverged
    assert table.loc["bn_before", "chosen"] == "1.0"  # the best mean of those with the fewest (one)
    assert "the best of those with the fewest (1 of 2)" in table.loc["bn_before", "note"]


def test_a_key_that_is_not_swept_or_a_sweep_without_validation_is_refused():
    runs = _runs({("none", "0.1"): [(0.8, 0.8)], ("bn_before", "0.1"): [(0.9, 0.9)]})
    with pytest.raises(SelectionError, match="optimizer.lr is not swept"):
        select_per_arm(runs, ["norm"], "optimizer.lr", "final_test_acc")
    runs["final_val_acc"] = np.nan
    with pytest.raises(SelectionError, match="no validation metric"):
        select_per_arm(runs, ["norm"], "norm", "final_test_acc")


def test_report_select_compares_the_arms_at_their_chosen_values(tmp_path):
    """End to end on real runs (digits, in-process): each arm at the learning rate its validation
    accuracy chose, compared by seed; results.csv keeps every run; the markdown shows the choice."""
    from bnbench import report
    from bnbench.job.experiment import run_experiment
    from conftest import make_cfg

    for norm in ("none", "bn_before"):
        for lr in ("0.01", "0.1"):
            for seed in (0, 1):
                overrides = [f"norm={norm}", f"optimizer.lr={lr}", f"seed={seed}"]
                cfg = make_cfg(*overrides, "trainer.epochs=2", "trainer.threads=1", "trainer.log_progress=false")
                run_experiment(cfg, tmp_path / ",".join(overrides), overrides=overrides)
    tables = report.build(tmp_path, report.ReportOptions(select="optimizer.lr"))
    assert tables.factors == ["norm"] and len(tables.runs) == 4 and len(tables.all_runs) == 8
    chosen = tables.selection.table.set_index("norm")["chosen"]
    for norm in ("none", "bn_before"):  # the choice is the best mean validation accuracy, by hand
        arm = tables.all_runs[tables.all_runs["norm"].astype(str) == norm]
        means = arm.groupby(arm["optimizer.lr"].astype(str), observed=True)["final_val_acc"].mean()
        assert chosen[norm] == means.idxmax()
    comp = tables.comparisons
    assert len(comp) == 1 and comp["n_pairs"].iloc[0] == 2, "compared at the chosen values, paired by seed"
    markdown = report.to_markdown(tables)
    assert "## `optimizer.lr` chosen per arm" in markdown and "winner's curse" in markdown
    written = report.write(tables, report.ReportOptions(select="optimizer.lr", plots=False))
    assert len(pd.read_csv(tmp_path / "results.csv")) == 8 and tmp_path / "selection.csv" in written
    with pytest.raises(report.ReportError, match="seed is not swept"):
        report.build(tmp_path, report.ReportOptions(select="seed"))


# ---------------------------------------------------------------------------- --profile


def _lr_runs(cells: dict[tuple[str, str], list]) -> pd.DataFrame:
    """norm x lr cells of final test accuracies per seed; "d" marks a diverged seed (10%)."""
    rows = []
    for (norm, lr), entries in cells.items():
        for seed, entry in enumerate(entries):
            diverged = entry == "d"
            rows.append({"run": f"norm={norm},optimizer.lr={lr},seed={seed}", "seed": seed, "norm": norm,
                         "optimizer.lr": lr, "status": "diverged" if diverged else "completed",
                         "final_test_acc": 0.1 if diverged else entry})
    runs = pd.DataFrame(rows)
    runs["norm"] = pd.Categorical(runs["norm"], categories=["none", "bn_before"], ordered=True)
    lrs = sorted(set(runs["optimizer.lr"]), key=float)
    runs["optimizer.lr"] = pd.Categorical(runs["optimizer.lr"], categories=lrs, ordered=True)
    return runs


def test_the_stable_range_is_the_unbroken_run_of_close_values_without_divergence():
    from bnbench.analysis.profiles import profile

    runs = _lr_runs({
        ("none", "0.01"): [0.80, 0.81, 0.80], ("none", "0.1"): [0.88, 0.88, 0.89], ("none", "1"): [0.875, 0.88, 0.88],
        ("none", "10"): ["d", 0.88, 0.88],
        ("bn_before", "0.01"): [0.88, 0.885, 0.88], ("bn_before", "0.1"): [0.89, 0.89, 0.89],
        ("bn_before", "1"): [0.885, 0.89, 0.885], ("bn_before", "10"): [0.70, 0.72, 0.71]})
    prof = profile(runs, ["norm", "optimizer.lr"], "optimizer.lr", "final_test_acc", within=0.01,
                   baseline={"norm": "none"})
    ranges = prof.ranges.set_index("norm")
    # none: 0.1 is best; 1 is within a point; 10 had a diverged seed; 0.01 is 8 points down
    assert (ranges.loc["none", "low"], ranges.loc["none", "high"], ranges.loc["none", "width"]) == (0.1, 1.0, 10.0)
    # bn_before: 0.01-1 within a point of 0.89, 10 far below
    assert (ranges.loc["bn_before", "low"], ranges.loc["bn_before", "high"]) == (0.01, 1.0)
    assert ranges.loc["bn_before", "width"] == pytest.approx(100.0)
    assert ranges.loc["bn_before", "width_ratio"] == pytest.approx(10.0)
    assert 0 < ranges.loc["bn_before", "width_share"] <= 1 and "100: " in ranges.loc["bn_before", "width_resampled"]
    cells = prof.cells.set_index(["norm", "value"])
    assert cells.loc[("none", 10.0), "div_rate"] == pytest.approx(1 / 3)
    assert cells.loc[("bn_before", 0.1), "mean"] == pytest.approx(0.89)


def test_profile_of_a_key_that_is_not_numeric_or_not_swept_is_refused():
    from bnbench.analysis.profiles import ProfileError, profile

    runs = _lr_runs({("none", "0.1"): [0.8], ("bn_before", "0.1"): [0.9]})
    with pytest.raises(ProfileError, match="optimizer.lr is not swept"):
        profile(runs, ["norm"], "optimizer.lr", "final_test_acc", within=0.01)
    with pytest.raises(ProfileError, match="not all numbers"):
        profile(runs, ["norm", "optimizer.lr"], "norm", "final_test_acc", within=0.01)


def test_report_profile_writes_its_tables_and_plot(tmp_path):
    from bnbench import report
    from bnbench.job.experiment import run_experiment
    from conftest import make_cfg

    for norm in ("none", "bn_before"):
        for lr in ("0.01", "0.1", "1.0"):
            for seed in (0, 1):
                overrides = [f"norm={norm}", f"optimizer.lr={lr}", f"seed={seed}"]
                cfg = make_cfg(*overrides, "trainer.epochs=1", "trainer.threads=1", "trainer.log_progress=false")
                run_experiment(cfg, tmp_path / ",".join(overrides), overrides=overrides)
    options = report.ReportOptions(profile="optimizer.lr", within=2.0)
    tables = report.build(tmp_path, options)
    assert len(tables.profile.ranges) == 2 and len(tables.profile.cells) == 6
    markdown = report.to_markdown(tables)
    assert "## Profile over `optimizer.lr`" in markdown and "within 2 points" in markdown
    written = report.write(tables, options)
    assert {tmp_path / "profile.png", tmp_path / "stable_ranges.csv", tmp_path / "profile.csv"} <= set(written) | \
        set(tmp_path.glob("*.png"))


def test_a_profile_over_the_runs_each_arm_selected(tmp_path):
    """--select optimizer.lr --profile trainer.batch_size: each (norm, batch) arm at the rate its
    validation accuracy chose, then the profile over the batch of those runs."""
    from bnbench import report
    from bnbench.job.experiment import run_experiment
    from conftest import make_cfg

    for norm in ("none", "bn_before"):
        for batch in ("20", "60"):
            for lr in ("0.01", "0.1"):
                for seed in (0, 1):
                    overrides = [f"norm={norm}", f"trainer.batch_size={batch}", f"optimizer.lr={lr}", f"seed={seed}"]
                    cfg = make_cfg(*overrides, "trainer.steps=20", "trainer.threads=1", "trainer.log_progress=false")
                    run_experiment(cfg, tmp_path / ",".join(overrides), overrides=overrides)
    options = report.ReportOptions(select="optimizer.lr", profile="trainer.batch_size", metric="final_test_acc")
    tables = report.build(tmp_path, options)
    assert len(tables.runs) == 8 and len(tables.all_runs) == 16, "one rate per (norm, batch) arm"
    chosen = tables.selection.table.set_index(["norm", "trainer.batch_size"])["chosen"]
    cells = tables.profile.cells.set_index(["norm", "trainer.batch_size"])
    for (norm, batch), lr in chosen.items():  # the profile's point is the mean test accuracy at the chosen rate
        at = tables.all_runs[(tables.all_runs["norm"].astype(str) == norm)
                             & (tables.all_runs["trainer.batch_size"].astype(str) == batch)
                             & (tables.all_runs["optimizer.lr"].astype(str) == lr)]
        assert cells.loc[(norm, batch), "mean"] == pytest.approx(at["final_test_acc"].mean())
    assert any("chosen on the validation split" in note for note in tables.notes)
    with pytest.raises(report.ReportError, match="both name optimizer.lr"):
        report.build(tmp_path, report.ReportOptions(select="optimizer.lr", profile="optimizer.lr"))


@pytest.mark.slow
def test_confirm_reruns_each_arm_s_choice_on_fresh_seeds_and_reports_it(tmp_path):
    import json

    from conftest import run_cli

    common = ("trainer.epochs=1", "trainer.threads=1", "trainer.log_progress=false", "--quiet")
    sweep = run_cli("run", "-m", "norm=none,bn_before", "optimizer.lr=0.01,0.5", "seed=0,1", "sweep.name=lr",
                    *common, cwd=tmp_path)
    assert sweep.returncode == 0, sweep.stderr[-2000:]
    proc = run_cli("confirm", str(tmp_path / "results" / "lr"), "--select", "optimizer.lr", "--seeds", "2",
                   "trainer.threads=1", "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    folder = tmp_path / "results" / "lr_confirm"
    plan = json.loads((folder / "confirm.json").read_text())
    assert plan["seeds"] == [2, 3] and plan["select"] == "optimizer.lr"
    chosen = {arm["arm"]["norm"]: arm["chosen"] for arm in plan["arms"]}
    summaries = [json.loads(p.read_text()) for p in folder.glob("*/summary.json")]
    assert len(summaries) == 4 and {s["seed"] for s in summaries} == {2, 3}
    for s in summaries:
        assert s["status"] in ("completed", "diverged") and s["params"]["optimizer.lr"] == chosen[s["params"]["norm"]]
    report_md = (folder / "report.md").read_text()
    assert "Against the baseline `norm=none`" in report_md
    from bnbench import report

    runs, _, _ = report.collect_runs(folder)  # one sweep per arm: the order is the confirmed sweep's
    assert list(runs["norm"].cat.categories) == ["none", "bn_before"], "not alphabetical"
    assert ("## `optimizer.lr` chosen per arm" in report_md) == (len(set(chosen.values())) > 1)
    if len(set(chosen.values())) > 1:  # no winner's curse here: the values were chosen on other seeds
        assert "took no part in the choice" in report_md and "winner's curse" not in report_md
    again = run_cli("confirm", str(tmp_path / "results" / "lr"), "--select", "optimizer.lr", "--seeds", "2",
                    "trainer.threads=1", "--quiet", cwd=tmp_path)
    assert again.returncode == 0 and "already complete" in again.stdout


def test_a_failed_run_is_not_a_result_but_is_counted_where_it_was():
    runs = _runs({("none", "0.01"): [(0.80, 0.8), (0.82, 0.8)], ("none", "0.1"): [(0.9, 0.9), (0.9, 0.9)],
                  ("bn_before", "0.01"): [(0.8, 0.8), (0.8, 0.8)], ("bn_before", "0.1"): [(0.9, 0.9), (0.9, 0.9)]})
    runs.loc[(runs["norm"] == "none") & (runs["optimizer.lr"] == "0.1"), "status"] = "failed"
    _, _, selection = select_per_arm(runs, ["norm", "optimizer.lr"], "optimizer.lr", "final_test_acc")
    none = selection.table.set_index("norm").loc["none"]
    assert none["chosen"] == "0.01", "a value whose runs all failed has no result to choose"
    assert ("0.1", pytest.approx(np.nan, nan_ok=True), 0, 0, 2) in [tuple(v) for v in none["values"]]


@pytest.mark.slow
def test_confirm_reads_the_config_folders_the_sweep_read(tmp_path):
    """A sweep over an option of the user's own config folder (--config-dir, hydra.searchpath):
    the confirmation's reruns compose that option too, instead of failing to find it."""
    from bnbench.confirm import config_sources
    from conftest import run_cli

    for name, folder in (("cd", "mine_cd"), ("sp", "mine_sp")):
        (tmp_path / folder / "ablation").mkdir(parents=True)
        (tmp_path / folder / "ablation" / f"{name}.yaml").write_text(
            "# @package _global_\ntrainer:\n  epochs: 1\n")
    common = ("trainer.threads=1", "trainer.log_progress=false", "--quiet")
    sweep = run_cli("run", "-m", f"--config-dir={tmp_path / 'mine_cd'}",
                    f"hydra.searchpath=[file://{tmp_path / 'mine_sp'}]", "ablation=cd", "norm=none,bn_before",
                    "optimizer.lr=0.05,0.1", "seed=0", "sweep.name=own", *common, cwd=tmp_path)
    assert sweep.returncode == 0, sweep.stderr[-2000:]
    carried = config_sources(tmp_path / "results" / "own")
    assert carried == [f"--config-dir={tmp_path / 'mine_cd'}", f"hydra.searchpath=[file://{tmp_path / 'mine_sp'}]"]
    proc = run_cli("confirm", str(tmp_path / "results" / "own"), "--select", "optimizer.lr", "--seeds", "2",
                   *common, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(list((tmp_path / "results" / "own_confirm").glob("*/summary.json"))) == 4
