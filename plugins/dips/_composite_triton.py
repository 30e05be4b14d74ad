"""Triton kernel behind the ``"triton"`` path of :func:`harness.plugins.dips.proposals.composite`
(imported lazily: this module needs Triton).

All P composites of a call in one launch, grid ``(P, cdiv(H * W, BLOCK))``: program (p, j)
writes pixels ``j * BLOCK ..`` of composite p, every channel. It reads its box and owner image
(five scalars) once, decides per pixel whether it lies inside the box, and per channel loads
that pixel from the owner's image where inside and from the owner's blurred copy where
outside (two masked loads, so each pixel is read from one source only), then stores it.
Consecutive lanes take consecutive pixels of a row-major plane: loads and stores are
coalesced. The images and blurred copies (B, C, H, W) are read in place: the B blurred
copies serve every box of their image, nothing is expanded to P copies first.

Layout: contiguous NCHW for the inputs (the wrapper makes them so) and the output. Any float
dtype (float16, bfloat16, float32); the output has the images' dtype, and since a composite
only selects values, it equals the torch path bit for bit. As in
:mod:`harness.kernels._lattice_triton`, the kernel body is a plain function jitted on first use
for the current ``TRITON_INTERPRET`` mode, so the tests run it on CPU tensors.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

# interpreting: resolve_backend asks the module
from harness.kernels._triton_common import interpreting, jitted, launch_on  # noqa: F401

BLOCK = 1024  # pixels per program: 4 warps x 32 lanes x 8


def _composite_kernel(IMG, BLUR, BOXES, OWNER, OUT, C, H, W, BLOCK: tl.constexpr):
    """OUT[p] = IMG[OWNER[p]] inside BOXES[p] (x0, y0, x1, y1 inclusive), BLUR[OWNER[p]] outside."""
    p = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    hw = H * W
    live = offs < hw
    y = offs // W
    x = offs % W
    o = tl.load(OWNER + p)
    x0 = tl.load(BOXES + p * 4)
    y0 = tl.load(BOXES + p * 4 + 1)
    x1 = tl.load(BOXES + p * 4 + 2)
    y1 = tl.load(BOXES + p * 4 + 3)
    inside = (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)
    src = o * C * hw + offs  # int64: B * C * H * W may pass 2^31
    dst = p * C * hw + offs
    for c in range(C):
        sharp = tl.load(IMG + src + c * hw, mask=live & inside, other=0.0)
        soft = tl.load(BLUR + src + c * hw, mask=live & ~inside, other=0.0)
        tl.store(OUT + dst + c * hw, tl.where(inside, sharp, soft), mask=live)


def kernels():
    """``(composite,)`` jitted for the current mode (compiled or interpreted)."""
    return jitted(_composite_kernel)


def composite(images: torch.Tensor, blurred: torch.Tensor, boxes: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
    """(P, C, H, W) in the images' dtype; images and blurred (B, C, H, W) of one dtype, boxes
    (P, 4) and owner (P,) integer, all on one device (checked by the caller)."""
    (kern,) = kernels()
    P = owner.shape[0]
    _, C, H, W = images.shape
    dev = images.device
    out = torch.empty((P, C, H, W), dtype=images.dtype, device=dev)
    if out.numel() == 0:
        return out
    with launch_on(dev):
        kern[(P, triton.cdiv(H * W, BLOCK))](
            images.contiguous(), blurred.contiguous(), boxes.long().contiguous(), owner.long().contiguous(), out,
            C, H, W, BLOCK=BLOCK, num_warps=4,
        )
    return out
