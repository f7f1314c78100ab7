"""Fresh-seed confirmation of per-arm selections: ``bnbench confirm DIR --select KEY``.

``bnbench report DIR --select optimizer.lr`` chooses each arm's learning rate on the validation
split of the same seeds it then reports, which flatters the chosen values a little (the best of
several noisy means is biased upwards: a winner's curse). The comparison to publish reruns each
arm's chosen configuration on seeds that took no part in the choice. This module plans that
rerun: the overrides of each arm's chosen runs (read from their own ``.hydra/overrides.yaml``),
new seeds (by default the ones after the largest seed of the sweep), and a sibling folder
``DIR_confirm``. The CLI launches one ordinary sweep per arm into that folder (so a killed
confirmation resumes, and a finished one is skipped, like any sweep), then reports it with the
same ``--select``: one value per arm, the arms compared paired by seed.

No torch here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from bnbench import records
from bnbench.analysis.selection import SelectionError, select_per_arm
from bnbench.analysis.tables import default_metric
from bnbench.records.runs import ReportError, collect_runs

PLAN_FILE = records.CONFIRM_PLAN  # in the confirmation folder: what it confirms, and how it was chosen


@dataclass
class Confirmation:
    source: Path  # the sweep whose choices are confirmed
    folder: Path  # where the rerun goes (a sibling: SOURCE_confirm)
    key: str
    seeds: list[int]
    arms: list[dict]  # per arm: {"arm": {factor: value}, "chosen": value, "overrides": [...]} (seed excluded)


def plan(sweep_dir: Path, key: str, n_seeds: int, metric: str | None = None,
         folder: Path | None = None) -> Confirmation:
    """What to rerun, from the per-arm selection the report makes; ReportError when it cannot."""
    if n_seeds < 2:
        raise ReportError(f"--seeds {n_seeds}: a paired comparison needs at least 2 new seeds (5 or more "
                          "give the tests some power)")
    all_runs, factors, _ = collect_runs(sweep_dir)
    metric = metric or default_metric(all_runs)
    if metric not in records.RUN_METRICS:
        raise ReportError(f"unknown metric {metric!r}; choose one of: {', '.join(records.RUN_METRICS)}")
    try:  # each arm's value, chosen on the validation split, as the report chooses it
        runs, _, selection = select_per_arm(all_runs, factors, key, metric)
    except SelectionError as err:
        raise ReportError(str(err)) from err
    used = [int(s) for s in all_runs["seed"].dropna().unique()]
    start = max(used) + 1 if used else 0
    arms = []
    for _, row in selection.table.iterrows():
        arm = {a: str(row[a]) for a in selection.arms}
        if row["chosen"] is None:
            continue  # no results at any value: nothing to confirm (the report says so)
        chosen_runs = runs[(runs[key].astype(str) == row["chosen"])
                           & runs[selection.arms].astype(str).eq(pd.Series(arm)).all(axis=1)]
        overrides = _overrides(sweep_dir / str(chosen_runs["run"].iloc[0]))
        arms.append({"arm": arm, "chosen": row["chosen"], "overrides": overrides})
    if not arms:
        raise ReportError(f"--select {key}: no arm has a result to confirm")
    folder = folder or sweep_dir.with_name(f"{sweep_dir.name}_confirm")
    return Confirmation(sweep_dir, folder, key, list(range(start, start + n_seeds)), arms)


def _overrides(run_dir: Path) -> list[str]:
    """The run's own Hydra overrides, without its seed (and without the sweeper's own keys)."""
    path = run_dir / ".hydra" / "overrides.yaml"
    try:
        overrides = yaml.safe_load(path.read_text()) or []
    except (OSError, yaml.YAMLError) as err:
        raise ReportError(f"cannot read {path} ({err}): the chosen run's overrides are needed to rerun "
                                     "it; rerun that run, or give the overrides by hand with bnbench run -m") from err
    keep = []
    for item in overrides:
        name = item.lstrip("+~").split("=", 1)[0]
        if name == "seed" or name.startswith("sweep.") or name in ("results_dir",):
            continue
        keep.append(item)
    return keep


def commands(confirmation: Confirmation, extra: list[str]) -> list[list[str]]:
    """One `bnbench run -m` argument list per arm: the config folders the sweep read, its
    overrides, the new seeds, the folder."""
    folder = confirmation.folder
    seeds = ",".join(map(str, confirmation.seeds))
    sources = config_sources(confirmation.source)
    return [["run", "-m", *sources, *arm["overrides"], f"seed={seeds}", f"results_dir={folder.parent}",
             f"sweep.name={folder.name}", *extra] for arm in confirmation.arms]


def config_sources(sweep_dir: Path) -> list[str]:
    """The sweep's own config folders, from Hydra's multirun.yaml: ``--config-dir`` (-cd) folders
    and ``hydra.searchpath``, so that an arm's option from the user's config folder (an
    ablation, a model size) composes in the rerun as it did in the sweep."""
    hydra = records.store.read_multirun(Path(sweep_dir)).get("hydra") or {}
    carried = [f"hydra.searchpath={o.split('=', 1)[1]}" for o in (hydra.get("overrides") or {}).get("hydra") or []
               if o.startswith("hydra.searchpath=")]
    for source in (hydra.get("runtime") or {}).get("config_sources") or []:
        if source.get("provider") == "command-line" and source.get("schema") == "file":
            carried.insert(0, f"--config-dir={source['path']}")
    return carried


def write_plan(confirmation: Confirmation) -> None:
    confirmation.folder.mkdir(parents=True, exist_ok=True)
    records.write_json(confirmation.folder / PLAN_FILE, {
        "confirms": str(confirmation.source), "select": confirmation.key, "seeds": confirmation.seeds,
        "arms": confirmation.arms})
