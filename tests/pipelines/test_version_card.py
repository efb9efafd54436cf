"""The dataset card (README.md) and report.html of a finished version: front matter, ``datasets`` through the card's
configs (offline), provenance and counts, the report in headless Chromium, and the same files written to S3."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from PIL import Image

from pipelines import storage
from pipelines.synthesize.card import CARD, COLUMN_NOTES, LICENSE_LINE, parse_front_matter
from pipelines.synthesize.report import REPORT
from pipelines.synthesize.schema import DATA_SCHEMA
from tests.helpers.browser import HeadlessChromium, find_chromium
from tests.helpers.synthetic_versions import make_synthetic_version
from tests.helpers.version_outputs import MODEL_INFO, finish_version, shard_commits, write_model_and_manifest

REJECTED = {1: [dict(sample_id="widget__crack__000099", category="widget", defect_type="crack", stage="load",
                     reason="input_unreadable", detail="gone.png")]}  # fmt: skip
OUTPUTS = ("stats.json", "preview.png", CARD, REPORT, "_SUCCESS")


@pytest.fixture(scope="module")
def version(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A finished version ``tiles/versions/v1``: 2 defect types × 5 pairs in 4 shards, one rejected row, the normal
    image of index 1 missing; plus what it was made with."""
    tmp = tmp_path_factory.mktemp("card")
    root = make_synthetic_version(
        tmp / "tiles" / "versions" / "v1",
        defect_types=("crack", "scratch"),
        n_per_defect=5,
        rows_per_part=3,
        mode="RGB",
        normals_root=tmp / "normals",
        success=False,
    )
    (tmp / "normals" / "widget" / "train" / "good" / "001.png").unlink()
    model, manifest = write_model_and_manifest(tmp)
    commits = shard_commits(root, REJECTED)
    stats = finish_version(str(root), commits, model, manifest)
    return {"root": root, "tmp": tmp, "model": model, "manifest": manifest, "commits": commits, "stats": stats}


def test_card_front_matter(version: dict) -> None:
    text = (version["root"] / CARD).read_text()
    assert text.startswith("---\n" + LICENSE_LINE + "\n")
    raw = text.split("---\n")[1]  # parsed here with yaml directly, as the Hub does
    meta = yaml.safe_load(raw)
    assert meta == parse_front_matter(text)
    assert meta["license"] == "unknown" and "#" in LICENSE_LINE  # left for the user, with the comment saying so
    assert meta["task_categories"] == ["image-segmentation"] and meta["size_categories"] == ["n<1K"]
    features = meta["dataset_info"]["features"]
    assert [f["name"] for f in features] == DATA_SCHEMA.names
    assert set(COLUMN_NOTES) == set(DATA_SCHEMA.names)  # every column is explained in the card's text
    dtypes = {f["name"]: f["dtype"] for f in features}
    assert dtypes["image"] == dtypes["mask"] == "image" and dtypes["width"] == "int32" and dtypes["seed"] == "int64"
    parts = sorted((version["root"] / "data").glob("part-*.parquet"))
    size = sum(p.stat().st_size for p in parts)
    assert meta["dataset_info"]["splits"] == [{"name": "train", "num_bytes": size, "num_examples": 10}]
    assert meta["configs"] == [
        {"config_name": "default", "data_files": [{"split": "train", "path": "data/part-*.parquet"}]}
    ]


