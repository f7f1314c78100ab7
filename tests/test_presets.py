"""The ablation presets of issue 5 (conf/ablation/): each composes into the grid and the model
the issue describes, every value of its grid composes and validates, and each of its norm
settings trains a few steps with diagnostics on, on data written here in the real format."""

from __future__ import annotations

import pytest
from torch import nn

from bnbench.render import diagnostics as diagnostics_report
from bnbench.config import compose_config, validate
from bnbench.job.experiment import run_experiment
from bnbench.job.models import Dropout, build_model
from conftest import write_mnist_family

PRESETS = ("ioffe2015", "placement", "lr_tolerance", "deep_sigmoid", "keras_mlp", "mlp64_adam", "alexnet_bn_adam",
           "regression_mlp", "tuned_placement", "santurkar2018_ics",
           "santurkar2018_smoothness", "wuhe2018_batch", "santurkar2018_noise", "bn_momentum")


def compose_preset(name: str, *overrides: str, hydra: bool = False):
    return compose_config(f"ablation={name}", *overrides, hydra=hydra)


def grid(name: str) -> dict[str, list[str]]:
    """The preset's sweep grid as `bnbench run -m ablation=NAME` expands it."""
    params = compose_preset(name, hydra=True).hydra.sweeper.params
    return {key: [v.strip() for v in str(value).split(",")] for key, value in params.items()}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_mnist_family(root, "FashionMNIST", n_train=120, n_test=60)
    return root


def _blocks(model: nn.Module) -> list[list[type]]:
    return [[type(m) for m in block] for block in model.modules()
            if isinstance(block, nn.Sequential) and isinstance(block[0], (nn.Linear, nn.Conv2d))]


def test_ioffe2015():
    cfg = compose_preset("ioffe2015")
    assert (cfg.model.name, cfg.model.depth, cfg.model.width, cfg.activation.name) == ("mlp", 3, 100, "sigmoid")
    assert (cfg.trainer.batch_size, cfg.trainer.steps, cfg.model.init) == (60, 50000, "gaussian")
    assert cfg.diagnostics.enabled and cfg.diagnostics.every <= 500
    assert grid("ioffe2015")["norm"] == ["none", "bn_before"]
    model = build_model(compose_preset("ioffe2015", "norm=bn_before"), (1, 28, 28), 10)
    assert [b for b in _blocks(model)] == [[nn.Linear, nn.BatchNorm1d, nn.Sigmoid]] * 3
    assert model.head.in_features == 100 and model.hidden[0][0].in_features == 784


def test_placement():
    g = grid("placement")
    assert compose_preset("placement").model.name == "alexnet"
    assert g["norm"] == ["none", "bn_before", "bn_after"]
    assert set(g["activation"]) == {"relu", "leaky_relu", "elu", "tanh", "sigmoid"}


def test_lr_tolerance():
    g = grid("lr_tolerance")
    assert g["norm"] == ["none", "bn_before"] and g["seed"] == ["0", "1", "2", "3", "4"]
    rates = [float(v) for v in g["optimizer.lr"]]
    assert len(rates) == 13 and (rates[0], rates[-1]) == (0.003, 10.0)
    steps = [b / a for a, b in zip(rates, rates[1:])]
    assert all(1.6 <= step <= 2.1 for step in steps), "a log grid, about doubling"


def test_tuned_placement():
    g = grid("tuned_placement")
    assert g["norm"] == ["none", "bn_before", "bn_after"] and len(g["seed"]) == 5
    rates = [float(v) for v in g["optimizer.lr"]]
    assert (rates[0], rates[-1]) == (0.01, 10.0) and len(rates) == 7
    assert compose_preset("tuned_placement").dataset.val_size > 0, "the rates are chosen on a validation split"


def test_deep_sigmoid():
    cfg = compose_preset("deep_sigmoid")
    assert cfg.model.depth >= 10 and cfg.activation.name == "sigmoid" and cfg.diagnostics.enabled
    assert grid("deep_sigmoid")["norm"] == ["none", "bn_before"]


def test_keras_mlp():
    cfg = compose_preset("keras_mlp", "norm=bn_before")  # the grid's norm choice keeps Keras' BN settings
    assert (cfg.optimizer.name, cfg.optimizer.lr, cfg.optimizer.momentum) == ("nesterov", 0.1, 0.9)
    assert (cfg.norm.momentum, cfg.norm.eps) == (0.01, 0.001)
    model = build_model(cfg, (1, 28, 28), 10)
    assert _blocks(model) == [[nn.Linear, nn.BatchNorm1d, nn.Tanh, Dropout]] * 2
    assert model.hidden[0][0].out_features == 64 and model.hidden[0][3].p == 0.5


def test_mlp64_adam():
    cfg = compose_preset("mlp64_adam", "norm=bn_before")
    assert (cfg.optimizer.name, cfg.optimizer.lr) == ("adam", 0.001)
    model = build_model(cfg, (1, 28, 28), 10)
    assert _blocks(model) == [[nn.Linear, nn.BatchNorm1d, nn.ReLU]]
    assert (model.hidden[0][0].in_features, model.hidden[0][0].out_features, model.head.out_features) == (784, 64, 10)


def test_alexnet_bn_adam():
    cfg = compose_preset("alexnet_bn_adam", "norm=bn_before")
    assert cfg.optimizer.name == "adam" and cfg.activation.name == "relu"
    blocks = _blocks(build_model(cfg, (1, 28, 28), 10))
    assert blocks == [[nn.Conv2d, nn.BatchNorm2d, nn.ReLU]] * 5 + [[nn.Linear, nn.BatchNorm1d, nn.ReLU]] * 2
    assert "bn_before" in grid("alexnet_bn_adam")["norm"]


