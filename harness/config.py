"""Run configuration: harness base <- plugin defaults <- protocol preset <- dataset preset
<- command-line overrides, as one mmengine ``Config``.

The layered files define the schema: an override must name a key that exists there and
carry a value of the same type, otherwise the error names the key and the valid ones.
"""
from __future__ import annotations

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
    path = Path(path)
    if not path.is_file():
        raise HarnessError(f"config file {path} does not exist")
    try:
        return Config.fromfile(str(path)).to_dict()
    except Exception as exc:
        raise HarnessError(f"cannot read config file {path}: {exc}") from exc


Layer = "str | Path | Mapping[str, Any] | None"


def compose(method_config: Layer, protocol_config: Layer, dataset_config: Layer, overrides=None,
            defaults: Layer = None) -> Config:
    """Each layer is a config file or a dict of sections; ``defaults`` (e.g. every registered
    annotator's settings) goes right over the base, under the plugin."""
    cfg = read_file(BASE_CONFIG)
    for layer in (defaults, method_config, protocol_config, dataset_config):
        if layer is not None:
            cfg = merge(cfg, layer if isinstance(layer, Mapping) else read_file(layer))
    config = Config(cfg)
    if overrides:
        apply_overrides(config, overrides)
    return config


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


def apply_file(config: Config, path: str | Path) -> None:
    """An experiment file (e.g. a paper's settings): its keys override like --cfg-options,
    with the same checks (unknown keys and wrong types are errors naming the file)."""
    path = resolve_config_file(path)
    try:
        apply_overrides(config, flatten(read_file(path)))
    except HarnessError as exc:
        raise HarnessError(f"{path}: {exc}") from exc


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


def _check_type(key: str, current: Any, value: Any) -> None:
    if current is None or value is None:
        return  # None means "unset / optional": any value is accepted
    if isinstance(current, bool) or isinstance(value, bool):
        ok = isinstance(current, bool) and isinstance(value, bool)
    elif isinstance(current, float):
        ok = isinstance(value, (int, float))
    elif isinstance(current, (list, tuple)):
        ok = isinstance(value, (list, tuple))
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


def load_run_config(run_dir: str | Path) -> Config:
    path = Path(run_dir) / "config.py"
    if not path.is_file():
        raise HarnessError(
            f"{run_dir} is not a run directory (no config.py in it); pass the directory "
            f"printed by `harness run`"
        )
    return Config(read_file(path))
