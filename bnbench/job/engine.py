"""The training engine: one readable loop (:func:`train_copies`) over data held on the device,
for S >= 1 copies of a model; an ordinary run is a stack of one (:func:`train`).

Metrics are accumulated on the device and read once per evaluation, so the step loop never
waits on the host. A non-finite (or exploding) training loss ends the copy with status
``diverged``: that is a result (the configuration cannot train at this learning rate), not a
crash. Checkpoints, resume, dropout, divergence and Ctrl-C are written once, for every S.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bnbench.job.data import TensorDataset, eval_batches
from bnbench.job import ics
from bnbench.job import smoothness
from bnbench.job.diagnostics import Diagnostics
from bnbench.errors import ConfigError
from bnbench.interrupts import Interrupted, deferred
from bnbench.job.models import reset_streams, set_stream_states, stream_states
from bnbench.job.stacking import (NotStackable, SingleNet, optimizer_state_of_copy, optimizer_state_of_stack, stack,
                              write_back)

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


@dataclass
class TrainResult:
    status: str  # completed | diverged
    history: list[dict] = field(default_factory=list)
    resumed_from_step: int = 0
    # seconds from the loop's start to the end of its first step (one-time costs: lazy imports,
    # kernel selection, allocator warm-up); scripts/bench.py reports them apart from training
    first_step_s: float | None = None
    diagnostics: list[dict] = field(default_factory=list)  # rows of diagnostics.csv (bnbench/diagnostics.py)
    # with keep_final: the copy's weights and buffers where its run ended (its last evaluation;
    # a diverged copy's at the evaluation that saw it), a plain model's state_dict on the CPU
    final_state: dict | None = None


# What every checkpoint holds (snapshot() in train()); one without them cannot resume a run.
CHECKPOINT_KEYS = {"model", "optimizer", "schedule", "torch_rng", "epoch_rng", "pos", "step", "loss_sum", "correct",
                   "seen", "elapsed", "history", "dropout_rng"}  # dropout_rng: every random stream (0.2's name)


class Checkpoint:
    """A resumable snapshot of a run, written atomically, read with ``weights_only=True``.

    It holds everything the loop's future depends on: weights and buffers (BN running
    statistics), optimizer and schedule state, the data-order generator as it was at the start
    of the current epoch plus the position in it, the random streams (dropout, noisy BN), the metric
    accumulators and the history so far. Resuming therefore replays the same batches in the
    same order and reaches the same final metrics as an uninterrupted run.
    """

    def __init__(self, path: Path, run_id: str, every: int, every_s: float = 0.0):
        # every: evaluations between two checkpoints (0: none but at a signal); every_s: the
        # least training time between two, so that a fast device is not dominated by saving
        self.path, self.run_id, self.every, self.every_s = path, run_id, every, every_s

    def save(self, state: dict, device: torch.device) -> None:
        """Write ``state`` with the run's identity, the device type it was trained on (a CPU and a
        CUDA random generator's states differ) and the torch version that wrote it."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        torch.save({"run_id": self.run_id, "device_type": device.type, "torch_version": str(torch.__version__),
                    **state}, tmp)
        os.replace(tmp, self.path)

    def load(self) -> dict | None:
        """The saved state, on the CPU, or None: no checkpoint, or one that cannot be this run's
        (torn, another format, another run's), which is set aside with a log line.

        Loaded to the CPU whatever device wrote it: load_state_dict then moves each tensor to
        its parameter's device, and leaves Adam's ``step`` counters on the CPU, where torch's
        optimizers keep them (a ``step`` on the GPU is read back to the host at every step)."""
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
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


def steps_plan(n_train: int, trainer_cfg) -> tuple[int, int, int]:
    """(steps per epoch, total steps, evaluate every N steps)."""
    steps_per_epoch = n_train // trainer_cfg.batch_size
    if steps_per_epoch == 0:
        raise ConfigError(
            f"trainer.batch_size={trainer_cfg.batch_size} is larger than the training set ({n_train} samples)"
        )
    total = trainer_cfg.steps if trainer_cfg.steps is not None else trainer_cfg.epochs * steps_per_epoch
    every = trainer_cfg.eval_every or steps_per_epoch
    return steps_per_epoch, total, every


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


def _check_device_type(state: dict, device: torch.device) -> None:
    """Raise ValueError (the checkpoint is then set aside) when ``state`` was written on another
    device type and holds state that cannot move: the random streams of dropout and noisy-BN
    layers are generators of the device they draw on. Weights, optimizer state (loaded to the
    CPU and moved by load_state_dict) and the data order (a CPU generator) move freely."""
    written_on = state.get("device_type", "cpu")  # checkpoints before 0.7: every run was on CPU
    if written_on != device.type and len(state.get("dropout_rng") or []) > 0:
        raise ValueError(f"it was written on {written_on} and this run is on {device.type}: the random streams of its "
                         "dropout or noisy-BN layers belong to the device that drew them")
    torch.Generator().set_state(state["epoch_rng"])  # a data order that cannot resume (ValueError/RuntimeError)


