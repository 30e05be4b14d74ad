"""Plugin discovery: entry points -> pluggy -> one registry of named entries per kind.

A broken plugin is reported and skipped, never fatal (pytest's rule): an import error, a hook
that raises, a hook that returns something other than a list of :class:`Entry`, an entry
whose fields are of the wrong kind, a name already taken. A hook whose name is misspelled,
or a module that registers nothing (its functions lack ``@hookimpl``), gets a warning.
``harness list`` shows both, with the distribution each came from.
"""
from __future__ import annotations

import difflib
import functools
import importlib.metadata as md
import inspect
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import pluggy

from harness import hookspecs, names
from harness.errors import HarnessError

# kind -> hook that registers it
KINDS = {
    "method": "harness_register_methods",
    "cam_source": "harness_register_cam_sources",
    "protocol": "harness_register_protocols",
    "dataset": "harness_register_datasets",
    "annotator": "harness_register_annotators",
}

class Lazy:
    """A factory named by ``"module:attribute"`` and imported on first call, so registering
    (and ``harness list``) imports no model code: ``Entry("x", lazy("pkg.mod:Cls"), ...)``."""

    def __init__(self, target: str):
        if ":" not in target:
            raise ValueError(f"lazy({target!r}): give 'module:attribute'")
        self.target = target
        self._obj = None

    def resolve(self) -> Any:
        if self._obj is None:
            import importlib

            module, _, attr = self.target.partition(":")
            try:
                obj = importlib.import_module(module)
                for part in attr.split("."):
                    obj = getattr(obj, part)
            except (Exception, SystemExit) as exc:  # the plugin's module is broken, not the harness
                raise HarnessError(f"lazy({self.target!r}) cannot be imported: {_short_error(exc)}") from exc
            self._obj = obj
        return self._obj

    def __call__(self, *args, **kwargs):
        return self.resolve()(*args, **kwargs)

    def __eq__(self, other) -> bool:
        return isinstance(other, Lazy) and other.target == self.target

    def __hash__(self) -> int:
        return hash(self.target)

    def __repr__(self) -> str:
        return f"lazy({self.target!r})"


def lazy(target: str) -> Lazy:
    return Lazy(target)


@dataclass
class Entry:
    """A registered item. Plugins fill ``name``/``factory``/``description``/``config``;
    the registry fills ``kind``, ``plugin`` and ``distribution``."""

    name: str
    factory: Callable[..., Any] | None
    description: str
    # a config file, a dict of sections, or a function returning one (called when a run needs it)
    config: str | Path | Mapping | Callable[[], Mapping] | None = None
    aliases: tuple[str, ...] = ()
    kind: str = ""
    plugin: str = ""
    distribution: str = ""
    source_path: str = ""  # where the registering module lives (its git revision, if any)

    def layer(self) -> dict:
        """The entry's config as a dict of sections (a file is read, a function called)."""
        from harness.config import layer_dict

        try:
            config = self.config() if callable(self.config) else self.config
        except HarnessError:
            raise
        except Exception as exc:  # a plugin's config function may raise anything
            raise HarnessError(f"{self.kind} {self.name!r} ({self.distribution}): its config function failed: "
                               f"{type(exc).__name__}: {exc}") from exc
        if config is not None and not isinstance(config, (str, Path, Mapping)):
            raise HarnessError(f"{self.kind} {self.name!r} ({self.distribution}): its config is a "
                               f"{type(config).__name__}, not a file or a dict of sections")
        layer = layer_dict(config)
        if not isinstance(layer, dict):
            raise HarnessError(f"{self.kind} {self.name!r} ({self.distribution}): its config is a "
                               f"{type(layer).__name__}, not a dict of sections")
        return layer

    def option_defaults(self) -> dict:
        """A CAM source's options and their defaults: its ``config`` when given, else the keyword
        defaults of its factory (they become ``method.options`` of a run)."""
        if self.config is not None:
            return self.layer()
        factory = self.factory.resolve() if isinstance(self.factory, Lazy) else self.factory
        try:
            params = inspect.signature(factory).parameters.values()
        except (TypeError, ValueError):
            return {}
        return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty
                and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


