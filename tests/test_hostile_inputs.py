"""Hostile inputs at the public entry points: each gives a clear one-line error or a per-row reason; nothing is lost.

Two classes of answer:

* **fail fast**: a config or input problem stops the command before any work, with one line that names the problem
  (``fastgen`` exits 2 and prints it on stderr);
* **per-row reason**: a problem with one file or row is recorded with its reason, and the job goes on with the rest
  (``fastgen inspect`` reports every problem, the manifest writer lists skipped masks in ``manifest.json``, the
  synthesis load stage turns a row into a rejection); every input is accounted for.

The cases, with their class and the reason asserted (entry points: ``fastgen inspect``, ``fast_core.data`` loaders,
the manifest writer and reader, the synthesis load stage, config loading, storage, model loading):

1. truncated PNG: per-row reason: inspect ``unreadable`` "image file is truncated"; synthesis ``input_unreadable``.
   ``load_image`` fails fast with "<path>: cannot decode image (OSError: image file is truncated)".
2. 16-bit PNG: per-row reason: inspect ``unusual_mode`` "image mode I;16"; synthesis ``input_unreadable`` "is not
   8-bit" (it used to be clipped to 8 bits silently). ``load_image`` fails fast with "is not 8-bit".
3. CMYK JPEG: per-row reason: inspect ``unusual_mode`` "image mode CMYK"; ``load_image`` without a target mode fails
   fast with "needs an explicit mode" (with ``mode="RGB"`` it is converted, as documented).
4. palette PNG: per-row reason: inspect ``unusual_mode`` "image mode P"; ``load_image`` as for CMYK.
5. image/mask size mismatch: per-row reason: inspect ``size_mismatch`` "mask is 6x6, image 000.png is 10x8".
6. non-binary mask: per-row reason: inspect ``mask_not_binary`` "mask is not binary" (the manifest writer and
   synthesis binarize masks by their documented thresholds).
7. empty mask: per-row reason: inspect ``empty_mask``; manifest writer skip "empty"; synthesis ``mask_empty``.
8. missing mask: per-row reason: inspect ``missing_mask``; manifest writer skip "mask_missing".
9. mask for a missing image: per-row reason: inspect ``stray_mask`` "mask without an image"; a manifest row whose
   image is gone: synthesis ``input_unreadable`` "No such file".
10. 20000 x 20000 "image bomb" header: refused before decoding. Per-row reason: inspect ``unreadable``
    "DecompressionBombError"; manifest writer skip and synthesis ``input_unreadable`` / ``mask_unreadable``
    "refused before decoding". ``load_image`` / ``load_mask`` fail fast with "refused before decoding" (Pillow's
    ``DecompressionBombError`` used to escape every caller and stop the job).
11. config with an unknown key: fail fast: "unknown key(s) 'colour'; valid keys: ..." (a non-string YAML key too; it
    used to crash with a ``TypeError``).
12. config with a wrong type: fail fast: "counts.default: expected an integer, got 'many'"; a non-string key where
    a string is due: "expected a string" (it used to crash with an ``AttributeError``).
13. unreachable S3 endpoint (a closed loopback port): fail fast: ``StorageConnectionError`` "S3 endpoint
    http://127.0.0.1:<port> unreachable or failing after N attempt(s)".
14. wrong S3 credentials (the session's SeaweedFS behind a second S3 gateway that checks keys): fail fast:
    ``StoragePermissionError`` "access denied by S3 endpoint ...; check the access key"; the secret is never shown.
15. weights that are a pickle carrying code: fail fast, never executed (a marker file its ``__reduce__`` would create
    never appears): "is not a valid safetensors file" (FAST weights), "holds only pickled PyTorch weights" (base
    model), "refused, not a plain state dict of tensors" (the ``.pth`` loader, ``torch.load(weights_only=True)``).
16. manifest row pointing outside the dataset root: fail fast: ``read_manifest`` "row 0 (sample_id ...): image_uri
    ... is outside the manifest's sources" (such rows used to be read).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import shutil
import signal
import socket
import struct
import subprocess
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from fast_core.data.layout import load_image, load_mask
from jobs.cli import main
from pipelines import storage
from pipelines.manifest import MANIFEST_FILE, MANIFEST_SCHEMA, read_manifest, table_to_parquet, write_manifest
from pipelines.manifest_config import ManifestConfig, ManifestCountsConfig, ManifestDatasetConfig
from pipelines.model_store import load_model
from pipelines.s3server import SeaweedS3Server, find_weed_binary
from pipelines.storage import StorageConfig, StorageConnectionError, StoragePermissionError
from pipelines.synthesize.stages import load_inputs
from tests.helpers.dummy_data import (
    add_stray_mask,
    convert_mode,
    delete_mask,
    make_dummy_mvtec,
    resize_mask,
    truncate_file,
    write_empty_mask,
    write_non_binary_mask,
)
from tests.helpers.tiny_models import publish_tiny_model

SECRET = "wrong-secret-Zq81-never-print-me"


# ---------------------------------------------------------------- hostile files
def bomb_png(width: int = 20_000, height: int = 20_000) -> bytes:
    """A 69-byte PNG whose header claims ``width`` x ``height`` 8-bit grey pixels (400 MB for the default)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


