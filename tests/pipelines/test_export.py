"""``fastgen dataset export``: a version → MVTec-AD / flat folders, streamed, resumable, on local disk and S3."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.cli import main
from pipelines import export as ex
from pipelines import storage as st
from pipelines.export import ExportConfig, ExportError, PartInfo, export_version, iter_rows
from pipelines.versions import publish_latest, version_uri
from tests.helpers.synthetic_versions import make_synthetic_version

DEFECTS = ("dent", "scratch")
N = 5  # rows per defect type


def stored_pngs(version: Path) -> dict[str, tuple[bytes, bytes]]:
    """sample_id → (image bytes, mask bytes) as the version's Parquet rows hold them."""
    out = {}
    for part in sorted((version / "data").glob("part-*.parquet")):
        for row in pq.read_table(part, columns=["sample_id", "image", "mask"]).to_pylist():
            out[row["sample_id"]] = (row["image"]["bytes"], row["mask"]["bytes"])
    return out


def files_under(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def version(tmp_path: Path) -> Path:
    """A complete RGB version: one category, two defect types of N rows, 3 rows per part file (parts span both
    defects); the rows' normal images exist under tmp_path/source."""
    return make_synthetic_version(
        tmp_path / "version",
        defect_types=DEFECTS,
        n_per_defect=N,
        mode="RGB",
        rows_per_part=3,
        normals_root=tmp_path / "source",
    )


def test_mvtec_export_passes_inspect_with_the_per_defect_counts(
    version: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "mvtec"
    assert main(["dataset", "export", str(version), "--format", "mvtec", "--out", str(out)]) == 0
    assert "10 rows" in capsys.readouterr().out
    for sid, (image, mask) in stored_pngs(version).items():
        defect = sid.split("__")[1]
        assert (out / "widget" / "test" / defect / f"{sid}.png").read_bytes() == image  # bytes as stored
        assert (out / "widget" / "ground_truth" / defect / f"{sid}_mask.png").read_bytes() == mask
    # the N distinct normal images the rows were painted on, copied once each, as they are
    good = sorted(p.name for p in (out / "widget" / "train" / "good").iterdir())
    assert good == [f"{i:03d}.png" for i in range(N)]
    assert (out / "widget/train/good/002.png").read_bytes() == (
        tmp_path / "source/widget/train/good/002.png"
    ).read_bytes()

    report = tmp_path / "inspect.json"
    assert main(["inspect", str(out), "--json", str(report)]) == 0
    result = json.loads(report.read_text())
    assert result["ok"] and result["problems"] == []
    counts = {(g["split"], g["defect_type"]): (g["images"], g["masks"]) for g in result["groups"]}
    assert counts == {("test", "dent"): (N, N), ("test", "scratch"): (N, N), ("train", "good"): (N, 0)}

    summary = json.loads((out / ex.SUMMARY_NAME).read_text())
    assert summary["rows"] == 2 * N and summary["counts"] == {"widget/dent": N, "widget/scratch": N}
    assert summary["normal_images"] == {"copied": N, "unresolved": 0} and summary["files"] == 4 * N + N
    assert summary["layout"] == "mvtec" and summary["source"] == str(version)
    assert not (out / ex.CLAIM_NAME).exists()


def test_mvtec_without_readable_normals_leaves_train_good_empty(tmp_path: Path) -> None:
    version = make_synthetic_version(tmp_path / "v", n_per_defect=3)  # source_image: relative, resolvable nowhere
    summary = export_version(ExportConfig(source=str(version), format="mvtec", out=str(tmp_path / "out")))
    assert (summary.normals_copied, summary.normals_unresolved) == (0, 3)
    good = tmp_path / "out" / "widget" / "train" / "good"
    assert good.is_dir() and not any(good.iterdir())  # the layout needs train/ for inspect and anomalib
    assert main(["inspect", str(tmp_path / "out")]) == 0


def test_folder_export_layout_bytes_and_progress(
    version: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "folder"
    with caplog.at_level(logging.INFO, logger="pipelines.export"):
        summary = export_version(ExportConfig(source=str(version), format="folder", out=str(out)))
    stored = stored_pngs(version)
    expected = {f"images/{sid}.png": pair[0] for sid, pair in stored.items()}
    expected |= {f"masks/{sid}.png": pair[1] for sid, pair in stored.items()}
    assert files_under(out) == expected | {ex.SUMMARY_NAME: (out / ex.SUMMARY_NAME).read_bytes()}
    assert summary.rows == 2 * N and summary.written == 4 * N and summary.unchanged == 0 and not summary.resumed
    assert summary.normals_copied == 0  # the flat layout has no place for normal images
    progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("exported ")]
    assert progress == [
        "exported 3/10 rows (part-00000.parquet)",
        "exported 6/10 rows (part-00001.parquet)",
        "exported 9/10 rows (part-00002.parquet)",
        "exported 10/10 rows (part-00003.parquet)",
    ]


def test_rows_stream_row_group_by_row_group_in_batches(tmp_path: Path) -> None:
    version = make_synthetic_version(tmp_path / "v", n_per_defect=7, rows_per_part=7)
    part = version / "data" / "part-00000.parquet"
    table = pq.read_table(part)
    pq.write_table(table, part, row_group_size=3)  # row groups of 3, 3, 1
    info = PartInfo(uri=str(part), name=part.name, size=part.stat().st_size, rows=7)
    assert [len(b) for b in iter_rows(info, batch_rows=2, storage=None)] == [2, 1, 2, 1, 1]
    assert [len(b) for b in iter_rows(info, batch_rows=256, storage=None)] == [3, 3, 1]
    (version / "_SUCCESS").write_text("rewritten parts")
    summary = export_version(
        ExportConfig(source=str(version), format="folder", out=str(tmp_path / "out"), batch_rows=2)
    )
    assert summary.rows == 7 and len(list((tmp_path / "out" / "images").iterdir())) == 7


def test_rerun_keeps_identical_files_and_rewrites_damaged_ones(version: Path, tmp_path: Path) -> None:
    out = tmp_path / "mvtec"
    cfg = ExportConfig(source=str(version), format="mvtec", out=str(out))
    export_version(cfg)
    before = files_under(out)
    mask = out / "widget/ground_truth/dent/widget__dent__000001_mask.png"
    mask.write_bytes(mask.read_bytes()[:20])  # truncated, as a kill mid-write leaves it
    (out / "widget/test/scratch/widget__scratch__000004.png").unlink()
    again = export_version(cfg)
    assert again.resumed and (again.written, again.unchanged) == (2, 5 * N - 2)
    assert files_under(out) == before  # export.json included: its bytes depend only on the version and options


def test_interrupted_export_resumes_from_its_claim(
    version: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "folder"
    cfg = ExportConfig(source=str(version), format="folder", out=str(out))

    def killed() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(ex.os, "sync", killed)  # dies after the files, before export.json
    with pytest.raises(KeyboardInterrupt):
        export_version(cfg)
    assert (out / ex.CLAIM_NAME).is_file() and not (out / ex.SUMMARY_NAME).exists()
    monkeypatch.undo()
    again = export_version(cfg)
    assert again.resumed and again.written == 0 and again.unchanged == 4 * N
    assert (out / ex.SUMMARY_NAME).is_file() and not (out / ex.CLAIM_NAME).exists()


def test_non_empty_out_of_anything_else_is_refused_untouched(version: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="is not empty and holds no fastgen export"):
        export_version(ExportConfig(source=str(version), format="mvtec", out=str(out)))
    assert files_under(out) == {"notes.txt": b"mine"}

    done = tmp_path / "done"
    export_version(ExportConfig(source=str(version), format="mvtec", out=str(done)))
    snapshot = files_under(done)
    other = make_synthetic_version(tmp_path / "other", seed=1)
    for cfg in (
        ExportConfig(source=str(version), format="folder", out=str(done)),  # another layout
        ExportConfig(source=str(version), format="mvtec", out=str(done), normals=False),  # another normals choice
        ExportConfig(source=str(other), format="mvtec", out=str(done)),  # another version
    ):
        with pytest.raises(ExportError, match="holds another export"):
            export_version(cfg)
    assert files_under(done) == snapshot


def test_incomplete_version_is_refused_with_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    version = make_synthetic_version(tmp_path / "v", success=False)
    out = tmp_path / "out"
    assert main(["dataset", "export", str(version), "--format", "mvtec", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{version} has no _SUCCESS: an incomplete dataset version" in err
    assert not out.exists()
    with pytest.raises(ExportError, match="neither a dataset version"):
        export_version(ExportConfig(source=str(tmp_path / "nothing"), out=str(out)))


def test_mvtec_refuses_the_defect_type_good(tmp_path: Path) -> None:
    version = make_synthetic_version(tmp_path / "v", defect_types=("good",), n_per_defect=2)
    with pytest.raises(ExportError, match="has defect_type 'good', the MVTec normal class"):
        export_version(ExportConfig(source=str(version), format="mvtec", out=str(tmp_path / "out")))


def test_dataset_prefix_and_name_resolve_through_latest(tmp_path: Path) -> None:
    prefix = str(tmp_path / "datasets")
    make_synthetic_version(version_uri(prefix, "tiles", "v1"), n_per_defect=2)
    make_synthetic_version(version_uri(prefix, "tiles", "v2"), n_per_defect=3)
    publish_latest(prefix, "tiles", "v2", validation={"passed": True})
    by_name = export_version(ExportConfig(source=prefix, name="tiles", format="folder", out=str(tmp_path / "a")))
    by_uri = export_version(ExportConfig(source=f"{prefix}/tiles", format="folder", out=str(tmp_path / "b")))
    assert by_name.source == by_uri.source == version_uri(prefix, "tiles", "v2") and by_name.rows == 3


@pytest.mark.s3
def test_export_from_the_s3_server(
    version: Path, tmp_path: Path, s3_bucket, s3_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = f"{s3_bucket.uri}/datasets/tiles/versions/v1"
    st.put_dir(version, uri, s3_bucket.storage)
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    out = tmp_path / "from-s3"
    assert main(["dataset", "export", uri, "--format", "mvtec", "--out", str(out)]) == 0
    report = tmp_path / "inspect.json"
    assert main(["inspect", str(out), "--json", str(report)]) == 0
    counts = {(g["split"], g["defect_type"]): g["images"] for g in json.loads(report.read_text())["groups"]}
    assert counts == {("test", "dent"): N, ("test", "scratch"): N, ("train", "good"): N}
    for sid, (image, mask) in stored_pngs(version).items():
        defect = sid.split("__")[1]
        assert (out / "widget" / "test" / defect / f"{sid}.png").read_bytes() == image
        assert (out / "widget" / "ground_truth" / defect / f"{sid}_mask.png").read_bytes() == mask
    # the same version copied to S3 has the same fingerprint as the local one: a local export of it is resumed
    local = export_version(ExportConfig(source=str(version), format="mvtec", out=str(out)))
    assert local.resumed and local.written == 0
    # incomplete on S3: refused
    st.remove(f"{uri}/_SUCCESS", s3_bucket.storage)
    with pytest.raises(ExportError, match="incomplete dataset version"):
        export_version(ExportConfig(source=uri, out=str(tmp_path / "x"), storage=s3_bucket.storage))


def test_bad_rows_name_the_row(tmp_path: Path) -> None:
    version = make_synthetic_version(tmp_path / "v", n_per_defect=2, rows_per_part=2)
    part = version / "data" / "part-00000.parquet"
    rows = pq.read_table(part).to_pylist()
    rows[1]["image"] = {"bytes": b"GIF89a not a png", "path": rows[1]["image"]["path"]}
    pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_schema(part)), part)
    with pytest.raises(ExportError, match="the image of row 'widget__scratch__000001' is not PNG data"):
        export_version(ExportConfig(source=str(version), format="folder", out=str(tmp_path / "out")))
