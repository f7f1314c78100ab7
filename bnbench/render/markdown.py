"""report.md: every table of a sweep's report, its methods in words, and its provenance."""

from __future__ import annotations

from typing import Any, Mapping

from bnbench.analysis.tables import SweepTables
from bnbench.records import is_fraction
from bnbench.render import diagnostics as diagnostics_report
from bnbench.render.text import (INCOMPLETE_MARK, POLICY, anova_rows, cell_rows, comparison_rows, confidence_pct,
                                 effect_rows, flip_lines, fmt, interaction_rows, learned_nothing, md_table, metric_title, profile_lines,
                                 selection_rows, summary_line)


def _power_text(comp, metric: str, unit: str) -> str:
    """What the seeds-for-power column plans for: an effect named in advance, at the Holm level."""
    effect, level, family = comp.attrs.get("effect"), comp.attrs.get("power_level"), comp.attrs.get("family", 1)
    if effect is None:
        return ("Seeds for 80% power are not planned: give the difference that matters with `--effect` (or "
                "`--margin`).")
    return (f"Seeds for 80% power (a plan for the next run, not evidence about this one): the pairs a paired t-test "
            f"needs to detect a difference of {fmt(effect, metric)}{unit} (`--effect`; default: `--margin`, else 1 "
            f"point) at α / {family} = {level:.2g}, Holm's first step over this table's {family} test(s), with the SD "
            "of each row's differences; in brackets, the same at the ends of that SD's "
            f"{100 * comp.attrs.get('confidence', 0.95):g}% interval (chi-square, n − 1 df: wide with few seeds; with 3, "
            "the 95% interval spans ×0.52 to ×6.3 of the SD).")


def to_markdown(tables: SweepTables) -> str:
    m = tables.metric
    pct = confidence_pct(tables)
    lines = [f"# bnbench report: {tables.sweep_dir.name}", "", summary_line(tables) + ".", ""]
    lines += [f"> **Warning:** {w}" for w in tables.warnings] + ([""] if tables.warnings else [])
    if tables.constants:
        lines += ["Fixed: " + ", ".join(f"`{k}={v}`" for k, v in tables.constants.items()), ""]
    lines += [f"Metric: **{metric_title(m)}**; mean ± std (n−1) over the results (completed and diverged seeds) "
              f"of each cell, {pct} t-interval of the mean; rank 1 is best. {POLICY}", ""]
    if tables.selection is not None:
        sel = tables.selection
        lines += [f"## `{sel.key}` chosen per arm", "",
                  f"Each arm's value of `{sel.key}` is the one with the best mean {metric_title(sel.criterion)} over "
                  "its seeds (the validation split; the test set plays no part). A value under which a seed diverged "
                  "is chosen only when every value had one, and then the best of those with the fewest. Every "
                  f"table below compares the arms at their own chosen values. Each value: mean {metric_title(sel.criterion)} "
                  "(results, diverged).", "", *md_table(*selection_rows(tables)), ""]
    if tables.profile is not None:
        lines += profile_lines(tables)
    lines += ["## Cells", "", *md_table(*cell_rows(tables)), ""]
    if (~tables.cells["complete"] & tables.cells["rank"].notna()).any():
        lines += [f"{INCOMPLETE_MARK} the cell has failed, unfinished or missing runs: its statistics cover only "
                  "the results it has.", ""]
    if tables.comparisons is not None and len(tables.comparisons):
        comp = tables.comparisons
        every_pair = comp.attrs.get("pairs") == "all"
        margin = comp.attrs.get("margin")
        unit = " points" if is_fraction(m) else ""
        alpha = 1 - tables.cells.attrs.get("confidence", 0.95)
        equivalence = (f"equivalent when the Holm-adjusted paired TOST puts the difference within ±{fmt(margin, m)}{unit} "
                       "(`--margin`)" if margin is not None else "equivalence is not tested (`--margin` sets a margin)")
        chance = comp.attrs.get("chance")
        nothing = (f"an arm learned nothing when every seed diverged or its mean accuracy is within "
                   f"{fmt(comp.attrs['chance_margin'], m)} points of chance ({fmt(chance, m)}%)" if chance is not None
                   else "an arm learned nothing when every seed diverged")
        if every_pair:
            lines += [f"## Every pair of `{comp.attrs['factor']}` levels", "",
                      f"Each level of `{comp.attrs['factor']}` minus each earlier one (column \"against\"), within "
                      "cells that match on every other factor, paired by seed"]
        else:
            lines += [f"## Against the baseline `{comp['baseline'].iloc[0]}`", "",
                      "Each cell minus the baseline cell that matches it on every other factor, paired by seed"]
        lines[-1] += (" (runs of one seed share the data order and the initial weights of every layer they have in "
                      f"common), over the seeds with a result in both. The interval is the paired {pct} "
                      + ("BCa bootstrap interval (it covers less than its level below about 15 pairs)"
                         if comp.attrs.get("interval") == "bootstrap" else "t-interval of the mean difference")
                      + ", not adjusted for the rows. One test per row decides: the paired t-test, or the Wilcoxon "
                      "signed-rank test where a diverged run has no finite value (column \"test\"); their p-values are "
                      "Holm-adjusted together, over every row of this table (one family). A t row's Wilcoxon "
                      "p is shown as a check, unadjusted. g_z = mean difference / std of the differences, with Hedges' "
                      f"small-sample correction. Verdict at α = {alpha:.2g}: {nothing}, and such a row says so "
                      "(\"did not learn\", \"baseline did not learn\", \"neither learned\") instead of a winner; "
                      "otherwise better or worse when the Holm-adjusted test rejects no difference; "
                      f"{equivalence}; otherwise inconclusive. " + _power_text(comp, m, unit))
        lines += [""]
        failed = learned_nothing(tables)
        if failed:
            lines += [f"Learned nothing: {'; '.join(failed)}.", ""]
        lines += [
                  *md_table(*comparison_rows(tables)), ""]
    lines += [f"> {note}" for note in tables.notes] + ([""] if tables.notes else [])  # with or without comparisons
    if tables.anova is not None and len(tables.factors) > 1:
        lines += ["## Factorial ANOVA", "",
                  f"Type-II ANOVA (statsmodels) of the {metric_title(m)} on every swept factor and their "
                  "interactions, seed as a block, over the finite results of runs that did not diverge, on the "
                  "largest grid whose every cell keeps two or more of them (so every degree of freedom shown is "
                  "estimable; the notes say what was left out); sums of squares in the metric's own units "
                  "(accuracy as a fraction); partial η² = SS / (SS + SS residual). "
                  "Where an interaction is significant, the main effects and marginal means below average over "
                  "effects that differ between levels: read the interaction tables first.", ""]
        lines += [f"> {note}" for note in tables.anova_notes] + ([""] if tables.anova_notes else [])
        if len(tables.anova):
            lines += [*md_table(*anova_rows(tables)), ""]
    if tables.effects is not None and len(tables.factors) > 1:
        lines += ["## Main effects", "",
                  "Marginal mean of each level: the unweighted mean of its cells' means (each cell counts once, "
                  "however many of its seeds finished); the divergence rate over all its results.", "",
                  *md_table(*effect_rows(tables)), ""]
    if tables.interactions:
        lines += ["## Interactions", ""]
        lines += (["Where a factor's effect changes sign across the levels of another (means of cell means), "
                   "named only where the two simple effects differ by their own test: the interaction contrast "
                   "(the effect at a level where it is positive minus the effect at one where it is negative), per "
                   "seed over the cells of the other factors, paired t-test; one Holm family over every contrast "
                   "tested. That says the effects differ; whether each is non-zero on its own is the comparisons' "
                   "question.", "", *flip_lines(tables), ""]
                  if tables.flips else ["No factor's effect changes sign across the levels of another.", ""])
    for (a, b), table in tables.interactions.items():
        lines += [f"### {a} × {b}", "", f"Mean {metric_title(m)} per {a} (rows) and {b} (columns): the "
                  "unweighted mean of the matching cells' means, with the divergence rate where runs diverged.", ""]
        lines += [*md_table(*interaction_rows(tables, a, b, table)), ""]
    lines += diagnostics_report.markdown_lines(tables.diagnostics, tables.factors)
    if tables.plots:
        lines += ["## Plots", ""]
        lines += [f"![{name}]({path.name})" for name, path in tables.plots.items()] + [""]
    unfinished = tables.runs[tables.runs["status"].isin(["failed", "incomplete"])]
    if len(unfinished):
        lines += ["## Runs without a result", ""]
        for _, run in unfinished.iterrows():
            reason = run["error"] if isinstance(run["error"], str) else "no summary.json (killed or still running)"
            lines.append(f"- `{run['run']}`: {run['status']}: {reason}")
        lines.append("")
    lines += ["## Provenance", "", *_provenance_lines(tables.provenance)]
    return "\n".join(lines) + "\n"


