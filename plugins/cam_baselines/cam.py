"""CAM (Zhou et al., CVPR 2016): the class's linear-head weights over the last feature map,
M_c = sum_k w_ck A_k. No ReLU: min-max normalization follows, as in Choe et al."""
from __future__ import annotations

import torch

from harness.cam import CamSource


class CAM(CamSource):
    name = "cam"

    def __call__(self, model, images, classes):
        logits, feats = model(images)
        weights = model.head.weight[classes]  # (B, K)
        return torch.einsum("bk,bkhw->bhw", weights, feats), logits
