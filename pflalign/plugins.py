"""User plug-ins: an algorithm, model or dataset from the user's own package, without editing pflalign.

A registry value is either a registered name or an import path ``package.module:attribute``.
Names are the built-ins plus the entry points installed in this Python (groups
``pflalign.algorithms``, ``pflalign.models``, ``pflalign.datasets``), found the first time a
registry is used and imported only when one is used. Import paths and entry points go through
the registry's own ``check``, so a plug-in is validated exactly like a built-in.

A built-in name always means the built-in: an entry point that reuses one is ignored with a
warning (installing a package never changes what an existing config runs), as is a name two
packages register differently (ambiguous: use the import path). Every process resolves names
itself (the CLI, Ray's driver and worker actors, Tune trials, ``compare`` workers), so the user's
package must be importable in each: installed, or on ``PYTHONPATH``.
"""
from __future__ import annotations

import difflib
import hashlib
import importlib
import inspect
import re
import warnings
from collections.abc import MutableMapping
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, TypeVar

from .errors import ConfigError, InputError

T = TypeVar("T")
_IDENT = r"[A-Za-z_]\w*"
IMPORT_PATH = re.compile(rf"{_IDENT}(\.{_IDENT})*:{_IDENT}(\.{_IDENT})*")


def is_import_path(value: str) -> bool:
    """``package.module:attribute`` (a colon marks it: registry names never have one)."""
    return ":" in value


def short_name(value: str) -> str:
    """A name fit for run directories, W&B ids and tags: the attribute of an import path."""
    return value.rpartition(":")[2].rpartition(".")[2] if is_import_path(value) else value


def import_object(where: str, path: str) -> Any:
    """The object ``path`` names; a path that names nothing is one ConfigError line.

    An exception raised by the user's module itself (a bug, a missing dependency of theirs)
    propagates with its traceback: it is their code's failure, not bad input.
    """
    if not IMPORT_PATH.fullmatch(path):
        raise ConfigError(f"{where}: expected an import path package.module:attribute, got {path!r}")
    module_name, _, attrs = path.partition(":")
    try:
        obj = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is None or not (module_name == e.name or module_name.startswith(e.name + ".")):
            raise
        raise ConfigError(f"{where}: no module named {e.name} (install its package, or add its "
                          f"directory to PYTHONPATH)") from None
    parts = attrs.split(".")
    for i, attr in enumerate(parts):
        if not hasattr(obj, attr):
            owner = f"module {module_name}" if i == 0 else f"{module_name}:{'.'.join(parts[:i])}"
            raise ConfigError(f"{where}: {owner} has no attribute {attr}")
        obj = getattr(obj, attr)
    return obj


def what(obj: Any) -> str:
    """How an error line names an object of the wrong kind."""
    if inspect.isclass(obj):
        return f"class {obj.__module__}.{obj.__qualname__}"
    if inspect.isroutine(obj):
        return f"function {getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', obj)}"
    return f"a {type(obj).__name__} object"


@lru_cache(maxsize=None)
def _distributions() -> Mapping[str, list[str]]:
    return metadata.packages_distributions()


def fingerprint(obj: Any) -> dict[str, str]:
    """Where a user's function comes from, for cache keys: ``module:qualname``, the version of
    the distribution that installs its top-level package, and a sha256 of its module's source
    file. Editing that file or upgrading the package changes it; editing another module it
    imports, or a file it reads, does not."""
    obj = inspect.unwrap(obj)
    module_name = getattr(obj, "__module__", None) or type(obj).__module__
    out = {"origin": f"{module_name}:{getattr(obj, '__qualname__', type(obj).__qualname__)}"}
    dists = sorted(set(_distributions().get(module_name.partition(".")[0], [])))
    out["version"] = ",".join(f"{d}=={metadata.version(d)}" for d in dists)
    try:
        out["source_sha256"] = hashlib.sha256(Path(inspect.getsourcefile(obj) or "").read_bytes()).hexdigest()
    except (TypeError, OSError):  # built in C, or made at run time: origin and version must do
        pass
    return out


class Registry(MutableMapping[str, T]):
    """Name -> object: the built-ins, then the ``group`` entry points (discovered on first use,
    each imported and checked when first looked up). ``resolve`` also takes import paths.

    ``check(obj, where)`` returns the object if it is of the right kind, else raises a
    ConfigError that starts with ``where`` (``algorithm=...``); ``example`` completes the
    "choose from" hint (``package.module:Class``); ``unknown`` is the error of an unknown name.
    """

    def __init__(self, key: str, group: str, builtins: Mapping[str, T], check: Callable[[Any, str], T],
                 example: str, unknown: type[InputError] = ConfigError):
        self.key, self.group, self.check, self.example, self.unknown = key, group, check, example, unknown
        self._builtins = dict(builtins)
        self._items: dict[str, Any] | None = None  # EntryPoint until loaded

    def refresh(self) -> None:
        """Forget the entry points found so far (a package was installed or sys.path changed)."""
        self._items = None

    def is_builtin(self, name: str) -> bool:
        return name in self._builtins

    def _all(self) -> dict[str, Any]:
        if self._items is None:
            self._items = {**self._builtins, **self._discover()}
        return self._items

    def _discover(self) -> dict[str, metadata.EntryPoint]:
        by_name: dict[str, dict[str, metadata.EntryPoint]] = {}
        for ep in metadata.entry_points(group=self.group):
            by_name.setdefault(ep.name, {})[ep.value] = ep
        found = {}
        for name, eps in by_name.items():
            sources = "; ".join(f"{ep.value} of {_dist(ep)}" for ep in eps.values())
            if name in self._builtins:
                warnings.warn(f"{self.group} entry point {name!r} ({sources}) ignored: {name} is built in; "
                              f"name the plug-in by its import path", stacklevel=2)
            elif len(eps) > 1:
                warnings.warn(f"{self.group} entry point {name!r} is registered differently by several "
                              f"packages ({sources}): ignored; name the plug-in by its import path", stacklevel=2)
            else:
                found[name] = next(iter(eps.values()))
        return found

    def __getitem__(self, name: str) -> T:
        items = self._all()
        value = items[name]
        if isinstance(value, metadata.EntryPoint):
            path = f"{value.module}:{value.attr}"  # without [extras]
            where = f"{self.key}={name} (entry point {path} of {_dist(value)})"
            value = items[name] = self.check(import_object(where, path), where)
        return value

    def __setitem__(self, name: str, value: T) -> None:
        self._all()[name] = value

    def __delitem__(self, name: str) -> None:
        del self._all()[name]

    def __contains__(self, name: object) -> bool:  # a name, without importing its plug-in
        return name in self._all()

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())

    def resolve(self, value: str) -> T:
        """The object a config value names: an import path, a built-in or a plug-in name."""
        if is_import_path(value):
            where = f"{self.key}={value}"
            return self.check(import_object(where, value), where)
        if self._items is None and value in self._builtins:
            return self._builtins[value]  # no entry-point scan for runs of built-ins
        if value in self:
            return self[value]
        close = difflib.get_close_matches(value, list(self), n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise self.unknown(f"unknown {self.key} '{value}' ({hint}choose from {', '.join(self)}, "
                           f"or name your own as {self.example})")


def _dist(ep: metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return f"package {dist.name}" if dist is not None else "an unnamed package"