class CodeCarrier:
    """Unpickling this runs ``open(marker, "w")``: the file appears only if a loader executed pickled code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny MVTec dataset (8 x 10 images) holding one of each hostile file, plus handles on them.

    train/good: 000 truncated, 001 16-bit, 002 palette, 003.jpg CMYK, 004 bomb header, 005 fine.
    test/scratch (18 images, gen-train = 000-005): masks 000 wrong size, 001 non-binary, 002 empty, 003 missing,
    004 truncated, 005 bomb header; ground_truth/scratch/099_mask.png has no image.
    """
    root = make_dummy_mvtec(
        tmp_path_factory.mktemp("hostile") / "data", n_good=6, n_test_good=1, defects={"scratch": 18}, size=(8, 10)
    )
    cat = root / "widget"
    good, gt = cat / "train" / "good", cat / "ground_truth" / "scratch"
    truncate_file(good / "000.png")
    convert_mode(good / "001.png", "I;16")
    convert_mode(good / "002.png", "P")
    (good / "003.png").unlink()
    Image.new("CMYK", (10, 8), (10, 20, 30, 40)).save(good / "003.jpg")
    (good / "004.png").write_bytes(bomb_png())
    resize_mask(gt / "000_mask.png", (6, 6))
    write_non_binary_mask(gt / "001_mask.png")
    write_empty_mask(gt / "002_mask.png")
    delete_mask(gt / "003_mask.png")
    truncate_file(gt / "004_mask.png")
    (gt / "005_mask.png").write_bytes(bomb_png())
    add_stray_mask(cat, "scratch", "099", (8, 10))
    return {"root": root, "good": good, "gt": gt, "test": cat / "test"}


def one_line(text: str) -> str:
    """``text`` stripped, after checking that it is a single line."""
    assert "\n" not in text.strip(), f"not one line: {text!r}"
    return text.strip()


