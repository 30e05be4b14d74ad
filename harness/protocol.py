"""A protocol is data: how the epoch and the CAM threshold are chosen, on what supervision.

The axes are those of the realistic-protocol chapter (Murtaza's thesis, ch. 4): selection
supervision, selection split, threshold source and threshold scope. Presets live in
``protocols/`` as a few lines of config each.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

from harness import names
from harness.errors import HarnessError

_CHOICES = {
    "supervision": ("gt", "cls", "pseudo:<annotator>"),
    "selection_split": ("val", "test"),
    "threshold_source": ("val", "test", "otsu"),
    "threshold_scope": ("global", "per-class"),
    "select_metric": ("corloc", "mean_iou"),
}


@dataclass(frozen=True)
class Protocol:
    name: str
    description: str = ""
    supervision: str = "gt"  # what the selection is scored with on the selection split
    selection_split: str = "val"  # BV (val) or BT (test, the unrealistic practice)
    threshold_source: str = "val"  # VT, TT, or OT (Otsu per map)
    threshold_scope: str = "global"  # one tau for all classes, or one per class
    select_metric: str = "corloc"
    aliases: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, d: Mapping[str, Any]) -> "Protocol":
        if not isinstance(d, Mapping):
            raise HarnessError(f"a protocol is a dict(name=..., supervision=..., ...), "
                               f"got {type(d).__name__} {d!r:.60}")
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise HarnessError(
                f"unknown protocol key(s) {sorted(unknown)}; valid keys: {', '.join(sorted(known))}"
            )
        if "name" not in d:
            raise HarnessError("a protocol needs a `name`")
        values = dict(d)
        aliases = values.get("aliases", ())
        # tuple("x") would be ('x',) by luck and tuple("xy") two aliases: a string is refused
        if not isinstance(aliases, (list, tuple)):
            raise HarnessError(f"protocol {values['name']!r}: aliases={aliases!r} ({type(aliases).__name__}) must be a "
                               f"list of names, e.g. aliases=[{str(aliases)!r}]")
        values["aliases"] = tuple(aliases)
        proto = cls(**values)
        proto.validate()
        return proto

    def validate(self) -> None:
        self._check_types()
        check_name(self.name)
        for alias in self.aliases:
            check_name(alias, f"protocol {self.name!r}: alias")
        for key, choices in _CHOICES.items():
            value = getattr(self, key)
            if key == "supervision" and value.startswith("pseudo:") and len(value) > len("pseudo:"):
                continue
            if value not in choices:
                raise HarnessError(
                    f"protocol {self.name!r}: {key}={value!r} is not one of {', '.join(choices)}"
                )
        if self.supervision == "cls" and self.threshold_source == "val":
            raise HarnessError(
                f"protocol {self.name!r}: supervision 'cls' has no boxes on val to choose a threshold with; use "
                f"threshold_source='otsu' (CL-BV-OT) or 'test' (the test GT's oracle threshold)"
            )
        if self.threshold_source == "otsu" and self.threshold_scope != "global":
            raise HarnessError(f"protocol {self.name!r}: Otsu thresholds each map; threshold_scope must be 'global'")

    def _check_types(self) -> None:
        # Before anything calls a string method on them: supervision=3 must not end in an
        # AttributeError from deep inside.
        who = f"protocol {self.name!r}: " if isinstance(self.name, str) else "protocol: "
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "aliases":
                bad = [a for a in value if not isinstance(a, str)] if isinstance(value, (tuple, list)) else [value]
                if bad:
                    raise HarnessError(f"{who}aliases holds {bad[0]!r} ({type(bad[0]).__name__}): expected a list "
                                       f"of names (strings)")
            elif not isinstance(value, str):
                hint = f", one of {', '.join(_CHOICES[f.name])}" if f.name in _CHOICES else ""
                raise HarnessError(f"{who}{f.name}={value!r} is a {type(value).__name__}; expected a string{hint}")

    @property
    def axes(self) -> str:
        """One-line summary, e.g. ``gt | select on val | tau from val, global``."""
        tau = "tau: Otsu per map" if self.threshold_source == "otsu" else \
            f"tau from {self.threshold_source}, {self.threshold_scope}"
        return f"{self.supervision} | select on {self.selection_split} | {tau}"

    @property
    def code(self) -> str:
        """The chapter's setting code: BV/BT (selection split) - VT/TT/OT (threshold source),
        prefixed CL- under class-label selection, e.g. ``BV-VT``, ``CL-BV-OT``."""
        sel = {"val": "BV", "test": "BT"}[self.selection_split]
        thr = {"val": "VT", "test": "TT", "otsu": "OT"}[self.threshold_source]
        return ("CL-" if self.supervision == "cls" else "") + f"{sel}-{thr}"

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["aliases"] = list(self.aliases)
        return d


def check_name(name, what: str = "protocol name") -> str:
    """A protocol name becomes a file name (evaluations/<name>.json) and part of run and sweep
    directory names: see :mod:`harness.names`."""
    return names.check_name(name, what, "it becomes a file name (evaluations/<name>.json) and part of run "
                                        "directory names")


GRID_CODES = ("BT-TT", "BT-VT", "BV-TT", "BV-VT", "BT-OT", "BV-OT")


def grid(annotators: list[str], select_metric: str = "corloc") -> list[Protocol]:
    """Every (selection split x threshold source) x supervision of the chapter's Table 4.2,
    supervision being class labels, GT boxes, or each annotator's pseudo-boxes; combinations
    without meaning (class labels cannot choose a threshold on val) are left out."""
    out = []
    for sup in ["cls", "gt", *[f"pseudo:{a}" for a in annotators]]:
        for code in GRID_CODES:
            sel, thr = code.split("-")
            split = {"BT": "test", "BV": "val"}[sel]
            source = {"TT": "test", "VT": "val", "OT": "otsu"}[thr]
            if sup == "cls" and source == "val":
                continue
            name = f"{code}.{sup.removeprefix('pseudo:')}"
            proto = Protocol(name, f"grid cell {code} with {sup} supervision", sup, split, source, "global",
                             select_metric)
            proto.validate()  # an annotator name that is no safe file name fails here, before any work
            out.append(proto)
    return out
