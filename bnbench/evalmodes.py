"""Train vs eval mode of batch norm, after training: ``bnbench evalmodes DIR``.

BN normalizes a training batch with that batch's statistics, and a test sample with running
averages of them gathered during training (PyTorch: running = (1 - m) running + m batch, m =
norm.momentum). When the weights move faster than the averages follow (a momentum too small,
in PyTorch's convention, for the run's length; Keras' 0.99 and 0.999 are PyTorch's 0.01 and
0.001), the running averages lag and eval mode is worse than the network is. This module
re-evaluates the final weights each run kept (``trainer.save_final=true``: final.pt) on the
test set in three ways:

    running    eval mode, BN with its running averages: what every bnbench metric reports
    batch B    BN with the statistics of each test batch of B samples (BN in train mode;
               dropout and noisy BN off); the last test samples that do not fill a batch of
               B are left out, so every batch has B samples
    precise    "precise BN" (Wu & Johnson 2021, "Rethinking 'Batch' in BatchNorm"):
               the running averages recomputed from the final weights, one pass over the
               training set in the run's batch size with each batch's statistics weighted
               equally (torch.optim.swa_utils.update_bn: momentum None, a cumulative average),
               then eval mode

Norms without batch statistics (none, layer and group norm) give the same value in every mode.
A diverged run is evaluated like the others (a sample with a non-finite output counts as
wrong), never left out. The sweep gets ``eval_modes.csv`` (one row per run and mode) and
``eval_modes.md`` (per cell and mode: mean over seeds, and the difference from running paired
by seed, on the same test samples, with its 95% t-interval).
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from bnbench import records
from bnbench.analysis import stats
from bnbench.job.data import load_dataset
from bnbench.job.models import build_model
from bnbench.records.runs import ReportError, collect_runs
from bnbench.job.tasks import TASKS

log = logging.getLogger("bnbench")
DEFAULT_BATCH_SIZES = (2, 8, 32, 128)
COLUMNS = ["run", "seed", "status", "mode", "batch_size", "test_loss", "test_acc", "samples", "running_test_loss",
           "running_test_acc"]


@dataclass
class Scores:
    loss: float
    acc: float | None
    samples: int


@torch.no_grad()
def _score(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, task, full_only: bool) -> Scores:
    # sums stay on the device (in float64, as the host would add them) and are read once
    loss_sum = torch.zeros((), dtype=torch.float64, device=x.device)
    correct = torch.zeros((), dtype=torch.long, device=x.device)
    n = len(y) - len(y) % batch_size if full_only else len(y)
    for start in range(0, n, batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        out = model(xb)
        loss_sum += task.loss(out, yb, reduction="sum").double()
        if task.hits is not None:
            correct += task.hits(out, yb).sum()
    return Scores(float(loss_sum) / n, int(correct) / n if task.hits is not None else None, n)


def _with_batch_statistics(model: nn.Module) -> nn.Module:
    """A copy whose BN layers normalize with each batch's own statistics; the rest (dropout,
    noisy BN) in eval mode."""
    twin = copy.deepcopy(model).eval()
    for module in twin.modules():
        if isinstance(module, _BatchNorm):
            module.train()
    return twin


def _precise(model: nn.Module, train_x: torch.Tensor, batch_size: int) -> nn.Module:
    """A copy with its BN running averages recomputed over the training set (one pass in
    batches of ``batch_size`` in a fixed order, the last partial batch left out, in train mode
    as training saw them)."""
    twin = copy.deepcopy(model)
    order = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(0)).to(train_x.device)
    stop = len(order) - len(order) % batch_size
    batches = (train_x[order[i:i + batch_size]] for i in range(0, stop, batch_size))
    torch.optim.swa_utils.update_bn(batches, twin, device=train_x.device)
    return twin.eval()


def evaluate_run(model: nn.Module, data, train_batch_size: int, batch_sizes, eval_batch_size: int) -> list[dict]:
    """One run's rows: running, batch B for each B, precise. Each row also holds the running
    averages' score on the same samples (``running_*``), which its difference is taken from."""
    task = TASKS[data.task]
    x, y = data.test_x, data.test_y
    model.eval()
    running = _score(model, x, y, eval_batch_size, task, full_only=False)
    rows = [("running", None, running, running)]
    with_batch = _with_batch_statistics(model)
    for b in (b for b in batch_sizes if b <= len(y)):
        n = len(y) - len(y) % b  # full batches only: the same samples for both scores
        rows.append(("batch", b, _score(with_batch, x[:n], y[:n], b, task, full_only=True),
                     running if n == len(y) else _score(model, x[:n], y[:n], eval_batch_size, task, full_only=False)))
    rows.append(("precise", None, _score(_precise(model, data.train_x, train_batch_size), x, y, eval_batch_size,
                                         task, full_only=False), running))
    return [{"mode": mode, "batch_size": b, "test_loss": s.loss, "test_acc": s.acc, "samples": s.samples,
             "running_test_loss": r.loss, "running_test_acc": r.acc} for mode, b, s, r in rows]


def _load_final(run_dir: Path, run_id: str | None) -> dict | None:
    path = run_dir / records.FINAL_WEIGHTS
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torn, or not a bnbench final.pt: like a missing one, and said
        log.warning("%s: final.pt cannot be read (%s); left out", run_dir.name, type(err).__name__)
        return None
    if not isinstance(state, dict) or "model" not in state:
        log.warning("%s: final.pt holds no model state; left out", run_dir.name)
        return None
    if state.get("run_id") != run_id:
        log.warning("%s: final.pt belongs to another run (id %s, the record says %s); left out", run_dir.name,
                    state.get("run_id"), run_id)
        return None
    return state