# ---------------------------------------------------------------- fastgen inspect: a per-row reason for every file
def test_inspect_reports_every_hostile_file(hostile: dict[str, Path], tmp_path: Path, capsys) -> None:
    report_path = tmp_path / "report.json"
    assert main(["inspect", str(hostile["root"]), "--json", str(report_path)]) == 1  # problems found, job done
    printed = capsys.readouterr().out
    report = json.loads(report_path.read_text())
    found = {
        (Path(p["path"]).relative_to(hostile["root"] / "widget").as_posix(), p["kind"]): p for p in report["problems"]
    }
    expected = {
        ("train/good/000.png", "unreadable"): "cannot decode image: OSError: image file is truncated",
        ("train/good/001.png", "unusual_mode"): "image mode I;16; expected one of L, RGB",
        ("train/good/002.png", "unusual_mode"): "image mode P; expected one of L, RGB",
        ("train/good/003.jpg", "unusual_mode"): "image mode CMYK; expected one of L, RGB",
        ("train/good/004.png", "unreadable"): "DecompressionBombError: Image size (400000000 pixels) exceeds limit",
        ("ground_truth/scratch/000_mask.png", "size_mismatch"): "mask is 6x6, image 000.png is 10x8 (width x height)",
        ("ground_truth/scratch/001_mask.png", "mask_not_binary"): "mask is not binary: 10 distinct values",
        ("ground_truth/scratch/002_mask.png", "empty_mask"): "mask of anomaly image 002.png is empty (all zero)",
        ("test/scratch/003.png", "missing_mask"): "anomaly image has no ground-truth mask",
        ("ground_truth/scratch/004_mask.png", "unreadable"): "cannot decode mask",
        ("ground_truth/scratch/005_mask.png", "unreadable"): "DecompressionBombError",
        ("ground_truth/scratch/099_mask.png", "stray_mask"): "mask without an image (no test/scratch/099.<ext>)",
    }
    assert set(found) == set(expected)
    for key, reason in expected.items():
        assert reason in found[key]["message"], key
        assert found[key]["severity"] == "error"
    # one line per problem, each naming its file; nothing lost: every image is counted, the bad ones included
    lines = [line for line in printed.splitlines() if line.startswith("ERROR")]
    assert len(lines) == len(expected) and all(str(hostile["root"]) in line for line in lines)
    counts = {(g["split"], g["defect_type"]): g["images"] for g in report["groups"]}
    assert counts == {("train", "good"): 6, ("test", "good"): 1, ("test", "scratch"): 18}


# ---------------------------------------------------------------- fast_core.data loaders: fail fast, naming the file
def test_loaders_fail_fast_naming_the_file(hostile: dict[str, Path]) -> None:
    good, gt = hostile["good"], hostile["gt"]
    cases = [
        (lambda: load_image(good / "000.png", "RGB"), "000.png: cannot decode image (OSError: image file is truncated"),
        (lambda: load_image(good / "001.png", "RGB"), "001.png: image mode I;16 is not 8-bit"),
        (lambda: load_image(good / "002.png"), "002.png: image mode P needs an explicit mode='L' or mode='RGB'"),
        (lambda: load_image(good / "003.jpg"), "003.jpg: image mode CMYK needs an explicit mode='L' or mode='RGB'"),
        (lambda: load_image(good / "004.png", "L"), "004.png: image refused before decoding: Image size (400000000"),
        (lambda: load_mask(gt / "005_mask.png"), "005_mask.png: mask refused before decoding"),
        (lambda: load_mask(gt / "004_mask.png"), "004_mask.png: cannot decode mask"),
    ]
    for load, reason in cases:
        with pytest.raises(ValueError) as info:
            load()
        assert reason in one_line(str(info.value))
    assert load_image(good / "003.jpg", "RGB").shape == (8, 10, 3)  # an explicit mode converts CMYK and P
    assert load_image(good / "002.png", "L").shape == (8, 10)
    with pytest.raises(FileNotFoundError):
        load_image(good / "absent.png")


# ---------------------------------------------------------------- manifest writer: skipped masks, with reasons
def test_manifest_writer_records_skipped_masks(hostile: dict[str, Path], tmp_path: Path) -> None:
    cfg = ManifestConfig(
        dataset=ManifestDatasetConfig(root=str(hostile["root"])),
        counts=ManifestCountsConfig(default=6),
        model_uri="tests://tiny",
        out=str(tmp_path / "manifest"),
    )
    result = write_manifest(cfg)
    skipped = {s["mask_source"]: s["reason"] for s in result.summary["skipped_masks"]}
    assert skipped["real:002_mask"] == "empty"
    assert skipped["real:003"] == "mask_missing"
    assert (
        skipped["real:004_mask"].startswith("unreadable: ")
        and "004_mask.png: cannot decode mask" in skipped["real:004_mask"]
    )
    assert "005_mask.png: mask refused before decoding" in skipped["real:005_mask"]
    assert all("\n" not in reason for reason in skipped.values())
    # nothing lost: the six gen-train masks are either used or skipped with a reason
    assert result.summary["keys"]["widget/scratch"]["masks_used"] + len(skipped) == 6
    assert result.rows == 6 and read_manifest(cfg.out).num_rows == 6


