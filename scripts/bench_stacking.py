#!/usr/bin/env python
"""Stacked seeds: does training S seeds of one cell as one stacked model beat S separate runs?

Three ways to train S copies of bnbench's 784-100-100-100-10 MLP (BN before ReLU, SGD lr 0.1,
batch 60, each copy its own init and its own batch order, as separate runs would have):

  separate  S ordinary models, one step each per round (what S runs do, one after another)
  vmap      torch.func: stack_module_state + functional_call under vmap (BN running
            statistics are stacked buffers, updated in place per copy)
  grouped   bnbench's own StackedNet (bnbench/job/stacking.py): weights (S, in, out) applied
            with baddbmm; BN as one BatchNorm1d over S*C features, which normalizes each
            copy's features over that copy's batch only, exactly as S separate
            BatchNorm1d(C) would
  compiled  (--compile) the grouped step under torch.compile: its forward and backward as one
            compiled function, the SGD step as another; the first steps (compilation) are
            timed apart and left out of the per-round figure

Prints milliseconds per round (one step of every copy) and the speed-up over `separate`, at
each thread count, plus the largest parameter difference of the stacked copies from the
separate runs after the timed steps (float rounding only: same math, other kernels). Data are
random tensors of Fashion-MNIST's shape: the cost of a step does not depend on the values.

    python scripts/bench_stacking.py [--seeds 5] [--steps 200] [--threads 1,2] [--compile]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from bnbench.config import compose_config
from bnbench.job.models import build_model
from bnbench.job.stacking import StackedNet

CLASSES, BATCH, N = 10, 60, 12000


def mlp() -> nn.Module:
    """bnbench's 784-100-100-100-10 MLP, BN before ReLU (bnbench.job.models.build_model)."""
    return build_model(compose_config("dataset=fashion_mnist", "norm=bn_before"), (1, 28, 28), CLASSES)


def rounds(n_seeds: int, steps: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n = max(N, steps * BATCH)
    x, y = torch.randn(n, 1, 28, 28), torch.randint(0, CLASSES, (n,))
    orders = torch.stack([torch.randperm(n, generator=torch.Generator().manual_seed(s))[: steps * BATCH]
                          for s in range(n_seeds)]).view(n_seeds, steps, BATCH)
    return x, y, orders


def bench(n_seeds: int, steps: int, threads: int, compiled: bool = False) -> dict[str, float]:
    torch.set_num_threads(threads)
    x, y, orders = rounds(n_seeds, steps)
    models = []
    for s in range(n_seeds):
        torch.manual_seed(s)
        models.append(mlp())
    separate = copy.deepcopy(models)
    opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in separate]

    def sep_round(i):
        for s, (m, o) in enumerate(zip(separate, opts)):
            idx = orders[s, i]
            loss = F.cross_entropy(m(x[idx]), y[idx])
            o.zero_grad(set_to_none=True)
            loss.backward()
            o.step()

    params, buffers = stack_module_state(copy.deepcopy(models))
    params = {k: v.detach().requires_grad_() for k, v in params.items()}
    base = copy.deepcopy(models[0]).to("meta")
    v_opt = torch.optim.SGD(list(params.values()), lr=0.1)

    def per_copy(p, b, xb):
        return functional_call(base, (p, b), (xb,))

    def stacked_loss(out: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        # the sum of each copy's mean loss: each copy's gradient is that of its own loss
        return F.cross_entropy(out.reshape(-1, CLASSES), yb.reshape(-1), reduction="sum") / BATCH

    def vmap_round(i):
        idx = orders[:, i]
        loss = stacked_loss(vmap(per_copy)(params, buffers, x[idx]), y[idx])
        v_opt.zero_grad(set_to_none=True)
        loss.backward()
        v_opt.step()

    g_model = StackedNet(copy.deepcopy(models))
    g_opt = torch.optim.SGD(g_model.parameters(), lr=0.1)

    def grouped_round(i):
        idx = orders[:, i]
        loss = stacked_loss(g_model(x[idx]), y[idx])
        g_opt.zero_grad(set_to_none=True)
        loss.backward()
        g_opt.step()

    variants = [("separate", sep_round), ("vmap", vmap_round), ("grouped", grouped_round)]
    times = {}
    if compiled:
        c_model = StackedNet(copy.deepcopy(models))
        c_opt = torch.optim.SGD(c_model.parameters(), lr=0.1)

        @torch.compile
        def c_forward_backward(xb, yb):
            stacked_loss(c_model(xb), yb).backward()

        @torch.compile
        def c_update():
            c_opt.step()

        def compiled_round(i):
            idx = orders[:, i]
            c_opt.zero_grad(set_to_none=True)
            c_forward_backward(x[idx], y[idx])
            c_update()

        started = time.perf_counter()
        for i in range(3):  # compilation: the forward-backward graph, then the update's
            compiled_round(i)
        times["compile_s"] = time.perf_counter() - started
        variants.append(("compiled", compiled_round))
    for name, fn in variants:
        fn(0)  # warm-up (not timed; every variant takes the same first step)
        started = time.perf_counter()
        for i in range(1, steps):
            fn(i)
        times[name] = (time.perf_counter() - started) / (steps - 1) * 1000
    # same math, other kernels: stacked copies track the separate runs up to float rounding
    first_linear = [m.hidden[0][0].weight for m in separate]
    times["vmap_max_diff"] = max((params["hidden.0.0.weight"][s] - w).abs().max().item()
                                 for s, w in enumerate(first_linear))
    # bnbench's GroupedLinear holds each copy's weight transposed: (S, in, out)
    times["grouped_max_diff"] = max((g_model.hidden[0][0].weight[s].t() - w).abs().max().item()
                                    for s, w in enumerate(first_linear))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--compile", action="store_true", help="also the grouped step under torch.compile (slow to start)")
    args = parser.parse_args()
    print(f"{args.seeds} copies of the 3x100 BN MLP, batch {BATCH}, {args.steps} rounds; ms per round (one step of "
          "every copy), speed-up over separate")
    for threads in (int(t) for t in args.threads.split(",")):
        t = bench(args.seeds, args.steps, threads, args.compile)
        compiled = (f"   compiled {t['compiled']:6.2f} ms ({t['separate'] / t['compiled']:.2f}x; compiling took "
                    f"{t['compile_s']:.1f} s)") if args.compile else ""
        print(f"  {threads} thread(s): separate {t['separate']:6.2f} ms   vmap {t['vmap']:6.2f} ms "
              f"({t['separate'] / t['vmap']:.2f}x)   grouped {t['grouped']:6.2f} ms ({t['separate'] / t['grouped']:.2f}x)"
              f"{compiled}   max |param diff| vmap {t['vmap_max_diff']:.1e}, grouped {t['grouped_max_diff']:.1e}",
              flush=True)


if __name__ == "__main__":
    main()
