"""Evaluation records of a run's checkpoints, computed once and cached in the run directory,
and the metrics a protocol reads from them.

``evals/<split>-epoch<NNN>.json`` holds the accumulator states of one (split, epoch) of the
last stage, with the evaluation settings that produced them: a record is reused only under
the same settings. Records made under other settings than the run's own (``harness eval
--cfg-options eval.*``) go to ``evals/settings-<key>/``, so a re-evaluation never replaces
what the run wrote. When a record is missing it is rebuilt from the saved maps
(``maps/<split>-epoch<NNN>.npy``, made with the run's own interpolation, so used and written
only under it) if they exist, else from the checkpoint (inference only).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable

import numpy as np

from harness import distributed, io
from harness.errors import HarnessError
from harness.evaluation import BoxAccumulator, MaskAccumulator, corloc_at, select_threshold
from harness.inference import accumulate, evaluate_split, saved_maps
from harness.method import Method

log = logging.getLogger("harness")

SAVE_MAPS = ("none", "selected", "all")
INTERPOLATIONS = ("bilinear", "bicubic")


def check_eval_config(cfg) -> None:
    e = cfg.eval
    if not 1e-4 <= e.threshold_step <= 0.5:
        # 1000 thresholds is the papers' evaluation; past 10000 the counts outgrow memory
        raise HarnessError(f"eval.threshold_step={e.threshold_step} must be in [0.0001, 0.5], e.g. 0.001")
    if not any(abs(e.iou_threshold - v) < 1e-9 for v in e.iou_thresholds):
        raise HarnessError(
            f"eval.iou_threshold={e.iou_threshold} must be one of eval.iou_thresholds={list(e.iou_thresholds)}"
        )
    if e.save_maps not in SAVE_MAPS:
        raise HarnessError(f"eval.save_maps={e.save_maps!r}: use one of {', '.join(SAVE_MAPS)}")
    if e.interpolation not in INTERPOLATIONS:
        raise HarnessError(f"eval.interpolation={e.interpolation!r}: use one of {', '.join(INTERPOLATIONS)}")
    bad = [v for v in e.iou_thresholds if not 0 < v <= 1]
    if bad or not e.iou_thresholds:
        raise HarnessError(f"eval.iou_thresholds={list(e.iou_thresholds)}: give IoU levels in (0, 1], e.g. [0.3, 0.5, 0.7]")


def settings_key(settings: dict) -> str:
    """A short stable name for a set of evaluation settings (folders of re-evaluations)."""
    import hashlib

    blob = json.dumps(settings, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:10]


class EvalStore:
    def __init__(self, run_dir: Path, cfg, dataset, method: Callable[[], Method] | Method, ckpts, device, progress=True,
                 own_eval: dict | None = None):
        """``own_eval``: the run's own evaluation settings, when ``cfg.eval`` differs from them
        (a re-evaluation); records and maps of the run's own settings are then left alone."""
        self.run_dir = Path(run_dir)
        self.cfg, self.dataset, self.ckpts, self.device, self.progress = cfg, dataset, ckpts, device, progress
        self._method = method
        self.settings = {"eval": cfg.eval.to_dict(), "dataset": dataset.identity}
        own_eval = cfg.eval.to_dict() if own_eval is None else dict(own_eval)
        self.records_dir = self.run_dir / "evals"
        if own_eval != self.settings["eval"]:
            self.records_dir = self.records_dir / f"settings-{settings_key(self.settings)}"
        self.maps_ok = own_eval.get("interpolation") == cfg.eval.interpolation  # saved maps are post-interpolation
        self._memo: dict[tuple[str, int], dict] = {}
        self._outcomes: dict[tuple[str, int], dict] = {}  # per-frame outcomes of the records computed here
        # During a run every evaluated epoch's maps are written, and pruned to the selected
        # epoch at the end under eval.save_maps="selected".
        self.save_new_maps = cfg.eval.save_maps != "none"
        self.computed: list[tuple[str, int, str]] = []  # (split, epoch, source) of records built here
        self._pseudo: dict = {}
        self.default_targets: dict[str, set[str]] = {}

    @property
    def method(self) -> Method:
        if callable(self._method) and not isinstance(self._method, Method):
            self._method = self._method()  # built only when a checkpoint must be run
        return self._method

    def maps_path(self, split: str, epoch: int) -> Path:
        return self.run_dir / "maps" / f"{split}-epoch{epoch:03d}.npy"

    # ---------------------------------------------------------------- pseudo-box targets

    def pseudo(self, split: str, annotator: str):
        """The pseudo-boxes of ``annotator`` on ``split`` under this run's annotator settings
        (``annotators.<name>``, else the annotator's defaults); cached on disk."""
        from harness.annotators.base import pseudo_boxes

        key = (split, annotator)
        if key not in self._pseudo:
            section = self.cfg.get("annotators", {}) or {}
            settings = section.get(annotator)
            settings = settings.to_dict() if hasattr(settings, "to_dict") else settings
            self._pseudo[key] = pseudo_boxes(annotator, settings, self.dataset, split, self.device, self.progress)
        return self._pseudo[key]

    def need(self, split: str, target: str) -> None:
        """Score ``split`` against ``target`` (an annotator name) whenever it is evaluated,
        e.g. the selection split under a pseudo-box protocol, during training."""
        if target != "gt":
            self.pseudo(split, target)  # annotate now, before any training
            self.default_targets.setdefault(split, set()).add(target)

    # ---------------------------------------------------------------- records

    def record(self, split: str, epoch: int, current: bool = False, targets=()) -> dict:
        """``current``: the method already holds that epoch's weights (no reload). ``targets``:
        annotators whose pseudo-boxes the record must also be scored against."""
        wanted = set(targets) | self.default_targets.get(split, set())
        wanted.discard("gt")
        key = (split, epoch)
        rec = self._memo.get(key)
        path = self.records_dir / f"{split}-epoch{epoch:03d}.json"
        if rec is None:
            rec = _read(path)
            if rec is not None and rec.get("settings") != self.settings:
                rec = None
        missing = {t for t in wanted if rec is None or
                   (rec.get("targets") or {}).get(t, {}).get("key") != self.pseudo(split, t).key}
        if rec is None or missing:
            new = self._compute(split, epoch, current, {t: self.pseudo(split, t) for t in missing})
            per_frame = self._outcomes[key] = new.pop("per_frame")
            if rec is not None:  # keep what was valid, add the new targets
                new["targets"] = {**(rec.get("targets") or {}), **new["targets"]}
            rec = new
            rec["settings"] = self.settings
            if distributed.is_main():  # under torchrun every rank holds the merged record; one writes it
                # the per-frame outcomes first: a record on disk implies its outcomes
                io.save_npz(self.outcomes_path(split, epoch), per_frame)
                io.write_json(path, rec)
        self._memo[key] = rec
        return rec

    def outcomes_path(self, split: str, epoch: int) -> Path:
        return self.records_dir / f"{split}-epoch{epoch:03d}.frames.npz"

    def outcomes(self, split: str, epoch: int) -> dict | None:
        """The per-frame outcomes of the record of (split, epoch) (``inference.frame_outcomes``):
        those computed here, else as written with the record; None when the record predates
        them or the file is unreadable."""
        self.record(split, epoch)
        if (split, epoch) in self._outcomes:
            return self._outcomes[(split, epoch)]
        try:
            return io.load_npz(self.outcomes_path(split, epoch))
        except HarnessError as exc:
            log.warning("%s: no bootstrap interval for %s epoch %d", exc, split, epoch)
            return None

    def _compute(self, split_name: str, epoch: int, current: bool, targets: dict) -> dict:
        split = self.dataset.split(split_name)
        maps = self.maps_path(split_name, epoch)
        if self.maps_ok and maps.is_file():
            try:
                saved = saved_maps(maps, split)
            except HarnessError as exc:
                log.warning("%s; computing them again from the checkpoint", exc)
            else:
                self.computed.append((split_name, epoch, "saved maps"))
                return accumulate(saved, split, self.dataset.num_classes, self.cfg, targets=targets)
        method = self.method
        if not current:
            last = len(method.stages) - 1
            method.load_state_dict(self.ckpts.load(last, method.stages[last].name, epoch)["method"])
        save = maps if self.save_new_maps and self.maps_ok else None
        self.computed.append((split_name, epoch, "checkpoint"))
        return evaluate_split(method, split, self.dataset.num_classes, self.cfg, self.device, self.progress, save,
                              targets)

    def boxes(self, split: str, epoch: int, target: str = "gt") -> BoxAccumulator:
        """The box counts of a (split, epoch) against GT (``target="gt"``) or an annotator's boxes."""
        rec = self.record(split, epoch, targets=(target,))
        state = rec["boxes"] if target == "gt" else rec["targets"][target]["boxes"]
        return BoxAccumulator.from_state_dict(state)

    def curves(self, split: str, epoch: int, target: str = "gt") -> np.ndarray:
        """Per-class CorLoc curves at the protocol's IoU level, (C, T)."""
        return self.boxes(split, epoch, target).curves(self.cfg.eval.iou_threshold)

    def forget(self, epoch: int) -> None:
        """Drop every record and saved map of ``epoch``: its weights are being trained (again),
        so what was evaluated from an earlier attempt is not that epoch's any more."""
        self._memo = {k: v for k, v in self._memo.items() if k[1] != epoch}
        self._outcomes = {k: v for k, v in self._outcomes.items() if k[1] != epoch}
        pattern = f"*-epoch{epoch:03d}.*"
        if distributed.is_main():
            for path in [*self.run_dir.glob(f"evals/{pattern}"), *self.run_dir.glob(f"evals/*/{pattern}"),
                         *self.run_dir.glob(f"maps/{pattern}")]:
                path.unlink(missing_ok=True)
        distributed.barrier()  # no rank reads what rank 0 is deleting

    def prune_maps(self, keep_epoch: int) -> None:
        """``eval.save_maps='selected'``: drop the maps of the epochs not selected."""
        if not distributed.is_main():
            return
        for path in (self.run_dir / "maps").glob("*.npy"):
            if f"-epoch{keep_epoch:03d}." not in path.name:
                path.unlink()


