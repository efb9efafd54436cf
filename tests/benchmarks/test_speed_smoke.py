"""Smoke tests of the speed benchmark: the output-path part and the report writers end to end, the GPU part's logic."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import pytest
import torch

from benchmarks import speed, speed_gpu, speed_report


@pytest.mark.s3
def test_output_part_and_report_end_to_end(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    out_json, out_md = tmp_path / "speed.json", tmp_path / "SPEED.md"
    pairs = 3
    argv = ["--quick", "--parts", "output", "--pairs", str(pairs), "--threads", "1", "--local-dir", str(tmp_path)]
    assert speed.main([*argv, "--out-json", str(out_json), "--out-md", str(out_md)]) == 0

    report = json.loads(out_json.read_text())
    assert re.fullmatch(r"[0-9a-f]{4,}(-dirty)?", report["git_commit"])
    assert report["command"].startswith("python -m benchmarks.speed --quick --parts output")
    assert report["machine"]["cores"] >= 1 and report["machine"]["torch"] == torch.__version__
    for name in ("sampler", "pipeline", "store", "gpu"):
        assert report["parts"][name]["not_run"].startswith("not selected")
    assert all(v is None for v in report["headline"].values())

    output = report["parts"]["output"]
    assert output["peak_rss_bytes"] > 0 and output["pairs_per_format"] == pairs
    for fmt, (size, channels) in {"grey128": (128, 1), "rgb256": (256, 3)}.items():
        entry = output["formats"][fmt]
        assert (entry["size"], entry["channels"]) == (size, channels)
        assert entry["encode_us_per_pair"] > 0
        assert entry["image_png_bytes_mean"] > 0.25 * size * size * channels  # textured: PNG cannot shrink it much
        for target in ("local", "s3"):
            t = entry["targets"][target]
            # one shard (3 pairs < 16): 2 PNGs per pair, the data part and the marker
            assert t["files"] == 2 * pairs + 2
            assert t["bytes"] > pairs * entry["image_png_bytes_mean"]
            for key in ("mb_per_s", "pairs_per_s", "files_per_s", "seconds"):
                assert t[key] > 0 and math.isfinite(t[key]), (fmt, target, key)
    assert output["encode_fraction_of_aias10"] == {"grey128": {}, "rgb256": {}}  # no sampler part, no AIAS-10 time

    md = out_md.read_text()
    assert report["command"] in md and report["git_commit"] in md
    assert "## 4. Output path" in md and "| grey128 |" in md and "| rgb256 |" in md
    assert md.count("Not run: not selected") == 4

    # --update redoes one part and keeps the measured ones, with the provenance of the run that measured them
    again = ["--quick", "--parts", "gpu", "--update", "--out-json", str(out_json), "--out-md", str(out_md)]
    assert speed.main(again) == 0
    updated = json.loads(out_json.read_text())
    assert updated["parts"]["output"] == output
    assert updated["part_seconds"]["output"] == report["part_seconds"]["output"]
    assert updated["part_runs"]["output"] == {k: report[k] for k in ("git_commit", "date", "command")}
    assert updated["part_runs"]["gpu"]["command"] == updated["command"] != report["command"]
    md = out_md.read_text()
    assert "| grey128 |" in md and f"kept by --update: commit `{report['git_commit']}`" in md


def test_quick_defaults_and_validation() -> None:
    args = speed.parse_args(["--quick"])
    assert (args.preset, args.repeats, args.rows) == ("tiny", 1, 8)
    assert "DDPM-1000" in args.samplers  # --quick keeps DDPM at 1000 steps
    assert (args.sampler_preset, args.sampler_variants) == ("tiny", [])
    full = speed.parse_args([])
    assert (full.preset, full.sampler_preset, full.sampler_variants[0]) == ("small", "window", "eager")
    with pytest.raises(ValueError, match="--rows"):
        speed.parse_args(["--rows", "0"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the record made without a GPU")
def test_gpu_part_is_recorded_as_not_run_without_cuda() -> None:
    part = speed_gpu.run_gpu(speed.parse_args(["--parts", "gpu"]))
    assert part == {"not_run": "no GPU (torch.cuda.is_available() is False)"}


def test_gpu_benchmark_logic_on_the_tiny_model() -> None:
    """The GPU part's measurements (FLOP count, sweep, variants, rates) on the CPU with the tiny preset."""
    torch.set_num_threads(1)
    g = speed_gpu.gpu_benchmark(
        preset="tiny",
        device=torch.device("cpu"),
        dtype=torch.float32,
        batches=[1, 2],
        nfes=[10],
        variants=["eager", "channels_last"],
        variant_batch=2,
        repeats=1,
        peak_tflops=1.0,
    )
    flops = g["flops_per_image"]["10"]
    assert flops["total"] == sum(flops["by_module"].values())  # every FLOP belongs to a top-level module
    unet = flops["by_module"]["UNet2DConditionModel"]
    assert unet == max(flops["by_module"].values())
    assert [(r["nfe"], r["batch"]) for r in g["sweep"]] == [(10, 1), (10, 2)]
    assert [r["variant"] for r in g["variants"]] == ["eager", "channels_last"]
    for row in g["sweep"] + g["variants"]:
        assert row["pairs_per_s"] == pytest.approx(row["batch"] / row["seconds_per_batch"])
        expected = unet * row["batch"] / row["split_seconds"]["unet"] / 1e12
        assert row["unet_tflops"] == pytest.approx(expected) and row["unet_fraction_of_peak"] == row["unet_tflops"]
        assert row["peak_memory_bytes"] is None  # CPU: no CUDA allocator statistics
    assert g["best"]["pairs_per_s"] == max(r["pairs_per_s"] for r in g["sweep"] + g["variants"])
    assert speed_report.headline({"gpu": g})["gpu_best_pairs_per_s_nfe10"] == g["best"]["pairs_per_s"]
    md = speed_gpu.md_gpu(g)
    assert "Batch sweep" in md and "| channels_last | 10 | 2 |" in md


