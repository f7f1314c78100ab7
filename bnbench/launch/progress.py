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
        self.max_rows = 8  # running runs shown, one line each
        self._varying: set[str] | None = None  # the keys the sweep varies (its grid), read once

    def snapshot(self) -> dict:
        counts = {"completed": 0, "diverged": 0, "failed": 0, "skipped": 0}
        running = []
        for path in self.sweep_dir.rglob(records.SUMMARY):
            summary = records.read_summary(path.parent)
            if not summary:
                continue
            status = summary.get("status")
            if self.finished_before.get(path.parent) == str(summary.get("finished_at")):
                counts["skipped"] += 1
            elif status in counts:
                counts[status] += 1
            elif status == "running":
                running.append((path.parent.name, summary.get("progress") or {}))
        done = sum(counts.values())
        return {"counts": counts, "done": done, "running": running,
                "eta": self._eta(done - counts["skipped"], counts["skipped"], running)}

    def _short(self, name: str) -> str:
        """A run folder's name with only what varies in this sweep (and the seed): at 80 columns
        "ablation=placement,activation=leaky_relu,dataset.train_size=6000,norm=bn_b…" hid the
        values that tell the running runs apart."""
        if self._varying is None:
            self._varying = {k for k, v in records.value_order(self.sweep_dir).items() if len(v) > 1} | {"seed"}
        parts = [p for p in name.split(",") if p.split("=", 1)[0] in self._varying]
        return ",".join(parts) if parts and len(self._varying) > 1 else name

    def _eta(self, trained: int, skipped: int, running: list) -> float | None:
        """Time left at the pace so far: work is runs, a running one counted by its share of steps
        (so a stack, or runs in parallel, count as they progress, and an estimate comes before the
        first run ends); None before any step."""
        partial = sum(min(1.0, p.get("step", 0) / p["total_steps"]) for _, p in running if p.get("total_steps"))
        work_done = trained + partial
        work_left = max(0.0, self.total - skipped - work_done)
        elapsed = time.monotonic() - self.started
        if work_done <= 0 or elapsed <= 0:
            return None
        return elapsed * work_left / work_done

    def render(self) -> Group:
        """One frame of a fixed height (two status lines, then one line per worker, idle ones
        blank), every line cut to the terminal's width: a line that wrapped, or a frame that grew
        or shrank, would leave stale copies in the scrollback as Rich redraws it."""
        snap = self.snapshot()
        c = snap["counts"]
        # one column short of the terminal: a line of exactly its width leaves the cursor in the
        # wrap state, and some terminals (tmux) then count an extra line, which Rich does not erase
        width = max(40, self.console.width - 1)
        elapsed = timedelta(seconds=int(time.monotonic() - self.started))
        eta = "—" if snap["eta"] is None else str(timedelta(seconds=int(snap["eta"])))
        bar_width = min(30, max(10, width // 4))
        top = Table.grid(padding=(0, 1))
        top.add_column(width=bar_width, no_wrap=True)
        top.add_column(no_wrap=True, overflow="ellipsis", max_width=width - bar_width - 1)
        top.add_row(ProgressBar(total=max(self.total, 1), completed=snap["done"], width=bar_width),
                    Text(f"{snap['done']}/{self.total} runs · {len(snap['running'])} running · elapsed {elapsed} · "
                         f"ETA {eta}", style="bold", no_wrap=True, overflow="ellipsis"))
        counts = Text.assemble(
            f"completed {c['completed']} · skipped {c['skipped']} · ",
            ("failed " + str(c["failed"]), "red" if c["failed"] else ""), " · ",
            ("diverged " + str(c["diverged"]), "yellow" if c["diverged"] else ""),
            no_wrap=True, overflow="ellipsis")
        counts.truncate(width, overflow="ellipsis")
        rows = Table.grid(padding=(0, 2), expand=True)
        rows.width = width
        rows.add_column(no_wrap=True, overflow="ellipsis", ratio=1)  # the run's name takes what is left
        rows.add_column(no_wrap=True, width=26)
        rows.add_column(no_wrap=True, width=18)
        lines = min(self.workers, self.max_rows)
        for name, progress in snap["running"][:lines]:
            step, total = progress.get("step"), progress.get("total_steps")
            where = f"step {step}/{total} ep {progress.get('epoch', 0):.2f}" if step else "starting"
            if progress.get("test_acc") is not None:
                score = f"test acc {100 * progress['test_acc']:.2f}%"
            else:
                score = f"test loss {progress['test_loss']:.4f}" if progress.get("test_loss") is not None else ""
            rows.add_row(Text(self._short(name), no_wrap=True, overflow="ellipsis"), where, score)
        for _ in range(lines - min(lines, len(snap["running"]))):
            rows.add_row("", "", "")  # idle workers: blank lines keep the frame's height
        return Group(top, counts, rows)

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


def outcome_line(summary: records.RunRecord, name: str) -> str:
    """"completed: test acc 95.82% (best ... at epoch ...), train loss ..., 6.8s, NAME": the line a
    finished run gets on the console (the job says it; under a cluster launcher, the sweep)."""
    if summary["status"] == "failed":
        return f"failed: {summary['error']} ({name})"
    final, best = summary["final"], summary["best"]
    if final.get("test_acc") is None:  # regression
        score = f"test loss {final['test_loss']:.4f} (best {best['test_loss']:.4f} at epoch {best['epoch']:.2f})"
    else:
        score = (f"test acc {100 * final['test_acc']:.2f}% (best {100 * best['test_acc']:.2f}% at epoch "
                 f"{best['epoch']:.2f})")
    return f"{summary['status']}: {score}, train loss {final['train_loss']:.4f}, {summary['wall_s']:.1f}s, {name}"


class FinishedLines:
    """--quiet (or piped) under a launcher whose jobs do not write to this terminal (submitit's,
    local or Slurm: their lines go to .submitit/*_log.out): the sweep prints each run's line
    itself, as it finishes, from the records."""

    def __init__(self, sweep_dir: Path, finished_before: dict[Path, str], interval: float = 1.0):
        self.sweep_dir, self.finished_before, self.interval = sweep_dir, finished_before, interval
        self.said: set[Path] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll(self) -> None:
        for path in sorted(self.sweep_dir.rglob(records.SUMMARY)):
            folder = path.parent
            summary = records.read_summary(folder)
            if not summary or folder in self.said or summary.get("status") not in ("completed", "diverged", "failed"):
                continue
            if self.finished_before.get(folder) == str(summary.get("finished_at")):
                continue  # finished before this sweep: skipped, not said
            self.said.add(folder)
            try:
                print(outcome_line(summary, folder.name), flush=True)
            except (KeyError, TypeError, ValueError):  # a record of an older shape: its name is enough
                print(f"{summary.get('status')}: {folder.name}", flush=True)

    def start(self) -> None:
        def loop() -> None:
            while not self._stop.wait(self.interval):
                self.poll()

        self._thread = threading.Thread(target=loop, name="bnbench-finished-lines", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.poll()  # the last ones

