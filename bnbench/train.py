"""The training engine: one readable loop over data held on the device.

Metrics are accumulated on the device and read once per evaluation, so the step loop never
waits on the host. A non-finite training loss ends the run with status ``diverged``: that is
a result (the configuration cannot train at this learning rate), not a crash.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from bnbench.data import TensorDataset, eval_batches, train_batches

# name -> constructor from (parameters, optimizer config); a new optimizer is one entry here
# plus conf/optimizer/NAME.yaml.
OPTIMIZERS: dict[str, Callable] = {
    "sgd": lambda params, c: torch.optim.SGD(params, lr=c.lr, weight_decay=c.weight_decay),
    "momentum": lambda params, c: torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay),
    "nesterov": lambda params, c: torch.optim.SGD(
        params, lr=c.lr, momentum=c.momentum, nesterov=True, weight_decay=c.weight_decay
    ),
    "adam": lambda params, c: torch.optim.Adam(
        params, lr=c.lr, betas=tuple(c.betas), eps=c.eps, weight_decay=c.weight_decay
    ),
    "adamw": lambda params, c: torch.optim.AdamW(
        params, lr=c.lr, betas=tuple(c.betas), eps=c.eps, weight_decay=c.weight_decay
    ),
    "rmsprop": lambda params, c: torch.optim.RMSprop(
        params, lr=c.lr, alpha=c.alpha, eps=c.eps, momentum=c.momentum, weight_decay=c.weight_decay
    ),
}

LR_SCHEDULES = ("constant", "cosine")


def make_optimizer(model: nn.Module, optimizer_cfg) -> torch.optim.Optimizer:
    return OPTIMIZERS[optimizer_cfg.name](model.parameters(), optimizer_cfg)


def make_schedule(optimizer: torch.optim.Optimizer, name: str, total_steps: int):
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


@dataclass
class TrainResult:
    status: str  # completed | diverged
    history: list[dict] = field(default_factory=list)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> tuple[float, float]:
    """Mean loss and accuracy in eval mode (batch norm uses its running statistics)."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device, dtype=torch.long)
    for xb, yb in eval_batches(x, y, batch_size):
        logits = model(xb)
        loss_sum += F.cross_entropy(logits, yb, reduction="sum")
        correct += (logits.argmax(dim=1) == yb).sum()
    model.train(was_training)
    n = len(y)
    return loss_sum.item() / n, correct.item() / n


def steps_plan(n_train: int, trainer_cfg) -> tuple[int, int, int]:
    """(steps per epoch, total steps, evaluate every N steps)."""
    steps_per_epoch = n_train // trainer_cfg.batch_size
    if steps_per_epoch == 0:
        from bnbench.config import ConfigError

        raise ConfigError(
            f"trainer.batch_size={trainer_cfg.batch_size} is larger than the training set ({n_train} samples)"
        )
    total = trainer_cfg.steps if trainer_cfg.steps is not None else trainer_cfg.epochs * steps_per_epoch
    every = trainer_cfg.eval_every or steps_per_epoch
    return steps_per_epoch, total, every


def train(
    model: nn.Module,
    data: TensorDataset,
    cfg,
    device: torch.device,
    on_eval: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Train ``model`` on ``data`` as ``cfg`` says; the seed fixes the data order."""
    trainer = cfg.trainer
    optimizer = make_optimizer(model, cfg.optimizer)
    steps_per_epoch, total_steps, eval_every = steps_plan(len(data.train_y), trainer)
    schedule = make_schedule(optimizer, trainer.lr_schedule, total_steps)
    # Data order has its own generator so that model changes (which consume the global RNG
    # differently at init) do not change which batches a seed sees.
    order_rng = torch.Generator(device=device).manual_seed(cfg.seed)

    result = TrainResult(status="completed")
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    step = 0
    start = time.perf_counter()
    model.train()
    while step < total_steps:
        for xb, yb in train_batches(data.train_x, data.train_y, trainer.batch_size, order_rng):
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            loss_sum += loss.detach() * len(yb)
            correct += (logits.detach().argmax(dim=1) == yb).sum()
            seen += len(yb)
            step += 1
            if step % eval_every == 0 or step == total_steps:
                train_loss = loss_sum.item() / seen
                test_loss, test_acc = evaluate(model, data.test_x, data.test_y, trainer.eval_batch_size)
                row = {
                    "step": step,
                    "epoch": round(step / steps_per_epoch, 4),
                    "train_loss": train_loss,
                    "train_acc": correct.item() / seen,
                    "test_loss": test_loss,
                    "test_acc": test_acc,
                    "lr": optimizer.param_groups[0]["lr"],
                    "wall_s": round(time.perf_counter() - start, 4),
                }
                result.history.append(row)
                if on_eval is not None:
                    on_eval(row)
                if not math.isfinite(train_loss):
                    result.status = "diverged"
                    return result
                loss_sum.zero_()
                correct.zero_()
                seen = 0
            if step >= total_steps:
                break
    return result
