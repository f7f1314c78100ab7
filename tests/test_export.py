"""`bnbench export` to TensorBoard and MLflow, read back with the trackers' own readers."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
from datetime import datetime

import pandas as pd
import pytest

from conftest import run_cli


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Two completed runs and one diverged run, from a real sweep."""
    cwd = tmp_path_factory.mktemp("export")
    ok = run_cli("run", "-m", "norm=none,bn_before", "seed=0", "sweep.name=s", "trainer.epochs=2", "trainer.threads=1",
                 "trainer.log_progress=false", "--quiet", cwd=cwd)
    assert ok.returncode == 0, ok.stderr
    bad = run_cli("run", "-m", "norm=none", "seed=1", "optimizer.lr=1e6", "sweep.name=s", "trainer.epochs=2",
                  "trainer.threads=1", "trainer.log_progress=false", "--quiet", cwd=cwd)
    assert bad.returncode == 0, bad.stderr
    return cwd, cwd / "results" / "s"


@pytest.mark.slow
def test_tensorboard_export_reads_back_with_tensorboard(sweep):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    cwd, folder = sweep
    out = cwd / "tb"
    proc = run_cli("export", str(folder), "--tensorboard", str(out), cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    results = pd.read_csv(folder / "results.csv").set_index("run")
    runs = sorted(p.name for p in out.iterdir())
    assert runs == sorted(results.index)
    for name in runs:
        events = EventAccumulator(str(out / name))
        events.Reload()
        metrics = pd.read_csv(folder / name / "metrics.csv")
        accuracy = events.Scalars("test/acc")
        assert [e.step for e in accuracy] == metrics["step"].tolist()
        assert [e.value for e in accuracy] == pytest.approx(metrics["test_acc"].tolist())
        # the HParams view: swept keys and status against the final metrics
        content = events.PluginTagToContent("hparams")
        start = next(plugin_data_pb2.HParamsPluginData.FromString(c).session_start_info
                     for c in content.values() if plugin_data_pb2.HParamsPluginData.FromString(c).HasField("session_start_info"))
        assert start.hparams["status"].string_value == results.loc[name, "status"]
        assert start.hparams["norm"].string_value == results.loc[name, "norm"]
        # numbers are numbers (a sortable, log-scalable axis), the seed is not an hparam, and the
        # cell is the session group, so TensorBoard groups a cell's seeds
        assert start.hparams["trainer.epochs"].number_value == 2.0
        assert start.hparams["optimizer.lr"].string_value == str(results.loc[name, "optimizer.lr"])  # "(default)" too
        assert "seed" not in start.hparams
        assert start.group_name == f"norm={results.loc[name, 'norm']},optimizer.lr={results.loc[name, 'optimizer.lr']}," \
            "trainer.epochs=2"
        experiment = next(plugin_data_pb2.HParamsPluginData.FromString(c).experiment for c in content.values()
                          if plugin_data_pb2.HParamsPluginData.FromString(c).HasField("experiment"))
        infos = {info.name: info for info in experiment.hparam_infos}
        assert [v.string_value for v in infos["norm"].domain_discrete.values] == sorted({"none", "bn_before"})
        assert [v.number_value for v in infos["trainer.epochs"].domain_discrete.values] == [2.0]
        final = events.Scalars("final/final_test_acc")
        assert final[0].value == pytest.approx(results.loc[name, "final_test_acc"])
    again = run_cli("export", str(folder), "--tensorboard", str(out), cwd=cwd)  # replaces, never duplicates
    assert again.returncode == 0, again.stderr
    events = EventAccumulator(str(out / runs[0]))
    events.Reload()
    assert len(events.Scalars("test/acc")) == len(pd.read_csv(folder / runs[0] / "metrics.csv"))


@pytest.mark.slow
def test_mlflow_export_reads_back_with_mlflow(sweep):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    cwd, folder = sweep
    uri = f"sqlite:///{cwd / 'mlflow.db'}"
    proc = run_cli("export", str(folder), "--mlflow", uri, "--experiment", "bn", cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    assert "3 runs exported, 0 already there" in proc.stdout
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("bn")
    found = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in found if r.data.tags.get("bnbench.kind") == "sweep"]
    children = {r.data.tags["bnbench.run"]: r for r in found if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    results = pd.read_csv(folder / "results.csv").set_index("run")
    assert sorted(children) == sorted(results.index)
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "report")} >= {"report/report.md",
                                                                                        "report/results.csv"}
    for name, run in children.items():
        status = results.loc[name, "status"]
        assert run.data.tags["bnbench.status"] == status and run.info.status == "FINISHED"
        assert run.data.params["norm"] == results.loc[name, "norm"] and run.data.params["seed"] == str(
            results.loc[name, "seed"])
        history = client.get_metric_history(run.info.run_id, "test/acc")
        metrics = pd.read_csv(folder / name / "metrics.csv")
        assert sorted(m.step for m in history) == metrics["step"].tolist()
        assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(metrics["test_acc"].tolist())
        if status == "diverged":  # its NaN loss is exported as NaN, not left out
            losses = client.get_metric_history(run.info.run_id, "train/loss_running")
            assert any(math.isnan(m.value) for m in losses)
        assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"summary.json", "metrics.csv", "config.yaml"}
        # the whole config, searchable (params.optimizer = 'sgd'), the cell to group seeds by, and
        # the times of training, not of the export
        assert run.data.params["optimizer"] == "sgd" and run.data.params["optimizer.name"] == "sgd"
        assert run.data.params["trainer.epochs"] == "2"
        assert run.data.tags["bnbench.cell"].startswith(f"norm={results.loc[name, 'norm']}")
        record = json.loads((folder / name / "summary.json").read_text())
        started = datetime.fromisoformat(record["started_at"]).timestamp() * 1000
        assert abs(run.info.start_time - started) < 1000
    assert experiment.artifact_location.startswith((cwd / "mlartifacts").as_uri())  # beside the store
    again = run_cli("export", str(folder), "--mlflow", uri, "--experiment", "bn", cwd=cwd)
    assert again.returncode == 0 and "0 runs exported, 3 already there" in again.stdout
    assert len(client.search_runs([experiment.experiment_id])) == 4
    # a copy of the sweep, exported while one of its runs was still running, then again when done:
    # its own parent, and that run replaced, never duplicated
    copy = cwd / "results" / "copy"
    shutil.copytree(folder, copy)
    (one,) = [p for p in copy.glob("*/summary.json") if "bn_before" in p.parent.name]
    finished = one.read_text()
    one.write_text(json.dumps({**json.loads(finished), "status": "running"}))
    first = run_cli("export", str(copy), "--mlflow", uri, "--experiment", "bn", cwd=cwd)
    assert first.returncode == 0 and "3 runs exported" in first.stdout, first.stderr
    one.write_text(finished)
    second = run_cli("export", str(copy), "--mlflow", uri, "--experiment", "bn", cwd=cwd)
    assert second.returncode == 0 and "1 runs exported, 2 already there" in second.stdout, second.stdout
    found = client.search_runs([experiment.experiment_id])
    parents = [r for r in found if r.data.tags.get("bnbench.kind") == "sweep"]
    assert len(parents) == 2 and len(found) == 8  # two sweeps: a parent and 3 runs each
    copies = [r for r in found if r.data.tags.get("bnbench.sweep") == str(copy.resolve()) and "bnbench.run" in r.data.tags]
    assert sorted(r.data.tags["bnbench.status"] for r in copies) == sorted(results["status"])


