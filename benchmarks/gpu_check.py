"""GPU check: train the GPU preset for a fixed short budget, then measure bf16 AIAS-10 + FARM synthesis on one GPU.

Run it through ``benchmarks/gpu_check.sh`` (which picks the interpreter and bounds the wall time); the phases, each
timed, with the JSON rewritten after every one so a run stopped by the time limit keeps what it measured:

1. ``dataset``: a procedural MVTec-layout dataset (``woven_fabric``, RGB) at the model's image size, or ``--dataset``.
2. ``ray``: a local Ray cluster (:func:`pipelines.ray_utils.ensure_ray`; ``RAY_ADDRESS`` is honoured).
   ``train``: :func:`pipelines.train.run_training` (``fastgen train``'s entry) on ``jobs/configs/train-gpu-full.yaml``
   (the full preset, 256², bf16 autocast) with ``--set`` overrides: one Ray Train worker, ``--train-steps`` optimizer
   steps per stage (vae, base, fast), one checkpoint per stage (its last step), no sample grids; the model is
   published as usual.
3. ``load``: :func:`pipelines.model_store.load_model` of the published model onto the device.
4. ``flops``: ``FlopCounterMode`` over one batch-1 AIAS-10 pass (:func:`benchmarks.speed_gpu.count_flops`); the UNet's
   FLOPs per forward and image are F_u = FLOPs(UNet over the pass) / NFE.
5. ``sweep``: per batch B one warm-up call (excluded), then ``--repeats`` timed :func:`fast_core.synthesis.synthesize`
   calls (AIAS, NFE 10, FARM on; :func:`benchmarks.speed_gpu.time_config`), every phase and every UNet / FARM / Adaptor
   forward CUDA-synchronised:

       pairs/s = B / t                      (t: median seconds per call)
       UNet TFLOP/s = NFE · B · F_u / t_u    (t_u: seconds inside the UNet's forward during that call)
       fraction of peak = UNet TFLOP/s / P  (P: the device's dense bf16 peak, gpu_check_report.PEAK_BF16_TFLOPS)

   plus ``torch.cuda.max_memory_allocated`` per batch (reset before each).
6. ``grid``: one bf16 synthesize call on dataset normals and training masks → PNG rows: normal | mask | synthesized.

Outputs in ``--out``: ``gpu_check.json`` and ``gpu_check.png``; a short table on stdout. ``--dry-run`` runs the same
phases on the CPU with the tiny preset at 32², 2 steps per stage, float32 and batches 1 and 2 (a check of the script,
not a measurement: its fraction of peak is against a nominal 1 TFLOP/s).

Shared with the speed benchmark's ``gpu`` part: :func:`~benchmarks.speed_gpu.count_flops`,
:func:`~benchmarks.speed_gpu.time_config`, :func:`~benchmarks.speed_gpu.add_rates`, and
:func:`~benchmarks.speed_common.machine_info`, :func:`~benchmarks.speed_common.git_commit`.
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.gpu_check_report import best_row, peak_tflops, table
from benchmarks.speed_common import git_commit, machine_info
from benchmarks.speed_gpu import add_rates, count_flops, time_config
from fast_core.data.procedural import make_procedural_dataset
from fast_core.data.transforms import encode_png
from fast_core.synthesis import SynthesisConfig, synthesize, to_uint8
from pipelines.config import load_config
from pipelines.model_store import load_model
from pipelines.ray_utils import ensure_ray, started_local
from pipelines.train import TrainConfig, run_training
from pipelines.train.checkpoint import RunStore
from pipelines.train.data import load_training_data
from pipelines.train.grid import compose

REPO = Path(__file__).resolve().parents[1]
TRAIN_CONFIG = REPO / "jobs/configs/train-gpu-full.yaml"
STAGES = ("vae", "base", "fast")
NFE = 10
JSON_NAME, PNG_NAME = "gpu_check.json", "gpu_check.png"
#: mode -> settings: model preset and image size, training steps and per-stage batch, sweep, repeats, grid rows.
MODES: dict[str, dict[str, Any]] = {
    "gpu": {"preset": "full", "size": 256, "steps": 50, "batch": None, "batches": [1, 4, 16, 64], "repeats": 3},
    "dry": {"preset": "tiny", "size": 32, "steps": 2, "batch": 2, "batches": [1, 2], "repeats": 1},
}
GRID_ROWS = {"gpu": 4, "dry": 2}


class TimeLimit(Exception):
    """SIGTERM (``timeout`` in gpu_check.sh): stop, keep what was measured."""


def _on_term(signum: int, frame: Any) -> None:
    raise TimeLimit(f"stopped by signal {signum} (the time limit of gpu_check.sh)")


def arm_time_limit() -> None:
    """SIGTERM raises :class:`TimeLimit` (again after ``ray.init``, which installs its own ``sys.exit`` handler)."""
    signal.signal(signal.SIGTERM, _on_term)


def say(msg: str) -> None:
    """A progress line on stderr."""
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def train_overrides(mode: str, dataset: Path, storage: Path, steps: int) -> list[str]:
    """The ``--set`` overrides of ``train-gpu-full.yaml``: one worker, ``steps`` per stage, one checkpoint per stage,
    no sample grids; the dry run adds the tiny preset at 32² on the CPU in float32."""
    m = MODES[mode]
    sets = [
        "run_name=gpu-check",
        f"storage_path={storage}",
        f"dataset.root={dataset}",
        f"dataset.image_size={m['size']}",
        "scaling.num_workers=1",
    ]
    for stage in STAGES:
        sets += [
            f"stage.{stage}.steps={steps}",
            f"stage.{stage}.checkpoint_every={steps}",
            f"stage.{stage}.log_every={max(1, steps // 5)}",
            f"stage.{stage}.sample_every=0",
        ]
        if m["batch"] is not None:
            sets.append(f"stage.{stage}.batch_size={m['batch']}")
    if mode == "dry":
        sets += [
            f"model.preset={m['preset']}",
            "scaling.use_gpu=false",
            "scaling.mixed_precision=none",
            "scaling.cpus_per_worker=1",
        ]
    return sets


def make_dataset(mode: str, root: Path) -> Path:
    """The procedural training set: one RGB category; ⌊12/3⌋ = 4 training-third masks per defect type on the GPU
    (12 FAST rows ≥ batch 8), 16 normals (base: 28 rows ≥ batch 16)."""
    if mode == "dry":
        return make_procedural_dataset(root, ["woven_fabric"], n_train_good=4, n_test_good=2, n_per_defect=6, size=32)
    return make_procedural_dataset(root, ["woven_fabric"], n_train_good=16, n_test_good=2, n_per_defect=12, size=256)


def stage_rates(cfg: TrainConfig, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per stage: steady steps/s between its first and last logged step (first-step warm-up and the final
    checkpoint excluded), and images/s = steps/s × batch."""
    out = []
    for stage in STAGES:
        recs = [r for r in records if r.get("stage") == stage]
        batch = cfg.stage_config(stage).batch_size
        sps = None
        if len(recs) >= 2 and recs[-1]["stage_wall_s"] > recs[0]["stage_wall_s"]:
            sps = (recs[-1]["step"] - recs[0]["step"]) / (recs[-1]["stage_wall_s"] - recs[0]["stage_wall_s"])
        images = sps * batch if sps is not None else None
        out.append({"stage": stage, "batch_size": batch, "steady_steps_per_s": sps, "images_per_s": images})
    return out


