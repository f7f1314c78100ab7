"""`bnbench report` on real sweep folders: statistics, baselines, formats, provenance, plots."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from bnbench import report
from conftest import make_cfg, run_cli


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A real sweep with a completed grid plus one diverged and one failed run."""
    cwd = tmp_path_factory.mktemp("sweep")
    ok = run_cli("run", "-m", "norm=none,bn_before", "activation=relu,tanh", "seed=0,1,2", "sweep.name=s",
                 "trainer.epochs=2", "trainer.threads=1", "trainer.log_progress=false", cwd=cwd)
    assert ok.returncode == 0, ok.stderr
    bad = run_cli("run", "-m", "norm=none", "activation=sigmoid", "seed=0,1", "sweep.name=s", "trainer.epochs=2",
                  "trainer.threads=1", "trainer.log_progress=false", "optimizer.lr=1e6", cwd=cwd)
    assert bad.returncode == 0, bad.stderr  # diverged is a result
    folder = cwd / "results" / "s"
    # make one of them a crash, as a run that raised would record it
    (crashed,) = folder.glob("activation=sigmoid,*seed=1*")
    summary = json.loads((crashed / "summary.json").read_text())
    summary.update(status="failed", error="RuntimeError: CUDA out of memory", final={}, best={})
    (crashed / "summary.json").write_text(json.dumps(summary))
    return cwd, folder


@pytest.mark.slow
def test_cells_match_scipy_and_show_every_status(sweep):
    _, folder = sweep
    tables = report.build(folder)
    runs = tables.runs
    cell = tables.cells.set_index(["norm", "activation"]).loc[("bn_before", "relu")]
    values = runs[(runs["norm"] == "bn_before") & (runs["activation"] == "relu")]["final_test_acc"].to_numpy(float)
    assert cell["n"] == 3
    assert cell["mean"] == pytest.approx(values.mean())
    assert cell["std"] == pytest.approx(values.std(ddof=1))
    low, high = st.t.interval(0.95, 2, loc=values.mean(), scale=st.sem(values))
    assert (cell["ci_low"], cell["ci_high"]) == pytest.approx((low, high))
    # the second sweep changed optimizer.lr, so it is a factor: "(default)" for the first grid
    assert tables.factors == ["norm", "activation", "optimizer.lr"]
    sigmoid = tables.cells.set_index(["norm", "activation", "optimizer.lr"]).loc[("none", "sigmoid", "1000000.0")]
    # the diverged seed is a result, scored by its final model (at about chance or below); the
    # failed one is not, and marks the cell
    diverged = runs[(runs["activation"] == "sigmoid") & (runs["status"] == "diverged")]["final_test_acc"]
    assert sigmoid["diverged"] == 1 and sigmoid["failed"] == 1 and sigmoid["n"] == 1
    assert sigmoid["mean"] == pytest.approx(float(diverged.iloc[0])) and sigmoid["mean"] < 0.2
    assert not sigmoid["complete"] and sigmoid["div_rate"] == 1
    written = report.write(tables)
    md = (folder / "report.md").read_text()
    assert f"{int(sigmoid['rank'])}* | none | sigmoid | 1000000.0 | 1/3 (1 failed, 1 missing) | 1/1 (100%) |" in md
    assert "CUDA out of memory" in md
    assert {p.name for p in written} >= {"results.csv", "report.md", "cells.csv", "comparisons.csv"}


@pytest.mark.slow
def test_paired_comparison_against_default_baseline(sweep):
    _, folder = sweep
    tables = report.build(folder)
    comp = tables.comparisons.set_index(["norm", "activation"])
    assert comp["baseline"].iloc[0] == "norm=none"
    runs = tables.runs.set_index(["norm", "activation", "seed"])["final_test_acc"]
    a = np.array([runs.loc[("bn_before", "tanh", s)] for s in (0, 1, 2)], dtype=float)
    b = np.array([runs.loc[("none", "tanh", s)] for s in (0, 1, 2)], dtype=float)
    row = comp.loc[("bn_before", "tanh")]
    assert row["n_pairs"] == 3
    assert row["mean_diff"] == pytest.approx((a - b).mean())
    assert row["p_ttest"] == pytest.approx(st.ttest_rel(a, b).pvalue)
    holm = tables.comparisons["p_holm"].dropna()
    assert (holm >= tables.comparisons["p_ttest"].dropna()).all()


