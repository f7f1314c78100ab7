"""bnbench report: build a sweep's analysis from its records (the runs table, bnbench.analysis)
and write it (bnbench.render: Markdown, CSV, LaTeX, plots).

``results.csv`` has one row per run folder (finished or not). ``report.md`` has, per cell (a
config without its seed), the seeds' mean, std, confidence interval, divergence rate and status
counts; paired comparisons with a baseline cell (paired t-interval, t-test, Wilcoxon, Holm,
effect size, equivalence test, a verdict and the seeds a clear answer would need); with two or
more factors, a type-II ANOVA, main effects and every two-way interaction; plots; and the
provenance of the runs. Diverged runs are scored under one policy (bnbench.analysis.stats), never
dropped; failed and unfinished runs are counted and their cells marked wherever they are ranked.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from bnbench import records
from bnbench.analysis import profiles
from bnbench.analysis import selection as selection_mod
from bnbench.analysis import stats
from bnbench.analysis.tables import ReportOptions, SweepTables, default_metric
from bnbench.records import RUN_METRICS as METRICS
from bnbench.records import is_fraction
from bnbench.records.runs import ReportError, all_numbers, collect_runs, confirmed_sweep
from bnbench.render import diagnostics as diagnostics_report
from bnbench.render.console import print_tables
from bnbench.render.latex import to_latex
from bnbench.render.markdown import to_markdown

__all__ = ["METRICS", "FORMATS", "ReportError", "ReportOptions", "SweepTables", "build", "collect_runs", "default_metric",
           "output_dir", "print_tables", "to_latex", "to_markdown", "write"]


STATUSES = records.STATUSES


FORMATS = ("md", "csv", "latex")


def _expected_cells(sweep_dir: Path, runs: pd.DataFrame, factors: list[str]) -> list[dict[str, str]]:
    """Cells of the grid the last sweep command asked for, so a cell with no run at all shows
    as missing. Only for grids that list every factor (a Cartesian product)."""
    order = records.value_order(sweep_dir)
    if not factors or not all(f in order for f in factors):
        return []
    levels = [order[f] for f in factors]
    return [dict(zip(factors, combo)) for combo in itertools.product(*levels)]


def _provenance(sweep_dir: Path, runs: pd.DataFrame) -> dict[str, Any]:
    info: dict[str, Any] = {}
    path = sweep_dir / records.SWEEP_INFO
    if path.is_file():
        try:
            info = json.loads(path.read_text())
        except json.JSONDecodeError:
            info = {}
    versions = [v for v in runs.get("_versions", pd.Series(dtype=object)) if isinstance(v, dict)]
    lib = {}
    for name in ("bnbench", "torch", "torchvision", "cuda", "hydra", "python"):
        values = sorted({str(v.get(name)) for v in versions if v.get(name) is not None})
        if values:
            lib[name] = ", ".join(values)
    wall = pd.to_numeric(runs["wall_s"], errors="coerce").dropna()
    started = [s for s in runs.get("_started", []) if isinstance(s, str)]
    finished = [s for s in runs.get("_finished", []) if isinstance(s, str)]
    done = runs[runs["status"].isin(stats.RESULTS)]
    sizes = pd.to_numeric(done["stack_size"], errors="coerce").fillna(1).astype(int)
    return {
        "source": runs.attrs.get("source", "run records"),
        "stacking": {"stacked": int((sizes > 1).sum()), "unstacked": int((sizes <= 1).sum()),
                     "sizes": sorted({int(v) for v in sizes if v > 1})},
        "command": info.get("command"),
        "git": info.get("git") or records.git_state(Path(__file__).resolve().parent),
        "host": info.get("host"),
        "versions": lib,
        "devices": sorted({str(d) for d in runs["device"].dropna()}),
        "first_run_started": min(started) if started else None,
        "last_run_finished": max(finished) if finished else None,
        "report_built": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        # a stack's seeds each record the stack's wall time: counted once per stack, not once per seed
        "wall_total_s": float((wall / pd.to_numeric(runs.loc[wall.index, "stack_size"], errors="coerce")
                               .fillna(1).clip(lower=1)).sum()) if len(wall) else None,
        "wall_per_run_s": (float(wall.mean()), float(wall.min()), float(wall.max())) if len(wall) else None,
    }


def _default_baseline(runs: pd.DataFrame, factors: list[str]) -> dict[str, str] | None:
    if "norm" in factors and "none" in set(runs["norm"].astype(str)):
        return {"norm": "none"}
    return None


def _units(value: float | None, metric: str) -> float | None:
    """A value given in the units the report shows (points for accuracies) in metric units."""
    return None if value is None else (value / 100 if is_fraction(metric) else value)


def _stacking_warnings(runs: pd.DataFrame, factors: list[str]) -> list[str]:
    """Cells whose results mix stacked and unstacked training, or devices (CPU and GPU, or GPU
    models): float32 rounding differs."""
    done = runs[runs["status"].isin(stats.RESULTS)].copy()
    done["_stacked"] = pd.to_numeric(done["stack_size"], errors="coerce").fillna(1) > 1
    # the kind of device, not its index: "cpu", or the GPU's model ("cuda:1 (NVIDIA H100)" -> "NVIDIA H100")
    done["_device"] = done["device"].astype(str).str.replace(r"^cuda:\d+ \((.*)\)$", r"\1", regex=True) \
        if "device" in done else "cpu"
    cells = stats.split_cells(done, factors)
    warnings = []
    for column, what, advice in (
            ("_stacked", "stacked and unstacked runs", "rerun the cell one way (trainer.stack_seeds)"),
            ("_device", "devices", "a run's identity leaves its device out (docs/gpu.md): rerun the cell on one")):
        mixed = [key for key, g in cells.items() if g[column].nunique() > 1]
        if not mixed:
            continue
        names = "; ".join(", ".join(f"{f}={v}" for f, v in zip(factors, key)) or "the only cell" for key in mixed[:5])
        more = f" and {len(mixed) - 5} more" if len(mixed) > 5 else ""
        warnings.append(f"{len(mixed)} cell(s) mix {what} ({names}{more}); in float32 they differ by rounding, "
                        f"which can reach seed-noise size: {advice}")
    return warnings


def build(sweep_dir: Path, options: ReportOptions | None = None) -> SweepTables:
    """The analysis of the sweep in ``sweep_dir``: its runs table, the metric, the per-arm
    selection and profile when asked, the warnings a reader needs first, the cells, the
    comparisons, the ANOVA and interactions, and the provenance. ReportError when it cannot."""
    options = options or ReportOptions()
    runs, factors, constants = collect_runs(sweep_dir)
    sampler = records.grid_sweeper(sweep_dir)
    if sampler and options.profile is None and options.select is None:
        # samples of a search space, not a grid: the metric over a sampled number is a profile
        numeric = [f for f in factors if all_numbers(runs[f].astype(str))]
        if numeric:
            options = dataclasses.replace(options, profile=numeric[0])
    runs, metric = _checked_metric(sweep_dir, runs, options)
    all_runs = runs
    runs, factors, chosen, prof = _select_and_profile(runs, factors, metric, options)
    tables = SweepTables(sweep_dir, runs, factors, constants, metric, cells=pd.DataFrame(), selection=chosen,
                         all_runs=all_runs, profile=prof)
    _caveats(tables)
    if sampler:
        tables.notes.append(
            f"{len(runs)} runs sampled by {sampler.rsplit('.', 1)[-1]} (hydra.sweeper), not a grid: a combination it "
            "did not sample is not missing, and cells of sampled values have one run each, so no comparison or "
            "ANOVA is made by default (--baseline asks for one)"
            + (f"; the metric over the sampled {options.profile} is the profile below" if options.profile else ""))
    _analyse(tables, options, grid=sampler is None)
    tables.counts = {status: int((runs["status"] == status).sum()) for status in STATUSES}
    tables.counts["missing cells"] = int((tables.cells["status"] == "missing").sum())
    tables.diagnostics = diagnostics_report.summarize(sweep_dir, runs, factors)
    tables.provenance = _provenance(sweep_dir, runs)
    return tables


def _checked_metric(sweep_dir: Path, runs: pd.DataFrame, options: ReportOptions) -> tuple[pd.DataFrame, str]:
    """The metric the report compares (the runs gain a time-to-accuracy column with
    --target-acc), after every check of the options against these runs."""
    metric = options.metric or default_metric(runs)
    if options.profile and options.metric is None:
        # the stable range picks values: on the validation split by default, never silently on the test set
        metric = selection_mod.criterion_for(metric, runs)
        if not runs.loc[runs["status"].isin(stats.RESULTS), metric].notna().any():
            raise ReportError(f"--profile {options.profile}: these runs have no validation metric ({metric}); they "
                              "were recorded before bnbench 0.5 or with dataset.val_size=0. Rerun with a validation "
                              "split, or give --metric final_test_acc to profile the test metric itself")
    if options.target_acc is not None:
        if default_metric(runs) != "final_test_acc":
            raise ReportError("--target-acc needs test accuracies, and this sweep's runs have none (a regression "
                              "task); report a loss with --metric instead")
        runs = stats.add_time_to_accuracy(runs, sweep_dir, options.target_acc, options.time_unit)
        metric = stats.time_to_acc_column(options.target_acc, options.time_unit)
    elif metric not in METRICS:
        raise ReportError(f"unknown metric {metric!r}; choose one of: {', '.join(METRICS)} (or --target-acc)")
    for name, value in (("--margin", options.margin), ("--effect", options.effect)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ReportError(f"{name} {value}: give a positive difference in the units of the report "
                              f"(points for accuracies), e.g. {name} 0.5")
    if options.interval not in stats.INTERVALS:
        raise ReportError(f"--interval {options.interval!r}: choose {' or '.join(stats.INTERVALS)}")
    if metric in ("final_train_loss", "final_train_acc") and runs[metric].isna().all() \
            and runs["status"].isin(stats.RESULTS).any():
        raise ReportError(f"these runs were recorded before bnbench 0.2 and have no {metric} of the final model; "
                          f"use --metric {metric}_running (the running average over the last evaluation interval)")
    return runs, metric


def _select_and_profile(runs: pd.DataFrame, factors: list[str], metric: str, options: ReportOptions):
    """--select (each arm at its own value, chosen on the validation split) and --profile (the
    metric over a numeric key): (runs, factors, selection or None, profile or None)."""
    chosen, prof = None, None
    if options.select:
        if options.profile == options.select:
            raise ReportError(f"--profile and --select both name {options.select}: --profile shows every value of a "
                              "key, --select keeps one per arm; profile another key over the selected runs (e.g. "
                              "--select optimizer.lr --profile trainer.batch_size)")
        try:
            runs, factors, chosen = selection_mod.select_per_arm(runs, factors, options.select, metric)
        except selection_mod.SelectionError as err:
            raise ReportError(str(err)) from err
    if options.profile:  # with --select: over the runs each arm chose (every point at its own selected value)
        baseline = options.baseline if options.baseline is not None else _default_baseline(runs, factors)
        try:
            prof = profiles.profile(runs, factors, options.profile, metric, _units(options.within, metric) or 0.0,
                                    options.confidence, baseline)
        except profiles.ProfileError as err:
            raise ReportError(str(err)) from err
        if chosen is not None:
            prof.notes.append(f"each point of the {options.profile} profile is at its own {options.select}, chosen "
                              "on the validation split (see the selection table)")
    return runs, factors, chosen, prof


def _caveats(tables: SweepTables) -> None:
    """The notes and warnings a reader needs before the numbers: how values were selected, a
    metric selected on the test set or averaged in train mode, mixed cells, damaged records."""
    sweep_dir, runs, factors, metric = tables.sweep_dir, tables.runs, tables.factors, tables.metric
    chosen, prof = tables.selection, tables.profile
    if prof is not None:
        tables.notes += prof.notes
    confirms = confirmed_sweep(sweep_dir)
    if chosen is not None and confirms:
        tables.notes.append(f"{chosen.key} per arm as chosen on the validation split of {confirms}; these seeds "
                            "took no part in the choice (bnbench confirm)")
    elif chosen is not None:
        tables.warnings.append(
            f"{chosen.key} was chosen per arm on the validation split ({chosen.criterion}), on the same seeds that "
            "are reported here: the chosen values are flattered a little (a winner's curse); rerun them on fresh "
            "seeds for the comparison to publish")
    if metric.startswith("best_test"):
        tables.warnings.append(f"{metric} is selected on the test set (the best of all evaluations, by the data it "
                               "reports): it overstates what a run would score on new data; publish final_test_* "
                               f"or {metric.replace('best_test', 'test')}_at_best_val (selected on the validation split)")
    if (metric.endswith("_at_best_val") or metric.startswith("final_val")) and runs[metric].isna().all() \
            and runs["status"].isin(stats.RESULTS).any():
        raise ReportError(f"these runs have no validation metrics (recorded before bnbench 0.5, or with "
                          f"dataset.val_size=0); use --metric final_test_{'acc' if 'acc' in metric else 'loss'}")
    if metric.endswith("_running"):
        tables.warnings.append(f"{metric} is a running average over the last evaluation interval, in train mode, "
                               "not a metric of the final model")
    tables.warnings += _stacking_warnings(runs, factors)
    unplaced = runs.attrs.get("unplaced") or []
    if unplaced:
        tables.warnings.append(f"{len(unplaced)} folder(s) hold a summary.json that is not a bnbench run record and no "
                               f"overrides to place it in a cell ({'; '.join(unplaced[:3])}); left out of every table")
    if "_record_problem" in runs:
        broken = runs[runs["_record_problem"].notna()]
        if len(broken):
            listed = "; ".join(f"{run}: {why}" for run, why in zip(broken["run"][:5], broken["_record_problem"][:5]))
            more = f" and {len(broken) - 5} more" if len(broken) > 5 else ""
            tables.warnings.append(f"{len(broken)} run record(s) are damaged ({listed}{more}); the tables use what "
                                   "is readable, and a run without a usable summary.json is retrained by the next sweep")


def _analyse(tables: SweepTables, options: ReportOptions, grid: bool = True) -> None:
    """Cells (ranked), comparisons with the baseline, and with several factors the ANOVA, main
    effects, every two-way interaction and its sign flips. A sweep that sampled its runs (not a
    grid) gets its cells, and comparisons only when asked for."""
    sweep_dir, runs, factors, metric = tables.sweep_dir, tables.runs, tables.factors, tables.metric
    expected = _expected_cells(sweep_dir, runs, factors) if grid else []
    cells = stats.rank_cells(runs, factors, metric, confidence=options.confidence, expected_cells=expected)
    # Tables read best in the sweep's own order (none, bn_before, bn_after); rank says the rest.
    tables.cells = cells.sort_values(factors, kind="stable").reset_index(drop=True) if factors else cells
    tables.cells.attrs.update(cells.attrs)
    baseline = options.baseline if options.baseline is not None else \
        (_default_baseline(runs, factors) if grid else None)
    if options.pairs not in (None, "all", "baseline"):
        raise ReportError(f"--pairs {options.pairs!r}: choose all (every pair of levels) or baseline")
    if baseline:
        try:
            stats.check_baseline(runs, factors, baseline)
        except ValueError as err:
            raise ReportError(f"--baseline: {err}") from err
        factor = next(iter(baseline)) if len(baseline) == 1 else None
        # every pair by default for the default baseline's factor with 3+ levels; a baseline the
        # user names is what the comparisons are against, unless --pairs all
        default_all = options.baseline is None and factor is not None and runs[factor].nunique() >= 3
        pairs = options.pairs or ("all" if default_all else "baseline")
        if pairs == "all" and factor is None:
            raise ReportError(f"--pairs all compares every pair of levels of one factor; --baseline names "
                              f"{len(baseline)} ({', '.join(baseline)}): give one, or --pairs baseline")
        common = dict(confidence=options.confidence, margin=_units(options.margin, metric),
                      effect=_planning_effect(options, metric), interval=options.interval,
                      chance=_chance(runs, metric))
        try:
            tables.comparisons = stats.compare_pairs(runs, factors, metric, factor, **common) if pairs == "all" \
                else stats.compare_to_baseline(runs, factors, metric, baseline, **common)
        except ValueError as err:
            raise ReportError(f"--baseline: {err}") from err
        if len(tables.comparisons) and tables.comparisons["n_pairs"].max() <= 5:
            tables.notes.append("With 5 or fewer seed pairs the Wilcoxon signed-rank test cannot reach p < 0.05 "
                                "(exact minimum p = 1/2^(n-1)); use 6 or more seeds for it to be informative.")
    if len(factors) > 1 and grid:
        tables.anova, tables.anova_notes = stats.anova(runs, factors, metric)
        # one cell table (grid cells with no run included, so they mark their marginals) for all of them
        tables.effects = stats.main_effects(runs, factors, metric, cells=tables.cells)
        many = [f for f in factors if runs[f].nunique() > MAX_FLIP_LEVELS]
        for a, b in itertools.combinations(factors, 2):
            tables.interactions[(a, b)] = stats.interaction_table(runs, a, b, metric, factors, cells=tables.cells)
            # every pair of a factor's levels: quadratic, so not for a factor of hundreds of values
            if a not in many:
                tables.flips += stats.sign_flips(tables.interactions[(a, b)], a, b)
            if b not in many:
                tables.flips += stats.sign_flips(tables.interactions[(a, b)], b, a)
        if many:
            tables.notes.append(f"{', '.join(many)}: more than {MAX_FLIP_LEVELS} values, so the changes of sign of "
                                "the effect between each pair of them are not searched (profile it with --profile)")
        # a change of sign among means is named only where its own contrast test supports it
        tables.flips = stats.test_flips(runs, factors, tables.flips, metric, options.confidence)


def _planning_effect(options: ReportOptions, metric: str) -> float | None:
    """The difference the seeds-for-power column plans for, in metric units: --effect, else the
    equivalence margin, else 1 point for an accuracy; None for other metrics without either."""
    effect = options.effect if options.effect is not None else options.margin
    if effect is None and is_fraction(metric):
        effect = 1.0
    return _units(effect, metric)


MAX_FLIP_LEVELS = 20  # above this many values a factor's pairs of levels are not searched for sign changes


def _chance(runs: pd.DataFrame, metric: str) -> float | None:
    """Chance accuracy (1 / classes) when the metric is an accuracy and every run has the same
    number of classes; None otherwise (only arms whose every seed diverged then count as having
    learned nothing)."""
    if not is_fraction(metric) or "_classes" not in runs:
        return None
    classes = pd.to_numeric(runs["_classes"], errors="coerce").dropna().unique()
    return 1.0 / float(classes[0]) if len(classes) == 1 and classes[0] > 0 else None


def _render_plots(tables: SweepTables, confidence: float, out_dir: Path) -> None:
    from bnbench.render import plots

    out = {}
    # a sweep rebuilt from results.csv alone has no metrics.csv to draw curves from
    has_history = tables.runs["status"].isin(stats.RESULTS).any() and tables.runs.attrs.get("source") != "results.csv"
    if has_history:
        curve = "test_acc" if "acc" in tables.metric else "test_loss"
        out["learning curves"] = plots.learning_curves(tables.sweep_dir, tables.runs, tables.factors,
                                                       out_dir / "learning_curves.png", metric=curve,
                                                       confidence=confidence)
    if (tables.cells["n"] > 0).any():
        out["final metric per cell"] = plots.cell_intervals(tables.cells, tables.factors,
                                                            out_dir / "cells.png", metric=tables.metric)
    if tables.profile is not None:
        out["profile"] = plots.profile(tables.profile, out_dir / "profile.png", confidence)
    out.update(diagnostics_report.plot_diagnostics(tables.sweep_dir, tables.runs, tables.factors, out_dir))
    tables.plots = out


def output_dir(sweep_dir: Path, out: Path | None) -> Path:
    """Where the report of ``sweep_dir`` goes: ``out`` when given; else the sweep folder, but
    never a single run's folder or the folder of single runs (results/runs) unasked."""
    if out is not None:
        return out
    if (sweep_dir / records.SUMMARY).is_file():
        raise ReportError(f"{sweep_dir} is a single run's folder; a report of it goes elsewhere: add --out FOLDER")
    if sweep_dir.name == "runs" and not (sweep_dir / "multirun.yaml").is_file():
        raise ReportError(f"{sweep_dir} holds single runs, not a sweep; to tabulate them together add --out FOLDER")
    return sweep_dir


