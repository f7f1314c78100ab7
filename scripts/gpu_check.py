#!/usr/bin/env python
"""The device check's steps (run through scripts/gpu_check.sh; docs/gpu.md says how).

Each step runs bnbench's CLI as a user would, checks what it must, and records its time and
figures; a failed step is reported and the next one runs. Steps, on ``--device`` (cuda):

  env          GPU, driver, torch, CUDA, cuDNN, the numerics defaults
  single       one run on the device (`bnbench run trainer.device=cuda`): completed, on cuda:0
  determinism  the AlexNet-style CNN twice with trainer.deterministic=true: equal metrics
  sweep        a stacked sweep: MLP and AlexNet-style x bn/gn/noisy BN x SGD/Adam x 3 seeds,
               dropout and diagnostics on: every run completed, seeds stacked per cell
  resume       an Adam sweep killed (SIGKILL) once a checkpoint exists, then rerun: it resumes,
               and its seconds per step before and after the resume
  parallel     the parallel launcher with 2 jobs on one GPU (trainer.jobs_per_gpu=2): both ran
               at once, on the same GPU, through this machine's GPU slots
  bench        scripts/bench.py mlp_sweep (the 15-run sweep): a warm-up run, the median of 3,
               the hand-written loop on the same GPU

It writes under ``--out``: summary.md (the table), summary.json, env.json, log.txt (every
command and its output), bench.csv and records.tar.gz (the steps' run records).
``--device cpu --quick`` is the dry run: the same steps, small, on CPU (CI runs it).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LOG: list[str] = []


def sh(args: list[str], cwd: Path, timeout: float = 600, check: bool = True, env: dict | None = None) -> str:
    """Run a command, log it and its output; raise with its tail when it fails."""
    started = time.perf_counter()
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    LOG.append(f"$ {' '.join(args)}  # exit {proc.returncode}, {time.perf_counter() - started:.1f} s\n"
               f"{proc.stdout}{proc.stderr}")
    if check and proc.returncode != 0:
        raise RuntimeError(f"exit {proc.returncode}: {(proc.stdout + proc.stderr).strip().splitlines()[-1:]}")
    return proc.stdout + proc.stderr


def bnbench(*args: str, cwd: Path, **kw) -> str:
    return sh([sys.executable, "-m", "bnbench.cli", *args], cwd=cwd, **kw)


def summaries(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.rglob("summary.json"))]


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


class Check:
    def __init__(self, opts):
        # the steps' folders outside --out: only the files listed above belong there
        self.opts, self.device = opts, opts.device
        self.work = Path(tempfile.mkdtemp(prefix="bnbench-gpu-check-"))
        # sizes: the real check (about 6 minutes on one H100, docs/gpu.md) or the CPU dry run
        self.train = "+dataset.train_size=300" if opts.quick else "+dataset.train_size=10000"
        self.test = ["+dataset.test_size=300"] if opts.quick else []
        self.epochs = 1
        self.common = ["dataset=fashion_mnist", f"dataset.root={opts.data}", "dataset.download=false",
                       f"trainer.device={opts.device}", f"results_dir={self.work / 'results'}", *self.test]

    # ------------------------------------------------------------------ steps

    def env(self) -> dict:
        import torch

        from bnbench.job import devices
        from bnbench.launch import resources

        info = {"python": platform.python_version(), "torch": str(torch.__version__),
                "cuda_build": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
                "host": platform.node(), "cores": resources.usable_cores(), "driver": resources.driver_version()}
        if torch.cuda.is_available():
            info.update(device=torch.cuda.get_device_name(0), gpus=torch.cuda.device_count(),
                        memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1),
                        cudnn=torch.backends.cudnn.version(), uuid=devices.gpu_uuid(0),
                        capability=".".join(map(str, torch.cuda.get_device_capability(0))),
                        tf32_defaults={"matmul": torch.backends.cuda.matmul.allow_tf32,
                                       "cudnn": torch.backends.cudnn.allow_tf32})
            try:
                info["nvidia_smi"] = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True,
                                                    timeout=30).stdout.strip()
            except (OSError, subprocess.SubprocessError):
                pass
        expect(self.device == "cpu" or torch.cuda.is_available(), "torch sees no CUDA device")
        (self.opts.out / "env.json").write_text(json.dumps(info, indent=2) + "\n")
        return {"figures": {k: info.get(k) for k in ("device", "driver", "torch", "cuda_build", "cudnn")}}

    def single(self) -> dict:
        run = self.work / "single"
        bnbench("run", *self.common, "trainer.epochs=2", self.train, f"hydra.run.dir={run}", cwd=self.work)
        (summary,) = summaries(run)
        expect(summary["status"] == "completed", f"status {summary['status']}: {summary.get('error')}")
        want = "cuda:0" if self.device.startswith("cuda") else "cpu"
        expect(summary["environment"]["device"] == want, f"device {summary['environment']['device']}, not {want}")
        return {"figures": {"device": summary["device"], "test_acc": summary["final"]["test_acc"],
                            "train_s": summary["train_s"], "first_step_s": summary["first_step_s"]}}

    def determinism(self) -> dict:
        rows = []
        for attempt in (1, 2):
            run = self.work / f"deterministic{attempt}"
            bnbench("run", *self.common, "model=alexnet", "trainer.deterministic=true", f"trainer.epochs={self.epochs}",
                    self.train, f"hydra.run.dir={run}", cwd=self.work)
            (summary,) = summaries(run)
            expect(summary["status"] == "completed", f"status {summary['status']}: {summary.get('error')}")
            with open(run / "metrics.csv") as f:
                rows.append([{k: v for k, v in row.items() if k != "wall_s"} for row in csv.DictReader(f)])
        expect(rows[0] == rows[1], "two deterministic runs differ")
        return {"figures": {"equal_rows": len(rows[0]), "test_acc": rows[0][-1]["test_acc"]}}

    def sweep(self) -> dict:
        name = "stacked"
        started = time.perf_counter()
        bnbench("run", "-m", *self.common, "model=mlp,alexnet", "norm=bn_before,gn_before,noisy_bn_before",
                "optimizer=sgd,adam", "seed=0,1,2", "trainer.dropout=0.1", "diagnostics.enabled=true",
                f"trainer.epochs={self.epochs}", self.train, f"sweep.name={name}", "--quiet", cwd=self.work)
        wall = time.perf_counter() - started
        runs = summaries(self.work / "results" / name)
        expect(len(runs) == 36, f"{len(runs)} records, not 36")
        bad = [f"{r.get('params')}: {r['status']} {r.get('error') or ''}" for r in runs if r["status"] != "completed"]
        expect(not bad, f"{len(bad)} runs not completed: {bad[:2]}")
        stacks = sorted({r.get("job") for r in runs})
        expect(all(r["stack_size"] == 3 for r in runs), "seeds not stacked 3 per cell")
        return {"figures": {"runs": len(runs), "jobs": len(stacks), "wall_s": round(wall, 1)}}

    def resume(self) -> dict:
        name = "killed"
        epochs = 2 if self.opts.quick else 6
        args = [sys.executable, "-m", "bnbench.cli", "run", "-m", *self.common, "optimizer=adam", "optimizer.lr=0.001",
                "norm=bn_before,bn_after", "seed=0,1,2", f"trainer.epochs={epochs}", "trainer.checkpoint_every_s=0",
                f"trainer.eval_every={2 if self.opts.quick else 100}",
                f"sweep.name={name}", "--quiet"]
        if self.opts.quick:
            args.append(self.train)
        folder = self.work / "results" / name
        proc = subprocess.Popen(args, cwd=self.work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        deadline = time.monotonic() + 300
        while not list(folder.rglob("checkpoint.pt")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(0.2 if self.opts.quick else 2.0)  # a few evaluations on
        expect(proc.poll() is None, "the sweep ended before it could be killed (make it longer)")
        os.killpg(proc.pid, signal.SIGKILL)
        LOG.append(f"$ {' '.join(args)}  # killed with SIGKILL once a checkpoint existed\n{proc.communicate()[0]}")
        bnbench(*args[3:], cwd=self.work)
        runs = summaries(folder)
        expect(len(runs) == 6 and all(r["status"] == "completed" for r in runs), "not every run completed")
        resumed = [r for r in runs if r.get("resumed_from_step")]
        expect(resumed, "no run resumed from its checkpoint")
        before, after = [], []
        for run_dir in sorted({p.parent for p in folder.rglob("summary.json")}):
            summary = json.loads((run_dir / "summary.json").read_text())
            at = summary.get("resumed_from_step")
            if not at:
                continue
            with open(run_dir / "metrics.csv") as f:
                rows = [(int(r["step"]), float(r["wall_s"])) for r in csv.DictReader(f)]
            for (s0, w0), (s1, w1) in zip(rows, rows[1:]):
                if s1 <= at:
                    before.append((w1 - w0) / (s1 - s0))
                elif s0 > at:  # whole intervals after the resume (not the one that restarted)
                    after.append((w1 - w0) / (s1 - s0))
        mean = lambda xs: round(sum(xs) / len(xs) * 1000, 3) if xs else None  # noqa: E731
        return {"figures": {"resumed_runs": len(resumed), "ms_per_step_before": mean(before),
                            "ms_per_step_after": mean(after)}}

    def parallel(self) -> dict:
        name = "parallel"
        bnbench("run", "-m", *self.common, "hydra/launcher=parallel", "hydra.launcher.n_jobs=2", "trainer.jobs_per_gpu=2",
                "norm=bn_before,gn_before", "seed=0,1", f"trainer.epochs={self.epochs + 1}", self.train,
                f"sweep.name={name}", "--quiet", cwd=self.work)
        runs = summaries(self.work / "results" / name)
        expect(len(runs) == 4 and all(r["status"] == "completed" for r in runs), "not every run completed")
        pids = {r["pid"] for r in runs}
        spans = sorted((r["started_at"], r["finished_at"]) for r in runs)
        overlap = spans[0][1] > spans[-1][0]
        figures = {"workers": len(pids), "jobs_overlapped": overlap,
                   "devices": sorted({r["environment"]["device"] for r in runs})}
        if self.device.startswith("cuda"):
            expect(all(r["environment"]["gpu_slot"] for r in runs), "a job did not claim a GPU slot")
            expect(len({r["environment"]["uuid"] for r in runs}) == 1, "the jobs ran on different GPUs")
        expect(len(pids) == 2, f"{len(pids)} worker processes, not 2")
        return {"figures": figures}

    def bench(self) -> dict:
        out = self.work / "bench"
        epochs = 1 if self.opts.quick else 10
        args = [sys.executable, str(REPO / "scripts" / "bench.py"), "--cases", "mlp_sweep", "--epochs", str(epochs),
                "--data", str(self.opts.data), "--device", self.device, "--out", str(out), "--hand-seeds", "1",
                "--repeats", "1" if self.opts.quick else "3", "--warmup", "--no-lightning"]
        text = sh(args, cwd=self.work, timeout=540)
        (csv_path,) = out.glob("bench-*.csv")
        (self.opts.out / "bench.csv").write_text(csv_path.read_text())
        with open(csv_path) as f:
            row = next(csv.DictReader(f))
        return {"figures": {"bnbench_s": round(float(row["bnbench_s"]), 2), "hand_s": round(float(row["hand_s"]), 1),
                            "x_hand": row["ratio"], "floor_s": row.get("floor_s")},
                "note": [line for line in text.splitlines() if "bnbench" in line][-1:]}


STEPS = ("env", "single", "determinism", "sweep", "resume", "parallel", "bench")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (the check) or cpu (a dry run)")
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("BNBENCH_DATA", "data")),
                        help="root holding FashionMNIST/raw")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "gpu-check"))
    parser.add_argument("--quick", action="store_true", help="small sizes (the CPU dry run)")
    parser.add_argument("--steps", default=",".join(STEPS), help="comma-separated: " + ", ".join(STEPS))
    opts = parser.parse_args()
    opts.out, opts.data = opts.out.resolve(), opts.data.resolve()
    opts.out.mkdir(parents=True, exist_ok=True)
    check = Check(opts)
    results = []
    for step in opts.steps.split(","):
        started = time.perf_counter()
        try:
            outcome = {"ok": True, **getattr(check, step)()}
        except Exception as err:  # reported, and the next step runs
            outcome = {"ok": False, "error": f"{type(err).__name__}: {err}"}
        outcome.update(step=step, seconds=round(time.perf_counter() - started, 1))
        results.append(outcome)
        print(f"{step:<12} {'ok  ' if outcome['ok'] else 'FAIL'} {outcome['seconds']:6.1f} s  "
              f"{json.dumps(outcome.get('figures') or outcome.get('error'))}", flush=True)
        (opts.out / "log.txt").write_text("\n".join(LOG))
    lines = [f"# bnbench device check ({opts.device})", "", "| step | result | seconds | figures |", "|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['step']} | {'ok' if r['ok'] else 'FAILED'} | {r['seconds']} | "
                     f"{json.dumps(r.get('figures') if r['ok'] else r['error'])} |")
    (opts.out / "summary.md").write_text("\n".join(lines) + "\n")
    (opts.out / "summary.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    with tarfile.open(opts.out / "records.tar.gz", "w:gz") as tar:  # run records, without weights
        tar.add(check.work / "results", arcname="results",
                filter=lambda info: None if info.name.endswith((".pt", ".lock")) else info)
    print("\n".join(lines[2:]))
    sys.exit(0 if all(r["ok"] for r in results) else 1)


if __name__ == "__main__":
    main()
