"""What a report analysed (SweepTables: the runs, cells, comparisons, ANOVA, selection, profile,
warnings and provenance of one sweep) and how (ReportOptions). Built by bnbench.report.build,
read by the renderers."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from bnbench.analysis import profiles
from bnbench.analysis import selection as selection_mod


@dataclass
class ReportOptions:
    metric: str | None = None  # None: final_test_acc, or final_test_loss for regression sweeps
    baseline: dict[str, str] | None = None  # None: norm=none when norm is swept
    confidence: float = 0.95
    margin: float | None = None  # equivalence margin, in the units shown (points for accuracies)
    # seeds for 80% power against this difference (units shown); None: the margin, else 1 point
    # for accuracies, else no planning figure
    effect: float | None = None
    interval: str = "t"  # paired differences: t-interval, or "bootstrap" (BCa; sound from about 15 pairs)
    target_acc: float | None = None  # with time_unit: report the time to reach this accuracy
    time_unit: str = "epochs"
    formats: tuple[str, ...] = ("md", "csv")
    plots: bool = True
    out: Path | None = None  # where the report files go; None: the sweep folder itself
    select: str | None = None  # a swept key chosen per arm on the validation split (bnbench.analysis.selection)
    profile: str | None = None  # a numeric swept key to profile the metric over (bnbench.analysis.profiles)
    within: float = 1.0  # --profile: a stable range's distance from the best, in the units shown
    # comparisons: "all" (every pair of levels of the baseline's factor) or "baseline" (each level
    # against the baseline); None: all for the default baseline's factor with three or more
    # levels, baseline for a --baseline the user names
    pairs: str | None = None


@dataclass
class SweepTables:
    sweep_dir: Path
    runs: pd.DataFrame
    factors: list[str]
    constants: dict[str, str]
    metric: str
    cells: pd.DataFrame
    comparisons: pd.DataFrame | None = None
    effects: pd.DataFrame | None = None
    interactions: dict[tuple[str, str], pd.DataFrame] = field(default_factory=dict)
    flips: list[dict] = field(default_factory=list)  # stats.sign_flips over every pair of factors
    anova: pd.DataFrame | None = None
    anova_notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # shown at the top of the report
    provenance: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    plots: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    diagnostics: pd.DataFrame | None = None  # per cell and layer: bnbench.render.diagnostics.summarize
    selection: selection_mod.Selection | None = None  # --select: the value each arm was compared at
    all_runs: pd.DataFrame | None = None  # with --select, every run (runs holds the chosen ones)
    profile: profiles.Profile | None = None  # --profile: the metric over a numeric key, per arm

    @property
    def failed_runs(self) -> pd.DataFrame:
        return self.runs[self.runs["status"] == "failed"]


def default_metric(runs: pd.DataFrame) -> str:
    """Final test accuracy; final test loss when no run has an accuracy (regression sweeps)."""
    has_accuracy = "final_test_acc" in runs and runs["final_test_acc"].notna().any()
    has_loss = "final_test_loss" in runs and runs["final_test_loss"].notna().any()
    return "final_test_loss" if has_loss and not has_accuracy else "final_test_acc"
