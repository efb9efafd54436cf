"""Synthesis at scale: a manifest in, a committed dataset version (Parquet shards + PNG tree) out, via Ray Data.

``config`` (SynthesizeConfig), ``stages`` (the generator's Ray stage callables), ``encode`` (the CPU stage after
it), ``schema`` (output row schemas), ``run`` (``run_synthesis``), ``outputs`` (stats.json, preview.png, README.md,
report.html, _SUCCESS). The shard commit protocol is :mod:`pipelines.shards`.

The names below are imported on first use (PEP 562), not with the package: a Ray task worker that runs
:func:`pipelines.synthesize.encode.encode_and_qc` imports this package first, and must not pay for torch and
diffusers, which ``config`` and ``run`` bring in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipelines.lazy import lazy_exports

if TYPE_CHECKING:
    from pipelines.synthesize.config import ComputeConfig, FaultConfig, SynthesizeConfig
    from pipelines.synthesize.run import SynthesisSummary, run_synthesis

_HOMES = {
    "ComputeConfig": "pipelines.synthesize.config",
    "FaultConfig": "pipelines.synthesize.config",
    "SynthesizeConfig": "pipelines.synthesize.config",
    "SynthesisSummary": "pipelines.synthesize.run",
    "run_synthesis": "pipelines.synthesize.run",
}

__getattr__ = lazy_exports(__name__, _HOMES)


__all__ = ["ComputeConfig", "FaultConfig", "SynthesisSummary", "SynthesizeConfig", "run_synthesis"]