def write(tables: SweepTables, options: ReportOptions | None = None) -> list[Path]:
    """Write results.csv and the report in the requested formats; return the paths."""
    options = options or ReportOptions()
    unknown = set(options.formats) - set(FORMATS)
    if unknown:
        raise ReportError(f"unknown format(s) {sorted(unknown)}; choose from {', '.join(FORMATS)}")
    d = output_dir(tables.sweep_dir, options.out)
    d.mkdir(parents=True, exist_ok=True)
    kinds = {f"{name}.csv" for name in TABLES} | {"report.tex"}
    previous = _previous_tables(d, kinds)  # read before this report writes over report.md
    if options.plots:
        _render_plots(tables, options.confidence, d)
    every_run = tables.all_runs if tables.all_runs is not None else tables.runs  # one row per run, always
    public_runs = every_run[[c for c in every_run.columns if not c.startswith("_")]]
    written = [d / "results.csv"]
    records.write_text(written[0], public_runs.to_csv(index=False))
    interactions = None
    if tables.interactions:  # one long table: the two factors of each pair and their levels
        interactions = pd.concat(
            [t.rename(columns={a: "level_a", b: "level_b"}).assign(factor_a=a, factor_b=b)
             for (a, b), t in tables.interactions.items()], ignore_index=True)
        interactions = interactions[["factor_a", "level_a", "factor_b", "level_b",
                                     *[c for c in interactions.columns if c not in
                                       ("factor_a", "level_a", "factor_b", "level_b")]]]
    frames = {"cells": tables.cells, "comparisons": tables.comparisons, "main_effects": tables.effects,
              "anova": tables.anova, "interactions": interactions, "diagnostics_summary": tables.diagnostics,
              "profile": None if tables.profile is None else tables.profile.cells,
              "stable_ranges": None if tables.profile is None else tables.profile.ranges,
              "selection": None if tables.selection is None else tables.selection.table.assign(key=tables.selection.key,
                                                                                             criterion=tables.selection.criterion)}
    if "md" in options.formats:
        written.append(d / "report.md")
        records.write_text(written[-1], to_markdown(tables))
    if "csv" in options.formats:
        for name, frame in frames.items():
            if frame is not None:
                written.append(d / f"{name}.csv")
                records.write_text(written[-1], frame.to_csv(index=False))
    if "latex" in options.formats:
        written.append(d / "report.tex")
        records.write_text(written[-1], to_latex(tables))
    names = {p.name for p in written}
    for name in sorted((previous & kinds) - names):  # an earlier report's table this one did not write
        (d / name).unlink(missing_ok=True)
    records.write_json(d / MANIFEST, {"files": sorted(names),
                                      "report_built": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    return written


MANIFEST = "report_manifest.json"  # the tables the last report wrote into its folder
# the tables a report may write (TABLE.csv): a later report removes those it no longer writes
TABLES = ("cells", "comparisons", "main_effects", "anova", "interactions", "diagnostics_summary", "profile",
          "stable_ranges", "selection")


def _previous_tables(folder: Path, kinds: set[str]) -> set[str]:
    """The tables the last report in ``folder`` wrote: its manifest's list; in a folder that a
    bnbench report wrote before manifests existed (its report.md says so), every table name it
    may have written; else nothing (the folder's files are not bnbench's to remove, e.g. an
    --out folder of the user's own). An anova.csv left by a report with more factors would
    otherwise sit beside a report.md that has none. Plots are never removed."""
    try:
        return set(json.loads((folder / MANIFEST).read_text())["files"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        with open(folder / "report.md") as handle:
            ours = handle.readline().startswith("# bnbench report")
    except (OSError, UnicodeDecodeError):
        ours = False
    return kinds if ours else set()
