"""Triton kernels behind :mod:`harness.kernels.cam` (imported lazily: this module needs Triton).

The kernel bodies are plain functions here; :func:`kernels` wraps them with ``triton.jit`` on
first use. Wrapping late (instead of decorating at import) matters under the interpreter:
``triton.jit`` reads ``TRITON_INTERPRET`` when it *wraps* a function, so kernels built once in
compiled mode would ignore a later ``TRITON_INTERPRET=1`` (as tests set it). The cache is keyed
on the flag, so each mode gets its own wrapped kernels.

Numbers: all arithmetic is float32 (inputs of any float dtype are converted on load); the
bilinear weights follow PyTorch's ``upsample_bilinear2d`` with ``align_corners=False``
(source index ``scale * (dst + 0.5) - 0.5`` clamped at 0, ``scale = in / out``), and the
normalization divides with IEEE rounding (``div_rn``), as torch does.
"""
from __future__ import annotations


import torch
import triton
import triton.language as tl

from harness.kernels._triton_common import interpreting, jitted, launch_on  # noqa: F401 (interpreting: the callers ask the module)

# Tile sizes (powers of two). The weighted sum reads a (BLOCK_K, BLOCK_P) tile of A per step:
# 32 x 128 fp32 = 16 KiB, contiguous along the spatial axis for NCHW activations.
WSUM_BLOCK_K = 32
WSUM_BLOCK_P = 128
UP_BLOCK = 1024  # output pixels per program in the upsampling kernel
UP_MAX_SPLIT = 16  # programs per map computing min/max partials (phase 0)


