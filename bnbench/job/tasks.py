"""What a run trains and measures: the task's loss and hits (classification, regression), each
copy's loss of a stack, evaluation in eval mode, and the fixed training probe of every run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from bnbench.job.data import TensorDataset, eval_batches
from bnbench.job.stacking import SingleNet


@dataclass(frozen=True)
class Task:
    """What a dataset's task trains and measures (data.TensorDataset.task)."""

    # (outputs, targets, reduction=...) -> loss, as torch.nn.functional's losses take it
    loss: Callable[..., torch.Tensor]
    # (outputs, targets) -> one bool per sample, True where it is right; None: no accuracy.
    # Outputs may carry leading dims (stacked seeds: (S, B, K)); classes are the last dim.
    hits: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None


def _argmax_hits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    # A sample whose outputs hold a NaN or inf has no prediction: it counts as wrong. (argmax
    # would pick the NaN's index, so a diverged model would score its class's frequency.)
    return (logits.argmax(dim=-1) == labels) & torch.isfinite(logits).all(dim=-1)


# task -> loss and accuracy; accuracy columns stay empty for regression runs
TASKS: dict[str, Task] = {
    "classification": Task(F.cross_entropy, _argmax_hits),
    "regression": Task(F.mse_loss, None),
}


def copy_losses(task: Task, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(S, B, ...) outputs and targets -> (S,) mean losses, each as its own run computes it
    (a stack of one computes exactly the plain model's loss)."""
    if outputs.shape[0] == 1:
        return task.loss(outputs[0], targets[0]).unsqueeze(0)
    per_sample = task.loss(outputs.flatten(0, 1), targets.flatten(0, 1), reduction="none")
    return per_sample.view(outputs.shape[0], -1).mean(dim=1)


@torch.no_grad()
def evaluate_copies(net: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
                    task: Task) -> tuple[list[float], list[float | None]]:
    """Each copy's mean loss and accuracy (None for regression) on (x, y), in eval mode."""
    was_training = net.training
    net.eval()
    s = net.copies
    loss_sum = torch.zeros(s, device=x.device)
    correct = torch.zeros(s, device=x.device, dtype=torch.long)
    for xb, yb in eval_batches(x, y, batch_size):
        outputs = net(xb.unsqueeze(0).expand(s, *xb.shape))
        targets = yb.unsqueeze(0).expand(s, *yb.shape)
        loss_sum += copy_losses(task, outputs, targets) * len(yb)
        if task.hits is not None:
            correct += task.hits(outputs, targets).sum(dim=1)
    net.train(was_training)
    n = len(y)
    accs = [c / n for c in correct.tolist()] if task.hits is not None else [None] * s
    return [v / n for v in loss_sum.tolist()], accs


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
             task: Task = TASKS["classification"]) -> tuple[float, float | None]:
    """Mean loss and accuracy (None for regression) of one model in eval mode (batch norm uses
    its running statistics)."""
    losses, accs = evaluate_copies(SingleNet(model), x, y, batch_size, task)
    return losses[0], accs[0]


def train_probe(data: TensorDataset) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed training subset on which each evaluation measures the model in eval mode (the
    train metrics of the model at that step, comparable with its test metrics): as many samples
    as the test set, or the whole training set when it is smaller, chosen by a generator that
    does not depend on the run's seed, so every run of a sweep is measured on the same samples."""
    n_train = len(data.train_y)
    size = min(n_train, len(data.test_y))
    chosen = torch.randperm(n_train, generator=torch.Generator().manual_seed(0))[:size].sort().values
    return data.train_batch(chosen.to(data.train_y.device))