@dataclass
class PluginFailure:
    plugin: str
    distribution: str
    error: str


@dataclass
class Registry:
    entries: dict[str, dict[str, Entry]] = field(default_factory=lambda: {k: {} for k in KINDS})
    failures: list[PluginFailure] = field(default_factory=list)  # skipped: what they registered is missing
    warnings: list[PluginFailure] = field(default_factory=list)  # loaded, but something is likely wrong

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
                dict.fromkeys(f.plugin for f in self.failures)
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
        for name in (entry.name, *entry.aliases):
            clash = table.get(name) or next((e for e in table.values() if name in e.aliases), None)
            if clash is not None:
                self.failures.append(PluginFailure(
                    entry.plugin, entry.distribution,
                    f"{entry.kind} {name!r} is already registered by plugin {clash.plugin!r} "
                    f"({clash.distribution}); rename it to register it"))
                return
        table[entry.name] = entry


def entry_problem(entry: Any, kind: str) -> str | None:
    """Why ``entry`` (one item a ``kind`` hook returned) cannot be registered, or None."""
    if not isinstance(entry, Entry):
        return f"returned a {type(entry).__name__} ({entry!r:.60}), not a harness.registry.Entry"
    try:
        names.check_name(entry.name, f"{kind.replace('_', ' ')} name")
        for alias in entry.aliases if isinstance(entry.aliases, (list, tuple)) else [entry.aliases]:
            names.check_name(alias, f"alias of {entry.name!r}")
    except HarnessError as exc:
        return str(exc)
    if not isinstance(entry.aliases, (list, tuple)):
        return f"{entry.name!r}: aliases must be a tuple of names, got {type(entry.aliases).__name__}"
    if kind == "protocol":
        if entry.config is None:
            return f"protocol {entry.name!r} has no config (the file or dict with its protocol = dict(...))"
    elif not callable(entry.factory):
        return f"{kind.replace('_', ' ')} {entry.name!r}: factory must be callable, got {type(entry.factory).__name__}"
    if not isinstance(entry.description, str):
        return f"{entry.name!r}: description must be a string, got {type(entry.description).__name__}"
    if entry.config is not None and not isinstance(entry.config, (str, Path, Mapping)) and not callable(entry.config):
        return (f"{entry.name!r}: config must be a file path, a dict or a function returning a dict, "
                f"got {type(entry.config).__name__}")
    if isinstance(entry.config, (str, Path)) and not Path(entry.config).is_file():
        return f"{entry.name!r}: config file {entry.config} does not exist (ship it as package data)"
    return None


