"""Maps of a split through a method, and the split's evaluation record.

Every method's raw maps go through the same post-processing (upsampling to the frame
size, per-map min-max normalization, rounding to float32), so the protocol compares like with
like, and maps saved to disk re-evaluate to exactly the same numbers.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from harness import distributed, io
from harness.data.base import Split
from harness.data.loader import check_finite_images, eval_loader
from harness.errors import HarnessError
from harness.evaluation import BoxAccumulator, MaskAccumulator, threshold_list
from harness.method import Method, checked_prediction


def normalized_maps(maps: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """(B, h, w) raw maps -> (B, H, W) in [0, 1], float32 values; a constant map becomes zeros."""
    if mode not in ("bilinear", "bicubic"):
        raise HarnessError(f"eval.interpolation={mode!r}: use 'bilinear' or 'bicubic'")
    up = F.interpolate(maps[:, None].double(), size=size, mode=mode, align_corners=False)[:, 0]
    lo = up.amin(dim=(1, 2), keepdim=True)
    span = up.amax(dim=(1, 2), keepdim=True) - lo
    out = torch.where(span > 0, (up - lo) / span.clamp_min(1e-300), torch.zeros_like(up))
    return out.float().clamp_(0.0, 1.0)


def evaluated_frames(split: Split) -> list[int]:
    """Frames with GT boxes: localization and classification are measured on those (as YTO's
    annotated frames)."""
    return [i for i, f in enumerate(split.frames) if f.has_boxes]


def iterate_maps(method: Method, split: Split, cfg, device, progress: bool = True) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield ``(frame index, normalized map (H, W) float32, logits (C,))`` for the evaluated frames
    (under torchrun, for this rank's block of them: :func:`harness.distributed.shard`)."""
    method.eval_mode()
    evaluated = evaluated_frames(split)
    subset = _Subset(split, [evaluated[k] for k in distributed.shard(len(evaluated))])
    loader = eval_loader(subset, cfg.loader.eval_batch_size, cfg.loader.num_workers, method.normalization)
    for batch in tqdm(loader, desc=f"eval {split.name}", leave=False, disable=not progress):
        check_finite_images(batch, subset, method.normalization)  # before the model can be blamed
        images = batch["image"].to(device)
        labels = batch["label"].to(device)
        with torch.no_grad():
            pred = checked_prediction(method, images, labels, f"method {cfg.method.name!r}")
        bad = ~torch.isfinite(pred.maps).flatten(1).all(1)
        if bad.any():
            first = subset.frames[int(batch["index"][bad.nonzero()[0, 0]])].id
            raise HarnessError(
                f"method {cfg.method.name!r} produced a map with NaN/inf for frame {first!r} of split {split.name!r} "
                f"({int(bad.sum())} such maps in this batch); the model has diverged, lower the lr"
            )
        maps = normalized_maps(pred.maps, tuple(images.shape[-2:]), cfg.eval.interpolation).cpu().numpy()
        logits = pred.logits.float().cpu().numpy()
        for j, i in enumerate(batch["index"].tolist()):
            yield subset.indices[i], maps[j], logits[j]


class _Subset(Split):
    """The evaluated frames of a split, as a split."""

    def __init__(self, split: Split, indices: list[int]):
        self.indices = indices
        super().__init__(split.name, [split.frames[i] for i in indices], lambda j: split.read(indices[j]))


def new_accumulators(num_classes: int, cfg, with_masks: bool) -> tuple[BoxAccumulator, MaskAccumulator | None]:
    thresholds = threshold_list(cfg.eval.threshold_step)
    boxes = BoxAccumulator(num_classes, thresholds, cfg.eval.iou_thresholds, cfg.eval.multi_contour)
    return boxes, (MaskAccumulator(thresholds) if with_masks else None)


