"""Tables and figures from analysed results: Markdown, LaTeX and the console (tables), and the
report's plots (plots, diagnostics). No statistics are computed here."""
