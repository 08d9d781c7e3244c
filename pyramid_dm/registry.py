"""Registries: the one mechanism by which a variant (a sampler, a schedule, a layout, a network, ...) is named.

A :class:`Registry` maps the names used in YAML, on the command line and in checkpoints to parts of one kind. Adding
a variant is one function or class plus one ``REGISTRY.register("name", part)`` (or ``@REGISTRY.register("name")``);
nothing else dispatches on the name. A registry reads as a mapping (``name in SAMPLERS``, ``sorted(SAMPLERS)``,
``SAMPLERS[name]``), and an unknown name is a ``KeyError`` (a ``ValueError`` from :meth:`Registry.lookup`) that lists
the known ones.

**Plug-ins.** A user's own parts live in the user's own modules: the module registers them when imported, and
:func:`load_plugins` imports the modules named in ``PYRAMID_DM_PLUGINS`` (comma-separated module names, importable
from the working directory or ``PYTHONPATH``), which every ``python -m pyramid_dm`` command does first. A module
named in a checkpoint or a config is never imported on its own: the names stay plain names, so a checkpoint that uses
a plug-in asks for the plug-in by name ("unknown sampler 'mine'"), and the user decides what to import.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

from .errors import UserError

T = TypeVar("T")
PLUGINS_ENV = "PYRAMID_DM_PLUGINS"


class Registry(Mapping[str, T], Generic[T]):
    """Named parts of one ``kind`` ("sampler", "schedule", ...)."""

    def __init__(self, kind: str, parts: Mapping[str, T] | None = None):
        self.kind = kind
        self._parts: dict[str, T] = {}
        for name, part in (parts or {}).items():
            self.register(name, part)

    def register(self, name: str, part: T | None = None, *, replace: bool = False):
        """Register ``part`` as ``name`` (returns it), or, without ``part``, a decorator that does. A name taken by
        another part is an error unless ``replace``."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} name must be a non-empty string, got {name!r}")

        def add(obj: T) -> T:
            old = self._parts.get(name)
            if old is not None and old is not obj and not replace:
                raise ValueError(f"{self.kind} {name!r} is registered already ({old!r}); pass replace=True to override")
            self._parts[name] = obj
            return obj

        return add if part is None else add(part)

    def lookup(self, name: str) -> T:
        """The part named ``name``; an unknown name is a ValueError listing the known ones."""
        try:
            return self._parts[name]
        except (KeyError, TypeError):
            raise ValueError(self.unknown(name)) from None

    def unknown(self, name) -> str:
        """The message for an unknown ``name``."""
        return (
            f"unknown {self.kind} {name!r}; choose one of {sorted(self._parts)} (your own {self.kind}s: register them "
            f"in a module named in {PLUGINS_ENV}, see docs/architecture.md)"
        )

    def __getitem__(self, name: str) -> T:
        try:
            return self._parts[name]
        except (KeyError, TypeError):
            raise KeyError(self.unknown(name)) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._parts)

    def __len__(self) -> int:
        return len(self._parts)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {sorted(self._parts)})"


def load_plugins(modules: str | None = None, importer: Callable[[str], object] = importlib.import_module) -> list[str]:
    """Import the plug-in modules named in ``modules`` (default: the ``PYRAMID_DM_PLUGINS`` variable; comma-separated),
    so that they register their parts; the working directory is importable, as for ``python -m``. Returns the names
    imported. A module that cannot be imported is a UserError naming it and the variable."""
    spec = os.environ.get(PLUGINS_ENV, "") if modules is None else modules
    names = [m.strip() for m in spec.split(",") if m.strip()]
    if names and "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for name in names:
        try:
            importer(name)
        except ImportError as exc:
            raise UserError(f"{PLUGINS_ENV}: cannot import plug-in module {name!r} ({exc})") from exc
    return names