def accumulate(
    maps: Iterable[tuple[int, np.ndarray, np.ndarray | None]],
    split: Split,
    num_classes: int,
    cfg,
    save_to: Path | None = None,
    targets: Mapping[str, object] | None = None,
    sharded: bool = False,
) -> dict:
    """Evaluation record of a split from ``(frame index, map, logits)``; ``save_to`` keeps the
    maps (``.npy``, float32, in evaluated-frame order) for re-evaluation without the model.

    ``targets`` maps an annotator name to its :class:`PseudoBoxes`: the same maps are also
    scored against those boxes, in ``record["targets"][name]``.

    ``sharded``: ``maps`` holds this rank's block of the frames only (torchrun). The ranks'
    counts are summed and their float sums replayed in frame order (:func:`_merge_shards`), so
    every rank returns the record a single process computes, bit for bit; each rank saves its
    block beside ``save_to`` and rank 0 joins the blocks into it (:func:`join_shards`)."""
    indices = evaluated_frames(split)
    if not indices:
        raise HarnessError(f"split {split.name!r} has no frame with GT boxes: nothing to evaluate")
    boxes, masks = new_accumulators(num_classes, cfg, split.read_mask is not None)
    targets = dict(targets or {})
    pseudo = {name: new_accumulators(num_classes, cfg, False)[0] for name in targets}
    floats: dict[str | None, list] = {None: [], **{name: [] for name in pseudo}}
    expected = len(distributed.shard(len(indices))) if sharded else len(indices)
    path = shard_path(save_to, distributed.rank(), distributed.world_size()) if sharded and save_to else save_to
    writer = None
    for n, (i, score_map, logits) in enumerate(maps):
        frame = split.frames[i]
        boxes.add(score_map, np.asarray(frame.boxes), frame.label, frame.id, logits)
        floats[None].append(boxes.last_floats)
        for name, acc in pseudo.items():
            acc.add(score_map, targets[name].for_frame(frame.id), frame.label, frame.id, logits)
            floats[name].append(acc.last_floats)
        if masks is not None:
            ignore = split.read_ignore(i) if split.read_ignore is not None else None
            masks.add(score_map, split.read_mask(i), frame.id, ignore)
        if path is not None:
            if writer is None:
                writer = _MapWriter(path, expected, score_map.shape, num_classes)
            writer.put(n, score_map, logits, frame.id)
    if writer is None and path is not None and sharded:  # an empty block still marks its place
        writer = _MapWriter(path, 0, split.image(indices[0]).shape[:2], num_classes)
    if writer is not None:
        writer.close()
    outcomes = floats[None]
    if sharded:
        boxes, masks, pseudo, outcomes = _merge_shards(boxes, masks, pseudo, floats)
        if save_to is not None:
            distributed.barrier()
            if distributed.is_main():
                join_shards(save_to, distributed.world_size())
            distributed.barrier()
    return {
        "boxes": boxes.state_dict(),
        "masks": masks.state_dict() if masks is not None else None,
        "targets": {name: {"key": targets[name].key, "boxes": acc.state_dict()} for name, acc in pseudo.items()},
        "frames": boxes.num_frames,
        "per_frame": frame_outcomes(outcomes, split, indices, float(cfg.eval.get("iou_threshold", 0.5))),
    }


def frame_outcomes(outcomes: list, split: Split, indices: list[int], iou: float) -> dict[str, np.ndarray]:
    """Per evaluated frame, in order: ``correct`` (N, T) bool, its box at each threshold right at
    IoU ``iou``, packed along T (``np.packbits``); ``otsu_correct`` (N,) with the map's Otsu box;
    ``label`` (N,); ``cluster`` (N,), the index of its video (of itself for an image dataset),
    what a bootstrap resamples whole (harness/evaluation/uncertainty.py)."""
    best = np.array([o[1] for o in outcomes], dtype=np.float64).reshape(len(outcomes), -1)
    videos = [split.frames[i].video or split.frames[i].id for i in indices[:len(outcomes)]]
    return {"correct": np.packbits(best >= iou, axis=1),
            "thresholds": np.array(best.shape[1]),
            "otsu_correct": np.array([o[2] >= iou for o in outcomes], dtype=bool),
            "label": np.array([o[0] for o in outcomes], dtype=np.int64),
            "cluster": np.unique(np.array(videos, dtype=str), return_inverse=True)[1].astype(np.int64)}


def evaluate_split(method: Method, split: Split, num_classes: int, cfg, device, progress: bool = True,
                   save_to: Path | None = None, targets: Mapping[str, object] | None = None) -> dict:
    """The split's evaluation record; under torchrun each rank computes the maps of its block of
    the frames and every rank gets the merged record."""
    return accumulate(iterate_maps(method, split, cfg, device, progress), split, num_classes, cfg, save_to, targets,
                      sharded=distributed.active())


def _merge_shards(boxes: BoxAccumulator, masks: MaskAccumulator | None, pseudo: dict, floats: dict):
    """Every rank's accumulators merged, on every rank: counts summed, float sums replayed in
    rank order (= frame order, the blocks being contiguous)."""
    parts = distributed.gather({"boxes": boxes.state_dict(), "masks": masks.state_dict() if masks else None,
                                "pseudo": {k: a.state_dict() for k, a in pseudo.items()}, "floats": floats})

    def merged(get, name):
        acc = BoxAccumulator.from_state_dict(get(parts[0]))
        for part in parts[1:]:
            acc.merge(BoxAccumulator.from_state_dict(get(part)))
        acc.replay_floats(f for part in parts for f in part["floats"][name])
        return acc

    boxes = merged(lambda p: p["boxes"], None)
    pseudo = {k: merged(lambda p, k=k: p["pseudo"][k], k) for k in pseudo}
    outcomes = [f for part in parts for f in part["floats"][None]]
    if masks is not None:
        masks = MaskAccumulator.from_state_dict(parts[0]["masks"])
        for part in parts[1:]:
            masks.merge(MaskAccumulator.from_state_dict(part["masks"]))
    return boxes, masks, pseudo, outcomes