def train(cfg: TrainConfig) -> tuple[dict[str, Any], str]:
    """Run the training entry on ``cfg``: (its summary per stage with the steady rates from ``metrics.jsonl``, the
    published model's URI)."""
    summary = run_training(cfg)
    rates = {r["stage"]: r for r in stage_rates(cfg, RunStore(cfg.run_uri, cfg.storage).read_metrics())}
    stages = [
        {"steps": s.steps, "wall_s": s.wall_s, "final_loss": s.final_loss, **rates[s.stage]} for s in summary.stages
    ]
    if summary.model_uri is None:
        raise RuntimeError("training published no model (no fast stage)")
    return {"wall_s": summary.wall_s, "keys": summary.keys, "stages": stages}, summary.model_uri


def flop_counts(model: Any, size: int, device: torch.device, dtype: torch.dtype) -> tuple[dict[str, Any], dict]:
    """FLOPs of one batch-1 AIAS-10 pass by top-level module: (GFLOP summary with the UNet's F_u per forward and
    image, the raw ``count_flops`` result)."""
    flops = count_flops(model, size, NFE, device, dtype)
    unet_name = type(model.unet).__name__
    summary = {
        "unet_module": unet_name,
        "unet_gflop_per_forward": flops["by_module"].get(unet_name, 0) / NFE / 1e9,
        "pass_gflop_per_image": flops["total"] / 1e9,
        "by_module_gflop_per_image": {k: v / 1e9 for k, v in flops["by_module"].items()},
    }
    return summary, flops


