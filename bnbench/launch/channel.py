"""The one channel between the CLI and the jobs of its command: an outcome file named by an
environment variable (where the run or sweep went, how many jobs were planned, why no report
was written), and the variables that tell a job about its command (its live view). The run
records themselves are the truth; this only says where they are."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from bnbench.records.provenance import COMMAND_ENV  # noqa: F401  (the command line as typed, for sweep.json)
from bnbench.records.store import write_json

LIVE_VIEW = "BNBENCH_LIVE_VIEW"  # set while the sweep command draws its live view on the terminal
FAIL_FAST_MARKER = ".fail-fast-stop"  # in the sweep folder: a run failed under --fail-fast, later jobs return


# The CLI's outcome of one `bnbench run` command: where its run or sweep went (and, for a sweep,
# how many jobs were planned and why no report was written). The CLI names a file in this
# variable; the job (single run) or the sweep callback writes it; the CLI then reads the run
# records themselves from the folder it names.
OUTCOME_ENV = "BNBENCH_OUTCOME"


def note_outcome(**fields: Any) -> None:
    """Add ``fields`` to the outcome file the CLI asked for (no-op outside the CLI)."""
    path = os.environ.get(OUTCOME_ENV)
    if not path:
        return
    try:
        known = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        known = {}
    write_json(Path(path), {**known, **fields})


def read_outcome(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