def _read(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        rec = io.read_json(path, "evaluation record")
    except HarnessError:
        return None  # a damaged cache entry is recomputed, never trusted
    ok = isinstance(rec, dict) and isinstance(rec.get("boxes"), dict) and isinstance(rec.get("targets", {}), dict)
    return rec if ok else None


def split_metrics(record: dict, tau_index: np.ndarray | None, iou: float, target: str = "gt") -> dict:
    """Every metric of one split's record at the selected threshold index(es), or with each
    map's Otsu box when ``tau_index`` is None. ``target``: score against GT or an annotator's
    pseudo-boxes."""
    acc = BoxAccumulator.from_state_dict(record["boxes"] if target == "gt" else record["targets"][target]["boxes"])
    curves = acc.curves(iou)
    n = acc.num_frames
    k = acc.level_index(iou)
    m = {
        "corloc_oracle": corloc_at(curves, select_threshold(curves, "global"))["mean"],
        "max_box_acc": {f"{v:g}": s for v, s in acc.max_box_acc().items()},
        "max_box_acc_v2": acc.max_box_acc_v2() if acc.multi_contour else None,
        "cls_accuracy": acc.cls_accuracy(1) if acc.cls_count.sum() else None,
        "cls_top5": acc.cls_accuracy(5) if acc.cls_count.sum() else None,
        "pointing_game": acc.pointing_game(),
        "otsu_corloc": float(np.nanmean(acc.otsu_curves()[:, k])),
        "otsu_mean_iou": acc.otsu_mean_iou(),
        "frames": n,
    }
    if tau_index is None:  # boxes from each map's own Otsu threshold
        otsu = acc.otsu_curves()
        per_class = [None if np.isnan(v) else float(v) for v in otsu[:, k]]
        m.update({
            "corloc": float(np.nanmean(otsu[:, k])),
            "corloc_per_class": per_class,
            "box_acc": {f"{v:g}": float(acc.otsu_correct[:, j].sum() * 100.0 / n) for j, v in enumerate(acc.iou_thresholds)},
            "mean_iou": acc.otsu_mean_iou(),
            "top1_loc": None,
            "top5_loc": None,
        })
    else:
        at = corloc_at(curves, tau_index)
        rows = np.arange(acc.num_classes)
        one_tau = len(set(tau_index.tolist())) == 1
        t = int(tau_index[0])
        m.update({
            "corloc": at["mean"],
            "corloc_per_class": at["per_class"],
            "box_acc": {f"{v:g}": float(acc.correct[rows, j, tau_index].sum() * 100.0 / n)
                        for j, v in enumerate(acc.iou_thresholds)},
            "mean_iou": float(acc.iou_sum[rows, tau_index].sum() / n),
            "top1_loc": float(acc.top_k_curve(1, iou)[t]) if one_tau and acc.cls_count.sum() else None,
            "top5_loc": float(acc.top_k_curve(5, iou)[t]) if one_tau and acc.cls_count.sum() else None,
        })
    if record.get("masks") and target == "gt":
        m["pxap"] = MaskAccumulator.from_state_dict(record["masks"]).pxap()
    return m
