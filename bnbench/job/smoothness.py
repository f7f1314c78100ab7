"""Smoothness of the loss along the gradient, as Santurkar, Tsipras, Ilyas & Madry (2018, "How
does batch normalization help optimization?", sec. 3, Fig. 4) measure it.

At a training step with weights W, gradient g = grad L(W) on the step's batch (x, y), and step
sizes eta_1..eta_m (the run's learning rate times ``diagnostics.smoothness_steps``), the loss
and its gradient are evaluated at W - eta_j g, on the same batch:

    loss_variation  = max_j L(W - eta_j g) - min_j L(W - eta_j g), over j and eta = 0
                      (the paper's "loss landscape": how much the loss varies along the step)
    grad_change     = max_j || g - grad L(W - eta_j g) ||_2
                      ("gradient predictiveness": how far the gradient moves along the step)
    beta_smoothness = max_j || g - grad L(W - eta_j g) ||_2 / (eta_j || g ||_2)
                      ("effective beta-smoothness": the largest change of the gradient per unit
                      of distance moved; for L(w) = w'Aw/2 it is ||A g|| / ||g||, at most the
                      largest eigenvalue of A)

The paper's claim: with BN all three are smaller (a smoother, more predictive landscape). The
measurement costs m + 1 forward/backward passes per diagnostics step (opt-in:
``diagnostics.smoothness=true``) and leaves no trace, as bnbench.job.ics's does: parameters, norm
buffers and random streams are restored (every pass draws the step's own masks and noise), and ``.grad``
is not touched. Norm layers run in train mode (batch statistics), as in the step.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from bnbench.job.models import left_as_found, set_side_state

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
COLUMNS = ("loss_variation", "grad_change", "beta_smoothness")


def along_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn, device: torch.device,
                   step_sizes: Sequence[float]) -> dict[str, float]:
    """The three measures at the model's current weights (call before the step's update)."""
    params = list(model.parameters())
    with left_as_found(model, device) as (weights, side):

        def at_current() -> tuple[float, list[torch.Tensor]]:
            set_side_state(model, device, side)  # every pass: the step's own masks and statistics
            loss = loss_fn(model(x), y)
            grads = [g.detach() for g in torch.autograd.grad(loss, params)]
            return float(loss.detach()), grads

        loss0, grad = at_current()
        norm = float(torch.sqrt(sum((g.double() ** 2).sum() for g in grad)))
        losses, changes, betas = [loss0], [], []
        for eta in step_sizes:
            with torch.no_grad():
                for param, w, g in zip(params, weights, grad):
                    param.copy_(w - eta * g)
            loss, moved = at_current()
            change = float(torch.sqrt(sum(((a - b).double() ** 2).sum() for a, b in zip(grad, moved))))
            losses.append(loss)
            changes.append(change)
            betas.append(change / (eta * norm) if norm > 0 else float("nan"))
    finite = [v for v in losses if v == v and abs(v) != float("inf")]
    return {"loss_variation": max(finite) - min(finite) if len(finite) == len(losses) else float("inf"),
            "grad_change": max(changes), "beta_smoothness": max(betas)}
