"""Triton kernels behind the grid path of :mod:`harness.kernels.crf` (imported lazily: this
module needs Triton).

Two kernels: the splat (each program takes BLOCK points of one group, computes their 3^dg
nodes and quadratic B-spline weights, and ``tl.atomic_add``s ``w * value`` into the grid) and
the slice (the same nodes, gathered and summed). The blur between them is a few batched
matmuls (``crf._blur_torch``). As in :mod:`harness.kernels._cam_triton`, the kernel bodies are
plain functions wrapped with ``triton.jit`` on first use, keyed on ``TRITON_INTERPRET``, so the
tests can run them on CPU tensors under the interpreter.

Coordinates follow ``crf.py`` exactly: ``u = (f - lo[b]) * inv_cell + margin`` in float32, first
node ``e = clamp(floor(u + 0.5) - 1, 0, dims - 3)``, ``t = u - e - 1`` in [-1/2, 1/2), weights
``(1/2 - t)^2 / 2, 3/4 - t^2, (1/2 + t)^2 / 2`` for nodes e, e + 1, e + 2; a group's grid is C-order
``(dims..., C)`` at ``grid[b]``. Values and grid are float32 or float64 (the grid has the values'
dtype; atomics in that dtype).
"""
from __future__ import annotations


import torch
import triton
import triton.language as tl

from harness.kernels._triton_common import interpreting, jitted, launch_on  # noqa: F401 (interpreting: the callers ask the module)

BLOCK = 128  # points per program


