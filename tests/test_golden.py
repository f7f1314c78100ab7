"""Golden records: an ordinary run's numbers do not change when the engine's code moves.

Each case trains one unstacked digits run on CPU with one thread and compares every value of
its metrics rows (all but the wall clock) with the rows committed in tests/golden/, exactly.
Float kernels may round differently on another CPU family (AVX2 vs AVX-512, Intel vs AMD), so
exact equality is asserted on the kind of CPU that wrote the file, and agreement to 1e-5
elsewhere (a changed computation moves the numbers far more than that).

Regenerate (only when a change of results is intended, with a version bump):
    BNBENCH_WRITE_GOLDEN=1 python -m pytest tests/test_golden.py
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

from conftest import make_cfg, train_until

GOLDEN = Path(__file__).parent / "golden"
CASES = {
    "mlp_bn_before": ("trainer.epochs=3",),
    "mlp_adam_cosine_bn_after": ("trainer.epochs=2", "norm=bn_after", "activation=tanh", "optimizer=adam",
                                 "optimizer.lr=0.003", "trainer.lr_schedule=cosine", "trainer.eval_every=10"),
    "alexnet_bn_before": ("model=alexnet", "model.channels=[4,8,8,8,4]", "model.fc_width=16", "trainer.steps=40",
                          "trainer.eval_every=20"),
}


def _cpu_kind() -> str:
    vendor = ""
    try:
        vendor = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                       if line.startswith("vendor_id")), "")
    except OSError:
        pass
    return f"{vendor} {torch.backends.cpu.get_cpu_capability()} torch {torch.__version__.split('+')[0]}"


def _rows(name: str) -> list[dict]:
    # the data as the files were written (before 0.5, no validation split): the engine is pinned
    cfg = make_cfg(*CASES[name], "dataset.val_size=0", "trainer.log_progress=false")
    _, result = train_until(cfg)
    return [{k: v for k, v in row.items() if k != "wall_s"} for row in result.history]


@pytest.mark.parametrize("name", sorted(CASES))
def test_an_ordinary_run_keeps_its_exact_numbers(name):
    path = GOLDEN / f"{name}.json"
    rows = _rows(name)
    if os.environ.get("BNBENCH_WRITE_GOLDEN"):
        path.write_text(json.dumps({"cpu": _cpu_kind(), "rows": rows}, indent=1) + "\n")
        pytest.skip(f"wrote {path}")
    golden = json.loads(path.read_text())
    assert [r["step"] for r in rows] == [r["step"] for r in golden["rows"]]
    exact = golden["cpu"] == _cpu_kind()
    for row, want in zip(rows, golden["rows"]):
        for key, value in want.items():
            got = row[key]
            if exact or value is None or not isinstance(value, float):
                assert got == value, f"step {row['step']} {key}: {got!r} != golden {value!r} ({golden['cpu']})"
            else:
                assert math.isclose(got, value, rel_tol=1e-5, abs_tol=1e-6), f"step {row['step']} {key}"
