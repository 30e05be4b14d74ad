"""LayerCAM (Jiang et al., TIP 2021)."""
from __future__ import annotations

import torch

from harness.cam import GradientCam, weighted_channel_sum


class LayerCAM(GradientCam):
    """LayerCAM: ReLU(sum_k ReLU(G_k) * A_k), spatial weights (Jiang et al., "LayerCAM: Exploring Hierarchical Class Activation Maps for Localization", IEEE TIP 2021)."""

    name = "layercam"

    def combine(self, A, G):
        # Both variants agree.
        if A.is_cuda:  # fused: ReLU(G) is never materialized
            return weighted_channel_sum(G, A, relu_weights=True)
        return (torch.relu(G) * A).sum(dim=1)
