"""``clip``: a CLIP text-conditioned map for the frame's class, Otsu-thresholded; the box of
the largest connected component (thesis ch. 4, 4.3.1 (b)). The map is CLIP-ES's
(``annotators.clip.maps=clip-es``, the chapter's choice; harness/plugins/clip_es/) or plain
Grad-CAM on CLIP (``gradcam``, harness/annotators/clip_maps.py).

Weights come from an open_clip pretrained tag or a checkpoint path; there is no download at
run time, and without weights the error says how to supply them.
"""
from __future__ import annotations

import numpy as np

from harness.annotators.base import Annotation, Annotator, Context
from harness.data.base import Split
from harness.errors import HarnessError

MAPS = ("clip-es", "gradcam")
DEFAULTS = dict(
    model="ViT-B-16",  # an open_clip model name, or a model-config JSON path
    pretrained="openai",  # an open_clip pretrained tag (from its local cache)
    checkpoint=None,  # or a state-dict file for `model`
    random_init=False,  # random weights: for tests only
    maps="clip-es",  # "clip-es" (softmax Grad-CAM + CAA) or "gradcam" (Grad-CAM of the cosine)
    templates=None,  # None: CLIP-ES's "a clean origami {}." / Grad-CAM's "a photo of a {}."
    background="voc",  # clip-es: the background prompts (a list name of clip_es/names.toml, or words)
    tau_caa=0.4,  # clip-es: CAA's box threshold
    attn_layers=8,  # clip-es: attention maps averaged
    batch_size=32,
)


class ClipAnnotator(Annotator):
    name = "clip"

    def __init__(self, settings: dict):
        super().__init__({**DEFAULTS, **settings})
        if self.settings["maps"] not in MAPS:
            raise HarnessError(f"annotators.clip.maps={self.settings['maps']!r}: use one of {MAPS}")

    def annotate(self, split: Split, indices: list[int], ctx: Context) -> Annotation:
        from harness.annotators.clip_maps import class_text_features, clip_boxes, load_clip

        s = self.settings
        model, mean_std, tokenizer = load_clip(s["model"], s["pretrained"], s["checkpoint"], s["random_init"],
                                               device=ctx.device, option="annotators.clip.checkpoint")
        classes, cam_fn = list(ctx.dataset.classes), None
        if s["maps"] == "clip-es":
            from harness.plugins.clip_es.model import clip_es_maps
            from harness.plugins.clip_es.text import background_words, prompt_names

            templates = tuple(s["templates"] or ("a clean origami {}.",))
            classes = prompt_names(ctx.dataset.name, classes)
            background = class_text_features(model, tokenizer, background_words(s["background"]), templates,
                                             device=ctx.device)

            def cam_fn(model, images, text, labels):
                return clip_es_maps(model, images, labels, text, background, attn_layers=int(s["attn_layers"]),
                                    tau_caa=float(s["tau_caa"])).maps
        else:
            templates = tuple(s["templates"] or ("a photo of a {}.",))
        boxes, peaks = [], []
        bs = int(s["batch_size"])
        for j in range(0, len(indices), bs):  # bounded memory on large splits
            chunk = indices[j:j + bs]
            images = [split.image(i) for i in chunk]
            labels = [split.frames[i].label for i in chunk]
            b, maps = clip_boxes(model, mean_std, tokenizer, images, labels, classes, templates=templates,
                                 batch_size=bs, device=ctx.device, cam_fn=cam_fn)
            boxes.extend([[tuple(int(v) for v in box)] for box in b])
            for m in maps:
                y, x = np.unravel_index(int(np.argmax(m)), m.shape)
                peaks.append((int(x), int(y)))
        return Annotation(boxes=boxes, peaks=peaks)
