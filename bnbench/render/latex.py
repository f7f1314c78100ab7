"""report.tex: a complete LaTeX document of the report's tables (booktabs), that pdflatex
compiles as it is (tested), every table on the page; copy a table into a paper from it."""

from __future__ import annotations

from bnbench.analysis.tables import SweepTables
from bnbench.render.text import (anova_rows, cell_rows, comparison_rows, comparison_title, effect_rows,
                                 interaction_rows, metric_title, profile_rows, selection_rows)

# Characters the report's text uses, as ASCII LaTeX commands and math: no engine's default font
# needs a glyph for them (lualatex dropped the Unicode en dashes; not installed here to test).
UNICODE = {
    "±": r"$\pm$", "−": r"$-$", "–": "--", "—": "---", "×": r"$\times$", "η": r"$\eta$", "²": r"$^{2}$",
    "⁶": r"$^{6}$", "†": r"$^{\dagger}$", "∞": r"$\infty$", "≤": r"$\leq$", "≥": r"$\geq$", "·": r"$\cdot$",
    "<": r"$<$", ">": r"$>$", "…": r"\dots{}", "α": r"$\alpha$", "÷": r"$\div$",
}
SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
           "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
WIDE = 90  # characters in a row above which a table is turned to landscape (a portrait line holds about 90)


def escape(text: str) -> str:
    """``text`` as LaTeX: its special characters escaped, its Unicode symbols as commands."""
    return "".join(SPECIAL.get(ch) or UNICODE.get(ch) or ch for ch in str(text))


def table(header: list[str], rows: list[list[str]], caption: str) -> str:
    """A booktabs table, every one within the page: a wide one (by the characters of its widest
    row) turned to landscape, and any still wider than the line scaled down to it (\\fitwidth),
    never up (the 14-column comparison table overran a portrait page by 421 pt)."""
    align = "l" + "r" * (len(header) - 1)
    body = "\n".join(" & ".join(escape(c) for c in r) + r" \\" for r in rows)
    tabular = (f"\\begin{{tabular}}{{{align}}}\n\\toprule\n" + " & ".join(escape(h) for h in header)
               + " \\\\\n\\midrule\n" + body + "\n\\bottomrule\n\\end{tabular}")
    float_ = (f"\\begin{{table}}[htbp]\n\\centering\n\\caption{{{escape(caption)}}}\n\\fitwidth{{%\n{tabular}}}\n"
              "\\end{table}\n")
    widest = max((sum(len(str(c)) + 3 for c in row) for row in [header, *rows]), default=0)
    return f"\\begin{{landscape}}\n{float_}\\end{{landscape}}\n" if widest > WIDE else float_


# \fitwidth{...}: the box at its own size, or scaled down to the line when it is wider
PREAMBLE = r"""\documentclass{article}
\usepackage[utf8]{inputenc}
\usepackage[margin=2cm]{geometry}
\usepackage{booktabs}
\usepackage{graphicx}
\usepackage{pdflscape}
\newsavebox{\bnbenchbox}
\newcommand{\fitwidth}[1]{\sbox{\bnbenchbox}{#1}\ifdim\wd\bnbenchbox>\linewidth
  \resizebox{\linewidth}{!}{\usebox{\bnbenchbox}}\else\usebox{\bnbenchbox}\fi}
"""


def to_latex(tables: SweepTables) -> str:
    """Every table of the report, in the order of report.md, as one document."""
    metric = metric_title(tables.metric)
    parts = []
    if tables.selection is not None:
        parts.append(table(*selection_rows(tables), f"{tables.selection.key} chosen per arm on the validation split"))
    if tables.profile is not None:
        parts.append(table(*profile_rows(tables), f"Stable ranges over {tables.profile.key}"))
    parts.append(table(*cell_rows(tables), f"{metric} per cell (mean over seeds)"))
    if tables.comparisons is not None and len(tables.comparisons):
        parts.append(table(*comparison_rows(tables), "Paired differences: " + comparison_title(tables)))
    if tables.anova is not None and len(tables.anova):
        parts.append(table(*anova_rows(tables), f"Type-II ANOVA of the {metric}"))
    if tables.effects is not None and len(tables.factors) > 1:
        parts.append(table(*effect_rows(tables), f"Main effects: marginal means of the {metric}"))
    for (a, b), frame in tables.interactions.items():
        parts.append(table(*interaction_rows(tables, a, b, frame), f"{metric}: {a} by {b}"))
    return ("% bnbench report: " + tables.sweep_dir.name + " (pdflatex report.tex)\n" + PREAMBLE
            + "\\begin{document}\n" + f"\\section*{{bnbench report: {escape(tables.sweep_dir.name)}}}\n\n"
            + "\n".join(parts) + "\n\\end{document}\n")
