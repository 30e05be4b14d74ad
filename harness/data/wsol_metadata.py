"""Readers of Choe et al.'s WSOL metadata (clovaai/wsolevaluation): CUB-200-2011, ILSVRC 2012
and OpenImages30k, one shared parser for the three.

The metadata is a folder per split, ``<metadata>/{train,val,test}/``, of comma-separated text
files without header (and, in the originals, without a newline after the last line)::

    image_ids.txt      <image id>                     one image per line
    class_labels.txt   <image id>,<label>             0-based label
    image_sizes.txt    <image id>,<W>,<H>             original size (CUB, ILSVRC; empty for OpenImages)
    localization.txt   <image id>,<x0>,<y0>,<x1>,<y1> one line per box, inclusive original pixels
                       <image id>,<mask png>,<ignore png>  OpenImages: one line per instance mask;
                                                      only an image's first line names its ignore mask

An image id is the image's path relative to the dataset root. The split names are the code's:
``train`` = train-weaksup (labels only: its ``localization.txt``, present for CUB, is never read,
so no box of it can reach training), ``val`` = train-fullsup (the small fully annotated set used
for model selection and the CAM threshold), ``test`` = test.

The metadata ships with wsolevaluation (``metadata/<CUB|ILSVRC|OpenImages>/``); ``data.metadata``
points at that folder (default ``<root>/metadata``; a relative path is taken from the root).

Boxes stay in the original pixel grid, inclusive (``0 <= x0 <= x1 <= W - 1``), exactly as the files
store them; the framework rescales them. Sizes come from ``image_sizes.txt`` (CUB, ILSVRC) or from
the image header (OpenImages, whose size file is empty). ILSVRC train may lack ``image_sizes.txt``:
its frames then carry ``size=(0, 0)`` (unknown, and unneeded: train has no boxes).

Class names are derived from the image ids: CUB from the class folder (``001.Black_footed_Albatross/``,
label = its number - 1, checked), OpenImages from the class folder of ``<split>/<class id>/<image>``
(one folder per label, checked), ILSVRC are the 1000 WordNet ids in label order (sorted, the
standard order, read from timm's table; ``train/<wnid>/`` and ``val2/<label>/`` folders are checked
against the labels). A label no image shows is named ``class_<k>``.
"""
from __future__ import annotations

import importlib.util
import math
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from harness.data.index import DatasetIndex, IndexedFrame, Problem
from harness.errors import HarnessError

__all__ = ["CUB", "ILSVRC", "OPENIMAGES", "READERS", "WsolMetadataReader", "read_openimages_mask",
           "imagenet_wnids", "SPLITS"]

SPLITS = ("train", "val", "test")
LFS_POINTER = "version https://git-lfs.github.com/spec/"
WSOLEVAL = "https://github.com/clovaai/wsolevaluation"


# ------------------------------------------------------------------------------ reading files


class _Log:
    """Where the problems go, with paths shown relative to the dataset root."""

    def __init__(self, root: Path, problems: list[Problem], progress: bool):
        self.root = os.path.abspath(root)
        self.problems = problems
        self.progress = progress

    def rel(self, path: Path | str) -> str:
        p = os.path.abspath(path)
        if p == self.root:
            return "."
        if p.startswith(self.root + os.sep):
            return Path(os.path.relpath(p, self.root)).as_posix()
        return p

    def add(self, file: Path | str, line: int | None, message: str) -> None:
        self.problems.append(Problem(self.rel(file), line, message))

    def loop(self, items, desc: str):
        return tqdm(items, desc=desc, disable=not self.progress, leave=False, mininterval=0.5)