def sweep(
    model: Any,
    size: int,
    flops: dict[str, Any],
    config: dict[str, Any],
    device: torch.device,
    dtype: torch.dtype,
    peak: float,
) -> list[dict[str, Any]]:
    """One row per batch of ``config["batches"]``, ``config["repeats"]`` timed calls each, rates from ``flops`` (FLOPs
    per image and pass, as ``count_flops`` gives them); an out-of-memory batch is recorded and ends the sweep."""
    rows: list[dict[str, Any]] = []
    for batch in config["batches"]:
        say(f"sweep: batch {batch}")
        try:
            row = time_config(model, NFE, batch, size, device, dtype, config["repeats"])
        except torch.OutOfMemoryError as exc:
            rows.append({"batch": batch, "error": f"out of memory: {str(exc)[:200]}"})
            torch.cuda.empty_cache()
            break
        rows.append(add_rates(row, flops, type(model.unet).__name__, peak))
    return rows


def sample_grid(model: Any, cfg: TrainConfig, n: int, device: torch.device, dtype: torch.dtype) -> bytes:
    """PNG, one row per sample: normal | mask | synthesized (AIAS-10 + FARM in ``dtype``), from the training data."""
    data = load_training_data(cfg.dataset, cfg.seed)
    preview = data.preview(n)
    normal, masks = preview["normal"], preview["masks"]
    keys = [data.keys[int(i)] for i in preview["mask_key_ids"]]
    x = torch.from_numpy(normal).to(device=device, dtype=torch.float32) / 127.5 - 1.0
    m = torch.from_numpy(masks).to(device=device, dtype=torch.float32)
    gens = [torch.Generator().manual_seed(i) for i in range(len(keys))]
    out = synthesize(model, x, m, keys, SynthesisConfig(nfe=NFE, batch_size=len(keys)), gens, device, dtype)
    normal_cells, synth_cells = to_uint8(x), to_uint8(out.images)  # (n, S, S, C)
    mask_cells = np.repeat(masks[:, 0, :, :, None] * 255, normal_cells.shape[-1], axis=3).astype(np.uint8)
    rows = [[a, b, c] for a, b, c in zip(normal_cells, mask_cells, synth_cells, strict=True)]
    return encode_png(compose([[c[..., 0] if c.shape[-1] == 1 else c for c in row] for row in rows]))


def build_parser() -> argparse.ArgumentParser:
    """The options of ``python -m benchmarks.gpu_check`` (what gpu_check.sh passes through)."""
    p = argparse.ArgumentParser(prog="benchmarks/gpu_check.sh", description=__doc__.split("\n")[0])
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny preset, float32, batches 1 2: a check of the code")
    p.add_argument("--out", type=Path, default=REPO / "runs/gpu_check", help="output folder (default runs/gpu_check)")
    p.add_argument("--dataset", type=Path, default=None, help="train on this MVTec-layout folder (default procedural)")
    p.add_argument("--train-steps", type=int, default=None, help="optimizer steps per stage (default 50; dry run 2)")
    p.add_argument("--batches", type=int, nargs="+", default=None, help="synthesis sweep (default 1 4 16 64; dry 1 2)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per batch (default 3; dry run 1)")
    p.add_argument("--peak-tflops", type=float, default=None, help="override the peak table (dense TFLOP/s)")
    p.add_argument("--work", type=Path, default=None, help="scratch folder for dataset and checkpoints (default tmp)")
    return p


