"""Every model x norm x activation builds and trains a step; placement is the layer order."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bnbench.job.models import ACTIVATIONS, build_model
from bnbench.job.optim import OPTIMIZERS, make_optimizer
from conftest import make_cfg

NORMS = ["none", "bn_before", "bn_after", "ln_before", "ln_after", "gn_before", "gn_after", "rms_before", "rms_after"]
SHAPES = {"mlp": [(1, 8, 8)], "alexnet": [(1, 8, 8), (1, 28, 28), (3, 32, 32)]}

# small versions of each model: every option has its own keys (bnbench/config.py schemas)
SMALL = {"mlp": ("model.width=16",), "alexnet": ("model.channels=[8,8,8,8,8]", "model.fc_width=16")}


def _hidden_blocks(model: nn.Module) -> list[nn.Sequential]:
    return [m for m in model.modules() if isinstance(m, nn.Sequential) and isinstance(m[0], (nn.Linear, nn.Conv2d))]


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("model_name", ["mlp", "alexnet"])
def test_builds_and_trains_one_step(model_name, norm, activation):
    cfg = make_cfg(f"model={model_name}", f"norm={norm}", f"activation={activation}", *SMALL[model_name])
    for shape in SHAPES[model_name]:
        torch.manual_seed(0)
        model = build_model(cfg, shape, 10)
        optimizer = make_optimizer(model, cfg.optimizer)
        x, y = torch.randn(6, *shape), torch.randint(0, 10, (6,))
        before = [p.detach().clone() for p in model.parameters()]
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss)
        assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters())), "the step changed nothing"
        assert model(x).shape == (6, 10)


@pytest.mark.parametrize("model_name", ["mlp", "alexnet"])
def test_layer_order_follows_placement(model_name):
    act_cls = ACTIVATIONS["tanh"]
    expected = {"none": lambda layer: [layer, act_cls]}
    for kind in ("bn", "ln", "gn"):
        expected[f"{kind}_before"] = lambda layer, kind=kind: [layer, kind, act_cls]
        expected[f"{kind}_after"] = lambda layer, kind=kind: [layer, act_cls, kind]
    for norm, pattern in expected.items():
        model = build_model(make_cfg(f"model={model_name}", f"norm={norm}", "activation=tanh"), (1, 28, 28), 10)
        blocks = _hidden_blocks(model)
        assert len(blocks) == (3 if model_name == "mlp" else 7)  # 3 hidden FC, or 5 conv + 2 FC
        for block in blocks:
            layer_type = type(block[0])
            norm_types = {"bn": nn.BatchNorm1d if layer_type is nn.Linear else nn.BatchNorm2d,
                          "ln": nn.GroupNorm, "gn": nn.GroupNorm}
            want = [norm_types.get(p, p) for p in pattern(layer_type)]
            assert [type(m) for m in block] == want, f"{norm}: {block}"
            groups = [m.num_groups for m in block if isinstance(m, nn.GroupNorm)]
            assert groups == {"ln": [1], "gn": [4]}.get(norm[:2], [])


def test_layer_norm_is_pytorchs_layer_norm_on_features():
    """ln on an MLP is GroupNorm with one group: exactly nn.LayerNorm over the features."""
    model = build_model(make_cfg("norm=ln_before", "model.width=12"), (1, 8, 8), 10)
    gn = model.hidden[0][1]
    with torch.no_grad():
        gn.weight.uniform_(0.5, 1.5)
        gn.bias.uniform_(-1, 1)
    ln = nn.LayerNorm(12, eps=gn.eps)
    ln.load_state_dict({"weight": gn.weight, "bias": gn.bias})
    x = torch.randn(5, 12) * 3 + 1
    torch.testing.assert_close(gn(x), ln(x))
    assert torch.equal(gn(x[:1]), gn(x)[:1]), "no batch statistics: a sample's output does not depend on its batch"


def test_group_norm_settings_and_bad_groups():
    from bnbench.config import validate
    from bnbench.errors import ConfigError

    model = build_model(make_cfg("norm=gn_after", "norm.groups=5", "norm.eps=1e-3", "model.width=20"), (1, 8, 8), 10)
    gns = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert len(gns) == 3 and all(m.num_groups == 5 and m.eps == 1e-3 for m in gns)
    with pytest.raises(ConfigError, match=r"norm.groups=3 does not divide a layer of 100 channels"):
        build_model(make_cfg("norm=gn_before", "norm.groups=3"), (1, 8, 8), 10)
    with pytest.raises(ConfigError, match="norm.drop_bias=true applies to batch norm only"):
        validate(make_cfg("norm=ln_before", "norm.drop_bias=true"))
    with pytest.raises(ConfigError, match="norm.placement=none is not a placement: no normalization is norm=none"):
        validate(make_cfg("norm.placement=none"))
    with pytest.raises(ConfigError, match="norm.kind='in' is not known; choose one of: bn, gn, ln, none"):
        validate(make_cfg("norm.kind=in"))
    with pytest.raises(ConfigError, match="norm.groups=0 must be at least 1"):
        validate(make_cfg("norm=gn_before", "norm.groups=0"))
    validate(make_cfg("norm=none", "norm.placement=sideways"))  # no norm: its placement is unused
    with pytest.raises(ConfigError, match=r"trainer.threads=0 must be at least 1 \(or null\)"):
        validate(make_cfg("trainer.threads=0"))
    with pytest.raises(ConfigError, match=r"optimizer.lr=1e\+300 must be positive and fit in float32"):
        validate(make_cfg("optimizer.lr=1e300"))  # was torch's overflow error, recorded as a failed run


def test_more_threads_than_cores_is_said(caplog):
    from bnbench.job.devices import set_threads
    from bnbench.launch import resources

    import torch

    before = torch.get_num_threads()
    try:
        with caplog.at_level("WARNING", logger="bnbench"):
            set_threads(resources.usable_cores() + 7)
    finally:
        torch.set_num_threads(before)
    assert "oversubscribed threads make training slower" in caplog.text


def test_mlp_shape_matches_2015_paper():
    model = build_model(make_cfg("model=mlp", "norm=bn_before", "activation=sigmoid"), (1, 28, 28), 10)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 100), (100, 100), (100, 100), (100, 10)]


def test_drop_bias_only_where_bn_follows():
    before = build_model(make_cfg("norm=bn_before", "norm.drop_bias=true"), (1, 8, 8), 10)
    assert all(block[0].bias is None for block in _hidden_blocks(before))
    assert before.head.bias is not None  # the classifier has no BN after it
    after = build_model(make_cfg("norm=bn_after", "norm.drop_bias=true"), (1, 8, 8), 10)
    assert all(block[0].bias is not None for block in _hidden_blocks(after))


def test_bn_settings_reach_the_layers():
    model = build_model(make_cfg("norm=bn_before", "norm.momentum=0.01", "norm.eps=1e-3"), (1, 8, 8), 10)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d)]
    assert bns and all(bn.momentum == 0.01 and bn.eps == 1e-3 for bn in bns)


def test_activation_kwargs_and_gaussian_init():
    model = build_model(make_cfg("activation=leaky_relu", "activation.kwargs.negative_slope=0.2", "model.init=gaussian",
                                 "model.init_std=0.01"), (1, 8, 8), 10)
    act = [m for m in model.modules() if isinstance(m, nn.LeakyReLU)]
    assert act and act[0].negative_slope == 0.2
    weights = torch.cat([m.weight.flatten() for m in model.modules() if isinstance(m, nn.Linear)])
    assert 0.008 < weights.std().item() < 0.012


def test_every_optimizer_config_builds():
    for name in OPTIMIZERS:
        cfg = make_cfg(f"optimizer={name}")
        opt = make_optimizer(build_model(cfg, (1, 8, 8), 10), cfg.optimizer)
        assert opt.param_groups[0]["lr"] == cfg.optimizer.lr
    assert make_optimizer(build_model(make_cfg(), (1, 8, 8), 10), make_cfg("optimizer=nesterov").optimizer) \
        .param_groups[0]["nesterov"] is True


def test_mlp_widths_list_and_alexnet_needs_images():
    from bnbench.errors import ConfigError

    model = build_model(make_cfg("model.widths=[18,18,4]", "norm=bn_before"), (10,), 1)
    assert [m.out_features for m in model.modules() if isinstance(m, nn.Linear)] == [18, 18, 4, 1]
    assert model(torch.randn(5, 10)).shape == (5, 1)
    with pytest.raises(ConfigError, match="model=alexnet needs images"):
        build_model(make_cfg("model=alexnet"), (10,), 1)


@pytest.mark.parametrize("model_name", ["mlp", "alexnet"])
def test_every_placement_starts_from_the_same_weights_for_a_seed(model_name):
    """Pairing by seed: a layer's initial weights depend on the seed and its place only, not on
    which BN layers or biases the model has (a dropped bias must not shift later layers)."""
    variants = [["norm=none"], ["norm=bn_before"], ["norm=bn_after"], ["norm=ln_before"], ["norm=gn_after"],
                ["norm=bn_before", "norm.drop_bias=true"]]
    weights = []
    for overrides in variants:
        cfg = make_cfg(f"model={model_name}", *overrides, *SMALL[model_name], "seed=3")
        torch.manual_seed(123 + len(weights))  # the global RNG's state must not matter either
        model = build_model(cfg, (1, 8, 8), 10)
        weights.append([(m.weight.detach().clone(), None if m.bias is None else m.bias.detach().clone())
                        for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))])
    reference = weights[0]
    for other in weights[1:]:
        assert len(other) == len(reference)
        for (w, b), (w0, b0) in zip(other, reference):
            assert torch.equal(w, w0)
            assert b is None or torch.equal(b, b0)
    assert any(b is None for _, b in weights[-1])  # drop_bias really dropped some
    other_seed = build_model(make_cfg(f"model={model_name}", *SMALL[model_name], "seed=4"), (1, 8, 8), 10)
    assert not torch.equal(next(other_seed.parameters()), reference[0][0])


def test_default_init_has_pytorchs_distribution():
    """The per-layer streams draw what nn.Linear's own reset_parameters draws: Kaiming-uniform
    weights within 1/sqrt(fan_in) and uniform biases within 1/sqrt(fan_in)."""
    cfg = make_cfg("model.width=400", "model.depth=1")
    model = build_model(cfg, (1, 8, 8), 10)
    layer = model.hidden[0][0]
    bound = 1 / 64 ** 0.5
    assert layer.weight.abs().max() <= bound and layer.weight.abs().max() > 0.95 * bound
    assert layer.weight.std().item() == pytest.approx(bound / 3 ** 0.5, rel=0.02)
    assert layer.bias.abs().max() <= bound and layer.bias.std().item() == pytest.approx(bound / 3 ** 0.5, rel=0.15)


def test_rms_norm_is_torchs_on_features_and_its_conv_form_divides_by_the_root_mean_square():
    mlp = build_model(make_cfg("norm=rms_before", "model.width=12"), (1, 8, 8), 10)
    norms = [m for m in mlp.modules() if isinstance(m, nn.RMSNorm)]
    assert norms and norms[0].normalized_shape == (12,) and norms[0].eps == 1e-5
    from bnbench.job.models import RMSNorm2d

    cnn = build_model(make_cfg("model=alexnet", "model.channels=[4,8,8,8,4]", "model.fc_width=16", "norm=rms_after"),
                      (1, 28, 28), 10)
    conv_norm = next(m for m in cnn.modules() if isinstance(m, RMSNorm2d))
    x = torch.randn(3, conv_norm.weight.numel(), 5, 5) * 4 + 1
    with torch.no_grad():
        conv_norm.weight.uniform_(0.5, 2)
        rms = x.pow(2).mean(dim=(1, 2, 3), keepdim=True).add(1e-5).sqrt()
        assert torch.allclose(conv_norm(x), x / rms * conv_norm.weight.view(1, -1, 1, 1), atol=1e-6)
    from bnbench.config import validate
    from bnbench.errors import ConfigError

    with pytest.raises(ConfigError, match="rms subtracts no mean at all"):
        validate(make_cfg("norm=rms_before", "norm.drop_bias=true"))

