"""bench/gpu_suite.py --smoke: the GPU suite runs end to end on the CPU and reports every row."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROWS = [
    "mamoe_layer/ours", "mamoe_layer/hf_eager", "mamoe_layer/hf_grouped_mm", "mamoe_layer/floor",
    "train_step/small/eager", "train_step/small/compiled",
    "train_step/dsv2lite-2layer/eager", "train_step/dsv2lite-2layer/compiled",
    "fsdp2_1gpu/small",
]


def test_gpu_suite_smoke_writes_every_row_to_json_and_markdown(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_suite.py"), "--smoke", "--out", str(tmp_path)],
                   check=True, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    result = json.loads((tmp_path / "gpu_suite.json").read_text())
    rows = {row["row"]: row for row in result["rows"]}
    assert list(rows) == ROWS
    assert result["smoke"] and result["device_name"] == "cpu"
    for name in ROWS:
        assert rows[name]["ms"] > 0, name
    for name in ROWS[4:]:
        row = rows[name]
        assert row["tokens_per_s"] > 0 and row["tflops_per_s"] >= 0, row
        assert row["mfu"] is None and row["peak_mem_gib"] is None  # CPU: no peak to divide by, no CUDA memory
    assert rows["mamoe_layer/floor"]["vs_floor"] == 1.0
    table = (tmp_path / "gpu_suite.md").read_text()
    for name in ROWS:
        assert f"| {name} |" in table, name
