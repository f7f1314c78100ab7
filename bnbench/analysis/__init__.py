"""Pure functions on the runs table (pandas, scipy, statsmodels; no torch, no files): cells and
paired comparisons, the factorial ANOVA (stats), choosing each arm's value on validation data
(selection), and a metric over a numeric key with each arm's stable range (profiles)."""
