"""The ``bnbench`` command: a thin layer that hands overrides to Hydra and prints results."""

from __future__ import annotations

import errno
import os
import re
import shlex
import signal
import sys
import tempfile
import traceback
from pathlib import Path
from typing import List, Optional

import typer
import yaml
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bnbench import __version__, interrupts
from bnbench.config import config_dir
from bnbench.errors import ConfigError

app = typer.Typer(
    help="Ablation studies of batch normalization: placement x activation x optimizer x model, "
    "configured with Hydra.",
    no_args_is_help=True,
    add_completion=True,  # bnbench --install-completion: commands, options, and overrides (bnbench/completion.py)
    pretty_exceptions_enable=False,
)
# Piped output (logs, CI) gets wide tables instead of Rich's 80-column default.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True)


def fail(message: str, code: int = 1) -> None:
    # soft_wrap: one line, however narrow the terminal, so logs and greps see the whole message
    # escape(): a message's own brackets (key=[value1,value2], model.widths=[18,18,4]) are text, not Rich markup
    err_console.print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _one_line(err: BaseException) -> str:
    """Hydra's messages span lines (e.g. the list of options); keep them on one."""
    lines = str(err).replace("\\'", "'").splitlines()  # Hydra escapes the quotes of its examples
    if isinstance(err.__cause__, OmegaConfBaseException):
        cause = str(err.__cause__).splitlines()[0]
        other_option = re.fullmatch(r"Key '(\w+)' not in '(\w+)Config'", cause)
        key = getattr(err.__cause__, "full_key", "") or ""
        group = key.split(".")[0]
        if other_option and group in ("model", "optimizer", "dataset") and lines[0].startswith("Could not override"):
            # each option of these groups has its own schema (bnbench/config.py SCHEMAS); Hydra's
            # advice to append the key with + would add one the code never reads
            return (f"{key} is not a key of the chosen {group} option (its schema: {other_option[2]}Config in "
                    f"bnbench/config.py): misspelt, or a key of another {group} option")
        lines.append(cause)
    text, listing = "", False
    for raw in lines:
        line = raw.strip()
        if not line:
            continue
        if line.startswith("Config search path"):
            break
        if listing and raw.startswith(("\t", " ")):
            text += (" " if text.endswith(":") else ", ") + line
            continue
        text += ("" if not text else " " if text.endswith((".", ":")) else ". ") + line
        listing = line.endswith(":")
    return text


# Hydra flags that print instead of running; Hydra refuses them together with --multirun.
HYDRA_INFO_FLAGS = ("--cfg", "-c", "--info", "-i", "--shell-completion", "-sc")


# errors of writing: the disk or quota is full, or the folder is not ours to write (read-only)
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}


def _write_error(err: OSError, folder: Path) -> str:
    """One line for an error of writing results: what, where, and that nothing finished is lost."""
    where = err.filename or folder
    full = err.errno in (errno.ENOSPC, errno.EDQUOT)
    what = "the disk (or quota) is full" if full else f"it cannot be written ({err.strerror})"
    fix = "free some space" if full else "make it writable, or choose another results_dir"
    return (f"stopped writing {where}: {what}. Finished runs are kept and unfinished ones resume from their last "
            f"checkpoint: {fix}, then run the same command again")


def _stopped_job(err: BaseException, sweep_dir: str | None) -> tuple[str, int] | None:
    """(one line, exit code) when a launcher's error is a job that a signal stopped (submitit
    re-raises the job's Interrupted as a FailedJobError whose text is the job's traceback): which
    run, what stopped it and what was saved, from its record; the job's log where the error
    names it. None for any other error."""
    from bnbench import records

    text = str(err)
    if "bnbench.interrupts.Interrupted" not in text and "KeyboardInterrupt" not in text:
        return None
    stopped = []
    if sweep_dir:
        for folder in records.run_folders(Path(sweep_dir)):
            summary = records.read_summary(folder)
            if summary and summary.get("status") == "interrupted":
                stopped.append((folder.name, str(summary.get("error") or "")))
    said = stopped[0][1] if stopped else ""
    signum = signal.SIGTERM if "SIGTERM" in said or "SIGTERM" in text else signal.SIGINT
    log = re.search(r"at paths:\s*-\s*(\S+)", text)
    where = f"; its log: {log.group(1)}" if log else ""
    run = f" ({stopped[0][0]}: {said.split(';')[0]})" if stopped else ""
    what = "terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted"
    return (f"a job of the sweep was {what}{run}; its run recorded itself interrupted, finished runs are kept and "
            f"the report is rebuilt from them{where}. Run the same command again to resume", 128 + int(signum))


