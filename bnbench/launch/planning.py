"""Sweep planning, before any job starts: which runs train together as one stack.

The sweeper (hydra_plugins/bnbench_sweeper) expands the grid into runs exactly as Hydra's basic
sweeper does, works out each run's config (composed once per cell, copied for the cell's other
seeds), and hands the runs to :func:`plan`. The runs of a cell (runs that differ only by ``seed``) become
stacks (:func:`seed_stacks`); each stack is one launched job, which trains its seeds as one
grouped model (bnbench/job/stacking.py) and writes each seed's record into that seed's own folder.
The plan is saved in the sweep folder (``.plans/ID.json``) and each job is told its entry
(``sweep.plan=ID sweep.stack=K``): jobs never rediscover their sweep. Torch-free: it runs in
the launching process.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig

from bnbench import records
from bnbench.launch.resources import gpu_jobs, parallel_jobs, sweep_gpus
from bnbench.errors import ConfigError

PLANS = ".plans"

# Optimizers whose update of each entry of a parameter depends on that entry's own gradients
# only: on a grouped tensor of stacked copies each copy then gets its separate run's update.
# One that is not (LARS, LAMB: per-tensor norms; L-BFGS: one step for all parameters) is left
# out of this set, and its runs train one by one.
PER_ELEMENT_OPTIMIZERS = frozenset({"sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop"})


def workers(launcher, devices: dict[str, int]) -> tuple[int, int]:
    """(jobs that train at once, GPUs they share) for a sweep whose runs ask for ``devices``
    (trainer.device -> trainer.jobs_per_gpu) under ``launcher``: on CPU, the launcher's parallel
    workers; on GPUs, GPUs x jobs_per_gpu at most, so that each cell trains whole, as one
    stack per GPU slot, instead of being cut into stacks for workers that would only wait for
    a GPU. The GPUs are counted without torch (launch.resources.visible_gpu_count)."""
    gpus = max((sweep_gpus(device, launcher) for device in devices), default=0)
    if not gpus:
        return parallel_jobs(launcher), 0
    per_gpu = max(per for device, per in devices.items() if sweep_gpus(device, launcher))
    return gpu_jobs(launcher, gpus, per_gpu), gpus


def why_not_stackable(cfg: DictConfig) -> str | None:
    """None if the seeds of this config can train as one stack, else the reason (for the log)."""
    if not cfg.trainer.stack_seeds:
        return "trainer.stack_seeds=false"
    if cfg.optimizer.name not in PER_ELEMENT_OPTIMIZERS:
        return f"optimizer {cfg.optimizer.name} is not per-element: stacked copies would share its statistics"
    return None


@dataclass
class Run:
    """One run of the sweep, as its own job would be: overrides, seed, and folder (relative to
    the sweep folder)."""

    overrides: list[str]
    seed: int | None
    folder: str
    finished: bool = False  # a finished record of this very run is on disk already
    stack_size: int | None = None  # trainer.stack_size
    blocker: str | None = None  # why it cannot stack (why_not_stackable), or None
    run_id: str | None = None  # the identity of the config planned (records.run_identity): the job trains that
    stale: bool = False  # a finished record of another config is there (e.g. trainer.epochs changed): retrained


@dataclass
class Job:
    """What one launched job trains: the runs of ``members`` (one stack; one run when alone)."""

    members: list[Run] = field(default_factory=list)

    @property
    def overrides(self) -> list[str]:
        return self.members[0].overrides  # the first member's folder is the job's own


def cell_key(overrides: Sequence[str]) -> tuple[str, ...]:
    """What a run's cell is: its overrides without the seed."""
    return tuple(o for o in overrides if records.parse_overrides([o]).keys() != {"seed"})


