"""Hydra launcher plugins, end to end through the ``bnbench`` CLI in a subprocess.

Each sweep trains the same two tiny runs (digits, 1 epoch, one torch thread per run). With the
thread count fixed, a run's numbers cannot depend on which process ran it or what ran beside
it, so every launcher must reproduce the sequential (basic launcher) records run for run,
exactly. The presets under test live in conf/hydra/launcher/.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
import yaml
from conftest import run_cli

# 2 cells x 2 seeds: the sweeper plans 2 jobs, each training one cell's seeds as a stack
# (trainer.stack_size=2 keeps the cells whole whatever the machine's core count).
GRID = ["dataset=digits", "trainer.epochs=1", "trainer.threads=1", "trainer.log_progress=false",
        "norm=none,bn_before", "seed=0,1", "trainer.stack_size=2"]


def has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def bnbench(*args: str, cwd: Path, env: dict[str, str] | None = None, check: bool = True):
    proc = run_cli(*args, cwd=cwd, env=env)
    if check:
        assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def sweep(tmp: Path, name: str, *launcher: str, env: dict[str, str] | None = None) -> Path:
    bnbench("run", "-m", *launcher, f"results_dir={tmp}", f"sweep.name={name}", *GRID, cwd=tmp, env=env)
    return tmp / name


def outcomes(sweep_dir: Path) -> dict[str, dict]:
    """Final metrics of each run, keyed by its folder (the override_dirname)."""
    out = {}
    for path in sorted(sweep_dir.glob("*/summary.json")):
        summary = json.loads(path.read_text())
        assert summary["status"] == "completed", f"{path.parent.name}: {summary['error']}"
        assert summary["stacked_seeds"] == [0, 1], "each cell's seeds trained as one planned stack"
        out[path.parent.name] = summary["final"]
    assert (sweep_dir / "results.csv").is_file(), "the SweepReport callback did not run"
    return out


def launcher_cfg(sweep_dir: Path) -> dict:
    return yaml.safe_load((sweep_dir / "multirun.yaml").read_text())["hydra"]["launcher"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, dict]:
    """The sequential sweep every launcher is compared with."""
    tmp = tmp_path_factory.mktemp("basic")
    result = outcomes(sweep(tmp, "basic"))
    assert len(result) == 4 and all(0 < r["test_acc"] <= 1 for r in result.values())
    return result


@pytest.mark.slow
def test_joblib_two_workers_match_sequential(tmp_path, reference):
    sweep_dir = sweep(tmp_path, "joblib", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2")
    cfg = launcher_cfg(sweep_dir)
    assert cfg["_target_"].endswith("JoblibLauncher") and cfg["n_jobs"] == 2
    assert outcomes(sweep_dir) == reference


@pytest.mark.slow
def test_submitit_local_matches_sequential(tmp_path, reference):
    sweep_dir = sweep(tmp_path, "submitit", "hydra/launcher=slurm_local")
    assert launcher_cfg(sweep_dir)["_target_"].endswith("submitit_launcher.LocalLauncher")
    # Each job went through submitit: a pickled submission and its result per job.
    assert len(list((sweep_dir / ".submitit").glob("*/*_result.pkl"))) == 2
    assert outcomes(sweep_dir) == reference


@pytest.mark.slow
def test_slurm_preset_submits_the_expected_sbatch_script(tmp_path):
    """No cluster here: stand-ins for srun (submitit looks for it) and sbatch (keeps the
    submission file it is given, then refuses the job) show what the preset would submit."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "sbatch").write_text('#!/bin/sh\ncp "$1" "$FAKE_SBATCH_COPY"\necho "fake sbatch: refused" >&2\nexit 1\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    copy = tmp_path / "submitted.sh"
    proc = bnbench("run", "-m", "hydra/launcher=slurm", "hydra.launcher.partition=gpu", f"results_dir={tmp_path}",
                   "sweep.name=slurm", *GRID, cwd=tmp_path, check=False,
                   env={"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_SBATCH_COPY": str(copy)})
    assert proc.returncode != 0 and "fake sbatch: refused" in proc.stdout + proc.stderr
    script = copy.read_text()
    for line in ["--array=0-1%2", "--partition=gpu", "--gpus-per-node=1", "--cpus-per-task=4", "--mem=16GB",
                 "--time=120", "--ntasks-per-node=1"]:
        assert f"#SBATCH {line}\n" in script, f"#SBATCH {line} missing from:\n{script}"
    assert "-m submitit.core._submit" in script
    assert not list((tmp_path / "slurm").glob("*/summary.json")), "nothing should have run locally"


