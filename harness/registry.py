"""Plugin discovery: entry points -> pluggy -> one registry of named entries per kind."""
from __future__ import annotations

import functools
import importlib.metadata as md
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import pluggy

from harness import hookspecs
from harness.errors import HarnessError

# kind -> hook that registers it
KINDS = {
    "method": "harness_register_methods",
    "cam_source": "harness_register_cam_sources",
    "protocol": "harness_register_protocols",
    "dataset": "harness_register_datasets",
    "annotator": "harness_register_annotators",
}


@dataclass
class Entry:
    """A registered item. Plugins fill ``name``/``factory``/``description``/``config``;
    the registry fills ``kind``, ``plugin`` and ``distribution``."""

    name: str
    factory: Callable[..., Any] | None
    description: str
    config: str | Path | None = None
    aliases: tuple[str, ...] = ()
    kind: str = ""
    plugin: str = ""
    distribution: str = ""


@dataclass
class PluginFailure:
    plugin: str
    distribution: str
    error: str


@dataclass
class Registry:
    entries: dict[str, dict[str, Entry]] = field(default_factory=lambda: {k: {} for k in KINDS})
    failures: list[PluginFailure] = field(default_factory=list)

    def get(self, kind: str, name: str) -> Entry:
        table = self.entries[kind]
        if name in table:
            return table[name]
        for entry in table.values():
            if name in entry.aliases:
                return entry
        valid = ", ".join(self.names(kind)) or "(none registered)"
        hint = ""
        if self.failures:
            hint = " Some plugins failed to load (see `harness list`): " + ", ".join(
                f.plugin for f in self.failures
            )
        raise HarnessError(
            f"unknown {kind.replace('_', ' ')} {name!r}. Valid {kind.replace('_', ' ')}s: {valid}.{hint}"
        )

    def names(self, kind: str) -> list[str]:
        return sorted(self.entries[kind])

    def all_entries(self) -> Iterable[Entry]:
        for kind in KINDS:
            yield from (self.entries[kind][n] for n in self.names(kind))

    def add(self, entry: Entry) -> None:
        table = self.entries[entry.kind]
        clash = table.get(entry.name) or next(
            (e for e in table.values() if entry.name in e.aliases), None
        )
        if clash is not None:
            self.failures.append(
                PluginFailure(
                    entry.plugin,
                    entry.distribution,
                    f"{entry.kind} {entry.name!r} is already registered by plugin "
                    f"{clash.plugin!r} ({clash.distribution}); rename it to register it",
                )
            )
            return
        table[entry.name] = entry


def _distribution_of(ep: md.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return f"{dist.name} {dist.version}" if dist is not None else "?"


def _first_party_first(ep: md.EntryPoint) -> tuple[int, str]:
    dist = getattr(ep, "dist", None)
    return (0 if dist is not None and dist.name == "wsol-harness" else 1, ep.name)


def build_registry(plugins: Iterable[tuple[str, str, object]] = ()) -> Registry:
    """Load every plugin of the entry-point group, plus ``plugins`` given as
    ``(name, distribution, module_or_object)``. A plugin that fails to import, or whose
    hook raises, is recorded in ``failures`` and skipped."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    registry = Registry()
    dists: dict[str, str] = {}

    eps = sorted(md.entry_points(group=hookspecs.ENTRY_POINT_GROUP), key=_first_party_first)
    for ep in eps:
        dist = _distribution_of(ep)
        try:
            obj = ep.load()
            pm.register(obj, name=ep.name)
        except Exception as exc:  # a broken third-party plugin must not take the CLI down
            registry.failures.append(PluginFailure(ep.name, dist, _short_error(exc)))
            continue
        dists[ep.name] = dist
    for name, dist, obj in plugins:
        pm.register(obj, name=name)
        dists[name] = dist

    for kind, hook_name in KINDS.items():
        hook = getattr(pm.hook, hook_name)
        for impl in hook.get_hookimpls():  # registration order: first party first
            try:
                produced = impl.function() or []
            except Exception as exc:
                registry.failures.append(
                    PluginFailure(impl.plugin_name, dists.get(impl.plugin_name, "?"), _short_error(exc))
                )
                continue
            for entry in produced:
                entry.kind = kind
                entry.plugin = impl.plugin_name
                entry.distribution = dists.get(impl.plugin_name, "?")
                registry.add(entry)
    return registry


def _short_error(exc: BaseException) -> str:
    last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" (at {Path(last[0].filename).name}:{last[0].lineno})" if last else ""
    return f"{type(exc).__name__}: {exc}{where}"


@functools.lru_cache(maxsize=1)
def registry() -> Registry:
    """The process-wide registry (entry points are read once)."""
    return build_registry()