def _report_what_is_there(outcome: dict) -> None:
    """The report of the runs on disk, when the sweep ended before its callback could write it."""
    from bnbench import report as report_mod

    if not outcome.get("sweep_dir"):
        return
    try:
        report_mod.write(report_mod.build(Path(outcome["sweep_dir"])))
    except (report_mod.ReportError, OSError, ValueError):
        pass  # nothing to tabulate yet: the one line says what happened


def _raised_in_launcher(err: BaseException) -> bool:
    """Whether ``err`` came from a launcher plugin or the cluster library under it (a refused
    sbatch, no Slurm here), not from bnbench."""
    frames = traceback.extract_tb(err.__traceback__)
    packages = [f"{os.sep}{name}{os.sep}" for name in ("hydra_plugins", "submitit", "ray")]
    return any("-packages" in frame.filename and part in frame.filename for frame in frames for part in packages)


def _results_dir(overrides: list[str]) -> Path:
    for item in overrides:
        if item.lstrip("+").startswith("results_dir="):
            return Path(item.split("=", 1)[1])
    return Path(os.environ.get("BNBENCH_RESULTS", "results"))


def _override(overrides: list[str], key: str) -> str | None:
    for item in overrides:
        name, _, value = item.lstrip("+").partition("=")
        if name == key:
            return value
    return None


SWEEP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _check_sweep_name(value: str) -> None:
    """A sweep name is one folder under results_dir, and a value Hydra's override grammar reads
    as it is: ASCII letters, digits, '.', '_' and '-' (../x, /abs or a/b would write elsewhere;
    a space or non-ASCII letter is a Hydra lexer error; a,b would sweep over two names)."""
    name = value.strip()
    if len(name) >= 2 and name[0] == name[-1] and name[0] in "'\"":
        name = name[1:-1]
    if "," in name:
        fail(f"sweep.name={value}: a sweep has one name (a comma would make Hydra sweep over several); run each "
             "sweep under its own name")
    if name in (".", "..") or not SWEEP_NAME.fullmatch(name):
        fail(f"sweep.name={value}: a sweep name is one folder name of ASCII letters, digits, '.', '_' and '-' "
             "(no spaces, '/', or other characters), e.g. sweep.name=my_sweep; to write elsewhere, set "
             "results_dir=PATH")


def _output_dir(overrides: list[str], multirun: bool) -> Path:
    """The folder the run or sweep will write: hydra.run.dir / hydra.sweep.dir when given,
    else results_dir/<sweep.name> for a sweep and results_dir/runs for a run (conf/config.yaml)."""
    given = _override(overrides, "hydra.sweep.dir" if multirun else "hydra.run.dir")
    if given and "${" not in given:
        return Path(given)
    results = _results_dir(overrides)
    name = _override(overrides, "sweep.name") if multirun else "runs"
    return results / name if name and "${" not in name and "," not in name else results


def _check_writable(folder: Path) -> None:
    """Fail before any training if results cannot be saved (nothing is lost at the end). The
    folders made for the check are removed again: a command that fails later (a config error)
    leaves no empty folder behind, and the run or sweep makes them when it writes."""
    made = [p for p in (folder, *folder.parents) if not p.exists()]
    from bnbench.records.store import probe_write

    try:
        probe_write(folder)
        for path in made:  # deepest first
            path.rmdir()
    except OSError as err:
        fail(f"cannot write to the output folder {folder} ({err.strerror or err}); "
             "choose another with results_dir=PATH or BNBENCH_RESULTS (or another sweep.name)")


