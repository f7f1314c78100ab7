"""Stacked seeds: the seeds of one sweep cell trained together as one grouped model.

Runs that differ only by seed run the same small operations; on their own they leave most of a
core (or a GPU) waiting on per-operation overhead. Here S copies, each built exactly as its own
run would build it (``torch.manual_seed(seed)`` then ``build_model``), become one model whose
layers hold the S copies side by side:

    Linear       weights (S, out, in), applied to (S, batch, in) with one batched matmul
    Conv2d       one conv with groups=S over S x channels: S independent convolutions
    BatchNorm    one BN over S x features: each copy's features are normalized over that
                 copy's batch only, with its own running statistics, as S separate BNs would
    activation, pooling   per element / per channel: shared as they are

Each copy sees its own batches (the data order of its seed), its own loss, and so its own
gradients; the optimizers are per-element, so every copy follows its separate run's
trajectory up to float rounding (other kernels sum in another order), which the tests check.
``scripts/bench_stacking.py`` measures the gain. Dropout (its random masks come from one
global stream per run) and diagnostics (hooks on per-run modules) are not stacked: such runs
train one by one.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Sequence

import torch
from torch import nn

from bnbench.data import TensorDataset, eval_batches
from bnbench.models import ACTIVATIONS
from bnbench.interrupts import Interrupted, deferred
from bnbench.train import (TASKS, Task, TrainResult, make_optimizer, make_schedule, steps_plan, train_probe,
                           use_channels_last)


def why_not_stackable(cfg) -> str | None:
    """None if runs of this config can be stacked, else the reason (for the log)."""
    if cfg.trainer.dropout > 0:
        return "dropout draws its masks from each run's own random stream"
    if cfg.get("diagnostics") is not None and cfg.diagnostics.enabled:
        return "diagnostics hook each run's own modules"
    return None


def seed_stacks(seeds: Sequence[int], cell: int, cells: int, workers: int, size: int | None = None) -> list[list[int]]:
    """How the ``seeds`` of a sweep's cell number ``cell`` (of ``cells``, in launch order) split
    into stacks, each trained by one job of one of ``workers`` parallel workers.

    ``size`` caps a stack. Without it, cells run whole, a round of ``workers`` cells at a time,
    and the cells of an incomplete last round are split so that its stacks occupy every worker:
    3 cells of 5 seeds on 2 workers would take 2 rounds of 5 seed-runs with one worker idle in
    the second; with the third cell as stacks of 3 and 2 they take 5 + 3. Whole cells make the
    largest stacks, and larger stacks cost less per seed."""
    seeds = list(seeds)
    if size is not None:
        parts = math.ceil(len(seeds) / size)
    else:
        last_round = cells % max(1, workers)  # cells left over after the full rounds
        parts = math.ceil(workers / last_round) if last_round and cell >= cells - last_round else 1
    stacks, start = [], 0
    for stack_len in _split_sizes(len(seeds), min(parts, len(seeds))):
        stacks.append(seeds[start:start + stack_len])
        start += stack_len
    return stacks


def _split_sizes(n: int, parts: int) -> list[int]:
    """n items in ``parts`` contiguous parts, the larger first: 5 in 2 -> [3, 2]."""
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


# ------------------------------------------------------------------------------- grouped layers

class GroupedLinear(nn.Module):
    """S Linear layers side by side: (S, B, in) -> (S, B, out)."""

    def __init__(self, linears: Sequence[nn.Linear]):
        super().__init__()
        # Held as (S, in, out), each copy's weight transposed: bmm's backward then yields the
        # gradient in the parameter's own layout. Held as (S, out, in) and transposed in forward,
        # every step paid a copy of each weight gradient into place (a fifth of a CPU step).
        self.weight = nn.Parameter(torch.stack([m.weight.detach().t() for m in linears]).contiguous())
        has_bias = linears[0].bias is not None
        self.bias = nn.Parameter(torch.stack([m.bias.detach() for m in linears]).clone()) if has_bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bias is None:
            return torch.bmm(x, self.weight)
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight)


def _grouped_batchnorm(bns: Sequence[nn.modules.batchnorm._BatchNorm]) -> nn.modules.batchnorm._BatchNorm:
    first = bns[0]
    grouped = type(first)(first.num_features * len(bns), eps=first.eps, momentum=first.momentum, affine=first.affine)
    with torch.no_grad():
        for name, tensor in [*grouped.named_parameters(), *grouped.named_buffers()]:
            if name == "num_batches_tracked":
                tensor.copy_(first.num_batches_tracked)
            else:
                tensor.copy_(torch.cat([getattr(bn, name) for bn in bns]))
    return grouped


class RowsBatchNorm(nn.Module):
    """BN of S copies on (S, B, C): one BatchNorm1d over the S*C features of (B, S*C)."""

    def __init__(self, bns: Sequence[nn.BatchNorm1d]):
        super().__init__()
        self.bn = _grouped_batchnorm(bns)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s, b, c = x.shape
        return self.bn(x.transpose(0, 1).reshape(b, s * c)).view(b, s, c).transpose(0, 1)


def _grouped_conv(convs: Sequence[nn.Conv2d]) -> nn.Conv2d:
    first, s = convs[0], len(convs)
    grouped = nn.Conv2d(first.in_channels * s, first.out_channels * s, first.kernel_size, stride=first.stride,
                        padding=first.padding, dilation=first.dilation, groups=s, bias=first.bias is not None)
    with torch.no_grad():
        grouped.weight.copy_(torch.cat([c.weight for c in convs]))
        if grouped.bias is not None:
            grouped.bias.copy_(torch.cat([c.bias for c in convs]))
    return grouped


def _shared(module: nn.Module) -> nn.Module:
    if isinstance(module, (*ACTIVATIONS.values(), nn.MaxPool2d, nn.AdaptiveAvgPool2d)):
        return module
    raise TypeError(f"cannot stack a {type(module).__name__} layer")


def _grouped_sequential(blocks: Sequence[nn.Module], conv_layout: bool) -> nn.Sequential:
    """The same Sequential for S copies (recursing into the blocks of hidden layers)."""
    out: list[nn.Module] = []
    for parts in zip(*[list(b) for b in blocks]):
        first = parts[0]
        if isinstance(first, nn.Sequential):
            out.append(_grouped_sequential(parts, conv_layout))
        elif isinstance(first, nn.Linear):
            out.append(GroupedLinear(parts))
        elif isinstance(first, nn.Conv2d):
            out.append(_grouped_conv(parts))
        elif isinstance(first, nn.BatchNorm2d):
            out.append(_grouped_batchnorm(parts))
        elif isinstance(first, nn.BatchNorm1d):
            out.append(RowsBatchNorm(parts))
        else:
            out.append(_shared(first))
    return nn.Sequential(*out)


class StackedNet(nn.Module):
    """S copies of an MLP or AlexNet-style model (bnbench.models): input (S, B, ...) -> (S, B, outputs).

    The conv part runs on (B, S*C, H, W) (channels of copy s at s*C..(s+1)*C), the fully
    connected part on (S, B, features)."""

    def __init__(self, models: Sequence[nn.Module]):
        super().__init__()
        self.copies = len(models)
        first = models[0]
        self.features = _grouped_sequential([m.features for m in models], True) if hasattr(first, "features") else None
        self.hidden = _grouped_sequential([m.hidden for m in models], False)
        self.head = GroupedLinear([m.head for m in models])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s, b = x.shape[:2]
        if self.features is not None:
            x = self.features(x.transpose(0, 1).reshape(b, s * x.shape[2], *x.shape[3:]))
            x = x.reshape(b, s, -1).transpose(0, 1)  # each copy's (C, h, w) flattened, as nn.Flatten does
        else:
            x = x.reshape(s, b, -1)
        return self.head(self.hidden(x))


# ------------------------------------------------------------------------------- training

def _per_copy_loss(task: Task, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(S, B, ...) outputs and targets -> (S,) mean losses, each as its own run computes it."""
    per_sample = task.loss(outputs.flatten(0, 1), targets.flatten(0, 1), reduction="none")
    return per_sample.view(outputs.shape[0], -1).mean(dim=1)