def _read_lines(path: Path, log: _Log, allow_empty: bool = False) -> list[tuple[int, str]] | None:
    """``(line number, text)`` of a metadata file; None (with its problem) when it cannot be used.
    A newline after the last line and CRLF line ends are tolerated; a blank line is reported."""
    if not path.is_file():
        what = "is a folder, expected a file" if path.exists() else "missing"
        log.add(path, None, f"{what}: every split folder of the metadata holds image_ids.txt, class_labels.txt, "
                            f"image_sizes.txt and localization.txt (from {WSOLEVAL}, metadata/<dataset>/<split>/)")
        return None
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as e:
        log.add(path, None, f"cannot be read: {e}")
        return None
    except UnicodeDecodeError as e:
        log.add(path, None, f"not UTF-8 text (byte {e.start}); use the file as wsolevaluation ships it")
        return None
    if text.startswith(LFS_POINTER):
        log.add(path, None, "is a Git LFS pointer, not the file itself: run `git lfs pull` in your "
                            "wsolevaluation clone (or download the file from GitHub)")
        return None
    text = text.removeprefix("\ufeff")
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    if not lines:
        if not allow_empty:
            log.add(path, None, "empty: expected one line per image")
        return None if not allow_empty else []
    out = []
    for i, line in enumerate(lines, 1):
        line = line.removesuffix("\r")
        if not line.strip():
            log.add(path, i, "empty line: remove it (one record per line, no blank lines)")
            continue
        out.append((i, line))
    return out


def _fields(line: str, n: int, fmt: str, path: Path, no: int, log: _Log, s: "_Split") -> list[str] | None:
    parts = line.split(",")
    if len(parts) != n:
        log.add(path, no, f"expected `{fmt}` ({n} comma-separated fields), got {len(parts)}: {line[:120]!r}")
        s.rejected.add(parts[0])   # its image's missing record is this problem, not another
        return None
    return parts


def _int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _number(text: str) -> int | float | None:
    """An int, or a finite float (YTO-style files store floats); None otherwise."""
    v = _int(text)
    if v is not None:
        return v
    try:
        f = float(text)
    except ValueError:
        return None
    return f if math.isfinite(f) else None


# ------------------------------------------------------------------------------ one split


@dataclass
class _Split:
    """What the files of one split say, validated line by line."""

    ids: dict[str, int] = field(default_factory=dict)           # id -> line in image_ids.txt
    labels: dict[str, tuple[int, int]] = field(default_factory=dict)   # id -> (label, line)
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)    # id -> (W, H)
    boxes: dict[str, list[tuple]] = field(default_factory=dict)
    masks: dict[str, list[str]] = field(default_factory=dict)
    ignore: dict[str, str | None] = field(default_factory=dict)
    labels_ok: bool = True      # False: class_labels.txt unusable, its per-id problems are implied
    sizes_ok: bool = True
    gt_ok: bool = True
    rejected: set[str] = field(default_factory=set)   # ids with a problem already reported on a line


def _read_ids(path: Path, log: _Log, s: _Split) -> bool:
    lines = _read_lines(path, log)
    if lines is None:
        return False
    for no, line in log.loop(lines, f"{path.parent.name}/image_ids"):
        if "," in line:
            log.add(path, no, f"image id {line[:120]!r} contains a comma: the other files could not name it")
        elif line in s.ids:
            log.add(path, no, f"duplicate image id {line!r} (first at line {s.ids[line]})")
        else:
            s.ids[line] = no
    return True


def _read_labels(path: Path, log: _Log, s: _Split, num_classes: int) -> None:
    lines = _read_lines(path, log)
    if lines is None:
        s.labels_ok = False
        return
    for no, line in log.loop(lines, f"{path.parent.name}/class_labels"):
        parts = _fields(line, 2, "<image id>,<label>", path, no, log, s)
        if parts is None:
            continue
        iid, text = parts
        label = _int(text)
        if iid not in s.ids:
            log.add(path, no, f"image id {iid!r} is not in image_ids.txt")
        elif label is None:
            log.add(path, no, f"label {text!r} of {iid!r} is not an integer")
            s.rejected.add(iid)
        elif iid in s.labels:
            log.add(path, no, f"second label for {iid!r} (first at line {s.labels[iid][1]})")
        elif not 0 <= label < num_classes:
            log.add(path, no, f"label {label} of {iid!r} is outside [0, {num_classes - 1}] "
                              f"({num_classes} classes)")
            s.rejected.add(iid)
        else:
            s.labels[iid] = (label, no)