@app.callback(invoke_without_command=True)
def _main(version: bool = typer.Option(False, "--version", help="Print the version and exit.")) -> None:
    if version:
        console.print(f"bnbench {__version__}")
        raise typer.Exit()


def _complete_override(incomplete: str) -> list[str]:
    from bnbench.completion import complete_override, words_before

    return complete_override(incomplete, words_before())


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def run(
    overrides: Optional[List[str]] = typer.Argument(
        None,
        help="Hydra overrides: group=option (norm=bn_after), key=value (optimizer.lr=0.05), "
        "comma lists to sweep with -m (seed=0,1,2). Hydra flags such as --cfg job pass through.",
        show_default=False,
        autocompletion=_complete_override,
    ),
    multirun: bool = typer.Option(
        False, "--multirun", "-m",
        help="Sweep: run every combination of the comma lists, plus the default grid "
        "(norm x 3 seeds) unless overridden; ends with a table per cell. Running the same "
        "sweep again skips finished runs and resumes cut-off ones.",
    ),
    fail_fast: bool = typer.Option(False, "--fail-fast", help="Stop a sweep at the first failed run."),
    quiet: bool = typer.Option(False, "--quiet", "-q",
                               help="No live display: one line per finished run (for logs; automatic when "
                               "output is not a terminal)."),
) -> None:
    """Train one run (or, with -m, a sweep) and record it under results/.

    \b
    Examples:
      bnbench run                                   one run with the defaults
      bnbench run norm=none activation=sigmoid      one run, two overrides
      bnbench run -m                                the default grid: norm x 3 seeds
      bnbench run -m ablation=activations           a preset grid from conf/ablation/
      bnbench run -m activation=relu,tanh seed=0,1  your own grid
    """
    overrides = list(overrides or [])
    if any(a.split("=")[0] in ("--shell-completion", "-sc") for a in overrides):
        fail("bnbench completes in the shell with its own command: bnbench --install-completion (bash, zsh, fish); "
             "it completes commands, options, config groups and their options (norm=<TAB>)")
    info_flag = next((a.split("=")[0] for a in overrides if a.split("=")[0] in HYDRA_INFO_FLAGS), None)
    if multirun and info_flag:
        fail(f"{info_flag} shows one run's config, so it does not combine with -m: drop -m "
             f"(e.g. bnbench run {info_flag} job norm=bn_after)")
    for item in overrides:
        key, _, value = item.lstrip("+").partition("=")
        if key == "sweep.name":
            _check_sweep_name(value)
        if key in ("sweep.plan", "sweep.stack"):
            fail(f"{key} is set by bnbench's sweeper for each job it launches (which seeds train together); "
                 f"remove {item} from the command")
    if not info_flag:  # --cfg job, --info: nothing is written
        _check_writable(_output_dir(overrides, multirun))
    interrupts.terminate_like_ctrl_c()
    from bnbench.launch import app as hydra_app
    from bnbench.launch import channel, sweep

    if fail_fast:
        overrides.append("sweep.fail_fast=true")
    if quiet:
        overrides.append("sweep.quiet=true")
    os.environ[channel.COMMAND_ENV] = " ".join(shlex.quote(a) for a in ["bnbench", *sys.argv[1:]])
    os.environ[interrupts.LAUNCHER_PID] = str(os.getpid())  # parallel workers exit when this process dies
    sys.argv = ["bnbench", *(["--multirun"] if multirun else []), *overrides]
    # where the run or sweep went: the job or the sweep callback writes it, the records say the rest
    outcome_file = Path(tempfile.mkstemp(prefix="bnbench-outcome-", suffix=".json")[1])
    os.environ[channel.OUTCOME_ENV] = str(outcome_file)
    # Let Hydra's exceptions reach us, so each ends as one line here rather than a trace.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        try:
            hydra_app.main()
        finally:
            # the live view goes first: the line an error or Ctrl-C ends with must be the last on the
            # terminal, not drawn over by the view's last frame
            sweep.stop_monitor()
    except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM (interrupts.terminate_like_ctrl_c)
        fail(interrupts.describe(err), code=interrupts.exit_code(err))
    except hydra_app.FailFast as err:
        fail(f"stopped at the first failed run (--fail-fast): {err}")
    except (HydraException, OmegaConfBaseException) as err:
        fail(_one_line(err))
    except ConfigError as err:  # raised in a job before its run started (e.g. a plan that is not there)
        fail(str(err))
    except (RuntimeError, OSError) as err:
        if isinstance(err, OSError) and err.errno in WRITE_ERRNOS:  # writing, wherever: Hydra's files, a record
            fail(_write_error(err, _output_dir(overrides, multirun)))
        if not _raised_in_launcher(err):
            raise  # a bug: its traceback is the useful part
        known = channel.read_outcome(outcome_file)
        stopped = _stopped_job(err, known.get("sweep_dir"))
        if stopped is not None:  # a job the launcher ran was stopped by a signal: not a launch failure
            _report_what_is_there(known)
            fail(stopped[0], code=stopped[1])
        no_slurm = any(word in str(err) for word in ("srun", "sbatch", "slurm"))
        fail(f"the launcher could not start the jobs: {err}"
             + (" (on a machine without Slurm use hydra/launcher=slurm_local or parallel)" if no_slurm else ""))
    finally:
        outcome = channel.read_outcome(outcome_file)
        outcome_file.unlink(missing_ok=True)
        os.environ.pop(channel.OUTCOME_ENV, None)
    _exit_with_outcome(outcome, multirun)


