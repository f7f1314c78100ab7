"""The `bnbench` command end to end, in subprocesses, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import make_cfg, run_cli, write_mnist_family

FAST = ("trainer.epochs=1", "trainer.threads=1")


def _sweep_dir(cwd: Path) -> Path:
    dirs = [p for p in (cwd / "results").iterdir() if p.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


@pytest.mark.slow
def test_default_grid_is_the_readme_command(tmp_path):
    """`bnbench run -m` with no arguments: norm x 3 seeds on digits, a table at the end."""
    proc = run_cli("run", "-m", "trainer.threads=1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    sweep = _sweep_dir(tmp_path)
    runs = pd.read_csv(sweep / "results.csv")
    assert len(runs) == 9 and set(runs["status"]) == {"completed"}
    assert sorted(runs["norm"].unique()) == ["bn_after", "bn_before", "none"]
    assert sorted(runs["seed"].unique()) == [0, 1, 2]
    report = (sweep / "report.md").read_text()
    for norm in ("none", "bn_before", "bn_after"):
        assert f"| {norm} | 3/3 |" in report  # rank | norm | seeds ok | ...
    assert "±" in report and "test acc" in proc.stdout


@pytest.mark.slow
def test_factorial_sweep_on_idx_files(tmp_path):
    write_mnist_family(tmp_path / "data", "FashionMNIST", n_train=240, n_test=60)
    proc = run_cli(
        "run", "-m", "model=mlp,alexnet", "norm=none,bn_before", "activation=relu,tanh", "seed=0,1",
        "dataset=fashion_mnist", *FAST,  # alexnet at its own size: model.channels is not a key of mlp
        cwd=tmp_path, env={"BNBENCH_DATA": str(tmp_path / "data")},
    )
    assert proc.returncode == 0, proc.stderr
    sweep = _sweep_dir(tmp_path)
    runs = pd.read_csv(sweep / "results.csv")
    assert len(runs) == 16 and set(runs["status"]) == {"completed"}
    assert {"model", "norm", "activation", "dataset"} <= set(runs.columns)
    assert set(runs["dataset"]) == {"fashion_mnist"}
    report = (sweep / "report.md").read_text()
    table_rows = [line for line in report.splitlines() if line.startswith("| ") and "2/2" in line]
    assert len(table_rows) == 8  # 2 models x 2 norms x 2 activations, 2 seeds each
    assert "`dataset=fashion_mnist`" in report
    # one folder per run, named by Hydra's override_dirname
    (run_dir,) = sweep.glob("activation=relu,dataset=fashion_mnist,*model=alexnet,norm=bn_before,seed=1,*")
    assert (run_dir / ".hydra" / "config.yaml").is_file() and (run_dir / "metrics.csv").is_file()
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"


@pytest.mark.slow
def test_single_run_prints_metrics(tmp_path):
    proc = run_cli("run", "norm=bn_after", "activation=gelu", "optimizer=adam", *FAST, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "completed: test acc" in proc.stdout and "epoch   1.00" in proc.stdout
    run_dirs = list((tmp_path / "results" / "runs").iterdir())
    assert len(run_dirs) == 1 and (run_dirs[0] / "summary.json").is_file()


def _assert_one_line_error(proc, *fragments):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout
    error_lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(error_lines) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in error_lines[0], error_lines[0]


@pytest.mark.slow
def test_missing_data_offline(tmp_path):
    proc = run_cli("run", "dataset=fashion_mnist", f"dataset.root={tmp_path / 'nowhere'}", "dataset.download=false",
                   *FAST, cwd=tmp_path)
    _assert_one_line_error(proc, str(tmp_path / "nowhere" / "FashionMNIST" / "raw"), "train-images-idx3-ubyte",
                           "dataset-fashion-mnist")


@pytest.mark.slow
def test_unwritable_results_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    proc = run_cli("run", f"results_dir={blocker / 'results'}", *FAST, cwd=tmp_path)
    _assert_one_line_error(proc, "cannot write to the output folder")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["../escaped", "/abs", "a/b", "..", "", "my sweep", "'my sweep'", "ablación"])
def test_a_sweep_name_is_one_folder_inside_results_dir(tmp_path, name):
    proc = run_cli("run", "-m", f"sweep.name={name}", "seed=0", *FAST, cwd=tmp_path)
    _assert_one_line_error(proc, "sweep.name", "one folder name")
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "results").exists()  # no empty folder left


@pytest.mark.slow
def test_a_sweep_over_two_names_is_refused_and_a_damaged_plan_is_named(tmp_path):
    proc = run_cli("run", "-m", "sweep.name=a,b", "seed=0", *FAST, cwd=tmp_path)
    _assert_one_line_error(proc, "sweep.name=a,b: a sweep has one name")
    assert not (tmp_path / "results").exists()
    from bnbench.errors import ConfigError
    from bnbench.launch import planning

    plans = tmp_path / "sweep" / planning.PLANS
    plans.mkdir(parents=True)
    (plans / "p.json").write_text('{"jobs": [{"members"')  # truncated
    with pytest.raises(ConfigError, match="the sweep's plan .* is damaged .*run the sweep command again"):
        planning.members(tmp_path / "sweep", "p", 0)


@pytest.mark.slow
def test_cfg_job_and_info_write_nothing(tmp_path):
    for flag in (("--cfg", "job"), ("--info",)):
        proc = run_cli("run", *flag, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_the_write_check_covers_the_folder_really_written(tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "taken").write_text("a file where the sweep folder would go")
    proc = run_cli("run", "-m", "sweep.name=taken", "seed=0", *FAST, cwd=tmp_path)
    _assert_one_line_error(proc, "cannot write to the output folder", "taken")
    blocker = tmp_path / "plain_file"
    blocker.write_text("x")
    proc = run_cli("run", f"hydra.run.dir={blocker / 'run'}", *FAST, cwd=tmp_path)
    _assert_one_line_error(proc, "cannot write to the output folder", "plain_file")


@pytest.mark.slow
def test_an_empty_sweep_is_an_error(tmp_path):
    proc = run_cli("run", "-m", "seed=range(0,0)", "sweep.name=empty", *FAST, cwd=tmp_path)
    _assert_one_line_error(proc, "the sweep has no jobs", "range(0,0)")


@pytest.mark.slow
def test_invalid_overrides_fail_at_composition(tmp_path):
    unknown_key = run_cli("run", "trainer.epochz=3", cwd=tmp_path)
    assert unknown_key.returncode != 0 and "epochz" in unknown_key.stderr
    bad_type = run_cli("run", "trainer.epochs=many", cwd=tmp_path)
    assert bad_type.returncode != 0 and "epochs" in bad_type.stderr
    unknown_dataset = run_cli("run", "dataset=imagenet", cwd=tmp_path)
    assert unknown_dataset.returncode != 0 and "fashion_mnist" in unknown_dataset.stderr
    other_option = run_cli("run", "optimizer=adam", "optimizer.momentum=0.9", cwd=tmp_path)
    _assert_one_line_error(other_option, "optimizer.momentum is not a key of the chosen optimizer option",
                           "AdamConfig")
    for proc in (unknown_key, bad_type, unknown_dataset):
        assert "Traceback" not in proc.stderr
    assert not (tmp_path / "results" / "runs").exists() or not any((tmp_path / "results" / "runs").iterdir())


@pytest.mark.slow
def test_failed_run_does_not_stop_the_sweep(tmp_path):
    proc = run_cli("run", "-m", "activation.name=relu,swish", "norm=bn_before", "seed=0", *FAST, cwd=tmp_path)
    assert proc.returncode == 1
    assert "1 of 2 runs failed" in proc.stderr and "swish" in proc.stderr
    runs = pd.read_csv(_sweep_dir(tmp_path) / "results.csv")
    assert sorted(runs["status"]) == ["completed", "failed"]
    assert "## Runs without a result" in (_sweep_dir(tmp_path) / "report.md").read_text()


@pytest.mark.slow
def test_report_rebuilds_partial_sweep(tmp_path):
    proc = run_cli("run", "-m", "norm=none,bn_before", "seed=0,1", "sweep.name=partial", *FAST, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    sweep = tmp_path / "results" / "partial"
    (killed,) = sweep.glob("norm=none,seed=1,*")
    (killed / "summary.json").unlink()  # as if killed mid-run
    (sweep / "results.csv").unlink()
    proc = run_cli("report", str(sweep), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    runs = pd.read_csv(sweep / "results.csv")
    assert len(runs) == 4
    assert runs.set_index("run").loc[killed.name, "status"] == "incomplete"
    assert "| none | 1/2 (1 incomplete) |" in (sweep / "report.md").read_text()
    assert "no summary.json (killed or still running)" in (sweep / "report.md").read_text()


@pytest.mark.slow
def test_report_on_a_folder_without_runs(tmp_path):
    proc = run_cli("report", str(tmp_path), cwd=tmp_path)
    _assert_one_line_error(proc, "no runs found")


@pytest.mark.slow
def test_list_shows_groups_and_options(tmp_path):
    proc = run_cli("list", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for word in ("model", "alexnet", "bn_before", "leaky_relu", "nesterov", "cifar100", "ablation", "factorial"):
        assert word in proc.stdout
    assert "mlp (default)" in proc.stdout


@pytest.mark.slow
def test_help_for_every_command(tmp_path):
    for command in (["--help"], ["run", "--help"], ["report", "--help"], ["list", "--help"]):
        proc = run_cli(*command, cwd=tmp_path)
        assert proc.returncode == 0 and "Usage" in proc.stdout, command


def test_ablation_presets_compose():
    from hydra import compose, initialize_config_dir

    from bnbench.config import config_dir

    conf = Path(config_dir())
    for preset in sorted(p.stem for p in (conf / "ablation").glob("*.yaml")):
        with initialize_config_dir(str(conf), version_base="1.3"):
            cfg = compose("config", overrides=[f"ablation={preset}"], return_hydra_config=True)
        params = cfg.hydra.sweeper.params
        assert "seed" in params and len(params) >= 2, preset
    assert make_cfg("ablation=factorial").dataset.name == "fashion_mnist"


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_permission_denied_results(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    proc = run_cli("run", f"results_dir={locked}", *FAST, cwd=tmp_path)
    _assert_one_line_error(proc, "cannot write")


@pytest.mark.slow
def test_benchmark_scripts_run_end_to_end(tmp_path):
    """scripts/bench.py and bench_stacking.py are benchmarks (they print figures, nothing is timed
    here); this only keeps them working, on a tiny Fashion-MNIST written in the real IDX format."""
    import csv

    from conftest import write_mnist_family

    write_mnist_family(tmp_path / "data", "FashionMNIST", n_train=240, n_test=60)
    scripts = Path(__file__).resolve().parent.parent / "scripts"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    bench = subprocess.run([sys.executable, str(scripts / "bench.py"), "--cases", "mlp_run", "--epochs", "1",
                            "--data", str(tmp_path / "data"), "--device", "cpu", "--out", str(tmp_path / "out")],
                           capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert bench.returncode == 0, bench.stderr[-2000:]
    (written,) = (tmp_path / "out").glob("bench-*.csv")
    (row,) = list(csv.DictReader(written.open()))
    assert row["case"] == "mlp_run" and float(row["ratio"]) > 0 and row["samples"] == "240"
    stacking = subprocess.run([sys.executable, str(scripts / "bench_stacking.py"), "--steps", "3", "--threads", "1"],
                              capture_output=True, text=True, env=env, timeout=300)
    assert stacking.returncode == 0 and "grouped" in stacking.stdout, stacking.stderr[-2000:]


def test_the_launching_side_imports_neither_torch_nor_pandas():
    """`bnbench run -m` composes configs and starts workers; importing torch (or the report's
    pandas and scipy) there would delay every sweep's first job by seconds. The launching side is
    bnbench.launch (every module), the record contract, the config schemas, the CLI."""
    code = ("import importlib, pkgutil, sys; import bnbench.launch as L; "
            "[importlib.import_module(m.name) for m in pkgutil.iter_modules(L.__path__, 'bnbench.launch.')]; "
            "import bnbench.cli, bnbench.config, bnbench.records, bnbench.records.store, bnbench.records.schema, "
            "bnbench.records.provenance, bnbench.interrupts, bnbench.completion, hydra_plugins.bnbench_sweeper; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'pandas', 'scipy', 'matplotlib'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    code = ("import pickle, sys; from bnbench import records; versions = pickle.dumps(records.library_versions()); "
            "[sys.modules.pop(m) for m in list(sys.modules) if m.startswith('torch')]; pickle.loads(versions); "
            "print('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False", "a job's record unpickles without torch"
    code = "import sys; from bnbench import report, export, confirm; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False", "reports need no torch"


def test_no_module_imports_upward_or_in_a_cycle():
    """The layout's boundary: records (the contract) imports nothing else of bnbench's; analysis
    and render import neither launch nor job; launch never imports job at import time (the Hydra
    task function imports the job inside, in the job's process)."""
    import ast

    root = Path(__file__).resolve().parent.parent / "bnbench"
    allowed = {  # package -> bnbench packages its modules may import at module level
        "records": {"records", "errors"},
        "analysis": {"records", "analysis", "errors"},
        "render": {"records", "analysis", "render", "errors"},
        "launch": {"records", "launch", "config", "errors", "interrupts"},
    }
    for package, may in allowed.items():
        for path in (root / package).glob("*.py"):
            tree = ast.parse(path.read_text())
            for node in tree.body:  # module level only: function-level imports are the boundary's doors
                names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else \
                    [a.name for a in node.names] if isinstance(node, ast.Import) else []
                for name in names:
                    if name.startswith("bnbench."):
                        assert name.split(".")[1] in may, f"{path.relative_to(root)} imports {name}"


@pytest.mark.slow
def test_print_flags_with_multirun_are_one_line(tmp_path):
    result = run_cli("run", "-m", "--cfg", "hydra", cwd=tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "--cfg" in result.stderr and "drop -m" in result.stderr


@pytest.mark.slow
def test_slurm_launcher_without_slurm_is_one_line(tmp_path):
    import shutil

    if shutil.which("srun"):
        pytest.skip("this machine has Slurm")
    result = run_cli("run", "-m", "hydra/launcher=slurm", "trainer.steps=2", cwd=tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "srun" in result.stderr and "slurm_local" in result.stderr


# The installed console script (completion is keyed to the program's name), found beside this
# interpreter: a venv used without activating it (make test) is not on PATH.
BNBENCH = str(Path(sys.executable).parent / "bnbench")


def _complete(tmp_path, shell: str, line: str) -> list[str]:
    """Ask bnbench for completions as the installed shell script would (bnbench --install-completion)."""
    if shell == "bash":  # bash splits at '=' (COMP_WORDBREAKS): "norm=b" arrives as norm, =, b
        words = line.replace("=", " = ").split() + ([""] if line.endswith(" ") else [])
        env = {"_BNBENCH_COMPLETE": "complete_bash", "COMP_WORDS": " ".join(words), "COMP_CWORD": str(len(words) - 1)}
    else:
        env = {"_BNBENCH_COMPLETE": "complete_zsh", "_TYPER_COMPLETE_ARGS": line}
    proc = subprocess.run([BNBENCH], cwd=tmp_path, env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


@pytest.mark.slow
def test_shell_completion_of_commands_options_groups_and_their_options(tmp_path):
    assert _complete(tmp_path, "bash", "bnbench re") == ["report"]
    assert "--margin" in _complete(tmp_path, "bash", "bnbench report --ma")
    assert _complete(tmp_path, "bash", "bnbench run norm=") == ["bn_after", "bn_before", "gn_after", "gn_before",
                                                                "ln_after", "ln_before", "noisy_bn_before",
                                                                "none", "rms_after", "rms_before"]
    assert _complete(tmp_path, "bash", "bnbench run activation=t") == ["tanh"]
    assert _complete(tmp_path, "bash", "bnbench run hydra/launc") == ["hydra/launcher="]
    assert "parallel" in _complete(tmp_path, "bash", "bnbench run hydra/launcher=")
    assert "trainer.epochs=" in _complete(tmp_path, "bash", "bnbench run trainer.ep")
    zsh = " ".join(_complete(tmp_path, "zsh", "bnbench run norm=bn"))
    assert '"norm=bn_after"' in zsh and '"norm=bn_before"' in zsh and "none" not in zsh
    script = subprocess.run([BNBENCH, "--show-completion", "bash"], capture_output=True, text=True, timeout=60,
                            # the shell as given, not detected from the process tree (a detached pytest has none)
                            env={**os.environ, "SHELL": "/bin/bash", "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"})
    assert script.returncode == 0 and "_BNBENCH_COMPLETE=complete_bash" in script.stdout
    # Hydra's own completion flag would install a script that calls `bnbench -sc`: point to ours
    proc = run_cli("run", "-sc", "install=bash", cwd=tmp_path)
    _assert_one_line_error(proc, "bnbench --install-completion")


@pytest.mark.slow
def test_hydra_messages_keep_their_brackets_and_quotes(tmp_path):
    """Rich markup swallowed '[value1,value2]' from Hydra's advice, and its quotes came escaped."""
    proc = run_cli("run", "norm=bn_before,bn_after", cwd=tmp_path)
    _assert_one_line_error(proc, "use key=[value1,value2]. 2. To use it as string, quote the value: key='value1,value2'")
    proc = run_cli("run", "model.widths=[18,0]", "trainer.epochs=1", cwd=tmp_path)
    _assert_one_line_error(proc, "model.widths=[18, 0] must list")


@pytest.mark.slow
def test_a_sweep_whose_report_fails_exits_non_zero(tmp_path):
    """Hydra turns an error raised in its callback into a warning; the exit code must not hide it."""
    blocked = tmp_path / "results" / "rep" / "report.md"
    blocked.mkdir(parents=True)  # a folder where the report file goes: writing it fails
    proc = run_cli("run", "-m", "seed=0", "norm=none", "sweep.name=rep", *FAST, cwd=tmp_path)
    assert proc.returncode == 1
    assert "the runs are recorded, but the report failed" in proc.stderr
    assert json.loads(next((tmp_path / "results" / "rep").glob("*/summary.json")).read_text())["status"] == "completed"


@pytest.mark.slow
def test_sweep_plan_and_stack_are_not_set_by_hand(tmp_path):
    """They name the sweeper's own plan file; a hand-set value is refused before anything runs."""
    proc = run_cli("run", "-m", "sweep.plan=mine", "seed=0", *FAST, cwd=tmp_path)
    _assert_one_line_error(proc, "sweep.plan is set by bnbench's sweeper", "remove sweep.plan=mine")
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").iterdir())


@pytest.mark.slow
def test_a_single_failed_run_exits_non_zero_from_its_record(tmp_path):
    """The CLI's exit code comes from the run's record on disk (no in-process globals)."""
    proc = run_cli("run", "activation.name=swish", "hydra.run.dir=results/one", *FAST, cwd=tmp_path)
    _assert_one_line_error(proc, "swish")
    assert json.loads((tmp_path / "results" / "one" / "summary.json").read_text())["status"] == "failed"


@pytest.mark.slow
@pytest.mark.parametrize("sweep", [False, True])
def test_deleting_a_part_of_the_config_is_one_line_before_any_run(tmp_path, sweep):
    proc = run_cli("run", *(["-m", "seed=0"] if sweep else []), "~diagnostics", *FAST, cwd=tmp_path)
    _assert_one_line_error(proc, "~diagnostics removed the diagnostics settings", "diagnostics.enabled=false")
    assert not list((tmp_path / "results").rglob("summary.json"))
    assert not list((tmp_path / "results").glob("runs/*"))  # no half-made run folder


@pytest.mark.slow
def test_the_readme_headline_is_what_the_default_sweep_prints(tmp_path):
    """The README's first example is the default sweep's own output: the same tables, columns,
    rows and verdicts; numbers within half a point (another CPU or torch may round a prediction
    differently; the README says which torch measured it)."""
    import re

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = readme.split("```console\n$ bnbench run -m\n", 1)[1].split("```", 1)[0]
    proc = run_cli("run", "-m", "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    shown = [line.rstrip() for line in proc.stdout.splitlines()]
    expected = [line for line in block.splitlines() if line.startswith(("┃", "│"))]
    got = [line for line in shown if line.startswith(("┃", "│"))]
    assert len(got) == len(expected)
    number = re.compile(r"[-+]?\d+(?:\.\d+)?")
    for want, have in zip(expected, got):
        words = lambda line: " ".join(number.sub("#", line).split())  # noqa: E731  (padding follows the numbers)
        assert words(want) == words(have), (want, have)  # columns, rows, verdicts
        for a, b in zip(number.findall(want), number.findall(have)):
            if "." in a:
                assert abs(float(a) - float(b)) <= 0.5, (want, have)
    assert "final test accuracy (%)" in shown and "every pair of norm levels (paired by seed)" in shown


@pytest.mark.parametrize("code, said", [(28, "the disk (or quota) is full"), (30, "cannot be written")])
def test_a_full_or_read_only_disk_is_one_line_that_names_the_path(tmp_path, monkeypatch, capfd, code, said):
    """ENOSPC from Hydra's own files (.hydra/config.yaml) reached the user as a 60-line traceback;
    EROFS (a folder made read-only mid-sweep) too. Seen for real on a 60 KB tmpfs."""
    from bnbench import cli
    from bnbench.launch import app as hydra_app

    def full(*_args, **_kwargs):
        raise OSError(code, os.strerror(code), str(tmp_path / "s" / "run" / ".hydra"))

    import signal

    import typer

    from bnbench import interrupts
    from bnbench.launch import channel

    monkeypatch.setattr(hydra_app, "main", full)
    monkeypatch.setattr(sys, "argv", ["bnbench"])
    monkeypatch.chdir(tmp_path)
    for key in ("HYDRA_FULL_ERROR", channel.COMMAND_ENV, interrupts.LAUNCHER_PID, channel.OUTCOME_ENV):
        monkeypatch.setenv(key, "")  # the command sets them for its jobs: restored after this test
    handler = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(interrupts, "terminate_like_ctrl_c", lambda: None)

    with pytest.raises(typer.Exit) as exit_:
        cli.run(overrides=["seed=0", "sweep.name=s"], multirun=True, fail_fast=False, quiet=True)
    assert exit_.value.exit_code != 0
    err = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and said in err[0] and str(tmp_path / "s" / "run" / ".hydra") in err[0]
    assert "run the same command again" in err[0]
    assert signal.getsignal(signal.SIGTERM) == handler


@pytest.mark.slow
def test_a_sweep_that_left_its_runs_to_another_process_says_so_or_waits(tmp_path):
    """The losing one of two racing sweeps exited 0 with every run "incomplete" and an empty
    table; why was only in the logs. Now: one line and exit 75, or sweep.wait_for_others=true."""
    import fcntl
    import threading

    folder = tmp_path / "results" / "race" / "norm=none,seed=0,trainer.epochs=1"
    folder.mkdir(parents=True)
    handle = open(folder / ".run.lock", "w")
    fcntl.flock(handle, fcntl.LOCK_EX)  # another process is training seed=0
    try:
        proc = run_cli("run", "-m", "norm=none", "seed=0", "sweep.name=race", *FAST, cwd=tmp_path)
        assert proc.returncode == 75, proc.stderr
        lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and "being trained by another process right now" in lines[0]
        assert "sweep.wait_for_others=true" in lines[0]
        threading.Timer(3.0, handle.close).start()  # the other process ends in 3 s
        waited = run_cli("run", "-m", "norm=none", "seed=0", "sweep.name=race", "sweep.wait_for_others=true", *FAST,
                         cwd=tmp_path)
        assert waited.returncode == 0, waited.stderr[-2000:]
        assert json.loads((folder / "summary.json").read_text())["status"] == "completed"
    finally:
        handle.close()


@pytest.mark.slow
def test_torchs_own_info_lines_stay_out_of_the_console(tmp_path):
    """torch logs its FakeTensor cache statistics at INFO when the process exits; under bnbench's
    logging (root at INFO) they appeared under the line Ctrl-C ends with."""
    code = ("import logging, sys; sys.argv = ['bnbench', 'run', 'trainer.epochs=1', 'trainer.threads=1']\n"
            "from bnbench.cli import app\n"
            "try:\n    app()\nexcept SystemExit:\n    pass\n"
            "print('ENABLED', logging.getLogger('torch._subclasses.fake_tensor').isEnabledFor(logging.INFO))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "BNBENCH_RESULTS": str(tmp_path / "results")})
    assert "ENABLED False" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]
