"""report.tex: the cell, comparison and ANOVA tables as LaTeX (booktabs), for a paper."""

from __future__ import annotations

from bnbench.analysis.tables import SweepTables
from bnbench.render.text import anova_rows, cell_rows, comparison_rows, comparison_title, metric_title


def to_latex(tables: SweepTables) -> str:
    """Booktabs tables (cells; comparisons) ready for \\input in a paper."""
    def table(header: list[str], rows: list[list[str]], caption: str) -> str:
        escape = lambda s: s.replace("_", r"\_").replace("%", r"\%").replace("±", r"$\pm$").replace("—", "--")  # noqa: E731
        body = "\n".join(" & ".join(escape(c) for c in r) + r" \\" for r in rows)
        return (f"\\begin{{table}}[ht]\n\\centering\n\\caption{{{escape(caption)}}}\n"
                f"\\begin{{tabular}}{{{'l' * len(header)}}}\n\\toprule\n"
                + " & ".join(escape(h) for h in header) + " \\\\\n\\midrule\n" + body
                + "\n\\bottomrule\n\\end{tabular}\n\\end{table}\n")

    parts = [f"% bnbench report: {tables.sweep_dir.name}; needs \\usepackage{{booktabs}}\n",
             table(*cell_rows(tables), f"{metric_title(tables.metric)} per cell")]
    if tables.comparisons is not None and len(tables.comparisons):
        parts.append(table(*comparison_rows(tables),
                           "Paired differences: " + comparison_title(tables)))
    if tables.anova is not None and len(tables.anova):
        parts.append(table(*anova_rows(tables), f"Type-II ANOVA of the {metric_title(tables.metric)}"))
    return "\n".join(parts)
