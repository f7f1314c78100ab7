"""Optimizers and learning-rate schedules by name (a new optimizer is one entry in OPTIMIZERS
plus conf/optimizer/NAME.yaml), and the rate a run trains with."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

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


def make_optimizer(model: nn.Module, optimizer_cfg, lr: float | None = None) -> torch.optim.Optimizer:
    """The configured optimizer; ``lr`` replaces optimizer.lr (see :func:`learning_rate`)."""
    if lr is not None and lr != optimizer_cfg.lr:
        optimizer_cfg = optimizer_cfg.copy()
        optimizer_cfg.lr = lr
    return OPTIMIZERS[optimizer_cfg.name](model.parameters(), optimizer_cfg)


def learning_rate(cfg) -> float:
    """The rate a run trains with: optimizer.lr, or with trainer.lr_reference_batch set, scaled
    linearly with the batch (optimizer.lr x batch_size / lr_reference_batch; Goyal et al. 2017),
    so that a sweep over batch sizes keeps the rate per sample (Wu & He 2018 do so)."""
    reference = cfg.trainer.get("lr_reference_batch")
    return cfg.optimizer.lr if reference is None else cfg.optimizer.lr * cfg.trainer.batch_size / reference


def make_schedule(optimizer: torch.optim.Optimizer, name: str, total_steps: int):
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
