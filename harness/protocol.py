"""A protocol is data: how the epoch and the CAM threshold are chosen, on what supervision.

The axes are those of the realistic-protocol chapter (Murtaza's thesis, ch. 4): selection
supervision, selection split, threshold source and threshold scope. Presets live in
``protocols/`` as a few lines of config each.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

from harness.errors import HarnessError

_CHOICES = {
    "supervision": ("gt", "cls", "pseudo:<annotator>"),
    "selection_split": ("val", "test"),
    "threshold_source": ("val", "test", "otsu"),
    "threshold_scope": ("global", "per-class"),
    "select_metric": ("corloc",),
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
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise HarnessError(
                f"unknown protocol key(s) {sorted(unknown)}; valid keys: {', '.join(sorted(known))}"
            )
        if "name" not in d:
            raise HarnessError("a protocol needs a `name`")
        values = dict(d)
        values["aliases"] = tuple(values.get("aliases", ()))
        proto = cls(**values)
        proto.validate()
        return proto

    def validate(self) -> None:
        for key, choices in _CHOICES.items():
            value = getattr(self, key)
            if key == "supervision" and value.startswith("pseudo:") and len(value) > len("pseudo:"):
                continue
            if value not in choices:
                raise HarnessError(
                    f"protocol {self.name!r}: {key}={value!r} is not one of {', '.join(choices)}"
                )

    @property
    def axes(self) -> str:
        """One-line summary, e.g. ``gt | select on val | tau from val, global``."""
        return (
            f"{self.supervision} | select on {self.selection_split} | "
            f"tau from {self.threshold_source}, {self.threshold_scope}"
        )

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["aliases"] = list(self.aliases)
        return d
