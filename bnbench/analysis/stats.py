"""Statistics over a sweep's runs: per-cell intervals, paired comparisons with a baseline and
their verdicts, marginal means, interactions, a factorial ANOVA and rankings.

Every function takes the ``runs`` table of :func:`bnbench.report.collect_runs` (one row per
run folder) and the list of swept factors. A *cell* is one combination of factor values; its
seeds are the repetitions.

Divergence policy (one rule, applied by :func:`scores` to every table below). A run that
completed or diverged is a *result*; a failed, unfinished or missing run is not, and its cell
is marked incomplete wherever it is shown or ranked.
- A diverged run is scored, never dropped. Its accuracy is that of its final model, evaluated
  when the divergence was detected: a sample with a NaN or inf output counts as wrong, so a
  model that outputs NaN everywhere scores 0 (it predicts nothing).
- A result with no finite value (the NaN loss of a diverged run; a time to accuracy of a run
  that never reached the target) is worse than every finite value: -inf for a metric where
  higher is better, +inf where lower is better. A cell mean is then infinite (its median is
  still defined and breaks ties in the ranking), the t-based statistics are undefined, and the
  comparisons fall back to the Wilcoxon signed-rank test, which needs only the order.
- Every cell and marginal shows its divergence rate (diverged / results).
- A completed run whose record lacks the value (an unreadable metrics.csv) is not scored; its
  cell is marked incomplete, like a cell with a failed run.
- Marginal means are unweighted means of cell means (every cell counts once, however many of
  its seeds finished), so cells of different completeness are not mixed.

Intervals of means and of paired differences are t-intervals (a bootstrap under-covers badly
at 3-10 seeds; it is available for paired differences on request). Tests and intervals come
from scipy.stats; multiple testing, equivalence (TOST), power and the ANOVA from statsmodels.
"""

# The statistics live in three modules (cells, paired, factorial); this one is their single
# import for the report and the tests: ``stats.cell_stats``, ``stats.compare_to_baseline``, ...
from bnbench.analysis.cells import *  # noqa: F401,F403
from bnbench.analysis.factorial import *  # noqa: F401,F403
from bnbench.analysis.paired import *  # noqa: F401,F403
