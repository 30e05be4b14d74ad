"""Run configuration: harness base <- plugin defaults <- protocol preset <- dataset preset
<- command-line overrides, as one mmengine ``Config``.

The layered files define the schema: an override must name a key that exists there and
carry a value of the same type, otherwise the error names the key and the valid ones.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

from mmengine.config import Config

from harness.errors import HarnessError

BASE_CONFIG = Path(__file__).parent / "configs" / "base.py"

# Keys that name the components of a run; they are set by the CLI flags, not by overrides.
_RESERVED = {"method.name": "--plugin", "protocol.name": "--protocol", "data.name": "--dataset"}
# Sections a preset replaces whole rather than merging into (each dataset has its own keys).
_REPLACED_SECTIONS = {"data", "protocol"}


def read_file(path: str | Path) -> dict:
    """A config file as a dict. ``.py`` files are programs (mmengine configs) and run as such;
    JSON and YAML files are data: they are parsed with ``json`` and ``yaml.safe_load``, never
    with mmengine's YAML loader, which builds arbitrary Python objects (``!!python/...`` tags)."""
    path = Path(path)
    if not path.is_file():
        raise HarnessError(f"config file {path} does not exist")
    try:
        if path.suffix in (".yaml", ".yml", ".json"):
            import json

            import yaml

            text = path.read_text(encoding="utf-8")
            data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
            if not isinstance(data, dict):
                raise ValueError(f"the file holds a {type(data).__name__}, not a mapping of sections")
            return data
        return Config.fromfile(str(path)).to_dict()
    except (Exception, SystemExit) as exc:  # a .py config is a program: it may raise, or exit
        why = f"it called sys.exit({exc.code!r})" if isinstance(exc, SystemExit) else f"{type(exc).__name__}: {exc}"
        raise HarnessError(f"cannot read config file {path}: {' '.join(why.split())}") from exc


Layer = "str | Path | Mapping[str, Any] | None"


def layer_dict(layer: Layer) -> dict:
    """A config layer as a dict: a file is read, a mapping copied, None is empty; a registry
    entry gives its own config (:meth:`harness.registry.Entry.layer`)."""
    if layer is None:
        return {}
    if hasattr(layer, "layer") and callable(layer.layer):
        return layer.layer()
    if callable(layer):  # a registry entry's lazily computed config
        layer = layer()
    return dict(layer) if isinstance(layer, Mapping) else read_file(layer)


def compose(method_config: Layer, protocol_config: Layer, dataset_config: Layer, overrides=None,
            defaults: Layer = None, method_name: str = "the plugin") -> Config:
    """Each layer is a config file or a dict of sections; ``defaults`` (e.g. every registered
    annotator's settings) goes right over the base, under the plugin. The plugin's defaults are
    checked against the harness's sections as ``--cfg-options`` are: a plugin may add sections
    of its own, but a typo inside a harness section (``classifier = dict(epoch=1)``) is an
    error, not a silently different run."""
    cfg = read_file(BASE_CONFIG)
    if defaults is not None:
        cfg = merge(cfg, layer_dict(defaults))
    method_layer = layer_dict(method_config)
    where = getattr(method_config, "config", method_config)
    check_layer(cfg, method_layer, f"{method_name}'s default config"
                + (f" ({where})" if isinstance(where, (str, Path)) else ""))
    cfg = merge(cfg, method_layer)
    for layer in (protocol_config, dataset_config):
        if layer is not None:
            cfg = merge(cfg, layer_dict(layer))
    config = Config(cfg)
    if overrides:
        apply_overrides(config, overrides)
    return config


def check_layer(base: Mapping, layer: Mapping, what: str) -> None:
    """Every key ``layer`` sets inside a section ``base`` already has must exist there, with a
    value of the same type (new top-level sections are the layer's own)."""
    for section, value in layer.items():
        if section not in base or section in _REPLACED_SECTIONS:
            continue
        if isinstance(base[section], Mapping) and isinstance(value, Mapping):
            flat = flatten(value, section + ".") if value else {}
        else:
            flat = {section: value}
        try:
            for dotted, v in flat.items():
                _check_type(dotted, _lookup(base, dotted), v)
        except HarnessError as exc:
            raise HarnessError(f"{what}: {exc}") from exc


def unflatten(flat: Mapping[str, Any]) -> dict:
    """``{'a.b': 1}`` -> ``{'a': {'b': 1}}`` (the inverse of :func:`flatten`)."""
    out: dict = {}
    for dotted, value in flat.items():
        node = out
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def merge(base: dict, layer: Mapping[str, Any]) -> dict:
    """Deep merge ``layer`` into a copy of ``base``; sections in ``_REPLACED_SECTIONS`` and
    non-dict values are replaced."""
    out = dict(base)
    for key, value in layer.items():
        if key in _REPLACED_SECTIONS or not (isinstance(value, Mapping) and isinstance(out.get(key), Mapping)):
            out[key] = value
        else:
            out[key] = _deep_merge(out[key], value)
    return out


