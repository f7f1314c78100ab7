"""Where a record came from: library versions (in a job), the git state of bnbench's code, and
a sweep's command line, host and start (sweep.json)."""

from __future__ import annotations

import os
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

COMMAND_ENV = "BNBENCH_COMMAND"  # the CLI's command line as the user typed it (bnbench.launch.channel)

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
        # str(): torch.__version__ is a TorchVersion, and unpickling one (a sweep job's return
        # value, in the launching process) imports torch there
        "torch": str(torch.__version__),
        "torchvision": installed("torchvision"),
        "hydra": installed("hydra-core"),
        "cuda": torch.version.cuda or "none",
    }



def git_state(path: Path) -> dict[str, Any]:
    """Commit and dirty flag of the git checkout holding ``path`` (bnbench's own code)."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": dirty}


def sweep_info(argv: list[str]) -> dict[str, Any]:
    import shlex
    import socket

    return {
        # the CLI passes the command as typed; sys.argv is what it handed to Hydra
        "command": os.environ.get(COMMAND_ENV) or " ".join(shlex.quote(a) for a in argv),
        "started_at": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        "host": socket.gethostname(),
        "git": git_state(Path(__file__).resolve().parent),
    }
