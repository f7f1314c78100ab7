"""Sweep tables, rebuilt from the run records on disk.

``results.csv`` has one row per run folder (finished or not); ``report.md`` has one row per
cell (a config without its seed) with mean +- std over seeds and status counts. A run that
failed, diverged or never finished is counted in its cell, never dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml
from rich.console import Console
from rich.table import Table

from bnbench import records

STATUSES = ("completed", "diverged", "failed", "incomplete")
# Known factors first, in the order a reader scans a placement ablation; others follow.
_FACTOR_ORDER = ("model", "norm", "activation", "optimizer", "dataset", "trainer")

RUN_COLUMNS = [
    "run", "status", "seed", "final_test_acc", "best_test_acc", "final_train_loss", "final_test_loss",
    "final_train_acc", "steps", "epochs", "wall_s", "n_params", "device", "run_id", "error",
]


class ReportError(RuntimeError):
    pass


@dataclass
class SweepTables:
    sweep_dir: Path
    runs: pd.DataFrame
    cells: pd.DataFrame
    factors: list[str]
    constants: dict[str, str]
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def failed_runs(self) -> pd.DataFrame:
        return self.runs[self.runs["status"] == "failed"]


def _run_dirs(sweep_dir: Path) -> list[Path]:
    found = {p.parent for p in sweep_dir.rglob(records.SUMMARY)}
    found |= {p.parent.parent for p in sweep_dir.rglob(".hydra/overrides.yaml")}
    return sorted(found)


def _row(run_dir: Path, sweep_dir: Path) -> dict:
    summary = records.read_summary(run_dir)
    row: dict = {"run": str(run_dir.relative_to(sweep_dir)) or "."}
    if summary is None:  # started but never wrote its record: killed, or still running
        overrides_file = run_dir / ".hydra" / "overrides.yaml"
        overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else []
        params = records.parse_overrides(overrides or [])
        row.update(status="incomplete", seed=int(params.get("seed", 0)) if "seed" in params else None)
    else:
        params = summary.get("params", {})
        final, best = summary.get("final") or {}, summary.get("best") or {}
        row.update(
            status=summary.get("status", "incomplete"),
            seed=summary.get("seed"),
            final_test_acc=final.get("test_acc"),
            best_test_acc=best.get("test_acc"),
            final_train_loss=final.get("train_loss"),
            final_test_loss=final.get("test_loss"),
            final_train_acc=final.get("train_acc"),
            steps=summary.get("steps"),
            epochs=summary.get("epochs"),
            wall_s=summary.get("wall_s"),
            n_params=summary.get("n_params"),
            device=summary.get("device"),
            run_id=summary.get("run_id"),
            error=summary.get("error"),
        )
        if row["status"] not in STATUSES:  # running, interrupted, or died between start and finish
            row["status"] = "incomplete"
    row["params"] = {k: v for k, v in params.items() if k != "seed"}
    return row


def _factor_sort_key(name: str) -> tuple[int, str]:
    return (_FACTOR_ORDER.index(name), name) if name in _FACTOR_ORDER else (len(_FACTOR_ORDER), name)


def _value_order(sweep_dir: Path) -> dict[str, list[str]]:
    """The order in which the sweep listed each key's values (from Hydra's multirun.yaml)."""
    path = sweep_dir / "multirun.yaml"
    if not path.is_file():
        return {}
    try:
        saved = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        return {}
    hydra_cfg = saved.get("hydra", {}) or {}
    items = [f"{k}={v}" for k, v in ((hydra_cfg.get("sweeper") or {}).get("params") or {}).items()]
    items += list((hydra_cfg.get("overrides") or {}).get("task") or [])
    order: dict[str, list[str]] = {}
    for key, value in records.parse_overrides(items).items():
        order[key] = [v.strip() for v in str(value).split(",")]
    return order


def collect_runs(sweep_dir: Path) -> tuple[pd.DataFrame, list[str], dict[str, str]]:
    """One row per run folder under ``sweep_dir``, with one column per swept config key."""
    if not sweep_dir.is_dir():
        raise ReportError(f"{sweep_dir} is not a folder; give the sweep folder that `bnbench run -m` printed")
    rows = [_row(d, sweep_dir) for d in _run_dirs(sweep_dir)]
    if not rows:
        raise ReportError(f"no runs found under {sweep_dir} (no summary.json or .hydra/overrides.yaml)")
    keys = sorted({k for r in rows for k in r["params"]}, key=_factor_sort_key)
    for r in rows:
        params = r.pop("params")
        for k in keys:
            r[k] = params.get(k, "(default)")
    runs = pd.DataFrame(rows)
    for col in RUN_COLUMNS:
        if col not in runs:
            runs[col] = None
    factors = [k for k in keys if runs[k].nunique(dropna=False) > 1]
    constants = {k: str(runs[k].iloc[0]) for k in keys if k not in factors}
    order = _value_order(sweep_dir)
    for k in factors:
        seen = list(dict.fromkeys([*order.get(k, []), *sorted(runs[k].astype(str).unique())]))
        runs[k] = pd.Categorical(runs[k].astype(str), categories=[v for v in seen if v in set(runs[k].astype(str))],
                                 ordered=True)
    runs = runs.sort_values([*factors, "seed"], kind="stable").reset_index(drop=True)
    return runs[[*RUN_COLUMNS[:3], *keys, *RUN_COLUMNS[3:]]], factors, constants


def cell_table(runs: pd.DataFrame, factors: list[str]) -> pd.DataFrame:
    """Per cell: run and status counts, and mean/std over completed seeds."""

    def summarize(group: pd.DataFrame) -> pd.Series:
        done = group[group["status"] == "completed"]
        acc = pd.to_numeric(done["final_test_acc"], errors="coerce")
        best = pd.to_numeric(done["best_test_acc"], errors="coerce")
        out = {
            "runs": len(group),
            **{status: int((group["status"] == status).sum()) for status in STATUSES},
            "test_acc_mean": acc.mean(),
            "test_acc_std": acc.std(ddof=1) if len(acc) > 1 else float("nan"),
            "best_test_acc_mean": best.mean(),
            "train_loss_mean": pd.to_numeric(done["final_train_loss"], errors="coerce").mean(),
            "wall_s_mean": pd.to_numeric(group["wall_s"], errors="coerce").mean(),
        }
        return pd.Series(out)

    if not factors:
        return summarize(runs).to_frame().T.reset_index(drop=True)
    cells = runs.groupby(factors, observed=True, sort=True).apply(summarize, include_groups=False)
    return cells.reset_index()


def build(sweep_dir: Path) -> SweepTables:
    runs, factors, constants = collect_runs(sweep_dir)
    cells = cell_table(runs, factors)
    counts = {status: int((runs["status"] == status).sum()) for status in STATUSES}
    return SweepTables(sweep_dir, runs, cells, factors, constants, counts)


def _pct(mean: float, std: float | None = None) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "—"
    text = f"{100 * mean:.2f}"
    if std is not None and not math.isnan(std):
        text += f" ± {100 * std:.2f}"
    return text


def _status_text(cell: pd.Series) -> str:
    text = f"{int(cell['completed'])}/{int(cell['runs'])}"
    extra = [f"{int(cell[s])} {s}" for s in STATUSES[1:] if cell[s]]
    return text + (f" ({', '.join(extra)})" if extra else "")


def display_rows(tables: SweepTables) -> tuple[list[str], list[list[str]]]:
    header = [*tables.factors, "seeds ok", "test acc % (final)", "best test acc %", "train loss", "s/run"]
    rows = []
    for _, cell in tables.cells.iterrows():
        rows.append([
            *[str(cell[f]) for f in tables.factors],
            _status_text(cell),
            _pct(cell["test_acc_mean"], cell["test_acc_std"]),
            _pct(cell["best_test_acc_mean"]),
            "—" if pd.isna(cell["train_loss_mean"]) else f"{cell['train_loss_mean']:.4f}",
            "—" if pd.isna(cell["wall_s_mean"]) else f"{cell['wall_s_mean']:.1f}",
        ])
    return header, rows


def _summary_line(tables: SweepTables) -> str:
    counts = ", ".join(f"{n} {s}" for s, n in tables.counts.items())
    return f"{len(tables.runs)} runs: {counts}"


def to_markdown(tables: SweepTables) -> str:
    header, rows = display_rows(tables)
    lines = [f"# bnbench report: {tables.sweep_dir.name}", "", _summary_line(tables) + ".", ""]
    if tables.constants:
        lines += ["Fixed: " + ", ".join(f"`{k}={v}`" for k, v in tables.constants.items()), ""]
    lines += ["Test accuracy: mean ± std over the completed seeds of each cell (sample std, n−1).", ""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    failed = tables.runs[tables.runs["status"].isin(["failed", "incomplete"])]
    if len(failed):
        lines += ["", "## Runs without a result", ""]
        for _, run in failed.iterrows():
            reason = run["error"] if isinstance(run["error"], str) else "no summary.json (killed or still running)"
            lines.append(f"- `{run['run']}`: {run['status']}: {reason}")
    return "\n".join(lines) + "\n"


def write(tables: SweepTables) -> tuple[Path, Path]:
    csv_path = tables.sweep_dir / "results.csv"
    md_path = tables.sweep_dir / "report.md"
    records.write_text(csv_path, tables.runs.to_csv(index=False))
    records.write_text(md_path, to_markdown(tables))
    return csv_path, md_path


def print_tables(tables: SweepTables, console: Console | None = None) -> None:
    console = console or Console()
    header, rows = display_rows(tables)
    title = f"{tables.sweep_dir}  ({_summary_line(tables)})"
    table = Table(title=title, title_justify="left", show_lines=False)
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i < len(tables.factors) else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    if tables.constants:
        console.print("fixed: " + " ".join(f"{k}={v}" for k, v in tables.constants.items()), style="dim")
    for _, run in tables.failed_runs.iterrows():
        console.print(f"[red]failed[/red] {run['run']}: {run['error']}", markup=True, highlight=False)
