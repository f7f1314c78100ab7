#!/usr/bin/env python
"""bnbench against the hand-written PyTorch loop, on the same machine, data and configs.

The reference is the loop people write from the PyTorch examples (pytorch/examples, mnist):
a torchvision dataset with ToTensor + Normalize, a DataLoader with shuffle=True, one process
per run, default torch threads, ``loss.item()`` logged as it goes, a test pass per epoch. Its
model is bnbench's own (``build_model`` on the same composed config), so the two sides differ
only in how they run it. Every figure is end to end, from process start to exit, as a user
waits for it: imports, data loading, training, evaluation and, for bnbench, its records and
report.

Cases (Fashion-MNIST, batch 60, SGD lr 0.1, ReLU, bnbench's default config otherwise):
  mlp_run        one run of the 784-100-100-100-10 MLP, BN before the ReLU, --epochs epochs
  mlp_sweep      norm none/bn_before/bn_after x 5 seeds of that MLP (15 runs), --epochs epochs:
                 the hand loop runs them one after another; bnbench as `bnbench run -m` with
                 the joblib launcher (hydra/launcher=parallel, on CPU), once as it is and once
                 with trainer.stack_seeds=true (each norm's 5 seeds as one stacked model)
  alexnet_epoch  one epoch of the AlexNet-style CNN, BN before the ReLU

The hand loop's 15-run sweep takes minutes, and its runs differ only by seed: by default it
runs --hand-seeds of the 5 seeds per norm and scales its time to 15 runs (said in the output
and the CSV); --hand-seeds 5 runs all of them.

    python scripts/bench.py [--cases mlp_run,mlp_sweep,alexnet_epoch] [--epochs 3] [--data DIR]
                            [--hand-seeds 1] [--out results/bench]

Prints samples/s and the ratio per case and writes a CSV with the machine, device and
versions. A benchmark, not a test: run it on an otherwise idle machine (it prints the load).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

BNBENCH = [sys.executable, "-c", "from bnbench.cli import app; app()"]
NORMS = ("none", "bn_before", "bn_after")
SEEDS = (0, 1, 2, 3, 4)
FASHION_MEAN_STD = (0.2860, 0.3530)  # over the training images, as the examples hard-code MNIST's


# --------------------------------------------------------------------------- the hand-written loop

def hand_written_run(data_root: str, model_name: str, norm: str, seed: int, epochs: int, device_name: str) -> None:
    """One run as the PyTorch examples write it (runs in its own process, see hand_process)."""
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    from bnbench.models import build_model

    torch.manual_seed(seed)
    device = torch.device(device_name)
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(*FASHION_MEAN_STD)])
    train_set = datasets.FashionMNIST(data_root, train=True, download=False, transform=transform)
    test_set = datasets.FashionMNIST(data_root, train=False, download=False, transform=transform)
    train_loader = DataLoader(train_set, batch_size=60, shuffle=True)
    test_loader = DataLoader(test_set, batch_size=1000)

    cfg = _compose(f"model={model_name}", f"norm={norm}", f"seed={seed}")
    model = build_model(cfg, (1, 28, 28), 10).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.optimizer.lr)
    for epoch in range(1, epochs + 1):
        model.train()
        for batch_idx, (data, target) in enumerate(train_loader):
            data, target = data.to(device), target.to(device)
            optimizer.zero_grad()
            output = model(data)
            loss = F.cross_entropy(output, target)
            loss.backward()
            optimizer.step()
            if batch_idx % 100 == 0:
                print(f"epoch {epoch} [{batch_idx * len(data)}/{len(train_loader.dataset)}] loss {loss.item():.4f}")
        model.eval()
        test_loss, correct = 0.0, 0
        with torch.no_grad():
            for data, target in test_loader:
                data, target = data.to(device), target.to(device)
                output = model(data)
                test_loss += F.cross_entropy(output, target, reduction="sum").item()
                correct += output.argmax(dim=1).eq(target).sum().item()
        print(f"epoch {epoch}: test loss {test_loss / len(test_set):.4f}, accuracy {correct / len(test_set):.4f}")


def _compose(*overrides: str):
    from bnbench.config import compose_config

    return compose_config("dataset=fashion_mnist", *overrides)


def hand_process(data_root: str, model_name: str, norm: str, seed: int, epochs: int, device: str) -> float:
    """Wall seconds of one hand-written run in a fresh process (as `python main.py` would be)."""
    cmd = [sys.executable, __file__, "--hand-run", json.dumps([data_root, model_name, norm, seed, epochs, device])]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"hand-written run failed:\n{proc.stderr[-3000:]}")
    return wall


# --------------------------------------------------------------------------- bnbench

def bnbench_process(args: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    proc = subprocess.run([*BNBENCH, *args], capture_output=True, text=True, cwd=cwd)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"bnbench {' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return wall


def _statuses(folder: Path) -> list[str]:
    return [json.loads(p.read_text())["status"] for p in folder.rglob("summary.json")]


# --------------------------------------------------------------------------- cases

def case_mlp_run(opts, tmp: Path) -> dict:
    hand = hand_process(opts.data, "mlp", "bn_before", 0, opts.epochs, opts.device)
    ours = bnbench_process(["run", "dataset=fashion_mnist", "norm=bn_before", "seed=0", f"trainer.epochs={opts.epochs}",
                            f"trainer.device={opts.device}", f"results_dir={tmp}", "hydra.run.dir=" + str(tmp / "run")],
                           tmp)
    assert _statuses(tmp / "run") == ["completed"]
    return {"variant": "default", "runs": 1, "samples": opts.n_train * opts.epochs, "hand_s": hand,
            "hand_measured_runs": 1, "bnbench_s": ours, "bnbench_cmd": f"bnbench run dataset=fashion_mnist norm=bn_before trainer.epochs={opts.epochs}"}


def case_mlp_sweep(opts, tmp: Path) -> list[dict]:
    seeds = SEEDS[: opts.hand_seeds]
    measured = [hand_process(opts.data, "mlp", norm, seed, opts.epochs, opts.device) for norm in NORMS for seed in seeds]
    hand = sum(measured) * len(SEEDS) / len(seeds)  # the runs differ only by seed
    launcher = ["hydra/launcher=parallel"] if opts.device == "cpu" else []
    rows = []
    for variant, extra in (("parallel", []), ("parallel + stacked seeds", ["trainer.stack_seeds=true"])):
        sweep_args = ["-m", "dataset=fashion_mnist", f"norm={','.join(NORMS)}", f"seed={','.join(map(str, SEEDS))}",
                      f"trainer.epochs={opts.epochs}", *launcher, *extra]
        name = variant.replace(" ", "").replace("+", "_")
        ours = bnbench_process(["run", *sweep_args, f"trainer.device={opts.device}", f"results_dir={tmp}",
                                f"sweep.name={name}", "--quiet"], tmp)
        statuses = _statuses(tmp / name)
        assert statuses == ["completed"] * 15, statuses
        rows.append({"variant": variant, "runs": 15, "samples": 15 * opts.n_train * opts.epochs, "hand_s": hand,
                     "hand_measured_runs": len(measured), "bnbench_s": ours,
                     "bnbench_cmd": "bnbench run " + " ".join(sweep_args)})
    return rows


def case_alexnet_epoch(opts, tmp: Path) -> dict:
    hand = hand_process(opts.data, "alexnet", "bn_before", 0, 1, opts.device)
    ours = bnbench_process(["run", "dataset=fashion_mnist", "model=alexnet", "norm=bn_before", "trainer.epochs=1",
                            f"trainer.device={opts.device}", f"results_dir={tmp}", "hydra.run.dir=" + str(tmp / "cnn")],
                           tmp)
    assert _statuses(tmp / "cnn") == ["completed"]
    return {"variant": "default", "runs": 1, "samples": opts.n_train, "hand_s": hand, "hand_measured_runs": 1,
            "bnbench_s": ours,
            "bnbench_cmd": "bnbench run dataset=fashion_mnist model=alexnet norm=bn_before trainer.epochs=1"}


CASES = {"mlp_run": case_mlp_run, "mlp_sweep": case_mlp_sweep, "alexnet_epoch": case_alexnet_epoch}


def machine() -> dict:
    import torch
    import torchvision

    cpu = platform.processor() or ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else ""
    return {"host": platform.node(), "cpu": cpu, "cores": len(os.sched_getaffinity(0)), "gpu": gpu,
            "python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated: " + ", ".join(CASES))
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the MLP cases")
    parser.add_argument("--data", default=os.environ.get("BNBENCH_DATA", "data"), help="root holding FashionMNIST/raw")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (both sides use the same)")
    parser.add_argument("--hand-seeds", type=int, default=1, choices=range(1, 6),
                        help="seeds per norm the hand loop runs in mlp_sweep (its time is scaled to 5)")
    parser.add_argument("--out", default="results/bench", help="folder for the CSV")
    parser.add_argument("--hand-run", help=argparse.SUPPRESS)  # internal: one hand-written run in this process
    opts = parser.parse_args()
    if opts.hand_run:
        hand_written_run(*json.loads(opts.hand_run))
        return

    cases = opts.cases.split(",")
    unknown = [name for name in cases if name not in CASES]
    if unknown:
        sys.exit(f"bench.py: unknown case {unknown[0]!r}; choose from {', '.join(CASES)}")

    import torch

    from bnbench.config import ConfigError
    from bnbench.data import DataError, load_dataset
    from bnbench.devices import resolve_device

    try:
        opts.device = str(resolve_device(opts.device))
    except (ConfigError, RuntimeError) as err:
        sys.exit(f"bench.py: --device {opts.device}: {err}")
    opts.data = str(Path(opts.data).resolve())
    try:  # unpacks the IDX .gz files once, so neither side pays for it
        data = load_dataset(_compose(f"dataset.root={opts.data}", "dataset.download=false"), torch.device("cpu"))
        opts.n_train = len(data.train_y)
    except (DataError, ConfigError) as err:
        sys.exit(f"bench.py: {err}")
    info = machine()
    print(f"{info['cpu']} ({info['cores']} cores){', ' + info['gpu'] if info['gpu'] else ''}; torch {info['torch']}, "
          f"device {opts.device}; 1-min load {os.getloadavg()[0]:.2f}", flush=True)
    rows = []
    env_data = {"BNBENCH_DATA": opts.data}
    os.environ.update(env_data)  # bnbench's dataset.root default
    for name in cases:
        with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
            load = os.getloadavg()[0]
            results = CASES[name](opts, Path(tmp))
        for res in results if isinstance(results, list) else [results]:
            ratio = res["hand_s"] / res["bnbench_s"]
            scaled = "" if res["hand_measured_runs"] == res["runs"] else \
                f" (measured {res['hand_measured_runs']} of {res['runs']} runs, scaled)"
            print(f"{name:<14} hand-written {res['hand_s']:7.1f} s  {res['samples'] / res['hand_s']:8.0f} samples/s{scaled}\n"
                  f"{'':<14} bnbench      {res['bnbench_s']:7.1f} s  {res['samples'] / res['bnbench_s']:8.0f} samples/s   "
                  f"{ratio:5.1f}x faster  {res['variant']}  [{res['bnbench_cmd']}]", flush=True)
            rows.append({"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "case": name, **res,
                         "ratio": round(ratio, 2), "hand_samples_per_s": round(res["samples"] / res["hand_s"]),
                         "bnbench_samples_per_s": round(res["samples"] / res["bnbench_s"]), "epochs": opts.epochs,
                         "device": opts.device, "load_before": round(load, 2), **info})
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"bench-{datetime.now().strftime('%Y-%m-%d_%H-%M-%S')}.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
