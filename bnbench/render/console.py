"""The report on the terminal (rich): the cells, the comparisons and the ANOVA's warning."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from bnbench.analysis.tables import SweepTables
from bnbench.render.text import (cell_rows, comparison_rows, comparison_title, fmt_p, metric_title, selection_rows,
                                 summary_line)


def print_tables(tables: SweepTables, console: Console | None = None) -> None:
    console = console or Console()
    for warning in tables.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}", markup=True, highlight=False)
    wide = console.width >= 120  # an 80-column terminal gets the columns that matter most, unwrapped
    if tables.selection is not None:
        header, rows = selection_rows(tables)
        keep = [i for i, h in enumerate(header) if wide or h != "every value"]
        chosen = Table(title=f"{tables.selection.key} chosen per arm on the validation split", title_justify="left")
        for i in keep:
            chosen.add_column(header[i], justify="left" if i < len(tables.selection.arms) + 1 else "right")
        for row in rows:
            chosen.add_row(*(row[i] for i in keep))
        console.print(chosen)
    header, rows = cell_rows(tables)
    if not wide:
        keep = [i for i, h in enumerate(header) if h not in ("median", "min – max")]
        header, rows = [header[i] for i in keep], [[r[i] for i in keep] for r in rows]
    table = Table(title=f"{tables.sweep_dir}  ({summary_line(tables)})\n{metric_title(tables.metric)}",
                  title_justify="left")
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if 0 < i <= len(tables.factors) else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    if tables.comparisons is not None and len(tables.comparisons):
        header, rows = comparison_rows(tables)
        dropped = ("p (t)", "p (Wilcoxon)", "test", "g_z", "note") + (() if wide else ("p Holm (TOST)",))
        keep = [i for i, h in enumerate(header) if h not in dropped]
        header, rows = [header[i] for i in keep], [[r[i] for i in keep] for r in rows]
        comp = Table(title=comparison_title(tables) + " (paired by seed)", title_justify="left")
        for i, name in enumerate(header):
            comp.add_column(name, justify="left" if i < len(tables.factors) + (name == "against") else "right")
        for row in rows:
            comp.add_row(*row)
        console.print(comp)
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