def run(args: argparse.Namespace, report: dict[str, Any], work: Path, write: Any) -> None:
    """The phases in order, filling ``report`` and calling ``write()`` after each."""
    mode = "dry" if args.dry_run else "gpu"
    if mode == "gpu" and not torch.cuda.is_available():
        raise RuntimeError("no CUDA device (torch.cuda.is_available() is False); use --dry-run on a CPU machine")
    device = torch.device("cuda" if mode == "gpu" else "cpu")
    dtype = torch.bfloat16 if mode == "gpu" else torch.float32
    clock = time.perf_counter()

    def phase(name: str) -> None:
        nonlocal clock
        report["phase_seconds"][name] = round(time.perf_counter() - clock, 2)
        clock = time.perf_counter()
        write()

    dataset = args.dataset or make_dataset(mode, work / "dataset")
    phase("dataset")
    overrides = train_overrides(mode, dataset, work / "runs", report["config"]["train_steps_per_stage"])
    report["config"]["train_overrides"] = overrides
    cfg = load_config(TrainConfig, TRAIN_CONFIG, overrides)
    say(ensure_ray(num_cpus=4 if mode == "dry" else None))
    arm_time_limit()
    phase("ray")
    report["train"], model_uri = train(cfg)
    phase("train")
    model, info = load_model(model_uri, device=device)
    phase("load")
    report["flops"], flops = flop_counts(model, info.image_size, device, dtype)
    phase("flops")
    report["sweep"] = sweep(model, info.image_size, flops, report["config"], device, dtype, report["peak_tflops"])
    report["best"] = best_row(report["sweep"])
    mems = [r["peak_memory_bytes"] for r in report["sweep"] if r.get("peak_memory_bytes") is not None]
    report["peak_memory_bytes"] = max(mems) if mems else None
    phase("sweep")
    (args.out / PNG_NAME).write_bytes(sample_grid(model, cfg, GRID_ROWS[mode], device, dtype))
    report["grid_png"] = PNG_NAME
    phase("grid")


def main(argv: list[str] | None = None) -> int:
    """Parse, run every phase, write ``gpu_check.json`` (+ ``gpu_check.png``) and print the table; 1 on failure."""
    args = build_parser().parse_args(argv)
    mode = MODES["dry" if args.dry_run else "gpu"]
    steps = mode["steps"] if args.train_steps is None else args.train_steps
    batches = mode["batches"] if args.batches is None else args.batches
    repeats = mode["repeats"] if args.repeats is None else args.repeats
    if steps < 1 or repeats < 1 or min(batches) < 1:
        raise SystemExit("--train-steps, --repeats and every --batches value must be >= 1")
    cuda = torch.cuda.is_available() and not args.dry_run
    device_name = torch.cuda.get_device_name(0) if cuda else machine_info()["cpu"]
    peak, peak_source = peak_tflops(device_name, args.dry_run, args.peak_tflops)
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "schema": "fastgen-gpu-check/1",
        "status": "running",
        "error": None,
        "dry_run": args.dry_run,
        "device": "cuda" if cuda else "cpu",
        "device_name": device_name,
        "dtype": "float32" if args.dry_run else "bfloat16",
        "peak_tflops": peak,
        "peak_source": peak_source,
        "command": "bash benchmarks/gpu_check.sh " + shlex.join(sys.argv[1:] if argv is None else argv),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "machine": machine_info(),
        "config": {
            "train_config": str(TRAIN_CONFIG.relative_to(REPO)),
            "preset": mode["preset"],
            "image_size": mode["size"],
            "train_steps_per_stage": steps,
            "sampler": "aias",
            "nfe": NFE,
            "use_farm": True,
            "batches": batches,
            "repeats": repeats,
        },
        "train": None,
        "flops": None,
        "sweep": [],
        "best": None,
        "peak_memory_bytes": None,
        "grid_png": None,
        "phase_seconds": {},
        "wall_s": None,
    }
    start = time.perf_counter()

    def write() -> None:
        report["wall_s"] = round(time.perf_counter() - start, 2)
        (args.out / JSON_NAME).write_text(json.dumps(report, indent=2) + "\n")

    code = 0
    try:
        with tempfile.TemporaryDirectory(prefix="fastgen-gpu-check-", dir=args.work) as tmp:
            arm_time_limit()
            run(args, report, Path(tmp), write)
        report["status"] = "ok"
    except (Exception, KeyboardInterrupt) as exc:  # record the failure in the JSON, then exit 1
        report["status"] = "interrupted" if isinstance(exc, TimeLimit | KeyboardInterrupt) else "failed"
        report["error"] = f"{type(exc).__name__}: {exc}"
        say(f"{report['status']}: {report['error']}")
        code = 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        write()
        if started_local():
            import ray

            ray.shutdown()
    print(table(report))
    print(f"wrote {args.out / JSON_NAME}" + (f" and {args.out / PNG_NAME}" if report["grid_png"] else ""))
    return code


if __name__ == "__main__":
    raise SystemExit(main())
