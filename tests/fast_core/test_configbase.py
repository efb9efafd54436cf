"""Strict config round trips: unknown keys and bad values fail with their names."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from fast_core.configbase import check_choices, from_dict, to_dict


@dataclass(kw_only=True)
class Inner:
    nfe: int = 10  # network evaluations
    mode: Literal["exact", "release"] = "exact"
    window: tuple[int, int] = (250, 750)

    def __post_init__(self) -> None:
        check_choices(self)


@dataclass(kw_only=True)
class Outer:
    name: str = "run"
    scale: float = 1.0
    tags: list[str] = field(default_factory=list)
    inner: Inner = field(default_factory=Inner)
    path: str | None = None


def test_round_trip_preserves_every_field() -> None:
    cfg = Outer(name="x", scale=2.5, tags=["a"], inner=Inner(nfe=12, mode="release", window=(1, 2)), path="p")
    assert from_dict(Outer, to_dict(cfg)) == cfg
    assert to_dict(cfg)["inner"]["window"] == [1, 2]


def test_unknown_key_names_it_and_lists_valid_keys() -> None:
    with pytest.raises(ValueError, match=r"Outer.inner: unknown key\(s\) 'nfee'; valid keys: nfe, mode, window"):
        from_dict(Outer, {"inner": {"nfee": 3}})


def test_bad_choice_lists_valid_values() -> None:
    with pytest.raises(ValueError, match=r"Outer.inner.mode = 'fast' is not one of: 'exact', 'release'"):
        from_dict(Outer, {"inner": {"mode": "fast"}})
    with pytest.raises(ValueError, match="Inner.mode = 'fast'"):
        Inner(mode="fast")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"scale": "big"}, "Outer.scale: expected a number"),
        ({"inner": {"nfe": 2.5}}, "Outer.inner.nfe: expected an integer"),
        ({"inner": {"nfe": True}}, "Outer.inner.nfe: expected an integer"),
        ({"inner": {"window": [1, 2, 3]}}, "Outer.inner.window: expected 2 items"),
        ({"tags": "a"}, "Outer.tags: expected a list"),
        ({"inner": 5}, "Outer.inner: expected a mapping"),
    ],
)
def test_type_errors_name_the_field(data: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        from_dict(Outer, data)


def test_ints_widen_to_float_and_none_is_allowed_for_optionals() -> None:
    cfg = from_dict(Outer, {"scale": 3, "path": None})
    assert cfg.scale == 3.0 and isinstance(cfg.scale, float)
    assert cfg.path is None
