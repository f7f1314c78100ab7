"""bnbench's sweeper composes one config per cell and gives the other seeds of the cell a copy
(hydra_plugins/bnbench_sweeper): each copy must equal what Hydra's own composition of that run
gives, hydra node included, since the run's folder, identity and snapshot come from it."""

from __future__ import annotations

import pytest
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra._internal.utils import create_config_search_path
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import setup_globals
from hydra.types import HydraContext, RunMode
from omegaconf import OmegaConf

import bnbench.launch.app  # noqa: F401  (registers the schemas and the sweeper)
from bnbench.config import config_dir
from hydra_plugins.bnbench_sweeper import PlannedSweeper


def _sweeper(*hydra_overrides: str) -> tuple[PlannedSweeper, ConfigLoaderImpl]:
    setup_globals()
    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(str(config_dir())))
    master = loader.load_configuration("config", overrides=list(hydra_overrides), run_mode=RunMode.MULTIRUN)
    sweeper = PlannedSweeper()
    sweeper.hydra_context, sweeper.config = HydraContext(config_loader=loader, callbacks=None), master
    return sweeper, loader


def _runs(loader: ConfigLoaderImpl, *arguments: str) -> list[list[str]]:
    parsed = OverridesParser.create(config_loader=loader).parse_overrides(list(arguments))
    return BasicSweeper.split_arguments(parsed, None)[0]


@pytest.mark.parametrize("hydra_overrides", [
    [],  # the default folders: hydra.job.override_dirname
    ["hydra.sweep.subdir=${hydra.job.override_dirname}/s${seed}",
     "hydra.job.config.override_dirname.exclude_keys=[seed,trainer.epochs]",
     "hydra.job.config.override_dirname.kv_sep=-"],
])
def test_each_seed_s_config_equals_its_own_composition(hydra_overrides, monkeypatch):
    sweeper, loader = _sweeper(*hydra_overrides)
    runs = _runs(loader, "norm=none,gn_before", "seed=0,1,2", "activation=relu,tanh", "trainer.epochs=1",
                 "+dataset.train_size=100")
    composed = []
    compose = loader.load_sweep_config
    monkeypatch.setattr(loader, "load_sweep_config", lambda master, run: composed.append(run) or compose(master, run))
    templates: dict = {}
    mine = [sweeper.compose(run, templates) for run in runs]
    assert len(composed) == len(templates) == 4, "one composition per cell"
    monkeypatch.undo()
    for run, cfg in zip(runs, mine):
        theirs = loader.load_sweep_config(sweeper.config, run)
        assert OmegaConf.to_yaml(cfg) == OmegaConf.to_yaml(theirs), run
        assert OmegaConf.select(cfg, "hydra.sweep.subdir") == OmegaConf.select(theirs, "hydra.sweep.subdir")
        assert cfg.seed == theirs.seed == int(run[1].split("=")[1])


def test_a_seed_that_does_not_compose_fails_as_hydra_says():
    sweeper, loader = _sweeper()
    templates: dict = {}
    good, bad = _runs(loader, "seed=0,abc")
    sweeper.compose(good, templates)
    with pytest.raises(Exception) as mine:
        sweeper.compose(bad, templates)
    with pytest.raises(Exception) as theirs:
        loader.load_sweep_config(sweeper.config, bad)
    assert type(mine.value) is type(theirs.value) and str(mine.value) == str(theirs.value)


def test_runtime_keys_are_left_out_of_run_folder_names():
    """records.RUNTIME_KEYS (out of a run's identity) and conf/config.yaml's exclude_keys (out of
    its folder name) must agree: a runtime key in a folder name would give one run two folders."""
    from bnbench.config import compose_config
    from bnbench.records import RUNTIME_KEYS

    cfg = compose_config(hydra=True)
    excluded = set(cfg.hydra.job.config.override_dirname.exclude_keys)
    runtime = {f"sweep.{k}" for k in cfg.sweep} | (set(RUNTIME_KEYS) - {"sweep"})
    assert runtime <= excluded, runtime - excluded
    # the one key out of folder names yet in a run's identity: a run asked to keep its final
    # weights is another record (rerun with save_final=true, it trains again to write final.pt)
    assert excluded - runtime == {"trainer.save_final"}
