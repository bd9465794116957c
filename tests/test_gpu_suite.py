"""bench/gpu_suite.py and bench/gpu_profile.py --smoke: both run end to end on the CPU and report every row."""

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
    "vs_transformers/tiny/ours", "vs_transformers/tiny/ours_compiled", "vs_transformers/tiny/hf_grouped_mm",
    "vs_transformers/tiny/hf_compiled",
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
    for name in ROWS[4:9]:
        row = rows[name]
        assert row["tokens_per_s"] > 0 and row["tflops_per_s"] >= 0, row
        assert row["mfu"] is None and row["peak_mem_gib"] is None  # CPU: no peak to divide by, no CUDA memory
    assert rows["mamoe_layer/floor"]["vs_floor"] == 1.0
    assert max(rows[name]["vs_best_hf"] for name in ROWS[9:]) >= 1.0  # the fastest transformers row is 1
    assert rows[ROWS[9]]["tokens_per_s"] > 0
    table = (tmp_path / "gpu_suite.md").read_text()
    for name in ROWS:
        assert f"| {name} |" in table, name


def test_mfu_flop_count_follows_the_stated_formula() -> None:
    """6 * P_active + 3 * L * H * (d_qk + d_v) * T, P_active counted by hand for a 2-layer `tiny` backbone."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from gpu_suite import flops_per_token
    finally:
        sys.path.remove(str(ROOT / "bench"))
    from lightning_most.backbone import MoSTBackbone
    from lightning_most.config import build_config

    model = MoSTBackbone(build_config("tiny", {"num_layers": 2}))  # d 128: a dense layer, then an MoE layer
    d, heads, T = 128, 4, 32
    attention = d * heads * 32 + d * (32 + 16) + 32 * heads * (16 + 16) + heads * 16 * d  # q, kv_a, kv_b, o
    dense = 3 * d * 256
    moe = 16 * d + 2 * 3 * d * 64 + 3 * d * 64  # router, top-2 of 16 routed experts, one shared expert
    heads_and_input = d * 267 + d * 500 + 0.5 * (160 * d + d * d)  # text and audio heads; projector on audio half
    p_active = 2 * attention + dense + moe + heads_and_input
    assert flops_per_token(model, T, audio_fraction=0.5) == 6 * p_active + 3 * 2 * heads * (32 + 16) * T


def test_a_failing_row_is_reported_and_the_suite_goes_on(tmp_path: Path, monkeypatch) -> None:
    """A compile that fails on the lent GPU must not cost the other rows: it becomes an `error` row."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import gpu_suite
    finally:
        sys.path.remove(str(ROOT / "bench"))

    def broken_compile(*args, **kwargs):
        raise RuntimeError("inductor failed here")

    monkeypatch.setattr(gpu_suite, "compiled_train_row", broken_compile)
    result = gpu_suite.main(["--smoke", "--out", str(tmp_path), "--sections", "train_step,fsdp2_1gpu"])
    names = [row["row"] for row in result["rows"]]
    assert names == ["train_step/small/eager", "train_step/small/compiled/error",
                     "train_step/dsv2lite-2layer/eager", "train_step/dsv2lite-2layer/compiled/error",
                     "fsdp2_1gpu/small"]
    assert result["rows"][1]["error"] == "RuntimeError: inductor failed here"
    written = json.loads((tmp_path / "gpu_suite.json").read_text())
    assert [row["row"] for row in written["rows"]] == names
    assert "inductor failed here" in (tmp_path / "gpu_suite.md").read_text()


def test_gpu_profile_smoke_reports_busy_share_per_configuration(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_profile.py"), "--smoke", "--steps", "1",
                           "--out", str(tmp_path)], check=True, env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    results = json.loads(done.stdout.strip().splitlines()[-1])
    assert [r["name"] for r in results] == ["small/eager", "small/compiled"]
    for r in results:
        assert r["wall_ms_per_step"] > 0 and 0 < r["busy_share"] <= 1.5, r
        assert "Self CPU time total" in (tmp_path / f"profile_{r['name'].replace('/', '_')}.txt").read_text()