def _provenance_lines(p: Mapping[str, Any]) -> list[str]:
    git = p.get("git") or {}
    commit = git.get("commit")
    code = f"{commit[:12]}{' (uncommitted changes)' if git.get('dirty') else ''}" if commit else "not a git checkout"
    lines = [f"- command: `{p['command']}`" if p.get("command") else "- command: not recorded",
             f"- bnbench code: {code}",
             "- versions: " + (", ".join(f"{k} {v}" for k, v in p.get("versions", {}).items()) or "not recorded"),
             f"- device: {', '.join(p.get('devices') or ['not recorded'])}" + (f" on {p['host']}" if p.get("host") else ""),
             f"- runs: first started {p.get('first_run_started') or '—'}, last finished "
             f"{p.get('last_run_finished') or '—'}; report built {p.get('report_built')}"]
    stacking = p.get("stacking") or {}
    if stacking.get("stacked"):
        sizes = ", ".join(map(str, stacking["sizes"]))
        lines.append(f"- stacked seeds: {stacking['stacked']} result(s) trained in stacks of {sizes}, "
                     f"{stacking['unstacked']} on their own")
    elif stacking:
        lines.append("- stacked seeds: none (every run trained on its own)")
    if p.get("source") == "results.csv":
        lines.append("- rebuilt from results.csv: the run folders are not here (no learning curves or diagnostics)")
    if p.get("wall_per_run_s"):
        mean, low, high = p["wall_per_run_s"]
        lines.append(f"- wall time: {p['wall_total_s']:.1f} s of jobs in all (a stack's time once); per run "
                     f"{mean:.1f} s (min {low:.1f}, max {high:.1f}; a stacked seed's is its stack's)")
    return lines
