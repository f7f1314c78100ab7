"""Sweeps that survive: checkpoint resume, skipping finished runs, kills, Ctrl-C, failures."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from bnbench.job.checkpoint import Checkpoint
from conftest import CutOff, make_cfg, run_cli, train_until, without_wall_time

@pytest.mark.parametrize("overrides", [
    ("trainer.epochs=4",),  # checkpoints at epoch boundaries
    ("trainer.steps=70", "trainer.eval_every=10", "trainer.dropout=0.2", "trainer.lr_schedule=cosine",
     "optimizer=adam"),  # mid-epoch checkpoints, dropout RNG, schedule and optimizer state
])
def test_checkpoint_resume_equals_uninterrupted_run(tmp_path, overrides):
    cfg = make_cfg("norm=bn_before", "trainer.threads=1", "trainer.log_progress=false", *overrides)
    _, reference = train_until(cfg)
    checkpoint = Checkpoint(tmp_path / "checkpoint.pt", run_id="r1", every=1)
    with pytest.raises(CutOff):
        train_until(cfg, checkpoint, stop_after_evals=3)
    assert checkpoint.path.is_file()
    _, resumed = train_until(cfg, checkpoint)
    assert resumed.resumed_from_step > 0
    assert without_wall_time(resumed.history) == without_wall_time(reference.history)


class _Captured(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def bnbench_log():
    handler = _Captured()
    logging.getLogger("bnbench").addHandler(handler)
    yield handler.messages
    logging.getLogger("bnbench").removeHandler(handler)


def test_checkpoint_of_another_run_is_set_aside_and_said(tmp_path, bnbench_log):
    cfg = make_cfg("trainer.epochs=2", "trainer.threads=1", "trainer.log_progress=false")
    with pytest.raises(CutOff):
        train_until(cfg, Checkpoint(tmp_path / "c.pt", run_id="old", every=1), stop_after_evals=2)
    assert (tmp_path / "c.pt").is_file()  # saved after the first evaluation
    _, fresh = train_until(cfg, Checkpoint(tmp_path / "c.pt", run_id="new", every=1))
    assert fresh.resumed_from_step == 0
    assert any("belongs to another run" in m and "starts again from step 0" in m for m in bnbench_log)
    assert (tmp_path / "c.pt.unusable").is_file()


@pytest.mark.parametrize("damage", ["missing key", "wrong shapes", "bad position", "torn"])
def test_an_unusable_checkpoint_is_set_aside_never_a_permanent_failure(tmp_path, bnbench_log, damage):
    """A loadable but invalid checkpoint used to fail the run on every rerun (KeyError: 'pos')."""
    import torch

    from bnbench import records
    from bnbench.job.experiment import run_experiment

    cfg = make_cfg("trainer.epochs=3", "trainer.threads=1", "trainer.log_progress=false")
    run_dir = tmp_path / "run"
    checkpoint = Checkpoint(run_dir / "checkpoint.pt", run_id=records.run_identity(cfg), every=1)
    run_dir.mkdir()
    with pytest.raises(CutOff):
        train_until(cfg, checkpoint, stop_after_evals=2)
    state = torch.load(checkpoint.path, weights_only=True)
    if damage == "missing key":
        del state["pos"]
    elif damage == "wrong shapes":
        state["model"] = {k: torch.zeros(3) for k in state["model"]}
    elif damage == "bad position":
        state["pos"] = 10_000
    if damage == "torn":
        checkpoint.path.write_bytes(checkpoint.path.read_bytes()[:500])
    else:
        torch.save(state, checkpoint.path)
    _, reference = train_until(make_cfg("trainer.epochs=3", "trainer.threads=1", "trainer.log_progress=false"))
    summary = run_experiment(cfg, run_dir)
    assert summary["status"] == "completed" and "resumed_from_step" not in summary
    assert summary["final"]["test_acc"] == pytest.approx(reference.history[-1]["test_acc"]), "as a fresh run"
    assert any("is unusable" in m and "starts again from step 0" in m for m in bnbench_log), bnbench_log
    assert (run_dir / "checkpoint.pt.unusable").is_file() and not (run_dir / "checkpoint.pt").exists()


def _summaries(sweep: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/summary.json")}


@pytest.mark.slow
def test_rerun_skips_finished_runs_and_adds_no_rows(tmp_path):
    args = ("run", "-m", "norm=none,bn_before", "seed=0,1", "sweep.name=again", "trainer.epochs=1",
            "trainer.threads=1")
    first = run_cli(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    sweep = tmp_path / "results" / "again"
    before = _summaries(sweep)
    second = run_cli(*args, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "4 runs were already complete and were skipped" in second.stdout
    assert _summaries(sweep) == before  # nothing redone, nothing rewritten
    assert len(pd.read_csv(sweep / "results.csv")) == 4
    # a grown grid runs only the new cells
    third = run_cli(*args[:-4], "seed=0,1,2", *args[-3:], cwd=tmp_path)
    assert third.returncode == 0, third.stderr
    assert "4 runs were already complete" in third.stdout
    assert "4 of the 6 runs are finished already with this config: skipped" in third.stderr + third.stdout
    assert len(pd.read_csv(sweep / "results.csv")) == 6
    # a changed setting that keeps the folder names (trainer.save_final) is another run: said so,
    # and retrained, never "skipped"
    fourth = run_cli(*args, "trainer.save_final=true", "--quiet", cwd=tmp_path)
    assert fourth.returncode == 0, fourth.stderr
    said = fourth.stderr + fourth.stdout
    assert "4 finished records are of another config" in said and "those runs train again" in said
    assert "finished already" not in said and "were skipped" not in said, [l for l in said.splitlines() if "finished already" in l or "skipped" in l]


@pytest.mark.slow
def test_changed_config_is_a_different_run(tmp_path):
    """Same command, same run folder, but a default changed in the config files: rerun, not skip."""
    import shutil

    from bnbench.config import config_dir

    conf = tmp_path / "conf"
    shutil.copytree(config_dir(), conf)
    trainer_yaml = conf / "trainer" / "default.yaml"
    original = trainer_yaml.read_text()
    base = ("run", "-m", "seed=0", "norm=none", "sweep.name=changed", "trainer.threads=1")
    env = {"BNBENCH_CONFIG_DIR": str(conf)}
    trainer_yaml.write_text(original.replace("epochs: 10", "epochs: 1"))
    assert run_cli(*base, cwd=tmp_path, env=env).returncode == 0
    (record,) = (tmp_path / "results" / "changed").glob("*/summary.json")
    old = json.loads(record.read_text())
    trainer_yaml.write_text(original.replace("epochs: 10", "epochs: 2"))
    proc = run_cli(*base, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    new = json.loads(record.read_text())
    assert "config or code changed" in proc.stdout
    assert new["run_id"] != old["run_id"] and (old["epochs"], new["epochs"]) == (1, 2)


def _default_sigint() -> None:
    # as in a terminal: a test runner started in the background may ignore SIGINT, and children inherit that
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start_sweep(tmp_path: Path, *args: str, stderr=subprocess.DEVNULL) -> subprocess.Popen:
    env = {**os.environ, "BNBENCH_RESULTS": str(tmp_path / "results")}
    return subprocess.Popen([sys.executable, "-m", "bnbench.cli", "run", "-m", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=stderr, text=True, start_new_session=True,
                            preexec_fn=_default_sigint)


def _wait_for(predicate, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting for the sweep")


# trainer.checkpoint_every_s=0: a checkpoint at every evaluation (the tests wait for one)
SLOW_SWEEP = ("norm=none,bn_before", "seed=0,1", "sweep.name=killed", "trainer.epochs=30", "trainer.threads=1",
              "trainer.checkpoint_every_s=0",
              "dataset.train_size=600")


@pytest.mark.slow
def test_sigkill_mid_sweep_then_rerun_completes_everything(tmp_path):
    sweep = tmp_path / "results" / "killed"
    proc = _start_sweep(tmp_path, *SLOW_SWEEP)

    def one_done_and_one_checkpointed():
        done = [s for s in _summaries(sweep).values() if s["status"] == "completed"] if sweep.is_dir() else []
        return len(done) >= 1 and any(sweep.glob("*/checkpoint.pt"))

    try:
        _wait_for(one_done_and_one_checkpointed)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finished_before = {k: v for k, v in _summaries(sweep).items() if v["status"] == "completed"}
    cut_off = [p.parent.name for p in sweep.glob("*/checkpoint.pt")]
    assert finished_before and cut_off

    rerun = run_cli("run", "-m", *SLOW_SWEEP, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    after = _summaries(sweep)
    assert len(after) == 4 and {s["status"] for s in after.values()} == {"completed"}
    for name, summary in finished_before.items():
        assert after[name] == summary, "a completed run was redone"
    assert any(after[name].get("resumed_from_step", 0) > 0 for name in cut_off)
    assert not list(sweep.glob("*/checkpoint.pt"))
    runs = pd.read_csv(sweep / "results.csv")
    assert len(runs) == 4 and runs["run"].is_unique
    # nothing half-written: every record parses (the temp files of a killed write are not records)
    for path in sweep.glob("*/metrics.csv"):
        assert len(pd.read_csv(path)) == 30


@pytest.mark.slow
def test_ctrl_c_saves_state_and_rerun_resumes(tmp_path):
    args = ("norm=bn_before", "seed=0", "sweep.name=ctrlc", "trainer.epochs=30", "trainer.threads=1",
            "trainer.checkpoint_every_s=0",
            "dataset.train_size=600")
    sweep = tmp_path / "results" / "ctrlc"
    proc = _start_sweep(tmp_path, *args)
    _wait_for(lambda: any(sweep.glob("*/checkpoint.pt")))
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    (summary,) = _summaries(sweep).values()
    assert summary["status"] == "interrupted"
    rerun = run_cli("run", "-m", *args, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    (summary,) = _summaries(sweep).values()
    assert summary["status"] == "completed" and summary["resumed_from_step"] > 0


@pytest.mark.slow
def test_sigterm_is_handled_like_ctrl_c(tmp_path):
    """Schedulers send SIGTERM before SIGKILL: save the checkpoint, say so, exit 143."""
    args = ("norm=bn_before", "seed=0", "sweep.name=term", "trainer.epochs=30", "trainer.threads=1",
            "trainer.checkpoint_every_s=0",
            "dataset.train_size=600")
    sweep = tmp_path / "results" / "term"
    proc = _start_sweep(tmp_path, *args, stderr=subprocess.PIPE)
    _wait_for(lambda: any(sweep.glob("*/checkpoint.pt")))
    os.kill(proc.pid, signal.SIGTERM)  # the main process only, as a scheduler's first signal
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143
    lines = [line for line in stderr.splitlines() if line.strip() and "HYDRA" not in line]
    assert len(lines) == 1 and "terminated (SIGTERM) at step" in lines[0] and "saved a checkpoint" in lines[0]
    (summary,) = _summaries(sweep).values()
    assert summary["status"] == "interrupted" and "SIGTERM" in summary["error"]
    rerun = run_cli("run", "-m", *args, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    (summary,) = _summaries(sweep).values()
    assert summary["status"] == "completed" and summary["resumed_from_step"] > 0


@pytest.mark.slow
def test_ctrl_c_before_training_claims_no_checkpoint(tmp_path):
    """A run stopped while it loads its data has no checkpoint, and the message says so."""
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    os.mkfifo(raw / "train-images-idx3-ubyte.gz")  # unpacking it waits for a writer: the run blocks in loading
    args = ("dataset=mnist", f"dataset.root={tmp_path / 'data'}", "dataset.download=false", "seed=0",
            "sweep.name=early", "trainer.threads=1")
    sweep = tmp_path / "results" / "early"
    proc = _start_sweep(tmp_path, *args, stderr=subprocess.PIPE)
    _wait_for(lambda: any(s.get("status") == "running" for s in _summaries(sweep).values()))
    # wait until it blocks in the FIFO's open (Linux: wait_for_partner), not in an import: a
    # third-party bare `except:` there could swallow the interrupt, and the run would then block
    wchan = Path(f"/proc/{proc.pid}/wchan")
    _wait_for(lambda: not wchan.exists() or wchan.read_text().strip() == "wait_for_partner")
    os.killpg(proc.pid, signal.SIGINT)
    try:
        _, stderr = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # leave no process blocked on the FIFO
        raise
    assert proc.returncode == 130
    lines = [line for line in stderr.splitlines() if line.strip() and "HYDRA" not in line]
    assert len(lines) == 1 and "before a run saved a checkpoint" in lines[0] and "Traceback" not in stderr
    (summary,) = _summaries(sweep).values()
    assert summary["status"] == "interrupted" and not any(sweep.glob("*/checkpoint.pt"))


@pytest.mark.slow
def test_failures_and_divergence_recorded_while_sweep_goes_on(tmp_path):
    proc = run_cli("run", "-m", "norm=none", "seed=0", "optimizer.lr=1e6,0.1", "activation.name=relu,nope",
                   "trainer.epochs=3", "trainer.threads=1", cwd=tmp_path)
    assert proc.returncode == 1  # failed runs make the sweep fail ...
    assert "2 of 4 runs failed" in proc.stderr
    sweep = next((tmp_path / "results").iterdir())
    runs = pd.read_csv(sweep / "results.csv")
    assert sorted(runs["status"]) == ["completed", "diverged", "failed", "failed"]


@pytest.mark.slow
def test_divergence_alone_is_not_a_failure(tmp_path):
    proc = run_cli("run", "-m", "norm=none", "seed=0", "optimizer.lr=1e6,0.1", "trainer.epochs=3",
                   "trainer.threads=1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr  # ... diverged runs are results
    assert "1 diverged" in (next((tmp_path / "results").iterdir()) / "report.md").read_text()


@pytest.mark.slow
def test_fail_fast_stops_at_the_first_failure(tmp_path):
    proc = run_cli("run", "-m", "--fail-fast", "activation.name=nope,relu", "norm=none", "seed=0", "sweep.name=ff",
                   "trainer.epochs=1", "trainer.threads=1", cwd=tmp_path)
    assert proc.returncode == 1
    assert "--fail-fast" in proc.stderr and "nope" in proc.stderr and "Traceback" not in proc.stderr
    ran = [p.parent.name for p in (tmp_path / "results" / "ff").glob("*/summary.json")]
    assert len(ran) == 1 and "nope" in ran[0]


def test_a_run_held_by_another_process_is_not_trained_twice(tmp_path):
    import fcntl

    from bnbench.job.experiment import run_experiment

    tmp_path.mkdir(exist_ok=True)
    other = open(tmp_path / ".run.lock", "w")
    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another worker is training this run
    cfg = make_cfg("trainer.epochs=1", "trainer.threads=1", "trainer.log_progress=false")
    try:
        summary = run_experiment(cfg, tmp_path)
    finally:
        other.close()
    assert summary["skipped"] and summary["status"] == "running"
    assert not (tmp_path / "summary.json").exists()
    assert run_experiment(cfg, tmp_path)["status"] == "completed"  # once free, it runs


def test_a_corrupt_summary_is_said_and_the_run_trained_again(tmp_path):
    from bnbench.config import compose_config
    from bnbench.job.experiment import run_experiment

    cfg = compose_config("trainer.epochs=1", "trainer.threads=1", "trainer.log_progress=false")
    first = run_experiment(cfg, tmp_path)
    assert first["status"] == "completed"
    (tmp_path / "summary.json").write_text("{ torn")
    records_seen = []
    handler = logging.Handler()
    handler.emit = records_seen.append
    logging.getLogger("bnbench").addHandler(handler)
    try:
        again = run_experiment(cfg, tmp_path)
    finally:
        logging.getLogger("bnbench").removeHandler(handler)
    assert again["status"] == "completed" and not again.get("skipped")
    assert any("summary.json is corrupt (not JSON); set aside as summary.json.unusable, training the run again"
               in r.getMessage() for r in records_seen)
    assert (tmp_path / "summary.json.unusable").read_text() == "{ torn"  # kept, never overwritten


def test_a_finished_record_with_a_malformed_body_is_set_aside_and_retrained_not_skipped_forever(tmp_path):
    """A summary.json with this run's id but "final": "oops" was skipped as finished on every
    rerun and crashed every report; now it is not a record: set aside, retrained, reported."""
    import json

    from bnbench import report
    from bnbench.config import compose_config
    from bnbench.job.experiment import run_experiment

    cfg = compose_config("trainer.epochs=1", "trainer.threads=1", "trainer.log_progress=false")
    (tmp_path / "sweep.json").write_text("{}")  # a sweep's folder, as bnbench run -m leaves it
    run = tmp_path / "seed=0"
    first = run_experiment(cfg, run, overrides=["seed=0"])
    broken = {**first, "final": "oops"}
    (run / "summary.json").write_text(json.dumps(broken))
    tables = report.build(tmp_path)  # the report reads it as a damaged record, not a crash
    assert tables.runs["status"].tolist() == ["incomplete"]
    assert any("summary.json is corrupt (not a run record: final is not a table)" in w for w in tables.warnings)
    again = run_experiment(cfg, run, overrides=["seed=0"])
    assert again["status"] == "completed" and not again.get("skipped")
    assert json.loads((run / "summary.json.unusable").read_text())["final"] == "oops"
    assert report.build(tmp_path).runs["status"].tolist() == ["completed"]


def test_a_summary_of_the_wrong_shape_is_not_a_phantom_cell(tmp_path):
    import json

    from bnbench import report
    from bnbench.config import compose_config
    from bnbench.job.experiment import run_experiment

    for norm in ("none", "bn_before"):
        overrides = [f"norm={norm}"]
        run_experiment(compose_config("trainer.epochs=1", "trainer.threads=1", "trainer.log_progress=false",
                                      *overrides), tmp_path / f"norm={norm}", overrides=overrides)
    (tmp_path / "stray").mkdir()
    (tmp_path / "stray" / "summary.json").write_text(json.dumps({"status": "completed", "accuracy": 0.9}))
    tables = report.build(tmp_path)
    assert tables.counts["completed"] == 2 and len(tables.runs) == 2
    assert sorted(tables.cells["norm"].astype(str)) == ["bn_before", "none"]  # no "(default)" cell
    assert any("stray: summary.json is corrupt (not a run record: a finished record without its run_id)" in w
               for w in tables.warnings)


class UncompletedJobError(RuntimeError):
    """Named as submitit's: what its SIGUSR2 handler raises when a job is out of requeues."""


