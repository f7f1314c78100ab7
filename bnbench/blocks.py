"""Building blocks for your own network (model._target_, docs/own-network.md): the run's norm
and activation in the order its placement asks for.

    def my_net(in_shape, num_classes, norm, activation, width=64):
        return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(in_shape), width),
                             *norm_act(norm, activation, width), nn.Linear(width, num_classes))

With norm=bn_before that is Linear -> BN -> ReLU; with bn_after, Linear -> ReLU -> BN; with none,
Linear -> ReLU (an identity in place of the norm). No torch import beyond the layers' own.
"""

from __future__ import annotations

from typing import Callable

from torch import nn


def norm_act(norm: Callable[..., nn.Module], activation: Callable[[], nn.Module], num_features: int,
             conv: bool = False) -> list[nn.Module]:
    """[norm layer, activation] when the run's placement is ``before``, [activation, norm layer]
    when it is ``after`` (``norm`` is what bnbench passed the factory; ``conv`` after a Conv2d)."""
    layers = [norm(num_features, conv=conv), activation()]
    return layers if getattr(norm, "placement", "before") == "before" else layers[::-1]
