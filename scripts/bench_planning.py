#!/usr/bin/env python
"""The sweeper's work before launch: composing the runs' configs.

bnbench's sweeper (hydra_plugins/bnbench_sweeper) needs every run's config before launching
(its folder, identity, whether it can stack). Hydra composes a config in about 0.1 s; the sweeper
composes each cell's first run and copies it for the cell's other seeds (equal to their own
composition, tests/test_sweeper.py). This prints both ways side by side on one grid: every run
composed by Hydra, and the sweeper's way.

    python scripts/bench_planning.py [--grid "norm=none,bn_before,bn_after seed=0,1,2,3,4"]
"""

from __future__ import annotations

import argparse
import time

from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra._internal.utils import create_config_search_path
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import setup_globals
from hydra.types import HydraContext, RunMode

import bnbench.launch.app  # noqa: F401  (registers the schemas and the sweeper)
from bnbench.config import config_dir
from hydra_plugins.bnbench_sweeper import PlannedSweeper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", default="norm=none,bn_before,bn_after seed=0,1,2,3,4")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    setup_globals()
    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(str(config_dir())))
    master = loader.load_configuration("config", overrides=[], run_mode=RunMode.MULTIRUN)
    sweeper = PlannedSweeper()
    sweeper.hydra_context, sweeper.config = HydraContext(config_loader=loader, callbacks=None), master
    runs = BasicSweeper.split_arguments(OverridesParser.create(config_loader=loader).parse_overrides(args.grid.split()),
                                        None)[0]
    loader.load_sweep_config(master, runs[0])  # warm-up: first-use costs are nobody's

    def every_run() -> None:
        for run in runs:
            loader.load_sweep_config(master, run)

    def per_cell() -> None:
        templates: dict = {}
        for run in runs:
            sweeper.compose(run, templates)

    times = {}
    for name, fn in (("every run composed", every_run), ("one composition per cell", per_cell)):
        best = float("inf")
        for _ in range(args.repeats):
            started = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - started)
        times[name] = best
    print(f"{len(runs)} runs ({args.grid}), best of {args.repeats}:")
    for name, seconds in times.items():
        print(f"  {name:<26} {seconds:6.2f} s  ({1000 * seconds / len(runs):5.1f} ms a run)")
    print(f"  ratio {times['every run composed'] / times['one composition per cell']:.1f}x")


if __name__ == "__main__":
    main()
