#!/usr/bin/env python
"""Rebuild the reports of results/reference/ from their committed run records, after a change
of the statistics or their presentation (no training: scripts/reference_presets.sh retrains).

Each report is rebuilt with the options scripts/reference_presets.sh gave it into a temporary
folder, checked against the committed one (the same cells with the same numbers: the same runs
and options), and its tables and report.md are copied over. The committed run
folders keep summary.json and metrics.csv but not diagnostics.csv (size), so the Diagnostics
section of each report.md and its diagnostics figures are kept from the committed report.

    python scripts/rereport_references.py [NAME ...]
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bnbench import report
from bnbench.report import MANIFEST

REFERENCE = Path(__file__).resolve().parent.parent / "results" / "reference"
DIAGNOSTICS = "diagnostics_summary.csv"
TABLES = {f"{name}.csv" for name in report.TABLES} | {"report.tex"}
MARGIN = ("--margin", "0.5")
# folder (relative to results/reference) -> (sweep folder it reports, report options)
REPORTS = {
    "lr_tolerance": ("lr_tolerance", ("--profile", "optimizer.lr", *MARGIN)),
    "lr_tolerance/selected": ("lr_tolerance", ("--select", "optimizer.lr", *MARGIN)),
    "tuned_placement": ("tuned_placement", ("--select", "optimizer.lr", *MARGIN)),
    "tuned_placement_confirm": ("tuned_placement_confirm", ("--select", "optimizer.lr", *MARGIN)),
    "wuhe2018_batch": ("wuhe2018_batch", ("--select", "optimizer.lr", "--profile", "trainer.batch_size", "--metric",
                                          "final_test_acc", *MARGIN)),
    "santurkar2018_noise/vs_bn": ("santurkar2018_noise", ("--baseline", "norm=bn_before")),
    "regression_mlp": ("regression_mlp", ("--margin", "0.005")),  # a loss: the margin in its own units
}
NO_MARGIN = {"santurkar2018_ics", "santurkar2018_noise", "santurkar2018_noise_long", "bn_momentum"}


def options(name: str) -> tuple[str, tuple[str, ...]]:
    if name in REPORTS:
        return REPORTS[name]
    return name, (() if name in NO_MARGIN else MARGIN)


def _section(markdown: str, title: str) -> str:
    found = re.search(rf"\n## {re.escape(title)}\n.*?(?=\n## )", markdown, flags=re.S)
    return found.group(0) if found else ""


def merge(rebuilt: str, committed: str) -> str:
    """``rebuilt`` with the committed report's Diagnostics section and diagnostics figures."""
    diagnostics = _section(committed, "Diagnostics")
    if diagnostics and "\n## Diagnostics\n" not in rebuilt:
        rebuilt = rebuilt.replace("\n## Plots\n", diagnostics + "\n## Plots\n", 1)
    figures = [line for line in committed.splitlines() if line.startswith("![diagnostics")]
    if figures and not any(line.startswith("![diagnostics") for line in rebuilt.splitlines()):
        lines = rebuilt.splitlines()
        plots = _section(rebuilt, "Plots").rstrip().splitlines()
        last = plots[-1] if plots else None
        at = lines.index(last) + 1 if last in lines else len(lines)
        rebuilt = "\n".join([*lines[:at], *figures, *lines[at:]]) + "\n"
    return rebuilt


def rereport(name: str) -> str:
    sweep, opts = options(name)
    target = REFERENCE / name
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        proc = subprocess.run([sys.executable, "-m", "bnbench.cli", "report", str(REFERENCE / sweep), *opts, "--out",
                               str(out), "--quiet"], capture_output=True, text=True)
        if proc.returncode != 0:
            return f"{name}: report failed: {proc.stderr.strip()[-300:]}"
        # the same cells, the same numbers (in any row order: older reports sorted some tables
        # alphabetically); results.csv may gain the columns of later versions
        new, old = (sorted((d / "cells.csv").read_text().splitlines()) for d in (out, target))
        if new != old:
            return f"{name}: cells.csv differs from the committed one (other runs or options): left as it was"
        for table in out.glob("*.csv"):
            shutil.copyfile(table, target / table.name)
        (target / "report.md").write_text(merge((out / "report.md").read_text(), (target / "report.md").read_text()))
        # tables an earlier report left that this one does not write go (as bnbench report does);
        # the diagnostics summary stays with the Diagnostics section it belongs to
        written = {p.name for p in out.iterdir() if p.suffix in (".csv", ".md", ".tex")}
        kept = written | ({DIAGNOSTICS} if (target / DIAGNOSTICS).is_file() else set())
        for stale in sorted(TABLES - kept):
            (target / stale).unlink(missing_ok=True)
        manifest = json.loads((out / MANIFEST).read_text())
        (target / MANIFEST).write_text(json.dumps({**manifest, "files": sorted(kept)}, indent=2) + "\n")
    return f"{name}: rebuilt"


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="reference reports (default: every one), e.g. placement "
                        "lr_tolerance/selected")
    names = parser.parse_args().names or sorted({p.parent.relative_to(REFERENCE).as_posix()
                                                 for p in REFERENCE.rglob("report.md")})
    for name in names:
        print(rereport(name), flush=True)


if __name__ == "__main__":
    main()
