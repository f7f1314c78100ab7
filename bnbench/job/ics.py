"""Internal covariate shift, measured as Santurkar, Tsipras, Ilyas & Madry (2018, "How does
batch normalization help optimization?", sec. 2.2, Definition 2.1) define it.

For layer i of k at step t, with the weights W_1..W_k before the step's update and W'_1..W'_k
after it, on the step's own batch (x, y):

    G_i  = grad_{W_i} L(W_1, ..., W_{i-1}, W_i, ..., W_k; x, y)       the gradient the step used
    G'_i = grad_{W_i} L(W'_1, ..., W'_{i-1}, W_i, ..., W_k; x, y)     after the layers before i moved

    ics_l2  = || G_i - G'_i ||_2                                      (the paper's l2 difference)
    ics_cos = < G_i, G'_i > / (|| G_i || || G'_i ||)                   (the paper's cosine angle;
                                                                      undefined, empty, if G or G' is 0)

G'_i is what layer i's gradient becomes once the layers feeding it have been updated: the
change of its input distribution "seen" by the optimization. Zero difference (cosine 1) means
no shift; the paper found BN does not reduce it. "The layers before i" are every parameter
registered before layer i's Linear/Conv (its predecessors' weights, biases and norm affine
parameters); the first layer has none, so its ics_l2 is 0 by definition.

Each measurement costs k + 1 extra forward/backward passes on the batch, so it is opt-in
(``diagnostics.ics=true``) and runs on diagnostics steps only. The passes leave no trace: the
model's parameters, norm buffers (running statistics), random streams (dropout, noisy BN) and ``.grad`` are as
the real step left them, so a run's trajectory is the same with the measurement on or off
(tested). Dropout masks of every pass are the step's own (its streams are rewound), and the
norm layers run in train mode, as in the step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from bnbench.job.diagnostics import LAYER_TYPES
from bnbench.job.models import SideState, left_as_found, set_side_state

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Before:
    """What a step's measurement keeps from before the update."""

    weights: list[torch.Tensor]  # every parameter, before the update
    grads: list[torch.Tensor]  # G_i: the gradient of each layer's weight
    side: SideState  # norm buffers and random streams before the step used them


def _layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, LAYER_TYPES)]  # forward (registration) order


def _owners(model: nn.Module) -> list[int]:
    """For each parameter (model.parameters() order), the index of the layer whose block it
    belongs to: a Linear/Conv's own, or the last Linear/Conv registered before it (a norm)."""
    owner_of: dict[int, int] = {}
    current = -1
    for module in model.modules():
        if isinstance(module, LAYER_TYPES):
            current += 1
        for param in module.parameters(recurse=False):
            owner_of[id(param)] = current
    return [owner_of[id(p)] for p in model.parameters()]


def _grads(model: nn.Module, layers: list[nn.Module], x: torch.Tensor, y: torch.Tensor,
           loss_fn: LossFn) -> list[torch.Tensor]:
    loss = loss_fn(model(x), y)
    return [g.detach() for g in torch.autograd.grad(loss, [layer.weight for layer in layers])]


def before_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn,
                device: torch.device) -> Before:
    """G for every layer, and the state to come back to (call before the step's forward pass)."""
    with left_as_found(model, device) as (weights, side):
        return Before(weights, _grads(model, _layers(model), x, y, loss_fn), side)


def after_step(model: nn.Module, before: Before, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn,
               device: torch.device) -> list[dict[str, float]]:
    """ics_l2 and ics_cos per layer (call after the optimizer's step); the model is left as the
    step left it."""
    params = list(model.parameters())
    owners = _owners(model)
    out = []
    with left_as_found(model, device) as (after, _):
        for i, layer in enumerate(_layers(model)):
            with torch.no_grad():  # the layers before i updated, layer i and later as before
                for param, owner, old, new in zip(params, owners, before.weights, after):
                    param.copy_(new if owner < i else old)
            set_side_state(model, device, before.side)
            (g_prime,) = _grads(model, [layer], x, y, loss_fn)
            g = before.grads[i]
            g, g_prime = g.double().flatten(), g_prime.double().flatten()
            diff = torch.linalg.vector_norm(g - g_prime)
            norms = torch.linalg.vector_norm(g) * torch.linalg.vector_norm(g_prime)
            # a gradient that vanished to exactly 0 (deep sigmoid nets in float32) has no direction:
            # its cosine is undefined (empty in the record), not 0 (cosine_similarity's answer)
            cos = float(torch.dot(g, g_prime) / norms) if norms > 0 else float("nan")
            out.append({"ics_l2": float(diff), "ics_cos": cos})
    return out