# ---------------------------------------------------------------- synthesis load stage: one rejection per bad row
def test_synthesis_load_rejects_bad_rows_and_keeps_the_rest(hostile: dict[str, Path]) -> None:
    good, gt, test = hostile["good"], hostile["gt"], hostile["test"]
    image, mask = str(test / "good" / "000.png"), str(gt / "010_mask.png")
    cases = [  # (image, mask, status, detail)
        (image, mask, "", ""),
        (str(good / "000.png"), mask, "input_unreadable", "image file is truncated"),
        (str(good / "001.png"), mask, "input_unreadable", "image mode I;16 is not 8-bit"),
        (str(good / "002.png"), mask, "", ""),  # palette: converted to the model's RGB
        (str(good / "003.jpg"), mask, "", ""),  # CMYK: converted to the model's RGB
        (str(good / "004.png"), mask, "input_unreadable", "image refused before decoding"),
        (str(good / "gone.png"), mask, "input_unreadable", "No such file"),
        (image, str(gt / "002_mask.png"), "mask_empty", "has no anomaly pixel"),
        (image, str(gt / "004_mask.png"), "mask_unreadable", "no image format Pillow can identify"),
        (image, str(gt / "005_mask.png"), "mask_unreadable", "image refused before decoding"),
    ]
    rows = [
        {
            "sample_id": f"widget__scratch__{i:06d}",
            "category": "widget",
            "defect_type": "scratch",
            "image_uri": image_uri,
            "mask_uri": mask_uri,
            "mask_png": None,
            "mask_source": "real:x",
            "prompt": "widget/scratch",
            "seed": i,
            "model_uri": "tests://tiny",
        }
        for i, (image_uri, mask_uri, _, _) in enumerate(cases)
    ]
    pending = pa.table({"sample_id": [r["sample_id"] for r in rows], "row": range(len(rows)), "shard": [0] * len(rows)})
    out = load_inputs(
        pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA),
        pending=pending,
        image_size=16,
        image_channels=3,
        keys=["good", "widget/scratch"],
    )
    assert len(out["status"]) == len(cases)  # nothing lost: every row comes out, as a pair or as a rejection
    for i, (image_uri, mask_uri, status, detail) in enumerate(cases):
        assert out["status"][i] == status, (i, out["detail"][i])
        assert detail in one_line(out["detail"][i]), i
        if status in ("input_unreadable", "mask_unreadable"):  # the detail names the file at fault
            assert out["detail"][i].startswith(image_uri if status == "input_unreadable" else mask_uri), i


