"""Export a sweep's run records to the trackers people already use: TensorBoard and MLflow.

The records on disk stay the single source of truth; an export is a one-way copy made from them
after (or during) a sweep, so the training engine knows nothing about any tracker. Both exports
hold, per run: the swept keys and constants as hyperparameters, the seed and status, every
evaluation of metrics.csv per step, and the final metrics.

- TensorBoard (`pip install 'bnbench[tensorboard]'`): one event folder per run under OUT,
  scalars per step (test/acc, train/loss_running, ...) and the HParams view of the swept keys
  against the final metrics. `tensorboard --logdir OUT`.
- MLflow (`pip install 'bnbench[mlflow]'`): an experiment named after the sweep, a parent run
  holding the report files as artifacts and one child run per bnbench run (params, metrics per
  step, its summary.json and metrics.csv as artifacts, status as the run's end state). A local
  `sqlite:///mlflow.db` store needs no server. Exporting again skips runs already exported with
  the same run id, so an export can follow a sweep that is still running.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import pandas as pd

from bnbench import records
from bnbench.records.runs import all_numbers, collect_runs

# metrics.csv column -> the tag it gets in both trackers
SCALARS = {"test_acc": "test/acc", "test_loss": "test/loss", "train_acc": "train/acc", "train_loss": "train/loss",
           "train_acc_running": "train/acc_running", "train_loss_running": "train/loss_running",
           "val_acc": "val/acc", "val_loss": "val/loss", "lr": "lr"}
FINAL = ("final_test_acc", "final_test_loss", "final_train_acc", "final_train_loss", "final_train_loss_running",
         "best_test_acc", "best_test_loss", "final_val_acc", "final_val_loss", "test_acc_at_best_val",
         "test_loss_at_best_val")
# a run's status in bnbench -> the end state of its MLflow run
MLFLOW_STATUS = {"completed": "FINISHED", "diverged": "FINISHED", "failed": "FAILED", "incomplete": "KILLED"}


class ExportError(RuntimeError):
    pass


def _sweep(sweep_dir: Path) -> tuple[pd.DataFrame, list[str]]:
    from bnbench.records.runs import ReportError

    try:
        runs, factors, constants = collect_runs(sweep_dir)
    except ReportError as err:
        raise ExportError(str(err)) from err
    keys = [*factors, *constants]
    return runs, keys


def _history(run_dir: Path) -> pd.DataFrame:
    """metrics.csv, with a record before bnbench 0.2 read as its running averages."""
    try:
        frame = pd.read_csv(run_dir / records.METRICS)
    except (OSError, ValueError):
        return pd.DataFrame()
    frame = frame.rename(columns=records.legacy_metric_names(frame.columns))  # a record before bnbench 0.2
    return frame if "step" in frame else pd.DataFrame()


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number  # NaN and inf are kept: a diverged run's loss is NaN, and says so


def _hparams(run: pd.Series, keys: list[str]) -> dict[str, Any]:
    params: dict[str, Any] = {k: str(run[k]) for k in keys}
    params["seed"] = int(run["seed"]) if pd.notna(run["seed"]) else -1
    params["status"] = str(run["status"])
    return params


def _finals(run: pd.Series) -> dict[str, float]:
    out = {}
    for key in FINAL:
        number = _number(run.get(key))
        if number is not None and not math.isnan(number):
            out[f"final/{key}"] = number
    return out


# ------------------------------------------------------------------ TensorBoard


def to_tensorboard(sweep_dir: Path, out_dir: Path) -> list[Path]:
    """Write one TensorBoard run folder per bnbench run under ``out_dir``; returns them."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:  # torch's writer needs the tensorboard package
        raise ExportError("exporting to TensorBoard needs the tensorboard package: "
                          "pip install 'bnbench[tensorboard]'") from err
    runs, keys = _sweep(sweep_dir)
    try:
        records.store.probe_write(Path(out_dir))
    except OSError as err:
        raise ExportError(f"--tensorboard {out_dir}: cannot write {err.filename or out_dir} ({err.strerror or err}); "
                          "give a writable folder") from None
    numeric = _numeric_keys(runs, keys)
    domains = {k: sorted({float(v) for v in runs[k].astype(str)}) if k in numeric
               else sorted({str(v) for v in runs[k].astype(str)}) for k in keys}
    domains["status"] = sorted({str(v) for v in runs["status"]})
    written = []
    for _, run in runs.iterrows():
        folder = out_dir / str(run["run"])
        if folder.exists():  # an earlier export: replace it rather than append duplicate events
            for old in folder.glob("events.out.tfevents.*"):
                old.unlink()
        history = _history(sweep_dir / str(run["run"]))
        with SummaryWriter(log_dir=str(folder)) as writer:
            for _, row in history.iterrows():
                for column, tag in SCALARS.items():
                    value = _number(row.get(column))
                    if value is not None and not math.isnan(value):
                        writer.add_scalar(tag, value, int(row["step"]))
            finals = _finals(run) or {"final/none": math.nan}  # the HParams view needs a metric
            _write_hparams(writer, _typed_hparams(run, keys, numeric), finals, domains, _cell_name(run, keys))
        written.append(folder)
    return written