def _deep_merge(a: Mapping, b: Mapping) -> dict:
    out = dict(a)
    for key, value in b.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{'a': {'b': 1}}`` -> ``{'a.b': 1}`` (lists and other values are leaves)."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


PAPER_CONFIGS = Path(__file__).parent / "configs" / "papers"


def resolve_config_file(name: str | Path) -> Path:
    """A path, or the name of a shipped experiment file in harness/configs/papers/."""
    path = Path(name)
    if path.is_file():
        return path
    shipped = PAPER_CONFIGS / f"{Path(name).stem}.py"
    if shipped.is_file():
        return shipped
    known = sorted(p.stem for p in PAPER_CONFIGS.glob("*.py") if not p.name.startswith("_"))
    raise HarnessError(f"config file {name} does not exist (shipped experiment files: {', '.join(known)})")


def file_overrides(path: str | Path) -> dict[str, Any]:
    """The dotted keys an experiment file sets."""
    return flatten(read_file(resolve_config_file(path)))


def apply_file(config: Config, path: str | Path) -> None:
    """An experiment file (e.g. a paper's settings): its keys override like --cfg-options,
    with the same checks (unknown keys and wrong types are errors naming the file)."""
    path = resolve_config_file(path)
    try:
        apply_overrides(config, flatten(read_file(path)))
    except HarnessError as exc:
        raise HarnessError(f"{path}: {exc}") from exc


# Ranges by the last part of a key, wherever it sits (classifier.lr, method.decoder.lr,
# annotators.cam-pg.classifier.lr, ...): checked when the config is composed, so a bad value
# fails before any data is generated or any epoch trained. (test, what it must be)
_RANGES: dict[str, tuple[Any, str]] = {
    "lr": (lambda v: 0 < v <= 100, "a number in (0, 100]"),
    "epochs": (lambda v: isinstance(v, int) and 1 <= v <= 100_000, "a whole number >= 1"),
    "batch_size": (lambda v: isinstance(v, int) and 1 <= v <= 65_536, "a whole number in [1, 65536]"),
    "eval_batch_size": (lambda v: isinstance(v, int) and 1 <= v <= 65_536, "a whole number in [1, 65536]"),
    "num_workers": (lambda v: isinstance(v, int) and 0 <= v <= 64, "a whole number in [0, 64]"),
    "weight_decay": (lambda v: 0 <= v <= 100, "a number in [0, 100]"),
    "momentum": (lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    "lr_decay": (lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "lr_decay_epochs": (lambda v: isinstance(v, int) and v >= 1, "a whole number >= 1"),
    "seed": (lambda v: isinstance(v, int) and 0 <= v < 2**63, "a whole number >= 0"),
}


def check_values(config: Config | Mapping) -> None:
    """Range checks of the known numeric settings (see ``_RANGES``); None means unset."""
    flat = flatten(config.to_dict() if hasattr(config, "to_dict") else config)
    for dotted, value in flat.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise HarnessError(f"config key {dotted!r} = {value!r}: give a finite number")
        rule = _RANGES.get(dotted.rsplit(".", 1)[-1])
        if rule is None or value is None or isinstance(value, (Mapping, list, tuple, str)):
            continue
        ok, what = rule
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or not ok(value):
            raise HarnessError(f"config key {dotted!r} = {value!r} is out of range: it must be {what}")


def apply_overrides(config: Config, overrides: Mapping[str, Any]) -> None:
    """Validate ``a.b.c=value`` overrides against ``config`` and apply them in place."""
    for dotted, value in overrides.items():
        if dotted in _RESERVED:
            raise HarnessError(f"config key {dotted!r} is set with the {_RESERVED[dotted]} flag, not --cfg-options")
        current = _lookup(config.to_dict(), dotted)
        _check_type(dotted, current, value)
    config.merge_from_dict(dict(overrides))


def _lookup(config: Mapping, dotted: str) -> Any:
    node: Any = config
    walked: list[str] = []
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            where = ".".join(walked) or "the top level"
            valid = sorted(node.keys()) if isinstance(node, Mapping) else []
            raise HarnessError(
                f"unknown config key {dotted!r}: no {part!r} under {where}. "
                f"Valid keys there: {', '.join(valid) if valid else '(none: it is not a section)'}"
            )
        node = node[part]
        walked.append(part)
    return node


# Settings whose default is a value but that take None too (by the last part of the key):
# classifier.feature_index=None means "the encoder's last stage".
_NULLABLE = {"feature_index"}


def _check_type(key: str, current: Any, value: Any) -> None:
    if current is None:
        return  # an unset, optional setting: any value is accepted
    if value is None:
        if key.rsplit(".", 1)[-1] in _NULLABLE:
            return
        raise HarnessError(f"config key {key!r} cannot be None: it expects {type(current).__name__} "
                           f"(default {current!r})")
    if isinstance(current, bool) or isinstance(value, bool):
        ok = isinstance(current, bool) and isinstance(value, bool)
    elif isinstance(current, float):
        ok = isinstance(value, (int, float))
    elif isinstance(current, (list, tuple)):
        # a list of numbers (IoU levels, ...) stays a list of numbers
        numbers = current and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in current)
        ok = isinstance(value, (list, tuple)) and (not numbers or all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value))
    elif isinstance(current, Mapping):
        ok = isinstance(value, Mapping)
    else:
        ok = isinstance(value, type(current))
    if not ok:
        raise HarnessError(
            f"config key {key!r} expects {type(current).__name__} (default {current!r}), "
            f"got {type(value).__name__} {value!r}"
        )


