"""CAM (Zhou et al., CVPR 2016): M_c = sum_k w_ck A_k, the linear head's class weights over the
last feature map. No ReLU: min-max normalization follows, as in Choe et al. (and torchcam)."""
from __future__ import annotations

import torch

from harness.cam import CamSource, as_classes, forward_features, weighted_sum


class CAM(CamSource):
    """CAM: M_c = sum_k w_ck A_k, no ReLU (Zhou et al., "Learning Deep Features for Discriminative Localization", CVPR 2016)."""

    name = "cam"
    needs_grad = False
    relu = False

    # Both variants agree (torchcam's CAM has no ReLU either).

    def raw(self, model, images, classes):
        logits, feats = forward_features(model, self.model_input(images))
        classes = as_classes(classes, images.shape[0], logits.device, logits.shape[1])
        # The head's weights are parameters: read under no_grad too, or the map would carry a
        # graph back to them when a caller has grad mode on.
        with torch.no_grad():
            weights = model.head.weight[classes]  # (B, K)
            return weighted_sum(weights.to(feats.dtype), feats), logits