# ---------------------------------------------------------------- manifest reader: rows outside the dataset
def test_manifest_row_outside_the_dataset_root_is_refused(hostile: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "manifest"
    write_manifest(
        ManifestConfig(
            dataset=ManifestDatasetConfig(root=str(hostile["root"])),
            counts=ManifestCountsConfig(default=3),
            model_uri="tests://tiny",
            out=str(out),
        )
    )
    good = read_manifest(str(out))
    outside = tmp_path / "private.png"
    Image.new("L", (10, 8)).save(outside)
    escape = f"{hostile['root']}/widget/../../private.png"  # lexically under the root, really outside
    for column, value in (("image_uri", str(outside)), ("image_uri", escape), ("mask_uri", "/etc/hostname")):
        values = good[column].to_pylist()
        values[1] = value
        table = good.set_column(good.column_names.index(column), column, pa.array(values, pa.string()))
        (out / MANIFEST_FILE).write_bytes(table_to_parquet(table))
        with pytest.raises(ValueError) as info:
            read_manifest(str(out))
        message = one_line(str(info.value))
        assert f"row 1 (sample_id 'widget__scratch__000001'): {column} {value!r} is outside the manifest's" in message


# ---------------------------------------------------------------- config loading: fail fast, one line
@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("colour: red\nmodel_uri: m\n", "unknown key(s) 'colour'; valid keys: dataset, masks, counts, job_seed"),
        ("1: x\nbogus: 2\n", "unknown key(s) 1, 'bogus'; valid keys:"),
        ("counts: {default: many}\n", "bad.yaml.counts.default: expected an integer, got 'many'"),
        ("counts: {per_key: {1: 3}}\n", "bad.yaml.counts.per_key key 1: expected a string, got 1"),
        ("counts: 5\n", "bad.yaml.counts: expected a mapping of keys to values, got int"),
    ],
)
def test_bad_config_fails_fast_with_one_line(text: str, reason: str, tmp_path: Path, capsys) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    assert main(["manifest", "--config", str(config), "--out", str(tmp_path / "out")]) == 2
    err = one_line(capsys.readouterr().err)
    assert err.startswith("fastgen manifest: error: ") and reason in err
    assert not (tmp_path / "out").exists()  # nothing was started


