"""XGrad-CAM (Fu et al., BMVC 2020)."""
from __future__ import annotations

from harness.cam import GradientCam, weighted_sum


class XGradCAM(GradientCam):
    """XGrad-CAM: ReLU(sum_k w_k A_k), w_k = sum_ij G_kij A_kij / sum_ab A_kab (Fu et al., "Axiom-based Grad-CAM: Towards Accurate Visualization and Explanation of CNNs", BMVC 2020)."""

    # variant "gradcam" adds 1e-7 to the denominator (pytorch-grad-cam); "torchcam" divides
    # without a guard and drops the resulting NaN channels (nansum); they differ only when a
    # channel sums to (nearly) zero.

    name = "xgradcam"

    def combine(self, A, G):
        num = (G * A).sum(dim=(2, 3))
        den = A.sum(dim=(2, 3))
        if self.variant == "torchcam":
            return weighted_sum(num / den, A, nan_skip=True)
        return weighted_sum(num / (den + 1e-7), A)
