"""Where a synthesis actor's memory goes: the ``pipeline`` part of :mod:`benchmarks.speed` reports it beside the runs.

Two views, both read from Linux's ``/proc``:

* :func:`memory_split`: one process now, as the kernel counts it. ``rss`` = ``anon`` (heap, the model's tensors,
  buffers: private to the process) + ``file`` (mapped library and data pages: libtorch, libray, numpy … shared by
  every process that maps the same files, so N actors on one node hold them once) + ``shmem``. ``pss`` (proportional
  set size) charges each shared page to its sharers in equal parts, ``uss`` (private clean + dirty) is what the
  process alone holds: the memory that a second actor on the node adds.
* :func:`actor_import_floor`: a fresh process that does what a ``FastSynthesizer`` actor does, in order (import
  torch; import Ray and Ray Data, which run the actor; import diffusers' UNet; import the synthesis stage; load the
  model; run one batch), with :func:`memory_split` and the step's wall seconds after each step: the memory each step
  adds, so that what is avoidable can be told from what any torch + Ray Data + diffusers process holds, and the time
  a fresh actor process spends before its first batch (part of a pipeline's start-up that a bare loop, whose imports
  are done before its clock starts, does not have).
* :func:`task_import_floor`: the same for a fresh CPU task worker that runs ``encode_and_qc`` (import Ray Data, then
  the stage's module), which imports no torch.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

STATUS_FIELDS = {"VmRSS": "rss", "VmHWM": "peak_rss", "RssAnon": "anon", "RssFile": "file", "RssShmem": "shmem"}
ROLLUP_FIELDS = {"Pss": "pss", "Private_Clean": "uss", "Private_Dirty": "uss"}


def memory_split(pid: int | str = "self") -> dict[str, int]:
    """Bytes of process ``pid`` now: rss, peak_rss (``VmHWM``), anon, file, shmem (``/proc/<pid>/status``) and pss,
    uss (``/proc/<pid>/smaps_rollup``, where the kernel has it). Raises OSError when the process is gone."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in STATUS_FIELDS:
                out[STATUS_FIELDS[name]] = 1024 * int(value.split()[0])
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            rollup = [line.split() for line in f if line.split(":")[0] in ROLLUP_FIELDS]
    except FileNotFoundError:  # kernels before 4.14
        return out
    for name, kib, *_ in rollup:
        key = ROLLUP_FIELDS[name.rstrip(":")]
        out[key] = out.get(key, 0) + 1024 * int(kib)
    return out


def _stepper() -> Callable[..., dict[str, Any]]:
    """``step(name, **extra)``: ``name``'s memory now (:func:`memory_split`) and its wall seconds since the previous
    step (or since this call)."""
    last = time.perf_counter()

    def step(name: str, **extra: Any) -> dict[str, Any]:
        nonlocal last
        now = time.perf_counter()
        seconds, last = now - last, now
        return {"step": name, **extra, "seconds": seconds, **memory_split()}

    return step


def _floor_steps(model_uri: str, batch_rows: int, threads: int) -> list[dict[str, Any]]:
    """The steps of :func:`actor_import_floor`, run in this (fresh) process."""
    step = _stepper()
    steps = [{"step": "python", **memory_split()}]
    import torch

    torch.set_num_threads(threads)
    steps.append(step("import torch"))
    import ray.data  # noqa: F401  - a Ray Data actor's worker has imported both

    steps.append(step("import ray, ray.data"))
    from diffusers import UNet2DConditionModel  # noqa: F401

    steps.append(step("import diffusers UNet"))
    import numpy as np

    from benchmarks.pipeline_throughput import KEYS
    from fast_core.synthesis import SynthesisConfig
    from pipelines.synthesize.stages import FastSynthesizer

    steps.append(step("import the synthesis stage"))
    synth = FastSynthesizer(model_uri=model_uri, sampler=SynthesisConfig(batch_size=batch_rows), num_cpus=threads)
    tensors = {t.data_ptr(): t.numel() * t.element_size() for t in synth.model.state_dict().values()}
    steps.append(step("load the model", weight_bytes=sum(tensors.values())))
    s, c = synth.info.image_size, synth.info.image_channels
    batch = {
        "image": np.random.default_rng(0).integers(0, 256, (batch_rows, s, s, c), dtype=np.uint8),
        "mask": np.zeros((batch_rows, s, s), np.uint8),
        "prompt": np.array([KEYS[1]] * batch_rows, dtype=object),
        "seed": np.arange(batch_rows, dtype=np.int64),
        "status": np.array([""] * batch_rows, dtype=object),
    }
    batch["mask"][:, s // 4 : s // 2, s // 4 : s // 2] = 255
    synth(batch)
    steps.append(step("synthesize one batch"))
    return steps


def _task_steps() -> list[dict[str, Any]]:
    """The steps of :func:`task_import_floor`, run in this (fresh) process."""
    step = _stepper()
    steps = [{"step": "python", **memory_split()}]
    import ray.data  # noqa: F401  - a Ray Data task's worker has imported it

    steps.append(step("import ray, ray.data"))
    from pipelines.synthesize.encode import encode_and_qc  # noqa: F401

    steps.append(step("import the CPU stage (encode_and_qc)"))
    steps.append({"step": "torch imported", "imported": "torch" in sys.modules})
    return steps


def task_import_floor() -> list[dict[str, Any]]:
    """:func:`memory_split` after each import of a fresh CPU task worker that runs ``encode_and_qc`` (``python -m
    benchmarks.speed_memory --task``); the last entry says whether torch came with them (it should not)."""
    return _fresh(["--task"])


def actor_import_floor(model_uri: str, batch_rows: int, threads: int) -> list[dict[str, Any]]:
    """:func:`memory_split` after each step of an actor's life, in a fresh interpreter (``python -m
    benchmarks.speed_memory``: nothing imported before the first step; module docstring)."""
    return _fresh([model_uri, str(batch_rows), str(threads)])


def _fresh(args: list[str]) -> list[dict[str, Any]]:
    """The JSON steps printed by ``python -m benchmarks.speed_memory ARGS`` in a new interpreter."""
    argv = [sys.executable, "-m", "benchmarks.speed_memory", *args]
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    """Print the steps of :func:`actor_import_floor` (or, with ``--task``, of :func:`task_import_floor`) as one JSON
    line (the last line of stdout)."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.speed_memory", description=__doc__.split("\n")[0])
    p.add_argument("--task", action="store_true", help="a CPU task worker's imports instead of an actor's life")
    p.add_argument("model_uri", nargs="?")
    p.add_argument("batch_rows", type=int, nargs="?")
    p.add_argument("threads", type=int, nargs="?")
    args = p.parse_args(argv)
    if args.task:
        print(json.dumps(_task_steps()))
        return 0
    if args.model_uri is None or args.batch_rows is None or args.threads is None:
        p.error("model_uri, batch_rows and threads are needed without --task")
    print(json.dumps(_floor_steps(args.model_uri, args.batch_rows, args.threads)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
