"""Sweep bookkeeping, hooked into Hydra's multirun through its Callback API.

bnbench's sweeper (bnbench.launch.sweeper) plans the jobs and a launcher (basic, joblib,
submitit, ray) runs them; this callback only reads and summarizes the run records on disk, in
the launching process, whatever launcher ran the jobs and wherever they ran: the skip counts,
the live view, and the report when the multirun ends. The plan leaves finished runs out and jobs
skip runs finished since (records.is_finished), so running the same sweep command again
completes what is missing and redoes nothing.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from rich.console import Console
from omegaconf import DictConfig, OmegaConf

from bnbench import records
from bnbench.launch import channel
from bnbench.launch.channel import FAIL_FAST_MARKER, LIVE_VIEW
from bnbench.launch.resources import launcher_kind, parallel_jobs
from bnbench.launch.progress import FinishedLines, SweepMonitor

log = logging.getLogger("bnbench")


def finished_runs(sweep_dir: Path) -> dict[Path, str]:
    """Run folders holding a finished record, with the time it finished."""
    out = {}
    for path in sweep_dir.rglob(records.SUMMARY):
        summary = records.read_summary(path.parent)
        if records.is_finished(summary):
            out[path.parent] = str(summary.get("finished_at"))
    return out


_monitor: SweepMonitor | None = None


def stop_monitor() -> None:
    global _monitor
    os.environ.pop(LIVE_VIEW, None)
    if _monitor is not None:
        _monitor.stop()
        _monitor = None


def planned_runs(config: DictConfig) -> int:
    """How many runs the sweep has (the live view's total): the product of its swept lists, the
    grid bnbench's sweeper expands (as Hydra's basic sweeper does) before it plans the jobs."""
    lists = records.sweep_lists(config.hydra.sweeper.get("params"), list(config.hydra.overrides.task))
    return math.prod(len(v) for v in lists.values()) if lists else 1


class SweepReport(Callback):
    def __init__(self) -> None:
        self.finished_before: dict[Path, str] = {}

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        # for the CLI: where the records go, and whether there is anything to run at all
        channel.note_outcome(sweep_dir=str(sweep_dir), planned=planned_runs(config))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / FAIL_FAST_MARKER).unlink(missing_ok=True)  # left by an earlier --fail-fast sweep
        records.write_json(sweep_dir / records.SWEEP_INFO, records.sweep_info(sys.argv))
        if str(config.hydra.sweeper.get("_target_", "")) not in records.store.GRID_SWEEPERS:
            # the grid sweepers save the sweep's config; Optuna's does not, and the report reads
            # from it which sweeper chose the runs (samples, not a grid)
            OmegaConf.save(config, sweep_dir / "multirun.yaml")
        # (how many of them this sweep skips is the planner's to say: a record of another config is retrained)
        self.finished_before = finished_runs(sweep_dir) if sweep_dir.is_dir() else {}
        global _monitor
        console = Console()
        if console.is_terminal and not config.sweep.quiet:
            # parallel workers share this terminal: their own log lines would break the frame
            os.environ[LIVE_VIEW] = "1"
            _monitor = SweepMonitor(sweep_dir, planned_runs(config), self.finished_before, parallel_jobs(config.hydra.get("launcher")),
                                    console)
            _monitor.start()
        elif launcher_kind(config.hydra.get("launcher")) in ("submitit_local", "slurm"):
            # their jobs write to .submitit/*_log.out, not here: one line per finished run from the records
            _monitor = FinishedLines(sweep_dir, self.finished_before)
            _monitor.start()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from bnbench import report  # pandas, scipy, matplotlib: not needed while the jobs run

        stop_monitor()
        sweep_dir = Path(config.hydra.sweep.dir)
        if planned_runs(config) == 0:
            return  # nothing ran; the CLI says why
        try:
            tables = report.build(sweep_dir)
            written = report.write(tables)
        except Exception as err:  # the runs are safe on disk; say why the tables are not
            # Hydra turns an error raised in a callback into a warning: the CLI reads this instead
            expected = isinstance(err, (report.ReportError, OSError))  # said in one line; a bug keeps its trace
            why = str(err) if isinstance(err, report.ReportError) else \
                f"cannot write it into {sweep_dir} ({err.strerror or err}); then: bnbench report {sweep_dir}" \
                if isinstance(err, OSError) else f"{type(err).__name__}: {err}"
            channel.note_outcome(report_error=why)
            log.error("no report: %s", why, exc_info=not expected)
            return
        report.print_tables(tables, Console(width=None if sys.stdout.isatty() else 160))
        # the runs of this sweep's grid the planner found finished with this config; records in the
        # folder from other grids (more seeds before) are not this sweep's to count
        planned = channel.read_outcome(Path(os.environ[channel.OUTCOME_ENV])).get("skipped") \
            if os.environ.get(channel.OUTCOME_ENV) else None
        now = finished_runs(sweep_dir)
        skipped = planned if planned is not None else \
            sum(1 for d, t in now.items() if self.finished_before.get(d) == t)
        if skipped:
            print(f"{skipped} runs were already complete and were skipped")
        print(f"wrote {', '.join(str(p) for p in written)}")
