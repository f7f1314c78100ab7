"""The Hydra application: composes the config, then runs one job.

``bnbench run`` hands its arguments to :func:`main` unchanged, so every Hydra feature
(overrides, ``-m`` multirun, ``hydra.sweeper.params`` grids, launcher plugins, ``--cfg``)
works as Hydra documents it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from bnbench.config import config_dir, register_configs
from bnbench.experiment import run_experiment

log = logging.getLogger("bnbench")
register_configs()

# Summary of the last single (non-multirun) run in this process, for the CLI.
last_run: dict[str, Any] | None = None


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
def main(cfg: DictConfig) -> dict[str, Any]:
    global last_run
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    summary = run_experiment(
        cfg,
        run_dir,
        overrides=list(hydra_cfg.overrides.task),
        choices=OmegaConf.to_container(hydra_cfg.runtime.choices),
    )
    status = summary["status"]
    if status == "failed":
        if hydra_cfg.mode == RunMode.MULTIRUN:  # a single run's error is printed once, by the CLI
            log.error("failed: %s", summary["error"])
    else:
        final, best = summary["final"], summary["best"]
        log.info(
            "%s: test acc %.2f%% (best %.2f%% at epoch %.2f), train loss %.4f, %.1fs, %s",
            status, 100 * final["test_acc"], 100 * best["test_acc"], best["epoch"], final["train_loss"],
            summary["wall_s"], run_dir,
        )
    if hydra_cfg.mode == RunMode.RUN:
        last_run = summary
    return summary