def _read_sizes(path: Path, log: _Log, s: _Split) -> None:
    lines = _read_lines(path, log)
    if lines is None:
        s.sizes_ok = False
        return
    seen: dict[str, int] = {}
    for no, line in log.loop(lines, f"{path.parent.name}/image_sizes"):
        parts = _fields(line, 3, "<image id>,<W>,<H>", path, no, log, s)
        if parts is None:
            continue
        iid, ws, hs = parts
        w, h = _int(ws), _int(hs)
        if iid not in s.ids:
            log.add(path, no, f"image id {iid!r} is not in image_ids.txt")
        elif w is None or h is None or w <= 0 or h <= 0:
            log.add(path, no, f"size {ws!r},{hs!r} of {iid!r} is not two positive integers W,H")
            s.rejected.add(iid)
        elif iid in seen:
            log.add(path, no, f"second size for {iid!r} (first at line {seen[iid]})")
        else:
            seen[iid] = no
            s.sizes[iid] = (w, h)


def _header_sizes(root: Path, ids_path: Path, log: _Log, s: _Split) -> None:
    """OpenImages has no sizes in its metadata: read them from the image headers (no decoding)."""
    for iid, no in log.loop(list(s.ids.items()), f"{ids_path.parent.name}/image headers"):
        path = root / iid
        try:
            with Image.open(path) as im:
                s.sizes[iid] = im.size
        except FileNotFoundError:
            log.add(ids_path, no, f"image {log.rel(path)} is missing")
            s.rejected.add(iid)
        except (OSError, SyntaxError, ValueError) as e:
            log.add(ids_path, no, f"image {log.rel(path)} cannot be read: {e}")
            s.rejected.add(iid)


def _read_boxes(path: Path, log: _Log, s: _Split) -> None:
    lines = _read_lines(path, log)
    if lines is None:
        s.gt_ok = False
        return
    for no, line in log.loop(lines, f"{path.parent.name}/localization"):
        parts = _fields(line, 5, "<image id>,<x0>,<y0>,<x1>,<y1>", path, no, log, s)
        if parts is None:
            continue
        iid, *texts = parts
        if iid not in s.ids:
            log.add(path, no, f"image id {iid!r} is not in image_ids.txt")
            continue
        box = [_number(t) for t in texts]
        if any(v is None for v in box):
            log.add(path, no, f"box {','.join(texts)!r} of {iid!r} is not four numbers x0,y0,x1,y1")
            s.rejected.add(iid)
            continue
        x0, y0, x1, y1 = box
        bad = []
        if x1 < x0:
            bad.append("x1 < x0 (the order is x0,y0,x1,y1)")
        if y1 < y0:
            bad.append("y1 < y0 (the order is x0,y0,x1,y1)")
        if x0 < 0 or y0 < 0:
            bad.append("a negative coordinate")
        size = s.sizes.get(iid)
        if size is not None and size != (0, 0):
            w, h = size
            if x1 > w - 1 or y1 > h - 1 or x0 > w - 1 or y0 > h - 1:
                bad.append(f"outside the {w}x{h} image: boxes are inclusive pixel coordinates, "
                           f"x <= W-1 = {w - 1}, y <= H-1 = {h - 1}")
        if bad:
            log.add(path, no, f"box {x0},{y0},{x1},{y1} of {iid!r}: {'; '.join(bad)}")
            s.rejected.add(iid)
            continue
        s.boxes.setdefault(iid, []).append((x0, y0, x1, y1))


def _png_problem(path: Path) -> str | None:
    try:
        with Image.open(path) as im:
            im.verify()
    except FileNotFoundError:
        return "is missing"
    except (OSError, SyntaxError, ValueError) as e:
        return f"cannot be read ({e})"
    return None


