"""The report's figures, as matplotlib figures built without pyplot (no global state, Agg).

Every number drawn comes from the harness's own read-outs (accumulator curves, the selection's
metric curves, ``split_metrics``, the evaluation's boxes), so a figure agrees with
``result.json``. A builder that lacks its inputs raises :class:`HarnessError` saying why; the
report shows that reason in place of the figure.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from harness import io
from harness.errors import HarnessError
from harness.evalstore import split_metrics
from harness.report.frames import DrawnFrame
from harness.report.rundir import Run
from harness.selection import metric_curves, otsu_score

MAX_PNG_BYTES = 150_000
DPI = 100
TILE_INCHES = 2.0  # a frame of the grid
VAL, TEST, SELECTED = "#1f77b4", "#ff7f0e", "#555555"
GT_BOX, PRED_BOX = "#00d000", "#ff2020"


def save_png(fig: Figure, path: Path) -> None:
    """Write ``fig`` atomically, within the size budget: a PNG over it (photographic tiles) is
    re-encoded with a 256-colour palette, and if still over, rendered smaller."""
    dpi = DPI
    data = _render(fig, dpi)
    for _ in range(3):
        if len(data) <= MAX_PNG_BYTES:
            break
        data = _palette_png(data)
        if len(data) > MAX_PNG_BYTES:  # PNG size grows with the pixel count: shrink both sides
            dpi *= 0.95 * math.sqrt(MAX_PNG_BYTES / len(data))
            data = _palette_png(_render(fig, dpi))
    with io.atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _render(fig: Figure, dpi: float) -> bytes:
    buf = BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def _palette_png(data: bytes) -> bytes:
    from PIL import Image

    out = BytesIO()
    Image.open(BytesIO(data)).convert("RGB").quantize(256).save(out, format="PNG", optimize=True)
    return out.getvalue()


def metric_label(metric: str, iou: float) -> str:
    """The axis label of a selection metric (``Protocol.select_metric``)."""
    return f"CorLoc@{iou:g} (%)" if metric == "corloc" else "mean IoU (x100)"


# ---------------------------------------------------------------- 1. frames


def frame_grid(run: Run, drawn: list[DrawnFrame], split: str = "test") -> Figure:
    if not drawn:
        raise HarnessError(f"no {split} frame to draw (none with GT boxes, or frames=0)")
    cols = math.ceil(math.sqrt(len(drawn)))
    rows = math.ceil(len(drawn) / cols)
    fig = Figure(figsize=(TILE_INCHES * cols, (TILE_INCHES + 0.15) * rows + 0.5), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, d in zip(axes, drawn):
        _draw_frame(ax, d, run.classes[d.frame.label], run.iou)
    for ax in axes[len(drawn):]:
        ax.set_axis_off()
    tau = "Otsu's threshold of each map" if run.taus is None else "the chosen tau of the frame's class"
    fig.suptitle(f"{split} frames, epoch {run.epoch}: GT boxes green, predicted box red ({tau})", fontsize=9)
    return fig


def _draw_frame(ax, d: DrawnFrame, class_name: str, iou_level: float) -> None:
    # Enlarged small frames show their real pixels (the grid the boxes are traced on), which
    # also keeps the PNG small; large ones are smoothed when shrunk.
    interp = "nearest" if max(d.image.shape[:2]) <= TILE_INCHES * DPI else "antialiased"
    ax.imshow(d.image, interpolation=interp)
    ax.imshow(d.score_map, cmap="jet", alpha=0.45, vmin=0.0, vmax=1.0, interpolation=interp)
    for boxes, color in ((np.asarray(d.frame.boxes), GT_BOX), (d.boxes, PRED_BOX)):
        for x0, y0, x1, y1 in boxes:
            # Boxes are inclusive pixel coordinates: the box covers pixel centres x0..x1.
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0 + 1, y1 - y0 + 1, fill=False,
                                   edgecolor=color, linewidth=1.4))
    hit = d.iou >= iou_level
    ax.set_title(f"{class_name}  IoU {d.iou:.2f}", fontsize=8, color="#107010" if hit else "#b01010")
    ax.set_xlabel(d.frame.id, fontsize=5)
    ax.set_xticks([])
    ax.set_yticks([])


# ---------------------------------------------------------------- 2. threshold curves


def class_mean(curves: np.ndarray) -> np.ndarray:
    """Dataset-level curve: the mean over the classes that have frames, as
    :func:`harness.evaluation.select_threshold` aggregates in global scope."""
    return curves[~np.isnan(curves).all(axis=1)].mean(axis=0)


def selection_curve(run: Run, acc) -> np.ndarray:
    """The protocol's selection metric vs tau (``acc.thresholds``), averaged over classes."""
    return class_mean(metric_curves(acc, run.protocol.select_metric, run.iou))


def threshold_curves(run: Run) -> Figure:
    metric = run.protocol.select_metric
    series = []  # (label, accumulator, colour, line style)
    for split, color in (("val", VAL), ("test", TEST)):
        acc = run.boxes(split, run.epoch)
        if acc is not None:
            series.append((f"{split} vs GT", acc, color, "-"))
        target = run.pseudo_target
        pseudo = run.boxes(split, run.epoch, target) if target else None
        if pseudo is not None:
            series.append((f"{split} vs {target} pseudo-boxes", pseudo, color, "--"))
    if not series:
        raise HarnessError(no_evals(run))
    fig = Figure(figsize=(7.0, 4.2), layout="constrained")
    ax = fig.subplots()
    taus = run.taus
    one_tau = taus is not None and len(set(taus)) == 1
    for label, acc, color, style in series:
        curve = selection_curve(run, acc)
        if one_tau:
            t = int(run.tau_indices(acc.thresholds)[0])
            ax.plot(acc.thresholds[t], curve[t], "o", color=color, markersize=5)
            label = f"{label}: {curve[t]:.1f} at the chosen tau"
        ax.plot(acc.thresholds, curve, style, color=color, linewidth=1.4, label=label)
        if taus is None:
            ax.axhline(otsu_score(acc, metric, run.iou), color=color, linestyle=":", linewidth=1.0,
                       label=f"{label}, Otsu per map")
    if one_tau:
        ax.axvline(taus[0], color=SELECTED, linewidth=1.0, label=f"chosen tau {taus[0]:.3g}")
    elif taus is not None:  # per-class taus: each marked, none of them on the class-mean curve
        for i, t in enumerate(sorted(set(taus))):
            ax.axvline(t, color=SELECTED, linewidth=1.0, alpha=0.35, label=None if i else "per-class taus")
    threshold_axes(ax, metric, run.iou, f"epoch {run.epoch}: localization vs threshold")
    return fig