# ---------------------------------------------------------------- storage: unreachable endpoint, wrong credentials
def _free_port() -> int:
    """A loopback port nothing listens on now (bound once to learn a free one, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_s3_endpoint_fails_fast(
    hostile: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    endpoint = f"http://127.0.0.1:{_free_port()}"
    cfg = StorageConfig(endpoint_url=endpoint, key="any", secret=SECRET, retries=2, backoff_s=0.05)
    for op in (
        lambda: storage.read_bytes("s3://bkt/x.bin", cfg),
        lambda: storage.write_bytes_atomic("s3://bkt/x", b"1", cfg),
    ):
        with pytest.raises(StorageConnectionError) as info:
            op()
        message = one_line(str(info.value))
        assert f"S3 endpoint {endpoint} unreachable or failing after 2 attempt(s)" in message and SECRET not in message
    # the same through a command: one line on stderr, exit 2, nothing written
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "any")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    args = ["manifest", "--set", f"dataset.root={json.dumps(str(hostile['root']))}", "--set", "model_uri=m"]
    args += ["--set", "masks.source=shards", "--set", "masks.shards_uri=s3://bkt/masks", "--set", "storage.retries=1"]
    assert main([*args, "--out", str(tmp_path / "out")]) == 2
    err = one_line(capsys.readouterr().err)
    assert f"cannot check s3://bkt/masks/_SUCCESS: S3 endpoint {endpoint} unreachable" in err and SECRET not in err
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def checking_gateway(s3_server: SeaweedS3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second S3 gateway (``weed s3``) on the session server's filer, with one identity: it checks credentials.

    The session server itself runs without identities and accepts any key, so wrong keys are only refused here; both
    gateways serve the same buckets. Yields the gateway's endpoint; the gateway process is stopped afterwards.
    """
    folder = tmp_path_factory.mktemp("s3gateway")
    identity = {"name": "fastgen", "credentials": [{"accessKey": "fastgen", "secretKey": "fastgen-local"}]}
    (folder / "s3.json").write_text(json.dumps({"identities": [{**identity, "actions": ["Admin"]}]}))
    port, grpc = _free_port(), _free_port()
    filer = f"127.0.0.1:{s3_server.ports['filer']}.{s3_server.ports['filer_grpc']}"
    args = [str(find_weed_binary()), "s3", f"-filer={filer}", f"-port={port}", f"-port.grpc={grpc}"]
    args += ["-port.iceberg=0", "-port.lance=0", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-iam=false"]
    args += [f"-config={folder / 's3.json'}", f"-localSocket={folder / 's3.sock'}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    with open(folder / "weed-s3.log", "wb") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=folder, env=env, start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.build_opener(urllib.request.ProxyHandler({})).open(endpoint, timeout=1).close()
                break
            except urllib.error.HTTPError:
                break  # an S3 error answer: the gateway is serving
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, (folder / "weed-s3.log").read_text()[-2000:]
                time.sleep(0.05)
        yield endpoint
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.s3
def test_wrong_s3_credentials_fail_fast(s3_bucket, checking_gateway: str) -> None:
    uri = storage.join(s3_bucket.uri, "data.bin")
    storage.write_bytes_atomic(uri, b"rows", s3_bucket.storage)
    right = StorageConfig(endpoint_url=checking_gateway, key="fastgen", secret="fastgen-local", retries=1)
    assert storage.read_bytes(uri, right) == b"rows"  # the gateway serves the session's bucket to the right key
    for key in ("fastgen", "nobody"):  # a wrong secret, an unknown key
        wrong = StorageConfig(endpoint_url=checking_gateway, key=key, secret=SECRET, retries=1)
        for op, args in ((storage.read_bytes, (uri, wrong)), (storage.write_bytes_atomic, (uri, b"x", wrong))):
            with pytest.raises(StoragePermissionError) as info:
                op(*args)
            message = one_line(str(info.value))
            assert f"access denied by S3 endpoint {checking_gateway}" in message
            assert "check the access key (storage.key / AWS_ACCESS_KEY_ID)" in message and SECRET not in message
    assert storage.read_bytes(uri, right) == b"rows"  # the refused write changed nothing


# ---------------------------------------------------------------- model loading: pickled weights never run
def test_pickled_weights_are_refused_and_never_executed(tmp_path: Path) -> None:
    marker, control = tmp_path / "EXECUTED", tmp_path / "CONTROL"
    pickle.loads(pickle.dumps(CodeCarrier(control)))  # the payload is live: plain unpickling runs it
    assert control.exists()
    model = Path(publish_tiny_model(str(tmp_path / "model")))

    fast = tmp_path / "fast-pickled"
    shutil.copytree(model, fast)
    (fast / "fast" / "fast.safetensors").write_bytes(pickle.dumps({"farm.weight": CodeCarrier(marker)}))
    with pytest.raises(ValueError) as info:
        load_model(str(fast))
    assert "fast/fast.safetensors is not a valid safetensors file" in one_line(str(info.value))

    base = tmp_path / "base-pickled"
    shutil.copytree(model, base)
    unet = base / "base" / "unet"
    (unet / "diffusion_pytorch_model.safetensors").unlink()
    torch.save({"conv_in.weight": CodeCarrier(marker)}, unet / "diffusion_pytorch_model.bin")
    with pytest.raises(ValueError) as info:
        load_model(str(base))
    message = one_line(str(info.value))
    assert "base/unet holds only pickled PyTorch weights (diffusion_pytorch_model.bin)" in message
    assert "never unpickles weights" in message
    assert not marker.exists()


def test_pickled_pth_weights_are_refused_and_never_executed(tmp_path: Path) -> None:
    from fast_core.segmentation.efficientnet import EfficientNetLite0Encoder, load_pretrained

    marker = tmp_path / "EXECUTED"
    torch.save({"stem.weight": CodeCarrier(marker)}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="evil.pth: refused, not a plain state dict of tensors"):
        load_pretrained(EfficientNetLite0Encoder(), tmp_path / "evil.pth")
    assert not marker.exists()


def test_bomb_header_is_tiny_and_refused_before_decoding() -> None:
    """The bomb fixture is what it claims: a 69-byte file whose header says 20000 x 20000."""
    data = bomb_png()
    assert len(data) < 100
    with pytest.raises(Image.DecompressionBombError), Image.open(io.BytesIO(data)):
        pass
    assert np.prod(struct.unpack(">II", data[16:24])) == 400_000_000