def _distribution_of(ep: md.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return f"{dist.name} {dist.version}" if dist is not None else "?"


def _first_party_first(ep: md.EntryPoint) -> tuple[int, str]:
    dist = getattr(ep, "dist", None)
    return (0 if dist is not None and dist.name == "wsol-harness" else 1, ep.name)


def _source_path(obj: object) -> str:
    try:
        return str(Path(inspect.getfile(obj)).resolve().parent) if inspect.ismodule(obj) else \
            str(Path(inspect.getfile(type(obj))).resolve().parent)
    except (TypeError, OSError):
        return ""


def build_registry(plugins: Iterable[tuple[str, str, object]] = ()) -> Registry:
    """Load every plugin of the entry-point group, plus ``plugins`` given as
    ``(name, distribution, module_or_object)``. What a broken plugin registers is skipped
    and the plugin recorded in ``failures``; see the module docstring."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    registry = Registry()
    dists: dict[str, str] = {}
    paths: dict[str, str] = {}
    objects: dict[str, object] = {}

    eps = sorted(md.entry_points(group=hookspecs.ENTRY_POINT_GROUP), key=_first_party_first)
    loaded = []
    for ep in eps:
        dist = _distribution_of(ep)
        try:
            loaded.append((ep.name, dist, ep.load()))
        except (Exception, SystemExit) as exc:  # a broken third-party plugin must not take the CLI down
            registry.failures.append(PluginFailure(ep.name, dist, _short_error(exc)))
    for name, dist, obj in [*loaded, *plugins]:
        try:
            pm.register(obj, name=name)
        except Exception as exc:  # e.g. a hook with arguments its spec does not have
            registry.failures.append(PluginFailure(name, dist, _short_error(exc)))
            continue
        dists[name], paths[name], objects[name] = dist, _source_path(obj), obj

    _check_hook_names(pm, dists, registry)
    for kind, hook_name in KINDS.items():
        hook = getattr(pm.hook, hook_name)
        for impl in hook.get_hookimpls():  # registration order: first party first
            name = impl.plugin_name
            who = dists.get(name, "?")
            try:
                produced = impl.function()
            except (Exception, SystemExit) as exc:
                registry.failures.append(PluginFailure(name, who, f"{hook_name}: {_short_error(exc)}"))
                continue
            if produced is None:
                continue
            if isinstance(produced, Entry) or not isinstance(produced, (list, tuple)):
                registry.failures.append(PluginFailure(
                    name, who, f"{hook_name} returned a {type(produced).__name__}, not a list of Entry: "
                               f"return [Entry(...), ...]"))
                continue
            for n, entry in enumerate(produced):
                problem = entry_problem(entry, kind)
                if problem:
                    registry.failures.append(PluginFailure(name, who, f"{hook_name} item {n}: {problem}; skipped"))
                    continue
                entry.aliases = tuple(entry.aliases)
                entry.kind, entry.plugin, entry.distribution = kind, name, who
                entry.source_path = paths.get(name, "")
                registry.add(entry)
    for name, obj in objects.items():
        if not pm.get_hookcallers(obj):
            unmarked = [f for f in (*KINDS.values(),) if callable(getattr(obj, f, None))]
            why = (f"{', '.join(unmarked)} lack the @hookimpl decorator (from harness.hookspecs import hookimpl)"
                   if unmarked else "it implements no harness_register_* hook with @hookimpl")
            registry.warnings.append(PluginFailure(name, dists[name], f"registers nothing: {why}"))
    return registry


def _check_hook_names(pm: pluggy.PluginManager, dists: dict[str, str], registry: Registry) -> None:
    """What pluggy's ``check_pending()`` would raise on, reported per plugin: a hook
    implementation whose name matches no specification (a typo) is never called."""
    try:
        pm.check_pending()
        return
    except pluggy.PluginValidationError:
        pass
    for hook_name in dir(pm.hook):
        caller = getattr(pm.hook, hook_name)
        if hook_name.startswith("_") or not isinstance(caller, pluggy.HookCaller) or caller.has_spec():
            continue
        for impl in caller.get_hookimpls():
            if impl.optionalhook:
                continue
            close = difflib.get_close_matches(hook_name, list(KINDS.values()), n=1)
            hint = f"; did you mean {close[0]}?" if close else f"; the hooks are {', '.join(KINDS.values())}"
            registry.warnings.append(PluginFailure(
                impl.plugin_name, dists.get(impl.plugin_name, "?"),
                f"implements {hook_name!r}, which is not a harness hook, so it is never called{hint}"))


def _short_error(exc: BaseException) -> str:
    last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" (at {Path(last[0].filename).name}:{last[0].lineno})" if last else ""
    text = f"called sys.exit({exc.code!r})" if isinstance(exc, SystemExit) else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split()) + where


@functools.lru_cache(maxsize=1)
def registry() -> Registry:
    """The process-wide registry (entry points are read once)."""
    return build_registry()
