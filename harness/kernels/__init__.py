"""Optional fused kernels (Triton on CUDA, plain torch elsewhere). Importing this package does
not import Triton; see :mod:`harness.kernels.cam`."""
from harness.kernels.cam import (
    TritonUnavailableError,
    cam_maps,
    triton_available,
    upsample_minmax,
    weighted_channel_sum,
)

__all__ = ["TritonUnavailableError", "cam_maps", "triton_available", "upsample_minmax", "weighted_channel_sum"]
