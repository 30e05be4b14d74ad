"""Real datasets: a reader's index of a user's copy, served as the harness's ``WsolDataset``.

Frames are served at ``data.image_size`` x ``data.image_size`` (224 in the papers) with their
GT rescaled as wsolevaluation does (``int(x * new / old)``), so every metric is computed in
the same grid as the published numbers. The index is built once per (root, settings) and
cached under ``$HARNESS_HOME/index/``; ``harness data prepare`` rebuilds and checks it.
``data.resized_cache=True`` keeps the resized frames of a split in one uint8 memmap under
``$HARNESS_HOME/resized/``, so repeated runs skip JPEG decoding.
"""
from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch
from tqdm import tqdm

from harness import io
from harness.data.base import Frame, Split, WsolDataset
from harness.data.index import DatasetIndex, DatasetProblems, IndexedFrame, Problem
from harness.data.loader import make_loader
from harness.errors import HarnessError
from harness.paths import harness_home

INDEX_VERSION = 1
COMMON_DEFAULTS = {
    "root": None,            # the dataset folder (see docs/datasets.md)
    "image_size": 224,       # frames are served at this square size, GT rescaled to it
    "fast_decode": True,     # decode big JPEGs at 1/2, 1/4 or 1/8 scale when still >= image_size
    "resized_cache": False,  # keep resized frames in a memmap under $HARNESS_HOME/resized/
}


# ------------------------------------------------------------------------------ geometry


def rescale_box(box, size: tuple[int, int], new: int) -> tuple[int, int, int, int]:
    """wsolevaluation's ``resize_bbox``: scale each coordinate and truncate to int."""
    w, h = size
    x0, y0, x1, y1 = (float(v) for v in box)
    out = (int(x0 * new / w), int(y0 * new / h), int(x1 * new / w), int(y1 * new / h))
    return tuple(min(max(v, 0), new - 1) for v in out)


def reduced_flag(size: tuple[int, int], target: int) -> int:
    """The largest JPEG DCT reduction (1/2, 1/4, 1/8) that keeps both sides >= ``target``:
    libjpeg then decodes a fraction of the coefficients, several times faster."""
    short = min(size)
    for factor, flag in ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4),
                         (2, cv2.IMREAD_REDUCED_COLOR_2)):
        if short // factor >= target:
            return flag
    return cv2.IMREAD_COLOR


