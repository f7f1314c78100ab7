"""Sweep bookkeeping, hooked into Hydra's multirun through its Callback API.

Hydra's sweeper and launcher (basic, joblib, submitit, ray) run the jobs; when the multirun
ends, :class:`SweepReport` rebuilds the sweep's tables from the run records on disk, in the
launching process, whatever launcher ran the jobs and wherever they ran.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from bnbench import report

log = logging.getLogger("bnbench")

# Outcome of the last multirun in this process, for the CLI's exit code.
last_sweep: report.SweepTables | None = None


class SweepReport(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        global last_sweep
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            tables = report.build(sweep_dir)
        except report.ReportError as err:
            log.error("no report: %s", err)
            return
        csv_path, md_path = report.write(tables)
        report.print_tables(tables)
        print(f"wrote {csv_path} and {md_path}")
        last_sweep = tables