def _position(state: dict | None) -> tuple[int, int] | None:
    return None if state is None else (int(state.get("step", -1)), int(state.get("pos", -1)))


def train(model: nn.Module, data: TensorDataset, cfg, device: torch.device,
          on_eval: Callable[[dict], None] | None = None, checkpoint: Checkpoint | None = None) -> TrainResult:
    """Train ``model`` on ``data`` as ``cfg`` says (an ordinary run: a stack of one)."""
    forward = (lambda _, row: on_eval(row)) if on_eval is not None else None
    return train_copies([model], [int(cfg.seed)], data, cfg, device, on_eval=forward, checkpoints=[checkpoint])[0]


def train_copies(models: Sequence[nn.Module], seeds: Sequence[int], data: TensorDataset, cfg, device: torch.device,
                 on_eval: Callable[[int, dict], None] | None = None,
                 checkpoints: Sequence[Checkpoint | None] | None = None, keep_final: bool = False) -> list[TrainResult]:
    """Train S >= 1 copies of a model, built from the same config for ``seeds``, together: the
    one training loop of bnbench. Each copy has its own data order (its seed's generator), its
    own loss, evaluation rows, divergence and checkpoint (``checkpoints[i]``, in the plain
    model's format); ``on_eval(i, row)`` gets copy i's rows. One copy trains the plain model
    itself (bnbench.job.stacking.SingleNet); more train as one grouped model (StackedNet), which
    raises NotStackable, before any step, when they cannot.

    Metrics are accumulated on the device and read once per evaluation, so the step loop never
    waits on the host. A copy whose running training loss is not finite (or above
    ``trainer.diverge_above``) ends as ``diverged`` at that evaluation; the others go on.
    ``keep_final``: each result's ``final_state`` holds the copy's state where its run ended."""
    trainer = cfg.trainer
    s = len(models)
    checkpoints = list(checkpoints or [None] * s)
    steps_per_epoch, total_steps, eval_every = steps_plan(len(data.train_y), trainer)
    n_train, batch_size = len(data.train_y), trainer.batch_size
    task = TASKS[data.task]
    results = [TrainResult(status="completed") for _ in range(s)]

    # Resume: every copy from its own checkpoint, all at one position (else they cannot stack).
    states = [ck.load() if ck else None for ck in checkpoints]
    if s > 1 and len({_position(st) for st in states}) > 1:
        where = ", ".join(f"seed {seed}: {'step ' + str(_position(st)[0]) if st else 'no checkpoint'}"
                          for seed, st in zip(seeds, states))
        raise NotStackable(f"their checkpoints are at different steps ({where})")
    resumed = states[0] is not None
    fresh = copy.deepcopy(models[0].state_dict()) if resumed and s == 1 else None

    def build() -> tuple[nn.Module, torch.optim.Optimizer, object]:
        net = use_channels_last(stack(models).to(device), trainer)
        optimizer = make_optimizer(net, cfg.optimizer, learning_rate(cfg))
        return net, optimizer, make_schedule(optimizer, trainer.lr_schedule, total_steps)

    try:
        if resumed:
            for model, state in zip(models, states):
                _check_device_type(state, device)
                model.load_state_dict(state["model"])
                set_stream_states(model, device, state["dropout_rng"])
        net, optimizer, schedule = build()
        if resumed:
            optimizer.load_state_dict(optimizer_state_of_stack(net, optimizer, models, [st["optimizer"] for st in states]))
            schedule.load_state_dict(states[0]["schedule"])
            step, pos = _position(states[0])
            if not (0 <= pos < steps_per_epoch and 0 < step <= total_steps):
                raise ValueError(f"its position (step {step}, batch {pos}) does not fit this run")
    except NotStackable:
        raise
    except (RuntimeError, ValueError, TypeError, KeyError, AttributeError) as err:
        why = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
        if s > 1:  # each seed on its own then sets aside what does not fit it
            raise NotStackable(f"a checkpoint does not fit the stack ({why})") from err
        # loadable but not this run's state (shapes, optimizer groups, fields): back to the
        # fresh start, and the file goes aside so a rerun does not fail on it again
        models[0].load_state_dict(fresh)
        reset_streams(models[0])
        checkpoints[0].set_aside(why)
        states, resumed = [None], False
        net, optimizer, schedule = build()

    # Data order has its own generator per copy, so that model changes (which draw their
    # weights differently) do not change which batches a seed sees. It is a CPU generator on
    # every device: a seed sees the same batches on CPU and GPU (as it starts from the same
    # weights, drawn on the CPU), and its checkpoint resumes on either. One permutation per
    # epoch is copied to the device.
    order_rngs = [torch.Generator().manual_seed(int(seed)) for seed in seeds]
    epoch_rngs = [g.get_state() for g in order_rngs]  # each generator at the start of the current epoch
    loss_sum = torch.zeros(s, device=device)
    correct = torch.zeros(s, device=device, dtype=torch.long)
    seen, step, pos, elapsed_before = 0, 0, 0, 0.0
    if resumed:
        torch.set_rng_state(states[0]["torch_rng"].cpu())
        if device.type == "cuda" and states[0].get("cuda_rng") is not None \
                and states[0].get("device_type", "cpu") == "cuda":
            torch.cuda.set_rng_state(states[0]["cuda_rng"].cpu(), device)
        epoch_rngs = [st["epoch_rng"].cpu() for st in states]
        step, pos = _position(states[0])
        for i, st in enumerate(states):
            loss_sum[i] = st["loss_sum"]
            correct[i] = st["correct"]
            results[i].history = list(st["history"])
            results[i].diagnostics = list(st.get("diagnostics", []))
            results[i].resumed_from_step = step
        seen, elapsed_before = int(states[0]["seen"]), float(states[0]["elapsed"])

    probe_x, probe_y = train_probe(data)
    # One per copy, on its plain model (None when off: the loop then does nothing extra). A
    # single run hooks the model it trains; a stack's copies are replayed (_copy_diagnostics).
    diagnostics = [Diagnostics.for_run(model, cfg, data) for model in models]
    diagnostics = diagnostics if diagnostics[0] is not None else None
    if diagnostics is not None and resumed:
        for diag, st in zip(diagnostics, states):
            diag.set_input_moments(st.get("input_moments", {}))
    measure_ics = diagnostics is not None and bool(cfg.diagnostics.get("ics", False))  # bnbench/ics.py
    step_sizes = [learning_rate(cfg) * m for m in cfg.diagnostics.smoothness_steps] \
        if diagnostics is not None and cfg.diagnostics.get("smoothness", False) else []
    active = torch.ones(s, dtype=torch.bool, device=device)  # copies not diverged yet
    every = next((ck.every for ck in checkpoints if ck is not None), 0)  # evaluations between checkpoints
    every_s = next((ck.every_s for ck in checkpoints if ck is not None), 0.0)  # least seconds between them

    def keep(indices: Sequence[int]) -> None:
        """Copies ``indices`` ended here: keep their state (keep_final)."""
        if keep_final and indices:
            write_back(net, models)
            for i in indices:
                results[i].final_state = {k: v.detach().cpu().clone() for k, v in models[i].state_dict().items()}

    def save_checkpoints() -> bool:
        """Each running copy's state into its own checkpoint; whether any was written."""
        live = [i for i in range(s) if checkpoints[i] is not None and results[i].status == "completed"]
        if not live:
            return False
        write_back(net, models)
        common = {"schedule": schedule.state_dict(), "torch_rng": torch.get_rng_state(),
                  "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                  "pos": pos, "step": step, "seen": seen, "elapsed": elapsed_before + time.perf_counter() - start}
        for i in live:
            checkpoints[i].save(device=device, state={**common, "model": models[i].state_dict(),
                                 "optimizer": optimizer_state_of_copy(net, optimizer, models[i], i),
                                 "epoch_rng": epoch_rngs[i], "loss_sum": loss_sum[i].item(),
                                 "correct": int(correct[i].item()), "history": results[i].history,
                                 "diagnostics": results[i].diagnostics,
                                 "input_moments": diagnostics[i].input_moments() if diagnostics else {},
                                 "dropout_rng": stream_states(models[i], device)})
        saved_at[0] = time.perf_counter()
        return True

    start = time.perf_counter()
    saved_at = [start]  # when the last checkpoint was written (or training started)
    net.train()
    with deferred() as stop:
        while step < total_steps:
            for g, state in zip(order_rngs, epoch_rngs):
                g.set_state(state)
            orders = torch.stack([torch.randperm(n_train, generator=g) for g in order_rngs])
            orders = orders.to(data.train_y.device, non_blocking=True)
            # The last partial batch is dropped: a batch of one would break BN's statistics,
            # and every epoch reshuffles, so no sample is left out for long.
            while pos < steps_per_epoch and step < total_steps:
                idx = orders[:, pos * batch_size:(pos + 1) * batch_size]  # (S, B): each copy's own batch
                xb, yb = data.train_batch(idx)
                probing = diagnostics is not None and diagnostics[0].due(step + 1)
                shift: list[ics.Before | None] = []  # diagnostics.ics: each copy's state before the update
                if probing and s > 1:
                    _copy_diagnostics(net, models, diagnostics, xb, yb, task, active, device)
                if probing and measure_ics:  # a stack's plain copies hold its state (written back above)
                    shift = [ics.before_step(models[i], xb[i], yb[i], task.loss, device) if bool(active[i]) else None
                             for i in range(s)]
                # diagnostics.smoothness: the loss along the gradient, before the update (bnbench/smoothness.py)
                smooth = [smoothness.along_gradient(models[i], xb[i], yb[i], task.loss, device, step_sizes)
                          if bool(active[i]) else None for i in range(s)] if probing and step_sizes else []
                if probing and s == 1:
                    diagnostics[0].arm()  # hooks for this forward pass only
                outputs = net(xb)
                losses = copy_losses(task, outputs, yb)
                # a diverged copy's NaN must not reach the sum (its gradient is cut, the others' unchanged)
                total = losses.sum() if s == 1 else torch.where(active, losses, torch.zeros_like(losses)).sum()
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                if probing and s == 1:
                    diagnostics[0].read_gradients()  # removes the hooks
                optimizer.step()
                schedule.step()
                loss_sum += losses.detach() * batch_size
                if task.hits is not None:
                    correct += task.hits(outputs.detach(), yb).sum(dim=1)
                seen += batch_size
                step += 1
                pos += 1
                if results[0].first_step_s is None:
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)  # the step's kernels ran, not only their launch
                    first_step_s = round(time.perf_counter() - start, 4)
                    for result in results:
                        result.first_step_s = first_step_s
                if probing:
                    write_back(net, models)  # each copy after the update (a SingleNet is its model)
                    for i in range(s):
                        if bool(active[i]):
                            per_layer = ics.after_step(models[i], shift[i], xb[i], yb[i], task.loss, device) \
                                if shift and shift[i] is not None else None
                            if smooth and smooth[i] is not None:  # one value per step: on every layer's row
                                per_layer = [{**(per_layer[j] if per_layer else {}), **smooth[i]}
                                             for j in range(len(diagnostics[i].layers))]
                            results[i].diagnostics += diagnostics[i].record(step, round(step / steps_per_epoch, 4),
                                                                            losses[i], per_layer)
                if pos == steps_per_epoch:  # the next epoch starts from the generators' states now
                    pos, epoch_rngs = 0, [g.get_state() for g in order_rngs]
                if step % eval_every == 0 or step == total_steps:
                    running_losses, running_correct = [v / seen for v in loss_sum.tolist()], correct.tolist()
                    train_losses, train_accs = evaluate_copies(net, probe_x, probe_y, trainer.eval_batch_size, task)
                    test_losses, test_accs = evaluate_copies(net, data.test_x, data.test_y, trainer.eval_batch_size,
                                                             task)
                    val_losses, val_accs = ([None] * s, [None] * s) if data.val_x is None else \
                        evaluate_copies(net, data.val_x, data.val_y, trainer.eval_batch_size, task)
                    wall = round(elapsed_before + time.perf_counter() - start, 4)
                    ended: list[int] = []  # copies whose run ends at this evaluation
                    for i in range(s):
                        if results[i].status != "completed":
                            continue  # diverged earlier: its record ended there
                        row = {"step": step, "epoch": round(step / steps_per_epoch, 4),
                               "train_loss_running": running_losses[i],
                               "train_acc_running": running_correct[i] / seen if task.hits is not None else None,
                               "train_loss": train_losses[i], "train_acc": train_accs[i],
                               "val_loss": val_losses[i], "val_acc": val_accs[i],
                               "test_loss": test_losses[i], "test_acc": test_accs[i],
                               "lr": optimizer.param_groups[0]["lr"], "wall_s": wall}
                        results[i].history.append(row)
                        if on_eval is not None:
                            on_eval(i, row)
                        limit = trainer.diverge_above
                        if not math.isfinite(running_losses[i]) or (limit is not None and running_losses[i] > limit):
                            results[i].status = "diverged"
                            active[i] = False
                            ended.append(i)
                        elif step == total_steps:
                            ended.append(i)
                    keep(ended)
                    if not bool(active.any()):
                        return results
                    loss_sum.zero_()
                    correct.zero_()
                    seen = 0
                    evals = len(next(r for r in results if r.status == "completed").history)
                    if every and evals % every == 0 and step < total_steps \
                            and time.perf_counter() - saved_at[0] >= every_s:
                        save_checkpoints()
                if stop["signum"] is not None:
                    saved = save_checkpoints()
                    raise Interrupted(f"interrupted at step {step}", signum=stop["signum"], step=step, saved=saved)
                if pos == 0:
                    break  # new epoch: new permutations
    return results
