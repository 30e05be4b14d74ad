"""The annotator interface, the on-disk cache of pseudo-boxes, and their quality against GT.

An annotator turns the frames of a split (pixels and class labels, never GT boxes) into
pseudo-boxes. Its output depends only on its settings and the dataset, so it is computed
once and kept under ``$HARNESS_HOME/pseudo-boxes/<dataset>-<identity>/<annotator>-<key>/``;
runs, re-evaluations and sweeps all read the same boxes, and a change of settings or of the
dataset gives a new key.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness import __version__, distributed, io, locks
from harness.data.base import Split, WsolDataset
from harness.errors import HarnessError
from harness.evaluation.boxes import iou_matrix
from harness.paths import harness_home

log = logging.getLogger("harness")

Box = tuple[int, int, int, int]


@dataclass
class Context:
    """What an annotator may use besides the frames: where to keep its own artefacts (e.g.
    the classifier it trains), the device, and whether to show progress."""

    dataset: WsolDataset
    workdir: Path
    device: torch.device
    progress: bool = True


@dataclass
class Annotation:
    """Per annotated frame (in the order asked): its pseudo-boxes, and optional diagnostics
    that let the quality report show each step of the annotator (the chapter's Table 4.5)."""

    boxes: list[list[Box]]
    steps: dict[str, list[Box]] = field(default_factory=dict)  # box chosen at each intermediate step
    candidates: list[np.ndarray] | None = None  # every proposal considered, for the upper bound
    peaks: list[tuple[int, int]] | None = None  # (x, y) of the CAM peak used for the pointing game


class Annotator(ABC):
    """Base class of annotator plugins; ``factory(settings)`` builds one."""

    name: str = ""

    def __init__(self, settings: dict):
        self.settings = dict(settings)

    def identity_settings(self) -> dict:
        """The settings the boxes depend on (not, say, a batch size)."""
        return {k: v for k, v in self.settings.items() if k not in ("batch_size",)}

    @abstractmethod
    def annotate(self, split: Split, indices: list[int], ctx: Context) -> Annotation:
        """Pseudo-boxes for ``split.frames[i]`` for each ``i`` in ``indices``."""


@dataclass
class PseudoBoxes:
    annotator: str
    key: str  # changes whenever the boxes could
    split: str
    boxes: dict[str, list[Box]]  # frame id -> boxes (inclusive pixel coordinates)
    quality: dict

    def for_frame(self, frame_id: str) -> np.ndarray:
        try:
            return np.asarray(self.boxes[frame_id], dtype=np.int64).reshape(-1, 4)
        except KeyError:
            raise HarnessError(
                f"pseudo-boxes {self.annotator!r} have no box for frame {frame_id!r} of split {self.split!r}"
            ) from None


def cache_dir(dataset: WsolDataset, name: str, key: str) -> Path:
    return harness_home() / "pseudo-boxes" / f"{dataset.name}-{dataset.identity}" / f"{name}-{key}"


def annotator_key(name: str, annotator: Annotator, dataset: WsolDataset) -> str:
    blob = json.dumps(
        {"annotator": name, "settings": annotator.identity_settings(), "dataset": dataset.identity,
         "harness": __version__},
        sort_keys=True, default=str,
    ).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def annotated_frames(split: Split) -> list[int]:
    """The frames that get a pseudo-box: the evaluated ones (those the maps are scored on)."""
    from harness.inference import evaluated_frames

    return evaluated_frames(split)


def pseudo_boxes(name: str, settings: dict | None, dataset: WsolDataset, split_name: str,
                 device: torch.device | str = "cpu", progress: bool = True) -> PseudoBoxes:
    """The pseudo-boxes of annotator ``name`` on a split: from the cache, or computed now (and
    cached). ``settings`` default to the annotator's registered ones."""
    from harness.registry import registry

    entry = registry().get("annotator", name)
    annotator = build_annotator(entry.name, settings)
    key = annotator_key(entry.name, annotator, dataset)
    folder = cache_dir(dataset, entry.name, key)
    split = dataset.split(split_name)
    indices = annotated_frames(split)
    path = folder / f"{split_name}.json"
    frame_ids = [split.frames[i].id for i in indices]
    cached = _read_cached(path, frame_ids)
    # A cold cache: one run annotates, the others (same annotator, settings and data) wait for
    # its lock, then read. The ranks of a torchrun run annotate together (the annotator's
    # classifier trains with collectives), so rank 0 locks for the run and every rank follows
    # its decisions; without a process group the broadcasts are the identity.
    if distributed.broadcast(cached is None):
        main = distributed.is_main()
        what = f"another run that is annotating {split_name} with {entry.name}"
        with locks.file_lock(folder / f".{split_name}.lock", what) if main else contextlib.nullcontext():
            cached = _read_cached(path, frame_ids) if main else None  # written while this run waited?
            if distributed.broadcast(cached is None):
                cached = _annotate(entry, annotator, key, dataset, split_name, indices, path, device, progress)
    if cached is None:  # a rank other than 0, told that the file is there
        cached = _read_cached(path, frame_ids)
        if cached is None:
            raise HarnessError(f"pseudo-box cache {path} went missing while the ranks of this run read it: "
                               f"run again")
    return PseudoBoxes(entry.name, key, split_name, cached["boxes"], cached["quality"])


def _annotate(entry, annotator: Annotator, key: str, dataset: WsolDataset, split_name: str, indices: list[int],
              path: Path, device, progress: bool) -> dict:
    """Annotate the frames, write the cache file ``path``; return its boxes and quality."""
    split, folder = dataset.split(split_name), path.parent
    log.info("annotating %d %s frames with %s (cached under %s)", len(indices), split_name, entry.name, folder)
    ctx = Context(dataset, folder, torch.device(device), progress)
    try:
        result = annotator.annotate(split, indices, ctx)
    except HarnessError:
        raise
    except Exception as exc:  # a third-party annotator may raise anything
        raise HarnessError(f"annotator {entry.name!r} ({entry.distribution}) failed on {split_name}: "
                           f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(result, Annotation):
        raise HarnessError(f"annotator {entry.name!r} ({entry.distribution}) returned a {type(result).__name__}, "
                           f"not a harness.annotators.base.Annotation")
    if len(result.boxes) != len(indices):
        raise HarnessError(f"annotator {entry.name!r} returned {len(result.boxes)} boxes for {len(indices)} frames")
    frames = [split.frames[i] for i in indices]
    boxes = {}
    for frame, fb in zip(frames, result.boxes):
        boxes[frame.id] = [_check_box(b, entry.name, frame.id) for b in fb]
        if not boxes[frame.id]:
            raise HarnessError(f"annotator {entry.name!r} gave no box for frame {frame.id!r}")
    quality = annotation_quality(frames, result)
    io.write_json(path, {
        "annotator": entry.name,
        "key": key,
        "settings": annotator.identity_settings(),
        "dataset": {"name": dataset.name, "identity": dataset.identity},
        "split": split_name,
        "quality": quality,
        "boxes": boxes,
    })
    log.info("%s pseudo-boxes on %s: mean IoU with GT %.2f, %.1f%% at IoU >= 0.5", entry.name, split_name,
             quality["mean_iou"], quality["corloc"])
    return {"boxes": boxes, "quality": quality}


def build_annotator(name: str, settings: dict | None = None) -> Annotator:
    """The annotator ``name`` built with ``settings`` (default: its registered ones); a factory
    that raises or returns something else than an :class:`Annotator` is a named error."""
    from harness.registry import registry

    entry = registry().get("annotator", name)
    settings = default_settings(name) if settings is None else settings
    try:
        annotator = entry.factory(dict(settings))
    except HarnessError as exc:
        raise HarnessError(f"annotator {entry.name!r}: {exc}") from exc
    except Exception as exc:
        raise HarnessError(f"annotator {entry.name!r} ({entry.distribution}) failed to build with settings "
                           f"{dict(settings)}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(annotator, Annotator):
        raise HarnessError(f"annotator {entry.name!r} ({entry.distribution}): its factory returned a "
                           f"{type(annotator).__name__}, not a harness.annotators.base.Annotator")
    return annotator


def default_settings(name: str) -> dict:
    from harness.registry import registry

    entry = registry().get("annotator", name)
    return dict(entry.layer().get("annotators", {}).get(entry.name, {}))


def _check_box(box: Any, name: str, frame_id: str) -> Box:
    b = [int(v) for v in np.asarray(box).reshape(-1)]
    if len(b) != 4 or b[0] > b[2] or b[1] > b[3] or min(b) < 0:
        raise HarnessError(f"annotator {name!r}: frame {frame_id!r} got an invalid box {b} (want x0<=x1, y0<=y1, >= 0)")
    return tuple(b)


def _read_cached(path: Path, frame_ids: list[str]) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = io.read_json(path, "pseudo-box cache")
        boxes = {k: [tuple(b) for b in v] for k, v in data["boxes"].items()}
        quality = data["quality"]
    except (HarnessError, ValueError, KeyError, TypeError, AttributeError):
        log.warning("pseudo-box cache %s is unreadable; annotating again", path)
        return None
    if sorted(boxes) != sorted(frame_ids):
        log.warning("pseudo-box cache %s does not cover the split's frames; annotating again", path)
        return None
    return {"boxes": boxes, "quality": quality}


# ------------------------------------------------------------------------------- quality


def best_iou(pred: Any, gt: Any) -> float:
    """Max IoU over (pseudo-boxes x GT boxes), the evaluator's +1-pixel convention."""
    p = np.asarray(pred, dtype=np.float64).reshape(-1, 4)
    g = np.asarray(gt, dtype=np.float64).reshape(-1, 4)
    if not len(p) or not len(g):
        return 0.0
    return float(iou_matrix(p, g).max())


def annotation_quality(frames, result: Annotation) -> dict:
    """Mean IoU with GT (percent) and the share of frames at IoU >= 0.5, for the final boxes
    and each intermediate step; the proposals' upper bound; the CAM's pointing game."""
    with_gt = [k for k, f in enumerate(frames) if f.has_boxes]
    if not with_gt:
        return {"frames": len(frames), "frames_with_gt": 0, "mean_iou": None, "corloc": None}

    def scores(per_frame):
        ious = np.array([best_iou(per_frame[k], frames[k].boxes) for k in with_gt])
        return float(ious.mean() * 100), float((ious >= 0.5).mean() * 100)

    mean_iou, corloc = scores(result.boxes)
    q = {"frames": len(frames), "frames_with_gt": len(with_gt), "mean_iou": mean_iou, "corloc": corloc}
    if result.steps:
        q["steps"] = {name: scores([[b] for b in boxes])[0] for name, boxes in result.steps.items()}
    if result.candidates is not None:
        q["upper_bound_iou"] = float(np.mean([best_iou(frames[k].boxes, result.candidates[k]) for k in with_gt]) * 100)
        q["proposals_per_frame"] = float(np.mean([len(c) for c in result.candidates]))
    if result.peaks is not None:
        hits = [_inside(result.peaks[k], frames[k].boxes) for k in with_gt]
        q["pointing_game"] = float(np.mean(hits) * 100)
    return q


def _inside(point, boxes) -> bool:
    x, y = point
    return any(b[0] <= x <= b[2] and b[1] <= y <= b[3] for b in boxes)
