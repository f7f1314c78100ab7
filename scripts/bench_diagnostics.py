#!/usr/bin/env python
"""What do diagnostics cost? The same training with ``diagnostics.enabled`` false and true.

For each workload, the training loop (bnbench.job.engine.train: steps, per-epoch test evaluations,
checkpoints off) runs with diagnostics off and on at the default interval
(``diagnostics.every``, 100 steps), alternating off/on ``--repeats`` times so that machine load
drifts hit both arms alike. Printed per workload: the median wall and CPU time of each arm's
training loop, the overhead (on / off - 1) of each, and that of the fastest runs (min wall);
the issue's budget is 10%. Data are loaded
once, before timing; each run builds its model from the same seed, so both arms train the
same trajectory (diagnostics read the model, they do not change it).

Workloads (Fashion-MNIST when BNBENCH_DATA holds it, else the bundled 8x8 digits):

  mlp        784-100-100-100-10 sigmoid MLP, BN before the sigmoid (the ioffe2015 preset)
  deep       10 x 100 sigmoid MLP with BN (the deep_sigmoid preset)
  alexnet    AlexNet-style CNN with BN before ReLU (the alexnet_bn_adam preset)

A benchmark, not a test: it asserts nothing. With 2 shared cores, other processes skew single
timings; compare medians and minima, and note the load it prints.

    BNBENCH_DATA=/work/data python scripts/bench_diagnostics.py [--repeats 3] [--steps 1000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from bnbench.config import compose_config
from bnbench.job.data import load_dataset
from bnbench.job.experiment import seed_everything
from bnbench.job.models import build_model
from bnbench.job.engine import train

WORKLOADS = {
    "mlp": ["model=mlp", "activation=sigmoid", "norm=bn_before", "model.init=gaussian", "optimizer.lr=0.5"],
    "deep": ["model=mlp", "model.depth=10", "activation=sigmoid", "norm=bn_before"],
    "alexnet": ["model=alexnet", "activation=relu", "norm=bn_before", "optimizer=adam"],
}


def make_cfg(overrides: list[str]):
    return compose_config(*overrides)


def time_run(cfg, data) -> tuple[float, float, int]:
    """(wall seconds in the training loop, CPU seconds of this process in it, diagnostics steps)."""
    seed_everything(cfg.seed)
    model = build_model(cfg, data.in_shape, data.num_outputs)
    started, cpu_started = time.perf_counter(), time.process_time()
    result = train(model, data, cfg, torch.device("cpu"))
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    return wall, cpu, len({row["step"] for row in result.diagnostics})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=1000, help="training steps per run (alexnet: a fifth)")
    parser.add_argument("--every", type=int, default=None, help="diagnostics.every (default: the config's)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dataset = "fashion_mnist" if os.path.isdir(os.path.join(os.environ.get("BNBENCH_DATA", "data"),
                                                            "FashionMNIST")) else "digits"
    print(f"dataset {dataset}, {args.threads} thread(s), {args.repeats} repeats, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("wall: training-loop seconds (median over repeats); cpu: this process's CPU seconds in it (median),")
    print("which other processes on a shared machine disturb less; overhead = on / off - 1")
    print(f"{'workload':<9} {'steps':>6} {'probes':>6} {'wall off':>9} {'wall on':>8} {'overhead':>9} "
          f"{'cpu off':>8} {'cpu on':>8} {'overhead':>9} {'min wall':>9}")
    for name in args.workloads:
        steps = args.steps // 5 if name == "alexnet" else args.steps
        common = [*WORKLOADS[name], f"dataset={dataset}", f"trainer.steps={steps}", "trainer.log_progress=false",
                  f"trainer.threads={args.threads}", "trainer.checkpoint_every=0"]
        cfg_off = make_cfg(common)
        on = [*common, "diagnostics.enabled=true"] + ([f"diagnostics.every={args.every}"] if args.every else [])
        cfg_on = make_cfg(on)
        data = load_dataset(cfg_off, torch.device("cpu"))
        time_run(make_cfg([*common, "trainer.steps=20"]), data)  # warm-up: allocator, kernels
        wall: dict[str, list[float]] = {"off": [], "on": []}
        cpu: dict[str, list[float]] = {"off": [], "on": []}
        probes = 0
        for _ in range(args.repeats):
            for arm, cfg in (("off", cfg_off), ("on", cfg_on)):
                seconds, cpu_seconds, n = time_run(cfg, data)
                wall[arm].append(seconds)
                cpu[arm].append(cpu_seconds)
                probes = max(probes, n)
        w = {k: statistics.median(v) for k, v in wall.items()}
        c = {k: statistics.median(v) for k, v in cpu.items()}
        low = {k: min(v) for k, v in wall.items()}
        print(f"{name:<9} {steps:>6} {probes:>6} {w['off']:>8.2f}s {w['on']:>7.2f}s {100 * (w['on'] / w['off'] - 1):>+8.1f}% "
              f"{c['off']:>7.2f}s {c['on']:>7.2f}s {100 * (c['on'] / c['off'] - 1):>+8.1f}% "
              f"{100 * (low['on'] / low['off'] - 1):>+8.1f}%")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
