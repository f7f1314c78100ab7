"""The training engine: one readable loop (:func:`train_copies`) over data held on the device,
for S >= 1 copies of a model; an ordinary run is a stack of one (:func:`train`).

Metrics are accumulated on the device and read once per evaluation, so the step loop never
waits on the host. A non-finite (or exploding) training loss ends the copy with status
``diverged``: that is a result (the configuration cannot train at this learning rate), not a
crash. Checkpoints (checkpoint.py), resume, probes (probes.py), dropout, divergence and Ctrl-C
are written once, for every S.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn

from bnbench.errors import ConfigError
from bnbench.interrupts import HANDOVER, Interrupted, deferred
from bnbench.job.checkpoint import Checkpoint, restore, save_all
from bnbench.job.data import TensorDataset
from bnbench.job.optim import learning_rate, make_optimizer, make_schedule
from bnbench.job.probes import Probes
from bnbench.job.stacking import stack, write_back
from bnbench.job.tasks import TASKS, Task, copy_losses, evaluate_copies, train_probe

__all__ = ["Checkpoint", "TrainResult", "steps_plan", "train", "train_copies", "use_channels_last"]


@dataclass
class TrainResult:
    status: str  # completed | diverged
    history: list[dict] = field(default_factory=list)
    resumed_from_step: int = 0
    # seconds from the loop's start to the end of its first step (one-time costs: lazy imports,
    # kernel selection, allocator warm-up); scripts/bench.py reports them apart from training
    first_step_s: float | None = None
    diagnostics: list[dict] = field(default_factory=list)  # rows of diagnostics.csv (bnbench/job/diagnostics.py)
    # with keep_final: the copy's weights and buffers where its run ended (its last evaluation;
    # a diverged copy's at the evaluation that saw it), a plain model's state_dict on the CPU
    final_state: dict | None = None


@dataclass
class Loop:
    """Where the loop is (step, position in the epoch), what it has accumulated since the last
    evaluation, and each copy's data-order generator as it was at the start of the epoch: what
    a checkpoint saves besides the models and optimizer.

    Data order has its own generator per copy, so that model changes (which draw their weights
    differently) do not change which batches a seed sees. It is a CPU generator on every device:
    a seed sees the same batches on CPU and GPU (as it starts from the same weights, drawn on
    the CPU), and its checkpoint resumes on either. One permutation per epoch is copied over."""

    n_train: int
    order_rngs: list[torch.Generator]
    epoch_rngs: list[torch.Tensor]
    loss_sum: torch.Tensor
    correct: torch.Tensor
    step: int = 0
    pos: int = 0
    seen: int = 0
    elapsed_before: float = 0.0
    start: float = field(default_factory=time.perf_counter)
    saved_at: float = 0.0  # when the last checkpoint was written (or training started)

    @classmethod
    def begin(cls, seeds: Sequence[int], n_train: int, device: torch.device, states: Sequence[dict] | None,
              results: Sequence[TrainResult]) -> Loop:
        """The loop at step 0, or where the checkpoints ``states`` left it (the global random
        state too); a resumed copy's history and diagnostics rows go back into its result."""
        order_rngs = [torch.Generator().manual_seed(int(seed)) for seed in seeds]
        loop = cls(n_train, order_rngs, [g.get_state() for g in order_rngs], torch.zeros(len(seeds), device=device),
                   torch.zeros(len(seeds), device=device, dtype=torch.long))
        if states is None:
            return loop
        torch.set_rng_state(states[0]["torch_rng"].cpu())
        if device.type == "cuda" and states[0].get("cuda_rng") is not None \
                and states[0].get("device_type", "cpu") == "cuda":
            torch.cuda.set_rng_state(states[0]["cuda_rng"].cpu(), device)
        loop.epoch_rngs = [st["epoch_rng"].cpu() for st in states]
        loop.step, loop.pos = int(states[0]["step"]), int(states[0]["pos"])
        for i, st in enumerate(states):
            loop.loss_sum[i] = st["loss_sum"]
            loop.correct[i] = st["correct"]
            results[i].history = list(st["history"])
            results[i].diagnostics = list(st.get("diagnostics", []))
            results[i].resumed_from_step = loop.step
        loop.seen, loop.elapsed_before = int(states[0]["seen"]), float(states[0]["elapsed"])
        return loop

    def epoch_orders(self, device: torch.device) -> torch.Tensor:
        """(S, N): each copy's permutation of the training set for the current epoch."""
        for g, state in zip(self.order_rngs, self.epoch_rngs):
            g.set_state(state)
        orders = torch.stack([torch.randperm(self.n_train, generator=g) for g in self.order_rngs])
        return orders.to(device, non_blocking=True)

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.start