def _wsum_kernel(
    A, Wt, M,
    K, HW, width,
    s_ab, s_ak, s_ay, s_ax,
    s_wb, s_wk, s_wy, s_wx,
    s_mb,
    ELEMENTWISE: tl.constexpr, RELU: tl.constexpr, RELU_WEIGHTS: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """M[b, p] = sum_k A[b, k, p] * w[b, k(, p)] for one tile of BLOCK_P pixels of image b."""
    b = tl.program_id(0).to(tl.int64)
    offs_p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    mask_p = offs_p < HW
    y = offs_p // width
    x = offs_p % width
    a_base = A + b * s_ab + (y * s_ay + x * s_ax)[None, :]
    w_base = Wt + b * s_wb
    acc = tl.zeros((BLOCK_P,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < K
        mask = mask_k[:, None] & mask_p[None, :]
        a = tl.load(a_base + offs_k[:, None] * s_ak, mask=mask, other=0.0).to(tl.float32)
        if ELEMENTWISE:
            wt = tl.load(w_base + offs_k[:, None] * s_wk + (y * s_wy + x * s_wx)[None, :], mask=mask,
                         other=0.0).to(tl.float32)
            if RELU_WEIGHTS:
                wt = tl.maximum(wt, 0.0)
            acc += tl.sum(a * wt, axis=0)
        else:
            wk = tl.load(w_base + offs_k * s_wk, mask=mask_k, other=0.0).to(tl.float32)
            if RELU_WEIGHTS:
                wk = tl.maximum(wk, 0.0)
            acc += tl.sum(a * wk[:, None], axis=0)
    if RELU:
        acc = tl.maximum(acc, 0.0)
    tl.store(M + b * s_mb + offs_p, acc, mask=mask_p)


def _upsample_kernel(
    X, P, O,
    h, w, H, W,
    s_xb, s_xy, s_xx,
    s_ob,
    scale_h, scale_w,
    NSPLIT,
    PHASE: tl.constexpr, NSPLIT_P2: tl.constexpr, BLOCK: tl.constexpr,
):
    """Bilinear upsampling (align_corners=False) + per-map min-max normalization, in two launches.

    PHASE 0, grid (B, NSPLIT): program s interpolates output tiles s, s + NSPLIT, ... of map b
    and writes min/max of those values, and min/max of its share of the *input* map, to
    P[b, s, 0:4]. PHASE 1, grid (B, cdiv(H*W, BLOCK)): reduces the partials of map b and writes
    one normalized output tile. A map whose input is constant (or whose upsampled values are)
    becomes zeros: bilinear weights that sum to 1 only up to rounding would otherwise turn a
    constant map into rounding noise stretched to [0, 1].
    """
    b = tl.program_id(0).to(tl.int64)
    pid = tl.program_id(1)
    x_base = X + b * s_xb
    HWo = H * W
    if PHASE == 0:
        lo = tl.full((BLOCK,), float("inf"), tl.float32)
        hi = tl.full((BLOCK,), float("-inf"), tl.float32)
        n_tiles = (HWo + BLOCK - 1) // BLOCK
        for t in range(pid, n_tiles, NSPLIT):
            offs = t * BLOCK + tl.arange(0, BLOCK)
            mask = offs < HWo
            # --- bilinear sample (same code as in PHASE 1) ---
            oy = offs // W
            ox = offs % W
            sy = tl.maximum(scale_h * (oy.to(tl.float32) + 0.5) - 0.5, 0.0)
            sx = tl.maximum(scale_w * (ox.to(tl.float32) + 0.5) - 0.5, 0.0)
            y0 = tl.minimum(sy.to(tl.int32), h - 1)
            x0 = tl.minimum(sx.to(tl.int32), w - 1)
            y1 = tl.where(y0 < h - 1, y0 + 1, y0)
            x1 = tl.where(x0 < w - 1, x0 + 1, x0)
            ly1 = sy - y0.to(tl.float32)
            lx1 = sx - x0.to(tl.float32)
            ly0 = 1.0 - ly1
            lx0 = 1.0 - lx1
            v00 = tl.load(x_base + y0 * s_xy + x0 * s_xx, mask=mask, other=0.0).to(tl.float32)
            v01 = tl.load(x_base + y0 * s_xy + x1 * s_xx, mask=mask, other=0.0).to(tl.float32)
            v10 = tl.load(x_base + y1 * s_xy + x0 * s_xx, mask=mask, other=0.0).to(tl.float32)
            v11 = tl.load(x_base + y1 * s_xy + x1 * s_xx, mask=mask, other=0.0).to(tl.float32)
            v = ly0 * (lx0 * v00 + lx1 * v01) + ly1 * (lx0 * v10 + lx1 * v11)
            # ---
            lo = tl.minimum(lo, tl.where(mask, v, float("inf")))
            hi = tl.maximum(hi, tl.where(mask, v, float("-inf")))
        in_lo = tl.full((BLOCK,), float("inf"), tl.float32)
        in_hi = tl.full((BLOCK,), float("-inf"), tl.float32)
        for t in range(pid, (h * w + BLOCK - 1) // BLOCK, NSPLIT):
            offs = t * BLOCK + tl.arange(0, BLOCK)
            mask = offs < h * w
            v = tl.load(x_base + (offs // w) * s_xy + (offs % w) * s_xx, mask=mask, other=0.0).to(tl.float32)
            in_lo = tl.minimum(in_lo, tl.where(mask, v, float("inf")))
            in_hi = tl.maximum(in_hi, tl.where(mask, v, float("-inf")))
        p = P + (b * NSPLIT + pid) * 4
        tl.store(p + 0, tl.min(lo, axis=0))
        tl.store(p + 1, tl.max(hi, axis=0))
        tl.store(p + 2, tl.min(in_lo, axis=0))
        tl.store(p + 3, tl.max(in_hi, axis=0))
    else:
        s = tl.arange(0, NSPLIT_P2)
        ms = s < NSPLIT
        p = P + (b * NSPLIT + s) * 4
        lo = tl.min(tl.load(p + 0, mask=ms, other=float("inf")), axis=0)
        hi = tl.max(tl.load(p + 1, mask=ms, other=float("-inf")), axis=0)
        in_lo = tl.min(tl.load(p + 2, mask=ms, other=float("inf")), axis=0)
        in_hi = tl.max(tl.load(p + 3, mask=ms, other=float("-inf")), axis=0)
        keep = (hi > lo) & (in_hi > in_lo)
        span = tl.where(keep, hi - lo, 1.0)

        offs = pid * BLOCK + tl.arange(0, BLOCK)
        mask = offs < HWo
        # --- bilinear sample (same code as in PHASE 0) ---
        oy = offs // W
        ox = offs % W
        sy = tl.maximum(scale_h * (oy.to(tl.float32) + 0.5) - 0.5, 0.0)
        sx = tl.maximum(scale_w * (ox.to(tl.float32) + 0.5) - 0.5, 0.0)
        y0 = tl.minimum(sy.to(tl.int32), h - 1)
        x0 = tl.minimum(sx.to(tl.int32), w - 1)
        y1 = tl.where(y0 < h - 1, y0 + 1, y0)
        x1 = tl.where(x0 < w - 1, x0 + 1, x0)
        ly1 = sy - y0.to(tl.float32)
        lx1 = sx - x0.to(tl.float32)
        ly0 = 1.0 - ly1
        lx0 = 1.0 - lx1
        v00 = tl.load(x_base + y0 * s_xy + x0 * s_xx, mask=mask, other=0.0).to(tl.float32)
        v01 = tl.load(x_base + y0 * s_xy + x1 * s_xx, mask=mask, other=0.0).to(tl.float32)
        v10 = tl.load(x_base + y1 * s_xy + x0 * s_xx, mask=mask, other=0.0).to(tl.float32)
        v11 = tl.load(x_base + y1 * s_xy + x1 * s_xx, mask=mask, other=0.0).to(tl.float32)
        v = ly0 * (lx0 * v00 + lx1 * v01) + ly1 * (lx0 * v10 + lx1 * v11)
        # ---
        out = tl.div_rn(v - lo, span)
        out = tl.minimum(tl.maximum(out, 0.0), 1.0)
        out = tl.where(keep, out, 0.0)
        tl.store(O + b * s_ob + offs, out, mask=mask)


def kernels():
    """``(wsum, upsample)`` jitted for the current mode (compiled or interpreted)."""
    return jitted(_wsum_kernel, _upsample_kernel)


def weighted_channel_sum(A: torch.Tensor, w: torch.Tensor, relu: bool, relu_weights: bool) -> torch.Tensor:
    """(B, h, w) float32 on A's device; shapes are checked by the caller."""
    wsum, _ = kernels()
    B, K, h, wd = A.shape
    out = torch.empty((B, h, wd), device=A.device, dtype=torch.float32)
    elementwise = w.dim() == 4
    s_w = w.stride() if elementwise else (*w.stride(), 0, 0)
    grid = (B, triton.cdiv(h * wd, WSUM_BLOCK_P))
    with launch_on(A.device):
        wsum[grid](
            A, w, out,
            K, h * wd, wd,
            *A.stride(),
            *s_w,
            out.stride(0),
            ELEMENTWISE=elementwise, RELU=bool(relu), RELU_WEIGHTS=bool(relu_weights),
            BLOCK_K=WSUM_BLOCK_K, BLOCK_P=WSUM_BLOCK_P,
        )
    return out


def upsample_minmax(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, H, W) float32 in [0, 1] on maps' device; shapes are checked by the caller."""
    _, up = kernels()
    B, h, w = maps.shape
    H, W = size
    out = torch.empty((B, H, W), device=maps.device, dtype=torch.float32)
    if B == 0:
        return out
    nsplit = max(1, min(UP_MAX_SPLIT, triton.cdiv(H * W, UP_BLOCK)))
    partials = torch.empty((B, nsplit, 4), device=maps.device, dtype=torch.float32)
    # torch's scale for an explicit output size: float(in) / out, as a float32 (opmath) value.
    args = (maps, partials, out, h, w, H, W, *maps.stride(), out.stride(0), h / H, w / W, nsplit)
    meta = dict(NSPLIT_P2=triton.next_power_of_2(nsplit), BLOCK=UP_BLOCK)
    with launch_on(maps.device):
        up[(B, nsplit)](*args, PHASE=0, **meta)
        up[(B, triton.cdiv(H * W, UP_BLOCK))](*args, PHASE=1, **meta)
    return out
