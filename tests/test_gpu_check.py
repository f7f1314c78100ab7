"""scripts/gpu_check.sh, the device check, tested here without a GPU: it parses, --prepare
builds its kit (wheels from the package index, the data files), and every step runs on CPU
as a dry run (--device cpu --quick) on small Fashion-MNIST files written by the test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import write_mnist_family

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "gpu_check.sh"


def _run(*args: str, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHON": sys.executable, **(env or {})})


def test_the_script_parses():
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0


@pytest.mark.slow
def test_prepare_builds_the_kit_a_machine_without_network_needs(tmp_path):
    data = tmp_path / "data"
    write_mnist_family(data, "FashionMNIST", compress=True)
    proc = _run("--prepare", str(tmp_path / "kit"), env={"BNBENCH_DATA": str(data)})
    assert proc.returncode == 0, proc.stderr
    wheels = sorted(p.name.split("-")[0] for p in (tmp_path / "kit" / "wheels").glob("*.whl"))
    assert wheels == ["antlr4_python3_runtime", "hydra_core", "hydra_joblib_launcher", "omegaconf"]
    assert len(list((tmp_path / "kit" / "data" / "FashionMNIST" / "raw").glob("*.gz"))) == 4


def test_prepare_without_data_says_where_it_looked(tmp_path, monkeypatch):
    if Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").is_file():
        pytest.skip("this machine has Debian's Fashion-MNIST")
    proc = _run("--prepare", str(tmp_path / "kit"), env={"BNBENCH_DATA": str(tmp_path / "nothing"),
                                                         "PYTHON": "true"})
    assert proc.returncode == 1 and "no Fashion-MNIST IDX files found" in proc.stderr


@pytest.mark.slow
def test_every_step_runs_on_cpu_as_a_dry_run(tmp_path):
    data = tmp_path / "data"
    write_mnist_family(data, "FashionMNIST", n_train=300, n_test=100, compress=True)
    out = tmp_path / "out"
    proc = _run("--device", "cpu", "--quick", "--data", str(data), "--out", str(out), env={"OUT": ""})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = {r["step"]: r for r in json.loads((out / "summary.json").read_text())}
    assert list(results) == ["env", "single", "determinism", "sweep", "resume", "parallel", "bench"]
    assert all(r["ok"] for r in results.values())
    assert results["sweep"]["figures"]["runs"] == 36 and results["sweep"]["figures"]["jobs"] == 12
    assert results["resume"]["figures"]["resumed_runs"] >= 1
    assert results["parallel"]["figures"]["workers"] == 2
    assert sorted(p.name for p in out.iterdir()) == ["bench.csv", "env.json", "log.txt", "records.tar.gz",
                                                     "summary.json", "summary.md"]
