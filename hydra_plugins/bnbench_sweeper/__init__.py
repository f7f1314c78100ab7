"""hydra/sweeper=bnbench: the plugin Hydra instantiates (it accepts only classes defined in its
``hydra_plugins`` namespace package). Everything it does is bnbench.launch.sweeper's."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

from hydra.core.config_store import ConfigStore

from bnbench.launch.sweeper import PlanningSweeper


@dataclass
class PlannedSweeperConf:
    _target_: str = "hydra_plugins.bnbench_sweeper.PlannedSweeper"
    max_batch_size: Optional[int] = None
    params: Optional[Dict[str, str]] = None


ConfigStore.instance().store(group="hydra/sweeper", name="bnbench", node=PlannedSweeperConf, provider="bnbench")


class PlannedSweeper(PlanningSweeper):
    """bnbench.launch.sweeper.PlanningSweeper, under the name and package Hydra requires."""
