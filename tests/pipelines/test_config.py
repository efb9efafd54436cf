"""YAML config loading with overrides; errors name the offending key."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from pipelines.config import apply_overrides, dump_config, load_config, parse_override


@dataclass(kw_only=True)
class Sampler:
    nfe: int = 10
    root: str = "data"


@dataclass(kw_only=True)
class Job:
    seed: int = 0
    sampler: Sampler = field(default_factory=Sampler)


def test_load_file_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("seed: 3\nsampler:\n  nfe: 20\n")
    cfg = load_config(Job, path, ["sampler.nfe=12", "sampler.root=s3://bucket/x"])
    assert cfg == Job(seed=3, sampler=Sampler(nfe=12, root="s3://bucket/x"))


def test_unknown_key_in_file_names_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("sampler:\n  steps: 20\n")
    with pytest.raises(ValueError, match=r"job.yaml.sampler: unknown key\(s\) 'steps'; valid keys: nfe, root"):
        load_config(Job, path)


def test_unknown_override_key_fails() -> None:
    with pytest.raises(ValueError, match=r"unknown key\(s\) 'sed'"):
        load_config(Job, None, ["sed=1"])


@pytest.mark.parametrize("bad", ["nfe", "=3", "a..b=1"])
def test_malformed_override(bad: str) -> None:
    with pytest.raises(ValueError, match="override"):
        parse_override(bad)


def test_override_into_a_value_is_an_error() -> None:
    with pytest.raises(ValueError, match="'seed' is a value, not a section"):
        apply_overrides({"seed": 1}, ["seed.x=2"])


def test_missing_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_config(Job, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: [1,\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(Job, bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="top level must be a mapping"):
        load_config(Job, listing)


def test_dump_round_trips() -> None:
    cfg = Job(seed=5, sampler=Sampler(nfe=7))
    assert load_config(Job, None, [f"{k}={v}" for k, v in [("seed", 5), ("sampler.nfe", 7)]]) == cfg
    assert yaml.safe_load(dump_config(cfg)) == {"seed": 5, "sampler": {"nfe": 7, "root": "data"}}


def test_dump_redacts_secrets() -> None:
    @dataclass(kw_only=True)
    class Storage:
        endpoint_url: str | None = None
        key: str | None = None
        secret: str | None = None

    @dataclass(kw_only=True)
    class WithStorage:
        storage: Storage = field(default_factory=Storage)
        key: str = "magnetic_tile/crack"  # a plain field named "key" outside a credential pair is kept

    text = dump_config(WithStorage(storage=Storage(endpoint_url="http://127.0.0.1:1", key="AKIA1", secret="s3cr3t!")))
    assert "s3cr3t" not in text and "AKIA1" not in text
    data = yaml.safe_load(text)
    assert data["storage"] == {"endpoint_url": "http://127.0.0.1:1", "key": "***", "secret": "***"}
    assert data["key"] == "magnetic_tile/crack"