@pytest.mark.slow
def test_export_needs_a_target_and_a_sweep(sweep, tmp_path):
    cwd, folder = sweep
    proc = run_cli("export", str(folder), cwd=cwd)
    assert proc.returncode == 1 and "--tensorboard FOLDER and/or --mlflow URI" in proc.stderr
    proc = run_cli("export", str(tmp_path / "nowhere"), "--tensorboard", str(tmp_path / "tb"), cwd=cwd)
    assert proc.returncode == 1 and "is not a folder" in proc.stderr
    if importlib.util.find_spec("mlflow") is not None:  # an unsupported tracking URI: one line, no traceback
        proc = run_cli("export", str(folder), "--mlflow", "bogus://nowhere", cwd=cwd)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        assert lines[-1].startswith("error: MLflow at bogus://nowhere:")


def test_a_store_or_folder_that_cannot_be_written_is_one_line_at_once(tmp_path):
    """An unwritable MLflow store cost 106 s of MLflow's retries and a SQLAlchemy traceback; an
    unwritable TensorBoard folder gave a message without its path."""
    from bnbench import export
    from bnbench.export import ExportError

    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    for uri in (f"sqlite:///{blocker / 'mlflow.db'}", str(blocker / "mlruns"), f"file:{blocker / 'mlruns'}"):
        with pytest.raises(ExportError, match=f"MLflow store .*: cannot write {blocker}"):
            export._check_local_store(uri)
    export._check_local_store(f"sqlite:///{tmp_path / 'ok' / 'mlflow.db'}")  # a writable one passes
    export._check_local_store("http://localhost:5000")  # a server is asked, not probed
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "sweep.json").write_text("{}")
    run = sweep / "norm=none,seed=0"
    run.mkdir()
    (run / "summary.json").write_text('{"status": "completed", "run_id": "x", "seed": 0, "params": {"norm": "none"}, '
                                      '"final": {"test_acc": 0.9}}')
    if importlib.util.find_spec("tensorboard") is not None:
        with pytest.raises(ExportError, match=f"--tensorboard .*: cannot write {blocker}"):
            export.to_tensorboard(sweep, blocker / "tb")