def _read_masks(root: Path, path: Path, log: _Log, s: _Split) -> None:
    lines = _read_lines(path, log)
    if lines is None:
        s.gt_ok = False
        return
    to_check: list[tuple[str, int, str]] = []
    for no, line in log.loop(lines, f"{path.parent.name}/localization"):
        parts = _fields(line, 3, "<image id>,<mask png>,<ignore png>", path, no, log, s)
        if parts is None:
            continue
        iid, mask, ignore = parts
        if iid not in s.ids:
            log.add(path, no, f"image id {iid!r} is not in image_ids.txt")
            continue
        if not mask:
            log.add(path, no, f"empty mask path for {iid!r}")
            s.rejected.add(iid)
            continue
        if iid not in s.masks:
            s.masks[iid] = []
            s.ignore[iid] = ignore or None
            if ignore:
                to_check.append((ignore, no, "ignore mask"))
        elif ignore:
            log.add(path, no, f"ignore mask {ignore!r} on a later line of {iid!r}: only the first line of an "
                              f"image names its ignore mask (wsolevaluation asserts this)")
        if mask in s.masks[iid]:
            log.add(path, no, f"mask {mask!r} listed twice for {iid!r}")
            continue
        s.masks[iid].append(mask)
        to_check.append((mask, no, "mask"))
    for rel, no, what in log.loop(to_check, f"{path.parent.name}/mask files"):
        err = _png_problem(root / rel)
        if err:
            log.add(path, no, f"{what} {rel} {err}")


# ------------------------------------------------------------------------------ class names


@lru_cache(maxsize=1)
def imagenet_wnids() -> tuple[str, ...] | None:
    """The 1000 ILSVRC 2012 WordNet ids in label order (sorted: the standard order, which
    ImageNetV2's ``val2/<label>/`` folders follow), from timm's table, read without importing
    timm; None if the table cannot be found."""
    spec = importlib.util.find_spec("timm")
    for base in (spec.submodule_search_locations or []) if spec else []:
        path = Path(base) / "data" / "_info" / "imagenet_synsets.txt"
        if path.is_file():
            wnids = tuple(path.read_text().split())
            if len(wnids) == 1000 and list(wnids) == sorted(set(wnids)):
                return wnids
    return None


_CUB_FOLDER = re.compile(r"^(\d+)\.([^/]+)/[^/]+$")
_ILSVRC_TRAIN = re.compile(r"^train/(n\d{8})/")
_ILSVRC_V2 = re.compile(r"^val2/(\d+)/")
_OI_FOLDER = re.compile(r"^[^/]+/([^/]+)/[^/]+$")


# A class rule maps an image id to (class name or None, the label its folder implies or None,
# an error message or None); ``canon`` is the canonical name -> label table where there is one.


def _cub_rule(iid: str, canon: dict[str, int] | None) -> tuple[str | None, int | None, str | None]:
    m = _CUB_FOLDER.match(iid)
    if not m:
        return None, None, f"{iid!r} is not `<NNN.Class_name>/<image>`, the CUB layout"
    return m.group(2), int(m.group(1)) - 1, None


def _ilsvrc_rule(iid: str, canon: dict[str, int] | None) -> tuple[str | None, int | None, str | None]:
    m = _ILSVRC_TRAIN.match(iid)
    if m:
        wnid = m.group(1)
        if canon is None:
            return wnid, None, None
        if wnid not in canon:
            return None, None, f"{wnid} (folder of {iid!r}) is not one of the 1000 ILSVRC 2012 classes"
        return wnid, canon[wnid], None
    m = _ILSVRC_V2.match(iid)
    if m:
        return None, int(m.group(1)), None
    return None, None, None


def _openimages_rule(iid: str, canon: dict[str, int] | None) -> tuple[str | None, int | None, str | None]:
    m = _OI_FOLDER.match(iid)
    return (m.group(1) if m else None), None, None


# ------------------------------------------------------------------------------ the reader


def _bool(value, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, np.integer)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    raise HarnessError(f"data.{key}={value!r}: use true or false")


