"""Class-agnostic region proposals ranked by objectness, from a torchvision Faster R-CNN's RPN.

The ``rpn`` pseudo-box annotator of the realistic-protocol chapter only needs the region
proposal network of a COCO-trained detector: :func:`load_rpn` builds the detector (real
torchvision weights from the torch hub cache, a local checkpoint, or -- tests only -- random
initialisation), and :func:`rpn_proposals` runs ``model.transform`` -> ``model.backbone`` ->
the RPN's head / anchor generator / box coder / ``filter_proposals`` and never the ROI heads.
``model.rpn.forward`` is not used because it throws the objectness scores away.

Box convention of the output: INCLUSIVE integer pixel boxes ``(x0, y0, x1, y1)`` in the
frame's own pixel grid, pixel ``i`` covering the continuous interval ``[i, i + 1)``.
torchvision's continuous box ``(x1, y1, x2, y2)`` (corners, rescaled to the original frame)
becomes the pixels it touches (see :func:`to_inclusive_boxes`)::

    x0 = floor(x1 + eps)          y0 = floor(y1 + eps)
    x1 = ceil(x2 - eps) - 1       y1 = ceil(y2 - eps) - 1        (eps = 1e-3 px)

then clipped to ``[0, W-1] x [0, H-1]``, and ``x1 = max(x1, x0)``, ``y1 = max(y1, y0)`` so a
degenerate (zero-width) box is still 1 px. ``eps`` absorbs the float error of the rescale so
that a corner at 11.9999997 / 12.0000002 counts as the integer 12. Example:
``(3.2, 4.0, 10.7, 12.0) -> (3, 4, 10, 11)``.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch
import torchvision
from torchvision.models.detection.rpn import concat_box_prediction_layers
from torchvision.models.detection.transform import resize_boxes

from harness import io
from harness.errors import HarnessError

ARCHS = (
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet50_fpn_v2",
    "fasterrcnn_mobilenet_v3_large_fpn",
    "fasterrcnn_mobilenet_v3_large_320_fpn",
)

#: Tolerance (in original-frame pixels) of the continuous -> inclusive box rule.
ROUND_EPS = 1e-3

_CLS_KEY = "roi_heads.box_predictor.cls_score.weight"


# --------------------------------------------------------------------------- loading


def _builder(arch: str):
    if arch not in ARCHS:
        raise HarnessError(f"unknown RPN arch {arch!r}; valid: {', '.join(ARCHS)}")
    return getattr(torchvision.models.detection, arch)


def _resolve_weights(arch: str, tag: str):
    """A weights enum member from a tag ("DEFAULT", "COCO_V1") or a full name ("X_Weights.COCO_V1")."""
    enum = torchvision.models.get_model_weights(arch)
    valid = ["DEFAULT", *enum.__members__]
    name = str(tag).strip()
    if "." in name:
        cls_name, _, name = name.partition(".")
        if cls_name != enum.__name__:
            raise HarnessError(
                f"weights {tag!r} are not for {arch} (its weights are {enum.__name__}.{{{', '.join(valid)}}})"
            )
    try:
        return enum[name] if name != "DEFAULT" else enum.DEFAULT
    except KeyError:
        raise HarnessError(f"unknown weights {tag!r} for {arch}; valid: {', '.join(valid)}") from None


def hub_cache_path(weights) -> Path:
    """Where ``torch.hub.load_state_dict_from_url`` looks for (and would download) ``weights``."""
    filename = os.path.basename(urlparse(weights.url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def _load_cached_weights(builder, arch: str, weights: str, kwargs: dict) -> torch.nn.Module:
    w = _resolve_weights(arch, weights)
    path = hub_cache_path(w)
    how = (
        f"place the file at {path} (download it from {w.url} on a machine with internet), "
        f"or pass annotators.rpn.checkpoint=/path/to/detector_state_dict.pth"
    )
    # Checked before the builder runs: torchvision would otherwise try to download, which
    # offline fails slowly (or hangs on a firewalled network).
    if not path.is_file():
        raise HarnessError(f"weights {w} for the RPN annotator are not in the torch hub cache: {how}")
    try:
        return builder(weights=w, progress=False, **kwargs)
    except Exception as e:  # corrupt / truncated file, or a download attempted anyway
        raise HarnessError(f"could not load weights {w} from {path} ({type(e).__name__}: {e}); {how}") from e


def _unwrap_state_dict(obj, path: Path) -> dict:
    if isinstance(obj, dict):
        # training scripts (torchvision references, Lightning) wrap the weights
        for key in ("model", "state_dict", "model_state_dict"):
            if key in obj and isinstance(obj[key], dict) and not isinstance(obj.get(_CLS_KEY), torch.Tensor):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise HarnessError(f"checkpoint {path} is not a state dict of a Faster R-CNN detector")
    if obj and all(k.startswith("module.") for k in obj):  # saved from DistributedDataParallel
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def _load_checkpoint(builder, arch: str, checkpoint, kwargs: dict) -> torch.nn.Module:
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise HarnessError(f"RPN checkpoint {path} does not exist (annotators.rpn.checkpoint)")
    obj = io.load_tensors(path, "RPN checkpoint (annotators.rpn.checkpoint)")
    sd = _unwrap_state_dict(obj, path)
    cls = sd.get(_CLS_KEY)
    num_classes = int(cls.shape[0]) if isinstance(cls, torch.Tensor) and cls.ndim == 2 else 91
    model = builder(weights=None, weights_backbone=None, num_classes=num_classes, **kwargs)
    expected = model.state_dict()
    # A model built without weights has nn.BatchNorm2d (with a num_batches_tracked counter)
    # where a pretrained one has FrozenBatchNorm2d (without): same eval-mode maths, so the
    # counter is the one key a real torchvision COCO state dict may lack legitimately.
    missing = [k for k in expected if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in expected]
    shapes = [
        f"{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in sd and isinstance(sd[k], torch.Tensor) and sd[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
            if keys:
                more = f" (+{len(keys) - 5} more)" if len(keys) > 5 else ""
                parts.append(f"{len(keys)} {label}: {', '.join(keys[:5])}{more}")
        raise HarnessError(
            f"checkpoint {path} does not match a {arch} detector ({'; '.join(parts)}); "
            f"is it a full-detector state dict of that arch?"
        )
    for k, v in expected.items():
        sd.setdefault(k, v)  # only num_batches_tracked, see above
    try:
        model.load_state_dict(sd, strict=True)
    except Exception as e:
        raise HarnessError(f"could not load checkpoint {path} into {arch}: {e}") from e
    return model


def load_rpn(
    arch: str = "fasterrcnn_resnet50_fpn",
    weights: str | None = "DEFAULT",
    checkpoint: str | os.PathLike | None = None,
    random_init: bool = False,
    device="cpu",
    min_size: int | None = None,
    max_size: int | None = None,
    post_nms_top_n: int = 300,
    nms_thresh: float = 0.7,
) -> torch.nn.Module:
    """A torchvision Faster R-CNN in eval mode whose transform, backbone and RPN give proposals.

    Weight source, first that applies: ``random_init`` (tests only; no weights at all),
    ``checkpoint`` (a full-detector state dict, strict), ``weights`` (a torchvision weights
    tag such as "DEFAULT" / "COCO_V1", read from the torch hub cache only -- never downloaded).
    ``min_size`` / ``max_size`` override the transform's resize (None: the arch's default);
    ``post_nms_top_n`` and ``nms_thresh`` set the RPN's test-time top-n and NMS IoU. The
    arch's other RPN settings are torchvision's (the mobilenet archs keep rpn_score_thresh
    0.05, and mobilenet_320 a pre-NMS top-n of 150 per level).
    """
    builder = _builder(arch)
    if int(post_nms_top_n) < 1:
        raise HarnessError(f"post_nms_top_n must be >= 1, got {post_nms_top_n}")
    if not 0.0 < float(nms_thresh) <= 1.0:
        raise HarnessError(f"nms_thresh must be in (0, 1], got {nms_thresh}")
    kwargs: dict = {"rpn_post_nms_top_n_test": int(post_nms_top_n), "rpn_nms_thresh": float(nms_thresh)}
    if min_size is not None:
        kwargs["min_size"] = int(min_size)
    if max_size is not None:
        kwargs["max_size"] = int(max_size)

    if random_init:
        if checkpoint is not None:
            raise HarnessError("random_init and checkpoint are exclusive: pass one of them")
        model = builder(weights=None, weights_backbone=None, **kwargs)
    elif checkpoint is not None:
        model = _load_checkpoint(builder, arch, checkpoint, kwargs)
    elif weights is not None:
        model = _load_cached_weights(builder, arch, weights, kwargs)
    else:
        raise HarnessError(
            "the RPN annotator needs trained weights: set annotators.rpn.weights (e.g. DEFAULT) "
            "or annotators.rpn.checkpoint=/path"
        )
    return model.to(device).eval()


# --------------------------------------------------------------------------- proposals


def to_inclusive_boxes(boxes: torch.Tensor, height: int, width: int, eps: float = ROUND_EPS) -> torch.Tensor:
    """Continuous ``(x1, y1, x2, y2)`` corner boxes -> inclusive int64 pixel boxes (module docstring)."""
    b = boxes.to(torch.float64)
    x0 = torch.floor(b[:, 0] + eps).clamp(0, width - 1)
    y0 = torch.floor(b[:, 1] + eps).clamp(0, height - 1)
    x1 = (torch.ceil(b[:, 2] - eps) - 1).clamp(0, width - 1)
    y1 = (torch.ceil(b[:, 3] - eps) - 1).clamp(0, height - 1)
    x1 = torch.maximum(x1, x0)
    y1 = torch.maximum(y1, y0)
    return torch.stack((x0, y0, x1, y1), dim=1).to(torch.int64)


def rpn_raw(model: torch.nn.Module, image_list) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Proposals and sigmoid objectness per image of a transformed ``ImageList``.

    Boxes are torchvision's continuous corners in the TRANSFORMED image's coordinates; this is
    ``model.rpn.forward`` minus the loss, keeping the scores ``filter_proposals`` returns.
    """
    rpn = model.rpn
    if rpn.training:
        raise HarnessError("rpn_raw needs the model in eval mode (test-time top-n)")
    features = model.backbone(image_list.tensors)
    if isinstance(features, torch.Tensor):
        features = OrderedDict([("0", features)])
    feats = list(features.values())
    objectness, deltas = rpn.head(feats)
    anchors = rpn.anchor_generator(image_list, feats)
    num_anchors_per_level = [int(o[0].numel()) for o in objectness]
    objectness, deltas = concat_box_prediction_layers(objectness, deltas)
    proposals = rpn.box_coder.decode(deltas.detach(), anchors).view(len(anchors), -1, 4)
    return rpn.filter_proposals(proposals, objectness, image_list.image_sizes, num_anchors_per_level)


