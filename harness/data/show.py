"""Contact sheets of dataset frames: GT boxes, class captions and optional heatmaps."""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from harness.data.base import WsolDataset
from harness.errors import HarnessError
from harness.io import atomic_path

CELL = 128  # px of one upscaled frame in the grid
CAPTION = 16  # px of the caption strip under each frame
GAP = 2  # px between cells
_GREEN = (0, 200, 0)  # BGR, as cv2 draws


def save_grid(ds: WsolDataset, split: str, path, n: int = 16, seed: int = 0,
              maps: dict | None = None) -> Path:
    """Write a PNG grid of ``n`` frames of ``split`` with GT boxes (green) and class captions.

    Frames are sampled deterministically from ``seed``. ``maps`` (optional) maps a frame index of
    the split to a float map in [0, 1] (any size; it is resized to the frame) drawn as a heatmap;
    when given, frames are sampled among those that have a map. The grid is
    ``ceil(sqrt(n))`` cells wide, each cell ``CELL`` px plus a ``CAPTION`` px strip.
    """
    sp = ds.split(split)
    if n < 1:
        raise HarnessError(f"save_grid needs n >= 1 frames, got {n}")
    pool = sorted(maps) if maps else list(range(len(sp)))
    for i in pool:
        if not 0 <= int(i) < len(sp):
            raise HarnessError(f"maps has frame index {i}, but split {split!r} of {ds.name} "
                               f"has {len(sp)} frames (valid: 0..{len(sp) - 1})")
    if not pool:
        raise HarnessError(f"split {split!r} of {ds.name} has no frames to show")
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(pool, size=min(n, len(pool)), replace=False).tolist())
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(len(chosen) / cols)
    sheet = np.full((rows * (CELL + CAPTION + GAP), cols * (CELL + GAP), 3), 255, np.uint8)
    for k, i in enumerate(chosen):
        heat = maps.get(i) if maps else None
        cell = _cell(sp.read(i), sp.frames[i].boxes, ds.classes[sp.frames[i].label], heat)
        r, c = divmod(k, cols)
        y, x = r * (CELL + CAPTION + GAP), c * (CELL + GAP)
        sheet[y:y + CELL + CAPTION, x:x + CELL] = cell
    path = Path(path)
    ok, buf = cv2.imencode(".png", sheet)
    if not ok:  # pragma: no cover - PNG encoding of a uint8 image does not fail
        raise HarnessError(f"could not encode the grid image for {path}")
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.tobytes())
    return path


def _cell(img: np.ndarray, boxes, caption: str, heat: np.ndarray | None) -> np.ndarray:
    """One frame upscaled (nearest: keep pixels visible), heatmap blended, boxes, caption."""
    h, w = img.shape[:2]
    bgr = cv2.resize(np.ascontiguousarray(img[..., ::-1]), (CELL, CELL),
                     interpolation=cv2.INTER_NEAREST)
    if heat is not None:
        m = np.nan_to_num(np.asarray(heat, np.float32), nan=0.0, posinf=1.0, neginf=0.0)
        if m.ndim != 2 or min(m.shape) < 1:
            raise HarnessError(f"a map for save_grid must be a 2-D array (H, W), "
                               f"got shape {m.shape}")
        m = cv2.resize(np.clip(m, 0, 1), (CELL, CELL), interpolation=cv2.INTER_LINEAR)
        colour = cv2.applyColorMap(np.uint8(255 * m), cv2.COLORMAP_JET)
        bgr = cv2.addWeighted(bgr, 0.5, colour, 0.5, 0)
    sx, sy = CELL / w, CELL / h
    for x0, y0, x1, y1 in boxes:  # inclusive pixel boxes: cover whole pixels x0..x1
        cv2.rectangle(bgr, (int(x0 * sx), int(y0 * sy)),
                      (int((x1 + 1) * sx) - 1, int((y1 + 1) * sy) - 1), _GREEN, 2)
    strip = np.full((CAPTION, CELL, 3), 255, np.uint8)
    cv2.putText(strip, caption[:20], (2, CAPTION - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([bgr, strip], 0)
