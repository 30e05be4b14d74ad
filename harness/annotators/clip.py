"""``clip``: a CLIP text-conditioned map for the frame's class, Otsu-thresholded; the box of
the largest connected component (thesis ch. 4, 4.3.1 (b)). The map is Grad-CAM on CLIP
(``harness/annotators/clip_maps.py``) until the CLIP-ES plugin provides its own.

Weights come from an open_clip pretrained tag or a checkpoint path; there is no download at
run time, and without weights the error says how to supply them.
"""
from __future__ import annotations

import numpy as np

from harness.annotators.base import Annotation, Annotator, Context
from harness.data.base import Split

DEFAULTS = dict(
    model="ViT-B-16",  # an open_clip model name, or a model-config JSON path
    pretrained="openai",  # an open_clip pretrained tag (from its local cache)
    checkpoint=None,  # or a state-dict file for `model`
    random_init=False,  # random weights: for tests only
    templates=["a photo of a {}."],
    batch_size=32,
)


class ClipAnnotator(Annotator):
    name = "clip"

    def __init__(self, settings: dict):
        super().__init__({**DEFAULTS, **settings})

    def annotate(self, split: Split, indices: list[int], ctx: Context) -> Annotation:
        from harness.annotators.clip_maps import clip_boxes, load_clip

        s = self.settings
        model, mean_std, tokenizer = load_clip(s["model"], s["pretrained"], s["checkpoint"], s["random_init"], device=ctx.device)
        boxes, peaks = [], []
        bs = int(s["batch_size"])
        for j in range(0, len(indices), bs):  # bounded memory on large splits
            chunk = indices[j:j + bs]
            images = [split.image(i) for i in chunk]
            labels = [split.frames[i].label for i in chunk]
            b, maps = clip_boxes(model, mean_std, tokenizer, images, labels, list(ctx.dataset.classes),
                                 templates=tuple(s["templates"]), batch_size=bs, device=ctx.device)
            boxes.extend([[tuple(int(v) for v in box)] for box in b])
            for m in maps:
                y, x = np.unravel_index(int(np.argmax(m)), m.shape)
                peaks.append((int(x), int(y)))
        return Annotation(boxes=boxes, peaks=peaks)
