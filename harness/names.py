"""Names that become parts of paths (method, protocol, dataset, annotator and stage names end
up in run directories, evaluation records, checkpoints and caches): one safe path component
on every OS, no separator, no "..", no leading dot or dash (a hidden file, a command-line
option), nothing a shell must quote."""
from __future__ import annotations

import re

from harness.errors import HarnessError

NAME_RULE = "letters, digits and . _ - + only, starting with a letter or digit, at most 100 characters, no '..'"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")


def is_safe_name(name) -> bool:
    return isinstance(name, str) and _NAME.fullmatch(name) is not None and ".." not in name


def check_name(name, what: str = "name", use: str = "it becomes part of file and folder names") -> str:
    """``name`` when it is safe (see ``NAME_RULE``), else a HarnessError saying what is wrong,
    why it matters (``use``) and which characters are allowed."""
    if not isinstance(name, str):
        raise HarnessError(f"{what}={name!r} is a {type(name).__name__}; expected a string ({NAME_RULE})")
    if not is_safe_name(name):
        bad = sorted({c for c in name if not (c.isascii() and (c.isalnum() or c in "._+-"))})
        why = ("is empty" if not name else f"holds {' '.join(map(repr, bad))}" if bad else
               "holds '..'" if ".." in name else "is too long" if len(name) > 100 else
               f"starts with {name[0]!r}")
        raise HarnessError(f"{what}={name!r} {why}: {use}; use {NAME_RULE}")
    return name