def test_pipeline_runs_split_at_their_first_committed_shard(tmp_path: Path) -> None:
    """Start-up = first marker − start; steady pairs/s = rows after the first shard / (last − first marker)."""
    from benchmarks.pipeline_throughput import commit_split

    commits = tmp_path / "out" / "_commits"
    commits.mkdir(parents=True)
    (commits / "job.json").write_text("{}")  # the claim, not a shard
    for k, t in enumerate((1010.0, 1014.0, 1018.0)):  # shards of 8 rows committed 10, 14 and 18 s after the start
        marker = commits / f"part-{k:05d}.json"
        marker.write_text("{}")
        os.utime(marker, (t, t))
    split = commit_split(str(tmp_path / "out"), 1000.0, rows=24, shard_size=8)
    assert split["startup_s"] == pytest.approx(10.0) and split["steady_pairs_per_s"] == pytest.approx(16 / 8)
    assert commit_split(str(tmp_path / "none"), 0.0, rows=8, shard_size=8) == {
        "startup_s": None,
        "steady_pairs_per_s": None,
    }


def test_two_bare_processes_split_the_shards_and_pool_their_markers(tmp_path: Path) -> None:
    """Process p of P does the shards s with s mod P = p; the parts together are the one-process output, byte for
    byte, and their markers are pooled into one start-up / steady-state split."""
    from benchmarks import pipeline_throughput as pt
    from fast_core.models.ldm import FastLDM, model_preset
    from fast_core.synthesis import SynthesisConfig
    from pipelines.model_store import ModelInfo, publish_model
    from pipelines.synthesize import ComputeConfig, SynthesizeConfig

    cfg = model_preset("tiny", keys=pt.KEYS)
    size = cfg.vae.sample_size
    info = ModelInfo(image_size=size, image_channels=3, keys=pt.KEYS, preset="tiny")
    model_uri = publish_model(FastLDM.from_scratch(cfg, seed=0), str(tmp_path / "model"), info)
    images, masks = pt.make_inputs(tmp_path / "inputs", 3, size + 4)
    manifest = pt.write_manifest(tmp_path / "manifest", images, masks, 7, model_uri)  # shards of 2: the last has 1

    def config(out: str) -> SynthesizeConfig:
        return SynthesizeConfig(
            manifest=manifest,
            out=out,
            shard_size=2,
            sampler=SynthesisConfig(nfe=3, batch_size=3),  # batches cross shard boundaries
            compute=ComputeConfig(concurrency=1, num_cpus=1, batch_size=3),
            preview_pairs=0,
        )

    pt.bare_loop(config(str(tmp_path / "one")), model_uri)
    outs = [str(tmp_path / f"two-{p}") for p in range(2)]
    for p, out in enumerate(outs):
        pt.bare_loop(config(out), model_uri, part=p, parts=2)
    whole = pt.data_bytes(str(tmp_path / "one"))
    assert len(whole) == 4
    assert sorted(pt.data_bytes(outs[0])) == ["part-00000.parquet", "part-00002.parquet"]
    assert pt.data_bytes(outs) == whole
    split = pt.commit_split(outs, 0.0, rows=7, shard_size=2)
    assert split["startup_s"] > 0 and split["steady_pairs_per_s"] > 0


