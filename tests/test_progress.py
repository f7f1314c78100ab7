"""The live sweep view: one frame of fixed height whose lines never wrap, drawn from records."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from bnbench.launch.progress import SweepMonitor

LONG = "ablation=placement,activation=leaky_relu,dataset.train_size=6000,norm=bn_before,seed={},trainer.epochs=2"


def _frame(sweep: Path, width: int, workers: int = 2) -> list[str]:
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, force_terminal=True, color_system=None, legacy_windows=False)
    console.print(SweepMonitor(sweep, total=150, finished_before={}, workers=workers, console=console).render())
    return buffer.getvalue().splitlines()


def _write(run: Path, summary: dict) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / "summary.json").write_text(json.dumps(summary))


def _read_terminal(master: int, proc, on_output=None, timeout: float = 240) -> str:
    """Everything a command wrote to its pseudo-terminal until it ended (killed past
    ``timeout``); ``on_output(bytes so far)`` is called before each wait, e.g. to send a signal."""
    import os
    import select
    import time

    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if on_output is not None:
            on_output(out)
        if not select.select([master], [], [], 0.5)[0]:
            if proc.poll() is not None:
                break
            continue  # nothing yet; check the deadline again rather than block on read
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the terminal closed: the command ended
            break
        if not chunk:
            break
        out += chunk
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=30)
    os.close(master)
    return out.decode("utf-8", "replace")


def test_frames_fit_80_columns_and_keep_their_height(tmp_path):
    heights = set()
    for running in range(4):  # 0, 1, 2 and 3 running runs on 2 workers
        sweep = tmp_path / f"s{running}"
        sweep.mkdir()
        for i in range(running):
            _write(sweep / LONG.format(i), {"status": "running", "progress": {
                "step": 12000, "total_steps": 200000, "epoch": 12.5, "test_acc": 0.87654}})
        _write(sweep / LONG.format(9), {"status": "diverged", "finished_at": "t", "wall_s": 3.0})
        frame = _frame(sweep, 80)
        assert all(len(line.rstrip()) < 80 for line in frame), frame  # < 80: a full line makes tmux wrap
        heights.add(len(frame))
        assert sum("running" in line for line in frame) == 1, "the count of running runs appears once"
    assert heights == {4}, "two status lines and one line per worker, whatever is running"
    wide = _frame(tmp_path / "s2", 160)
    assert all(len(line.rstrip()) < 160 for line in wide) and LONG.format(0) in "\n".join(wide)


@pytest.mark.slow
def test_a_parallel_sweep_on_an_80_column_terminal_keeps_workers_off_the_screen(tmp_path):
    """In a real pseudo-terminal of 80 x 24: the live view is drawn, and the workers, which share
    the terminal, print nothing into it (each line would leave a stale copy of the frame)."""
    import fcntl
    import os
    import pty
    import struct
    import subprocess
    import sys
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    env = {**os.environ, "BNBENCH_RESULTS": str(tmp_path / "results"), "TERM": "xterm-256color"}
    env.pop("COLUMNS", None)
    proc = subprocess.Popen([sys.executable, "-m", "bnbench.cli", "run", "-m", "hydra/launcher=parallel",
                             "norm=none,bn_before", "seed=0,1", "trainer.epochs=20", "trainer.threads=1",
                             "sweep.name=tty"], stdin=slave, stdout=slave, stderr=slave, cwd=tmp_path, env=env)
    os.close(slave)
    text = _read_terminal(master, proc)
    assert proc.returncode == 0, text[-3000:]
    assert "runs · " in text and "running" in text, "the live view was drawn"
    assert "completed: test acc" not in text, "a worker printed into the live view"
    assert "final test accuracy" in text


def test_a_running_run_shows_what_varies_and_the_eta_comes_with_the_first_steps(tmp_path):
    """At 80 columns a long run name showed only its fixed prefix; the ETA was "—" until a run
    ended, then counted a stack's time once per seed."""
    import yaml

    sweep = tmp_path / "s"
    sweep.mkdir()
    (sweep / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"sweeper": {"params": {
        "norm": "none,bn_before", "seed": "0,1"}}, "overrides": {"task": ["ablation=placement"]}}}))
    _write(sweep / LONG.format(0), {"status": "running", "progress": {"step": 50, "total_steps": 100, "epoch": 1.0}})
    monitor = SweepMonitor(sweep, total=4, finished_before={}, workers=2, console=Console(width=80))
    monitor.started -= 10.0  # 10 s in, half of one of 4 runs done: 70 s to go at this pace
    snap = monitor.snapshot()
    assert snap["eta"] == pytest.approx(70.0, rel=0.05)
    frame = "\n".join(_frame(sweep, 80))
    assert "norm=bn_before,seed=0" in frame and "ablation=" not in frame


def test_the_end_of_sweep_tables_at_80_columns_cut_no_value_and_say_what_they_left_out():
    """At 80 columns the tables cut factor values ("bn_bef…"), wrapped intervals onto three
    lines and dropped columns silently. Now each shown column is whole, and the rest are named."""
    from bnbench import report

    reference = Path(__file__).resolve().parent.parent / "results" / "reference" / "placement"
    tables = report.build(reference, report.ReportOptions(margin=0.5))
    buffer = io.StringIO()
    report.print_tables(tables, Console(file=buffer, width=80, color_system=None))
    text = buffer.getvalue()
    assert all(len(line) <= 80 for line in text.splitlines())
    assert "…" not in text and "bn_before" in text and "leaky_relu" in text and "baseline did not learn" in text
    assert "left out at 80 columns:" in text and "report.md has every column" in text
    assert "│ bn_after  │ sigmoid    │ bn_before │      +4.18 │" in text


@pytest.mark.slow
def test_ctrl_c_in_a_terminal_leaves_its_one_line_last_on_the_screen(tmp_path):
    """Ctrl-C in a real terminal: the live view's last frame was drawn over the line that says
    what was saved (a stray character was left). The view stops first, then the line is written."""
    import os
    import pty
    import signal
    import subprocess
    import sys

    master, slave = pty.openpty()
    env = {**os.environ, "BNBENCH_RESULTS": str(tmp_path / "results"), "TERM": "xterm-256color"}
    env.pop("COLUMNS", None)
    proc = subprocess.Popen([sys.executable, "-m", "bnbench.cli", "run", "-m", "norm=none,bn_before", "seed=0,1",
                             "trainer.epochs=200", "trainer.threads=1", "sweep.name=tty"],
                            stdin=slave, stdout=slave, stderr=slave, cwd=tmp_path, env=env, start_new_session=True)
    os.close(slave)
    sent = []

    def ctrl_c(out: bytes) -> None:
        if not sent and b"step " in out:  # training has begun: Ctrl-C, to the terminal's process group
            os.killpg(proc.pid, signal.SIGINT)
            sent.append(True)

    text = _read_terminal(master, proc, ctrl_c)
    assert sent and proc.returncode == 130, text[-2000:]
    # after the view's last erase, only the line (and its newline) is written
    tail = text[text.rfind("\x1b[2K") + 4:] if "\x1b[2K" in text else text
    assert "interrupted" in tail and "checkpoint" in tail, repr(text[-1500:])