@pytest.fixture
def offline_datasets(monkeypatch: pytest.MonkeyPatch):
    """The ``datasets`` module with every Hub access switched off."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import datasets
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return datasets


def test_datasets_loads_the_folder_through_the_card(version: dict, offline_datasets, tmp_path: Path) -> None:
    datasets, root = offline_datasets, version["root"]
    assert (root / "rejected" / "part-00001.parquet").is_file()  # other Parquet files the configs must leave out
    ds = datasets.load_dataset(str(root), split="train", cache_dir=str(tmp_path / "hf"))
    assert ds.num_rows == 10
    assert sorted(ds["sample_id"]) == sorted(f"widget__{d}__{i:06d}" for d in ("crack", "scratch") for i in range(5))
    assert type(ds.features["image"]).__name__ == "Image" and type(ds.features["mask"]).__name__ == "Image"
    assert ds.features["width"].dtype == "int32" and ds.features["mask_area"].dtype == "int64"
    assert ds[0]["image"].size == (40, 32) and ds[0]["mask"].size == (40, 32)
    # the same rows through the generic parquet loader with the card's features
    meta = parse_front_matter((root / CARD).read_text())
    features = datasets.Features._from_yaml_list(meta["dataset_info"]["features"])
    data_files = str(root / "data" / "part-*.parquet")
    generic = datasets.load_dataset(
        "parquet", data_files=data_files, features=features, split="train", cache_dir=str(tmp_path / "hf2")
    )
    assert generic.num_rows == 10 and generic.features == ds.features
    # the card's split count is checked by datasets: a wrong one fails the load
    bad = tmp_path / "bad"
    shutil.copytree(root, bad, ignore=shutil.ignore_patterns("images", "masks"))
    (bad / CARD).write_text((bad / CARD).read_text().replace("num_examples: 10", "num_examples: 11"))
    from datasets.exceptions import NonMatchingSplitsSizesError

    with pytest.raises(NonMatchingSplitsSizesError):
        datasets.load_dataset(str(bad), split="train", cache_dir=str(tmp_path / "hf3"))


def test_card_carries_provenance_counts_and_rejections(version: dict, tmp_path: Path) -> None:
    root = version["root"]
    body = (root / CARD).read_text().split("---\n", 2)[2]
    model_sha = hashlib.sha256((Path(version["model"]) / "model.json").read_bytes()).hexdigest()
    for row in (
        "| synthesis run id | synth-0123456789abcdef |",
        f"| content config SHA-256 | {'0123456789abcdef' * 4} |",
        "| generator | fast |",
        "| sampler | aias |",
        "| NFE (network evaluations per sample) | 10 |",
        f"| model URI | {version['model']} |",
        f"| model.json SHA-256 | {model_sha} |",
        f"| model training run | {MODEL_INFO['run_id']} |",
        f"| manifest | {version['manifest']} |",
        f"| manifest config SHA-256 | {'ab' * 32} |",
        "| job seed | 7 |",
        "| widget | crack | 5 | 1 |",
        "| widget | scratch | 5 | 0 |",
        "| input_unreadable | 1 |",
    ):
        assert row in body, row
    assert "![contact sheet" in body and "](preview.png)" in body
    assert re.search(r"1 source normal image\(s\) could not be read .*normals/widget/train/good/001\.png", body)
    stats = json.loads((root / "stats.json").read_text())
    assert stats["provenance"]["model"]["model_json_sha256"] == model_sha and stats["provenance"]["job_seed"] == 7
    # README.md, report.html and the sheet are there before _SUCCESS, which stays last
    mtimes = {name: (root / name).stat().st_mtime_ns for name in OUTPUTS}
    assert max(mtimes.values()) == mtimes["_SUCCESS"]


def test_report_html_in_headless_chromium(version: dict, tmp_path: Path) -> None:
    executable = find_chromium()
    if executable is None:
        pytest.fail("chromium is not installed: `apt-get install chromium` (.ci/run installs it when it is missing)")
    root = version["root"]
    broken = tmp_path / "broken"  # control: the same page without its contact sheet must be caught
    broken.mkdir()
    shutil.copy(root / REPORT, broken / REPORT)
    with HeadlessChromium(executable) as browser:
        report = browser.inspect((root / REPORT).as_uri())
        control = browser.inspect((broken / REPORT).as_uri())
    assert report.errors == [], report.errors
    with Image.open(root / "preview.png") as sheet:
        assert report.images == [("preview.png", True, sheet.width)]  # loaded and decoded at its own width
    assert report.title == "tiles / v1" and report.broken_images == []
    assert control.broken_images == ["preview.png"]
    assert any("ERR_FILE_NOT_FOUND" in e for e in control.errors), control.errors


@pytest.mark.s3
def test_outputs_on_s3_equal_the_local_ones(version: dict, s3_bucket) -> None:
    uri = storage.join(s3_bucket.uri, "tiles", "versions", "v1")
    storage.put_dir(version["root"], uri, s3_bucket.storage)
    for name in OUTPUTS:
        storage.remove(storage.join(uri, name), s3_bucket.storage)
    finish_version(uri, version["commits"], version["model"], version["manifest"], storage_cfg=s3_bucket.storage)
    for name in (CARD, REPORT, "preview.png"):
        remote = storage.read_bytes(storage.join(uri, name), s3_bucket.storage)
        assert remote == (version["root"] / name).read_bytes(), name
    assert storage.exists(storage.join(uri, "_SUCCESS"), s3_bucket.storage)