def read_resized(path: Path, size: tuple[int, int], target: int, fast: bool) -> np.ndarray:
    """RGB uint8 (target, target, 3): area averaging when shrinking (as PIL's antialiased
    resize the reference uses), bilinear when enlarging."""
    flag = reduced_flag(size, target) if fast and str(path).lower().endswith((".jpg", ".jpeg")) else cv2.IMREAD_COLOR
    bgr = cv2.imread(str(path), flag)
    if bgr is None:
        raise HarnessError(f"cannot decode image {path}: missing or corrupt; `harness data prepare` lists such files")
    shrink = bgr.shape[0] >= target and bgr.shape[1] >= target
    out = cv2.resize(bgr, (target, target), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return cv2.cvtColor(out, cv2.COLOR_BGR2RGB)


# ------------------------------------------------------------------------------ the index


def index_path(name: str, root: Path, settings: dict) -> Path:
    key = json.dumps({"v": INDEX_VERSION, "name": name, "root": str(root), "settings": settings}, sort_keys=True)
    return harness_home() / "index" / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def build_index(reader, root: Path, settings: dict, progress: bool = True) -> DatasetIndex:
    """Parse the copy; every problem the reader finds is raised at once."""
    problems: list[Problem] = []
    index = reader.index(root, settings, problems, progress)
    if problems:
        raise DatasetProblems(reader.name, root, problems)
    return boxes_from_masks(index, root, progress)


def boxes_from_masks(index: DatasetIndex, root: Path, progress: bool = False) -> DatasetIndex:
    """Frames with instance masks and no boxes (OpenImages) get each mask's bounding box, so
    the box metrics and the protocols that select with them run there too; PxAP, the metric
    the papers publish for OpenImages, still reads the masks."""
    made = 0
    for name, frames in index.splits.items():
        if not any(f.masks for f in frames):
            continue
        for k, f in enumerate(tqdm(frames, desc=f"boxes of {name} masks", disable=not progress, leave=False)):
            if f.masks and not f.boxes:
                boxes = tuple(b for b in (mask_box(root / m, f.size) for m in f.masks) if b is not None)
                frames[k] = replace(f, boxes=boxes)
                made += len(boxes)
    if made:
        index.info["boxes_from_masks"] = made
    return index


def mask_box(path: Path, size: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """Inclusive box of a mask's foreground (wsolevaluation: value > 0.5) in the image's grid."""
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise HarnessError(f"cannot read mask {path}")
    if (mask.shape[1], mask.shape[0]) != tuple(size):
        mask = cv2.resize(mask, tuple(size), interpolation=cv2.INTER_NEAREST)
    ys, xs = np.nonzero(mask > 0)
    return None if len(xs) == 0 else (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))


def cached_index(reader, root: Path, settings: dict, progress: bool = True) -> DatasetIndex:
    path = index_path(reader.name, root, settings)
    if path.is_file():
        try:
            return _index_from_json(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            pass  # a damaged cache is rebuilt, never trusted
    index = build_index(reader, root, settings, progress)
    save_index(index, path)
    return index


def save_index(index: DatasetIndex, path: Path) -> None:
    io.write_json(path, {"classes": index.classes, "kind": index.kind, "info": index.info,
                         "splits": {k: [asdict(f) for f in v] for k, v in index.splits.items()}})


def _index_from_json(d: dict) -> DatasetIndex:
    def frame(f: dict) -> IndexedFrame:
        return IndexedFrame(**{**f, "size": tuple(f["size"]), "boxes": tuple(tuple(b) for b in f["boxes"]),
                               "masks": tuple(f["masks"])})

    return DatasetIndex(d["classes"], {k: [frame(f) for f in v] for k, v in d["splits"].items()}, d["kind"],
                        d.get("info", {}))


# ------------------------------------------------------------------------------ dataset


def settings_of(reader, data_cfg: dict) -> dict:
    cfg = dict(data_cfg)
    return {k: cfg.get(k, v) for k, v in reader.defaults.items()}


def dataset_root(reader, data_cfg: dict) -> Path:
    root = dict(data_cfg).get("root")
    if not root:
        raise HarnessError(f"dataset {reader.name!r} needs its location: --cfg-options data.root=PATH\n"
                           f"{reader.source}")
    path = Path(root).expanduser().resolve()
    if not path.is_dir():
        raise HarnessError(f"data.root={root}: no such folder; dataset {reader.name!r} expects:\n{reader.source}")
    return path


def load_real(reader, data_cfg: dict, progress: bool = True) -> WsolDataset:
    cfg = {**COMMON_DEFAULTS, **dict(data_cfg)}
    root = dataset_root(reader, cfg)
    size = int(cfg["image_size"])
    if not 16 <= size <= 2048:
        raise HarnessError(f"data.image_size={size}: use a size in [16, 2048] (the papers use 224)")
    index = cached_index(reader, root, settings_of(reader, cfg), progress)
    splits = {name: _split(reader, root, name, frames, size, bool(cfg["fast_decode"])) for name, frames in
              index.splits.items()}
    ds = WsolDataset(reader.name, index.kind, list(index.classes), splits,
                     info={"root": str(root), "image_size": size, "counts": index.counts(), **index.info})
    if cfg["resized_cache"]:
        for name in list(ds.splits):
            ds.splits[name] = resized_split(ds, name, progress)
    return ds


def _split(reader, root: Path, name: str, frames: list[IndexedFrame], size: int, fast: bool) -> Split:
    paths = [root / f.path for f in frames]
    sizes = [f.size for f in frames]
    served = [Frame(id=f.path, label=f.label, video=f.video, shot=f.shot, index=f.index,
                    boxes=tuple(rescale_box(b, f.size, size) for b in f.boxes)) for f in frames]

    def read(i: int) -> np.ndarray:
        return read_resized(paths[i], sizes[i], size, fast)

    read_mask = read_ignore = None
    if any(f.masks for f in frames):
        # PxAP asks for a frame's mask, then its ignore region: both come from one read
        @functools.lru_cache(maxsize=1)
        def masks(i: int) -> tuple[np.ndarray, np.ndarray]:
            return reader.read_mask(root, frames[i], (size, size))

        def read_mask(i: int) -> np.ndarray:
            return masks(i)[0]

        def read_ignore(i: int) -> np.ndarray:
            return masks(i)[1]

    return Split(name, served, read, read_mask, read_ignore)


# ------------------------------------------------------------------------------ resized cache


def resized_split(ds: WsolDataset, name: str, progress: bool = True, workers: int = 2) -> Split:
    """The split served from a uint8 memmap of its resized frames, built once (in parallel)."""
    split = ds.split(name)
    size = int(ds.info["image_size"])
    path = harness_home() / "resized" / f"{ds.name}-{ds.identity}-{size}" / f"{name}.npy"
    if not path.is_file():
        _write_resized(split, path, size, progress, workers)
    array = np.load(path, mmap_mode="r")
    if array.shape != (len(split), size, size, 3):
        path.unlink()
        raise HarnessError(f"{path} did not match split {name!r} and was removed; run again to rebuild it")
    return Split(name, split.frames, lambda i: np.asarray(array[i]), split.read_mask, split.read_ignore)


class _Decode(torch.utils.data.Dataset):
    def __init__(self, read: Callable[[int], np.ndarray], n: int):
        self.read, self.n = read, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return i, torch.from_numpy(self.read(i))


def _write_resized(split: Split, path: Path, size: int, progress: bool, workers: int) -> None:
    loader = make_loader(_Decode(split.read, len(split)), workers, batch_size=64)
    with io.atomic_path(path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(split), size, size, 3))
        for idx, images in tqdm(loader, desc=f"resize {split.name}", disable=not progress, leave=False):
            out[idx.numpy()] = images.numpy()
        out.flush()
        del out