def _splat_kernel(
    F, LO, INV, DIMS, STRIDES, V, G,
    N, C, cells, margin,
    s_fb, s_fn, s_vb, s_vn,
    DG: tl.constexpr, BLOCK: tl.constexpr, C_P2: tl.constexpr,
):
    """grid[b, node, c] += w * V[b, i, c] for the 3^DG B-spline nodes of each point i of this block."""
    b = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    offs_c = tl.arange(0, C_P2)
    m2 = mask[:, None] & (offs_c < C)[None, :]
    v = tl.load(V + b * s_vb + offs.to(tl.int64)[:, None] * s_vn + offs_c[None, :], mask=m2, other=0.0)
    g_base = G + b * cells * C
    for j in tl.static_range(3 ** DG):
        w = tl.full((BLOCK,), 1.0, tl.float32)
        idx = tl.zeros((BLOCK,), tl.int64)
        for a in tl.static_range(DG):
            f = tl.load(F + b * s_fb + offs.to(tl.int64) * s_fn + a, mask=mask, other=0.0)
            u = (f - tl.load(LO + b * DG + a)) * tl.load(INV + a) + margin
            e = tl.minimum(tl.maximum(tl.floor(u + 0.5) - 1.0, 0.0), (tl.load(DIMS + a) - 3).to(tl.float32))
            t = u - e - 1.0
            st = tl.load(STRIDES + a)
            step = (j // (3 ** a)) % 3  # a compile-time constant (j, a: static_range)
            if step == 0:
                w = w * (0.5 * (0.5 - t) * (0.5 - t))
            elif step == 1:
                w = w * (0.75 - t * t)
            else:
                w = w * (0.5 * (0.5 + t) * (0.5 + t))
            idx += (e.to(tl.int64) + step) * st
        ptrs = g_base + idx[:, None] * C + offs_c[None, :]
        tl.atomic_add(ptrs, w.to(v.dtype)[:, None] * v, mask=m2)


def _slice_kernel(
    F, LO, INV, DIMS, STRIDES, G, O,
    N, C, cells, margin,
    s_fb, s_fn, s_ob, s_on,
    DG: tl.constexpr, BLOCK: tl.constexpr, C_P2: tl.constexpr,
):
    """O[b, i, c] = sum over the 3^DG B-spline nodes of point i of w * grid[b, node, c]."""
    b = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    offs_c = tl.arange(0, C_P2)
    m2 = mask[:, None] & (offs_c < C)[None, :]
    g_base = G + b * cells * C
    acc = tl.zeros((BLOCK, C_P2), G.dtype.element_ty)
    for j in tl.static_range(3 ** DG):
        w = tl.full((BLOCK,), 1.0, tl.float32)
        idx = tl.zeros((BLOCK,), tl.int64)
        for a in tl.static_range(DG):
            f = tl.load(F + b * s_fb + offs.to(tl.int64) * s_fn + a, mask=mask, other=0.0)
            u = (f - tl.load(LO + b * DG + a)) * tl.load(INV + a) + margin
            e = tl.minimum(tl.maximum(tl.floor(u + 0.5) - 1.0, 0.0), (tl.load(DIMS + a) - 3).to(tl.float32))
            t = u - e - 1.0
            st = tl.load(STRIDES + a)
            step = (j // (3 ** a)) % 3  # a compile-time constant (j, a: static_range)
            if step == 0:
                w = w * (0.5 * (0.5 - t) * (0.5 - t))
            elif step == 1:
                w = w * (0.75 - t * t)
            else:
                w = w * (0.5 * (0.5 + t) * (0.5 + t))
            idx += (e.to(tl.int64) + step) * st
        g = tl.load(g_base + idx[:, None] * C + offs_c[None, :], mask=m2, other=0.0)
        acc += w.to(g.dtype)[:, None] * g
    tl.store(O + b * s_ob + offs.to(tl.int64)[:, None] * s_on + offs_c[None, :], acc, mask=m2)


def kernels():
    """``(splat, slice)`` jitted for the current mode (compiled or interpreted)."""
    return jitted(_splat_kernel, _slice_kernel)


def _geometry(feat, lo, inv_cell, dims, strides):
    dev = feat.device
    return (feat.contiguous(), lo.float().contiguous(), inv_cell.float().contiguous().to(dev),
            torch.tensor(dims, dtype=torch.int32, device=dev), torch.tensor(strides, dtype=torch.int64, device=dev))


def splat(feat: torch.Tensor, lo: torch.Tensor, inv_cell: torch.Tensor, margin: float, dims, strides,
          values: torch.Tensor) -> torch.Tensor:
    """(B, cells, C) grid of (B, N, C) values at (B, N, dg) float32 features."""
    kern, _ = kernels()
    B, N, dg = feat.shape
    C = values.shape[2]
    cells = 1
    for n in dims:
        cells *= int(n)
    values = values.contiguous()
    grid = torch.zeros((B, cells, C), device=values.device, dtype=values.dtype)
    if B == 0 or N == 0:
        return grid
    F, LO, INV, DIMS, STR = _geometry(feat, lo, inv_cell, dims, strides)
    with launch_on(values.device):
        kern[(B, triton.cdiv(N, BLOCK))](
            F, LO, INV, DIMS, STR, values, grid,
            N, C, cells, float(margin),
            F.stride(0), F.stride(1), values.stride(0), values.stride(1),
            DG=dg, BLOCK=BLOCK, C_P2=triton.next_power_of_2(C),
        )
    return grid


def slice_(feat: torch.Tensor, lo: torch.Tensor, inv_cell: torch.Tensor, margin: float, dims, strides,
           grid: torch.Tensor) -> torch.Tensor:
    """(B, N, C): the (B, cells, C) grid read back at the points."""
    _, kern = kernels()
    B, N, dg = feat.shape
    C = grid.shape[2]
    grid = grid.contiguous()
    out = torch.empty((B, N, C), device=grid.device, dtype=grid.dtype)
    if B == 0 or N == 0:
        return out
    F, LO, INV, DIMS, STR = _geometry(feat, lo, inv_cell, dims, strides)
    with launch_on(grid.device):
        kern[(B, triton.cdiv(N, BLOCK))](
            F, LO, INV, DIMS, STR, grid, out,
            N, C, grid.shape[1], float(margin),
            F.stride(0), F.stride(1), out.stride(0), out.stride(1),
            DG=dg, BLOCK=BLOCK, C_P2=triton.next_power_of_2(C),
        )
    return out
