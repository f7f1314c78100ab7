"""A network and a dataset of your own, for bnbench (docs/own-network.md)."""

import math

import torch
from torch import nn

from bnbench.blocks import norm_act


def small_mlp(in_shape, num_classes, norm, activation, width=32, depth=2):
    """depth hidden layers of width units; the run's norm and activation in the run's placement."""
    layers, features = [nn.Flatten()], math.prod(in_shape)
    for _ in range(depth):
        layers += [nn.Linear(features, width), *norm_act(norm, activation, width)]
        features = width
    return nn.Sequential(*layers, nn.Linear(features, num_classes))


def blobs(n=600, features=8, classes=4, spread=1.5):
    """Gaussian blobs, one per class: (train_x, train_y, test_x, test_y)."""
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, classes, (n,), generator=g)
    centres = torch.randn(classes, features, generator=g) * spread
    x = centres[y] + torch.randn(n, features, generator=g)
    cut = n * 4 // 5
    return x[:cut], y[:cut], x[cut:], y[cut:]