@torch.no_grad()
def evaluate_stacked(net: StackedNet, x: torch.Tensor, y: torch.Tensor, batch_size: int,
                     task: Task) -> tuple[list[float], list[float | None]]:
    """Each copy's mean test loss and accuracy (None for regression), in eval mode."""
    was_training = net.training
    net.eval()
    s = net.copies
    loss_sum = torch.zeros(s, device=x.device)
    correct = torch.zeros(s, device=x.device, dtype=torch.long)
    for xb, yb in eval_batches(x, y, batch_size):
        out = net(xb.unsqueeze(0).expand(s, *xb.shape))
        targets = yb.unsqueeze(0).expand(s, *yb.shape)
        loss_sum += _per_copy_loss(task, out, targets) * len(yb)
        if task.hits is not None:
            correct += task.hits(out, targets).sum(dim=1)
    net.train(was_training)
    n = len(y)
    accs = [c / n for c in correct.tolist()] if task.hits is not None else [None] * s
    return [v / n for v in loss_sum.tolist()], accs


def train_stacked(models: Sequence[nn.Module], seeds: Sequence[int], data: TensorDataset, cfg, device: torch.device,
                  on_eval: Callable[[int, dict], None] | None = None) -> list[TrainResult]:
    """Train ``models`` (built for ``seeds``, from the same config but the seed) as one stacked
    model, the loop of bnbench.train.train for each copy: each seed's own data order, its own
    evaluation rows and its own divergence. ``on_eval(i, row)`` gets copy i's rows."""
    trainer = cfg.trainer
    net = use_channels_last(StackedNet(models).to(device), trainer)
    s = len(models)
    optimizer = make_optimizer(net, cfg.optimizer)
    steps_per_epoch, total_steps, eval_every = steps_plan(len(data.train_y), trainer)
    schedule = make_schedule(optimizer, trainer.lr_schedule, total_steps)
    order_rngs = [torch.Generator(device=device).manual_seed(int(seed)) for seed in seeds]
    n_train, batch_size = len(data.train_y), trainer.batch_size
    task = TASKS[data.task]
    probe_x, probe_y = train_probe(data)

    results = [TrainResult(status="completed") for _ in range(s)]
    active = torch.ones(s, dtype=torch.bool, device=device)  # copies not diverged yet
    loss_sum = torch.zeros(s, device=device)
    correct = torch.zeros(s, device=device, dtype=torch.long)
    seen, step, pos = 0, 0, 0
    start = time.perf_counter()
    net.train()
    with deferred() as stop:
        while step < total_steps:
            orders = torch.stack([torch.randperm(n_train, generator=g, device=g.device) for g in order_rngs])
            orders = orders.to(data.train_y.device)
            while pos < steps_per_epoch and step < total_steps:
                idx = orders[:, pos * batch_size:(pos + 1) * batch_size]  # (S, B): each copy's own batch
                xb, yb = data.train_batch(idx)
                outputs = net(xb)
                losses = _per_copy_loss(task, outputs, yb)
                # a diverged copy's NaN must not reach the sum (its gradient is cut, the others' unchanged)
                total = torch.where(active, losses, torch.zeros_like(losses)).sum()
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                optimizer.step()
                schedule.step()
                loss_sum += losses.detach() * batch_size
                if task.hits is not None:
                    correct += task.hits(outputs.detach(), yb).sum(dim=1)
                seen += batch_size
                step += 1
                pos += 1
                if pos == steps_per_epoch:
                    pos = 0
                if step % eval_every == 0 or step == total_steps:
                    running_losses, running_correct = (loss_sum / seen).tolist(), correct.tolist()
                    train_losses, train_accs = evaluate_stacked(net, probe_x, probe_y, trainer.eval_batch_size, task)
                    test_losses, test_accs = evaluate_stacked(net, data.test_x, data.test_y,
                                                              trainer.eval_batch_size, task)
                    wall = round(time.perf_counter() - start, 4)
                    for i in range(s):
                        if results[i].status != "completed":
                            continue  # diverged earlier: its record ended there
                        row = {"step": step, "epoch": round(step / steps_per_epoch, 4),
                               "train_loss_running": running_losses[i],
                               "train_acc_running": running_correct[i] / seen if task.hits is not None else None,
                               "train_loss": train_losses[i], "train_acc": train_accs[i],
                               "test_loss": test_losses[i], "test_acc": test_accs[i],
                               "lr": optimizer.param_groups[0]["lr"], "wall_s": wall}
                        results[i].history.append(row)
                        if on_eval is not None:
                            on_eval(i, row)
                        limit = trainer.diverge_above
                        running = running_losses[i]
                        if not math.isfinite(running) or (limit is not None and running > limit):
                            results[i].status = "diverged"
                            active[i] = False
                    if not bool(active.any()):
                        return results
                    loss_sum.zero_()
                    correct.zero_()
                    seen = 0
                if stop["signum"] is not None:  # stacked runs keep no checkpoint: they restart from step 0
                    raise Interrupted(f"interrupted at step {step}", signum=stop["signum"], step=step)
                if pos == 0:
                    break  # new epoch: new permutations
    return results
