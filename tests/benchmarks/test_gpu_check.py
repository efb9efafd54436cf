"""``bash benchmarks/gpu_check.sh --dry-run``: the GPU check's whole path on the CPU (tiny preset, float32), run as
the future GPU session runs it (a subprocess with its own local Ray, shut down before it exits)."""

from __future__ import annotations

import io
import json
import os
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from benchmarks import gpu_check_report

REPO = Path(__file__).resolve().parents[2]
KEYS = {
    "schema",
    "status",
    "error",
    "dry_run",
    "device",
    "device_name",
    "dtype",
    "peak_tflops",
    "peak_source",
    "command",
    "date",
    "git_commit",
    "machine",
    "config",
    "train",
    "flops",
    "sweep",
    "best",
    "peak_memory_bytes",
    "grid_png",
    "phase_seconds",
    "wall_s",
}
ROW_KEYS = {"batch", "pairs_per_s", "seconds_per_batch", "unet_tflops", "unet_fraction_of_peak", "peak_memory_bytes"}


def test_peak_table_picks_by_device_name() -> None:
    assert gpu_check_report.peak_tflops("NVIDIA H100 80GB HBM3", False, None) == (989.0, "table: h100")
    assert gpu_check_report.peak_tflops("NVIDIA H200 NVL", False, None)[0] == 835.0
    assert gpu_check_report.peak_tflops("NVIDIA H200", False, 500.0) == (500.0, "--peak-tflops")
    peak, source = gpu_check_report.peak_tflops("Some Future GPU", False, None)
    assert peak == gpu_check_report.FALLBACK_PEAK and source.startswith("assumed")


@pytest.mark.ray
def test_dry_run_writes_the_json_and_the_grid(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own local Ray, never a foreign one
    proc = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", "--dry-run", "--out", str(out), "--work", str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "batch | pairs/s | UNet TFLOP/s" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check.png"]
    assert list(tmp_path.glob("fastgen-gpu-check-*")) == []  # scratch (dataset, checkpoints, model) removed

    r = json.loads((out / "gpu_check.json").read_text())
    assert set(r) == KEYS
    assert (r["status"], r["error"], r["dry_run"], r["device"], r["dtype"]) == ("ok", None, True, "cpu", "float32")
    assert r["config"]["train_config"] == "jobs/configs/train-gpu-full.yaml"
    assert {"stage.base.steps=2", "model.preset=tiny"} <= set(r["config"]["train_overrides"])
    assert [(s["stage"], s["steps"]) for s in r["train"]["stages"]] == [("vae", 2), ("base", 2), ("fast", 2)]
    assert all(s["steady_steps_per_s"] > 0 and s["images_per_s"] > 0 for s in r["train"]["stages"])
    assert r["flops"]["unet_module"] == "UNet2DConditionModel" and r["flops"]["unet_gflop_per_forward"] > 0
    assert r["flops"]["pass_gflop_per_image"] > 10 * r["flops"]["unet_gflop_per_forward"]  # NFE 10 + VAE + FARM

    assert [row["batch"] for row in r["sweep"]] == [1, 2]
    for row in r["sweep"]:
        assert set(row) >= ROW_KEYS and row["nfe"] == 10 and row["peak_memory_bytes"] is None  # no CUDA memory on CPU
        assert row["pairs_per_s"] > 0 and row["unet_tflops"] > 0
        assert row["unet_fraction_of_peak"] == pytest.approx(row["unet_tflops"] / r["peak_tflops"])
    assert r["best"]["batch"] in (1, 2) and r["peak_memory_bytes"] is None
    assert set(r["phase_seconds"]) == {"dataset", "ray", "train", "load", "flops", "sweep", "grid"} and r["wall_s"] > 0

    assert r["grid_png"] == "gpu_check.png"
    with Image.open(io.BytesIO((out / "gpu_check.png").read_bytes())) as png:
        png.load()
        # 2 rows (normal | mask | synthesized) of 32² RGB cells with 2-pixel gaps
        assert (png.mode, png.size) == ("RGB", (3 * 32 + 2 * 2, 2 * 32 + 2))