def use_channels_last(model: nn.Module, trainer_cfg) -> nn.Module:
    """With trainer.channels_last, 4-d weights (convolutions) go channels-last, and with them
    the activations each convolution produces; fully connected layers are unaffected."""
    if trainer_cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


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

    A copy whose running training loss is not finite (or above ``trainer.diverge_above``) ends
    as ``diverged`` at that evaluation; the others go on. ``keep_final``: each result's
    ``final_state`` holds the copy's state where its run ended."""
    trainer, s = cfg.trainer, len(models)
    checkpoints = list(checkpoints or [None] * s)
    steps_per_epoch, total_steps, eval_every = steps_plan(len(data.train_y), trainer)
    batch_size, task = trainer.batch_size, TASKS[data.task]
    results = [TrainResult(status="completed") for _ in range(s)]

    def build() -> tuple[nn.Module, torch.optim.Optimizer, object]:
        net = use_channels_last(stack(models).to(device), trainer)
        optimizer = make_optimizer(net, cfg.optimizer, learning_rate(cfg))
        return net, optimizer, make_schedule(optimizer, trainer.lr_schedule, total_steps)

    net, optimizer, schedule, states = restore(models, seeds, checkpoints, device, build, steps_per_epoch, total_steps)
    loop = Loop.begin(seeds, len(data.train_y), device, states, results)
    probe = train_probe(data)
    probes = Probes.for_run(models, cfg, data, task, device, states)
    active = torch.ones(s, dtype=torch.bool, device=device)  # copies not diverged yet
    every = next((ck.every for ck in checkpoints if ck is not None), 0)  # evaluations between checkpoints
    every_s = next((ck.every_s for ck in checkpoints if ck is not None), 0.0)  # least seconds between them

    def save() -> bool:
        live = [i for i in range(s) if results[i].status == "completed"]
        return save_all(checkpoints, live, net, models, optimizer, schedule, loop, lambda i: {
            "history": results[i].history, "diagnostics": results[i].diagnostics,
            **(probes.checkpoint_state(i) if probes else {"input_moments": {}})}, device)

    loop.start = loop.saved_at = time.perf_counter()
    net.train()
    with deferred() as stop:
        while loop.step < total_steps:
            # The last partial batch is dropped: a batch of one would break BN's statistics,
            # and every epoch reshuffles, so no sample is left out for long.
            orders = loop.epoch_orders(data.train_y.device)
            while loop.pos < steps_per_epoch and loop.step < total_steps:
                xb, yb = data.train_batch(orders[:, loop.pos * batch_size:(loop.pos + 1) * batch_size])
                if probes:
                    probes.before_update(loop.step + 1, net, xb, yb, active)
                outputs = net(xb)  # (S, B, ...): each copy on its own batch
                losses = copy_losses(task, outputs, yb)
                # a diverged copy's NaN must not reach the sum (its gradient is cut, the others' unchanged)
                total = losses.sum() if s == 1 else torch.where(active, losses, torch.zeros_like(losses)).sum()
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                if probes:
                    probes.after_backward()
                optimizer.step()
                schedule.step()
                loop.loss_sum += losses.detach() * batch_size
                if task.hits is not None:
                    loop.correct += task.hits(outputs.detach(), yb).sum(dim=1)
                loop.seen, loop.step, loop.pos = loop.seen + batch_size, loop.step + 1, loop.pos + 1
                if results[0].first_step_s is None:
                    _first_step(results, loop, device)
                if probes:
                    rows = probes.after_update(loop.step, round(loop.step / steps_per_epoch, 4), net, xb, yb, losses,
                                               active)
                    for result, copy_rows in zip(results, rows):
                        result.diagnostics += copy_rows
                if loop.pos == steps_per_epoch:  # the next epoch starts from the generators' states now
                    loop.pos, loop.epoch_rngs = 0, [g.get_state() for g in loop.order_rngs]
                if loop.step % eval_every == 0 or loop.step == total_steps:
                    ended = _evaluate(net, data, probe, task, trainer, loop, results, active, optimizer,
                                      steps_per_epoch, total_steps, on_eval)
                    if keep_final and ended:
                        _keep_final(net, models, results, ended)
                    if not bool(active.any()):
                        return results
                    evals = len(next(r for r in results if r.status == "completed").history)
                    if every and evals % every == 0 and loop.step < total_steps \
                            and time.perf_counter() - loop.saved_at >= every_s:
                        save()
                if stop["signum"] is not None:
                    saved = save()
                    handover = stop["previous"].get(stop["signum"]) if stop["signum"] in HANDOVER else None
                    raise Interrupted(f"interrupted at step {loop.step}", signum=stop["signum"], step=loop.step,
                                      saved=saved, handover=handover if callable(handover) else None)
                if loop.pos == 0:
                    break  # new epoch: new permutations
    return results


