"""Triton kernel behind the ``"triton"`` path of :mod:`harness.plugins.clip_es.caa` (imported
lazily: this module needs Triton).

One launch for the whole batch, one program per image (grid (B,)). A program reads its image's
attention A in tiles of BLOCK_R rows x BLOCK_N columns (BLOCK_N: N rounded up to a power of
two, so a tile holds whole rows). With D = diag(r) A diag(c) and v = mask * cam (see ``caa``),
it makes ``sinkhorn_iters + 2`` passes over A:

* pass 0: ``c = 1 / (A^T 1)``, the column sums accumulated over the tiles in registers;
* each further Sinkhorn round: per tile, ``r = 1 / (A c)`` for the tile's rows, used at once
  for ``A^T r``, accumulated into the next ``c``: r never leaves registers;
* the last round's pass also starts ``u = S v = (r * A (c v) + c * A^T (r v)) / 2``: the row
  half goes per tile to scratch (H), the column half accumulates in registers; r goes to
  scratch (R), since the last pass needs it row by row;
* the last pass: ``S u`` the same way, into the output.

That is two passes fewer per round than computing ``c`` and ``r`` in separate passes, as
Sinkhorn is usually written. The vectors that a later pass reads by rows (R, U, H) live in
(B, N) float32 scratch buffers from the wrapper; ``tl.debug_barrier()`` separates a pass that
stores one from a read of it by other threads of the program. All arithmetic is float32
(attention of any float dtype is converted on load); attention is read through its strides.
As in :mod:`harness.kernels._lattice_triton`, the kernel body is a plain function jitted on
first use for the current ``TRITON_INTERPRET`` mode, so the tests run it on CPU tensors.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from harness.kernels._triton_common import interpreting, jitted, launch_on  # noqa: F401 (interpreting: the callers ask the module)

MAX_N = 4096  # patch tokens: a program keeps a few BLOCK_N-long float32 vectors in registers
TILE = 4096  # elements of A per tile (BLOCK_R * BLOCK_N, BLOCK_R >= 1): 16 KiB of float32
MIN_BLOCK_N = 16  # tiny images (N < 16) still get a tile shape every Triton backend lays out


def _caa_kernel(
    A, V, R, U, H, OUT,
    N, s_ab, s_ai, s_aj, ITERS,
    BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """OUT[b] = S_b (S_b V[b]) for image b (the module doc); V, R, U, H, OUT (B, N) contiguous."""
    b = tl.program_id(0).to(tl.int64)
    a_img = A + b * s_ab
    vec = b * N  # offset of image b in the (B, N) buffers
    cols = tl.arange(0, BLOCK_N)
    cmask = cols < N
    col_off = (cols.to(tl.int64) * s_aj)[None, :]

    # pass 0: column sums
    acc = tl.zeros((BLOCK_N,), tl.float32)
    for t in range(0, N, BLOCK_R):
        rows = t + tl.arange(0, BLOCK_R)
        rmask = rows < N
        a = tl.load(a_img + (rows.to(tl.int64) * s_ai)[:, None] + col_off,
                    mask=rmask[:, None] & cmask[None, :], other=0.0).to(tl.float32)
        acc += tl.sum(a, axis=0)
    # padding columns sum to 0: keep them out of the division, c = 0 there
    c = tl.where(cmask, 1.0 / tl.where(cmask, acc, 1.0), 0.0)

    # Sinkhorn rounds 1 .. ITERS-1: r = 1 / (A c) per tile, then c = 1 / (A^T r)
    for _ in range(1, ITERS):
        acc = tl.zeros((BLOCK_N,), tl.float32)
        for t in range(0, N, BLOCK_R):
            rows = t + tl.arange(0, BLOCK_R)
            rmask = rows < N
            a = tl.load(a_img + (rows.to(tl.int64) * s_ai)[:, None] + col_off,
                        mask=rmask[:, None] & cmask[None, :], other=0.0).to(tl.float32)
            rs = tl.sum(a * c[None, :], axis=1)
            r = tl.where(rmask, 1.0 / tl.where(rmask, rs, 1.0), 0.0)
            acc += tl.sum(a * r[:, None], axis=0)
        c = tl.where(cmask, 1.0 / tl.where(cmask, acc, 1.0), 0.0)

    # last round's r, fused with the first product u = S v
    v = tl.load(V + vec + cols, mask=cmask, other=0.0)
    cv = c * v
    acc = tl.zeros((BLOCK_N,), tl.float32)
    for t in range(0, N, BLOCK_R):
        rows = t + tl.arange(0, BLOCK_R)
        rmask = rows < N
        a = tl.load(a_img + (rows.to(tl.int64) * s_ai)[:, None] + col_off,
                    mask=rmask[:, None] & cmask[None, :], other=0.0).to(tl.float32)
        rs = tl.sum(a * c[None, :], axis=1)
        r = tl.where(rmask, 1.0 / tl.where(rmask, rs, 1.0), 0.0)
        tl.store(R + vec + rows, r, mask=rmask)
        tl.store(H + vec + rows, r * tl.sum(a * cv[None, :], axis=1), mask=rmask)
        v_rows = tl.load(V + vec + rows, mask=rmask, other=0.0)
        acc += tl.sum(a * (r * v_rows)[:, None], axis=0)
    tl.debug_barrier()  # H rows stored by other threads
    u = (tl.load(H + vec + cols, mask=cmask, other=0.0) + c * acc) * 0.5
    tl.store(U + vec + cols, u, mask=cmask)
    tl.debug_barrier()  # U is read by rows below; H is overwritten below, after every thread read it

    # S u
    cu = c * u
    acc = tl.zeros((BLOCK_N,), tl.float32)
    for t in range(0, N, BLOCK_R):
        rows = t + tl.arange(0, BLOCK_R)
        rmask = rows < N
        a = tl.load(a_img + (rows.to(tl.int64) * s_ai)[:, None] + col_off,
                    mask=rmask[:, None] & cmask[None, :], other=0.0).to(tl.float32)
        r = tl.load(R + vec + rows, mask=rmask, other=0.0)
        tl.store(H + vec + rows, r * tl.sum(a * cu[None, :], axis=1), mask=rmask)
        u_rows = tl.load(U + vec + rows, mask=rmask, other=0.0)
        acc += tl.sum(a * (r * u_rows)[:, None], axis=0)
    tl.debug_barrier()  # H rows stored by other threads
    out = (tl.load(H + vec + cols, mask=cmask, other=0.0) + c * acc) * 0.5
    tl.store(OUT + vec + cols, out, mask=cmask)


def kernels():
    """``(caa,)`` jitted for the current mode (compiled or interpreted)."""
    return jitted(_caa_kernel)


def block_sizes(n: int) -> tuple[int, int]:
    """``(BLOCK_R, BLOCK_N)`` for N patch tokens (N <= MAX_N)."""
    block_n = max(MIN_BLOCK_N, triton.next_power_of_2(n))
    return max(1, min(block_n, TILE // block_n)), block_n


def refine(attn: torch.Tensor, v: torch.Tensor, iters: int) -> torch.Tensor:
    """(B, N) float32: S (S v) per image. attn (B, N, N) any float dtype and strides, v (B, N)
    float32; shapes and values are checked by the caller, N <= MAX_N, B * N > 0."""
    (kern,) = kernels()
    B, N = v.shape
    dev = attn.device
    v = v.contiguous()
    scratch = torch.empty((3, B, N), dtype=torch.float32, device=dev)
    out = torch.empty((B, N), dtype=torch.float32, device=dev)
    block_r, block_n = block_sizes(N)
    with launch_on(dev):
        kern[(B,)](
            attn, v, scratch[0], scratch[1], scratch[2], out,
            N, *attn.stride(), iters,
            BLOCK_R=block_r, BLOCK_N=block_n, num_warps=8 if block_n >= 2048 else 4,
        )
    return out