@dataclass(frozen=True)
class WsolMetadataReader:
    """A dataset in Choe et al.'s metadata format (see the module docstring)."""

    name: str
    num_classes: int
    gt: str                                   # "boxes" or "masks"
    published: dict
    source: str
    defaults: dict
    class_rule: Callable = field(repr=False, compare=False, default=_openimages_rule)
    canonical: Callable | None = field(repr=False, compare=False, default=None)   # () -> names or None
    meta_folder: str = ""                     # wsolevaluation's metadata/<meta_folder>/
    train_sizes_optional: bool = False        # ILSVRC: train/image_sizes.txt may be absent
    kind: str = "image"

    @property
    def classes(self) -> list[str]:
        """Label-order names known without the data (ILSVRC's WordNet ids); ``class_<k>``
        placeholders where the names come from the data (the index carries the real ones)."""
        names = self.canonical() if self.canonical else None
        return list(names) if names else [f"class_{k}" for k in range(self.num_classes)]

    # -------------------------------------------------------------------------- settings

    def metadata_dir(self, root: Path, settings: dict | None) -> Path:
        meta = (settings or {}).get("metadata") or self.defaults.get("metadata") or "metadata"
        path = Path(str(meta)).expanduser()
        return Path(os.path.abspath(path if path.is_absolute() else Path(root) / path))

    def _index_train(self, settings: dict | None) -> bool:
        if "index_train" not in self.defaults:
            return True
        return _bool({**self.defaults, **(settings or {})}["index_train"], "index_train")

    # -------------------------------------------------------------------------- index

    def index(self, root: Path, settings: dict, problems: list[Problem], progress: bool = False) -> DatasetIndex:
        root = Path(root)
        log = _Log(root, problems, progress)
        meta = self.metadata_dir(root, settings)
        splits = [s for s in SPLITS if s != "train" or self._index_train(settings)]
        wnids = self.canonical() if self.canonical else None
        canon = {w: i for i, w in enumerate(wnids)} if wnids else None
        info: dict = {"metadata": str(meta), "splits_read": splits, "warnings": []}
        out: dict[str, list[IndexedFrame]] = {}
        if not meta.is_dir():
            log.add(meta, None, f"metadata folder missing: set data.metadata to the folder holding "
                                f"train/, val/, test/ (wsolevaluation's metadata/{self.meta_folder}/; "
                                f"a relative path is taken from the dataset root)")
            return DatasetIndex(self.classes, {}, self.kind, info)
        names: dict[int, tuple[str, str, int]] = {}      # label -> (name, file, line)
        labels_of: dict[str, tuple[int, str, int]] = {}  # name -> (label, file, line)
        for split in splits:
            folder = meta / split
            if not folder.is_dir():
                log.add(folder, None, f"split folder missing: expected {split}/image_ids.txt, class_labels.txt, "
                                      f"image_sizes.txt and localization.txt there")
                continue
            frames = self._split(root, folder, split, log, wnids, canon, names, labels_of)
            if frames is not None:
                out[split] = frames
        classes = list(wnids) if wnids else [names[k][0] if k in names else f"class_{k}"
                                            for k in range(self.num_classes)]
        per_split = {k: len({f.label for f in v}) for k, v in out.items()}
        info["labels_per_split"] = per_split
        for split, n in per_split.items():
            if n != self.num_classes:
                info["warnings"].append(f"{split}: images of {n} of the {self.num_classes} classes "
                                        f"(the published splits have all of them; a partial copy?)")
        unknown = sum(1 for v in out.values() for f in v if f.size == (0, 0))
        if unknown:
            info["unknown_sizes"] = unknown
            info["warnings"].append(f"{unknown} train image(s) without a size (no train/image_sizes.txt): "
                                    f"size recorded as (0, 0)")
        return DatasetIndex(classes, out, self.kind, info)

    def _split(self, root: Path, folder: Path, split: str, log: _Log, wnids, canon, names, labels_of):
        s = _Split()
        ids_path = folder / "image_ids.txt"
        if not _read_ids(ids_path, log, s):
            return None
        labels_path = folder / "class_labels.txt"
        _read_labels(labels_path, log, s, self.num_classes)
        sizes_path = folder / "image_sizes.txt"
        sizes_optional = self.train_sizes_optional and split == "train" and not sizes_path.exists()
        if self.gt == "masks":
            _header_sizes(root, ids_path, log, s)
        elif not sizes_optional:
            _read_sizes(sizes_path, log, s)
        has_gt = split != "train"          # train is weakly supervised: its localization is never read
        loc_path = folder / "localization.txt"
        if has_gt:
            if self.gt == "boxes":
                _read_boxes(loc_path, log, s)
            else:
                _read_masks(root, loc_path, log, s)

        frames = []
        for iid, no in s.ids.items():
            ok = True
            reported = iid in s.rejected
            if iid not in s.labels:
                ok = False
                if s.labels_ok and not reported:
                    log.add(ids_path, no, f"{iid!r} has no line in class_labels.txt")
            if iid not in s.sizes and not sizes_optional:
                ok = False
                if s.sizes_ok and self.gt == "boxes" and not reported:
                    log.add(ids_path, no, f"{iid!r} has no line in image_sizes.txt")
            if has_gt and iid not in (s.boxes if self.gt == "boxes" else s.masks):
                ok = False
                what = "box" if self.gt == "boxes" else "mask"
                if s.gt_ok and not reported:
                    log.add(ids_path, no, f"{iid!r} has no {what} in localization.txt ({split} is fully annotated)")
            if not ok or reported:
                continue
            label, lno = s.labels[iid]
            if not self._check_name(iid, label, labels_path, lno, log, wnids, canon, names, labels_of):
                continue
            frames.append(IndexedFrame(
                path=iid, label=label, size=tuple(s.sizes.get(iid, (0, 0))), video=iid, shot=iid, index=0,
                boxes=tuple(s.boxes.get(iid, ())) if has_gt else (),
                masks=tuple(s.masks.get(iid, ())) if has_gt else (),
                ignore=s.ignore.get(iid) if has_gt else None))
        return frames

    def _check_name(self, iid, label, file, line, log, wnids, canon, names, labels_of) -> bool:
        """The label against what the image's folder says; derived names kept consistent."""
        name, expected, err = self.class_rule(iid, canon)
        if err:
            log.add(file, line, err)
            return False
        if expected is not None and expected != label:
            where = f"class {expected}" + (f" ({wnids[expected]})" if wnids and 0 <= expected < len(wnids) else "")
            log.add(file, line, f"label {label} of {iid!r}, but its folder says {where}")
            return False
        if name is None or wnids:
            return True
        rel = log.rel(file)
        if label in names and names[label][0] != name:
            n0, f0, l0 = names[label]
            log.add(file, line, f"label {label} is class {name!r} here (folder of {iid!r}) "
                                f"but {n0!r} at {f0}:{l0}")
            return False
        if name in labels_of and labels_of[name][0] != label:
            l_, f0, l0 = labels_of[name]
            log.add(file, line, f"folder {name!r} has label {label} here but {l_} at {f0}:{l0}")
            return False
        names.setdefault(label, (name, rel, line))
        labels_of.setdefault(name, (label, rel, line))
        return True

    # -------------------------------------------------------------------------- masks

    def read_mask(self, root: Path, frame: IndexedFrame, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """See :func:`read_openimages_mask`."""
        return read_openimages_mask(root, frame, size)


# ------------------------------------------------------------------------------ OpenImages masks


def _load_mask(path: Path, size: tuple[int, int]) -> np.ndarray:
    """wsolevaluation's ``load_mask_image``: grayscale, nearest resize to ``size`` = (W, H)."""
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise HarnessError(f"cannot read mask {path}: missing or corrupt; `harness data prepare` checks them")
    return cv2.resize(mask, (int(size[0]), int(size[1])), interpolation=cv2.INTER_NEAREST)


def read_openimages_mask(root: Path, frame: IndexedFrame, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``(foreground, ignore)``, bool ``(H, W)`` at ``size`` = (W, H), with wsolevaluation's
    ``get_mask`` semantics: each instance mask and the ignore mask are read as grayscale and
    resized with nearest neighbour; foreground = union of ``mask > 0.5`` on the raw 0..255 values
    (every non-zero pixel: the original compares the unscaled float image with 0.5); ignore =
    ``(ignore > 0.5) & ~foreground``, all False when the image has no ignore mask."""
    if not frame.masks:
        raise HarnessError(f"{frame.path}: no instance mask (only val/test of OpenImages have masks)")
    root = Path(root)
    fg = np.zeros((int(size[1]), int(size[0])), dtype=bool)
    for rel in frame.masks:
        fg |= _load_mask(root / rel, size) > 0.5
    if frame.ignore:
        ignore = (_load_mask(root / frame.ignore, size) > 0.5) & ~fg
    else:
        ignore = np.zeros_like(fg)
    return fg, ignore


# ------------------------------------------------------------------------------ the three datasets


_LAYOUT = ("Metadata: {url} metadata/{meta}/{{train,val,test}}/\n"
           "{{image_ids,class_labels,image_sizes,localization}}.txt;\n"
           "point data.metadata at that metadata/{meta} folder (default <root>/metadata; relative = from the root).")

CUB = WsolMetadataReader(
    name="cub",
    num_classes=200,
    gt="boxes",
    published={"train": {"frames": 5994}, "val": {"frames": 1000, "boxes": 1000},
               "test": {"frames": 5794, "boxes": 5794}},
    source=(
        "CUB-200-2011 with Choe et al.'s splits (wsolevaluation, dataset/prepare_cub.sh). Images: the images/ folder\n"
        "of CUB_200_2011.tgz (http://www.vision.caltech.edu/visipedia-data/CUB-200-2011/CUB_200_2011.tgz, now at\n"
        "https://data.caltech.edu/records/65de6-vjv46) is the root, and CUBV2.tar (the train-fullsup images, link in\n"
        "the wsolevaluation README) is extracted into it: <root>/001.Black_footed_Albatross/<image>.jpg ...\n"
        + _LAYOUT.format(url=WSOLEVAL, meta="CUB")),
    defaults={"metadata": "metadata"},
    class_rule=_cub_rule,
    meta_folder="CUB",
)

ILSVRC = WsolMetadataReader(
    name="ilsvrc",
    num_classes=1000,
    gt="boxes",
    # train: the ILSVRC 2012 train set size (the digests say ~1.28M; the metadata file was not counted)
    published={"train": {"frames": 1281167}, "val": {"frames": 10000, "boxes": 18532},
               "test": {"frames": 50000, "boxes": 80477}},
    source=(
        "ILSVRC 2012 with Choe et al.'s splits (wsolevaluation, dataset/prepare_imagenet.sh):\n"
        "<root>/train/<wnid>/*.JPEG (ILSVRC2012_img_train.tar from image-net.org, each class tar extracted\n"
        "into its wnid folder), <root>/val/*.JPEG (ILSVRC2012_img_val.tar, flat: the test split) and\n"
        "<root>/val2/<label>/*.jpeg (ImageNetV2 threshold-0.7, renamed val2: the val split;\n"
        "https://s3-us-west-2.amazonaws.com/imagenetv2public/imagenetv2-threshold0.7.tar.gz;\n"
        "metadata/ILSVRC/val/mapping.txt maps its file names). The train metadata files are large (a clone\n"
        "may hold Git LFS pointers: `git lfs pull`); data.index_train=false skips train (evaluation only).\n"
        + _LAYOUT.format(url=WSOLEVAL, meta="ILSVRC")),
    defaults={"metadata": "metadata", "index_train": True},
    class_rule=_ilsvrc_rule,
    canonical=imagenet_wnids,
    meta_folder="ILSVRC",
    train_sizes_optional=True,
)

OPENIMAGES = WsolMetadataReader(
    name="openimages",
    num_classes=100,
    gt="masks",
    published={"train": {"frames": 29819}, "val": {"frames": 2500, "masks": 3854},
               "test": {"frames": 5000, "masks": 7632}},
    source=(
        "OpenImages30k (Choe et al., wsolevaluation dataset/prepare_openimages.sh): OpenImages_images.zip and\n"
        "OpenImages_annotations.zip (links in the script) unzipped into the root: <root>/{train,val,test}/<class id>/\n"
        "<image>.jpg, with the instance masks <image>_m<class id>_<hash>.png and <image>_ignore.png beside the val\n"
        "and test images. Image sizes are read from the image headers.\n"
        + _LAYOUT.format(url=WSOLEVAL, meta="OpenImages")),
    defaults={"metadata": "metadata"},
    class_rule=_openimages_rule,
    meta_folder="OpenImages",
)

READERS = {r.name: r for r in (CUB, ILSVRC, OPENIMAGES)}
