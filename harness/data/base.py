"""The dataset interface every dataset plugin fills.

A dataset is a set of named splits of frames. An image dataset (WSOL) is the special case
where every frame is its own video with a single shot. Boxes are inclusive pixel
coordinates ``x0, y0, x1, y1`` in the frame's own pixel grid (``0 <= x0 <= x1 <= W-1``),
the convention of Choe et al.'s ``localization.txt`` after rescaling.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from harness.errors import HarnessError


@dataclass(frozen=True)
class Frame:
    """One frame (or image) of a split."""

    id: str
    label: int
    video: str
    shot: str
    index: int  # position of the frame inside its shot (0 for still images)
    boxes: tuple[tuple[int, int, int, int], ...] = ()  # GT boxes; empty where none

    @property
    def has_boxes(self) -> bool:
        return len(self.boxes) > 0

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "label": self.label,
            "video": self.video,
            "shot": self.shot,
            "index": self.index,
            "boxes": [list(b) for b in self.boxes],
        }


@dataclass
class Split:
    """Frames of one split and a way to read their pixels.

    ``read(i)`` returns the RGB image of ``frames[i]`` as ``uint8`` of shape ``(H, W, 3)``.
    ``read_mask(i)``, where the split has pixel GT, returns a ``bool`` ``(H, W)`` object mask;
    ``read_ignore(i)``, where the GT marks regions to leave out of PxAP (OpenImages), their mask.
    """

    name: str
    frames: list[Frame]
    read: Callable[[int], np.ndarray]
    read_mask: Callable[[int], np.ndarray] | None = None
    read_ignore: Callable[[int], np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.frames)

    def image(self, i: int) -> np.ndarray:
        return self.read(i)


@dataclass
class WsolDataset:
    """A dataset as the harness sees it: class names, splits, and an identity hash."""

    name: str
    kind: str  # "video" or "image"
    classes: list[str]
    splits: dict[str, Split]
    info: dict = field(default_factory=dict)  # free-form provenance (seed, generator version, root)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split(self, name: str) -> Split:
        if name not in self.splits:
            raise HarnessError(
                f"dataset {self.name!r} has no split {name!r}; its splits are: "
                f"{', '.join(sorted(self.splits))}"
            )
        return self.splits[name]

    @property
    def identity(self) -> str:
        """Hash of the index (frame ids, labels, boxes of every split), for result records."""
        return index_hash(self.classes, {k: s.frames for k, s in self.splits.items()})


def index_hash(classes: Sequence[str], splits: dict[str, Sequence[Frame]]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(list(classes)).encode())
    for name in sorted(splits):
        h.update(name.encode())
        for f in splits[name]:
            h.update(json.dumps(f.to_json(), sort_keys=True).encode())
    return h.hexdigest()[:16]