def test_regression_mlp():
    cfg = compose_preset("regression_mlp", "norm=none", "activation=tanh")
    assert (cfg.optimizer.name, cfg.optimizer.lr, cfg.dataset.name) == ("adam", 0.001, "friedman1")
    model = build_model(cfg, (10,), 1)
    assert [m.out_features for m in model.modules() if isinstance(m, nn.Linear)] == [18, 18, 4, 1]
    assert model.hidden[0][0].in_features == 10 and _blocks(model) == [[nn.Linear, nn.Tanh]] * 3
    assert set(grid("regression_mlp")["activation"]) == {"relu", "sigmoid", "tanh", "leaky_relu"}


@pytest.mark.parametrize("name", PRESETS)
def test_every_cell_composes_and_each_norm_trains(name, data_root, tmp_path):
    g = grid(name)
    assert g.pop("seed") in (["0", "1", "2"], ["0", "1", "2", "3", "4"])
    first = {k: v[0] for k, v in g.items()}
    cells = [first] + [{**first, key: value} for key, values in g.items() for value in values[1:]]
    for cell in cells:  # every value of every key composes (one key at a time)
        validate(compose_preset(name, *(f"{k}={v}" for k, v in cell.items())))
    quick = ("trainer.steps=3", "trainer.batch_size=20", "diagnostics.every=2", "trainer.threads=1",
             "trainer.log_progress=false", f"dataset.root={data_root}", "dataset.download=false")
    for norm in g.get("norm", ["preset"]):  # each norm setting, other keys at their first value, a few steps
        cell = {**first, "norm": norm} if norm != "preset" else first
        overrides = [f"{k}={v}" for k, v in cell.items()]
        cfg = compose_preset(name, *overrides, *quick)
        assert cfg.diagnostics.enabled, "presets record diagnostics"
        run_dir = tmp_path / norm
        summary = run_experiment(cfg, run_dir, overrides=overrides)
        assert summary["status"] in ("completed", "diverged"), summary["error"]
        rows = diagnostics_report.read_diagnostics(run_dir)
        assert sorted(rows["step"].unique()) == [1, 2]
        if cfg.model.name == "mlp":
            n_layers = 1 + (len(cfg.model.widths) if cfg.model.widths else cfg.model.depth)
        else:
            n_layers = 8
        assert rows["layer"].nunique() == n_layers
        assert rows["grad_norm"].notna().all()
        assert rows["bn_mean_gap"].notna().any() == (cfg.norm.kind == "bn"), "batch statistics: BN only"


def test_santurkar2018_ics():
    g = grid("santurkar2018_ics")
    assert g["activation"] == ["linear", "sigmoid", "relu"] and g["norm"] == ["none", "bn_before"]
    assert [float(r) for r in g["optimizer.lr"]] == [0.05, 0.2, 0.5], "arms compared at each of three rates"
    cfg = compose_preset("santurkar2018_ics")
    assert cfg.model.depth == 10 and cfg.diagnostics.enabled and cfg.diagnostics.ics


def test_santurkar2018_smoothness():
    g = grid("santurkar2018_smoothness")
    assert g["norm"] == ["none", "bn_before"] and set(g["activation"]) == {"relu", "sigmoid"}
    cfg = compose_preset("santurkar2018_smoothness")
    assert cfg.diagnostics.smoothness and list(cfg.diagnostics.smoothness_steps) == [0.5, 1.0, 2.0, 4.0]


def test_santurkar2018_noise():
    from bnbench.job.models import CovariateNoise

    g = grid("santurkar2018_noise")
    assert g["model"] == ["mlp", "alexnet"] and g["norm"] == ["none", "bn_before", "noisy_bn_before"]
    assert g["seed"] == ["0", "1", "2", "3", "4"]
    for model_name in g["model"]:
        cfg = compose_preset("santurkar2018_noise", f"model={model_name}", "norm=noisy_bn_before")
        assert cfg.diagnostics.enabled and (cfg.norm.noise_mean, cfg.norm.noise_std) == (1.0, 1.0)
        blocks = _blocks(build_model(cfg, (1, 28, 28), 10))
        assert blocks and all(b[2:4] == [CovariateNoise, nn.ReLU] for b in blocks), "BN, noise, ReLU"
        assert all(b[1] in (nn.BatchNorm1d, nn.BatchNorm2d) for b in blocks)


def test_bn_momentum():
    g = grid("bn_momentum")
    assert g["norm"] == ["bn_before"], "not the default grid's none,bn_before,bn_after"
    assert [float(m) for m in g["norm.momentum"]] == [0.1, 0.01, 0.001]
    assert [int(n) for n in g["trainer.steps"]] == [300, 3000]
    cfg = compose_preset("bn_momentum")
    assert cfg.trainer.save_final and cfg.norm.kind == "bn" and cfg.activation.name == "sigmoid"
    assert (cfg.model.depth, cfg.model.width) == (3, 100)


def test_wuhe2018_batch():
    g = grid("wuhe2018_batch")
    assert g["norm"] == ["none", "bn_before", "gn_before", "ln_before"]
    assert [int(b) for b in g["trainer.batch_size"]] == [2, 4, 8, 16, 32, 64]
    assert [float(r) for r in g["optimizer.lr"]] == [0.03, 0.1, 0.3], "rates to choose from per arm"
    from bnbench.job.optim import learning_rate

    at = lambda batch: learning_rate(compose_preset("wuhe2018_batch", f"trainer.batch_size={batch}"))  # noqa: E731
    assert at(64) == pytest.approx(0.1) and at(2) == pytest.approx(0.1 * 2 / 64), "the rate follows the batch"
