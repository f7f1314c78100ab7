"""Checkpoints: a resumable snapshot of each copy of a run, and the resume that puts them back
(or sets an unusable one aside, so a rerun never fails on it again)."""

from __future__ import annotations

import copy
import logging
import os
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from bnbench.job.models import reset_streams, set_stream_states, stream_states
from bnbench.job.stacking import NotStackable, optimizer_state_of_copy, optimizer_state_of_stack, write_back

log = logging.getLogger("bnbench")


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
        try:
            torch.save({"run_id": self.run_id, "device_type": device.type, "torch_version": str(torch.__version__),
                        **state}, tmp)
            os.replace(tmp, self.path)
        except BaseException:  # a full disk, Ctrl-C mid-write: the last whole checkpoint stays, no half one beside it
            tmp.unlink(missing_ok=True)
            raise

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


def _check_device_type(state: dict, device: torch.device) -> None:
    """Raise ValueError (the checkpoint is then set aside) when ``state`` was written on another
    device type and holds state that cannot move: the random streams of dropout and noisy-BN
    layers are generators of the device they draw on. Weights, optimizer state (loaded to the
    CPU and moved by load_state_dict) and the data order (a CPU generator) move freely."""
    written_on = state.get("device_type", "cpu")  # checkpoints written before it was recorded: every run was on CPU
    if written_on != device.type and len(state.get("dropout_rng") or []) > 0:
        raise ValueError(f"it was written on {written_on} and this run is on {device.type}: the random streams of its "
                         "dropout or noisy-BN layers belong to the device that drew them")
    torch.Generator().set_state(state["epoch_rng"])  # a data order that cannot resume (ValueError/RuntimeError)


def _position(state: dict | None) -> tuple[int, int] | None:
    return None if state is None else (int(state.get("step", -1)), int(state.get("pos", -1)))


def restore(models: Sequence[nn.Module], seeds: Sequence[int], checkpoints: Sequence[Checkpoint | None],
            device: torch.device, build: Callable[[], tuple], steps_per_epoch: int, total_steps: int):
    """(net, optimizer, schedule, states): the stack ``build()`` makes of ``models``, with each
    copy's checkpoint loaded into it, or fresh (states None) when there is none. Every copy
    resumes at one position, else they cannot stack (NotStackable: each seed then trains on its
    own). A checkpoint that loads but does not fit (shapes, optimizer groups, another device's
    random streams, a position past this run) raises NotStackable in a stack; alone, it is set
    aside and the run starts fresh."""
    states = [ck.load() if ck else None for ck in checkpoints]
    if len(models) > 1 and len({_position(st) for st in states}) > 1:
        where = ", ".join(f"seed {seed}: {'step ' + str(_position(st)[0]) if st else 'no checkpoint'}"
                          for seed, st in zip(seeds, states))
        raise NotStackable(f"their checkpoints are at different steps ({where})")
    if states[0] is None:
        return (*build(), None)
    fresh = copy.deepcopy(models[0].state_dict()) if len(models) == 1 else None
    try:
        for model, state in zip(models, states):
            _check_device_type(state, device)
            model.load_state_dict(state["model"])
            set_stream_states(model, device, state["dropout_rng"])
        net, optimizer, schedule = build()
        optimizer.load_state_dict(optimizer_state_of_stack(net, optimizer, models, [st["optimizer"] for st in states]))
        schedule.load_state_dict(states[0]["schedule"])
        step, pos = _position(states[0])
        if not (0 <= pos < steps_per_epoch and 0 < step <= total_steps):
            raise ValueError(f"its position (step {step}, batch {pos}) does not fit this run")
    except NotStackable:
        raise
    except (RuntimeError, ValueError, TypeError, KeyError, AttributeError) as err:
        why = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
        if len(models) > 1:  # each seed on its own then sets aside what does not fit it
            raise NotStackable(f"a checkpoint does not fit the stack ({why})") from err
        # loadable but not this run's state (shapes, optimizer groups, fields): back to the
        # fresh start, and the file goes aside so a rerun does not fail on it again
        models[0].load_state_dict(fresh)
        reset_streams(models[0])
        checkpoints[0].set_aside(why)
        return (*build(), None)
    return net, optimizer, schedule, states


def save_all(checkpoints: Sequence[Checkpoint | None], live: Sequence[int], net: nn.Module,
             models: Sequence[nn.Module], optimizer, schedule, loop, copy_states: Callable[[int], dict],
             device: torch.device) -> bool:
    """Each live copy's state into its own checkpoint, in the plain model's format (a stack's
    copy resumes alone too); whether any was written. ``loop`` is the engine's position and
    accumulators; ``copy_states(i)`` adds what else copy i's future depends on (its history,
    diagnostics rows and input moments)."""
    live = [i for i in live if checkpoints[i] is not None]
    if not live:
        return False
    write_back(net, models)
    common = {"schedule": schedule.state_dict(), "torch_rng": torch.get_rng_state(),
              "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
              "pos": loop.pos, "step": loop.step, "seen": loop.seen, "elapsed": loop.elapsed()}
    for i in live:
        checkpoints[i].save(device=device, state={
            **common, "model": models[i].state_dict(), "optimizer": optimizer_state_of_copy(net, optimizer, models[i], i),
            "epoch_rng": loop.epoch_rngs[i], "loss_sum": loop.loss_sum[i].item(), "correct": int(loop.correct[i].item()),
            **copy_states(i), "dropout_rng": stream_states(models[i], device)})
    loop.saved_at = time.perf_counter()
    return True