@pytest.mark.slow
@pytest.mark.skipif(not has_module("hydra_plugins.hydra_ray_launcher"),
                    reason="hydra-ray-launcher is not installed (pip install 'bnbench[ray]')")
def test_ray_local_matches_sequential(tmp_path, reference):
    sweep_dir = sweep(tmp_path, "ray", "hydra/launcher=ray_local",
                      env={"RAY_USAGE_STATS_ENABLED": "0"})  # no usage report attempts offline
    assert launcher_cfg(sweep_dir)["_target_"].endswith("RayLauncher")
    assert outcomes(sweep_dir) == reference


@pytest.mark.slow
def test_parallel_workers_exit_when_the_sweep_command_is_killed(tmp_path):
    """SIGKILL to the sweep command alone: its joblib workers stop their runs as SIGTERM would
    (checkpoint saved, run recorded as interrupted) and exit, instead of lingering."""
    import signal
    import subprocess
    import sys
    import time

    env = {**os.environ, "BNBENCH_RESULTS": str(tmp_path / "results")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bnbench.cli", "run", "-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2",
         "norm=none,bn_before", "seed=0", "sweep.name=orphans", "trainer.epochs=200", "trainer.threads=1",
         "trainer.checkpoint_every_s=0",
         "trainer.log_progress=false", "--quiet"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    sweep_dir = tmp_path / "results" / "orphans"

    def summaries():
        out = []
        for path in sweep_dir.glob("*/summary.json"):
            try:
                out.append(json.loads(path.read_text()))
            except ValueError:  # being replaced right now
                pass
        return out

    def alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] if Path(f"/proc/{pid}/stat").exists() else "X"
        return state != "Z"

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (len(summaries()) < 2 or len(list(sweep_dir.glob("*/checkpoint.pt"))) < 2):
        time.sleep(0.1)
    workers = {s["pid"] for s in summaries()}
    assert len(workers) == 2 and proc.pid not in workers, "two runs in two worker processes"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    deadline = time.monotonic() + 45
    while time.monotonic() < deadline and any(alive(pid) for pid in workers):
        time.sleep(0.2)
    assert not any(alive(pid) for pid in workers), "workers outlived the sweep command"
    records = summaries()
    assert all(r["status"] == "interrupted" and "SIGTERM" in r["error"] for r in records), records
    assert len(list(sweep_dir.glob("*/checkpoint.pt"))) == 2


@pytest.mark.slow
def test_quiet_under_slurm_local_prints_a_line_per_finished_run(tmp_path):
    """--quiet under slurm_local printed no line per finished run (the jobs' lines went to
    .submitit/*_log.out): the sweep prints them from the records."""
    proc = bnbench("run", "-m", "hydra/launcher=slurm_local", f"results_dir={tmp_path}", "sweep.name=quiet", *GRID,
                   "--quiet", cwd=tmp_path)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("completed: test acc")]
    assert len(lines) == 4, proc.stdout[-3000:]
    assert len(set(lines)) == 4, "each run once"


@pytest.mark.slow
def test_a_job_stopped_by_sigterm_under_slurm_local_is_said_as_such_and_exits_143(tmp_path):
    """SIGTERM to one job under slurm_local: the sweep said "the launcher could not start the
    jobs", exited 1 with a 37-line traceback ending in Interrupted, and rebuilt no report."""
    import json
    import signal
    import subprocess
    import sys
    import time

    env = {**os.environ, "BNBENCH_RESULTS": str(tmp_path / "results")}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.Popen([sys.executable, "-m", "bnbench.cli", "run", "-m", "hydra/launcher=slurm_local",
                             "norm=none,bn_before", "seed=0", "trainer.epochs=300", "trainer.threads=1",
                             "trainer.log_progress=false", "sweep.name=killed", "--quiet"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sweep_dir = tmp_path / "results" / "killed"
    pid, deadline = None, time.time() + 120
    while pid is None and time.time() < deadline:
        time.sleep(0.2)
        for path in sweep_dir.glob("*/summary.json"):
            try:
                record = json.loads(path.read_text())
            except ValueError:
                continue
            if record.get("status") == "running" and record.get("progress"):
                pid = record["pid"]
                break
    assert pid is not None, "no job started training"
    os.kill(pid, signal.SIGTERM)  # the job's own process, as a cluster would
    out, err = proc.communicate(timeout=300)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert proc.returncode == 143, err[-3000:]
    assert len(errors) == 1 and "was terminated (SIGTERM)" in errors[0] and "could not start" not in err
    assert "Traceback" not in err
    assert (sweep_dir / "report.md").is_file() and (sweep_dir / "results.csv").is_file()
