"""Golden reports: three committed references (bnbench 0.6), rebuilt from their records by today's code, give
the same tables byte for byte (every CSV, and report.md but for the build time). The pin for
moving report code: a change of a number, a rounding or a line of text shows here.

The run folders keep summary.json and metrics.csv, not diagnostics.csv (size), so a rebuilt
report has no Diagnostics section and no diagnostics plots: those are left out of the check.
Regenerate only with an intended change of the reports (scripts/reference_presets.sh)."""

from __future__ import annotations

import re
from pathlib import Path

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
