"""Model builders: architecture x batch-norm placement x activation.

Every hidden layer is a small ``nn.Sequential`` block whose order *is* the placement:

    none:    Linear/Conv -> act
    before:  Linear/Conv -> BN -> act        (Ioffe & Szegedy 2015: normalize the pre-activation)
    after:   Linear/Conv -> act -> BN

so the layer order can be read off (and tested) directly, and diagnostics can hook the input
of each activation module (the "input to the nonlinearity" of the 2015 paper, Fig. 1).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

# name -> torch.nn module class; a new activation is one entry here plus conf/activation/NAME.yaml
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "selu": nn.SELU,
}

PLACEMENTS = ("none", "before", "after")


def _hidden_block(
    layer_cls: type[nn.Module],
    bn_cls: type[nn.Module],
    in_dim: int,
    out_dim: int,
    norm_cfg,
    make_act: Callable[[], nn.Module],
    dropout: nn.Module | None,
    **layer_kwargs,
) -> nn.Sequential:
    placement = norm_cfg.placement
    # A bias right before BN is cancelled by the mean subtraction; BN's beta replaces it.
    bias = not (placement == "before" and norm_cfg.drop_bias)
    layer = layer_cls(in_dim, out_dim, bias=bias, **layer_kwargs)

    def bn() -> nn.Module:
        return bn_cls(out_dim, eps=norm_cfg.eps, momentum=norm_cfg.momentum, affine=norm_cfg.affine)

    if placement == "before":
        modules = [layer, bn(), make_act()]
    elif placement == "after":
        modules = [layer, make_act(), bn()]
    else:
        modules = [layer, make_act()]
    if dropout is not None:
        modules.append(dropout)
    return nn.Sequential(*modules)


class MLP(nn.Module):
    """Fully connected net: `depth` hidden blocks of `width` units (or one block per entry of
    `widths`), then a linear output layer (classifier logits or regression outputs)."""

    def __init__(self, in_shape: Sequence[int], num_outputs: int, model_cfg, norm_cfg, make_act, dropout: float):
        super().__init__()
        in_features = math.prod(in_shape)
        hidden = list(model_cfg.widths) if getattr(model_cfg, "widths", None) else [model_cfg.width] * model_cfg.depth
        widths = [in_features] + hidden
        self.flatten = nn.Flatten()
        self.hidden = nn.Sequential(
            *[
                _hidden_block(
                    nn.Linear, nn.BatchNorm1d, widths[i], widths[i + 1], norm_cfg, make_act,
                    nn.Dropout(dropout) if dropout > 0 else None,
                )
                for i in range(len(hidden))
            ]
        )
        self.head = nn.Linear(widths[-1], num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.hidden(self.flatten(x)))


class AlexNetStyle(nn.Module):
    """AlexNet's shape (5 conv + 3 FC, max-pooling after conv 1, 2 and 5) scaled to small images.

    Kernel sizes and pooling follow the input size, so the same config serves 8x8 digits,
    28x28 MNIST-family and 32x32 CIFAR, with 1 or 3 channels: a pool is applied only while
    the feature map is at least 4 pixels wide, and an adaptive average pool fixes the
    classifier's input at no more than 3x3 per channel.
    """

    def __init__(self, in_shape: Sequence[int], num_outputs: int, model_cfg, norm_cfg, make_act, dropout: float):
        super().__init__()
        if len(in_shape) != 3:
            from bnbench.config import ConfigError

            raise ConfigError(f"model=alexnet needs images (channels, height, width); this dataset has rows of "
                              f"{math.prod(in_shape)} features: use model=mlp")
        in_channels, height, width = in_shape
        size = min(height, width)
        channels = [in_channels, *model_cfg.channels]
        first_kernel = 5 if size >= 16 else 3
        blocks: list[nn.Module] = []
        for i in range(5):
            kernel = first_kernel if i == 0 else 3
            blocks.append(
                _hidden_block(nn.Conv2d, nn.BatchNorm2d, channels[i], channels[i + 1], norm_cfg, make_act, None,
                              kernel_size=kernel, padding=kernel // 2)
            )
            if i in (0, 1, 4) and size >= 4:
                blocks.append(nn.MaxPool2d(2))
                size //= 2
        pooled = min(size, 3)
        blocks.append(nn.AdaptiveAvgPool2d(pooled))
        self.features = nn.Sequential(*blocks)
        self.flatten = nn.Flatten()
        fc_in = channels[-1] * pooled * pooled
        make_dropout = (lambda: nn.Dropout(dropout)) if dropout > 0 else (lambda: None)
        self.hidden = nn.Sequential(
            _hidden_block(nn.Linear, nn.BatchNorm1d, fc_in, model_cfg.fc_width, norm_cfg, make_act, make_dropout()),
            _hidden_block(nn.Linear, nn.BatchNorm1d, model_cfg.fc_width, model_cfg.fc_width, norm_cfg, make_act,
                          make_dropout()),
        )
        self.head = nn.Linear(model_cfg.fc_width, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.hidden(self.flatten(self.features(x))))


MODELS: dict[str, type[nn.Module]] = {"mlp": MLP, "alexnet": AlexNetStyle}


# The parts of a weight layer that draw random numbers, each from its own stream.
_PARTS = ("weight", "bias")


def _layer_generator(seed: int, place: int, part: str) -> torch.Generator:
    """The random stream of one part of the ``place``-th Linear/Conv layer of a run with ``seed``.

    Pairing by seed compares runs that start from the same weights. Drawn from one global stream
    in construction order, a layer's weights would depend on which layers came before it: a
    dropped bias (norm.drop_bias) skips its draws and shifts every later layer. Here a layer's
    draws depend only on the seed and its place among the weight layers, so none, bn_before,
    bn_after and bn_before without biases start from identical Linear and Conv weights."""
    words = np.random.SeedSequence([int(seed) & (2**64 - 1), place, _PARTS.index(part)]).generate_state(2)
    return torch.Generator().manual_seed(int(words[0]) << 32 | int(words[1]))


@torch.no_grad()
def _init_weights(model: nn.Module, seed: int, init: str, std: float) -> None:
    """Initialize every Linear and Conv2d layer from its own stream (:func:`_layer_generator`):
    ``default`` is PyTorch's own reset_parameters (Kaiming-uniform weights, uniform biases in
    +-1/sqrt(fan_in)), ``gaussian`` is N(0, std) weights and zero biases."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    for place, layer in enumerate(layers):
        weights = _layer_generator(seed, place, "weight")
        if init == "gaussian":
            nn.init.normal_(layer.weight, 0.0, std, generator=weights)
        else:
            nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=weights)
        if layer.bias is None:
            continue
        if init == "gaussian":
            nn.init.zeros_(layer.bias)
        else:
            fan_in = nn.init._calculate_fan_in_and_fan_out(layer.weight)[0]
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
            nn.init.uniform_(layer.bias, -bound, bound, generator=_layer_generator(seed, place, "bias"))


def build_model(cfg, in_shape: Sequence[int], num_outputs: int) -> nn.Module:
    """Build the model a run config describes; its initial weights depend on ``cfg.seed`` and
    each layer's place only (:func:`_layer_generator`), not on the global RNG."""
    act_cls = ACTIVATIONS[cfg.activation.name]
    act_kwargs = dict(cfg.activation.kwargs or {})

    def make_act() -> nn.Module:
        return act_cls(**act_kwargs)

    model = MODELS[cfg.model.name](in_shape, num_outputs, cfg.model, cfg.norm, make_act, cfg.trainer.dropout)
    _init_weights(model, cfg.seed, cfg.model.init, cfg.model.init_std)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
