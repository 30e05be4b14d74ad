"""``file``: pseudo-boxes read from a file, e.g. the boxes the thesis authors released.

Two formats, chosen by extension (or ``format``):

- ``.txt`` / ``.csv``: Choe et al.'s ``localization.txt`` layout, one box per line,
  ``frame_id,x0,y0,x1,y1``; a frame may have several lines (several boxes).
- ``.json``: ``{"frame_id": [[x0, y0, x1, y1], ...], ...}``.

Coordinates are inclusive pixels in the frame as the dataset serves it. Every annotated frame
of the split must have a box; ids the split does not have are ignored (the file may cover
several splits).
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

from harness.annotators.base import Annotation, Annotator, Context
from harness.data.base import Split
from harness.errors import HarnessError

DEFAULTS = dict(path=None, format="auto")


def read_box_file(path: str | Path, fmt: str = "auto") -> dict[str, list[tuple[int, int, int, int]]]:
    path = Path(path)
    if not path.is_file():
        raise HarnessError(f"pseudo-box file {path} does not exist; set annotators.file.path=/path/to/boxes.txt")
    if fmt == "auto":
        fmt = "json" if path.suffix == ".json" else "txt"
    if fmt not in ("json", "txt"):
        raise HarnessError(f"annotators.file.format={fmt!r}: use 'auto', 'txt' or 'json'")
    text = _read_text(path)
    if fmt == "json":
        return _read_json(path, text)
    boxes: dict[str, list] = {}
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 5:
            raise HarnessError(f"{path}:{n}: expected 'frame_id,x0,y0,x1,y1', got {line!r}")
        boxes.setdefault(parts[0], []).append(_box(parts[1:], f"{path}:{n}"))
    return boxes


_TEXT_FORMATS = ("a box file is text: 'frame_id,x0,y0,x1,y1' lines (.txt/.csv) or a JSON object "
                 "{frame_id: [[x0, y0, x1, y1], ...]} (.json) in UTF-8; check annotators.file.path")


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        # utf-8-sig: a byte-order mark (spreadsheet exports) would otherwise glue onto the first id
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        bad = exc.object  # with utf-8-sig, the bytes after the byte-order mark
        line = bad[: exc.start].count(b"\n") + 1
        raise HarnessError(f"pseudo-box file {path}, line {line}: byte 0x{bad[exc.start]:02x} is not UTF-8 text "
                           f"(an image, an archive, another encoding?); {_TEXT_FORMATS}") from None
    if "\0" in text:  # decodes as UTF-8 but is no text file (or is UTF-16)
        line = text[: text.index("\0")].count("\n") + 1
        raise HarnessError(f"pseudo-box file {path}, line {line}: NUL byte, a binary file (or UTF-16) rather than "
                           f"text; {_TEXT_FORMATS}")
    return text


def _read_json(path: Path, text: str) -> dict:
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise HarnessError(f"{path} is not valid JSON: {type(exc).__name__}: {str(exc)[:200]}") from exc
    if not isinstance(data, dict):
        raise HarnessError(f"{path}: expected an object {{frame_id: [[x0, y0, x1, y1], ...]}}")
    out = {}
    for fid, boxes in data.items():
        if not isinstance(boxes, list) or not boxes:
            raise HarnessError(f"{path}: frame {fid!r} needs a non-empty list of [x0, y0, x1, y1] boxes")
        if not isinstance(boxes[0], list):
            boxes = [boxes]
        out[fid] = [_box(b, f"{path}, frame {fid!r}", numbers=True) for b in boxes]
    return out


# A coordinate in a text file: a plain decimal number (float() would also take "1_0" as 10).
_TEXT_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?|[+-]?(nan|inf|infinity)", re.IGNORECASE)


def _box(values, where: str, numbers: bool = False) -> tuple[int, int, int, int]:
    """``numbers``: JSON, whose coordinates are numbers, not strings of digits."""
    try:
        if isinstance(values, (str, bytes)) or any(isinstance(v, bool) for v in values):
            raise TypeError  # JSON true would read as 1 and a string as its characters
        if numbers and any(isinstance(v, str) for v in values):
            raise TypeError
        if any(isinstance(v, str) and not _TEXT_NUMBER.fullmatch(v) for v in values):
            raise ValueError
        b = [float(v) for v in values]
    except (TypeError, ValueError, OverflowError):
        raise HarnessError(f"{where}: box {values!r} has non-numeric coordinates") from None
    if not all(math.isfinite(v) for v in b):
        raise HarnessError(f"{where}: box {values!r} has a NaN or infinite coordinate; every coordinate must be "
                           f"a finite integer pixel: fix the box or drop it from the file")
    if len(b) != 4 or any(v != int(v) for v in b):
        raise HarnessError(f"{where}: box {values!r} must be 4 integer pixel coordinates x0, y0, x1, y1")
    x0, y0, x1, y1 = (int(v) for v in b)
    if x1 < x0 or y1 < y0 or x0 < 0 or y0 < 0:
        raise HarnessError(f"{where}: box {values!r} needs 0 <= x0 <= x1 and 0 <= y0 <= y1")
    return x0, y0, x1, y1


class FileBoxes(Annotator):
    name = "file"

    def __init__(self, settings: dict):
        super().__init__({**DEFAULTS, **settings})
        if not self.settings["path"]:
            raise HarnessError("the file annotator needs a path: --cfg-options annotators.file.path=/path/to/boxes.txt")

    def identity_settings(self) -> dict:
        # The boxes depend on the file's content, not only on its name.
        import hashlib

        path = Path(self.settings["path"])
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
        return {**self.settings, "sha256": digest}

    def annotate(self, split: Split, indices: list[int], ctx: Context) -> Annotation:
        boxes = read_box_file(self.settings["path"], self.settings["format"])
        missing = [split.frames[i].id for i in indices if split.frames[i].id not in boxes]
        if missing:
            raise HarnessError(
                f"{self.settings['path']} has no box for {len(missing)} of the {len(indices)} annotated frames of "
                f"split {split.name!r} (first: {missing[0]!r}); every evaluated frame needs one"
            )
        out = []
        for i in indices:
            height, width = split.image(i).shape[:2]
            fb = boxes[split.frames[i].id]
            for b in fb:
                if b[2] >= width or b[3] >= height:
                    raise HarnessError(
                        f"{self.settings['path']}: box {list(b)} of frame {split.frames[i].id!r} lies outside "
                        f"its {width}x{height} image (inclusive coordinates end at {width - 1}, {height - 1})"
                    )
            out.append(list(fb))
        return Annotation(boxes=out)
