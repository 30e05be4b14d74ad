"""Triton kernels behind the CUDA path of :mod:`harness.kernels.lattice` (imported lazily: this
module needs Triton).

Four kernels: ``points`` (steps 1-2 for BLOCK points of one group per program: elevation,
nearest remainder-0 point, ranks, sum fix-up, barycentric weights and the packed keys of the D
simplex vertices; a point's D coordinates are the columns of a (BLOCK, DP) tile, DP = D rounded
up to a power of two), ``splat`` (``tl.atomic_add`` of ``w * value`` into the vertex table),
``blur`` (one direction, a gather of the two neighbours per vertex) and ``slice`` (a gather of
the D vertices per point). The dedupe of the keys (``torch.unique``) and the neighbour search
(``torch.searchsorted``) stay in torch (``lattice.dedupe_torch``). As in
:mod:`harness.kernels._crf_triton`, the kernel bodies are plain functions jitted on first use for
the current ``TRITON_INTERPRET`` mode, so the tests run them on CPU tensors.

The points kernel does the float operations of ``lattice.points_torch`` in the features' dtype,
in the same order, and is launched without FMA contraction on the GPU, so it picks the same
simplices as the torch and numba paths.
"""
from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

from harness.kernels._triton_common import interpreting, jitted, launch_on  # noqa: F401 (interpreting: the callers ask the module)

BLOCK_POINTS = 64  # points per program of the points kernel
BLOCK = 128  # points (vertices) per program of the splat, slice (blur) kernels
# Grids are (blocks of points, groups): CUDA allows 2^31 - 1 programs along x, 65535 along y.


def _points_kernel(
    F, CST, LO, PW, GPART, KEYS, W,
    N, s_fb, s_fn,
    d: tl.constexpr, D: tl.constexpr, DP: tl.constexpr, BLOCK: tl.constexpr,
):
    """KEYS[b, n, k] (int64) and W[b, n, k] for the points of this block (see the module doc;
    D = d + 1). Column j of a (BLOCK, DP) tile is read as the sum of the tile masked to it
    (exact: one value plus zeros)."""
    b = tl.program_id(1).to(tl.int64)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    offs64 = offs.to(tl.int64)
    cols = tl.arange(0, DP)
    valid = cols < D
    down = tl.load(CST + d)
    Df = tl.load(CST + d + 1)
    one = tl.load(CST + d + 2)
    zero = tl.load(CST + d + 3)
    # 1. elevation: e[i] = sm - i * cf for i = d..1, sm accumulating the scaled features
    sm = tl.zeros((BLOCK,), CST.dtype.element_ty) + zero
    e = tl.zeros((BLOCK, DP), CST.dtype.element_ty)
    for t in tl.static_range(d):
        i = d - t
        f = tl.load(F + b * s_fb + offs64 * s_fn + (i - 1), mask=mask, other=0.0)
        cf = f * tl.load(CST + (i - 1))
        e = tl.where(cols[None, :] == i, (sm - tl.load(CST + d + 4 + i) * cf)[:, None], e)
        sm = sm + cf
    e = tl.where(cols[None, :] == 0, sm[:, None], e)
    # 2. nearest remainder-0 point
    v = e * down
    cl = tl.ceil(v)
    fl = tl.floor(v)
    r = tl.where(cl * Df - e < e - fl * Df, cl, fl)
    r = tl.where(valid[None, :], r, tl.zeros_like(r))
    rem = r * Df
    s = tl.sum(r.to(tl.int64), axis=1)[:, None]
    diff = e - rem
    # ranks: the number of larger differences, ties ranking the lower index higher
    rank = tl.zeros((BLOCK, DP), tl.int64)
    for j in tl.static_range(D):
        dj = tl.sum(tl.where(cols[None, :] == j, diff, 0.0), axis=1)[:, None]
        rank += ((dj > diff) | ((dj == diff) & (cols[None, :] > j))).to(tl.int64)
    # sum fix-up
    dn = (s > 0) & (rank >= D - s)
    up = (s < 0) & (rank < -s)
    rem = tl.where(dn, rem - Df, tl.where(up, rem + Df, rem))
    rank = rank + s - D * dn.to(tl.int64) + D * up.to(tl.int64)
    rank = tl.where(valid[None, :], rank, DP + 1)  # padding columns match no rank
    # barycentric weights: y[rank_i] = (e_i - r_i) / D; b_0 = y_d + (1 - y_0), b_k = y_{d-k} - y_{d-k+1}
    yv = (e - rem) * down
    y0 = tl.sum(tl.where(rank == 0, yv, 0.0), axis=1)
    yprev = tl.sum(tl.where(rank == d, yv, 0.0), axis=1)
    w = tl.where(cols[None, :] == 0, (yprev + (one - y0))[:, None], tl.zeros_like(yv))
    for k in tl.static_range(1, D):
        ycur = tl.sum(tl.where(rank == d - k, yv, 0.0), axis=1)
        w = tl.where(cols[None, :] == k, (ycur - yprev)[:, None], w)
        yprev = ycur
    m2 = mask[:, None] & valid[None, :]
    row = (b * N + offs64) * D
    tl.store(W + row[:, None] + cols[None, :], w, mask=m2)
    # packed keys: vertex 0 is r; vertex k = vertex k-1 + 1 everywhere, - D at the coordinate of rank d-k+1
    pw = tl.load(PW + cols, mask=cols < d, other=0)
    lo = tl.load(LO + b * d + cols, mask=cols < d, other=0)
    key = tl.sum((rem.to(tl.int64) - lo[None, :]) * pw[None, :], axis=1) + tl.load(GPART + b)
    S1 = tl.sum(pw, axis=0)
    tl.store(KEYS + row, key, mask=mask)
    for k in tl.static_range(1, D):
        pr = tl.sum(tl.where(rank == d - k + 1, pw[None, :], 0), axis=1)
        key = key + S1 - D * pr
        tl.store(KEYS + row + k, key, mask=mask)


