"""A live view of a sweep, drawn from the run records on disk.

Jobs (in this process, in joblib workers, or on a cluster) only write their summary.json;
this monitor polls the sweep folder and draws one Rich display in the launching process, so
output never interleaves however many workers run. It is used on a terminal only: logs and
CI (or ``--quiet``) get one plain line per finished run instead.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from bnbench import records


class SweepMonitor:
    def __init__(self, sweep_dir: Path, total: int, finished_before: dict[Path, str], workers: int,
                 console: Console | None = None, interval: float = 0.5):
        self.sweep_dir, self.total, self.workers = sweep_dir, total, max(1, workers)
        self.finished_before = finished_before
        self.console = console or Console()
        self.interval = interval
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._live: Live | None = None

    def snapshot(self) -> dict:
        counts = {"completed": 0, "diverged": 0, "failed": 0, "skipped": 0}
        running, durations = [], []
        for path in self.sweep_dir.rglob(records.SUMMARY):
            summary = records.read_summary(path.parent)
            if not summary:
                continue
            status = summary.get("status")
            if self.finished_before.get(path.parent) == str(summary.get("finished_at")):
                counts["skipped"] += 1
            elif status in counts:
                counts[status] += 1
                if summary.get("wall_s"):
                    durations.append(float(summary["wall_s"]))
            elif status == "running":
                running.append((path.parent.name, summary.get("progress") or {}))
        done = sum(counts.values())
        remaining = max(0, self.total - done)
        eta = None
        if durations and remaining:
            eta = sum(durations) / len(durations) * remaining / self.workers
        return {"counts": counts, "done": done, "running": running, "eta": eta}

    def render(self) -> Group:
        snap = self.snapshot()
        c = snap["counts"]
        elapsed = timedelta(seconds=int(time.monotonic() - self.started))
        eta = "—" if snap["eta"] is None else str(timedelta(seconds=int(snap["eta"])))
        head = Text.assemble(
            (f"{snap['done']}/{self.total} runs ", "bold"),
            f"done {c['completed']} · skipped {c['skipped']} · ",
            ("failed " + str(c["failed"]), "red" if c["failed"] else ""), " · ",
            ("diverged " + str(c["diverged"]), "yellow" if c["diverged"] else ""),
            f" · running {len(snap['running'])}   elapsed {elapsed}  ETA {eta}",
        )
        table = Table.grid(padding=(0, 2))
        for name, progress in snap["running"][:8]:
            step, total = progress.get("step"), progress.get("total_steps")
            where = f"step {step}/{total}  epoch {progress.get('epoch', 0):.2f}" if step else "starting"
            if progress.get("test_acc") is not None:
                acc = f"test acc {100 * progress['test_acc']:.2f}%"
            else:
                acc = f"test loss {progress['test_loss']:.4f}" if progress.get("test_loss") is not None else ""
            table.add_row(Text(name, overflow="ellipsis", no_wrap=True), where, acc)
        top = Table.grid(padding=(0, 1))
        top.add_row(ProgressBar(total=max(self.total, 1), completed=snap["done"], width=30), head)
        return Group(top, table)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._live.update(self.render())
            except Exception:  # a record being replaced mid-read: draw the next frame
                continue

    def start(self) -> None:
        self._live = Live(self.render(), console=self.console, refresh_per_second=4, transient=True,
                          redirect_stdout=True, redirect_stderr=True)
        self._live.start()
        self._thread = threading.Thread(target=self._loop, name="bnbench-progress", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self._live is not None:
            self._live.stop()
            self._live = None