def shard_path(path: Path, r: int, w: int) -> Path:
    """Where rank ``r`` of ``w`` saves its block of the maps of ``path``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.shard{r}of{w}{path.suffix}")


def join_shards(path: Path, w: int) -> None:
    """The ``w`` blocks of saved maps (and scores) joined, in rank order, into ``path``; the
    blocks are removed once it is in place (a kill before leaves them, and :func:`saved_maps`
    reads them as they are)."""
    blocks = [shard_path(path, r, w) for r in range(w)]
    maps = [np.load(b, mmap_mode="r", allow_pickle=False) for b in blocks]
    scores = [np.load(logits_path(b), allow_pickle=False) for b in blocks]
    writer = _MapWriter(path, sum(len(m) for m in maps), maps[0].shape[1:], scores[0].shape[1])
    start = 0
    for m, sc in zip(maps, scores):
        writer.array[start:start + len(m)] = m
        writer.logits[start:start + len(m)] = sc
        start += len(m)
    writer.close()
    for b in blocks:
        b.unlink(missing_ok=True)
        logits_path(b).unlink(missing_ok=True)


def logits_path(maps_path: Path) -> Path:
    return Path(maps_path).with_suffix(".logits.npy")


def saved_maps(path: Path, split: Split) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
    """Maps (and class scores) written by :func:`accumulate`, as its input again. The files are
    checked here, before anything is yielded: a file that is not what the harness wrote
    (damaged, truncated, another array, pickled objects) is a :class:`HarnessError` naming it,
    and callers then compute the maps again from the checkpoint. Maps a torchrun evaluation
    left in blocks (``<name>.shard<r>of<w>.npy``, killed before rank 0 joined them) are read as
    one file."""
    try:
        blocks = [] if Path(path).is_file() else _shards_of(path)
        if blocks:
            maps = np.concatenate([np.load(b, mmap_mode="r", allow_pickle=False) for b in blocks])
            scores = np.concatenate([np.load(logits_path(b), allow_pickle=False) for b in blocks])
        else:
            maps = np.load(path, mmap_mode="r", allow_pickle=False)
            scores = np.load(logits_path(path), allow_pickle=False) if logits_path(path).is_file() else None
    except (OSError, ValueError, EOFError) as exc:
        raise HarnessError(f"saved maps {path} cannot be read ({type(exc).__name__}: {exc})") from exc
    indices = evaluated_frames(split)
    if maps.dtype != np.float32 or maps.ndim != 3 or (scores is not None and (
            scores.ndim != 2 or scores.shape[0] != maps.shape[0] or not np.issubdtype(scores.dtype, np.floating))):
        raise HarnessError(f"saved maps {path} are not maps the harness wrote ({maps.dtype} {maps.shape}"
                           + (f", scores {scores.dtype} {scores.shape}" if scores is not None else "") + ")")
    if maps.shape[0] != len(indices):
        raise HarnessError(
            f"{path} holds {maps.shape[0]} maps but split {split.name!r} has {len(indices)} evaluated "
            f"frames: the dataset changed since the run; re-evaluate from the checkpoints"
        )
    image_hw = split.image(indices[0]).shape[:2]
    if maps.shape[1:] != image_hw:
        raise HarnessError(
            f"{path} holds {maps.shape[1]}x{maps.shape[2]} maps but frame {split.frames[indices[0]].id!r} "
            f"is {image_hw[0]}x{image_hw[1]}: maps must have the frame's size"
        )
    return ((i, np.asarray(maps[n]), None if scores is None else scores[n]) for n, i in enumerate(indices))


def _shards_of(path: Path) -> list[Path]:
    """The complete set of saved blocks of ``path`` (any world size), in rank order, or []."""
    path = Path(path)
    for found in sorted(path.parent.glob(f"{path.stem}.shard0of*{path.suffix}")):
        w = found.name[len(path.stem) + len(".shard0of"):-len(path.suffix)]
        if w.isdigit():
            blocks = [shard_path(path, r, int(w)) for r in range(int(w))]
            if all(b.is_file() and logits_path(b).is_file() for b in blocks):
                return blocks
    return []


class _MapWriter:
    """Streams maps into a ``.npy`` file (bounded memory) and renames it into place when
    complete; class scores go beside it (written first, so complete maps imply scores)."""

    def __init__(self, path: Path, n: int, shape: tuple[int, int], num_classes: int):
        self.path = Path(path)
        self._ctx = io.atomic_path(self.path)
        tmp = self._ctx.__enter__()
        self.shape = shape
        self.array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, *shape))
        self.logits = np.zeros((n, num_classes), dtype=np.float32)

    def put(self, n: int, score_map: np.ndarray, logits: np.ndarray | None, frame_id: str) -> None:
        if score_map.shape != self.shape:
            raise HarnessError(
                f"frame {frame_id!r}: map size {score_map.shape} differs from the split's first "
                f"{self.shape}; maps of mixed sizes cannot be saved (set eval.save_maps='none')"
            )
        self.array[n] = score_map
        if logits is not None:
            self.logits[n] = logits

    def close(self) -> None:
        with io.atomic_path(logits_path(self.path)) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, self.logits)
        self.array.flush()
        del self.array
        self._ctx.__exit__(None, None, None)
