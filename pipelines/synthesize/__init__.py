"""Synthesis at scale: a manifest in, a committed dataset version (Parquet shards + PNG tree) out, via Ray Data.

``config`` (SynthesizeConfig), ``stages`` (the Ray stage callables), ``schema`` (output row schemas), ``run``
(``run_synthesis``), ``outputs`` (stats.json, preview.png, README.md, report.html, _SUCCESS). The shard commit
protocol is :mod:`pipelines.shards`.
"""

from pipelines.synthesize.config import ComputeConfig, FaultConfig, SynthesizeConfig
from pipelines.synthesize.run import SynthesisSummary, run_synthesis

__all__ = ["ComputeConfig", "FaultConfig", "SynthesisSummary", "SynthesizeConfig", "run_synthesis"]