def _first_step(results: Sequence[TrainResult], loop: Loop, device: torch.device) -> None:
    """Seconds from the loop's start to the end of its first step (one-time costs)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # the step's kernels ran, not only their launch
    first_step_s = round(time.perf_counter() - loop.start, 4)
    for result in results:
        result.first_step_s = first_step_s


def _evaluate(net: nn.Module, data: TensorDataset, probe: tuple[torch.Tensor, torch.Tensor], task: Task, trainer,
              loop: Loop, results: Sequence[TrainResult], active: torch.Tensor, optimizer, steps_per_epoch: int,
              total_steps: int, on_eval: Callable[[int, dict], None] | None) -> list[int]:
    """One evaluation: each running copy's row (running averages since the last evaluation, the
    model in eval mode on the training probe, validation and test sets), its divergence, and the
    accumulators reset. Returns the copies whose run ends here (diverged, or at the last step)."""
    s, step, size = len(results), loop.step, trainer.eval_batch_size
    running_losses, running_correct = [v / loop.seen for v in loop.loss_sum.tolist()], loop.correct.tolist()
    train_losses, train_accs = evaluate_copies(net, *probe, size, task)
    test_losses, test_accs = evaluate_copies(net, data.test_x, data.test_y, size, task)
    val_losses, val_accs = ([None] * s, [None] * s) if data.val_x is None else \
        evaluate_copies(net, data.val_x, data.val_y, size, task)
    wall = round(loop.elapsed(), 4)
    ended: list[int] = []
    for i in range(s):
        if results[i].status != "completed":
            continue  # diverged earlier: its record ended there
        row = {"step": step, "epoch": round(step / steps_per_epoch, 4), "train_loss_running": running_losses[i],
               "train_acc_running": running_correct[i] / loop.seen if task.hits is not None else None,
               "train_loss": train_losses[i], "train_acc": train_accs[i], "val_loss": val_losses[i],
               "val_acc": val_accs[i], "test_loss": test_losses[i], "test_acc": test_accs[i],
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
    if bool(active.any()):
        loop.loss_sum.zero_()
        loop.correct.zero_()
        loop.seen = 0
    return ended


def _keep_final(net: nn.Module, models: Sequence[nn.Module], results: Sequence[TrainResult],
                ended: Sequence[int]) -> None:
    """Copies ``ended`` ended here: keep their state (trainer.save_final)."""
    write_back(net, models)
    for i in ended:
        results[i].final_state = {k: v.detach().cpu().clone() for k, v in models[i].state_dict().items()}
