"""hydra/sweeper=bnbench: the plugin Hydra instantiates (it accepts only classes defined in its
``hydra_plugins`` namespace package). Everything it does is bnbench.launch.sweeper's."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional

from hydra.core.config_store import ConfigStore

from bnbench.launch.sweeper import PlanningSweeper


# The default grid of `bnbench run -m`: BN placement x 3 seeds. It belongs to this sweeper, not
# to conf/config.yaml's hydra.sweeper: another sweeper (hydra/sweeper=optuna) would read it as its
# search space (TPE "tuning" the seed). Command-line overrides of a key replace it; presets in
# conf/ablation/ extend it.
DEFAULT_GRID = {"norm": "none,bn_before,bn_after", "seed": "0,1,2"}


@dataclass
class PlannedSweeperConf:
    _target_: str = "hydra_plugins.bnbench_sweeper.PlannedSweeper"
    max_batch_size: Optional[int] = None
    params: Optional[Dict[str, str]] = field(default_factory=lambda: dict(DEFAULT_GRID))


ConfigStore.instance().store(group="hydra/sweeper", name="bnbench", node=PlannedSweeperConf, provider="bnbench")


class PlannedSweeper(PlanningSweeper):
    """bnbench.launch.sweeper.PlanningSweeper, under the name and package Hydra requires."""
