"""pipelines.ray_utils.stream_blocks: each output block reaches the driver without waiting for later ones."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from pipelines.ray_utils import stream_blocks

pytestmark = pytest.mark.ray

WAIT_S = 20.0


def _after_previous_seen(batch: dict[str, np.ndarray], *, seen: str) -> dict[str, np.ndarray]:
    """Block i > 0 finishes only once the driver has received block i − 1 (its marker file exists)."""
    (i,) = batch["i"].tolist()
    deadline = time.monotonic() + WAIT_S
    while i > 0 and not (Path(seen) / f"seen-{i - 1}").exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"block {i}: the driver never received block {i - 1}")
        time.sleep(0.05)
    return batch


def test_each_block_reaches_the_driver_before_the_next_is_made(tmp_path: Path, ray_local: None) -> None:
    # A driver that held block i until later blocks were ready (Ray Data's local prefetch) would deadlock here:
    # block i + 1 waits for the driver to have block i.
    import ray.data

    n = 4
    ds = ray.data.from_items([{"i": i} for i in range(n)], override_num_blocks=n)
    ds = ds.map_batches(_after_previous_seen, batch_format="numpy", batch_size=None, fn_kwargs={"seen": str(tmp_path)})
    got = []
    for block in stream_blocks(ds, "numpy"):
        (i,) = block["i"].tolist()
        got.append(i)
        (tmp_path / f"seen-{i}").touch()
    assert got == list(range(n))
