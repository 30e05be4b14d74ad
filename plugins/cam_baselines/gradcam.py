"""Grad-CAM (Selvaraju et al., ICCV 2017)."""
from __future__ import annotations

from harness.cam import GradientCam, weighted_sum


class GradCAM(GradientCam):
    """Grad-CAM: ReLU(sum_k w_k A_k), w_k = (1/Z) sum_ij dy_c/dA_kij (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based Localization", ICCV 2017)."""

    name = "gradcam"

    def combine(self, A, G):
        # Both variants agree (torchcam's GradCAM is the same formula).
        return weighted_sum(G.mean(dim=(2, 3)), A)
