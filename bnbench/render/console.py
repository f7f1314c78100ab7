"""The report on the terminal (rich): the cells, the comparisons and the ANOVA's warning."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from bnbench.analysis.tables import SweepTables
from bnbench.render.text import (cell_rows, comparison_rows, comparison_title, fmt_p, metric_title, selection_rows,
                                 summary_line)


def _fit(header: list[str], rows: list[list[str]], first: int, priority: list[str],
         width: int) -> tuple[list[int], list[str]]:
    """The columns to print on a terminal ``width`` wide, each unwrapped at its natural width:
    the first ``first`` (the cell's factors: never cut), then by ``priority``, as many as fit.
    Returns (their indices in table order, the names left out). At 80 columns a table that
    fitted by wrapping cut the factor values ("bn_bef…") and wrapped each interval onto three
    lines."""
    natural = [max([len(h), *(len(r[i]) for r in rows)]) + 3 for i, h in enumerate(header)]  # + borders, padding
    keep = list(range(first))
    used = 1 + sum(natural[i] for i in keep)
    for name in priority:
        if name in header and header.index(name) not in keep:
            i = header.index(name)
            if used + natural[i] <= width:
                keep.append(i)
                used += natural[i]
    return sorted(keep), [h for i, h in enumerate(header) if i not in keep]


def _print(console: Console, title: str, header: list[str], rows: list[list[str]], first: int, priority: list[str],
           left: range) -> list[str]:
    keep, dropped = _fit(header, rows, first, priority, console.width)
    table = Table(title=title, title_justify="left")
    for i in keep:
        table.add_column(header[i], justify="left" if i in left else "right", no_wrap=True)
    for row in rows:
        table.add_row(*(row[i] for i in keep))
    console.print(table)
    return dropped


def print_tables(tables: SweepTables, console: Console | None = None) -> None:
    console = console or Console()
    for warning in tables.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}", markup=True, highlight=False)
    dropped: list[str] = []
    if tables.selection is not None:
        header, rows = selection_rows(tables)
        arms = len(tables.selection.arms)
        dropped += _print(console, f"{tables.selection.key} chosen per arm on the validation split", header, rows,
                          arms + 1, header[arms + 1:], range(arms + 1))
    header, rows = cell_rows(tables)
    factors = len(tables.factors)
    interval = next((h for h in header if " CI" in h), "")
    dropped += _print(console, f"{tables.sweep_dir}  ({summary_line(tables)})\n{metric_title(tables.metric)}", header,
                      rows, 1 + factors, ["mean ± std", interval, "results", "diverged", "median", "min – max"],
                      range(1, 1 + factors))
    if tables.comparisons is not None and len(tables.comparisons):
        header, rows = comparison_rows(tables)
        lead = factors + ("against" in header)
        # what a reader needs first; the single tests, g_z and notes are report.md's
        priority = ["difference", "verdict", next((h for h in header if " CI (" in h), ""), "p Holm", "pairs",
                    "diverged", "p Holm (TOST)", "seeds for 80% power (range)"]
        dropped += _print(console, comparison_title(tables) + " (paired by seed)", header, rows, lead, priority,
                          range(lead))
    if dropped:
        console.print(f"(left out at {console.width} columns: {', '.join(dict.fromkeys(dropped))}; report.md has every "
                      "column)", style="dim", highlight=False)
    if tables.anova is not None and len(tables.anova):
        alpha = 1 - tables.cells.attrs.get("confidence", 0.95)
        strong = tables.anova[(tables.anova["order"] >= 2) & (tables.anova["p"] < alpha)]
        if len(strong):
            console.print("ANOVA: significant interactions " + ", ".join(
                f"{r.term} (p {fmt_p(r.p)})" for r in strong.itertuples()) + "; read report.md before the marginal "
                "means", highlight=False)
    if tables.constants:
        console.print("fixed: " + " ".join(f"{k}={v}" for k, v in tables.constants.items()), style="dim")
    for _, run in tables.failed_runs.iterrows():
        console.print(f"[red]failed[/red] {run['run']}: {run['error']}", markup=True, highlight=False)