def _exit_with_outcome(outcome: dict, multirun: bool) -> None:
    """Exit non-zero when the records of what just ran hold a failure (or no report was written)."""
    from bnbench import records

    if outcome.get("config_error"):
        fail(outcome["config_error"])
    if multirun and outcome.get("planned") == 0:
        fail("the sweep has no jobs: a swept key lists no values (e.g. seed=range(0,0)); give every swept key at "
             "least one value")
    if multirun and outcome.get("report_error") is not None:
        fail(f"the runs are recorded, but the report failed: {outcome['report_error']}")
    if multirun and outcome.get("sweep_dir"):
        folders = records.run_folders(Path(outcome["sweep_dir"]))
        failed = [s for s in map(records.read_summary, folders) if s and s.get("status") == "failed"]
        if failed:
            fail(f"{len(failed)} of {len(folders)} runs failed; first error: {failed[0].get('error')}")
        held = [f for f in folders if records.store.held_by_another(f)]
        if held:  # a racing sweep command on this folder: this one did not train them
            fail(f"{len(held)} of {len(folders)} runs are being trained by another process right now (another sweep "
                 f"command on {outcome['sweep_dir']}, e.g. {held[0].name}); this command left them to it: run it again "
                 "when that one ends, or add sweep.wait_for_others=true to wait", code=75)
    elif not multirun and outcome.get("run_dir"):
        summary = records.read_summary(Path(outcome["run_dir"]))
        if summary is not None and summary["status"] == "failed":
            fail(summary.get("error") or "the run failed")