@pytest.mark.slow
def test_report_cli_options_and_formats(sweep):
    cwd, folder = sweep
    proc = run_cli("report", str(folder), "--baseline", "activation=relu", "--format", "md,csv,latex",
                   "--metric", "best_test_acc", cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    md = (folder / "report.md").read_text()
    assert "best test accuracy" in md and "Against the baseline `activation=relu`" in md
    assert "selected on the test set" in md and "warning" in proc.stdout.lower()
    tex = (folder / "report.tex").read_text()
    assert r"\begin{tabular}" in tex and r"\toprule" in tex
    assert "## Provenance" in md and "bnbench run -m" in md and "torch" in md
    assert (folder / "learning_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (folder / "cells.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_time_to_target_accuracy(sweep):
    cwd, folder = sweep
    proc = run_cli("report", str(folder), "--target-acc", "0.5", "--time-unit", "epochs", "--no-plots", "-q",
                   cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    cells = pd.read_csv(folder / "cells.csv")
    finite = cells["mean"][np.isfinite(cells["mean"])]
    assert set(finite) <= {1.0, 2.0}
    # the diverged sigmoid run never reached 50%: slower than any time, so its cell's mean is +inf
    sigmoid = cells[(cells["activation"] == "sigmoid")].iloc[0]
    assert sigmoid["mean"] == np.inf and sigmoid["median"] == np.inf


@pytest.mark.slow
@pytest.mark.parametrize("args,fragment", [
    (("--metric", "accuracy"), "unknown metric"),
    (("--baseline", "norm=batch"), "--baseline"),
    (("--baseline", "colour=red"), "--baseline"),
    (("--format", "docx"), "unknown format"),
    (("--target-acc", "90"), "--target-acc"),
    (("--margin", "-0.5"), "--margin"),
    (("--min-effect", "0"), "--effect"),  # the old name of --effect
    (("--interval", "jackknife"), "--interval"),
    (("--select", "trainer.batch_size"), "trainer.batch_size is not swept"),
])
def test_bad_report_options_are_one_line_errors(sweep, args, fragment):
    cwd, folder = sweep
    proc = run_cli("report", str(folder), "--no-plots", *args, cwd=cwd)
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_missing_cell_of_the_grid_is_listed(tmp_path):
    proc = run_cli("run", "-m", "norm=none,bn_before", "activation=relu,tanh", "seed=0,1", "sweep.name=m",
                   "trainer.epochs=1", "trainer.threads=1", "trainer.log_progress=false", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    folder = tmp_path / "results" / "m"
    for run in folder.glob("activation=tanh,norm=bn_before,*"):
        shutil.rmtree(run)  # a cell that never ran at all
    tables = report.build(folder)
    cell = tables.cells.set_index(["norm", "activation"]).loc[("bn_before", "tanh")]
    assert cell["status"] == "missing" and cell["runs"] == 0
    assert tables.counts["missing cells"] == 1
    report.write(tables)
    assert "| bn_before | tanh | 0/2 (2 missing) |" in (folder / "report.md").read_text()


@pytest.mark.slow
def test_regression_sweep_reports_test_loss_lower_is_better(tmp_path):
    ok = run_cli("run", "-m", "dataset=friedman1", "model.widths=[18,18,4]", "norm=none,bn_before", "seed=0,1",
                 "optimizer=adam", "optimizer.lr=0.01", "trainer.epochs=2", "sweep.name=reg", "trainer.threads=1",
                 "trainer.log_progress=false", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    folder = tmp_path / "results" / "reg"
    tables = report.build(folder)
    assert tables.metric == "final_test_loss" and tables.cells.attrs["higher_better"] is False
    runs = tables.runs
    assert runs["final_test_acc"].isna().all() and (runs["best_test_loss"] <= runs["final_test_loss"]).all()
    best = tables.cells.sort_values("rank").iloc[0]
    assert best["mean"] == tables.cells["mean"].min()
    assert (folder / "learning_curves.png").is_file()
    refused = run_cli("report", str(folder), "--target-acc", "0.9", cwd=tmp_path)
    assert refused.returncode != 0 and "regression" in refused.stderr


REFERENCE = Path(__file__).resolve().parent.parent / "results" / "reference"


def _as_0_1_record(run_dir: Path) -> None:
    """Rewrite a run record as bnbench 0.1 wrote it: its train metrics were the running averages
    in train mode, under the plain names, and there were no *_running columns."""
    summary = json.loads((run_dir / "summary.json").read_text())
    final = summary["final"]
    final["train_loss"], final["train_acc"] = final.pop("train_loss_running"), final.pop("train_acc_running")
    summary.pop("stack_size", None)
    (run_dir / "summary.json").write_text(json.dumps(summary))
    metrics = pd.read_csv(run_dir / "metrics.csv").drop(columns=["train_loss", "train_acc"])
    metrics = metrics.rename(columns={"train_loss_running": "train_loss", "train_acc_running": "train_acc"})
    metrics.to_csv(run_dir / "metrics.csv", index=False)


def test_records_from_before_0_2_report_their_train_metrics_as_running_averages(tmp_path):
    folder = tmp_path / "keras_mlp"
    shutil.copytree(REFERENCE / "keras_mlp", folder)
    for summary in folder.glob("*/summary.json"):
        _as_0_1_record(summary.parent)
    tables = report.build(folder)
    runs = tables.runs
    assert runs["final_train_loss"].isna().all() and runs["final_train_loss_running"].notna().all()
    with pytest.raises(report.ReportError, match="final_train_loss_running"):
        report.build(folder, report.ReportOptions(metric="final_train_loss"))
    running = report.build(folder, report.ReportOptions(metric="final_train_loss_running"))
    assert any("running average" in w for w in running.warnings)
    report.write(running)  # the learning curves read the old metrics.csv too
    assert (folder / "learning_curves.png").is_file()


def test_a_folder_with_only_results_csv_reports_with_the_factorial_anova(tmp_path):
    """The committed 144-run factorial keeps only its results.csv: the report, ANOVA included,
    is rebuilt from it (norm x activation: F(6, 94) = 105.6 there)."""
    folder = tmp_path / "factorial"
    folder.mkdir()
    shutil.copy(REFERENCE / "factorial_fashion_mnist" / "results.csv", folder)
    tables = report.build(folder)
    assert tables.factors == ["model", "norm", "activation", "optimizer"] and len(tables.runs) == 144
    anova = tables.anova.set_index("term")
    assert anova.loc["norm × activation", "df"] == 6 and anova.loc["Residual", "df"] == 94
    assert anova.loc["norm × activation", "F"] == pytest.approx(105.6, abs=0.1)
    assert len(tables.interactions) == 6  # every pair of the four factors, none capped
    assert any(f["factor"] == "norm" and f["across"] == "activation" for f in tables.flips)
    md = report.to_markdown(tables)
    assert "rebuilt from results.csv" in md and "## Factorial ANOVA" in md


@pytest.mark.slow
def test_damaged_records_are_named_and_the_rest_of_the_report_is_written(sweep, tmp_path):
    cwd, folder = sweep
    damaged = tmp_path / "damaged"
    shutil.copytree(folder, damaged)
    runs = sorted(p.parent for p in damaged.glob("*/summary.json"))
    (runs[0] / "metrics.csv").write_bytes(bytes(range(256)) * 40)  # not text at all
    (runs[1] / "summary.json").write_bytes(b"\xff\xfe{ torn")
    (runs[2] / "metrics.csv").unlink()
    proc = run_cli("report", str(damaged), "--target-acc", "0.5", cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    md = (damaged / "report.md").read_text()
    assert "3 run record(s) are damaged" in md
    assert f"{runs[0].name}: metrics.csv is corrupt (not text)" in md
    assert f"{runs[1].name}: summary.json is corrupt (not JSON)" in md
    assert f"{runs[2].name}: metrics.csv is missing" in md
    assert (damaged / "learning_curves.png").is_file() and (damaged / "cells.csv").is_file()
    tables = report.build(damaged)
    row = tables.runs.set_index("run").loc[runs[1].name]
    assert row["status"] == "incomplete" and "trains it again" in row["error"]


@pytest.mark.slow
def test_report_out_writes_elsewhere_and_never_into_a_run_folder_unasked(sweep, tmp_path):
    cwd, folder = sweep
    out = tmp_path / "elsewhere"
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if p.is_file()}
    proc = run_cli("report", str(folder), "--out", str(out), "-q", cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    assert {"report.md", "results.csv", "cells.csv", "learning_curves.png", "cells.png"} <= {p.name for p in out.iterdir()}
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if p.is_file()} == before, "the sweep is untouched"
    assert "![learning curves](learning_curves.png)" in (out / "report.md").read_text()
    # a single run's folder, and the folder of single runs: only with --out
    run_dir = next(p.parent for p in folder.glob("*/summary.json"))
    refused = run_cli("report", str(run_dir), "--no-plots", cwd=cwd)
    assert refused.returncode == 1 and "single run's folder" in refused.stderr and "--out" in refused.stderr
    assert not (run_dir / "report.md").exists()
    single = run_cli("run", "trainer.epochs=1", "trainer.threads=1", cwd=tmp_path)
    assert single.returncode == 0, single.stderr
    runs_dir = tmp_path / "results" / "runs"
    refused = run_cli("report", str(runs_dir), "--no-plots", cwd=tmp_path)
    assert refused.returncode == 1 and "single runs" in refused.stderr and not (runs_dir / "report.md").exists()
    ok = run_cli("report", str(next(runs_dir.iterdir())), "--out", str(tmp_path / "one"), "--no-plots", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "one" / "report.md").is_file()


def test_runs_with_a_validation_split_report_the_test_metric_selected_on_it(tmp_path):
    from bnbench.job.experiment import run_experiment

    for norm in ("none", "bn_before"):
        overrides = [f"norm={norm}", "seed=0"]
        cfg = make_cfg(*overrides, "trainer.epochs=2", "trainer.threads=1", "trainer.log_progress=false")
        run_experiment(cfg, tmp_path / f"norm={norm},seed=0", overrides=overrides)
    tables = report.build(tmp_path, report.ReportOptions(metric="test_acc_at_best_val"))
    assert tables.runs["test_acc_at_best_val"].notna().all() and tables.runs["final_val_acc"].notna().all()
    assert not any("selected on the test set" in w for w in tables.warnings)
    assert "test accuracy at the best validation accuracy" in report.to_markdown(tables)


def test_an_old_sweep_without_validation_metrics_reports_as_before(tmp_path):
    folder = tmp_path / "ioffe2015"
    shutil.copytree(REFERENCE / "ioffe2015", folder)
    tables = report.build(folder)
    assert tables.runs["final_val_acc"].isna().all() and tables.runs["final_test_acc"].notna().all()
    with pytest.raises(report.ReportError, match="no validation metrics.*use --metric final_test_acc"):
        report.build(folder, report.ReportOptions(metric="test_acc_at_best_val"))
    with pytest.raises(report.ReportError, match="--profile optimizer.lr: these runs have no validation metric"):
        report.build(folder, report.ReportOptions(profile="optimizer.lr"))


def test_a_report_removes_the_tables_an_earlier_report_left_and_nothing_else(tmp_path):
    """A report with fewer tables than the one before it (no comparisons here) removes the
    earlier tables it did not write, so no stale CSV sits beside report.md; files that are not
    bnbench's tables stay, and the manifest lists what the report wrote."""
    folder = tmp_path / "factorial"
    folder.mkdir()
    shutil.copy(REFERENCE / "factorial_fashion_mnist" / "results.csv", folder)
    (folder / "notes.txt").write_text("mine")
    first = report.write(report.build(folder), report.ReportOptions(plots=False))
    assert (folder / "comparisons.csv").is_file() and (folder / "anova.csv").is_file()
    (folder / "report.tex").write_text("% left by an earlier --format latex")  # as an earlier report would
    options = report.ReportOptions(baseline={}, plots=False)
    second = report.write(report.build(folder, options), options)
    assert not (folder / "comparisons.csv").exists() and (folder / "anova.csv").is_file()
    assert (folder / "notes.txt").read_text() == "mine"
    manifest = json.loads((folder / report.MANIFEST).read_text())
    assert manifest["files"] == sorted(p.name for p in second) and len(second) == len(first) - 1
    assert (folder / "report.tex").exists(), "not in the manifest of the report before: not this report's to remove"


def test_a_report_into_a_folder_of_the_user_s_own_removes_nothing_there(tmp_path):
    folder, out = tmp_path / "factorial", tmp_path / "paper"
    folder.mkdir()
    out.mkdir()
    shutil.copy(REFERENCE / "factorial_fashion_mnist" / "results.csv", folder)
    (out / "selection.csv").write_text("the user's own table\n")  # a name a report may write, not one it wrote
    options = report.ReportOptions(plots=False, out=out)
    report.write(report.build(folder, options), options)
    assert (out / "selection.csv").read_text() == "the user's own table\n"


def test_a_folder_that_is_not_a_bnbench_sweep_is_refused_and_left_untouched(tmp_path):
    """Another tool's runs (a summary.json with a status) and another Hydra app's multirun: the
    report refuses in one line and writes nothing over their results.csv and report.md."""
    foreign = tmp_path / "other_tool"
    for i in range(2):
        (foreign / f"run{i}").mkdir(parents=True)
        (foreign / f"run{i}" / "summary.json").write_text(json.dumps({"status": "completed", "acc": 0.9}))
    (foreign / "results.csv").write_text("theirs\n")
    (foreign / "report.md").write_text("their report\n")
    with pytest.raises(report.ReportError, match="is not a bnbench sweep: it has no sweep.json"):
        report.build(foreign)
    hydra_app = tmp_path / "hydra_app"
    (hydra_app / "0" / ".hydra").mkdir(parents=True)
    (hydra_app / "0" / ".hydra" / "overrides.yaml").write_text("- x=1\n")
    (hydra_app / "multirun.yaml").write_text("hydra: {}\n")
    with pytest.raises(report.ReportError, match="is not a bnbench sweep"):
        report.build(hydra_app)
    (tmp_path / "csv_only").mkdir()
    (tmp_path / "csv_only" / "results.csv").write_text("a,b\n1,2\n")
    with pytest.raises(report.ReportError, match="is not a bnbench results.csv"):
        report.build(tmp_path / "csv_only")
    assert (foreign / "results.csv").read_text() == "theirs\n" and (foreign / "report.md").read_text() == "their report\n"


def test_the_parent_of_several_sweeps_is_refused_never_pooled(tmp_path):
    """results/ with two sweeps of the same seeds: pooled, each seed counted twice (4/4, a
    narrower interval). The report names the sweeps and reports none of them together."""
    parent = tmp_path / "results"
    for name, level in (("lr", 0.8), ("act", 0.9)):
        sweep = parent / name
        sweep.mkdir(parents=True)
        (sweep / "sweep.json").write_text("{}")
        for seed in (0, 1):
            run = sweep / f"norm=none,seed={seed}"
            run.mkdir()
            (run / "summary.json").write_text(json.dumps({
                "status": "completed", "run_id": f"{name}{seed}", "seed": seed, "params": {"norm": "none", "seed": seed},
                "final": {"test_acc": level + seed / 100}, "versions": {"bnbench": "0.6.0"}}))
    with pytest.raises(report.ReportError, match=r"holds 2 sweep\(s\) \(act, lr\): report each on its own"):
        report.build(parent)
    assert report.build(parent / "lr").counts["completed"] == 2  # each one on its own


def test_a_factor_of_many_values_is_not_searched_pair_by_pair_for_sign_changes(tmp_path):
    """200 widths made 8,124 lines of sign changes (quadratic in the levels); above 20 values
    the pairs of a factor are not searched, and the report says so."""
    rng = np.random.default_rng(0)
    rows = [{"run": f"r{norm}{w}{seed}", "status": "completed", "seed": seed, "norm": norm, "model.width": w,
             "final_test_acc": 0.8 + rng.normal(0, 0.02)}
            for norm in ("none", "bn_before") for w in range(30) for seed in range(2)]
    (tmp_path / "results.csv").write_text(pd.DataFrame(rows).to_csv(index=False))
    tables = report.build(tmp_path)
    assert not any(f["factor"] == "model.width" for f in tables.flips)
    assert any("model.width: more than 20 values" in n for n in tables.notes)
    assert tables.anova is not None and len(tables.anova)


@pytest.mark.parametrize("name, options", [
    ("wuhe2018_batch", dict(select="optimizer.lr", profile="trainer.batch_size", metric="final_test_acc", margin=0.5)),
    ("factorial_fashion_mnist", {}),
])
def test_report_tex_is_a_document_pdflatex_compiles_with_every_table_on_the_page(tmp_path, name, options):
    """report.tex did not compile (η not set up; "<0.001" printed as "¡0.001"), two tables ran off
    the page and only three were in it. Now: a document, every table, nothing overfull."""
    import subprocess

    tables = report.build(REFERENCE / name, report.ReportOptions(**options))
    tex = report.to_latex(tables)
    assert tex.startswith("% bnbench report") and r"\documentclass" in tex and tex.rstrip().endswith(r"\end{document}")
    expected = 1 + (tables.selection is not None) + (tables.profile is not None) + (tables.comparisons is not None) \
        + (tables.anova is not None) + (tables.effects is not None) + len(tables.interactions)
    assert tex.count(r"\begin{table}") == expected
    assert "η" not in tex and "<0" not in tex.replace("$<$", "") and "–" not in tex
    pdflatex = shutil.which("pdflatex")
    if pdflatex is None:
        pytest.skip("pdflatex is not installed (CI installs texlive-latex-base and texlive-latex-recommended)")
    (tmp_path / "report.tex").write_text(tex)
    proc = subprocess.run([pdflatex, "-interaction=nonstopmode", "-halt-on-error", "report.tex"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    log = (tmp_path / "report.log").read_text(errors="replace")
    assert proc.returncode == 0, log[-3000:]
    assert (tmp_path / "report.pdf").read_bytes()[:4] == b"%PDF"
    assert "Overfull \\hbox" not in log and "Missing character" not in log, \
        [line for line in log.splitlines() if "Overfull" in line or "Missing" in line][:5]


def test_wall_time_counts_a_stack_once_not_once_per_seed(tmp_path):
    """A stack of 3 seeds records the stack's wall time in each seed's record: 3 x 10 s read as
    30 s of work where the job took 10 s."""
    rows = [{"run": f"norm={n},seed={s}", "status": "completed", "seed": s, "norm": n, "final_test_acc": 0.9,
             "wall_s": 10.0, "stack_size": 3} for n in ("none", "bn_before") for s in range(3)]
    (tmp_path / "results.csv").write_text(pd.DataFrame(rows).to_csv(index=False))
    tables = report.build(tmp_path)
    assert tables.provenance["wall_total_s"] == pytest.approx(20.0)
    assert "wall time: 20.0 s of jobs in all (a stack's time once)" in report.to_markdown(tables)
