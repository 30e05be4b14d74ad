"""The frames a report draws: which ones, their maps, and the boxes the evaluation sees.

The maps come from the run's saved maps of the selected epoch when they exist, else from the
selected checkpoint, run on the drawn frames only.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from harness import config as config_mod
from harness.data.base import Frame, Split
from harness.errors import HarnessError
from harness.evaluation import boxes_at_thresholds, iou_matrix, otsu_boxes
from harness.inference import _Subset, evaluated_frames, iterate_maps, saved_maps
from harness.registry import registry
from harness.report.rundir import Run
from harness.runner import Checkpoints, build_method, resolve_device

log = logging.getLogger("harness")


@dataclass(frozen=True)
class DrawnFrame:
    position: int  # among the split's evaluated frames (the row of the saved maps)
    frame: Frame
    image: np.ndarray  # (H, W, 3) uint8
    score_map: np.ndarray  # (H, W) in [0, 1]
    tau: float | None  # the frame's class threshold; None: Otsu's threshold of the map
    boxes: np.ndarray  # predicted boxes (n, 4), as the evaluation scores them
    iou: float  # best IoU of those boxes with the GT boxes


def choose_frames(labels: Sequence[int], n: int) -> list[int]:
    """Positions of ``n`` frames (of the given labels), spread over classes, in class order.

    Deterministic. Classes share the slots as evenly as their sizes allow; with fewer slots
    than classes, evenly spaced classes get one each. Within a class the frames are taken at
    evenly spaced positions (different videos rather than neighbouring frames).
    """
    by_class: dict[int, list[int]] = {}
    for pos, label in enumerate(labels):
        by_class.setdefault(int(label), []).append(pos)
    classes = sorted(by_class)
    if 0 < n < len(classes):
        classes = [classes[i] for i in np.linspace(0, len(classes) - 1, n).round().astype(int)]
    count = dict.fromkeys(classes, 0)
    left = min(max(n, 0), sum(len(by_class[c]) for c in classes))
    while left:  # deal one slot per class per round, skipping the classes already exhausted
        for c in classes:
            if left and count[c] < len(by_class[c]):
                count[c] += 1
                left -= 1
    chosen = []
    for c in classes:
        # k <= len(items) evenly spaced indices are at least 1 apart, so rounding keeps them distinct
        items = by_class[c]
        chosen += [items[i] for i in np.linspace(0, len(items) - 1, count[c]).round().astype(int)]
    return chosen


def predicted_boxes(score_map: np.ndarray, tau: float | None, multi_contour: bool) -> np.ndarray:
    """The boxes the evaluation scores for a map: at threshold ``tau`` (relative to the map's
    maximum, as :func:`boxes_at_thresholds`), or, with ``tau=None``, of Otsu's binarization
    ``q > otsu_level(q)`` of the quantized map (the OT setting)."""
    if tau is not None:
        return boxes_at_thresholds(score_map, [tau], multi_contour)[0]
    return otsu_boxes(score_map, multi_contour)


def drawn_frames(run: Run, n: int = 16, split_name: str = "test", device: str | None = None,
                 progress: bool = False) -> list[DrawnFrame]:
    """``n`` frames of a split with their selected-epoch maps and predicted boxes."""
    cfg = config_mod.load_run_config(run.dir)
    dataset = _dataset(run, cfg)
    split = dataset.split(split_name)
    evaluated = evaluated_frames(split)
    positions = choose_frames([split.frames[i].label for i in evaluated], n)
    out = []
    for pos, score_map in _maps(run, cfg, dataset, split, positions, device, progress):
        frame = split.frames[evaluated[pos]]
        tau = None if run.taus is None else float(run.taus[frame.label])
        boxes = predicted_boxes(score_map, tau, run.multi_contour)
        iou = float(iou_matrix(boxes, np.asarray(frame.boxes)).max())
        out.append(DrawnFrame(pos, frame, split.image(evaluated[pos]), score_map, tau, boxes, iou))
    return out


def _dataset(run: Run, cfg):
    dataset = registry().get("dataset", cfg.data.name).factory(cfg.data, progress=False)
    if dataset.identity != run.record["dataset"].get("identity"):
        raise HarnessError(
            f"dataset {dataset.name!r} has changed since run {run.dir.name} (identity {dataset.identity}, "
            f"the run's {run.record['dataset'].get('identity')}): its frames cannot be drawn"
        )
    return dataset


def _maps(run: Run, cfg, dataset, split: Split, positions: list[int], device,
          progress) -> Iterator[tuple[int, np.ndarray]]:
    """(position, map) of the chosen evaluated frames, in the order of ``positions``."""
    saved = run.dir / "maps" / f"{split.name}-epoch{run.epoch:03d}.npy"
    if saved.is_file():
        try:
            maps = saved_maps(saved, split)
        except HarnessError as exc:
            log.warning("%s; the report computes them again from the checkpoint", exc)
        else:
            wanted = set(positions)
            found = {n: np.array(m) for n, (_, m, _) in enumerate(maps) if n in wanted}
            yield from ((p, found[p]) for p in positions)
            return
    evaluated = evaluated_frames(split)
    subset = _Subset(split, [evaluated[p] for p in positions])
    method, dev = _selected_method(run, cfg, dataset, saved, device)
    for j, score_map, _ in iterate_maps(method, subset, cfg, dev, progress):
        yield positions[j], score_map


def _selected_method(run: Run, cfg, dataset, saved, device):
    """The method at the run's selected checkpoint, on ``device`` (default: CUDA if available)."""
    ckpts = Checkpoints(run.dir)
    done = ckpts.done()
    last = max((s for s, _ in done), default=None)
    if last is None or (last, run.epoch) not in done:
        raise HarnessError(
            f"no saved maps ({saved.relative_to(run.dir)}) and no checkpoint of the selected epoch "
            f"{run.epoch} in {ckpts.dir}: the frames' maps cannot be computed"
        )
    dev = resolve_device(device or "auto")
    method = build_method(cfg, dataset.num_classes).to(dev)
    method.load_state_dict(ckpts.load(last, ckpts.stage_name(last), run.epoch)["method"])
    return method, dev
