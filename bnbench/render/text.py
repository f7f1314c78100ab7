"""The report's tables as rows of text, shared by Markdown, LaTeX and the console: numbers in
the units shown (points for accuracies), p-values, verdicts, and the rows of each table."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from bnbench import records
from bnbench.analysis.tables import SweepTables
from bnbench.records import is_fraction


INCOMPLETE_MARK = "*"  # next to the rank of a cell with failed, unfinished or missing runs


OUT_OF_RANGE_MARK = "†"  # an interval end past what the metric can be (0-100%): shown as computed


def fmt(value: Any, metric: str, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float) and math.isinf(value):
        return "+∞" if value > 0 else "−∞"
    if is_fraction(metric):
        return f"{100 * value:+.2f}" if signed else f"{100 * value:.2f}"
    return f"{value:+.4g}" if signed else f"{value:.4g}"


def interval(low: Any, high: Any, metric: str) -> str:
    """"86.52 – 87.33"; an end a t-interval puts past 0% or 100% (an accuracy cannot be there:
    the interval assumes a normal mean, which a score near its bound is not) is shown as
    computed and marked, never clipped into a narrower-looking interval."""
    if pd.isna(low):
        return "—"

    def end(value: float) -> str:
        outside = is_fraction(metric) and not 0.0 <= value <= 1.0
        return fmt(value, metric) + (OUT_OF_RANGE_MARK if outside else "")

    return f"{end(low)} – {end(high)}"


def fmt_p(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.3g}" if value >= 0.001 else "<0.001"


def metric_title(metric: str) -> str:
    titles = {"final_test_acc": "final test accuracy", "best_test_acc": "best test accuracy",
              "final_train_loss": "final train loss", "final_test_loss": "final test loss",
              "best_test_loss": "best test loss", "final_train_acc": "final train accuracy",
              "final_train_loss_running": "running train loss (last interval)",
              "final_train_acc_running": "running train accuracy (last interval)",
              "final_val_acc": "final validation accuracy", "final_val_loss": "final validation loss",
              "best_val_acc": "best validation accuracy", "best_val_loss": "best validation loss",
              "test_acc_at_best_val": "test accuracy at the best validation accuracy",
              "test_loss_at_best_val": "test loss at the best validation loss"}
    title = titles.get(metric, metric.replace("_", " "))
    return title + (" (%)" if is_fraction(metric) else "")


def confidence_pct(tables: SweepTables) -> str:
    return f"{100 * tables.cells.attrs.get('confidence', 0.95):g}%"


def _status_text(cell: pd.Series) -> str:
    """Results over runs, then what happened to the others."""
    text = f"{int(cell['n'])}/{int(cell['runs']) + int(cell['missing'])}"
    extra = [f"{int(cell[s])} {s}" for s in ("failed", "incomplete", "missing") if cell.get(s)]
    return text + (f" ({', '.join(extra)})" if extra else "")


def _diverged_text(diverged: Any, results: Any) -> str:
    if not results or pd.isna(results):
        return "—"
    return f"{int(diverged)}/{int(results)}" + (f" ({100 * diverged / results:.0f}%)" if diverged else "")


def cell_rows(tables: SweepTables) -> tuple[list[str], list[list[str]]]:
    m = tables.metric
    header = ["rank", *tables.factors, "results", "diverged", "mean ± std", f"{confidence_pct(tables)} CI", "median",
              "min – max"]
    rows = []
    for _, cell in tables.cells.iterrows():
        ci = interval(cell["ci_low"], cell["ci_high"], m)
        spread = "—" if pd.isna(cell["min"]) else f"{fmt(cell['min'], m)} – {fmt(cell['max'], m)}"
        mean = fmt(cell["mean"], m) + ("" if pd.isna(cell["std"]) else f" ± {fmt(cell['std'], m)}")
        rank = "—" if pd.isna(cell["rank"]) else str(int(cell["rank"]))
        if rank != "—" and not cell["complete"]:
            rank += INCOMPLETE_MARK
        rows.append([rank, *[str(cell[f]) for f in tables.factors], _status_text(cell),
                     _diverged_text(cell["diverged"], cell["n"]), mean, ci, fmt(cell["median"], m), spread])
    return header, rows


def selection_rows(tables: SweepTables) -> tuple[list[str], list[list[str]]]:
    sel = tables.selection
    assert sel is not None
    header = [*sel.arms, f"chosen {sel.key}", f"mean {sel.criterion}", "seeds", "every value", "note"]
    rows = []
    for _, arm in sel.table.iterrows():
        values = "; ".join(f"{v}: {fmt(mean, sel.criterion)} ({n}{f', {d} diverged' if d else ''}"
                           f"{f', {lost} failed or unfinished' if lost else ''})"
                           for v, mean, n, d, lost in arm["values"])
        rows.append([*(str(arm[a]) for a in sel.arms), str(arm["chosen"] if arm["chosen"] is not None else "—"),
                     fmt(arm["criterion"], sel.criterion), str(arm["n"]), values, arm["note"] or ""])
    return header, rows


def profile_lines(tables: SweepTables) -> list[str]:
    prof = tables.profile
    assert prof is not None
    m = prof.metric
    within = 100 * prof.within if is_fraction(m) else prof.within
    unit = (" point" if within == 1 else " points") if is_fraction(m) else ""
    header, rows = profile_rows(tables)
    per_value_header = [*prof.arms, prof.key, "results", "diverged", "failed / unfinished", "mean",
                        f"{confidence_pct(tables)} CI"]
    per_value = [[*(str(c[a]) for a in prof.arms), f"{c['value']:g}", str(int(c["n"])),
                  f"{int(c['diverged'])}/{int(c['n'])}", str(int(c["failed"]) + int(c["incomplete"])),
                  fmt(c["mean"], m), interval(c["ci_low"], c["ci_high"], m)]
                 for _, c in prof.cells.iterrows()]
    return [f"## Profile over `{prof.key}`", "",
            f"Per arm, the {metric_title(m)} at every value of `{prof.key}` (mean over seeds, {confidence_pct(tables)} "
            "t-interval; `profile.png`). Stable range: the unbroken run of values around the best one under "
            f"which no seed diverged and whose mean is within {within:g}{unit} of the best such mean (`--within`); "
            "its width is the ratio of its ends; it never crosses a value without results. A width is a ratio of "
            "grid values, so its uncertainty is shown as how often each width comes back when the seeds are "
            "resampled (2,000 draws, the same seeds for every value and arm), not as an interval"
            + _resolution_text(prof) + ".", "",
            *md_table(header, rows), "", *md_table(per_value_header, per_value), ""]


def profile_rows(tables: SweepTables) -> tuple[list[str], list[list[str]]]:
    """Per arm: its best value, the stable range, its width and how often resamples give each."""
    prof = tables.profile
    assert prof is not None
    m = prof.metric
    header = [*prof.arms, f"best {prof.key}", "its mean", "stable range", "width", "width in resamples of seeds"]
    has_ratio = "width_ratio" in prof.ranges
    if has_ratio:
        header += [f"width / {prof.ranges.attrs['baseline']}", "ratio in resamples"]
    rows = []
    for _, arm in prof.ranges.iterrows():
        stable = f"{arm['low']:g} – {arm['high']:g}" if np.isfinite(arm["low"]) else "none"
        width = f"{arm['width']:.3g}×" if np.isfinite(arm["width"]) else "—"
        row = [*(str(arm[a]) for a in prof.arms), f"{arm['best']:g}" if np.isfinite(arm["best"]) else "—",
               fmt(arm["best_mean"], m), stable, width, _resampled_text(arm, "width")]
        if has_ratio:
            row += [f"{arm['width_ratio']:.3g}×" if np.isfinite(arm["width_ratio"]) else "—",
                    _resampled_text(arm, "ratio")]
        rows.append(row)
    return header, rows


def _resampled_text(arm: pd.Series, name: str) -> str:
    """"26.7× in 93%, 13.3× in 7%" (and the share of draws with no range)."""
    text = arm.get(f"{name}_resampled")
    if not isinstance(text, str) or not text:
        return "—"
    parts = [f"{value}× in {share}" for value, share in (part.split(": ") for part in text.split("; "))]
    none = arm.get(f"{name}_none_share", 0)
    if none and none >= 0.01:
        parts.append(f"no range in {100 * none:.0f}%")
    return ", ".join(parts)


def _resolution_text(prof) -> str:
    steps = prof.ranges.attrs.get("resolution")
    if not steps:
        return ""
    low, high = steps
    grid = f"×{low:.3g}" if math.isclose(low, high, rel_tol=1e-3) else f"×{low:.3g} to ×{high:.3g}"
    return f"; the grid's resolution (neighbouring values differ by {grid}) is the finest a width can resolve"


def _interval_label(tables: SweepTables) -> str:
    kind = "BCa bootstrap" if tables.comparisons.attrs.get("interval") == "bootstrap" else "t"
    return f"{confidence_pct(tables)} CI ({kind})"


def comparison_title(tables: SweepTables) -> str:
    """What the comparisons table compares: every pair of levels of a factor, or each cell
    against the baseline."""
    comp = tables.comparisons
    if comp.attrs.get("pairs") == "all":
        return f"every pair of {comp.attrs['factor']} levels"
    return f"against {comp['baseline'].iloc[0]}"


def learned_nothing(tables: SweepTables) -> list[str]:
    """The cells that learned nothing (every seed diverged, or an accuracy within the margin of
    chance), as comparisons saw them; empty without comparisons."""
    comp = tables.comparisons
    if comp is None or not len(comp) or "learned" not in comp:
        return []
    names = {}
    for _, row in comp.iterrows():
        cell = ", ".join(str(row[f]) for f in tables.factors)
        if not row["learned"]:
            names[cell] = True
        if not row["baseline_learned"]:
            base = dict(zip(tables.factors, [str(row[f]) for f in tables.factors]))
            base.update(part.split("=", 1) for part in str(row["baseline"]).split(", ") if "=" in part)
            names[", ".join(base[f] for f in tables.factors)] = True
    return list(names)


def comparison_rows(tables: SweepTables) -> tuple[list[str], list[list[str]]]:
    m, comp = tables.metric, tables.comparisons
    tost = comp.attrs.get("margin") is not None
    every_pair = comp.attrs.get("pairs") == "all"
    header = [*tables.factors, *(["against"] if every_pair else []), "pairs", "diverged", "difference",
              _interval_label(tables), "g_z", "p (t)", "p (Wilcoxon)", "test", "p Holm", *(["p Holm (TOST)"] if tost else []),
              "verdict", "seeds for 80% power (range)", "note"]
    rows = []
    for _, row in comp.iterrows():
        against = [str(row["baseline"]).split("=", 1)[-1]] if every_pair else []
        ci = "—" if pd.isna(row["ci_low"]) else f"{fmt(row['ci_low'], m, True)} – {fmt(row['ci_high'], m, True)}"
        diverged = f"{int(row['diverged'])} vs {int(row['baseline_diverged'])}" if row["n_pairs"] else "—"
        needed = _seeds_text(row)
        rows.append([*[str(row[f]) for f in tables.factors], *against, str(int(row["n_pairs"])), diverged,
                     fmt(row["mean_diff"], m, True), ci, "—" if pd.isna(row["g_z"]) else f"{row['g_z']:.2f}",
                     fmt_p(row["p_ttest"]), fmt_p(row["p_wilcoxon"]), row["test"] or "—", fmt_p(row["p_holm"]),
                     *([fmt_p(row["p_tost_holm"])] if tost else []), row["verdict"], needed,
                     row["note"] if isinstance(row["note"], str) else ""])
    return header, rows


def _seeds_text(row: pd.Series) -> str:
    """"8 (4–92)": the planned seeds at the pilot SD and at the ends of its interval."""
    if pd.isna(row["seeds_needed"]):
        return "—"
    count = lambda v: "—" if pd.isna(v) else (">10⁶" if v > 1e6 else f"{int(v)}")  # noqa: E731  (inf: > a million)
    return f"{count(row['seeds_needed'])} ({count(row['seeds_needed_low'])}–{count(row['seeds_needed_high'])})"


def interaction_rows(tables: SweepTables, a: str, b: str, table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """The mean per level of ``a`` (rows) and ``b`` (columns), with divergences and marks."""
    m = tables.metric
    header = [f"{a} \\ {b}", *[str(c) for c in table[b].cat.categories]]
    rows = []
    for level_a in table[a].cat.categories:
        row = [str(level_a)]
        for _, entry in table[table[a] == level_a].iterrows():
            text = fmt(entry["mean"], m)
            if entry["diverged"]:
                text += f" ({int(entry['diverged'])}/{int(entry['results'])} div.)"
            if not entry["complete"]:
                text += INCOMPLETE_MARK
            row.append(text)
        rows.append(row)
    return header, rows


def effect_rows(tables: SweepTables) -> tuple[list[str], list[list[str]]]:
    m = tables.metric
    header = ["factor", "level", "mean of cell means", "cell means (min – max)", "cells with results", "diverged"]
    rows = []
    for _, r in tables.effects.iterrows():
        cells = f"{int(r['cells'])}/{int(r['cells_total'])}"
        if r["incomplete_cells"]:
            cells += f" ({int(r['incomplete_cells'])} incomplete{INCOMPLETE_MARK})"
        spread = "—" if pd.isna(r["cell_min"]) else f"{fmt(r['cell_min'], m)} – {fmt(r['cell_max'], m)}"
        rows.append([str(r["factor"]), str(r["level"]), fmt(r["mean"], m), spread, cells,
                     _diverged_text(r["diverged"], r["results"])])
    return header, rows


def anova_rows(tables: SweepTables) -> tuple[list[str], list[list[str]]]:
    header = ["term", "df", "sum of squares", "F", "p", "partial η²"]
    rows = []
    for _, r in tables.anova.iterrows():
        rows.append([r["term"], f"{r['df']:g}", f"{r['sum_sq']:.4g}", "—" if pd.isna(r["F"]) else f"{r['F']:.3g}",
                     fmt_p(r["p"]), "—" if pd.isna(r["partial_eta2"]) else f"{r['partial_eta2']:.2f}"])
    return header, rows


def flip_lines(tables: SweepTables) -> list[str]:
    """The changes of sign that their contrast tests support, one line each, and how many others
    the means show that the tests do not support."""
    lines = []
    for flip in tables.flips:
        if not flip.get("supported"):
            continue
        where = lambda levels: ", ".join(f"{lv} ({fmt(flip['diffs'][lv], tables.metric, True)})" for lv in levels)  # noqa: E731
        best = min((c for c in flip["contrasts"] if np.isfinite(c["p_holm"])), key=lambda c: c["p_holm"])
        lines.append(f"- {flip['factor']} {flip['high']} − {flip['low']} changes sign with {flip['across']}: "
                     f"positive at {where(flip['positive'])}, negative at {where(flip['negative'])}; the simple "
                     f"effects at {best['positive']} and {best['negative']} differ by "
                     f"{fmt(best['estimate'], tables.metric, True)} (paired over {best['seeds']} seeds, "
                     f"Holm p {fmt_p(best['p_holm'])}).")
    unsupported = sum(not flip.get("supported") for flip in tables.flips)
    if unsupported:
        lines.append(f"- {unsupported} other change(s) of sign among the means are not supported by their contrast "
                     "tests (Holm-adjusted, they reject no difference between the simple effects): within noise "
                     "here.")
    return lines


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return out + ["| " + " | ".join(r) + " |" for r in rows]


def summary_line(tables: SweepTables) -> str:
    counts = ", ".join(f"{n} {s}" for s, n in tables.counts.items() if n or s in records.STATUSES)
    return f"{len(tables.runs)} runs: {counts}"


POLICY = ("A diverged run is a result, never dropped: its accuracy is that of its final model (a sample "
           "with a NaN output counts as wrong), and a value that is not finite (a diverged run's loss, a target "
           "never reached) is worse than every finite one (±∞: the mean is then infinite and the median ranks). "
           "Failed, unfinished and missing runs are not results; their cells are marked "
           f"{INCOMPLETE_MARK} wherever they are ranked. An interval end marked {OUT_OF_RANGE_MARK} lies past 0% or "
           "100%: it is shown as computed (a t-interval of scores near their bound), not clipped.")