def plan(runs: Sequence[Run], workers: int, whole_cells: bool = False) -> list[Job]:
    """The jobs that train ``runs``: unfinished runs of one cell that can stack become stacks
    (:func:`seed_stacks`, sized to keep ``workers`` parallel workers busy), every other
    unfinished run a job of its own, in the order of the runs. Finished runs get no job.

    ``whole_cells`` (a sweep on GPUs): a cell is never cut to fill idle workers. A small model's
    step on a GPU costs about the same for 2 seeds as for 20 (it is bound by kernel launches,
    not arithmetic), so splitting a cell only adds steps; ``trainer.stack_size`` still caps."""
    cells: dict[tuple[str, ...], list[Run]] = {}
    alone: list[Run] = []
    for run in runs:
        if run.finished:
            continue
        if run.seed is None or run.blocker is not None:
            alone.append(run)
        else:
            cells.setdefault(cell_key(run.overrides), []).append(run)
    jobs: list[tuple[int, Job]] = [(runs.index(run), Job([run])) for run in alone]
    for number, members in enumerate(cells.values()):
        by_seed = {run.seed: run for run in members}
        for seeds in seed_stacks(list(by_seed), number, len(cells), 1 if whole_cells else workers,
                                 members[0].stack_size):
            job = Job([by_seed[seed] for seed in seeds])
            jobs.append((runs.index(job.members[0]), job))
    return [job for _, job in sorted(jobs, key=lambda pair: pair[0])]


def seed_stacks(seeds: Sequence[int], cell: int, cells: int, workers: int, size: int | None = None) -> list[list[int]]:
    """How the ``seeds`` of cell number ``cell`` (of ``cells``, in launch order) split into
    stacks, each trained by one job of one of ``workers`` parallel workers.

    ``size`` caps a stack. Without it, cells run whole, a round of ``workers`` cells at a time,
    and the cells of an incomplete last round are split so that its stacks occupy every worker:
    3 cells of 5 seeds on 2 workers would take 2 rounds of 5 seed-runs with one worker idle in
    the second; with the third cell as stacks of 3 and 2 they take 5 + 3. Whole cells make the
    largest stacks, and larger stacks cost less per seed."""
    seeds = list(seeds)
    if size is not None:
        parts = math.ceil(len(seeds) / size)
    else:
        last_round = cells % max(1, workers)  # cells left over after the full rounds
        parts = math.ceil(workers / last_round) if last_round and cell >= cells - last_round else 1
    stacks, start = [], 0
    for stack_len in _split_sizes(len(seeds), min(parts, len(seeds))):
        stacks.append(seeds[start:start + stack_len])
        start += stack_len
    return stacks


def _split_sizes(n: int, parts: int) -> list[int]:
    """n items in ``parts`` contiguous parts, the larger first: 5 in 2 -> [3, 2]."""
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


def save(sweep_dir: Path, jobs: Sequence[Job]) -> str:
    """Write the plan into the sweep folder; returns its id (for ``sweep.plan``)."""
    plan_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    (sweep_dir / PLANS).mkdir(parents=True, exist_ok=True)
    records.write_json(sweep_dir / PLANS / f"{plan_id}.json",
                       {"jobs": [{"members": [asdict(run) for run in job.members]} for job in jobs]})
    return plan_id


def check_planned(member: dict[str, Any], run_id: str, folder: str) -> None:
    """ConfigError unless the job composed the config the sweep planned for this run: a config
    file edited (or a git branch switched) while the sweep runs would otherwise mix two configs
    in one comparison, the later jobs training the new one."""
    planned = member.get("run_id")
    if planned is not None and planned != run_id:
        raise ConfigError(f"the config files changed since this sweep was planned ({folder}: planned run id "
                          f"{planned}, composed now {run_id}); this job did not train. Restore the files, or run the "
                          "sweep command again: it keeps the finished runs and plans the rest with the files as they "
                          "are now")


def members(sweep_dir: Path, plan_id: str, stack: int) -> list[dict[str, Any]]:
    """The runs job ``stack`` of plan ``plan_id`` trains: [{seed, folder, overrides}, ...]."""
    path = sweep_dir / PLANS / f"{plan_id}.json"
    if not path.is_file():
        raise ConfigError(f"sweep.plan={plan_id} sweep.stack={stack}: there is no plan {path}; these keys are set by "
                          "bnbench's sweeper, not by hand")
    try:
        return json.loads(path.read_text())["jobs"][stack]["members"]
    except (OSError, ValueError, KeyError, IndexError, TypeError) as err:  # torn, truncated, edited
        raise ConfigError(f"the sweep's plan {path} is damaged ({type(err).__name__}): run the sweep command again; "
                          "it plans anew and keeps the finished runs") from None
