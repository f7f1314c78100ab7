"""Probes: what a diagnostics step measures besides training (bnbench/job/diagnostics.py: per-layer
statistics; ics.py: internal covariate shift; smoothness.py: the loss along the gradient), behind
one interface the engine calls around an update. Off (diagnostics.enabled=false), the engine
holds no Probes and does nothing extra."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from bnbench.job import ics, smoothness
from bnbench.job.diagnostics import Diagnostics
from bnbench.job.models import set_stream_states, stream_states
from bnbench.job.optim import learning_rate
from bnbench.job.stacking import write_back
from bnbench.job.tasks import Task


class Probes:
    """One Diagnostics per copy, on its plain model. A single run hooks the model it trains; a
    stack's copies are replayed on their plain models (:func:`_copy_diagnostics`)."""

    def __init__(self, models: Sequence[nn.Module], diagnostics: list[Diagnostics], measure_ics: bool,
                 step_sizes: list[float], task: Task, device: torch.device):
        self.models, self.diagnostics, self.task, self.device = list(models), diagnostics, task, device
        self.measure_ics, self.step_sizes = measure_ics, step_sizes
        self.probing = False
        self._shift: list[ics.Before | None] = []
        self._smooth: list[dict | None] = []

    @classmethod
    def for_run(cls, models: Sequence[nn.Module], cfg, data, task: Task, device: torch.device,
                states: Sequence[dict] | None) -> Probes | None:
        diagnostics = [Diagnostics.for_run(model, cfg, data) for model in models]
        if diagnostics[0] is None:
            return None
        if states is not None:
            for diag, st in zip(diagnostics, states):
                diag.set_input_moments(st.get("input_moments", {}))
        step_sizes = [learning_rate(cfg) * m for m in cfg.diagnostics.smoothness_steps] \
            if cfg.diagnostics.get("smoothness", False) else []
        return cls(models, diagnostics, bool(cfg.diagnostics.get("ics", False)), step_sizes, task, device)

    def before_update(self, step: int, net: nn.Module, xb: torch.Tensor, yb: torch.Tensor,
                      active: torch.Tensor) -> None:
        """Before the forward pass of step ``step``: whether it is a diagnostics step, and on one
        each live copy's state before the update (ICS), the loss along its gradient
        (smoothness), and the hooks (a single run) or the copies' replay (a stack)."""
        self.probing = self.diagnostics[0].due(step)
        if not self.probing:
            return
        s, loss = len(self.models), self.task.loss
        self._shift = []
        if s > 1:
            _copy_diagnostics(net, self.models, self.diagnostics, xb, yb, self.task, active, self.device)
        if self.measure_ics:  # a stack's plain copies hold its state (written back above)
            self._shift = [ics.before_step(self.models[i], xb[i], yb[i], loss, self.device) if bool(active[i])
                           else None for i in range(s)]
        self._smooth = [smoothness.along_gradient(self.models[i], xb[i], yb[i], loss, self.device, self.step_sizes)
                        if bool(active[i]) else None for i in range(s)] if self.step_sizes else []
        if s == 1:
            self.diagnostics[0].arm()  # hooks for this forward pass only

    def after_backward(self) -> None:
        if self.probing and len(self.models) == 1:
            self.diagnostics[0].read_gradients()  # removes the hooks

    def after_update(self, step: int, epoch: float, net: nn.Module, xb: torch.Tensor, yb: torch.Tensor,
                     losses: torch.Tensor, active: torch.Tensor) -> list[list[dict]]:
        """Each copy's diagnostics rows of this step (empty off a diagnostics step)."""
        if not self.probing:
            return [[] for _ in self.models]
        write_back(net, self.models)  # each copy after the update (a SingleNet is its model)
        rows: list[list[dict]] = []
        for i, (model, diag) in enumerate(zip(self.models, self.diagnostics)):
            if not bool(active[i]):
                rows.append([])
                continue
            shift = self._shift[i] if self._shift else None
            per_layer = ics.after_step(model, shift, xb[i], yb[i], self.task.loss, self.device) \
                if shift is not None else None
            if self._smooth and self._smooth[i] is not None:  # one value per step: on every layer's row
                per_layer = [{**(per_layer[j] if per_layer else {}), **self._smooth[i]} for j in range(len(diag.layers))]
            rows.append(diag.record(step, epoch, losses[i], per_layer))
        return rows

    def checkpoint_state(self, i: int) -> dict:
        return {"input_moments": self.diagnostics[i].input_moments()}


def _copy_diagnostics(net: nn.Module, models: Sequence[nn.Module], diagnostics: Sequence[Diagnostics],
                      xb: torch.Tensor, yb: torch.Tensor, task: Task, active: torch.Tensor,
                      device: torch.device) -> None:
    """The first half of a diagnostics step of a stack: each live copy's plain model, holding
    the copy's state from the stack, runs the step's forward and backward pass on the copy's
    own batch with the diagnostics hooks on (what its own run records, to float rounding). Its
    random streams are the stack's own (StackedDropout and StackedNoise hold the copies' layers), so
    they are put back afterwards: the stack then draws the masks the replay drew. The stack
    itself is not touched; :meth:`Diagnostics.record` reads each copy after the update."""
    write_back(net, models)
    for i, (model, diag) in enumerate(zip(models, diagnostics)):
        if not bool(active[i]):
            continue
        streams = stream_states(model, device)
        model.train()
        diag.arm()
        loss = task.loss(model(xb[i]), yb[i])
        model.zero_grad(set_to_none=True)
        loss.backward()
        diag.read_gradients()  # removes the hooks
        model.zero_grad(set_to_none=True)
        set_stream_states(model, device, streams)