@pytest.mark.parametrize("submitit_handler", [True, False])
def test_a_time_limit_signal_saves_between_steps_then_goes_to_submitit(tmp_path, submitit_handler):
    """SIGUSR2 (submitit's time-limit signal): nothing was saved at it, so each requeue retrained
    from the last per-epoch checkpoint; out of requeues the run was recorded failed and its
    metrics.csv rewritten with only a header. Now the run saves between two steps, records
    itself interrupted, and only then hands the signal to submitit's handler."""
    import threading
    import time

    import torch

    from bnbench.config import compose_config
    from bnbench.interrupts import Interrupted
    from bnbench.job.experiment import run_experiment

    calls = []

    def submitit(signum, frame):  # out of requeues
        calls.append(signum)
        raise UncompletedJobError("job 1 exceeded its time limit, no requeue left")

    previous = signal.signal(signal.SIGUSR2, submitit if submitit_handler else signal.SIG_DFL)
    cfg = compose_config("trainer.epochs=400", "trainer.threads=1", "trainer.log_progress=false",
                         "trainer.checkpoint_every_s=0")

    def send_when_training():
        for _ in range(600):
            time.sleep(0.02)
            try:
                if json.loads((tmp_path / "summary.json").read_text()).get("progress"):
                    os.kill(os.getpid(), signal.SIGUSR2)
                    return
            except (OSError, ValueError):
                continue

    sender = threading.Thread(target=send_when_training)
    sender.start()
    try:
        with pytest.raises(UncompletedJobError if submitit_handler else Interrupted) as stopped:
            run_experiment(cfg, tmp_path)
    finally:
        sender.join()
        signal.signal(signal.SIGUSR2, previous)
    record = json.loads((tmp_path / "summary.json").read_text())
    assert record["status"] == "interrupted" and "stopped by SIGUSR2 (a time limit)" in record["error"]
    assert "saved a checkpoint" in record["error"]
    step = int(record["error"].split(" at step ")[1].split(";")[0])
    checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert checkpoint["step"] == step > 0, "saved at the signal, between two steps"
    assert calls == ([signal.SIGUSR2] if submitit_handler else []), "handed to submitit once, after saving"
    if not submitit_handler:  # no scheduler's handler: it stops as SIGTERM does (exit 128 + 12)
        assert stopped.value.signum == signal.SIGUSR2
