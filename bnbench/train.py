"""The training engine: one readable loop over data held on the device.

Metrics are accumulated on the device and read once per evaluation, so the step loop never
waits on the host. A non-finite (or exploding) training loss ends the run with status ``diverged``: that is
a result (the configuration cannot train at this learning rate), not a crash.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from bnbench.data import TensorDataset, eval_batches
from bnbench.diagnostics import Diagnostics
from bnbench.interrupts import Interrupted, deferred

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
log = logging.getLogger("bnbench")


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


def use_channels_last(model: nn.Module, trainer_cfg) -> nn.Module:
    """With trainer.channels_last, 4-d weights (convolutions) go channels-last, and with them
    the activations each convolution produces; fully connected layers are unaffected."""
    if trainer_cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


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
    resumed_from_step: int = 0
    diagnostics: list[dict] = field(default_factory=list)  # rows of diagnostics.csv (bnbench/diagnostics.py)


# What every checkpoint holds (snapshot() in train()); one without them cannot resume a run.
CHECKPOINT_KEYS = {"model", "optimizer", "schedule", "torch_rng", "epoch_rng", "pos", "step", "loss_sum", "correct",
                   "seen", "elapsed", "history"}


class Checkpoint:
    """A resumable snapshot of a run, written atomically, read with ``weights_only=True``.

    It holds everything the loop's future depends on: weights and buffers (BN running
    statistics), optimizer and schedule state, the data-order generator as it was at the start
    of the current epoch plus the position in it, the global RNG (dropout), the metric
    accumulators and the history so far. Resuming therefore replays the same batches in the
    same order and reaches the same final metrics as an uninterrupted run.
    """

    def __init__(self, path: Path, run_id: str, every: int):
        self.path, self.run_id, self.every = path, run_id, every

    def save(self, state: dict) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        torch.save({"run_id": self.run_id, **state}, tmp)
        os.replace(tmp, self.path)

    def load(self, device: torch.device) -> dict | None:
        """The saved state, or None: no checkpoint, or one that cannot be this run's (torn,
        another format, another run's), which is set aside with a log line."""
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location=device, weights_only=True)
        except Exception as err:  # a torn file, or not a checkpoint at all
            self.set_aside(f"it cannot be read ({type(err).__name__})")
            return None
        if not isinstance(state, dict) or state.get("run_id") != self.run_id:
            found = state.get("run_id") if isinstance(state, dict) else None
            self.set_aside(f"it belongs to another run (id {found}, this run is {self.run_id})")
            return None
        missing = sorted(CHECKPOINT_KEYS - set(state))
        if missing:
            self.set_aside(f"it lacks {', '.join(missing)}")
            return None
        return state

    def set_aside(self, why: str) -> None:
        """Keep an unusable checkpoint for inspection (checkpoint.pt.unusable) and say so; the
        run then starts from step 0 rather than failing on every rerun."""
        aside = self.path.with_name(self.path.name + ".unusable")
        os.replace(self.path, aside)
        log.warning("%s is unusable: %s; set aside as %s, the run starts again from step 0", self.path, why,
                    aside.name)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
             task: Task = TASKS["classification"]) -> tuple[float, float | None]:
    """Mean loss and accuracy (None for regression) in eval mode (batch norm uses its running
    statistics)."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device, dtype=torch.long)
    for xb, yb in eval_batches(x, y, batch_size):
        outputs = model(xb)
        loss_sum += task.loss(outputs, yb) * len(yb)
        if task.hits is not None:
            correct += task.hits(outputs, yb).sum()
    model.train(was_training)
    n = len(y)
    return loss_sum.item() / n, (correct.item() / n if task.hits is not None else None)


def train_probe(data: TensorDataset) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed training subset on which each evaluation measures the model in eval mode (the
    train metrics of the model at that step, comparable with its test metrics): as many samples
    as the test set, or the whole training set when it is smaller, chosen by a generator that
    does not depend on the run's seed, so every run of a sweep is measured on the same samples."""
    n_train = len(data.train_y)
    size = min(n_train, len(data.test_y))
    chosen = torch.randperm(n_train, generator=torch.Generator().manual_seed(0))[:size].sort().values
    return data.train_batch(chosen.to(data.train_y.device))


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
    checkpoint: Checkpoint | None = None,
) -> TrainResult:
    """Train ``model`` on ``data`` as ``cfg`` says; the seed fixes the data order."""
    trainer = cfg.trainer
    use_channels_last(model, trainer)
    optimizer = make_optimizer(model, cfg.optimizer)
    steps_per_epoch, total_steps, eval_every = steps_plan(len(data.train_y), trainer)
    schedule = make_schedule(optimizer, trainer.lr_schedule, total_steps)
    # Data order has its own generator so that model changes (which consume the global RNG
    # differently at init) do not change which batches a seed sees.
    order_rng = torch.Generator(device=device).manual_seed(cfg.seed)
    n_train, batch_size = len(data.train_y), trainer.batch_size
    task = TASKS[data.task]
    probe_x, probe_y = train_probe(data)

    result = TrainResult(status="completed")
    diagnostics = Diagnostics.for_run(model, cfg, data)  # None when off: the loop then does nothing extra
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen, step, pos, elapsed_before = 0, 0, 0, 0.0
    epoch_rng = order_rng.get_state()  # generator state at the start of the current epoch

    state = checkpoint.load(device) if checkpoint else None
    if state is not None:
        fresh = copy.deepcopy({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                               "schedule": schedule.state_dict(), "torch_rng": torch.get_rng_state()})
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            schedule.load_state_dict(state["schedule"])
            torch.set_rng_state(state["torch_rng"].cpu())
            if device.type == "cuda" and state.get("cuda_rng") is not None:
                torch.cuda.set_rng_state(state["cuda_rng"].cpu(), device)
            epoch_rng, pos, step = state["epoch_rng"].cpu(), int(state["pos"]), int(state["step"])
            if not (0 <= pos < steps_per_epoch and 0 < step <= total_steps):
                raise ValueError(f"its position (step {step}, batch {pos}) does not fit this run")
            loss_sum.fill_(state["loss_sum"])
            correct.fill_(state["correct"])
            seen, elapsed_before = int(state["seen"]), float(state["elapsed"])
            result.history = list(state["history"])
            result.diagnostics = list(state.get("diagnostics", []))
            result.resumed_from_step = step
        except (RuntimeError, ValueError, TypeError, KeyError, AttributeError) as err:
            # loadable but not this run's state (shapes, optimizer groups, fields): back to the
            # fresh start, and the file goes aside so a rerun does not fail on it again
            model.load_state_dict(fresh["model"])
            optimizer.load_state_dict(fresh["optimizer"])
            schedule.load_state_dict(fresh["schedule"])
            torch.set_rng_state(fresh["torch_rng"])
            epoch_rng, pos, step, seen, elapsed_before = order_rng.get_state(), 0, 0, 0, 0.0
            loss_sum.zero_()
            correct.zero_()
            result.history, result.diagnostics = [], []
            checkpoint.set_aside(f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}")

    def snapshot() -> dict:
        return {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "epoch_rng": epoch_rng,
            "pos": pos,
            "step": step,
            "loss_sum": loss_sum.item(),
            "correct": int(correct.item()),
            "seen": seen,
            "elapsed": elapsed_before + time.perf_counter() - start,
            "history": result.history,
            "diagnostics": result.diagnostics,
        }

    start = time.perf_counter()
    model.train()
    with deferred() as stop:
        while step < total_steps:
            order_rng.set_state(epoch_rng)
            order = torch.randperm(n_train, generator=order_rng, device=order_rng.device).to(data.train_y.device)
            # The last partial batch is dropped: a batch of one would break BN's statistics,
            # and every epoch reshuffles, so no sample is left out for long.
            while pos < steps_per_epoch and step < total_steps:
                idx = order[pos * batch_size : (pos + 1) * batch_size]
                xb, yb = data.train_batch(idx)
                probing = diagnostics is not None and diagnostics.due(step + 1)
                if probing:
                    diagnostics.arm()  # hooks for this forward pass only
                outputs = model(xb)
                loss = task.loss(outputs, yb)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if probing:
                    diagnostics.read_gradients()  # removes the hooks
                optimizer.step()
                schedule.step()
                loss_sum += loss.detach() * len(yb)
                if task.hits is not None:
                    correct += task.hits(outputs.detach(), yb).sum()
                seen += len(yb)
                step += 1
                pos += 1
                if probing:
                    result.diagnostics += diagnostics.record(step, round(step / steps_per_epoch, 4), loss)
                if pos == steps_per_epoch:  # the next epoch starts from the generator's state now
                    pos, epoch_rng = 0, order_rng.get_state()
                if step % eval_every == 0 or step == total_steps:
                    running_loss = loss_sum.item() / seen
                    train_loss, train_acc = evaluate(model, probe_x, probe_y, trainer.eval_batch_size, task)
                    test_loss, test_acc = evaluate(model, data.test_x, data.test_y, trainer.eval_batch_size, task)
                    row = {
                        "step": step,
                        "epoch": round(step / steps_per_epoch, 4),
                        "train_loss_running": running_loss,
                        "train_acc_running": correct.item() / seen if task.hits is not None else None,
                        "train_loss": train_loss,
                        "train_acc": train_acc,
                        "test_loss": test_loss,
                        "test_acc": test_acc,
                        "lr": optimizer.param_groups[0]["lr"],
                        "wall_s": round(elapsed_before + time.perf_counter() - start, 4),
                    }
                    result.history.append(row)
                    if on_eval is not None:
                        on_eval(row)
                    limit = trainer.diverge_above
                    if not math.isfinite(running_loss) or (limit is not None and running_loss > limit):
                        result.status = "diverged"
                        return result
                    loss_sum.zero_()
                    correct.zero_()
                    seen = 0
                    if checkpoint and checkpoint.every and len(result.history) % checkpoint.every == 0 \
                            and step < total_steps:
                        checkpoint.save(snapshot())
                if stop["signum"] is not None:
                    if checkpoint:
                        checkpoint.save(snapshot())
                    raise Interrupted(f"interrupted at step {step}", signum=stop["signum"], step=step,
                                      saved=checkpoint is not None)
                if pos == 0:
                    break  # new epoch: new permutation
    return result
