#!/usr/bin/env python
"""Per-step levers of one training process, each measured alone: what does a step cost?

Times bnbench's own training loop (``bnbench.job.engine.train``, data on the device, metrics
accumulated there) on the 784-100-100-100-10 MLP, BN before ReLU, SGD, batch 60, data of
Fashion-MNIST's shape, and then the same loop with one thing changed:

  threads=N        torch intra-op threads (the default is the cores / parallel workers)
  foreach          the optimizer's multi-tensor (foreach) update instead of the per-tensor loop
                   torch uses on CPU by default
  no schedule      no LR scheduler call per step (bnbench steps a constant LambdaLR)
  channels-first   (alexnet) trainer.channels_last=false: convolutions on NCHW activations
                   instead of bnbench's default NHWC
  compile          torch.compile of the model: compile time (first 10 steps), then steps of the
                   same compiled model

Prints ms per step (median of --repeats, alternating order) and the ratio to the reference.

    python scripts/bench_levers.py [--steps 1000] [--repeats 3] [--model mlp|alexnet] [--compile]
"""

from __future__ import annotations

import argparse
import statistics
import time
from unittest import mock

import torch

from bnbench.config import compose_config
from bnbench.job.data import TensorDataset
from bnbench.job.models import build_model
from bnbench.job import engine as train_mod

N_TRAIN = 60000  # one epoch is longer than the timed steps: one evaluation, at the end


def data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset("bench", torch.randn(N_TRAIN, 1, 28, 28, generator=g), torch.randint(0, 10, (N_TRAIN,), generator=g),
                         torch.randn(2000, 1, 28, 28, generator=g), torch.randint(0, 10, (2000,), generator=g), 10)


def time_train(cfg, ds: TensorDataset, threads: int, steps: int) -> float:
    """Seconds to build the model and train it ``steps`` steps, evaluating once."""
    torch.set_num_threads(threads)
    cfg.trainer.steps = steps
    started = time.perf_counter()
    torch.manual_seed(0)
    model = build_model(cfg, ds.in_shape, 10)
    train_mod.train(model, ds, cfg, torch.device("cpu"))
    return time.perf_counter() - started


def measure(cfg, ds, threads: int, steps: int) -> tuple[float, float]:
    """(ms per step in steady state, seconds for the first 10 steps): the difference of a long and
    a 10-step run, so start-up costs fall out of the per-step figure."""
    short = time_train(cfg, ds, threads, 10)
    long = time_train(cfg, ds, threads, steps)
    return (long - short) / (steps - 10) * 1000, short


def measure_compiled(cfg, ds, threads: int, steps: int) -> tuple[float, float]:
    """torch.compile: (ms per step once compiled, seconds for the first 10 steps, compile
    included). One compiled model serves both parts, as one process would reuse it."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = torch.compile(build_model(cfg, ds.in_shape, 10))
    started = time.perf_counter()
    cfg.trainer.steps = 10
    train_mod.train(model, ds, cfg, torch.device("cpu"))
    first = time.perf_counter() - started
    cfg.trainer.steps = steps
    started = time.perf_counter()
    train_mod.train(model, ds, cfg, torch.device("cpu"))
    return (time.perf_counter() - started) / steps * 1000, first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default="mlp", choices=("mlp", "alexnet"))
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile (slow to start)")
    args = parser.parse_args()
    steps = args.steps if args.model == "mlp" else min(args.steps, 100)
    cfg = compose_config(f"model={args.model}", "norm=bn_before")  # one evaluation, at the end (one epoch > steps)
    ds = data()
    foreach_optimizers = dict(train_mod.OPTIMIZERS)
    foreach_optimizers["sgd"] = lambda params, c: torch.optim.SGD(params, lr=c.lr, weight_decay=c.weight_decay,
                                                                   foreach=True)
    arms = {
        "reference (1 thread)": lambda: measure(cfg, ds, 1, steps),
        "threads=2": lambda: measure(cfg, ds, 2, steps),
        "foreach optimizer": lambda: _patched(train_mod, "OPTIMIZERS", foreach_optimizers,
                                              lambda: measure(cfg, ds, 1, steps)),
        "no schedule call": lambda: _patched(train_mod, "make_schedule", _null_schedule,
                                             lambda: measure(cfg, ds, 1, steps)),
    }
    if args.model == "alexnet":
        nchw = compose_config(f"model={args.model}", "norm=bn_before", "trainer.channels_last=false")
        arms["channels-first"] = lambda: measure(nchw, ds, 1, steps)
    if args.compile:
        arms["torch.compile"] = lambda: measure_compiled(cfg, ds, 1, steps)
    time_train(cfg, ds, 1, 20)  # warm-up: first-use costs of the kernels are nobody's lever
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in arms}
    for rep in range(args.repeats):
        for name in (list(arms) if rep % 2 == 0 else list(arms)[::-1]):
            results[name].append(arms[name]())
    ref = statistics.median(r[0] for r in results["reference (1 thread)"])
    print(f"{args.model}, BN before ReLU, SGD, batch 60, {steps} steps, median of {args.repeats}:")
    for name, rs in results.items():
        ms = statistics.median(r[0] for r in rs)
        first = statistics.median(r[1] for r in rs)
        print(f"  {name:<22} {ms:7.3f} ms/step  ({ref / ms:4.2f}x the reference)   first 10 steps {first:6.2f} s")


class _NullSchedule:
    def step(self):
        pass

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def _null_schedule(optimizer, name, total_steps):
    return _NullSchedule()


def _patched(module, attr, value, fn):
    with mock.patch.object(module, attr, value):
        return fn()


if __name__ == "__main__":
    main()