def _check_frame(i: int, img) -> None:
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        desc = f"{img.dtype} {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__
        raise HarnessError(f"rpn_proposals: frame {i} must be an RGB uint8 (H, W, 3) array, got {desc}")
    if img.shape[0] < 1 or img.shape[1] < 1:
        raise HarnessError(f"rpn_proposals: frame {i} is empty {img.shape}")


def rpn_proposals(
    model: torch.nn.Module,
    images: list[np.ndarray],
    batch_size: int = 8,
    device="cpu",
    progress: bool = False,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Class-agnostic proposals of each RGB uint8 frame, best first.

    Returns per frame ``(boxes, objectness)``: boxes ``(P, 4)`` int64 inclusive pixel boxes
    ``x0, y0, x1, y1`` in that frame's pixel grid (module docstring for the rounding rule),
    objectness ``(P,)`` float32 sigmoid scores in [0, 1], sorted descending;
    ``P <= post_nms_top_n``. Frames are batched only with frames of the same size, so a
    frame's result does not depend on which other frames are in the list (torchvision pads a
    mixed-size batch to its largest frame, which changes the features near the border).
    The model is moved to ``device`` and put in eval mode.
    """
    if int(batch_size) < 1:
        raise HarnessError(f"batch_size must be >= 1, got {batch_size}")
    for i, img in enumerate(images):
        _check_frame(i, img)
    dev = torch.device(device)
    model.to(dev).eval()

    by_size: dict[tuple[int, int], list[int]] = {}
    for i, img in enumerate(images):
        by_size.setdefault((img.shape[0], img.shape[1]), []).append(i)
    batches = [idx[s : s + batch_size] for idx in by_size.values() for s in range(0, len(idx), batch_size)]

    from tqdm import tqdm

    out: list = [None] * len(images)
    with torch.no_grad():
        for batch in tqdm(batches, desc="rpn proposals", leave=False, disable=not progress):
            tensors = []
            for i in batch:
                arr = np.ascontiguousarray(images[i])
                if not arr.flags.writeable:
                    arr = arr.copy()
                tensors.append(torch.from_numpy(arr).to(dev).permute(2, 0, 1).float().div_(255.0))
            image_list, _ = model.transform(tensors)
            boxes, scores = rpn_raw(model, image_list)
            for i, b, s, size in zip(batch, boxes, scores, image_list.image_sizes):
                h, w = images[i].shape[:2]
                b = resize_boxes(b.float(), list(size), [h, w])
                order = torch.argsort(s, descending=True, stable=True)
                inc = to_inclusive_boxes(b[order], h, w)
                out[i] = (
                    inc.cpu().numpy().astype(np.int64, copy=False),
                    s[order].float().clamp_(0.0, 1.0).cpu().numpy().astype(np.float32, copy=False),
                )
    return out
