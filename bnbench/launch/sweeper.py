"""bnbench's sweeper: Hydra's basic sweeper, with the seed stacks planned before launch.

Hydra instantiates only plugin classes defined in its ``hydra_plugins`` namespace package, so
the plugin (hydra/sweeper=bnbench) is hydra_plugins.bnbench_sweeper.PlannedSweeper, a subclass
of this one with nothing of its own; bnbench.config.register_configs also registers it by hand:
under setuptools' default editable install Hydra 1.3 does not find plugins there (hydra#3252). It leans on two of Hydra's internals, checked against hydra-core 1.3.2 to 1.3.8
(pyproject pins <1.4): BasicSweeper.split_arguments (the grid, in the basic sweeper's order)
and config_loader_impl.get_overrides_dirname (how Hydra names a run's folder).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.plugins.sweeper import Sweeper
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from omegaconf.errors import OmegaConfBaseException

from bnbench import records
from bnbench.config import check_complete
from bnbench.launch import channel
from bnbench.launch import planning
from bnbench.launch.resources import launcher_kind, parallel_jobs

log = logging.getLogger("bnbench")


class PlanningSweeper(Sweeper):
    """Expands the grid as the basic sweeper does (same runs, same order), then launches one
    job per stack of seeds (bnbench.launch.planning) instead of one per run.

    Not a subclass of BasicSweeper: Hydra's plugin scan re-executes the module that defines it,
    and a subclass of the class it replaced then fails in ``super()``."""

    def __init__(self, max_batch_size: Optional[int] = None, params: Optional[Dict[str, str]] = None) -> None:
        super().__init__()
        self.max_batch_size = max_batch_size
        self.params = dict(params or {})
        self.hydra_context: Any = None
        self.config: Optional[DictConfig] = None
        self.launcher: Any = None
        self.task_function: Any = None
        self.devices: Dict[str, int] = {}  # trainer.device -> trainer.jobs_per_gpu, over the sweep's runs

    def setup(self, *, hydra_context: Any, task_function: Any, config: DictConfig) -> None:
        # The launcher is instantiated in sweep(), once the plan says how many workers it may start.
        self.hydra_context, self.config, self.task_function = hydra_context, config, task_function

    def _launcher(self, workers: int, gpus: int) -> Any:
        """The configured launcher; on GPUs, a joblib launcher starts no more workers than the
        sweep has GPU slots (the others would only wait for one)."""
        from hydra.core.plugins import Plugins

        assert self.config is not None
        launcher_cfg = self.config.hydra.get("launcher")
        if gpus and launcher_kind(launcher_cfg) == "joblib" and parallel_jobs(launcher_cfg) > workers:
            log.info("hydra.launcher.n_jobs=%s asks for %d workers; this sweep trains on %d GPU slot%s (%d GPU%s x "
                     "trainer.jobs_per_gpu): starting %d", launcher_cfg.get("n_jobs"), parallel_jobs(launcher_cfg),
                     workers, "s" if workers != 1 else "", gpus, "s" if gpus != 1 else "", workers)
            with read_write(self.config), open_dict(self.config):
                self.config.hydra.launcher.n_jobs = workers
        return Plugins.instance().instantiate_launcher(hydra_context=self.hydra_context,
                                                       task_function=self.task_function, config=self.config)

    def sweep(self, arguments: List[str]) -> Any:
        from hydra._internal.core_plugins import basic_sweeper  # looked up now: the plugin scan replaces it

        assert self.config is not None and self.hydra_context is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides([*(f"{k}={v}" for k, v in self.params.items()), *arguments])
        # every run, in the basic sweeper's order
        runs_overrides = basic_sweeper.BasicSweeper.split_arguments(overrides, None)[0]
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)

        templates: Dict[tuple, DictConfig] = {}  # each cell's first composed config (see compose)
        if len(runs_overrides) > 50:  # about 0.1 s a cell: a large grid would otherwise sit silent for a minute
            log.info("planning %d runs (composing each cell's config once)...", len(runs_overrides))
        runs = [self._run(run_overrides, number, sweep_dir, templates)
                for number, run_overrides in enumerate(runs_overrides)]
        done, stale = sum(r.finished for r in runs), sum(r.stale for r in runs)
        channel.note_outcome(skipped=done)  # the sweep's closing line counts these, not every record in the folder
        if done:
            log.info("%d of the %d runs are finished already with this config: skipped", done, len(runs))
        if stale:
            log.info("%d finished record%s of another config (the code, or a setting such as trainer.epochs, "
                     "changed since): %s again", stale, "s are" if stale != 1 else " is",
                     "those runs train" if stale != 1 else "that run trains")
        workers, gpus = planning.workers(self.config.hydra.get("launcher"), self.devices)
        if gpus:
            log.info("planned for %d GPU%s: %d job%s at a time", gpus, "s" if gpus != 1 else "", workers,
                     "s" if workers != 1 else "")
        self.launcher = self._launcher(workers, gpus)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        jobs = planning.plan(runs, workers, whole_cells=bool(gpus))
        stacked = [job for job in jobs if len(job.members) > 1]
        if stacked:
            log.info("%d runs as %d jobs: seeds stacked %s", sum(len(job.members) for job in jobs), len(jobs),
                     " ".join(str(len(job.members)) for job in jobs))
        plan_id = planning.save(sweep_dir, jobs)
        batch = [[*job.overrides, f"sweep.plan={plan_id}", f"sweep.stack={k}"] for k, job in enumerate(jobs)]
        returns = []
        initial_job_idx = 0
        size = self.max_batch_size if self.max_batch_size and self.max_batch_size > 0 else max(1, len(batch))
        for chunk in (batch[i:i + size] for i in range(0, len(batch), size)):
            results = self.launcher.launch(chunk, initial_job_idx=initial_job_idx)
            for result in results:
                _ = result.return_value  # raises a job's exception, as the basic sweeper does
            initial_job_idx += len(chunk)
            returns.append(results)
        return returns

    def _run(self, overrides: List[str], number: int, sweep_dir: Path, templates: Dict[tuple, DictConfig]) -> planning.Run:
        """A run as its own job would see it: its config (see :meth:`compose`), its folder
        resolved as the launcher resolves it."""
        cfg = self.compose(overrides, templates)
        check_complete(cfg)  # ~diagnostics: said here, before any job, not as a KeyError in each
        self.devices[str(cfg.trainer.device)] = int(cfg.trainer.jobs_per_gpu)
        folders = set()
        for num in (number, number + 1_000_003):  # a folder named by the job number cannot be planned
            with open_dict(cfg):
                cfg.hydra.job.id = num
                cfg.hydra.job.num = num
            folders.add(str(OmegaConf.select(cfg, "hydra.sweep.subdir")))
        folder = str(OmegaConf.select(cfg, "hydra.sweep.subdir")) if len(folders) == 1 else ""
        with open_dict(cfg):
            cfg.hydra.job.num = number
        seed = int(cfg.seed) if "seed" in records.parse_overrides(overrides) else None
        blocker = planning.why_not_stackable(cfg) if folder else "hydra.sweep.subdir names run folders by job number"
        previous = records.read_summary(sweep_dir / folder) if folder else None
        run_id = records.run_identity(_task_config(cfg))
        finished = records.is_finished(previous, run_id)
        stale = not finished and records.is_finished(previous)
        return planning.Run(list(overrides), seed, folder, finished, cfg.trainer.stack_size, blocker, run_id, stale)

    def compose(self, overrides: List[str], templates: Dict[tuple, DictConfig]) -> DictConfig:
        """The config of the run with these overrides, as its job gets it (this is also Hydra's
        check, before launching, that every job's config composes).

        Composing costs Hydra about 0.1 s a run, and the runs of a cell differ only by their
        seed: so each cell's first run is composed, and the others are its copy with their own
        seed and the overrides Hydra records with them (``hydra.overrides.task``,
        ``hydra.job.override_dirname``), equal to their own composition (tested). A seed that
        does not fit the schema is composed, so that Hydra reports it as it would."""
        seed = records.parse_overrides(overrides).get("seed")
        key = planning.cell_key(overrides)
        template = templates.get(key) if seed is not None else None
        derived = _with_seed(template, overrides) if template is not None else None
        if derived is not None:
            return derived
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        if seed is not None and key not in templates:
            templates[key] = copy.deepcopy(cfg)  # _run sets the job's number on cfg
        return cfg


def _with_seed(template: DictConfig, overrides: List[str]) -> Optional[DictConfig]:
    """``template``, the composed config of a run of the same cell, with these overrides' seed,
    recorded as Hydra's config loader records a run's overrides; None when the seed does not fit
    the schema (Hydra's composition then reports it)."""
    from hydra._internal.config_loader_impl import get_overrides_dirname  # how Hydra names the folder

    parsed = [o for o in OverridesParser.create().parse_overrides(list(overrides)) if not o.is_hydra_override()]
    seeds = [o for o in parsed if o.key_or_group == "seed"]
    if len(seeds) != 1:
        return None
    cfg = copy.deepcopy(template)
    try:
        cfg.seed = seeds[0].value()  # the schema checks it (an int)
    except OmegaConfBaseException:
        return None
    naming = cfg.hydra.job.config.override_dirname
    with open_dict(cfg):
        cfg.hydra.overrides.task = [o.input_line for o in parsed]
        cfg.hydra.job.override_dirname = get_overrides_dirname(
            overrides=parsed, exclude_keys=list(naming.exclude_keys), item_sep=naming.item_sep, kv_sep=naming.kv_sep)
    return cfg


def _task_config(cfg: DictConfig) -> DictConfig:
    """The config the job's task function gets: without the hydra node (as hydra's run_job)."""
    task = copy.deepcopy(cfg)
    with read_write(task), open_dict(task):
        del task["hydra"]
    return task