def threshold_axes(ax, metric: str, iou: float, title: str) -> None:
    """Axes of a threshold-curve figure (a run's, a seed group's)."""
    ax.set_xlabel("CAM threshold tau")
    ax.set_ylabel(f"{metric_label(metric, iou)}, mean over classes")
    ax.set_xlim(0, 1)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def no_evals(run: Run, split: str = "val", epochs: list[int] | None = None) -> str:
    """Why a figure lacks the evaluation records of ``epochs`` (default: the selected one)."""
    epochs = epochs or [run.epoch]
    files = ", ".join(f"evals/{split}-epoch{e:03d}.json" for e in epochs)
    return (f"no evaluation record of epoch {', '.join(map(str, epochs))} of {run.dir.name} ({files}) under the "
            f"run's evaluation settings; rebuild them with `harness eval --run {run.dir}`")


# ---------------------------------------------------------------- 3. epoch curves


@dataclass(frozen=True)
class EpochSeries:
    """A run's read-outs per epoch (epoch -> %); val ones only at epochs with an evaluation record."""
    score: dict[int, float]  # the protocol's selection score
    val_corloc: dict[int, float]  # against GT, at the best tau of the split
    val_cls: dict[int, float]  # classification accuracy, where the method classifies


def epoch_series(run: Run) -> EpochSeries:
    scores = run.selection["epoch_scores"]
    loc, cls = {}, {}
    for e in run.epochs():
        rec = run.eval_record("val", e)
        if rec is None:
            continue
        m = split_metrics(rec, None, run.iou)
        loc[e] = m["corloc_oracle"]
        if m["cls_accuracy"] is not None:
            cls[e] = m["cls_accuracy"]
    return EpochSeries({e: scores[str(e)] for e in run.epochs()}, loc, cls)


def epoch_curves(run: Run) -> Figure:
    """Per epoch: the selection score, val CorLoc against GT at its best tau, val
    classification accuracy; epochs without an evaluation record are skipped."""
    s = epoch_series(run)
    fig = Figure(figsize=(7.0, 4.4), layout="constrained")
    ax = fig.subplots()
    ax.plot(list(s.score), list(s.score.values()), "o-", color=SELECTED, linewidth=1.6,
            label=f"selection score: {run.selection['epoch_chosen_by']}")
    if s.val_corloc:
        ax.plot(list(s.val_corloc), list(s.val_corloc.values()), "s-", color=VAL, markersize=4,
                label=f"val CorLoc@{run.iou:g} vs GT, best tau")
    if s.val_cls:
        ax.plot(list(s.val_cls), list(s.val_cls.values()), "^-", color="#2ca02c", markersize=4,
                label="val classification accuracy")
    ax.axvline(run.epoch, color="#d62728", linestyle="--", linewidth=1.0, label=f"selected epoch {run.epoch}")
    epoch_axes(ax, run.selection.get("stage", ""), "validation per epoch")
    return fig


def epoch_axes(ax, stage: str, title: str, legend_columns: int = 2) -> None:
    """Axes of a per-epoch figure (a run's, a seed group's): whole epochs, legend below."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(f"{stage} epoch".strip())
    ax.set_ylabel("%")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=legend_columns, frameon=False)


# ---------------------------------------------------------------- 4. per-class CorLoc


def class_corloc(run: Run, split: str = "test") -> Figure:
    metrics = run.record["metrics"].get(split)
    if metrics is None:
        raise HarnessError(f"result.json has no {split} metrics")
    classes = run.classes
    values = np.array([np.nan if v is None else v for v in metrics["corloc_per_class"]], dtype=float)
    width = min(20.0, max(6.0, 0.38 * len(classes)))
    fig = Figure(figsize=(width, 4.0), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(classes))
    ax.bar(x, np.nan_to_num(values), color=TEST, width=0.75)
    ax.axhline(metrics["corloc"], color=SELECTED, linestyle="--", linewidth=1.2,
               label=f"mean {metrics['corloc']:.1f}")
    if len(classes) <= 30:  # value labels stay legible only on a few bars
        for xi, v in zip(x, values):
            ax.annotate("n/a" if np.isnan(v) else f"{v:.0f}", (xi, 0 if np.isnan(v) else v), ha="center",
                        textcoords="offset points", xytext=(0, 2), fontsize=7)
    ax.set_xticks(x, classes, rotation=45 if len(classes) > 6 else 0, ha="right" if len(classes) > 6 else "center",
                  fontsize=8 if len(classes) <= 40 else 5)
    ax.set_xlim(-0.6, len(classes) - 0.4)
    ax.set_ylim(0, 105)
    ax.set_ylabel(f"CorLoc@{run.iou:g} (%)")
    ax.set_title(f"{split} CorLoc per class at the chosen threshold", fontsize=10)
    ax.legend(fontsize=8)
    return fig
