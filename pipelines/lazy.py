"""A package's public names imported on first use (PEP 562), so that importing one light submodule does not import
what the package's heavy names need.

Ray task workers import a stage function's module, and with it every package ``__init__`` above it, before their first
block: a package whose ``__init__`` imports its driver-side ``run`` module would make each fresh worker import torch
and diffusers for a stage that needs neither.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, homes: Mapping[str, str]) -> Callable[[str], Any]:
    """The module ``__getattr__`` of ``package``: name ``n`` in ``homes`` is ``getattr(import_module(homes[n]), n)``,
    imported at its first use; any other name raises AttributeError as for a plain module."""

    def __getattr__(name: str) -> Any:
        if name not in homes:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(homes[name]), name)

    return __getattr__