def test_sampler_window_preset_cuts_synthesizes_and_pastes_back(tmp_path: Path) -> None:
    """The window preset times the whole window-frame path: cut, encode, loop, decode, paste-back; --frames sets the
    window frame against the global one per core."""
    from benchmarks import sampler_speed
    from benchmarks.speed_report import headline

    torch.set_num_threads(1)
    out = tmp_path / "sampler.json"
    argv = ["--preset", "window", "--samplers", "AIAS-10", "--repeats", "1", "--batch", "1", "--channels", "1"]
    argv += ["--variants", "eager", "--frames"]
    assert sampler_speed.main([*argv, "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["frame"] == "window" and report["image_size"] == 128
    assert report["native_shape"] == list(sampler_speed.NATIVE_SHAPE)
    split = report["rows"][0]["split_seconds"]
    assert split["window_cut"] > 0 and split["window_paste"] > 0 and split["decode"] > 0
    assert [v["variant"] for v in report["variants"]] == ["eager"] and report["variants"][0]["speedup_over_eager"] == 1
    frames = {f["frame"]: f for f in report["frames"]}
    assert frames["window"]["image_size"] == frames["global"]["image_size"] == 128
    assert frames["window"]["pairs_per_s_per_core"] == pytest.approx(1 / frames["window"]["seconds_per_pair"])
    ratio = headline({"sampler": report})["window_over_global_pairs_per_core"]
    assert ratio == pytest.approx(frames["window"]["pairs_per_s_per_core"] / frames["global"]["pairs_per_s_per_core"])
    assert "| window | 128² window of a 208×256 image |" in sampler_speed.markdown_table(report)
    parts = sum(split[k] for k in ("window_cut", "encode", "loop", "decode", "paste", "window_paste"))
    assert parts <= report["rows"][0]["split_total"] * 1.001
    assert "| AIAS-10 | 10 |" in sampler_speed.markdown_table(
        report
    ) and "windows of 208×256" in sampler_speed.markdown_table(report)


def test_memory_split_reads_this_process() -> None:
    from benchmarks.speed_memory import memory_split

    split = memory_split()
    assert split["rss"] > 0 and split["peak_rss"] >= split["rss"]
    assert split["anon"] + split["file"] + split["shmem"] == pytest.approx(split["rss"], rel=0.05)
    assert 0 < split["uss"] <= split["pss"] <= split["rss"]


def test_actor_steps_table_shows_each_steps_seconds_and_the_imports_total() -> None:
    from benchmarks.speed_pipeline import md_actor_memory

    mib = 1 << 20
    split = {"peak_rss": 0, "anon": mib, "file": mib, "pss": mib, "uss": mib}
    steps = [
        {"step": "python", **split, "rss": 10 * mib},
        {"step": "import torch", **split, "rss": 200 * mib, "seconds": 1.25},
        {"step": "import ray, ray.data", **split, "rss": 300 * mib, "seconds": 1.0},
        {"step": "import the synthesis stage", **split, "rss": 400 * mib, "seconds": 0.5},
        {"step": "load the model", **split, "rss": 450 * mib, "seconds": 0.25, "weight_bytes": 40 * mib},
    ]
    lines = md_actor_memory(steps)
    assert "| import torch | 1.25 | 200.0 MiB | 190.0 MiB |" in "\n".join(lines)
    assert "| python | — |" in "\n".join(lines)  # the first step has no duration
    assert "The imports take 2.8 s of a fresh actor process's start" in "\n".join(lines)
    # torch + Ray Data (300) + the peak above the imports (0 - 400): the floor line is computed, not copied
    assert lines[-1].startswith("A floor without diffusers: torch and Ray Data (300.0 MiB)")


def test_a_cpu_task_worker_imports_no_torch_and_the_table_says_so() -> None:
    from benchmarks.speed_memory import task_import_floor
    from benchmarks.speed_pipeline import md_task_memory

    steps = task_import_floor()
    assert [s["step"] for s in steps] == [
        "python",
        "import ray, ray.data",
        "import the CPU stage (encode_and_qc)",
        "torch imported",
    ]
    assert steps[-1]["imported"] is False
    assert steps[2]["rss"] >= steps[1]["rss"] > steps[0]["rss"] > 0
    text = "\n".join(md_task_memory(steps))
    assert "| import the CPU stage (encode_and_qc) |" in text and "torch imported by the CPU stage: no." in text