@app.command()
def report(
    sweep_dir: Path = typer.Argument(..., help="A sweep folder (the one `bnbench run -m` printed)."),
    metric: Optional[str] = typer.Option(
        None, "--metric", help="final_test_acc (default), final_test_loss (default for regression), "
        "final_train_acc, final_train_loss (the final model, eval mode), final_train_acc_running, "
        "final_train_loss_running (running averages, train mode), final_val_acc, final_val_loss, "
        "test_acc_at_best_val, test_loss_at_best_val (the evaluation with the best validation metric: selected "
        "without the test set), best_test_acc, best_test_loss (selected on "
        "the test set: optimistic)."),
    baseline: Optional[List[str]] = typer.Option(
        None, "--baseline", help="Cell to compare against, e.g. norm=none (repeat for several keys). "
        "Default: norm=none when norm is swept. --baseline '' turns comparisons off."),
    pairs: Optional[str] = typer.Option(
        None, "--pairs", help="all: every pair of levels of the baseline's factor (before vs after, not only each "
        "against none), one Holm family; baseline: each level against the baseline. Default: all for the default "
        "baseline (norm=none) when norm has three or more levels, baseline when --baseline is given."),
    target_acc: Optional[float] = typer.Option(None, "--target-acc",
                                               help="Report the time to reach this test accuracy (0-1) instead."),
    time_unit: str = typer.Option("epochs", "--time-unit", help="epochs, steps or seconds (with --target-acc)."),
    confidence: float = typer.Option(0.95, "--confidence", min=0.5, max=0.999,
                                     help="Confidence level of intervals; tests and verdicts use 1 - it as alpha."),
    margin: Optional[float] = typer.Option(
        None, "--margin", help="Equivalence margin for the verdicts (TOST), in the report's units: accuracy points "
        "(0.5 = half a point), or the loss itself. Without it no comparison is called equivalent."),
    effect: Optional[float] = typer.Option(
        None, "--effect", "--min-effect", help="Plan seeds for this difference (report units): the seeds a paired "
        "t-test needs for 80% power at the table's Holm level, with the pilot's SD and the range from its "
        "confidence interval. Default: --margin, else 1 point for accuracies."),
    interval: str = typer.Option("t", "--interval", help="Interval of paired differences: t (default) or bootstrap "
                                 "(BCa; it covers less than its level below about 15 seeds)."),
    formats: List[str] = typer.Option(["md", "csv"], "--format", help="md, csv, latex (repeat for several)."),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="Render learning curves and the cell chart."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Write the files without printing the tables."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the report files here instead of into "
                                       "the sweep folder (a shared or read-only sweep, a single run's folder)."),
    select: Optional[str] = typer.Option(
        None, "--select", help="A swept key (e.g. optimizer.lr) chosen per arm on the validation split: each arm "
        "(a cell without the key) is compared at its own value with the best mean validation metric."),
    profile: Optional[str] = typer.Option(
        None, "--profile", help="A numeric swept key (e.g. optimizer.lr): per arm, the metric at every value with its "
        "interval and divergence rate (profile.png), and the stable range around the best value."),
    within: float = typer.Option(1.0, "--within", help="With --profile: how far from the best a stable value may be, "
                                 "in the report's units (points for accuracies)."),
) -> None:
    """Rebuild the tables, statistics and plots of a finished or partial sweep from its run records."""
    from bnbench import records
    from bnbench import report as report_mod

    base: Optional[dict] = None
    if baseline:
        base = records.parse_overrides([b for b in baseline if b])
        if not base and any(b for b in baseline):
            fail(f"--baseline {baseline[0]!r}: expected key=value, e.g. --baseline norm=none")
    if target_acc is not None and not 0 < target_acc <= 1:
        fail(f"--target-acc {target_acc}: give a fraction in (0, 1], e.g. 0.9 for 90%")
    if time_unit not in ("epochs", "steps", "seconds"):
        fail(f"--time-unit {time_unit!r}: choose epochs, steps or seconds")
    fmt = tuple(f.strip() for item in formats for f in item.split(",") if f.strip())
    options = report_mod.ReportOptions(metric=metric, baseline=base, confidence=confidence, margin=margin,
                                       effect=effect, interval=interval, target_acc=target_acc,
                                       time_unit=time_unit, formats=fmt, plots=plots, out=out, select=select,
                                       profile=profile, within=within, pairs=pairs)
    try:
        report_mod.output_dir(sweep_dir, out)  # before any work: where it may write
        tables = report_mod.build(sweep_dir, options)
        written = report_mod.write(tables, options)
    except report_mod.ReportError as err:
        fail(str(err))
    except OSError as err:
        fail(f"cannot write the report into {out or sweep_dir} ({err.strerror or err}); give another folder with --out")
    if not quiet:
        report_mod.print_tables(tables, console)
    console.print("wrote " + ", ".join(str(p) for p in written), highlight=False, soft_wrap=True)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def confirm(
    ctx: typer.Context,
    sweep_dir: Path = typer.Argument(..., help="A sweep folder whose per-arm choices to confirm."),
    select: str = typer.Option(..., "--select", help="The swept key chosen per arm on the validation split, as in "
                               "bnbench report --select (e.g. optimizer.lr)."),
    seeds: int = typer.Option(5, "--seeds", help="New seeds per arm (the ones after the sweep's largest seed)."),
    metric: Optional[str] = typer.Option(None, "--metric", help="The metric whose validation counterpart chooses "
                                         "(as in bnbench report)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="One line per finished run."),
) -> None:
    """Rerun each arm's chosen configuration on fresh seeds, into DIR_confirm, and report it.

    \b
    The seeds that chose a value flatter it; seeds that took no part in the choice do not.
    Extra arguments are Hydra overrides for every rerun, e.g. hydra/launcher=parallel.
    Rerunning the command resumes an unfinished confirmation and skips what is done.
    """
    import subprocess

    from bnbench import confirm as confirm_mod
    from bnbench import report as report_mod

    extra = list(ctx.args)
    try:
        plan = confirm_mod.plan(sweep_dir, select, seeds, metric)
    except report_mod.ReportError as err:
        fail(str(err))
    confirm_mod.write_plan(plan)
    for arm in plan.arms:
        described = ", ".join(f"{k}={v}" for k, v in arm["arm"].items()) or "all runs"
        console.print(f"{described}: {select}={arm['chosen']} on seeds {', '.join(map(str, plan.seeds))}",
                      highlight=False)
    for args in confirm_mod.commands(plan, extra + (["--quiet"] if quiet else [])):
        proc = subprocess.run([sys.executable, "-m", "bnbench.cli", *args])
        if proc.returncode != 0:
            raise typer.Exit(proc.returncode)  # the sweep said why, in one line
    try:
        # arms that chose different values: one value per arm, so --select compares them as arms
        varies = len({arm["chosen"] for arm in plan.arms}) > 1
        options = report_mod.ReportOptions(select=select if varies else None, metric=metric)
        tables = report_mod.build(plan.folder, options)
        written = report_mod.write(tables, options)
    except report_mod.ReportError as err:
        fail(f"the reruns are recorded in {plan.folder}, but their report failed: {err}")
    report_mod.print_tables(tables, console)
    console.print("wrote " + ", ".join(str(p) for p in written), highlight=False, soft_wrap=True)


@app.command()
def export(
    sweep_dir: Path = typer.Argument(..., help="A sweep folder (the one `bnbench run -m` printed)."),
    tensorboard: Optional[Path] = typer.Option(None, "--tensorboard", help="Write TensorBoard event files here "
                                               "(one folder per run; then: tensorboard --logdir FOLDER)."),
    mlflow: Optional[str] = typer.Option(None, "--mlflow", help="Log to this MLflow tracking URI, e.g. "
                                         "sqlite:///mlflow.db (no server needed) or http://host:5000."),
    experiment: Optional[str] = typer.Option(None, "--experiment", help="MLflow experiment name (default: the "
                                             "sweep folder's name)."),
) -> None:
    """Copy a sweep's records to TensorBoard and/or MLflow: hyperparameters, metrics per step,
    final metrics, and (MLflow) the report and each run's record as artifacts."""
    from bnbench import export as export_mod

    if tensorboard is None and mlflow is None:
        fail("say where to export: --tensorboard FOLDER and/or --mlflow URI (e.g. sqlite:///mlflow.db)")
    if not sweep_dir.is_dir():
        fail(f"{sweep_dir} is not a folder; give the sweep folder that `bnbench run -m` printed")
    try:
        if tensorboard is not None:
            written = export_mod.to_tensorboard(sweep_dir, tensorboard)
            console.print(f"wrote {len(written)} TensorBoard runs under {tensorboard}: tensorboard --logdir "
                          f"{shlex.quote(str(tensorboard))}", highlight=False, soft_wrap=True)
        if mlflow is not None:
            counts = export_mod.to_mlflow(sweep_dir, mlflow, experiment)
            console.print(f"MLflow ({mlflow}): {counts['exported']} runs exported, {counts['skipped']} already there",
                          highlight=False, soft_wrap=True)
    except export_mod.ExportError as err:
        fail(str(err))
    except OSError as err:
        fail(f"cannot write the export: {err.filename or 'its folder'} ({err.strerror or err})")


@app.command()
def evalmodes(
    sweep_dir: Path = typer.Argument(..., help="A sweep folder whose runs kept their final weights "
                                     "(trainer.save_final=true)."),
    batch_sizes: str = typer.Option(",".join(map(str, (2, 8, 32, 128))), "--batch-sizes",
                                    help="Test batch sizes for BN with batch statistics, comma-separated."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N"),
) -> None:
    """Re-evaluate each run's final weights with BN's running averages, with batch statistics at
    several test batch sizes, and with "precise" averages recomputed over the training set.

    \b
    Writes eval_modes.csv and eval_modes.md into the sweep folder (bnbench/evalmodes.py).
    """
    try:
        sizes = [int(b) for b in batch_sizes.split(",") if b.strip()]
    except ValueError:
        fail(f"--batch-sizes {batch_sizes!r} must be whole numbers separated by commas, e.g. 2,8,32,128")
    if not sizes or min(sizes) < 2:
        fail(f"--batch-sizes {batch_sizes!r}: each must be at least 2 (batch statistics of one sample are not "
             "defined)")
    if not sweep_dir.is_dir():
        fail(f"{sweep_dir} is not a folder; give the sweep folder that `bnbench run -m` printed")
    from bnbench import evalmodes as evalmodes_mod
    from bnbench.job.data import DataError
    from bnbench.job.devices import resolve_device, set_threads
    from bnbench.records.runs import ReportError

    try:
        dev = resolve_device(device)
    except ConfigError as err:
        fail(f"--device {device}: {err}")
    except RuntimeError:  # torch's list of every device type it knows
        fail(f"--device {device} is not a device: choose auto, cpu, cuda or cuda:N")
    try:
        if dev.type == "cpu":
            set_threads(None)
        frame, factors, missing = evalmodes_mod.evaluate_sweep(sweep_dir, sizes, dev)
        written = evalmodes_mod.write(sweep_dir, frame, factors, missing)
    except (ReportError, DataError, ConfigError) as err:
        fail(str(err))
    except OSError as err:
        fail(f"cannot write into {sweep_dir} ({err.strerror or err})")
    console.print("\n".join(evalmodes_mod.markdown(frame, factors, missing, sweep_dir.name)[2:]), highlight=False,
                  soft_wrap=True, markup=False)
    console.print("wrote " + ", ".join(str(p) for p in written), highlight=False, soft_wrap=True)


def _describe(path: Path) -> str:
    for line in path.read_text().splitlines():
        if line.startswith("#") and "@package" not in line:
            return line.lstrip("# ").strip()
    return ""


@app.command("list")
def list_configs() -> None:
    """Show every config group, its options and the default choice."""
    root = config_dir()
    defaults: dict[str, str] = {}
    for entry in (yaml.safe_load((root / "config.yaml").read_text()) or {}).get("defaults", []):
        if isinstance(entry, dict):
            for key, value in entry.items():
                defaults[key] = "null" if value is None else str(value)
    table = Table(title=f"config groups in {root}", title_justify="left", show_lines=True)
    table.add_column("group", style="bold")
    table.add_column("option")
    table.add_column("description")
    groups = sorted(p for p in root.iterdir() if p.is_dir() and p.name != "hydra" and not p.name.startswith("_"))
    if (root / "hydra" / "launcher").is_dir():
        groups.append(root / "hydra" / "launcher")
    for group in groups:
        name = group.relative_to(root).as_posix()
        for i, option in enumerate(sorted(group.glob("*.yaml"))):
            mark = " (default)" if defaults.get(name) == option.stem else ""
            table.add_row(name if i == 0 else "", option.stem + mark, _describe(option))
    console.print(table)
    console.print("hydra/launcher: basic (default, one run at a time) or a preset above; the plugins' own "
                  "joblib, submitit_local, submitit_slurm and ray work too.", style="dim")
    console.print("Any key can be overridden too: `bnbench run --cfg job` prints the full config.", style="dim")


if __name__ == "__main__":
    app()
