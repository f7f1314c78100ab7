"""Per-layer training diagnostics: what batch norm does to the signal inside the network.

With ``diagnostics.enabled=true`` a run records, on step 1 and every ``diagnostics.every``
steps, one row per layer (every Linear/Conv, in forward order, the classifier ``head`` last)
into ``diagnostics.csv`` next to ``metrics.csv``:

==================  ===========================================================================
column              meaning (on the training batch of that step, before its update)
==================  ===========================================================================
step, epoch         the optimizer step (counting from 1) whose batch this is, and its epoch
layer, name         position (0 = first) and short name (conv1.., fc1.., head) of the layer
module, nonlinearity  its module path in the model, and the activation that follows it
grad_norm           L2 norm of the layer's weight gradient (vanishing / exploding gradients)
weight_norm         L2 norm of the layer's weight
pre_mean, pre_std   mean and population std of the Linear/Conv output (the pre-activation,
                    before any BN), over every entry of the batch
act_in_p15/50/85    15th/50th/85th percentiles of the input to the nonlinearity over every entry
                    of the batch (Ioffe & Szegedy 2015, Fig. 1b-c); with BN before the
                    activation that is the BN output, otherwise the Linear/Conv output
unit, unit_p*       the same percentiles for one fixed unit (index ``diagnostics.unit`` modulo
                    the width; a channel of a conv layer, over samples and positions)
saturated_frac      sigmoid: share of unit outputs < 0.01 or > 0.99; tanh: share with
                    |output| > 0.99 (sample x unit entries; for sigmoid that is |input| > 4.60,
                    for tanh |input| > 2.65)
dead_frac           ReLU: share of units (channels of a conv layer) whose output is 0 for every
                    sample (and position) of the batch
bn_mean_gap         the layer's BN: mean over channels of |batch mean - running mean| /
                    sqrt(running var + eps), the running statistics *before* this batch updates
                    them, i.e. what eval mode would use
bn_var_ratio        mean over channels of (batch var + eps) / (running var + eps); the batch
                    variance is the biased one training normalizes with, so a stationary
                    layer reads about (n-1)/n, not 1
loss                training loss of the batch
acc_train_mode      accuracy on a fixed probe set (the first ``diagnostics.probe_batches``
acc_eval_mode       x trainer.batch_size test samples, in batches of trainer.batch_size) with BN
                    using batch statistics (train mode) and running statistics (eval mode),
                    after the step's update; dropout is off in both, so they differ only by BN
                    (equal without BN, and with layer or group norm: no batch statistics).
                    Two batches by default: cheap, but coarse (1/120 at batch 60)
input_shift         how far the distribution of the layer's input moved since the previous
                    diagnostics step: the mean over its input units (features; channels, over
                    samples and positions) of the 2-Wasserstein distance between Gaussians fitted
                    to the unit on the two steps' batches, sqrt((m - m')^2 + (s - s')^2). It
                    includes the batch-to-batch sampling spread (the same for every arm at one
                    batch size); empty on the first diagnostics step. What noisy BN (norm.noise_*,
                    Santurkar et al. 2018, sec. 2.1) raises on purpose
ics_l2, ics_cos     with diagnostics.ics=true: internal covariate shift as Santurkar et al. (2018,
                    Definition 2.1) measure it, ||G - G'|| and cos(G, G') of the layer's weight
                    gradient before and after the layers before it are updated (bnbench/job/ics.py)
loss_variation,     with diagnostics.smoothness=true: along the gradient from this step's weights,
grad_change,        the range of the loss, the largest change of the gradient, and that change
beta_smoothness     per distance moved (Santurkar et al. 2018, sec. 3; bnbench/job/smoothness.py);
                    one value per step, repeated on every layer's row
==================  ===========================================================================

Columns that do not apply (no BN, another activation, the head) are empty. Layer and group
norm (norm.kind=ln/gn) have no running statistics: their bn_* columns are empty, and the
percentiles of the input to the nonlinearity show what they do to it. Hooks are
registered only for the forward pass of a diagnostics step and removed after its backward
pass, and every statistic stays on the device until one transfer per diagnostics step: with
diagnostics off the training loop does no extra work at all. Diagnostics read the model and
consume no random numbers, so a run's trajectory is the same with them on or off. In a stack of
seeds (bnbench/job/stacking.py) each copy's diagnostics step is replayed on the copy's plain model
(bnbench.job.probes._copy_diagnostics), so every seed's rows are those of its own run.

bnbench/render/diagnostics.py reads the ``diagnostics.csv`` files of a sweep for the report
(per cell and layer, and over training, per layer), without torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from bnbench import records
from bnbench.job.models import ACTIVATIONS

PERCENTILES = (0.15, 0.50, 0.85)
SIGMOID_SATURATION = 0.01  # sigmoid output below this or above 1 - this is saturated
TANH_SATURATION = 0.99  # |tanh output| above this is saturated
# torch.quantile refuses inputs above 2**24 entries and sorts the whole input: layer-wide
# percentiles of bigger activations (conv layers) use every k-th entry, at most 2**18 of them
# (enough for percentiles to a fraction of a percent of their spread, at a fraction of the cost).
QUANTILE_MAX_ENTRIES = 2**18

LAYER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_ACTIVATION_NAMES = {cls: name for name, cls in ACTIVATIONS.items()}


# ====================================================================== recording (training)


@dataclass
class Layer:
    """A Linear/Conv layer and what follows it inside its block (nn.Sequential)."""

    index: int
    name: str  # short label: conv1.., fc1.., head
    module_path: str
    layer: nn.Module
    activation: nn.Module | None = None
    activation_name: str = ""
    bn: nn.Module | None = None
    width: int = 0
    unit: int = 0


def find_layers(model: nn.Module, unit: int = 0) -> list[Layer]:
    """Every Linear/Conv in forward (registration) order, with the activation and BN that
    follow it in its nn.Sequential block, up to the next Linear/Conv."""
    modules = dict(model.named_modules())
    layers: list[Layer] = []
    counts = {"conv": 0, "fc": 0}
    for path, module in modules.items():
        if not isinstance(module, LAYER_TYPES):
            continue
        kind = "fc" if isinstance(module, nn.Linear) else "conv"
        counts[kind] += 1
        name = "head" if path == "head" else f"{kind}{counts[kind]}"
        width = module.out_features if isinstance(module, nn.Linear) else module.out_channels
        entry = Layer(len(layers), name, path, module, width=width, unit=unit % width)
        parent = modules[path.rsplit(".", 1)[0]] if "." in path else model
        if isinstance(parent, nn.Sequential):
            siblings = list(parent)
            position = next(i for i, m in enumerate(siblings) if m is module)
            for sibling in siblings[position + 1:]:
                if isinstance(sibling, LAYER_TYPES):
                    break
                if isinstance(sibling, _BatchNorm) and entry.bn is None:
                    entry.bn = sibling
                act_name = _ACTIVATION_NAMES.get(type(sibling))
                if act_name is not None and entry.activation is None:
                    entry.activation, entry.activation_name = sibling, act_name
        layers.append(entry)
    return layers


def _quantiles(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    flat = x.detach().reshape(-1).float()
    if flat.numel() > QUANTILE_MAX_ENTRIES:
        flat = flat[:: math.ceil(flat.numel() / QUANTILE_MAX_ENTRIES)]
    return torch.quantile(flat, q.to(device=flat.device, dtype=flat.dtype))


def _channel_dims(x: torch.Tensor) -> list[int]:
    """Dimensions over which one unit (feature or channel) ranges: all but dim 1."""
    return [d for d in range(x.dim()) if d != 1]


class Diagnostics:
    """Records the diagnostics of a model being trained. The loop calls, on a step where
    :meth:`due` is true: :meth:`arm` before the forward pass, :meth:`read_gradients` after
    the backward pass, and :meth:`record` after the optimizer step (it returns the rows)."""

    def __init__(self, model: nn.Module, every: int, unit: int = 0,
                 probe_x: torch.Tensor | None = None, probe_y: torch.Tensor | None = None, batch_size: int = 60):
        if every < 1:
            raise ValueError(f"diagnostics.every={every} must be at least 1")
        self.model, self.every, self.batch_size = model, every, batch_size
        self.layers = find_layers(model, unit)
        self.bns = [m for m in model.modules() if isinstance(m, _BatchNorm)]
        self.probe_x, self.probe_y = probe_x, probe_y
        self._q: torch.Tensor | None = None
        self._handles: list = []
        self._values: dict[tuple[int, str], torch.Tensor] = {}
        # per layer index: (mean, std) per unit of its input on the last diagnostics step
        self._inputs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def input_moments(self) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """What input_shift compares the next step with (for a checkpoint, so a resumed run
        records what the uninterrupted one does)."""
        return dict(self._inputs)

    def set_input_moments(self, moments: dict) -> None:
        self._inputs = {int(k): (v[0], v[1]) for k, v in moments.items()}

    @classmethod
    def for_run(cls, model: nn.Module, cfg, data) -> "Diagnostics | None":
        """The diagnostics a run config asks for (None when off)."""
        diag_cfg = cfg.get("diagnostics") if hasattr(cfg, "get") else getattr(cfg, "diagnostics", None)
        if diag_cfg is None or not diag_cfg.enabled:
            return None
        batch_size = cfg.trainer.batch_size
        n = min(int(diag_cfg.probe_batches) * batch_size, len(data.test_y))
        n = max(min(batch_size, len(data.test_y)), n // batch_size * batch_size)  # whole training-size batches
        if getattr(data, "task", "classification") != "classification":  # no accuracy to probe
            return cls(model, diag_cfg.every, diag_cfg.unit, None, None, batch_size)
        return cls(model, diag_cfg.every, diag_cfg.unit, data.test_x[:n], data.test_y[:n], batch_size)

    def due(self, step: int) -> bool:
        """Whether the ``step``-th optimizer step (counting from 1) is a diagnostics step."""
        return step == 1 or step % self.every == 0

    # -------------------------------------------------------------- hooks

    def arm(self) -> None:
        """Register the hooks for the next forward pass."""
        self.disarm()
        self._values = {}
        for layer in self.layers:
            self._handles.append(layer.layer.register_forward_pre_hook(self._input_hook(layer)))
            self._handles.append(layer.layer.register_forward_hook(self._layer_hook(layer)))
            if layer.activation is not None:
                self._handles.append(layer.activation.register_forward_pre_hook(self._act_input_hook(layer)))
                if layer.activation_name in ("sigmoid", "tanh", "relu"):
                    self._handles.append(layer.activation.register_forward_hook(self._act_output_hook(layer)))
            if layer.bn is not None and layer.bn.running_mean is not None:
                self._handles.append(layer.bn.register_forward_pre_hook(self._bn_hook(layer)))

    def disarm(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _put(self, layer: Layer, **values: torch.Tensor) -> None:
        for key, value in values.items():
            self._values[(layer.index, key)] = value.detach().float().reshape(())

    def _quantile_levels(self, device: torch.device) -> torch.Tensor:
        if self._q is None or self._q.device != device:
            self._q = torch.tensor(PERCENTILES, device=device)
        return self._q

    def _input_hook(self, layer: Layer):
        def hook(module, args):
            with torch.no_grad():
                x = args[0].detach().float()
                dims = _channel_dims(x)
                moments = (x.mean(dim=dims), x.std(dim=dims, correction=0))
                before = self._inputs.get(layer.index)
                if before is not None:
                    w2 = torch.sqrt((moments[0] - before[0]) ** 2 + (moments[1] - before[1]) ** 2)
                    self._put(layer, input_shift=w2.mean())
                self._inputs[layer.index] = moments
        return hook

    def _layer_hook(self, layer: Layer):
        def hook(module, args, output):
            with torch.no_grad():
                z = output.detach().float()
                self._put(layer, pre_mean=z.mean(), pre_std=z.std(correction=0))
        return hook

    def _act_input_hook(self, layer: Layer):
        def hook(module, args):
            with torch.no_grad():
                u = args[0].detach()
                q = self._quantile_levels(u.device)
                p = _quantiles(u, q)
                pu = _quantiles(u[:, layer.unit], q)
                self._put(layer, act_in_p15=p[0], act_in_p50=p[1], act_in_p85=p[2],
                          unit_p15=pu[0], unit_p50=pu[1], unit_p85=pu[2])
        return hook

    def _act_output_hook(self, layer: Layer):
        def hook(module, args, output):
            with torch.no_grad():
                y = output.detach()
                if layer.activation_name == "sigmoid":
                    saturated = (y < SIGMOID_SATURATION) | (y > 1 - SIGMOID_SATURATION)
                    self._put(layer, saturated_frac=saturated.float().mean())
                elif layer.activation_name == "tanh":
                    self._put(layer, saturated_frac=(y.abs() > TANH_SATURATION).float().mean())
                else:  # relu: a unit is dead on this batch if it is zero for every sample
                    alive = (y != 0).flatten(2).any(dim=2) if y.dim() > 2 else (y != 0)
                    self._put(layer, dead_frac=1.0 - alive.any(dim=0).float().mean())
        return hook

    def _bn_hook(self, layer: Layer):
        bn = layer.bn

        def hook(module, args):
            if not module.training:
                return
            with torch.no_grad():
                x = args[0].detach().float()
                dims = _channel_dims(x)
                mean, var = x.mean(dim=dims), x.var(dim=dims, correction=0)
                run_mean, run_var = bn.running_mean.float(), bn.running_var.float()
                gap = ((mean - run_mean).abs() / torch.sqrt(run_var + bn.eps)).mean()
                ratio = ((var + bn.eps) / (run_var + bn.eps)).mean()
                self._put(layer, bn_mean_gap=gap, bn_var_ratio=ratio)
        return hook

    # -------------------------------------------------------------- after backward / step

    def read_gradients(self) -> None:
        """Remove the hooks and keep the weight-gradient norms (call after ``backward``)."""
        self.disarm()
        with torch.no_grad():
            for layer in self.layers:
                weight = layer.layer.weight
                self._put(layer, weight_norm=torch.linalg.vector_norm(weight.detach().float()))
                if weight.grad is not None:
                    self._put(layer, grad_norm=torch.linalg.vector_norm(weight.grad.detach().float()))

    @torch.no_grad()
    def mode_accuracies(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(train-mode, eval-mode) accuracy on the probe set, as device tensors; the model's
        BN buffers and train/eval flags are restored exactly, and no random numbers are used."""
        if self.probe_x is None or len(self.probe_y) == 0:
            return None
        model, was_training = self.model, self.model.training
        x, y = self.probe_x, self.probe_y
        model.eval()
        eval_acc = (model(x).argmax(dim=1) == y).float().mean()
        train_acc = eval_acc
        if self.bns:
            saved = [[buf.clone() for buf in bn.buffers()] for bn in self.bns]
            for bn in self.bns:
                bn.train()  # batch statistics; dropout stays in eval mode
            correct = torch.zeros((), device=x.device)
            for start in range(0, len(y), self.batch_size):
                xb, yb = x[start:start + self.batch_size], y[start:start + self.batch_size]
                correct += (model(xb).argmax(dim=1) == yb).sum()
            train_acc = correct / len(y)
            for bn, buffers in zip(self.bns, saved):
                for buf, old in zip(bn.buffers(), buffers):
                    buf.copy_(old)
        model.train(was_training)
        return train_acc, eval_acc

    def record(self, step: int, epoch: float, loss: torch.Tensor,
               per_layer_extra: list[dict[str, float]] | None = None) -> list[dict[str, Any]]:
        """The rows of this diagnostics step (one per layer); the only host transfer.
        ``per_layer_extra``: more columns per layer, in layer order (bnbench.job.ics)."""
        self.disarm()
        accs = self.mode_accuracies()
        keys = list(self._values)
        extra = [loss.detach().float().reshape(())]
        if accs is not None:
            extra += [a.float().reshape(()) for a in accs]
        # float32 statistics: 7 significant digits say all they hold
        values = [float(f"{v:.7g}") for v in torch.stack([*(self._values[k] for k in keys), *extra]).tolist()]
        per_layer: dict[int, dict[str, float]] = {}
        for (index, key), value in zip(keys, values):
            per_layer.setdefault(index, {})[key] = value
        loss_value = values[len(keys)]
        acc_train, acc_eval = (values[len(keys) + 1], values[len(keys) + 2]) if accs is not None else (None, None)
        rows = []
        for layer in self.layers:
            stats = per_layer.get(layer.index, {})
            row: dict[str, Any] = {c: None for c in records.DIAGNOSTICS_COLUMNS}
            row.update(step=step, epoch=epoch, layer=layer.index, name=layer.name, module=layer.module_path,
                       nonlinearity=layer.activation_name, loss=loss_value, acc_train_mode=acc_train,
                       acc_eval_mode=acc_eval, **stats)
            if layer.activation is not None:
                row["unit"] = layer.unit
            if per_layer_extra is not None:
                row.update({k: float(f"{v:.7g}") for k, v in per_layer_extra[layer.index].items()})
            rows.append(row)
        self._values = {}
        return rows