def _splat_kernel(VID, W, V, TAB, N, C, D: tl.constexpr, BLOCK: tl.constexpr, C_P2: tl.constexpr):
    """TAB[VID[b, n, k], c] += W[b, n, k] * V[b, n, c] (V, VID, W contiguous)."""
    b = tl.program_id(1).to(tl.int64)
    offs = (tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
    mask = offs < N
    offs_c = tl.arange(0, C_P2)
    m2 = mask[:, None] & (offs_c < C)[None, :]
    pt = b * N + offs
    v = tl.load(V + pt[:, None] * C + offs_c[None, :], mask=m2, other=0.0)
    for k in tl.static_range(D):
        idx = tl.load(VID + pt * D + k, mask=mask, other=0).to(tl.int64)
        w = tl.load(W + pt * D + k, mask=mask, other=0.0)
        tl.atomic_add(TAB + idx[:, None] * C + offs_c[None, :], w[:, None] * v, mask=m2)


def _blur_kernel(SRC, DST, NBR, M, C, BLOCK: tl.constexpr, C_P2: tl.constexpr):
    """DST[m] = SRC[m] + 0.5 (SRC[n1] + SRC[n2]) for one direction, NBR (2, M) (-1: absent = 0)."""
    offs = (tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
    mask = offs < M
    offs_c = tl.arange(0, C_P2)
    m2 = mask[:, None] & (offs_c < C)[None, :]
    n1 = tl.load(NBR + offs, mask=mask, other=-1).to(tl.int64)
    n2 = tl.load(NBR + M + offs, mask=mask, other=-1).to(tl.int64)
    s = tl.load(SRC + offs[:, None] * C + offs_c[None, :], mask=m2, other=0.0)
    x = tl.load(SRC + n1[:, None] * C + offs_c[None, :], mask=m2 & (n1 >= 0)[:, None], other=0.0)
    z = tl.load(SRC + n2[:, None] * C + offs_c[None, :], mask=m2 & (n2 >= 0)[:, None], other=0.0)
    tl.store(DST + offs[:, None] * C + offs_c[None, :], s + 0.5 * (x + z), mask=m2)


def _slice_kernel(VID, W, TAB, ALPHA, O, N, C, D: tl.constexpr, BLOCK: tl.constexpr, C_P2: tl.constexpr):
    """O[b, n] = ALPHA * sum_k W[b, n, k] * TAB[VID[b, n, k]]."""
    b = tl.program_id(1).to(tl.int64)
    offs = (tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
    mask = offs < N
    offs_c = tl.arange(0, C_P2)
    m2 = mask[:, None] & (offs_c < C)[None, :]
    pt = b * N + offs
    acc = tl.zeros((BLOCK, C_P2), TAB.dtype.element_ty)
    for k in tl.static_range(D):
        idx = tl.load(VID + pt * D + k, mask=mask, other=0).to(tl.int64)
        w = tl.load(W + pt * D + k, mask=mask, other=0.0)
        acc += w[:, None] * tl.load(TAB + idx[:, None] * C + offs_c[None, :], mask=m2, other=0.0)
    tl.store(O + pt[:, None] * C + offs_c[None, :], tl.load(ALPHA) * acc, mask=m2)


def kernels():
    """``(points, splat, blur, slice)`` jitted for the current mode (compiled or interpreted)."""
    return jitted(_points_kernel, _splat_kernel, _blur_kernel, _slice_kernel)


def _no_fma() -> dict:
    # The interpreter runs numpy (no contraction) and takes no compiler options.
    return {} if interpreting() else {"enable_fp_fusion": False}


def points(feat: torch.Tensor, lo: torch.Tensor, pw: torch.Tensor, gpart: torch.Tensor):
    """Steps 1-2: ``(keys (B, N, D) int64, weights (B, N, D))``, as ``lattice.points_torch``."""
    from harness.kernels.lattice import constants

    kern = kernels()[0]
    B, N, d = feat.shape
    D = d + 1
    dev = feat.device
    feat = feat.contiguous()
    cst = torch.as_tensor(constants(d, np.float64 if feat.dtype == torch.float64 else np.float32), device=dev)
    keys = torch.empty((B, N, D), dtype=torch.int64, device=dev)
    w = torch.empty((B, N, D), dtype=feat.dtype, device=dev)
    if B * N == 0:
        return keys, w
    with launch_on(dev):
        kern[(triton.cdiv(N, BLOCK_POINTS), B)](
            feat, cst, lo.contiguous(), pw.contiguous(), gpart.contiguous(), keys, w,
            N, feat.stride(0), feat.stride(1),
            d=d, D=D, DP=triton.next_power_of_2(D), BLOCK=BLOCK_POINTS, **_no_fma(),
        )
    return keys, w


def apply(plan, values: torch.Tensor, order: list[int], alpha: float) -> torch.Tensor:
    """Steps 3-5 of a ``lattice.LatticePlan`` on (B, N, C) contiguous values."""
    _, splat, blur, slc = kernels()
    B, N, C = values.shape
    D = plan.d + 1
    M = plan.M
    dev = values.device
    w = plan.weights_as(values.dtype).contiguous()
    vid = plan.vertex_ids.contiguous()
    tab = torch.zeros((M, C), dtype=values.dtype, device=dev)
    tmp = torch.empty_like(tab)
    out = torch.empty_like(values)
    C_P2 = triton.next_power_of_2(C)
    with launch_on(dev):
        splat[(triton.cdiv(N, BLOCK), B)](vid, w, values, tab, N, C, D=D, BLOCK=BLOCK, C_P2=C_P2)
        for j in order:
            blur[(triton.cdiv(M, BLOCK),)](tab, tmp, plan.neighbours[j].contiguous(), M, C, BLOCK=BLOCK, C_P2=C_P2)
            tab, tmp = tmp, tab
        a = torch.tensor([alpha], dtype=values.dtype, device=dev)
        slc[(triton.cdiv(N, BLOCK), B)](vid, w, tab, a, out, N, C, D=D, BLOCK=BLOCK, C_P2=C_P2)
    return out