def _numeric_keys(runs: pd.DataFrame, keys: list[str]) -> set[str]:
    """The keys whose every value is a number (optimizer.lr, trainer.epochs): typed as numbers in
    TensorBoard, so its HParams view can sort them and draw them on a (log) axis."""
    return {key for key in keys if all_numbers(runs[key].astype(str))}


def _typed_hparams(run: pd.Series, keys: list[str], numeric: set[str]) -> dict[str, Any]:
    """A run's hyperparameters for TensorBoard: numbers as numbers, the rest as text, and its
    status; no seed (the seeds of a cell are one session group: see :func:`_write_hparams`)."""
    params: dict[str, Any] = {k: float(run[k]) if k in numeric else str(run[k]) for k in keys}
    params["status"] = str(run["status"])
    return params


def _cell_name(run: pd.Series, keys: list[str]) -> str:
    return ",".join(f"{k}={run[k]}" for k in keys) or "all"


def _write_hparams(writer, params: dict[str, Any], finals: dict[str, float], domains: dict[str, list],
                   group: str) -> None:
    """What SummaryWriter.add_hparams writes, into the run's own folder, with two additions
    torch's writer lacks: each key's domain (its values in the sweep) and the session group
    name (the cell), so TensorBoard groups a cell's seeds and aggregates their metrics."""
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
    from torch.utils.tensorboard.summary import hparams

    domains = {k: v for k, v in domains.items() if k in params}
    experiment, start, end = hparams(params, finals, hparam_domain_discrete=domains)
    value = start.value[0]
    data = HParamsPluginData.FromString(value.metadata.plugin_data.content)
    data.session_start_info.group_name = group
    value.metadata.plugin_data.content = data.SerializeToString()
    for summary in (experiment, start, end):
        writer.file_writer.add_summary(summary)
    for tag, metric in finals.items():
        writer.add_scalar(tag, metric)


# ------------------------------------------------------------------ MLflow


def to_mlflow(sweep_dir: Path, tracking_uri: str, experiment: str | None = None) -> dict[str, int]:
    """Log the sweep to MLflow at ``tracking_uri``; returns counts of runs exported and skipped."""
    try:
        from mlflow.exceptions import MlflowException
    except ImportError as err:
        raise ExportError("exporting to MLflow needs the mlflow package: pip install 'bnbench[mlflow]'") from err
    runs, keys = _sweep(sweep_dir)
    _check_local_store(tracking_uri)
    try:
        return _to_mlflow(sweep_dir, runs, keys, tracking_uri, experiment)
    except MlflowException as err:  # an unsupported URI, an unreachable server, a refused write
        first = str(err.message if hasattr(err, "message") else err).strip().splitlines()[0]
        raise ExportError(f"MLflow at {tracking_uri}: {first}") from err


