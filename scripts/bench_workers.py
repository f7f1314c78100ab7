#!/usr/bin/env python
"""Parallel jobs or parallel threads? Two runs, end to end through `bnbench run -m`.

  A. parallel:   joblib launcher, 2 workers, 1 torch thread per run (both runs at once)
  B. sequential: basic launcher, one run after the other, 2 torch threads per run
  C. control:    basic launcher, one run after the other, 1 torch thread per run
     (separates the gain from running jobs side by side from the cost of threading itself)

Each sweep trains the same two runs (MLP 3x100, BN before the activation, batch 60, digits,
seeds 0 and 1). Printed per arm: wall time of the whole command (process start, imports, data,
training, report), training samples/s over that wall time, and samples/s during training
alone (from each run's metrics.csv), then the ratios A/B and A/C. A benchmark, not a test: it
prints figures and asserts nothing beyond the runs completing. Run it on an otherwise idle
machine: with 2 cores, any other process skews the threaded arm most (it prints the load).

    python scripts/bench_workers.py [--epochs 500] [--repeats 1] [--workers 2]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The CLI of the interpreter running this script (no reliance on PATH).
BNBENCH = [sys.executable, "-c", "from bnbench.cli import app; app()"]
BATCH = 60


def _children_cpu_s() -> float:
    """CPU seconds used so far by this script's finished subprocesses (and theirs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_sweep(root: Path, name: str, epochs: int, launcher: list[str], threads: int) -> dict:
    cmd = [
        *BNBENCH, "run", "-m", *launcher,
        f"results_dir={root}", f"sweep.name={name}",
        "dataset=digits", "model=mlp", "norm=bn_before", "seed=0,1",
        f"trainer.batch_size={BATCH}", f"trainer.epochs={epochs}", f"trainer.threads={threads}",
        "trainer.log_progress=false",
    ]
    started, cpu_before = time.perf_counter(), _children_cpu_s()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=root)
    wall, cpu = time.perf_counter() - started, _children_cpu_s() - cpu_before
    if proc.returncode != 0:
        sys.exit(f"{name}: bnbench exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    runs = []
    for summary_path in sorted((root / name).glob("*/summary.json")):
        summary = json.loads(summary_path.read_text())
        with open(summary_path.parent / "metrics.csv", newline="") as f:
            train_s = float(list(csv.DictReader(f))[-1]["wall_s"])  # training loop time, evals included
        runs.append({"samples": summary["steps"] * BATCH, "train_s": train_s, "threads": summary.get("threads"),
                     "status": summary["status"]})
    if len(runs) != 2 or any(r["status"] != "completed" for r in runs):
        sys.exit(f"{name}: expected 2 completed runs, got {runs}")
    samples = sum(r["samples"] for r in runs)
    per_run = [r["samples"] / r["train_s"] for r in runs]
    # Training-phase aggregate: in parallel both runs train at once, so their rates add up;
    # in sequence the machine does one at a time, so it is samples over the summed time.
    training_rate = sum(per_run) if name.startswith("parallel") else samples / sum(r["train_s"] for r in runs)
    return {"wall_s": wall, "cpu_s": cpu, "e2e_rate": samples / wall, "training_rate": training_rate, "per_run": per_run,
            "threads": [r["threads"] for r in runs], "samples": samples}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=500, help="epochs per run (500: ~13 s of training each, 1 thread)")
    parser.add_argument("--repeats", type=int, default=1, help="repeat the arms (order alternating), report medians")
    parser.add_argument("--workers", type=int, default=2, help="joblib workers (= threads per sequential run)")
    parser.add_argument("--arms", default="parallel,sequential,control", help="which arms to run, comma-separated")
    args = parser.parse_args()
    w = args.workers
    arms = {
        "parallel": (["hydra/launcher=parallel", f"hydra.launcher.n_jobs={w}"], 1),
        "sequential": ([], w),
        "control": ([], 1),
    }
    arms = {name: arms[name] for name in args.arms.split(",")}
    results: dict[str, list[dict]] = {arm: [] for arm in arms}
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        for rep in range(args.repeats):
            # Alternate the order so that warm caches favour no arm.
            for arm in (list(arms) if rep % 2 == 0 else list(arms)[::-1]):
                launcher, threads = arms[arm]
                load = os.getloadavg()[0]  # 1-minute load before the arm starts: ~0 on an idle machine
                res = run_sweep(Path(tmp), f"{arm}-{rep}", args.epochs, launcher, threads)
                results[arm].append(res)
                print(f"[{rep}] {arm:<10}  load {load:4.2f}  wall {res['wall_s']:6.1f} s  cpu {res['cpu_s']:6.1f} s   "
                      f"end-to-end {res['e2e_rate']:7.0f} samples/s   training {res['training_rate']:7.0f} samples/s   per run "
                      + " ".join(f"{r:.0f}" for r in res["per_run"]) + f"   threads {res['threads']}", flush=True)

    def med(arm: str, key: str) -> float:
        return statistics.median(r[key] for r in results[arm])

    labels = {"parallel": f"A parallel   ({w} joblib workers x 1 thread)", "sequential": f"B sequential (basic, {w} threads)",
              "control": "C control    (basic, 1 thread)"}
    print(f"\n2 runs x {args.epochs} epochs ({next(iter(results.values()))[0]['samples']} training samples), "
          f"median of {args.repeats}:")
    for arm in arms:
        print(f"  {labels[arm]:<42} wall {med(arm, 'wall_s'):6.1f} s, {med(arm, 'e2e_rate'):6.0f} samples/s end to end, "
              f"{med(arm, 'training_rate'):6.0f} in training")
    for other in [a for a in ("sequential", "control") if a in arms and "parallel" in arms]:
        print(f"  A/{'B' if other == 'sequential' else 'C'} throughput: end to end "
              f"{med('parallel', 'e2e_rate') / med(other, 'e2e_rate'):.2f}x, "
              f"training only {med('parallel', 'training_rate') / med(other, 'training_rate'):.2f}x")


if __name__ == "__main__":
    main()
