"""Typed config loading: YAML (``yaml.safe_load``) → dataclasses, ``--set a.b=value`` overrides, resolved dumps.

Unknown keys, in the file or in an override, fail before any work starts, naming the key and the valid ones
(see :func:`fast_core.configbase.from_dict`). Override values are parsed with ``yaml.safe_load``, so
``--set sampler.nfe=12`` gives an int and ``--set data.root=s3://b/x`` a string.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, TypeVar

import yaml

from fast_core.configbase import from_dict, to_dict

T = TypeVar("T")

RESOLVED_NAME = "config.resolved.yaml"


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into (["a", "b", "c"], parsed value)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"override {text!r} is not of the form key.path=value")
    path = key.strip().split(".")
    if any(not p for p in path):
        raise ValueError(f"override {text!r} has an empty key segment")
    return path, yaml.safe_load(raw) if raw.strip() else ""


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Return a copy of ``data`` with each ``key.path=value`` override set (intermediate mappings are created)."""
    out = copy.deepcopy(data)
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ValueError(f"override {text!r}: {part!r} is a value, not a section")
            node = child
        node[path[-1]] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Parse a YAML config file into a mapping (an empty file is an empty mapping)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{p}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{p}: the top level must be a mapping, got {type(data).__name__}")
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> T:
    """Load ``cls`` from an optional YAML file plus overrides; every error names the offending key."""
    data = read_yaml(path) if path is not None else {}
    data = apply_overrides(data, overrides)
    where = f"{Path(path).name}" if path is not None else cls.__name__
    return from_dict(cls, data, where)


# Field names whose values never reach a file or a log; "key" counts only beside a "secret" (an access key pair).
SECRET_FIELDS = frozenset({"secret", "password", "token", "secret_access_key"})
REDACTED = "***"


def redact(data: Any) -> Any:
    """A copy of plain config data with every secret value replaced by ``***`` (None stays None)."""
    if isinstance(data, list):
        return [redact(v) for v in data]
    if not isinstance(data, dict):
        return data
    paired = "secret" in data
    return {
        k: (REDACTED if v is not None and (k in SECRET_FIELDS or (paired and k == "key")) else redact(v))
        for k, v in data.items()
    }


def dump_config(cfg: Any) -> str:
    """The YAML text of a config dataclass, keys in field order, secrets redacted (see :func:`redact`)."""
    return yaml.safe_dump(redact(to_dict(cfg)), sort_keys=False)


def without_later_defaults(
    settings: dict[str, Any], later: dict[str, object], drop_all: bool = False
) -> dict[str, Any]:
    """``settings`` without the ``later`` fields (settings added after outputs were made) that are at their recorded
    default, or without all of them (``drop_all``): such outputs keep their fingerprint and still resume.

    >>> without_later_defaults({"nfe": 10, "jitter": 0.15}, {"jitter": 0.15})
    {'nfe': 10}
    """
    return {k: v for k, v in settings.items() if k not in later or not (drop_all or v == later[k])}
