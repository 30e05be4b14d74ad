"""``noisy-gt``: the GT boxes perturbed at a chosen noise level, for the realistic-protocol
chapter's robustness study (Murtaza's thesis, Suppl. 4.6.2: ten levels, 5% to 50%).

The thesis gives the three perturbations and their order but not the sampling formulas; at
noise level ``p`` each GT box is, in order:

1. scaled about its centre by ``1 + s``, ``s ~ U(-p, p)`` (so within -50%..+50% at p = 0.5);
2. shifted by ``d ~ U(0, p)`` of its width and height, in a uniformly random direction;
3. with probability ``p``, its aspect ratio changed: width times ``1 + a``, height divided by
   ``1 + a``, ``a ~ U(-p, p)``;

then rounded and clipped to the image (at least one pixel). Each frame draws from its own
generator, seeded by (seed, frame id): the boxes do not depend on the split's order.
"""
from __future__ import annotations

import hashlib

import numpy as np

from harness.annotators.base import Annotation, Annotator, Context
from harness.data.base import Split
from harness.errors import HarnessError

DEFAULTS = dict(noise=0.3, seed=0)


def perturb_box(box, p: float, rng: np.random.Generator, width: int, height: int) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = (float(v) for v in box)
    w, h = x1 - x0 + 1, y1 - y0 + 1
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    s = rng.uniform(-p, p)
    w, h = w * (1 + s), h * (1 + s)
    d, theta = rng.uniform(0, p), rng.uniform(0, 2 * np.pi)
    cx, cy = cx + d * np.cos(theta) * w, cy + d * np.sin(theta) * h
    if rng.random() < p:
        a = rng.uniform(-p, p)
        w, h = w * (1 + a), h / (1 + a)
    nx0 = int(np.clip(round(cx - (w - 1) / 2), 0, width - 1))
    ny0 = int(np.clip(round(cy - (h - 1) / 2), 0, height - 1))
    nx1 = int(np.clip(round(cx + (w - 1) / 2), nx0, width - 1))
    ny1 = int(np.clip(round(cy + (h - 1) / 2), ny0, height - 1))
    return nx0, ny0, nx1, ny1


def frame_rng(seed: int, frame_id: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}:{frame_id}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


class NoisyGt(Annotator):
    name = "noisy-gt"

    def __init__(self, settings: dict):
        super().__init__({**DEFAULTS, **settings})
        p = self.settings["noise"]
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
            raise HarnessError(f"annotators.noisy-gt.noise={p!r} must be a number in [0, 1] (e.g. 0.05 to 0.5)")

    def annotate(self, split: Split, indices: list[int], ctx: Context) -> Annotation:
        p, seed = float(self.settings["noise"]), int(self.settings["seed"])
        out = []
        for i in indices:
            frame = split.frames[i]
            if not frame.has_boxes:
                raise HarnessError(f"noisy-gt needs GT boxes, and frame {frame.id!r} of {split.name!r} has none")
            height, width = split.image(i).shape[:2]
            rng = frame_rng(seed, frame.id)
            out.append([perturb_box(b, p, rng, width, height) for b in frame.boxes])
        return Annotation(boxes=out)