def _check_local_store(tracking_uri: str) -> None:
    """ExportError, at once, when a local store (sqlite:///PATH, file:PATH or a plain folder)
    cannot be written: MLflow's own client retries a refused sqlite write for about 100 s and
    then raises a SQLAlchemy traceback."""
    if tracking_uri.startswith("sqlite:///"):
        target = Path(tracking_uri[len("sqlite:///"):])
        folder = target.parent
    elif "://" in tracking_uri and not tracking_uri.startswith("file:"):
        return  # a server: its own answer says what is wrong
    else:
        target = folder = Path(tracking_uri.removeprefix("file://").removeprefix("file:"))
    try:
        records.store.probe_write(folder)
        if target.is_file() and not os.access(target, os.W_OK):
            raise PermissionError(13, "Permission denied", str(target))
    except OSError as err:
        raise ExportError(f"MLflow store {tracking_uri}: cannot write {err.filename or folder} "
                          f"({err.strerror or err}); give a store in a writable folder, e.g. "
                          "--mlflow sqlite:///mlflow.db") from None


def _to_mlflow(sweep_dir: Path, runs: pd.DataFrame, keys: list[str], tracking_uri: str,
               experiment: str | None) -> dict[str, int]:
    """Idempotent by run: an MLflow run of this sweep's run folder with the same identity and
    status is left as it is; one of an earlier status (a sweep exported while it ran) is
    replaced; never a second copy. Another sweep exported into the same experiment gets its own
    parent run."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    name = experiment or sweep_dir.resolve().name
    found = client.get_experiment_by_name(name)
    experiment_id = found.experiment_id if found else client.create_experiment(
        name, artifact_location=_artifacts_beside(tracking_uri, name))
    sweep = str(sweep_dir.resolve())
    exported = {}  # run folder -> [MLflow runs of this sweep for it]
    for r in client.search_runs([experiment_id], filter_string=f"tags.`bnbench.sweep` = '{_quoted(sweep)}'",
                                max_results=50000):
        if r.data.tags.get("bnbench.run"):
            exported.setdefault(r.data.tags["bnbench.run"], []).append(r)
    parent = _sweep_parent(client, experiment_id, sweep_dir)
    counts = {"exported": 0, "skipped": 0}
    for _, run in runs.iterrows():
        identity = (str(run["run"]), str(run["run_id"]), str(run["status"]))
        earlier = exported.get(identity[0], [])
        if any((r.data.tags.get("bnbench.run_id"), r.data.tags.get("bnbench.status")) == identity[1:] for r in earlier):
            counts["skipped"] += 1
            continue
        for stale in earlier:  # exported while running, or before a rerun: replaced, not kept beside
            client.delete_run(stale.info.run_id)
        _log_run(client, experiment_id, parent, sweep_dir, run, keys, identity)
        counts["exported"] += 1
    return counts


def _log_run(client, experiment_id: str, parent: str, sweep_dir: Path, run: pd.Series, keys: list[str],
             identity: tuple[str, str, str]) -> None:
    """One bnbench run as an MLflow child run: its real start and end times, the whole config
    as params (and config.yaml), its cell as a tag, its metrics per step and final ones."""
    from mlflow.entities import Metric, Param, RunTag

    run_dir = sweep_dir / identity[0]
    summary = records.read_summary(run_dir) or {}
    started, finished = _millis(summary.get("started_at")), _millis(summary.get("finished_at"))
    tags = {"mlflow.parentRunId": parent, "bnbench.run": identity[0], "bnbench.run_id": identity[1],
            "bnbench.status": identity[2], "bnbench.sweep": str(sweep_dir.resolve()),
            "bnbench.cell": _cell_name(run, [k for k in keys if k != "seed"])}
    if isinstance(run.get("error"), str):
        tags["bnbench.error"] = run["error"][:5000]
    child = client.create_run(experiment_id, run_name=identity[0], tags=tags, start_time=started)
    run_id = child.info.run_id
    config = _config_params(run_dir, summary)
    config.update({k: str(v) for k, v in _hparams(run, keys).items()})  # the swept keys as the report names them
    params = [Param(k, v[:6000]) for k, v in sorted(config.items())]
    begin = started or int(time.time() * 1000)
    metrics = [Metric(tag, value, begin + int(1000 * (_number(row.get("wall_s")) or 0)), int(row["step"]))
               for _, row in _history(run_dir).iterrows()
               for column, tag in SCALARS.items()
               if (value := _number(row.get(column))) is not None]
    metrics += [Metric(tag, value, finished or begin, 0) for tag, value in _finals(run).items()]
    client.log_batch(run_id, tags=[RunTag("bnbench.stack_size", str(run.get("stack_size")))])
    for at in range(0, len(params), 100):  # MLflow takes at most 100 params a batch
        client.log_batch(run_id, params=params[at:at + 100])
    for at in range(0, len(metrics), 1000):  # and 1000 metrics
        client.log_batch(run_id, metrics=metrics[at:at + 1000])
    for artifact in (records.SUMMARY, records.METRICS, ".hydra/config.yaml"):
        if (run_dir / artifact).is_file():
            client.log_artifact(run_id, str(run_dir / artifact))
    client.set_terminated(run_id, status=MLFLOW_STATUS.get(identity[2], "KILLED"), end_time=finished)


def _config_params(run_dir: Path, summary: dict) -> dict[str, str]:
    """The run's whole config as flat params: its .hydra/config.yaml (optimizer.lr=0.1, ...) and
    its group choices (optimizer=sgd, norm=bn_before), so any setting can be searched."""
    import yaml

    out = {str(k): str(v) for k, v in (summary.get("choices") or {}).items() if not str(k).startswith("hydra")}
    try:
        config = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return out

    def flatten(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                flatten(value, f"{prefix}.{key}" if prefix else str(key))
        else:
            out[prefix] = str(node)

    flatten(config, "")
    return out


def _millis(stamp: Any) -> int | None:
    """An ISO time of a record (started_at, finished_at) in milliseconds since the epoch."""
    from datetime import datetime

    try:
        return int(datetime.fromisoformat(str(stamp)).timestamp() * 1000)
    except (TypeError, ValueError):
        return None


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'")


def _artifacts_beside(tracking_uri: str, experiment: str) -> str | None:
    """Where a new experiment keeps its artifacts: beside a local sqlite store (MLflow's default
    is ./mlruns of whatever folder the export ran in); a server's or file store's own default
    otherwise."""
    if tracking_uri.startswith("sqlite:///"):
        return (Path(tracking_uri[len("sqlite:///"):]).resolve().parent / "mlartifacts" / experiment).as_uri()
    return None


def _sweep_parent(client, experiment_id: str, sweep_dir: Path) -> str:
    """The sweep's parent run (created once per sweep folder), with the report files as artifacts."""
    sweep = str(sweep_dir.resolve())
    existing = client.search_runs(
        [experiment_id], filter_string=f"tags.`bnbench.kind` = 'sweep' and tags.`bnbench.sweep` = '{_quoted(sweep)}'",
        max_results=1)
    if existing:
        parent = existing[0].info.run_id
    else:
        parent = client.create_run(experiment_id, run_name=sweep_dir.resolve().name,
                                   tags={"bnbench.kind": "sweep", "bnbench.sweep": sweep}).info.run_id
    for path in sorted(sweep_dir.iterdir()):
        if path.is_file() and (path.suffix in (".md", ".png", ".tex") or path.name.endswith(".csv")
                               or path.name in (records.SWEEP_INFO, "multirun.yaml")):
            client.log_artifact(parent, str(path), artifact_path="report")
    client.set_terminated(parent, status="FINISHED")
    return parent
