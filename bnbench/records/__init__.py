"""The run and sweep records on disk: the single source of truth for reports, resume and progress.

The torch-free contract between the jobs that write records and everything that reads them:
``schema`` (what a record holds, the status vocabulary, metric names, runtime keys, identity),
``store`` (atomic I/O, summaries, run folders, the grid), ``provenance`` (versions, git state,
the sweep's command). ``records.runs`` builds the runs table (pandas) that the report, export,
evalmodes and confirm read; it is not imported here, so the launching side stays pandas-free.
"""

from bnbench.records.provenance import git_state, library_versions, sweep_info
from bnbench.records.schema import (CONFIRM_PLAN, DIAGNOSTICS, DIAGNOSTICS_COLUMNS, EVAL_MODES, FINAL_WEIGHTS, FINISHED,
                                    LEGACY_TRAIN_METRICS, METRIC_COLUMNS, METRICS, RESULTS, RUN_METRICS, RUNTIME_KEYS, STATUSES,
                                    SUMMARY, SWEEP_INFO, AtBestVal, BestMetrics, FinalMetrics, Progress, RunRecord,
                                    Status, is_finished, is_fraction, is_runtime_key, legacy_metric_names, metric_value,
                                    parse_overrides, run_identity)
from bnbench.records.store import (grid_sweeper, load_summary, metrics_problem, read_summary, run_folders, sweep_lists,
                                   value_order, write_csv, write_json, write_text)

__all__ = [
    "git_state", "library_versions", "sweep_info",
    "CONFIRM_PLAN", "DIAGNOSTICS", "DIAGNOSTICS_COLUMNS", "EVAL_MODES", "FINAL_WEIGHTS", "FINISHED",
    "LEGACY_TRAIN_METRICS", "METRIC_COLUMNS", "METRICS", "RESULTS", "RUN_METRICS", "RUNTIME_KEYS", "STATUSES", "SUMMARY", "SWEEP_INFO",
    "AtBestVal", "BestMetrics", "FinalMetrics", "Progress", "RunRecord", "Status", "is_finished", "is_fraction", "is_runtime_key",
    "legacy_metric_names", "metric_value", "parse_overrides", "run_identity",
    "grid_sweeper", "load_summary", "metrics_problem", "read_summary", "run_folders", "sweep_lists", "value_order", "write_csv",
    "write_json", "write_text",
]
