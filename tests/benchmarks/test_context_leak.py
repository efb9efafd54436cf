"""The context-leak diagnostic: the harmonic fill, the rings, and the report on a tiny published window model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks import context_leak
from tests.helpers.dummy_data import make_dummy_mvtec
from tests.helpers.tiny_models import publish_tiny_model


def test_harmonic_fill_keeps_the_outside_and_reproduces_a_ramp() -> None:
    """A linear ramp is harmonic, so the filled hole converges to it; outside the region nothing changes."""
    ramp = torch.linspace(-1, 1, 24).view(1, 1, 1, 24).expand(2, 1, 24, 24).contiguous()
    region = torch.zeros(2, 1, 24, 24)
    region[:, :, 8:14, 6:16] = 1
    filled = context_leak.harmonic_fill(ramp, region, iters=2000)
    assert torch.equal(filled[region.expand_as(filled) == 0], ramp[region.expand_as(ramp) == 0])
    torch.testing.assert_close(filled, ramp, atol=1e-4, rtol=0)
    dented = ramp - 3 * region  # a dark "defect": the fill removes it
    torch.testing.assert_close(context_leak.harmonic_fill(dented, region, iters=2000), ramp, atol=1e-4, rtol=0)


def test_rings_partition_the_grid_by_distance() -> None:
    m = torch.zeros(1, 1, 12, 12)
    m[:, :, 5, 5] = 1
    parts = context_leak.rings(m, 2)
    assert len(parts) == 4
    torch.testing.assert_close(sum(parts), torch.ones_like(m))
    assert [int(p.sum()) for p in parts] == [1, 8, 16, 144 - 25]


def test_report_on_a_tiny_window_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.set_num_threads(1)
    root = make_dummy_mvtec(tmp_path / "data", categories=("tiny",), defects={"crack": 3}, n_good=2, size=(50, 70))
    model = publish_tiny_model(str(tmp_path / "model"), image_channels=1, frame="window")
    out = tmp_path / "leak.json"
    argv = [str(root), model, "--images", "4", "--threads", "1", "--dilate", "1", "--json", str(out)]
    assert context_leak.main(argv) == 0
    row = json.loads(out.read_text())
    assert row["images"] == 1 and row["dilate_px"] == 1 and row["latent_cell_variance"] > 0
    assert sum(v["share"] for v in row["rings"].values()) == pytest.approx(1.0)
    assert row["rings"]["mask"]["mean"] > 0 and row["rings"]["mask"]["cells"] > 0
    assert set(row["per_defect_type"]) == {"tiny/crack"}
    assert "| mask |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        context_leak.main([str(root), model, "--dilate", "-1"])
