"""Evaluation records of a run's checkpoints, computed once and cached in the run directory,
and the metrics a protocol reads from them.

``evals/<split>-epoch<NNN>.json`` holds the accumulator states of one (split, epoch) of the
last stage, with the evaluation settings that produced them: a record is reused only under
the same settings. When a record is missing it is rebuilt from the saved maps
(``maps/<split>-epoch<NNN>.npy``) if they exist, else from the checkpoint (inference only).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np

from harness import io
from harness.errors import HarnessError
from harness.evaluation import BoxAccumulator, MaskAccumulator, corloc_at, select_threshold
from harness.inference import accumulate, evaluate_split, saved_maps
from harness.method import Method


SAVE_MAPS = ("none", "selected", "all")


def check_eval_config(cfg) -> None:
    e = cfg.eval
    if not 0 < e.threshold_step < 1:
        raise HarnessError(f"eval.threshold_step={e.threshold_step} must be in (0, 1), e.g. 0.001")
    if not any(abs(e.iou_threshold - v) < 1e-9 for v in e.iou_thresholds):
        raise HarnessError(
            f"eval.iou_threshold={e.iou_threshold} must be one of eval.iou_thresholds={list(e.iou_thresholds)}"
        )
    if e.save_maps not in SAVE_MAPS:
        raise HarnessError(f"eval.save_maps={e.save_maps!r}: use one of {', '.join(SAVE_MAPS)}")


class EvalStore:
    def __init__(self, run_dir: Path, cfg, dataset, method: Callable[[], Method] | Method, ckpts, device, progress=True):
        self.run_dir = Path(run_dir)
        self.cfg, self.dataset, self.ckpts, self.device, self.progress = cfg, dataset, ckpts, device, progress
        self._method = method
        self.settings = {"eval": cfg.eval.to_dict(), "dataset": dataset.identity}
        self._memo: dict[tuple[str, int], dict] = {}
        # During a run every evaluated epoch's maps are written, and pruned to the selected
        # epoch at the end under eval.save_maps="selected".
        self.save_new_maps = cfg.eval.save_maps != "none"
        self.computed: list[tuple[str, int, str]] = []  # (split, epoch, source) of records built here

    @property
    def method(self) -> Method:
        if callable(self._method) and not isinstance(self._method, Method):
            self._method = self._method()  # built only when a checkpoint must be run
        return self._method

    def maps_path(self, split: str, epoch: int) -> Path:
        return self.run_dir / "maps" / f"{split}-epoch{epoch:03d}.npy"

    def record(self, split: str, epoch: int, current: bool = False) -> dict:
        """``current``: the method already holds that epoch's weights (no reload)."""
        key = (split, epoch)
        if key in self._memo:
            return self._memo[key]
        path = self.run_dir / "evals" / f"{split}-epoch{epoch:03d}.json"
        rec = _read(path)
        if rec is None or rec.get("settings") != self.settings:
            rec = self._compute(split, epoch, current)
            rec["settings"] = self.settings
            io.write_json(path, rec)
        self._memo[key] = rec
        return rec

    def _compute(self, split_name: str, epoch: int, current: bool) -> dict:
        split = self.dataset.split(split_name)
        maps = self.maps_path(split_name, epoch)
        if maps.is_file():
            self.computed.append((split_name, epoch, "saved maps"))
            return accumulate(saved_maps(maps, split), split, self.dataset.num_classes, self.cfg)
        method = self.method
        if not current:
            last = len(method.stages) - 1
            method.load_state_dict(self.ckpts.load(last, method.stages[last].name, epoch)["method"])
        save = maps if self.save_new_maps else None
        self.computed.append((split_name, epoch, "checkpoint"))
        return evaluate_split(method, split, self.dataset.num_classes, self.cfg, self.device, self.progress, save)

    def boxes(self, split: str, epoch: int) -> BoxAccumulator:
        return BoxAccumulator.from_state_dict(self.record(split, epoch)["boxes"])

    def curves(self, split: str, epoch: int) -> np.ndarray:
        """Per-class CorLoc curves at the protocol's IoU level, (C, T)."""
        return self.boxes(split, epoch).curves(self.cfg.eval.iou_threshold)

    def prune_maps(self, keep_epoch: int) -> None:
        """``eval.save_maps='selected'``: drop the maps of the epochs not selected."""
        for path in (self.run_dir / "maps").glob("*.npy"):
            if f"-epoch{keep_epoch:03d}." not in path.name:
                path.unlink()


def _read(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None  # a damaged cache entry is recomputed, never trusted


def split_metrics(record: dict, tau_index: np.ndarray, iou: float) -> dict:
    """Every metric of one split's record at the selected threshold index(es)."""
    acc = BoxAccumulator.from_state_dict(record["boxes"])
    curves = acc.curves(iou)
    at = corloc_at(curves, tau_index)
    n = acc.num_frames
    rows = np.arange(acc.num_classes)
    k = acc.level_index(iou)
    one_tau = len(set(tau_index.tolist())) == 1
    t = int(tau_index[0])
    otsu = acc.otsu_curves()[:, k]
    m = {
        "corloc": at["mean"],
        "corloc_per_class": at["per_class"],
        "corloc_oracle": corloc_at(curves, select_threshold(curves, "global"))["mean"],
        "box_acc": {f"{v:g}": float(acc.correct[rows, j, tau_index].sum() * 100.0 / n)
                    for j, v in enumerate(acc.iou_thresholds)},
        "mean_iou": float(acc.iou_sum[rows, tau_index].sum() / n),
        "max_box_acc": {f"{v:g}": s for v, s in acc.max_box_acc().items()},
        "max_box_acc_v2": acc.max_box_acc_v2() if acc.multi_contour else None,
        "top1_loc": float(acc.top_k_curve(1, iou)[t]) if one_tau and acc.cls_count.sum() else None,
        "top5_loc": float(acc.top_k_curve(5, iou)[t]) if one_tau and acc.cls_count.sum() else None,
        "cls_accuracy": acc.cls_accuracy(1) if acc.cls_count.sum() else None,
        "cls_top5": acc.cls_accuracy(5) if acc.cls_count.sum() else None,
        "pointing_game": acc.pointing_game(),
        "otsu_corloc": float(np.nanmean(otsu)),
        "otsu_mean_iou": acc.otsu_mean_iou(),
        "frames": n,
    }
    if record.get("masks"):
        m["pxap"] = MaskAccumulator.from_state_dict(record["masks"]).pxap()
    return m
