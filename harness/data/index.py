"""The index of a real dataset on disk, as its reader builds it from the public files.

A reader (``harness/data/<name>.py``) parses a user's copy of a dataset into a
:class:`DatasetIndex`: every frame with its path, original size, label and GT, per split. It
reports each problem it finds (a missing file, a malformed line, a box outside its image) as a
:class:`Problem` naming the file and line, and keeps going, so one `harness data prepare` lists
all of them. ``harness.data.real`` turns an index into the harness's ``WsolDataset``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import HarnessError


@dataclass(frozen=True)
class Problem:
    file: str              # path relative to the dataset root (or absolute outside it)
    line: int | None       # 1-based line number in ``file``, None for a whole-file problem
    message: str           # what is wrong and, where it helps, how to fix it

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}" if self.line else f"{self.file}: {self.message}"


class DatasetProblems(HarnessError):
    """Every problem of a dataset copy, the first ones spelled out."""

    SHOWN = 25

    def __init__(self, name: str, root: Path, problems: list[Problem]):
        self.problems = problems
        lines = [f"  {p}" for p in problems[: self.SHOWN]]
        if len(problems) > self.SHOWN:
            lines.append(f"  ... and {len(problems) - self.SHOWN} more")
        # The first line alone says what is wrong: the one problem, or the first and how many more.
        more = len(problems) - 1
        headline = f"dataset {name!r} at {root}: {problems[0]}" + (
            f" (and {more} more; {len(problems)} problem(s) in all, listed below)" if more else " (1 problem(s))")
        super().__init__(headline + "\n" + "\n".join(lines)
                         + f"\nfix them (see docs/datasets.md for the expected layout), then run "
                           f"`harness data prepare {name} --root {root}` again")


@dataclass(frozen=True)
class IndexedFrame:
    """One frame or image as found on disk. Boxes are inclusive ``x0, y0, x1, y1`` in the
    original pixel grid (``0 <= x0 <= x1 <= W - 1``), as ``localization.txt`` stores them."""

    path: str                                   # image file, relative to the dataset root
    label: int
    size: tuple[int, int]                       # original (W, H)
    video: str                                  # the image itself for image datasets
    shot: str
    index: int = 0                              # position in the shot (temporal order)
    boxes: tuple[tuple[float, float, float, float], ...] = ()
    masks: tuple[str, ...] = ()                 # instance mask PNGs (OpenImages), relative to root
    ignore: str | None = None                   # ignore-region PNG (OpenImages)


@dataclass
class DatasetIndex:
    classes: list[str]
    splits: dict[str, list[IndexedFrame]]
    kind: str                                   # "video" or "image"
    info: dict = field(default_factory=dict)    # e.g. videos per split, source files read

    def counts(self) -> dict[str, dict[str, int]]:
        """Frames, annotated frames, boxes, masks, videos and shots of each split."""
        out = {}
        for name, frames in self.splits.items():
            out[name] = {
                "frames": len(frames),
                "annotated": sum(1 for f in frames if f.boxes or f.masks),
                "boxes": sum(len(f.boxes) for f in frames),
                "masks": sum(len(f.masks) for f in frames),
                "videos": len({f.video for f in frames}),
                "shots": len({(f.video, f.shot) for f in frames}),
            }
        return out
