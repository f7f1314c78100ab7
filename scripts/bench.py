#!/usr/bin/env python
"""bnbench against the hand-written PyTorch loop, on the same machine, data and configs.

The reference is the loop people write from the PyTorch examples (pytorch/examples, mnist):
a torchvision dataset with ToTensor + Normalize, a DataLoader with shuffle=True, one process
per run, default torch threads, ``loss.item()`` logged as it goes, a test pass per epoch. Its
model is bnbench's own (``build_model`` on the same composed config), so the two sides differ
only in how they run it. Every figure is end to end, from process start to exit, as a user
waits for it: imports, data loading, training, evaluation and, for bnbench, its records and
report.

A second reference, when installed (pip install -e '.[bench]'): the same MLP trained the way
ashleve/lightning-hydra-template trains (a LightningDataModule over torchvision, a
LightningModule with torchmetrics, a Trainer with a checkpoint callback and a validation pass
each epoch).

Cases (Fashion-MNIST, batch 60, SGD lr 0.1, ReLU, bnbench's default config otherwise):
  mlp_run        one run of the 784-100-100-100-10 MLP, BN before the ReLU, --epochs epochs
  mlp_sweep      norm none/bn_before/bn_after x 5 seeds of that MLP (15 runs), --epochs epochs,
                 as a user types it: `bnbench run -m dataset=fashion_mnist dataset.val_size=0 norm=... seed=...
                 trainer.epochs=E`, no launcher or stacking flag. The hand loop (and Lightning)
                 run the 15 one after another. Also printed: this machine's compute floor for
                 the sweep (its training FLOPs over the measured rate of the stacked matrix
                 products of its steps, all cores, plus the time to start Python and import
                 torch), bnbench's time against it, and where bnbench's time went (from the
                 run records: start-up, per-job set-up, first steps, training, between jobs,
                 report)
  alexnet_epoch  one epoch of the AlexNet-style CNN, BN before the ReLU

The references' 15-run sweep takes minutes, and its runs differ only by seed: by default they
run --hand-seeds of the 5 seeds per norm and scale their time to 15 runs (said in the output
and the CSV); --hand-seeds 5 runs all of them.

    python scripts/bench.py [--cases mlp_run,mlp_sweep,alexnet_epoch] [--epochs 3] [--data DIR]
                            [--hand-seeds 1] [--out results/bench] [--device cpu|cuda]

Prints samples/s and the ratios per case and writes a CSV with the machine, device and
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
# The references train on every training image and hold out no validation split; so does
# bnbench here (its default sets 5,000 of them aside since 0.5), so both sides do the same work.
SAME_DATA = "dataset.val_size=0"
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

    from bnbench.job.models import build_model

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


def lightning_run(data_root: str, model_name: str, norm: str, seed: int, epochs: int, device_name: str) -> None:
    """One run as lightning-hydra-template trains (src/train.py, src/data/mnist_datamodule.py,
    src/models/mnist_module.py): DataModule, LightningModule with torchmetrics, Trainer with a
    ModelCheckpoint and a validation pass per epoch (runs in its own process)."""
    import lightning as L
    import torch
    import torch.nn.functional as F
    from lightning.pytorch.callbacks import ModelCheckpoint
    from torch.utils.data import DataLoader, random_split
    from torchmetrics import MeanMetric
    from torchmetrics.classification import MulticlassAccuracy
    from torchvision import datasets, transforms

    from bnbench.job.models import build_model

    class FashionDataModule(L.LightningDataModule):
        def setup(self, stage=None):
            transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(*FASHION_MEAN_STD)])
            train = datasets.FashionMNIST(data_root, train=True, download=False, transform=transform)
            # the template carves its validation set out of the training set
            self.train, self.val = random_split(train, [55000, 5000], generator=torch.Generator().manual_seed(42))
            self.test = datasets.FashionMNIST(data_root, train=False, download=False, transform=transform)

        def train_dataloader(self):
            return DataLoader(self.train, batch_size=60, shuffle=True)

        def val_dataloader(self):
            return DataLoader(self.val, batch_size=1000)

        def test_dataloader(self):
            return DataLoader(self.test, batch_size=1000)

    class Module(L.LightningModule):
        def __init__(self, net):
            super().__init__()
            self.net = net
            self.train_acc, self.val_acc, self.test_acc = (MulticlassAccuracy(10, average="micro") for _ in range(3))
            self.train_loss, self.val_loss = MeanMetric(), MeanMetric()

        def step(self, batch):
            x, y = batch
            logits = self.net(x)
            return F.cross_entropy(logits, y), logits.argmax(dim=1), y

        def training_step(self, batch, batch_idx):
            loss, preds, y = self.step(batch)
            self.train_loss(loss)
            self.train_acc(preds, y)
            self.log("train/loss", self.train_loss, on_epoch=True, prog_bar=True)
            self.log("train/acc", self.train_acc, on_epoch=True, prog_bar=True)
            return loss

        def validation_step(self, batch, batch_idx):
            loss, preds, y = self.step(batch)
            self.val_loss(loss)
            self.val_acc(preds, y)
            self.log("val/loss", self.val_loss, on_epoch=True, prog_bar=True)
            self.log("val/acc", self.val_acc, on_epoch=True, prog_bar=True)

        def test_step(self, batch, batch_idx):
            _, preds, y = self.step(batch)
            self.test_acc(preds, y)
            self.log("test/acc", self.test_acc, on_epoch=True)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    L.seed_everything(seed, workers=True)
    cfg = _compose(f"model={model_name}", f"norm={norm}", f"seed={seed}")
    module = Module(build_model(cfg, (1, 28, 28), 10))
    with tempfile.TemporaryDirectory() as out:
        trainer = L.Trainer(max_epochs=epochs, accelerator="gpu" if device_name.startswith("cuda") else "cpu",
                            devices=1, default_root_dir=out, logger=False, enable_progress_bar=False,
                            callbacks=[ModelCheckpoint(dirpath=out, monitor="val/acc", mode="max")])
        data = FashionDataModule()
        trainer.fit(module, datamodule=data)
        trainer.test(module, datamodule=data, ckpt_path="best", verbose=False)


def has_lightning() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(name) is not None for name in ("lightning", "torchmetrics"))


def _compose(*overrides: str):
    from bnbench.config import compose_config

    return compose_config("dataset=fashion_mnist", SAME_DATA, *overrides)


def hand_process(data_root: str, model_name: str, norm: str, seed: int, epochs: int, device: str,
                 how: str = "--hand-run") -> float:
    """Wall seconds of one reference run (``--hand-run`` the hand loop, ``--lightning-run``
    Lightning) in a fresh process, as `python main.py` would be."""
    cmd = [sys.executable, __file__, how, json.dumps([data_root, model_name, norm, seed, epochs, device])]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"reference run ({how}) failed:\n{proc.stderr[-3000:]}")
    return wall


# --------------------------------------------------------------------------- bnbench

def median_of(repeats: int, measure) -> float:
    """The median of ``repeats`` calls of ``measure()`` (seconds each)."""
    times = sorted(measure() for _ in range(max(1, repeats)))
    return times[len(times) // 2]


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
    ours = bnbench_process(["run", "dataset=fashion_mnist", SAME_DATA, "norm=bn_before", "seed=0", f"trainer.epochs={opts.epochs}",
                            f"trainer.device={opts.device}", f"results_dir={tmp}", "hydra.run.dir=" + str(tmp / "run")],
                           tmp)
    assert _statuses(tmp / "run") == ["completed"]
    return {"variant": "default", "runs": 1, "samples": opts.n_train * opts.epochs, "hand_s": hand,
            "hand_measured_runs": 1, "bnbench_s": ours, "bnbench_cmd": f"bnbench run dataset=fashion_mnist {SAME_DATA} norm=bn_before trainer.epochs={opts.epochs}"}


def case_mlp_sweep(opts, tmp: Path) -> list[dict]:
    seeds = SEEDS[: opts.hand_seeds]
    measured = [median_of(opts.repeats, lambda: hand_process(opts.data, "mlp", norm, seed, opts.epochs, opts.device))
                for norm in NORMS for seed in seeds]
    hand = sum(measured) * len(SEEDS) / len(seeds)  # the runs differ only by seed
    lightning = None
    if has_lightning() and not opts.no_lightning:
        lightning = sum(hand_process(opts.data, "mlp", norm, seed, opts.epochs, opts.device, "--lightning-run")
                        for norm in NORMS for seed in seeds) * len(SEEDS) / len(seeds)
    else:
        print("lightning reference skipped: pip install -e '.[bench]'", flush=True)
    sweep_args = ["-m", "dataset=fashion_mnist", SAME_DATA, f"norm={','.join(NORMS)}", f"seed={','.join(map(str, SEEDS))}",
                  f"trainer.epochs={opts.epochs}"]
    times = []
    for attempt in range(max(1, opts.repeats)):  # each into a fresh sweep folder: nothing to skip
        started = time.time()
        times.append(bnbench_process(["run", *sweep_args, f"trainer.device={opts.device}", f"results_dir={tmp}",
                                      f"sweep.name=default{attempt}", "--quiet"], tmp))
        ended = time.time()
    ours = sorted(times)[len(times) // 2]
    (tmp / f"default{len(times) - 1}").rename(tmp / "default")  # the last attempt's records, for the phases
    statuses = _statuses(tmp / "default")
    assert statuses == ["completed"] * 15, statuses
    floor = compute_floor(opts)
    phases = where_time_went(tmp / "default", started, ended)
    print(f"{'':<14} compute floor {floor['floor_s']:.1f} s = {floor['train_tflop']:.2f} TFLOP at "
          f"{floor['gflops']:.0f} GFLOP/s (the sweep's stacked products, {floor['threads']} threads; fc1 alone "
          f"{floor['fc1_gflops']:.0f}) + {floor['start_s']:.1f} s to start Python and import torch; "
          f"bnbench {ours / floor['floor_s']:.2f}x the floor", flush=True)
    jobs = len({json.loads(p.read_text()).get("job") for p in (tmp / "default").glob("*/summary.json")})
    print(f"{'':<14} bnbench's {ours:.1f} s ({jobs} jobs): " + ", ".join(f"{k} {v:.1f} s" for k, v in phases.items()),
          flush=True)
    return [{"variant": "default", "runs": 15, "samples": 15 * opts.n_train * opts.epochs, "hand_s": hand,
             "hand_measured_runs": len(measured), "bnbench_s": ours, "bnbench_cmd": "bnbench run " + " ".join(sweep_args),
             "lightning_s": lightning, **floor, "x_floor": round(ours / floor["floor_s"], 2),
             **{f"phase_{k.replace(' ', '_')}_s": round(v, 2) for k, v in phases.items()}}]


MLP_LAYERS = [(784, 100), (100, 100), (100, 100), (100, 10)]


def compute_floor(opts, stack: int = 5) -> dict:
    """This machine's floor for the 15-run sweep: the FLOPs of its training steps (forward, and
    backward for the inputs of every layer but the first and for every weight: 3x forward but
    the first layer's input gradient) over the measured rate of those stacked matrix products
    (stacks of ``stack`` seeds, as the sweep trains, all cores), plus the time to start Python
    and import torch. Evaluations are left out: a floor."""
    import torch

    threads = len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    device = torch.device(opts.device)  # the products run where the sweep trains

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    batch = 60
    products = []  # (a, b) operand shapes of one stacked step's products
    for i, (fan_in, fan_out) in enumerate(MLP_LAYERS):
        products.append(((stack, batch, fan_in), (stack, fan_in, fan_out)))  # forward
        products.append(((stack, fan_in, batch), (stack, batch, fan_out)))  # weight gradient
        if i > 0:
            products.append(((stack, batch, fan_out), (stack, fan_out, fan_in)))  # input gradient

    def rate(shapes, reps=300) -> float:
        tensors = [(torch.randn(a, device=device), torch.randn(b, device=device)) for a, b in shapes]
        flops = sum(2 * a[0] * a[1] * a[2] * b[2] for a, b in shapes)
        for x, w in tensors:  # warm-up
            torch.bmm(x, w)
        sync()
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            for _ in range(reps):
                for x, w in tensors:
                    torch.bmm(x, w)
            sync()
            best = min(best, time.perf_counter() - t0)
        return flops * reps / best

    step_flops = sum(2 * a[0] * a[1] * a[2] * b[2] for a, b in products) / stack  # per copy and step
    steps = opts.n_train // batch * opts.epochs
    train_flops = 15 * steps * step_flops
    gflops = rate(products) / 1e9
    fc1 = rate(products[:2]) / 1e9
    starts = []
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch"], check=True)
        starts.append(time.perf_counter() - t0)
    start_s = sorted(starts)[1]
    return {"train_tflop": round(train_flops / 1e12, 3), "gflops": round(gflops, 1), "fc1_gflops": round(fc1, 1),
            "threads": threads, "start_s": round(start_s, 2),
            "floor_s": round(train_flops / (gflops * 1e9) + start_s, 2)}


def where_time_went(sweep: Path, started: float, ended: float) -> dict[str, float]:
    """bnbench's time, phase by phase, from the run records of a sweep whose jobs ran one after
    another (the default launcher): start-up until the first job, each job's set-up (Hydra's
    job, data, models), its first step (one-time costs), its training (steps and evaluations),
    the gaps between jobs, and the report after the last."""
    from datetime import datetime

    jobs: dict[str, list[dict]] = {}
    for path in sweep.glob("*/summary.json"):
        summary = json.loads(path.read_text())
        jobs.setdefault(summary.get("job") or path.parent.name, []).append(summary)
    spans = []
    for runs in jobs.values():
        begin = min(datetime.fromisoformat(r["started_at"]).timestamp() for r in runs)
        end = max(datetime.fromisoformat(r["finished_at"]).timestamp() for r in runs)
        train = max(r["train_s"] for r in runs)
        first = max(r.get("first_step_s") or 0.0 for r in runs)
        spans.append((begin, end, train, first))
    spans.sort()
    gaps = sum(max(0.0, b[0] - a[1]) for a, b in zip(spans, spans[1:]))
    return {"start-up": spans[0][0] - started,
            "job set-up": sum(end - begin - train for begin, end, train, _ in spans),
            "first steps": sum(first for *_, first in spans),
            "training": sum(train - first for _, _, train, first in spans),
            "between jobs": gaps, "report": ended - spans[-1][1]}


def case_alexnet_epoch(opts, tmp: Path) -> dict:
    hand = hand_process(opts.data, "alexnet", "bn_before", 0, 1, opts.device)
    ours = bnbench_process(["run", "dataset=fashion_mnist", SAME_DATA, "model=alexnet", "norm=bn_before", "trainer.epochs=1",
                            f"trainer.device={opts.device}", f"results_dir={tmp}", "hydra.run.dir=" + str(tmp / "cnn")],
                           tmp)
    assert _statuses(tmp / "cnn") == ["completed"]
    return {"variant": "default", "runs": 1, "samples": opts.n_train, "hand_s": hand, "hand_measured_runs": 1,
            "bnbench_s": ours,
            "bnbench_cmd": f"bnbench run dataset=fashion_mnist {SAME_DATA} model=alexnet norm=bn_before trainer.epochs=1"}


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
    parser.add_argument("--repeats", type=int, default=1,
                        help="mlp_sweep: measure each side this many times and report the median")
    parser.add_argument("--no-lightning", action="store_true", help="mlp_sweep: leave out the Lightning reference")
    parser.add_argument("--warmup", action="store_true",
                        help="first one short bnbench run, not measured (CUDA's driver, kernel and file caches)")
    parser.add_argument("--out", default="results/bench", help="folder for the CSV")
    parser.add_argument("--hand-run", help=argparse.SUPPRESS)  # internal: one hand-written run in this process
    parser.add_argument("--lightning-run", help=argparse.SUPPRESS)  # internal: one Lightning run in this process
    opts = parser.parse_args()
    if opts.hand_run:
        hand_written_run(*json.loads(opts.hand_run))
        return
    if opts.lightning_run:
        lightning_run(*json.loads(opts.lightning_run))
        return

    cases = opts.cases.split(",")
    unknown = [name for name in cases if name not in CASES]
    if unknown:
        sys.exit(f"bench.py: unknown case {unknown[0]!r}; choose from {', '.join(CASES)}")

    import torch

    from bnbench.errors import ConfigError
    from bnbench.job.data import DataError, load_dataset
    from bnbench.job.devices import resolve_device

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
    if opts.warmup:  # not measured: CUDA's driver and kernel caches, the OS's file cache
        with tempfile.TemporaryDirectory(prefix="bench-warmup-") as tmp:
            bnbench_process(["run", "dataset=fashion_mnist", SAME_DATA, "trainer.steps=20",
                             f"trainer.device={opts.device}", f"results_dir={tmp}", f"hydra.run.dir={tmp}/run"],
                            Path(tmp))
    for name in cases:
        with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
            load = os.getloadavg()[0]
            results = CASES[name](opts, Path(tmp))
        for res in results if isinstance(results, list) else [results]:
            ratio = res["hand_s"] / res["bnbench_s"]
            scaled = "" if res["hand_measured_runs"] == res["runs"] else \
                f" (measured {res['hand_measured_runs']} of {res['runs']} runs, scaled)"
            print(f"{name:<14} hand-written {res['hand_s']:7.1f} s  {res['samples'] / res['hand_s']:8.0f} samples/s{scaled}",
                  flush=True)
            if res.get("lightning_s"):
                print(f"{'':<14} Lightning    {res['lightning_s']:7.1f} s  "
                      f"{res['samples'] / res['lightning_s']:8.0f} samples/s{scaled}", flush=True)
            print(f"{'':<14} bnbench      {res['bnbench_s']:7.1f} s  {res['samples'] / res['bnbench_s']:8.0f} samples/s   "
                  f"{ratio:5.1f}x the hand loop" + (f", {res['lightning_s'] / res['bnbench_s']:.1f}x Lightning"
                                                     if res.get("lightning_s") else "") +
                  f"  {res['variant']}  [{res['bnbench_cmd']}]", flush=True)
            rows.append({"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "case": name, **res,
                         "ratio": round(ratio, 2), "hand_samples_per_s": round(res["samples"] / res["hand_s"]),
                         "bnbench_samples_per_s": round(res["samples"] / res["bnbench_s"]), "epochs": opts.epochs,
                         "device": opts.device, "load_before": round(load, 2), **info})
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"bench-{datetime.now().strftime('%Y-%m-%d_%H-%M-%S')}.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(key for row in rows for key in row)))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