def evaluate_sweep(sweep_dir: Path, batch_sizes=DEFAULT_BATCH_SIZES, device: torch.device | None = None
                   ) -> tuple[pd.DataFrame, list[str], int]:
    """Every run of the sweep that kept its final weights, in every mode: (rows, factors,
    runs without final.pt). ReportError when no run kept them."""
    device = device or torch.device("cpu")
    runs, factors, _ = collect_runs(Path(sweep_dir))
    cache: dict[str, object] = {}  # one load per dataset config
    out, missing = [], 0
    for _, run in runs.iterrows():
        run_dir = Path(sweep_dir) / str(run["run"])
        summary, _problem = records.load_summary(run_dir)
        state = _load_final(run_dir, (summary or {}).get("run_id")) if summary else None
        if state is None or not (run_dir / ".hydra" / "config.yaml").is_file():
            missing += 1
            continue
        cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
        key = OmegaConf.to_yaml(cfg.dataset)
        if key not in cache:
            cache[key] = load_dataset(cfg, device)
        data = cache[key]
        model = build_model(cfg, data.in_shape, data.num_outputs).to(device)
        model.load_state_dict(state["model"])
        for row in evaluate_run(model, data, int(cfg.trainer.batch_size), batch_sizes,
                                int(cfg.trainer.eval_batch_size)):
            out.append({"run": run["run"], "seed": int(run["seed"]), "status": summary.get("status"),
                        **{f: run[f] for f in factors}, **row})
    if not out:
        raise ReportError(f"no run under {sweep_dir} kept its final weights ({records.FINAL_WEIGHTS}): rerun the "
                          "sweep with trainer.save_final=true")
    frame = pd.DataFrame(out, columns=["run", "seed", "status", *factors, *COLUMNS[3:]])
    for f in factors:  # the sweep's own order of values
        frame[f] = pd.Categorical(frame[f].astype(str), categories=list(runs[f].cat.categories), ordered=True)
    return frame, factors, missing


def _mode_label(mode: str, batch_size) -> str:
    return f"batch {int(batch_size)}" if mode == "batch" else mode


def markdown(frame: pd.DataFrame, factors: list[str], missing: int, sweep_name: str) -> list[str]:
    """eval_modes.md: per cell and mode, the mean test accuracy (the loss for regression) over
    seeds and its difference from running, paired by seed, with a 95% t-interval."""
    metric = "test_acc" if frame["test_acc"].notna().any() else "test_loss"
    scale, unit = (100.0, "%") if metric == "test_acc" else (1.0, "")
    frame = frame.assign(label=[_mode_label(m, b) for m, b in zip(frame["mode"], frame["batch_size"])])
    labels = list(dict.fromkeys(frame["label"]))
    lines = [f"# BN in train and eval mode: {sweep_name}", "",
             f"Final weights of each run (final.pt) on the test set, {metric.replace('_', ' ')} ({unit or 'loss'}): "
             "**running** = eval mode with BN's running averages (what the report's metrics are); **batch B** = BN "
             "normalizing each test batch of B with its own statistics; **precise** = running averages recomputed "
             "over the training set from the final weights (Wu & Johnson 2021). Δ = mode − running on the same test "
             "samples (batch B: the full batches), paired by seed, with its 95% t-interval. Diverged runs are included (a non-finite output counts as wrong).", ""]
    if missing:
        lines += [f"{missing} run(s) without final weights (trainer.save_final was off, or they failed) are not "
                  "here.", ""]
    header = [" / ".join(factors) or "cell", "runs", "diverged", *labels]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key, cell in stats.split_cells(frame, factors).items():
        cells = []
        for label in labels:
            rows = cell[cell["label"] == label]
            mean = rows[metric].mean() * scale
            if label == "running":
                cells.append(f"{mean:.2f}")
                continue
            diff = (rows[metric] - rows[f"running_{metric}"]).dropna() * scale  # on the same samples, per seed
            same = rows[f"running_{metric}"].mean() * scale
            # batch B scores only the full batches: beside its mean, running's on those very samples, so
            # the two means shown can be compared (the running column is over the whole test set)
            cells.append(f"{mean:.2f} (Δ {_interval(diff)})" if label == "precise" or not math.isfinite(same)
                         else f"{mean:.2f} vs running {same:.2f} on its samples (Δ {_interval(diff)})")
        diverged = int((cell.drop_duplicates("seed")["status"] == "diverged").sum())
        lines.append("| " + " | ".join([" / ".join(map(str, key)) or "all runs", str(cell["seed"].nunique()),
                                        str(diverged), *cells]) + " |")
    return lines + [""]


def _interval(diff: pd.Series) -> str:
    """'mean, low to high' (the 95% t-interval of bnbench.analysis.stats), or the mean alone without one."""
    if len(diff) == 0:
        return "—"
    out = stats.mean_interval(diff.to_numpy(), 0.95)
    if not math.isfinite(out["ci_low"]):
        return f"{out['mean']:+.2f}"
    return f"{out['mean']:+.2f}, {out['ci_low']:+.2f} to {out['ci_high']:+.2f}"


def write(sweep_dir: Path, frame: pd.DataFrame, factors: list[str], missing: int) -> list[Path]:
    sweep_dir = Path(sweep_dir)
    csv_path, md_path = sweep_dir / records.EVAL_MODES, sweep_dir / "eval_modes.md"
    frame.to_csv(csv_path, index=False)
    md_path.write_text("\n".join(markdown(frame, factors, missing, sweep_dir.name)))
    return [csv_path, md_path]