def dump_text(config: Config) -> str:
    return config.pretty_text


def read_literal_config(path: str | Path) -> dict:
    """A config ``.py`` file that holds data only, read without running it: ``key = value``
    lines whose values are literals, ``dict(...)``, lists and tuples (what the harness writes
    as a run's ``config.py``). Anything else is refused, so a crafted run directory cannot run
    code on ``harness eval``, ``run --resume`` or ``report``."""
    import ast

    path = Path(path)
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (OSError, UnicodeDecodeError, SyntaxError, ValueError, RecursionError) as exc:
        raise HarnessError(f"{path} cannot be read ({type(exc).__name__}: {exc})") from exc

    def value(node):
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [value(e) for e in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.Dict) and None not in node.keys:
            return {value(k): value(v) for k, v in zip(node.keys, node.values)}
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)) \
                and isinstance(node.operand, ast.Constant) and isinstance(node.operand.value, (int, float)):
            return -node.operand.value if isinstance(node.op, ast.USub) else node.operand.value
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict" \
                and len(node.args) <= 1 and all(k.arg is not None for k in node.keywords):
            out = dict(value(node.args[0])) if node.args else {}
            out.update({k.arg: value(k.value) for k in node.keywords})
            return out
        raise HarnessError(f"{path}:{getattr(node, 'lineno', '?')}: {type(node).__name__} is not data; a run's "
                           f"config.py holds literal values only (it is read, never executed)")

    out = {}
    try:
        for stmt in tree.body:
            if not (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name)):
                raise HarnessError(f"{path}:{stmt.lineno}: only `name = value` lines are allowed in a run's config.py "
                                   f"(it is read, never executed)")
            out[stmt.targets[0].id] = value(stmt.value)
    except (RecursionError, TypeError) as exc:  # absurd nesting, an unhashable key
        raise HarnessError(f"{path} is not a run config: {type(exc).__name__}: {exc}") from exc
    return out


# What every run config must have, beyond the keys of the base sections.
_RUN_KEYS = {"method": "name", "data": "name", "protocol": "name"}
# Base keys added after runs were made, with the value that gives those runs' behaviour: a run
# directory whose config lacks one reads as that value.
_ADDED_KEYS = {("loader", "train_frames_per_shot"): 0}


def load_run_config(run_dir: str | Path) -> Config:
    """A run directory's ``config.py``, read as data and checked against the harness schema."""
    path = Path(run_dir) / "config.py"
    if not path.is_file():
        raise HarnessError(
            f"{run_dir} is not a run directory (no config.py in it); pass the directory "
            f"printed by `harness run`"
        )
    data = read_literal_config(path)
    base = read_file(BASE_CONFIG)
    for section, key in _RUN_KEYS.items():
        if not isinstance(data.get(section), dict) or not isinstance(data[section].get(key), str):
            raise HarnessError(f"{path} is not a run config: no {section}.{key}")
    for name, default in base.items():
        if name == "annotators":
            continue  # a run from before annotators had settings in the config
        if name not in data:
            raise HarnessError(f"{path} is not a complete run config: no {name!r}")
        if isinstance(default, Mapping):
            if not isinstance(data[name], Mapping):
                raise HarnessError(f"{path}: {name} is a {type(data[name]).__name__}, not a section")
            for (section, key), value in _ADDED_KEYS.items():
                if section == name:
                    data[name].setdefault(key, value)
            if name != "classifier":  # a method without a classifier stage may leave it as it is
                lost = [k for k in default if k not in data[name]]
                if lost:
                    raise HarnessError(f"{path} is not a complete run config: no {name}.{lost[0]}")
    try:
        check_layer(base, {k: v for k, v in data.items() if k != "annotators"}, "the run config")
        check_values(data)
    except HarnessError as exc:
        raise HarnessError(f"{path}: {exc}") from exc
    return Config(data)
