"""Config dataclass helpers shared by every component: choice checks and strict dict round trips.

Every component owns one ``@dataclass(kw_only=True)`` config whose string choices are ``Literal[...]`` and whose
``__post_init__`` calls :func:`check_choices`. :func:`from_dict` builds a config from plain data (parsed YAML or a
checkpoint's ``config.json``) and rejects unknown keys by name, listing the valid ones. Pure Python: no YAML here.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

T = TypeVar("T")

_NONE_TYPE = type(None)


def _literal_choices(tp: Any) -> tuple[Any, ...] | None:
    """The allowed values of a ``Literal[...]`` (or ``Literal[...] | None``) annotation, else None."""
    if get_origin(tp) is Literal:
        return get_args(tp)
    if get_origin(tp) in (Union, types.UnionType):
        for arg in get_args(tp):
            if get_origin(arg) is Literal:
                return get_args(arg) + ((None,) if _NONE_TYPE in get_args(tp) else ())
    return None


def check_choice(where: str, value: Any, choices: Any) -> None:
    """Raise ``ValueError`` when ``value`` is not one of ``choices`` (a ``Literal[...]`` alias or a tuple of values).

    >>> check_choice("AIASScheduler.spacing", "cubic", Literal["uniform", "quadratic"])
    Traceback (most recent call last):
    ...
    ValueError: AIASScheduler.spacing = 'cubic' is not one of: 'uniform', 'quadratic'
    """
    valid = get_args(choices) if get_origin(choices) is Literal else tuple(choices)
    if value not in valid:
        raise ValueError(f"{where} = {value!r} is not one of: {', '.join(repr(c) for c in valid)}")


def check_choices(cfg: Any) -> None:
    """Raise ``ValueError`` when a ``Literal``-typed field of the dataclass ``cfg`` holds a value outside its choices.

    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class C:
    ...     mode: Literal["a", "b"] = "a"
    >>> check_choices(C(mode="c"))
    Traceback (most recent call last):
    ...
    ValueError: C.mode = 'c' is not one of: 'a', 'b'
    """
    hints = get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        choices = _literal_choices(hints[f.name])
        if choices is not None:
            check_choice(f"{type(cfg).__name__}.{f.name}", getattr(cfg, f.name), choices)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain nested dict of the dataclass ``cfg`` (tuples become lists, so it serialises to YAML/JSON)."""

    def plain(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [plain(x) for x in v]
        return v

    return plain(dataclasses.asdict(cfg))


def _convert(tp: Any, value: Any, where: str) -> Any:
    """Convert parsed data ``value`` to the annotation ``tp``, or raise ``ValueError`` naming ``where``."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if _NONE_TYPE in args:
                return None
            raise ValueError(f"{where}: null is not allowed")
        errors = []
        for arg in args:
            if arg is _NONE_TYPE:
                continue
            try:
                return _convert(arg, value, where)
            except (ValueError, TypeError) as exc:
                errors.append(str(exc))
        raise ValueError(f"{where}: {value!r} does not match {tp} ({'; '.join(errors)})")
    if origin is Literal:
        if value not in get_args(tp):
            valid = ", ".join(repr(c) for c in get_args(tp))
            raise ValueError(f"{where} = {value!r} is not one of: {valid}")
        return value
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return from_dict(tp, value, where)
    if origin in (list, tuple, typing.Sequence) or tp in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ValueError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
        item = args[0] if args else Any
        items = [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple or tp is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping, got {value!r}")
        kt, vt = get_args(tp) or (Any, Any)
        return {_convert(kt, k, f"{where} key {k!r}"): _convert(vt, v, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: Any, where: str | None = None) -> T:
    """Build the dataclass ``cls`` from a mapping, recursively; unknown keys are an error that names them.

    >>> from dataclasses import dataclass
    >>> @dataclass(kw_only=True)
    ... class Sampler:
    ...     nfe: int = 10
    >>> from_dict(Sampler, {"nfe": 12})
    Sampler(nfe=12)
    >>> from_dict(Sampler, {"nfee": 12})
    Traceback (most recent call last):
    ...
    ValueError: Sampler: unknown key(s) 'nfee'; valid keys: nfe
    """
    where = where or cls.__name__
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping of keys to values, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields), key=str)  # YAML keys need not be strings (``1: x``)
    if unknown:
        raise ValueError(
            f"{where}: unknown key(s) {', '.join(repr(k) for k in unknown)}; valid keys: {', '.join(fields)}"
        )
    hints = get_type_hints(cls)
    kwargs = {name: _convert(hints[name], value, f"{where}.{name}") for name, value in data.items()}
    return cls(**kwargs)
