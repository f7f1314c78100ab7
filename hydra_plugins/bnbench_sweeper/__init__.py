"""hydra/sweeper=bnbench: Hydra looks for plugins in the ``hydra_plugins`` namespace package;
the sweeper itself is bnbench.launch.sweeper (bnbench also registers it by hand, see there)."""

from bnbench.launch.sweeper import PlannedSweeper, PlannedSweeperConf

__all__ = ["PlannedSweeper", "PlannedSweeperConf"]
