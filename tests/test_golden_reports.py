"""Golden reports: three committed references (bnbench 0.6), rebuilt from their records by today's code, give
the same tables byte for byte (every CSV, and report.md but for the build time). The pin for
moving report code: a change of a number, a rounding or a line of text shows here.

The run folders keep summary.json and metrics.csv, not diagnostics.csv (size), so a rebuilt
report has no Diagnostics section and no diagnostics plots: those are left out of the check.
Regenerate only with an intended change of the reports (scripts/reference_presets.sh)."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from conftest import run_cli

REFERENCE = Path(__file__).resolve().parent.parent / "results" / "reference"
CASES = {  # the options scripts/reference_presets.sh built each one with
    "santurkar2018_noise": (),
    "lr_tolerance": ("--profile", "optimizer.lr", "--margin", "0.5"),
    "wuhe2018_batch": ("--select", "optimizer.lr", "--profile", "trainer.batch_size", "--metric", "final_test_acc",
                       "--margin", "0.5"),
}


def _comparable(markdown: str) -> str:
    markdown = re.sub(r"report built \S+", "report built (time)", markdown)
    markdown = re.sub(r"\n## Diagnostics\n.*?(?=\n## )", "\n", markdown, flags=re.S)
    lines = [line for line in markdown.splitlines() if not line.startswith("![diagnostics")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines))


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_reference_report_rebuilds_identically(name, tmp_path):
    out = tmp_path / name
    proc = run_cli("report", str(REFERENCE / name), *CASES[name], "--out", str(out), "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    written = sorted(p.name for p in out.glob("*.csv"))
    # (a reference folder may hold older CSVs its last report no longer wrote: issue #23)
    assert len(written) >= 3 and set(written) <= {p.name for p in (REFERENCE / name).glob("*.csv")}
    for csv_name in written:
        assert (out / csv_name).read_bytes() == (REFERENCE / name / csv_name).read_bytes(), csv_name
    assert _comparable((out / "report.md").read_text()) == _comparable((REFERENCE / name / "report.md").read_text())


DONE_WHEN = {  # issue #23: the four reports a reviewer reads first, with the options they were built with
    "lr_tolerance": dict(profile="optimizer.lr", margin=0.5),
    "placement": dict(margin=0.5),
    "tuned_placement": dict(select="optimizer.lr", margin=0.5),
    "wuhe2018_batch": dict(select="optimizer.lr", profile="trainer.batch_size", metric="final_test_acc", margin=0.5),
}


@pytest.mark.parametrize("name", sorted(DONE_WHEN))
def test_a_reference_compares_every_pair_names_arms_that_learned_nothing_and_fits_the_anova_statsmodels_would(name):
    import numpy as np
    import statsmodels.formula.api as smf
    from statsmodels.stats.anova import anova_lm

    from bnbench import report

    tables = report.build(REFERENCE / name, report.ReportOptions(**DONE_WHEN[name]))
    comp = tables.comparisons
    if name != "lr_tolerance":  # three or more norm levels: every pair, before vs after among them
        assert comp.attrs["pairs"] == "all"
        assert "norm=bn_before" in set(comp["baseline"])  # bn_after (or gn, ln) against bn_before, directly
    both_failed = comp[~comp["learned"] & ~comp["baseline_learned"]]
    assert (both_failed["verdict"] == "neither learned").all()
    assert not comp[~comp["learned"] | ~comp["baseline_learned"]]["verdict"].isin(["better", "worse"]).any()
    # the ANOVA: statsmodels on the finite, non-diverged results of the levels the report kept
    anova = tables.anova
    if len(tables.factors) < 2:  # tuned_placement with --select: norm alone, no ANOVA
        assert anova is None
        return
    levels = anova.attrs["levels"]
    runs = tables.runs[tables.runs["status"] == "completed"].copy()
    swept = [f for f in tables.factors if len(levels[f]) > 1]
    for f in tables.factors:
        runs = runs[runs[f].astype(str).isin(levels[f])]
    data = pd.DataFrame({f"f{i}": runs[f].astype(str).to_numpy() for i, f in enumerate(swept)})
    data["y"], data["seed"] = runs[tables.metric].to_numpy(float), runs["seed"].astype(str).to_numpy()
    data = data[np.isfinite(data["y"])]
    terms = " * ".join(f"C(f{i})" for i in range(len(swept)))
    expected = anova_lm(smf.ols(f"y ~ {terms} + C(seed)", data=data).fit(), typ=2)
    names = {f"C(f{i})": f for i, f in enumerate(swept)}
    fixed = {"C(seed)": "seed (block)", "Residual": "Residual"}
    label = lambda t: fixed[t] if t in fixed else " × ".join(names[p] for p in t.split(":"))  # noqa: E731
    got = anova.set_index("term")
    assert len(data) == anova.attrs["n"] and len(got) == len(expected)
    for term, row in expected.iterrows():
        assert got.loc[label(term), "df"] == row["df"], term  # every df estimable on the complete grid
        assert got.loc[label(term), "sum_sq"] == pytest.approx(row["sum_sq"]), term
