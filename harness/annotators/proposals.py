"""``cam-pg`` and ``rpn``: the realistic-protocol chapter's multi-proposal annotators.

For each frame (thesis ch. 4, 4.3.1 and Suppl. 4.6.3):

1. region proposals: Selective Search (``cam-pg``, unsupervised, offline) or a class-agnostic
   RPN with objectness scores (``rpn``);
2. keep the top ``filter_fraction`` (20%) of them by the filter score: classifier score for
   Selective Search, objectness for the RPN ("we initially filter the top 20% based on
   objectness or classifier score for boxes obtained from RPN and SS, respectively");
3. pointing game: keep those that contain the peak of the classifier's CAM for the label;
4. the survivor with the highest classifier score for the label is the pseudo-box.

The thesis does not say how the classifier scores a proposal ("classifier confidence over the
foreground region"). ``classifier_score="roi"`` (default) pools the classifier's features
inside the box (RoIAlign) and takes the softmax probability of the label from its head;
``"crop"`` crops the box from the image, resizes it to the classifier's input size and
classifies the crop. Mean IoU with GT on synth-yto val: roi 47.5, crop 26.5; on synth-cub
val: roi 22.2, crop 39.7. roi favours the discriminative part, crop large boxes (a classifier
trained on whole frames scores whole-frame crops highest); the thesis's Selective Search
boxes score 40.0 on CUB. When no filtered proposal contains the peak,
the best-scored filtered one is taken; a frame without proposals gets the whole image.

The quality report also gives the box each partial chain would have chosen (Table 4.5).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align
from tqdm import tqdm

from harness.annotators.base import Annotation, Annotator, Context
from harness.annotators.classifier import trained_classifier
from harness.data.base import Split
from harness.data.loader import to_tensor
from harness.errors import HarnessError

_SCORES = ("crop", "roi")


def _classifier_defaults() -> dict:
    from harness.config import BASE_CONFIG, read_file

    c = read_file(BASE_CONFIG)["classifier"]
    return c


def cam_pg_defaults() -> dict:
    return dict(
        classifier=_classifier_defaults(),  # the classifier that gives the CAM and the scores
        seed=0,
        proposals="selective-search",
        selective_search=dict(scale=100.0, sigma=0.8, min_size=20, color_spaces=["hsv"]),
        filter_fraction=0.2,
        filter_score="classifier",
        classifier_score="roi",
        batch_size=64,
    )


def rpn_defaults() -> dict:
    return dict(
        cam_pg_defaults(),
        proposals="rpn",
        rpn=dict(arch="fasterrcnn_resnet50_fpn", weights="DEFAULT", checkpoint=None, random_init=False,
                 post_nms_top_n=300),
        filter_score="objectness",
        selective_search=None,
    )


def choose_box(props: np.ndarray, scores: np.ndarray, filter_scores: np.ndarray, peak: tuple[int, int],
               fraction: float) -> dict:
    """The chain on one frame's proposals ``(P, 4)``: ``final`` (filter, pointing game, best
    score), and for the quality report ``pg`` (pointing game, best score, no filter) and
    ``top_filtered`` (best filter score alone). Ties keep the earlier proposal."""
    px, py = peak
    k = max(1, math.ceil(len(props) * fraction))
    kept = np.argsort(-np.asarray(filter_scores), kind="stable")[:k]
    inside = (props[:, 0] <= px) & (px <= props[:, 2]) & (props[:, 1] <= py) & (py <= props[:, 3])

    def best(idx):
        idx = np.asarray(idx)
        return tuple(int(v) for v in props[idx[np.argmax(scores[idx])]])

    pg_all = np.flatnonzero(inside)
    pg_kept = kept[inside[kept]]
    return {
        "final": best(pg_kept) if len(pg_kept) else best(kept),
        "pg": best(pg_all) if len(pg_all) else best(np.arange(len(props))),
        "top_filtered": tuple(int(v) for v in props[kept[0]]),
    }


class ProposalAnnotator(Annotator):
    def __init__(self, settings: dict):
        super().__init__(settings)
        s = self.settings
        if s["proposals"] not in ("selective-search", "rpn"):
            raise HarnessError(f"proposals={s['proposals']!r}: use 'selective-search' or 'rpn'")
        if s["classifier_score"] not in _SCORES:
            raise HarnessError(f"classifier_score={s['classifier_score']!r}: use one of {', '.join(_SCORES)}")
        if s["filter_score"] not in ("classifier", "objectness"):
            raise HarnessError(f"filter_score={s['filter_score']!r}: use 'classifier' or 'objectness'")
        if s["filter_score"] == "objectness" and s["proposals"] != "rpn":
            raise HarnessError("filter_score='objectness' needs proposals='rpn' (Selective Search has no objectness)")
        if not 0 < float(s["filter_fraction"]) <= 1:
            raise HarnessError(f"filter_fraction={s['filter_fraction']} must be in (0, 1]")

    def identity_settings(self) -> dict:
        """Whether the classifier went through the stage cache does not change the boxes."""
        out = super().identity_settings()
        out["classifier"] = {k: v for k, v in dict(out["classifier"]).items() if k != "cache"}
        return out

    def annotate(self, split: Split, indices: list[int], ctx: Context) -> Annotation:
        s = self.settings
        proposer = self._proposer(ctx)  # missing weights fail before the classifier trains
        clf = trained_classifier(s["classifier"], s["seed"], ctx.dataset, ctx.workdir, ctx.device, ctx.progress,
                                 annotator=f"{self.name} annotator")
        boxes, steps, candidates, peaks = [], {"pg": [], "top_filtered": []}, [], []
        for i in tqdm(indices, desc=f"{self.name} {split.name}", leave=False, disable=not ctx.progress):
            image = split.image(i)
            label = split.frames[i].label
            props, objectness = proposer(image)
            if len(props) == 0:
                h, w = image.shape[:2]
                props, objectness = np.array([[0, 0, w - 1, h - 1]]), np.ones(1)
            choice = self._choose(clf, image, label, props, objectness, ctx.device)
            boxes.append([choice["final"]])
            steps["pg"].append(choice["pg"])
            steps["top_filtered"].append(choice["top_filtered"])
            candidates.append(props)
            peaks.append(choice["peak"])
        return Annotation(boxes=boxes, steps=steps, candidates=candidates, peaks=peaks)

    def _proposer(self, ctx: Context):
        s = self.settings
        if s["proposals"] == "selective-search":
            from harness.annotators.selective_search import selective_search

            opts = dict(s["selective_search"])
            opts["color_spaces"] = tuple(opts.get("color_spaces", ("hsv",)))
            return lambda image: (selective_search(image, **opts), None)
        from harness.annotators.rpn import load_rpn, rpn_proposals

        r = dict(s["rpn"])
        model = load_rpn(r.pop("arch"), r.pop("weights"), r.pop("checkpoint"), r.pop("random_init"),
                         device=ctx.device, **r)
        return lambda image: rpn_proposals(model, [image], device=ctx.device)[0]

    @torch.no_grad()
    def _choose(self, clf, image: np.ndarray, label: int, props: np.ndarray, objectness, device) -> dict:
        s = self.settings
        x = to_tensor(image, clf.normalization)[None].to(device)
        h, w = image.shape[:2]
        logits, feats = clf.model(x)
        cam = torch.einsum("c,chw->hw", clf.model.head.weight[label], feats[0])
        cam = F.interpolate(cam[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        py, px = divmod(int(torch.argmax(cam)), w)
        scores = self._scores(clf, x, feats, props, label).cpu().numpy()
        filt_by = scores if s["filter_score"] == "classifier" else np.asarray(objectness)
        return {**choose_box(props, scores, filt_by, (px, py), float(s["filter_fraction"])), "peak": (px, py)}

    def _scores(self, clf, x, feats, props, label) -> torch.Tensor:
        """Softmax probability of ``label`` for each proposal."""
        rois = torch.as_tensor(props, dtype=torch.float32, device=x.device)
        rois = torch.cat([torch.zeros(len(rois), 1, device=x.device), rois[:, :2], rois[:, 2:] + 1], dim=1)
        out = []
        bs = int(self.settings["batch_size"])
        for j in range(0, len(rois), bs):
            chunk = rois[j:j + bs]
            if self.settings["classifier_score"] == "crop":
                crops = roi_align(x, chunk, output_size=tuple(x.shape[-2:]), spatial_scale=1.0, aligned=True)
                logits, _ = clf.model(crops)
            else:
                scale = feats.shape[-1] / x.shape[-1]
                pooled = roi_align(feats, chunk, output_size=(4, 4), spatial_scale=scale, aligned=True)
                logits = clf.model.head(pooled.mean(dim=(2, 3)))
            out.append(logits.softmax(1)[:, label])
        return torch.cat(out)


class CamPg(ProposalAnnotator):
    name = "cam-pg"

    def __init__(self, settings: dict):
        super().__init__({**cam_pg_defaults(), **settings})


class Rpn(ProposalAnnotator):
    name = "rpn"

    def __init__(self, settings: dict):
        super().__init__({**rpn_defaults(), **settings})
