"""Ctrl-C, SIGTERM and a cluster's time-limit signals, handled the same way (no torch here: the
CLI imports this module).

Schedulers (Slurm, Kubernetes) send SIGTERM before SIGKILL; a user presses Ctrl-C. Either
way a run that is training stops between two steps, saves its checkpoint and records itself
as interrupted, and the command exits 130 (SIGINT) or 143 (SIGTERM) with one line that says
whether a checkpoint was saved.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from contextlib import contextmanager
from typing import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)
# What a cluster sends before a time limit: submitit asks Slurm for SIGUSR2 (--signal=USR2@90) and
# requeues the job from its own handler; Slurm's --signal may name SIGUSR1. Training saves a
# checkpoint between two steps first, then hands the signal to that handler (or, with none,
# stops as SIGTERM does).
HANDOVER = tuple(getattr(signal, name) for name in ("SIGUSR1", "SIGUSR2") if hasattr(signal, name))


class Interrupted(KeyboardInterrupt):
    """A run was stopped by ``signum``; ``step`` is the last finished step (None: before training
    started) and ``saved`` says whether its checkpoint holds that step; ``handover`` is the
    handler the signal belongs to after bnbench saved (submitit's), or None."""

    def __init__(self, message: str, signum: int = signal.SIGINT, step: int | None = None, saved: bool = False,
                 handover=None):
        super().__init__(message)
        self.signum, self.step, self.saved, self.handover = signum, step, saved, handover


def hand_over(err: BaseException) -> None:
    """Pass a cluster's time-limit signal on to the handler it was meant for (submitit's requeue),
    once the run saved its checkpoint and recorded itself: that handler requeues the job and
    exits, or, out of requeues, raises; either way the record says interrupted."""
    handover = getattr(err, "handover", None)
    if callable(handover):
        handover(err.signum, None)


def _raise(signum, frame) -> None:
    raise Interrupted("terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted", signum=signum)


def terminate_like_ctrl_c() -> None:
    """Make SIGTERM raise as Ctrl-C does (a KeyboardInterrupt), so a run stopped by a scheduler
    before or between training loops still records itself and exits with one line. Ctrl-C gets
    the same handler unless the process was started ignoring it (a background job)."""
    if threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGTERM, _raise)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, _raise)


@contextmanager
def deferred() -> Iterator[dict]:
    """Turn Ctrl-C and SIGTERM into a flag checked between steps (``flag["signum"]``), so a
    checkpoint is never half a step."""
    flag: dict = {"signum": None}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        flag["signum"] = signum

    previous = {s: signal.signal(s, handler) for s in (*SIGNALS, *HANDOVER)}
    flag["previous"] = previous
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


LAUNCHER_PID = "BNBENCH_LAUNCHER_PID"  # set by the CLI: the pid of the sweep command
_watching = False


def exit_with_launcher(poll_s: float = 1.0, grace_s: float = 30.0) -> None:
    """In a sweep's worker process whose parent is the sweep command (joblib's workers): when
    that command dies (SIGKILL, a lost terminal), stop the job here as SIGTERM does (the run
    saves its checkpoint and records itself) and exit, rather than finish a run nobody collects
    and then sit idle. Workers of other launchers (Ray, submitit) have other parents: no-op."""
    global _watching
    parent = os.getppid()
    if _watching or os.environ.get(LAUNCHER_PID) != str(parent):
        return
    _watching = True
    terminate_like_ctrl_c()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os.kill(os.getpid(), signal.SIGTERM)  # handled between steps by the training loop
        time.sleep(grace_s)  # time to save the checkpoint; then go, whatever the worker's loop does
        os._exit(128 + signal.SIGTERM)

    threading.Thread(target=watch, name="bnbench-launcher-watch", daemon=True).start()


def exit_code(err: BaseException) -> int:
    """The shell's convention: 128 + the signal's number (130 for Ctrl-C, 143 for SIGTERM)."""
    return 128 + int(getattr(err, "signum", signal.SIGINT))


def describe(err: BaseException) -> str:
    """One line for the user: what stopped, and whether anything was saved."""
    signum = getattr(err, "signum", None)
    what = "terminated (SIGTERM)" if signum == signal.SIGTERM else \
        f"stopped by {signal.Signals(signum).name} (a time limit)" if signum in HANDOVER else "interrupted"
    if getattr(err, "saved", False):
        return (f"{what} at step {err.step}; the run saved a checkpoint there, and finished runs are kept: run the "
                "same command again to resume")
    if isinstance(err, Interrupted) and err.step is not None:
        return (f"{what} at step {err.step}, before any checkpoint (its runs restart from step 0; finished runs are "
                "kept): run the same command again")
    return f"{what} before a run saved a checkpoint; finished runs are kept: run the same command again"
