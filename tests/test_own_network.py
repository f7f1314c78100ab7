"""Your own network: a model option whose _target_ names a factory in your own module."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
import textwrap

import pytest
import torch
from torch import nn

from conftest import make_cfg, run_cli

MODULE = textwrap.dedent('''
    import math
    from torch import nn
    from bnbench.blocks import norm_act

    def tiny_net(in_shape, num_classes, norm, activation, width=16, depth=2):
        layers, features = [nn.Flatten()], math.prod(in_shape)
        for _ in range(depth):
            layers += [nn.Linear(features, width), *norm_act(norm, activation, width)]
            features = width
        return nn.Sequential(*layers, nn.Linear(features, num_classes))

    def blobs(n=240, features=6, classes=3, shift=2.0):
        import torch
        g = torch.Generator().manual_seed(0)
        y = torch.randint(0, classes, (n,), generator=g)
        x = torch.randn(n, features, generator=g) + shift * torch.nn.functional.one_hot(y, features).float()
        return x[: n * 3 // 4], y[: n * 3 // 4], x[n * 3 // 4:], y[n * 3 // 4:]

    def line(n=200):
        import numpy as np
        x = np.linspace(-1, 1, n, dtype=np.float32)[:, None]
        return x[:150], 3 * x[:150, 0] + 1, x[150:], 3 * x[150:, 0] + 1

    def tiny_cnn(in_shape, num_classes, norm, activation, channels=4):
        return nn.Sequential(nn.Conv2d(in_shape[0], channels, 3, padding=1),
                             *norm_act(norm, activation, channels, conv=True),
                             nn.Flatten(), nn.Linear(channels * in_shape[1] * in_shape[2], num_classes))
''')


@pytest.fixture
def own(tmp_path, monkeypatch):
    (tmp_path / "mynets.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    conf = tmp_path / "myconf" / "model"
    conf.mkdir(parents=True)
    (conf / "tiny.yaml").write_text("_target_: mynets.tiny_net\nwidth: 12\ndepth: 2\n")
    (conf / "tinycnn.yaml").write_text("_target_: mynets.tiny_cnn\nchannels: 3\n")
    (tmp_path / "myconf" / "dataset").mkdir()
    (tmp_path / "myconf" / "dataset" / "blobs.yaml").write_text("_target_: mynets.blobs\nclasses: 3\nval_size: 0.2\n")
    return tmp_path


@pytest.mark.parametrize("norm, order", [("bn_before", [nn.BatchNorm1d, nn.ReLU]), ("bn_after", [nn.ReLU, nn.BatchNorm1d]),
                                         ("none", [nn.Identity, nn.ReLU]), ("rms_before", [nn.RMSNorm, nn.ReLU])])
def test_the_factory_gets_the_runs_norm_and_activation_in_the_placement_order(own, norm, order):
    from omegaconf import OmegaConf

    from bnbench.job.models import build_model

    cfg = make_cfg(f"norm={norm}")
    cfg.model = OmegaConf.create({"_target_": "mynets.tiny_net", "width": 12, "depth": 2})
    model = build_model(cfg, (1, 8, 8), 10)
    kinds = [type(m) for m in model if not isinstance(m, (nn.Linear, nn.Flatten))]
    assert kinds == order * 2
    assert model[1].out_features == 12
    again = build_model(cfg, (1, 8, 8), 10)  # the seed fixes the initial weights
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_a_factory_that_cannot_be_imported_or_called_is_one_clear_error(own):
    from omegaconf import OmegaConf

    from bnbench.errors import ConfigError
    from bnbench.job.models import build_model

    cfg = make_cfg()
    cfg.model = OmegaConf.create({"_target_": "mynets.nothing_here"})
    with pytest.raises(ConfigError, match="model._target_=mynets.nothing_here cannot be imported"):
        build_model(cfg, (1, 8, 8), 10)
    cfg.model = OmegaConf.create({"_target_": "mynets.tiny_net", "height": 3})
    with pytest.raises(ConfigError, match="it is called as factory.*height"):
        build_model(cfg, (1, 8, 8), 10)


@pytest.mark.slow
def test_a_sweep_over_norm_and_activation_reaches_a_network_of_your_own(own):
    """The issue's check: a model defined only in the user's module and config folder, swept
    over norm and activation, trained (seeds one by one: it has no stacked form, said in the
    log) and reported."""
    env = {"PYTHONPATH": os.pathsep.join([str(own), os.environ.get("PYTHONPATH", "")])}
    proc = run_cli("run", "-m", f"--config-dir={own / 'myconf'}", "model=tiny,tinycnn", "norm=none,bn_before",
                   "activation=relu,tanh", "seed=0,1", "trainer.epochs=1", "trainer.threads=1", "sweep.name=own",
                   "--quiet", cwd=own, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = own / "results" / "own"
    records = [json.loads(p.read_text()) for p in sweep.glob("*/summary.json")]
    assert len(records) == 16 and all(r["status"] == "completed" for r in records)
    assert "not stacked" in proc.stderr + proc.stdout or all("stacked_seeds" not in r for r in records)
    report_md = (sweep / "report.md").read_text()
    assert "## Every pair" in report_md or "## Against the baseline" in report_md
    assert "tinycnn" in report_md and "tanh" in report_md
    # and data of one's own: the model and the dataset both from the user's module and folder
    data = run_cli("run", "-m", f"--config-dir={own / 'myconf'}", "model=tiny", "dataset=blobs", "norm=none,bn_before",
                   "activation=relu,tanh", "seed=0,1", "trainer.epochs=2", "trainer.threads=1", "sweep.name=owndata",
                   "--quiet", cwd=own, env=env)
    assert data.returncode == 0, data.stderr[-3000:]
    records = [json.loads(p.read_text()) for p in (own / "results" / "owndata").glob("*/summary.json")]
    assert len(records) == 8 and all(r["status"] == "completed" and r["classes"] == 3 for r in records)
    assert all(r["final"]["val_acc"] is not None for r in records), "bnbench's validation split"
    assert (own / "results" / "owndata" / "report.md").is_file()


def test_your_own_data_gets_the_validation_split_and_standardization_of_bnbenchs_own(own):
    from omegaconf import OmegaConf

    from bnbench.job.data import DataError, load_dataset

    cpu = torch.device("cpu")
    cfg = make_cfg()
    cfg.dataset = OmegaConf.create({"_target_": "mynets.blobs", "classes": 3, "val_size": 0.2})
    data = load_dataset(cfg, cpu)
    assert data.task == "classification" and data.num_outputs == 3
    assert len(data.train_x) + len(data.val_x) == 180 and len(data.test_x) == 60 and len(data.val_x) == 36
    assert data.train_x.mean(0).abs().max() < 1e-5 and (data.train_x.std(0) - 1).abs().max() < 0.05
    cfg.dataset = OmegaConf.create({"_target_": "mynets.line", "task": "regression", "val_size": 0})
    line = load_dataset(cfg, cpu)
    assert line.task == "regression" and line.num_outputs == 1 and line.train_y.shape == (150, 1)
    cfg.dataset = OmegaConf.create({"_target_": "mynets.line", "val_size": 0})  # float targets, no task given
    with pytest.raises(DataError, match="class labels are integers .*task: regression"):
        load_dataset(cfg, cpu)



@pytest.mark.slow
def test_the_worked_example_of_docs_own_network_runs_as_written(tmp_path):
    """docs/own-network.md's commands, run as written in a copy of examples/own_network/."""
    import re
    import shutil
    import subprocess

    root = Path(__file__).resolve().parent.parent
    doc = (root / "docs" / "own-network.md").read_text()
    block = re.search(r"```bash\n(.*?)```", doc, flags=re.S).group(1)
    commands = [line for line in block.splitlines() if line.strip() and not line.startswith("cd ")]
    work = tmp_path / "own_network"
    shutil.copytree(root / "examples" / "own_network", work)
    env = {k: v for k, v in os.environ.items() if k not in ("BNBENCH_RESULTS", "HYDRA_FULL_ERROR")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # this venv's bnbench
    for command in commands:
        proc = subprocess.run(command, shell=True, cwd=work, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, (command, proc.stderr[-3000:])
    records = [json.loads(p.read_text()) for p in (work / "results" / "mine").glob("*/summary.json")]
    assert len(records) == 18 and all(r["status"] == "completed" for r in records)
    report_md = (work / "results" / "mine" / "report.md").read_text()
    assert "## Every pair of `norm` levels" in report_md


def test_a_package_registers_its_network_and_data_under_entry_points(own):
    """A package of networks lists them under the entry point groups bnbench.models and
    bnbench.datasets; model.name / dataset.name then find them, as they find the built-in ones."""
    from omegaconf import OmegaConf

    from bnbench.config import validate
    from bnbench.job.data import load_dataset
    from bnbench.job.models import build_model

    info = own / "mynets-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mynets\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[bnbench.models]\ntiny = mynets:tiny_net\n\n"
                                           "[bnbench.datasets]\nblobs = mynets:blobs\n")
    cfg = make_cfg("norm=bn_after")
    cfg.model = OmegaConf.create({"name": "tiny", "width": 10, "depth": 1})
    cfg.dataset = OmegaConf.create({"name": "blobs", "classes": 3, "val_size": 0})
    validate(cfg)
    data = load_dataset(cfg, torch.device("cpu"))
    model = build_model(cfg, data.in_shape, data.num_outputs)
    assert [type(m) for m in model][1:4] == [nn.Linear, nn.ReLU, nn.BatchNorm1d] and model[1].out_features == 10
