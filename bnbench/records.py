"""The run record on disk: the single source of truth for reports, resume and progress.

A run folder holds Hydra's config snapshot (``.hydra/``), ``metrics.csv`` (one row per
evaluation) and ``summary.json`` (status, final and best metrics, provenance). Files are
written to a temporary name and renamed, so a killed process never leaves half a file.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping

from omegaconf import DictConfig, OmegaConf

SUMMARY = "summary.json"
METRICS = "metrics.csv"

METRIC_COLUMNS = ["step", "epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "wall_s"]

# Config keys that do not change a run's result (paths, runtime and display settings): left out
# of its identity hash and of the factors of a report. conf/config.yaml keeps them out of run
# folder names too (hydra.job.config.override_dirname.exclude_keys).
RUNTIME_KEYS = ("results_dir", "sweep", "dataset.root", "dataset.download", "trainer.threads",
                "trainer.log_progress", "trainer.device", "trainer.jobs_per_gpu", "trainer.stack_seeds")


def is_runtime_key(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in RUNTIME_KEYS)


_UMASK = os.umask(0)
os.umask(_UMASK)


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; use the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    _atomic_write(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def write_csv(path: Path, rows: Iterable[Mapping[str, Any]], columns: list[str]) -> None:
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    _atomic_write(path, buffer.getvalue())


def write_text(path: Path, text: str) -> None:
    _atomic_write(path, text)


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / SUMMARY
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, OSError):
        return None


def run_identity(cfg: DictConfig) -> str:
    """Hash of the resolved config without paths and runtime settings: equal hash, same run."""
    from bnbench import __version__

    data = OmegaConf.to_container(cfg, resolve=True)
    data = {k: v for k, v in data.items() if k != "hydra"}
    if not (data.get("diagnostics") or {}).get("enabled"):
        data.pop("diagnostics", None)  # diagnostics off change nothing; on, they add a file
    for dotted in RUNTIME_KEYS:
        node = data
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(last, None)
    payload = json.dumps({"config": data, "bnbench": __version__}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def parse_overrides(overrides: Iterable[str]) -> dict[str, str]:
    """Hydra override strings (``key=value``, ``+key=value``) as a dict; deletions are skipped."""
    params = {}
    for item in overrides:
        if item.startswith("~") or "=" not in item:
            continue
        key, value = item.split("=", 1)
        params[key.lstrip("+")] = value
    return params


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    import torch

    from bnbench import __version__

    def installed(name: str) -> str:
        try:
            return version(name)  # without importing it: torchvision's import costs seconds per worker
        except PackageNotFoundError:
            return "not installed"

    return {
        "bnbench": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": installed("torchvision"),
        "hydra": installed("hydra-core"),
        "cuda": torch.version.cuda or "none",
    }
