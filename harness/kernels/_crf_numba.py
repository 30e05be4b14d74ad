"""numba kernels behind the CPU fast path of :mod:`harness.kernels.crf` (bilateral grid).

numba is imported, and the kernels compiled, on first use (``cache=True`` keeps the machine
code on disk, so later processes only load it); importing this module does not import numba.

Parallelism: the kernels are single-threaded and release the GIL (``nogil``); the Python
functions below split the work into ranges of points or groups and run them on a small
thread pool (``torch.get_num_threads()`` workers, at most the CPU count). Not numba's
``prange``: its OpenMP threading layer spin-waits at every barrier, and on a busy machine
(other processes, or torch's own OpenMP pool) a filter's six barriers then cost tens of
milliseconds instead of microseconds (measured). Splatting several chunks of one group uses
one private grid per chunk, summed in a fixed order.

Conventions (shared with the torch and Triton paths, see ``crf.py``): a point of group ``b``
with grid features ``f`` (float32) has grid coordinate ``u_a = (f_a - lo[b, a]) * inv_cell[a] +
f0`` along axis ``a``, lower node ``i_a = clamp(int(u_a), 0, dims[a] - 2)`` (``u_a >= f0 > 0``,
so ``int`` is ``floor``) and fraction ``r_a = u_a - i_a``; its 2^dg corner weights are products
of ``r_a`` and ``1 - r_a``. The grid of a group is a flat C-order array of
``(dims[0], ..., dims[dg-1], C)``: node ``i`` starts at ``C * sum_a i_a * strides[a]``.

Speed (one 224x224 frame, colour-only, K = 2, one thread): splat 0.58 ms, slice 0.53 ms, blur
0.35 ms per group (36^3 nodes; shared by the frames of a group). What made the difference:
inner loops over array slices with ``range(len)`` bounds, which LLVM vectorizes (numba cannot
otherwise rule out negative-index wraparound: the blur went 7x faster); uint64 indices in the
scatter/gather (no wraparound checks); a vectorized first pass per block of 256 points for the
cells and corner weights (splat 1.4x faster); a special case for C = 2 channels (1.5x).
Specializing on C with ``numba.literally`` was 10x *slower* (dispatch cost per call), and
packing the two channels as complex64 gained nothing.
"""
from __future__ import annotations

import concurrent.futures
import os
import threading

import numpy as np

from harness import numba_kernels
from harness.numba_kernels import lazy_compiler

# ----------------------------------------------------------------------------- kernels
# Plain Python here; _kernels() replaces each name by its numba dispatcher on first use.


def _minmax(feat, lo, hi, b0, b1, i0, i1):
    """lo[b], hi[b] = per-axis min and max of points i0..i1 of feat[b] (B, N, d), groups b0..b1
    (lo/hi arrive as +inf/-inf). A NaN or inf feature makes both NaN (0 * x is NaN only then),
    so the caller's finiteness check on lo/hi also catches it."""
    d = feat.shape[2]
    for b in range(b0, b1):
        bad = 0.0
        for a in range(d):
            m = lo[b, a]
            M = hi[b, a]
            col = feat[b, i0:i1, a]
            for i in range(col.shape[0]):
                x = col[i]
                m = min(m, x)
                M = max(M, x)
                bad += 0.0 * x
            lo[b, a] = m + bad
            hi[b, a] = M + bad


_BLOCK = 256  # points per block: pass 1 (vectorized) computes their cells and weights


def _coords3(f, l0, l1, l2, ic0, ic1, ic2, m, e0max, e1max, e2max, s0, s1, s2, cs, W0, W1, W2, k):
    """Pass 1 over a block of points f (n, 3): first-node offsets cs[j] (uint64, in elements) and
    the three quadratic B-spline weights per axis, Wa[:, j] for nodes e, e + 1, e + 2.
    Coordinates in float32 (as the torch path), weights in W's dtype: k = (1/2, 3/4, 1) in it.
    One straight loop over j: LLVM vectorizes it (the scatter/gather of pass 2 cannot be)."""
    h32 = np.float32(0.5)
    one32 = np.float32(1.0)
    zero32 = np.float32(0.0)
    h = k[0]
    q = k[1]
    one = k[2]
    for j in range(f.shape[0]):
        u0 = (f[j, 0] - l0) * ic0 + m
        u1 = (f[j, 1] - l1) * ic1 + m
        u2 = (f[j, 2] - l2) * ic2 + m
        e0 = min(max(np.floor(u0 + h32) - one32, zero32), e0max)
        e1 = min(max(np.floor(u1 + h32) - one32, zero32), e1max)
        e2 = min(max(np.floor(u2 + h32) - one32, zero32), e2max)
        t0 = one * (u0 - e0 - one32)  # exact in float32; then in W's dtype
        t1 = one * (u1 - e1 - one32)
        t2 = one * (u2 - e2 - one32)
        cs[j] = np.uint64(e0) * s0 + np.uint64(e1) * s1 + np.uint64(e2) * s2
        a = h - t0
        b = h + t0
        W0[0, j] = h * a * a
        W0[1, j] = q - t0 * t0
        W0[2, j] = h * b * b
        a = h - t1
        b = h + t1
        W1[0, j] = h * a * a
        W1[1, j] = q - t1 * t1
        W1[2, j] = h * b * b
        a = h - t2
        b = h + t2
        W2[0, j] = h * a * a
        W2[1, j] = q - t2 * t2
        W2[2, j] = h * b * b


def _point_values(vi, basis, b, i, vv):
    """The point's grid channels: vi (K,) itself, or basis[b, i, q] * vi[k] at q * K + k in vv."""
    Q = basis.shape[2]
    if Q == 0:
        return vi
    K = vi.shape[0]
    for q in range(Q):
        p = basis[b, i, q]
        for k in range(K):
            vv[q * K + k] = p * vi[k]
    return vv


def _point_output(acc, basis, b, i, oi):
    """oi (K,) = acc, or sum_q basis[b, i, q] * acc[q * K + k]."""
    Q = basis.shape[2]
    K = oi.shape[0]
    if Q == 0:
        for k in range(K):
            oi[k] = acc[k]
        return
    for k in range(K):
        oi[k] = 0.0
    for q in range(Q):
        p = basis[b, i, q]
        for k in range(K):
            oi[k] += p * acc[q * K + k]


def _grid3(dims, strides, uC, like):
    """What the dg = 3 splat and slice share: flat strides of the three axes for ``uC`` channels,
    the highest first node of each axis, the flat offsets of the 9 (axis 0, axis 1) node pairs
    of a point's 3 x 3 x 3 block, and work arrays for a block's first nodes and weights."""
    s0 = np.uint64(strides[0]) * uC
    s1 = np.uint64(strides[1]) * uC
    s2 = np.uint64(strides[2]) * uC
    e0max = np.float32(dims[0] - 3)
    e1max = np.float32(dims[1] - 3)
    e2max = np.float32(dims[2] - 3)
    offs = np.empty(9, np.uint64)
    for p in range(3):
        for q in range(3):
            offs[3 * p + q] = np.uint64(p) * s0 + np.uint64(q) * s1
    W = np.empty((3, 3, _BLOCK), like.dtype)
    k = np.empty(3, like.dtype)
    k[0] = 0.5
    k[1] = 0.75
    k[2] = 1.0
    return s0, s1, s2, e0max, e1max, e2max, offs, np.empty(_BLOCK, np.uint64), W, k


def _splat3(feat, lo, inv_cell, m, dims, strides, vals, basis, grid, b0, b1, i0, i1):
    """grid[b] += splat of points i0..i1 of groups b0..b1, for dg = 3.

    feat (B, N, 3) float32, lo (B, 3) float32, inv_cell (3,) float32, dims/strides (3,) int64,
    vals (B, N, K), basis (B, N, Q) (Q = 0: none), grid (B, cells * C) (flat per group) with
    C = K (no basis) or Q * K (channel q * K + k holds basis_q * vals_k). Indices are uint64 (no
    wraparound checks). A point's 27 nodes are 9 runs of 3 consecutive nodes along axis 2
    (3 * C contiguous elements each)."""
    C = vals.shape[2] * max(basis.shape[2], 1)
    vv = np.empty(C, vals.dtype)
    uC = np.uint64(C)
    s0, s1, s2, e0max, e1max, e2max, offs, cs, W, kc = _grid3(dims, strides, uC, vv)
    W0 = W[0]
    W1 = W[1]
    W2 = W[2]
    one = np.uint64(1)
    two = np.uint64(2)
    three = np.uint64(3)
    four = np.uint64(4)
    five = np.uint64(5)
    for b in range(b0, b1):
        gb = grid[b]
        vb = vals[b]
        for blk in range(i0, i1, _BLOCK):
            n = min(_BLOCK, i1 - blk)
            _coords3(feat[b, blk:blk + n], lo[b, 0], lo[b, 1], lo[b, 2], inv_cell[0], inv_cell[1], inv_cell[2],
                     m, e0max, e1max, e2max, s0, s1, s2, cs, W0, W1, W2, kc)
            if C == 2 and basis.shape[2] == 0:
                for j in range(n):
                    ui = np.uint64(blk + j)
                    v = vb[ui, np.uint64(0)]
                    u = vb[ui, one]
                    z0 = W2[0, j]
                    z1 = W2[1, j]
                    z2 = W2[2, j]
                    for p in range(3):
                        wp = W0[p, j]
                        for q in range(3):
                            w = wp * W1[q, j]
                            c = cs[j] + offs[3 * p + q]
                            a = w * z0
                            gb[c] += a * v
                            gb[c + one] += a * u
                            a = w * z1
                            gb[c + two] += a * v
                            gb[c + three] += a * u
                            a = w * z2
                            gb[c + four] += a * v
                            gb[c + five] += a * u
            else:
                # direct indices, no array views in the node loops (a view per node cost more than
                # the adds); the 3 nodes along axis 2 are 3 runs of C contiguous channels
                for j in range(n):
                    vi = _point_values(vb[blk + j], basis, b, blk + j, vv)
                    z0 = W2[0, j]
                    z1 = W2[1, j]
                    z2 = W2[2, j]
                    for p in range(3):
                        for q in range(3):
                            wpq = W0[p, j] * W1[q, j]
                            a0 = wpq * z0
                            a1 = wpq * z1
                            a2 = wpq * z2
                            c = cs[j] + offs[3 * p + q]
                            for k in range(C):
                                x = vi[k]
                                uk = c + np.uint64(k)
                                gb[uk] += a0 * x
                                gb[uk + s2] += a1 * x
                                gb[uk + s2 + s2] += a2 * x


def _slice3(feat, lo, inv_cell, m, dims, strides, basis, grid, out, b0, b1, i0, i1):
    """out[b, i] = quadratic B-spline read of grid[b] at points i0..i1 of groups b0..b1, dg = 3
    (with a basis: ``out[b, i, k] = sum_q basis[b, i, q] * read[q * K + k]``)."""
    C = out.shape[2] * max(basis.shape[2], 1)
    acc = np.empty(C, out.dtype)
    uC = np.uint64(C)
    s0, s1, s2, e0max, e1max, e2max, offs, cs, W, kc = _grid3(dims, strides, uC, acc)
    W0 = W[0]
    W1 = W[1]
    W2 = W[2]
    one = np.uint64(1)
    two = np.uint64(2)
    three = np.uint64(3)
    four = np.uint64(4)
    five = np.uint64(5)
    for b in range(b0, b1):
        gb = grid[b]
        ob = out[b]
        for blk in range(i0, i1, _BLOCK):
            n = min(_BLOCK, i1 - blk)
            _coords3(feat[b, blk:blk + n], lo[b, 0], lo[b, 1], lo[b, 2], inv_cell[0], inv_cell[1], inv_cell[2],
                     m, e0max, e1max, e2max, s0, s1, s2, cs, W0, W1, W2, kc)
            if C == 2 and basis.shape[2] == 0:
                for j in range(n):
                    z0 = W2[0, j]
                    z1 = W2[1, j]
                    z2 = W2[2, j]
                    x = 0.0
                    y = 0.0
                    for p in range(3):
                        wp = W0[p, j]
                        for q in range(3):
                            w = wp * W1[q, j]
                            c = cs[j] + offs[3 * p + q]
                            x += w * (z0 * gb[c] + z1 * gb[c + two] + z2 * gb[c + four])
                            y += w * (z0 * gb[c + one] + z1 * gb[c + three] + z2 * gb[c + five])
                    ui = np.uint64(blk + j)
                    ob[ui, np.uint64(0)] = x
                    ob[ui, one] = y
            else:
                for j in range(n):
                    for k in range(C):
                        acc[k] = 0.0
                    z0 = W2[0, j]
                    z1 = W2[1, j]
                    z2 = W2[2, j]
                    for p in range(3):
                        for q in range(3):
                            wpq = W0[p, j] * W1[q, j]
                            a0 = wpq * z0
                            a1 = wpq * z1
                            a2 = wpq * z2
                            c = cs[j] + offs[3 * p + q]
                            for k in range(C):
                                uk = c + np.uint64(k)
                                acc[k] += a0 * gb[uk] + a1 * gb[uk + s2] + a2 * gb[uk + s2 + s2]
                    _point_output(acc, basis, b, blk + j, ob[blk + j])


def _corner_weights(feat, lo, inv_cell, m, dims, strides, C, b, i, w, off):
    """Fill w (3^dg,) and off (3^dg,) with point i's node weights and offsets (in elements,
    relative to the returned first-node offset), built axis by axis."""
    dg = feat.shape[2]
    base = 0
    w[0] = 1.0
    off[0] = 0
    n = 1
    one = w[0]  # 1, 1/2 and 3/4 in w's dtype (w[0] is 1 here)
    h = one * np.float32(0.5)
    q = h + h * h
    for a in range(dg):
        u = (feat[b, i, a] - lo[b, a]) * inv_cell[a] + m
        e = min(max(int(np.floor(u + np.float32(0.5))) - 1, 0), dims[a] - 3)
        t = one * (u - np.float32(e) - np.float32(1.0))
        base += e * strides[a] * C
        st = strides[a] * C
        w0 = h * (h - t) * (h - t)
        w1 = q - t * t
        w2 = h * (h + t) * (h + t)
        for k in range(n):
            w[n + k] = w[k] * w1
            w[2 * n + k] = w[k] * w2
            w[k] = w[k] * w0
            off[n + k] = off[k] + st
            off[2 * n + k] = off[k] + 2 * st
        n *= 3
    return base


def _splat_any(feat, lo, inv_cell, m, dims, strides, vals, basis, grid, b0, b1, i0, i1):
    """:func:`_splat3` for any number of grid axes (3^dg nodes, built axis by axis)."""
    C = vals.shape[2] * max(basis.shape[2], 1)
    vv = np.empty(C, vals.dtype)
    nnode = 3 ** feat.shape[2]
    w = np.empty(nnode, dtype=vals.dtype)
    off = np.empty(nnode, dtype=np.int64)
    for b in range(b0, b1):
        gb = grid[b]
        for i in range(i0, i1):
            base = _corner_weights(feat, lo, inv_cell, m, dims, strides, C, b, i, w, off)
            vi = _point_values(vals[b, i], basis, b, i, vv)
            for j in range(nnode):
                g = gb[base + off[j]:base + off[j] + C]
                wj = w[j]
                for k in range(g.shape[0]):
                    g[k] += wj * vi[k]


def _slice_any(feat, lo, inv_cell, m, dims, strides, basis, grid, out, b0, b1, i0, i1):
    """:func:`_slice3` for any number of grid axes."""
    C = out.shape[2] * max(basis.shape[2], 1)
    acc = np.empty(C, out.dtype)
    nnode = 3 ** feat.shape[2]
    w = np.empty(nnode, dtype=out.dtype)
    off = np.empty(nnode, dtype=np.int64)
    for b in range(b0, b1):
        gb = grid[b]
        for i in range(i0, i1):
            base = _corner_weights(feat, lo, inv_cell, m, dims, strides, C, b, i, w, off)
            for k in range(C):
                acc[k] = 0.0
            for j in range(nnode):
                g = gb[base + off[j]:base + off[j] + C]
                wj = w[j]
                for k in range(g.shape[0]):
                    acc[k] += wj * g[k]
            _point_output(acc, basis, b, i, out[b, i])


def _blur_axis(src, dst, n, inner, taps, R):
    """dst = src blurred along the middle axis of (outer, n, inner) (flat 1-D arrays):
    ``dst[o, m, j] = sum_{|t| <= R, 0 <= m + t < n} taps[R + t] * src[o, m + t, j]``."""
    L = n * inner
    outer = src.shape[0] // L
    if inner <= 64:
        # short rows: a whole (n, inner) line at a time, taps outermost (the line stays in L1)
        for o in range(outer):
            d = dst[o * L:(o + 1) * L]
            s = src[o * L:(o + 1) * L]
            for x in range(L):
                d[x] = 0.0
            for t in range(-R, R + 1):
                lo = max(0, -t) * inner
                hi = min(n, n - t) * inner
                w = taps[R + t]
                dd = d[lo:hi]
                ss = s[lo + t * inner:hi + t * inner]
                for x in range(dd.shape[0]):
                    dd[x] += w * ss[x]
    else:
        # long rows: column blocks of the (n, inner) slab, taps outermost
        bw = 256
        for o in range(outer):
            for j0 in range(0, inner, bw):
                j1 = min(j0 + bw, inner)
                base = o * L
                for m in range(n):
                    dd = dst[base + m * inner + j0:base + m * inner + j1]
                    for x in range(dd.shape[0]):
                        dd[x] = 0.0
                for t in range(-R, R + 1):
                    w = taps[R + t]
                    for m in range(max(0, -t), min(n, n - t)):
                        d0 = base + m * inner
                        dd = dst[d0 + j0:d0 + j1]
                        ss = src[d0 + t * inner + j0:d0 + t * inner + j1]
                        for x in range(dd.shape[0]):
                            dd[x] += w * ss[x]


def _blur(grid, tmp, b0, b1, dims, C, taps, radii):
    """Blur groups b0..b1 of grid (B, cells * C) along every axis in place (tmp: same shape).
    taps (dg, 2 Rmax + 1): axis a uses taps[a, Rmax - radii[a]: Rmax + radii[a] + 1]."""
    dg = dims.shape[0]
    Rmax = (taps.shape[1] - 1) // 2
    for b in range(b0, b1):
        src = grid[b]
        dst = tmp[b]
        inner = C
        for a in range(dg):
            inner *= dims[a]
        for a in range(dg):
            n = dims[a]
            inner //= n
            R = radii[a]
            _blur_axis(src, dst, n, inner, taps[a, Rmax - R:Rmax + R + 1], R)
            src, dst = dst, src
        if dg % 2 == 1:  # the result is in tmp
            g = grid[b]
            t = tmp[b]
            for x in range(g.shape[0]):
                g[x] = t[x]


def _basis(feat, axes, lo, scale, coef, index, keep, rmax, out, b0, b1, i0, i1):
    """out[b, i, q] = keep[b, q] * prod_j psi_{b, j, index[j, b, q]}(feat[b, i, axes[j]]) with
    psi_{b, j, r}(x) = sum_m coef[b, j, r, m] T_m(s), s = clip((x - lo[b, j]) * scale[b, j] - 1),
    for r < rmax[j]. float64 inside, blocks of points with the point loop innermost (vectorized)."""
    S = axes.shape[0]
    n = coef.shape[3]
    Q = out.shape[2]
    BS = _BLOCK
    T = np.empty((n, BS), np.float64)
    psi = np.empty((S, n, BS), np.float64)
    acc = np.empty(BS, np.float64)
    for b in range(b0, b1):
        for blk in range(i0, i1, BS):
            nb_ = min(BS, i1 - blk)
            for j in range(S):
                a = axes[j]
                l0 = lo[b, j]
                sc = scale[b, j]
                fb = feat[b, blk:blk + nb_, a]
                t0 = T[0]
                t1 = T[1]
                for x in range(nb_):
                    t0[x] = 1.0
                    t1[x] = min(max((np.float64(fb[x]) - l0) * sc - 1.0, -1.0), 1.0)
                for m in range(2, n):
                    tm = T[m]
                    tp = T[m - 1]
                    tq = T[m - 2]
                    for x in range(nb_):
                        tm[x] = 2.0 * t1[x] * tp[x] - tq[x]
                for r in range(rmax[j]):  # only the ranks some term uses
                    pr = psi[j, r]
                    for x in range(nb_):
                        pr[x] = 0.0
                    for m in range(n):
                        c = coef[b, j, r, m]
                        tm = T[m]
                        for x in range(nb_):
                            pr[x] += c * tm[x]
            ob = out[b, blk:blk + nb_]
            for q in range(Q):
                k = np.float64(keep[b, q])
                for x in range(nb_):
                    acc[x] = k
                for j in range(S):
                    pr = psi[j, index[j, b, q]]
                    for x in range(nb_):
                        acc[x] *= pr[x]
                for x in range(nb_):
                    ob[x, q] = acc[x]


def _add_into(dst, src, x0, x1):
    """dst[x0:x1] += src[x0:x1] (flat arrays)."""
    d = dst[x0:x1]
    s = src[x0:x1]
    for x in range(d.shape[0]):
        d[x] += s[x]


def _dot(a, b, x0, x1, out, slot):
    """out[slot] = sum(a[x0:x1] * b[x0:x1]) in float64 (flat arrays), 8 partial sums."""
    u = a[x0:x1]
    v = b[x0:x1]
    acc = np.zeros(8, np.float64)
    n8 = u.shape[0] // 8 * 8
    for x in range(0, n8, 8):
        for k in range(8):
            acc[k] += np.float64(u[x + k]) * np.float64(v[x + k])
    for x in range(n8, u.shape[0]):
        acc[0] += np.float64(u[x]) * np.float64(v[x])
    out[slot] = acc.sum()


def _finite(a, x0, x1, out, slot):
    """out[slot] = 0 if a[x0:x1] is all finite, else NaN (0 * x is NaN only for NaN or inf)."""
    u = a[x0:x1]
    acc = 0.0
    for x in range(u.shape[0]):
        acc += 0.0 * u[x]
    out[slot] = acc


def _scale(src, dst, c, x0, x1):
    """dst[x0:x1] = c * src[x0:x1] (flat arrays)."""
    s = src[x0:x1]
    d = dst[x0:x1]
    for x in range(d.shape[0]):
        d[x] = c * s[x]


# ----------------------------------------------------------------------------- compilation

_INLINED = ("_corner_weights", "_blur_axis", "_coords3", "_grid3", "_point_values", "_point_output")
_KERNEL_NAMES = _INLINED + ("_minmax", "_splat3", "_slice3", "_splat_any", "_slice_any", "_blur", "_add_into",
                            "_dot", "_finite", "_scale", "_basis")
_kernels = lazy_compiler(globals(), _KERNEL_NAMES, _INLINED)  # replaces each kernel by its dispatcher


available = numba_kernels.available


# ----------------------------------------------------------------------------- threads

_CPUS = os.cpu_count() or 1
_pool: concurrent.futures.ThreadPoolExecutor | None = None
_pool_size = 0
_pool_lock = threading.Lock()


def workers() -> int:
    """Threads the kernels use: torch's intra-op thread count, at most the CPU count."""
    import torch

    return max(1, min(torch.get_num_threads(), _CPUS))


def _run(calls: list) -> None:
    """Run [(fn, args), ...]: the first on this thread, the others on the pool; wait for all."""
    global _pool, _pool_size
    if len(calls) == 1:
        fn, args = calls[0]
        fn(*args)
        return
    with _pool_lock:
        if _pool is None or _pool_size < len(calls) - 1:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool_size = len(calls) - 1
            _pool = concurrent.futures.ThreadPoolExecutor(_pool_size, thread_name_prefix="crf-grid")
        pool = _pool
    futures = [pool.submit(fn, *args) for fn, args in calls[1:]]
    fn, args = calls[0]
    fn(*args)
    for f in futures:
        f.result()


def _split(n: int, parts: int) -> list[tuple[int, int]]:
    parts = max(1, min(parts, n))
    return [(n * t // parts, n * (t + 1) // parts) for t in range(parts)]


# Below this many points per thread, one thread does the work (a thread hop costs ~20 us).
_MIN_POINTS_PER_THREAD = 8192


def _tasks(B: int, N: int) -> list[tuple[int, int, int, int]]:
    """(b0, b1, i0, i1) ranges: whole groups per thread when there are enough groups, else
    ranges of points of each group."""
    W = min(workers(), max(1, (B * N) // _MIN_POINTS_PER_THREAD))
    if W <= 1:
        return [(0, B, 0, N)]
    if B >= W:
        return [(b0, b1, 0, N) for b0, b1 in _split(B, W)]
    per = -(-W // B)
    return [(b, b + 1, i0, i1) for b in range(B) for i0, i1 in _split(N, per)]


# ----------------------------------------------------------------------------- operations


def minmax(feat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-group, per-axis min and max of (B, N, d) features (NaN where a group has a NaN or
    an infinite feature)."""
    _kernels()
    B, N, d = feat.shape
    tasks = _tasks(B, N)
    lo = np.full((len(tasks), B, d), np.inf, feat.dtype)
    hi = np.full((len(tasks), B, d), -np.inf, feat.dtype)
    _run([(_minmax, (feat, lo[s], hi[s], *t)) for s, t in enumerate(tasks)])
    bad = np.isnan(lo).any(0) | np.isnan(hi).any(0)
    lo, hi = lo.min(0), hi.max(0)
    lo[bad] = np.nan
    hi[bad] = np.nan
    return lo, hi


def splat(feat, lo, inv_cell, margin, dims, strides, vals, basis=None) -> np.ndarray:
    """(B, cells * C) grid of the points' values (C = K, or Q * K with a (B, N, Q) basis)."""
    _kernels()
    B, N, dg = feat.shape
    if basis is None:
        basis = np.empty((B, N, 0), vals.dtype)
    C = vals.shape[2] * max(basis.shape[2], 1)
    cells = int(np.prod(dims))
    kern = _splat3 if dg == 3 else _splat_any
    m = np.float32(margin)
    tasks = _tasks(B, N)
    if len(tasks) == 1 or tasks[0][3] == N:  # whole groups per task: no two tasks share a grid
        grid = np.zeros((B, cells * C), vals.dtype)
        _run([(kern, (feat, lo, inv_cell, m, dims, strides, vals, basis, grid, *t)) for t in tasks])
        return grid
    # chunks of one group's points: a private grid per chunk index, summed in a fixed order
    per = sum(1 for t in tasks if t[0] == 0)
    grids = np.zeros((per, B, cells * C), vals.dtype)
    calls = []
    for b0, b1, i0, i1 in tasks:
        slot = [t for t in tasks if t[0] == b0].index((b0, b1, i0, i1))
        calls.append((kern, (feat, lo, inv_cell, m, dims, strides, vals, basis, grids[slot], b0, b1, i0, i1)))
    _run(calls)
    flat = grids.reshape(per, -1)
    ranges = _split(flat.shape[1], min(workers(), max(1, flat.shape[1] // 65536)))
    for s in range(1, per):
        _run([(_add_into, (flat[0], flat[s], x0, x1)) for x0, x1 in ranges])
    return grids[0]


def blur(grid: np.ndarray, dims: np.ndarray, C: int, taps: list[np.ndarray]) -> np.ndarray:
    """The grid (B, cells * C) blurred in place along each axis with its (2R+1,) taps."""
    _kernels()
    B = grid.shape[0]
    radii = np.array([(len(t) - 1) // 2 for t in taps], np.int64)
    Rmax = int(radii.max())
    table = np.zeros((len(taps), 2 * Rmax + 1), grid.dtype)
    for a, t in enumerate(taps):
        r = radii[a]
        table[a, Rmax - r:Rmax + r + 1] = t
    tmp = np.empty_like(grid)
    calls = [(_blur, (grid, tmp, b0, b1, dims, C, table, radii)) for b0, b1 in _split(B, min(workers(), B))]
    _run(calls)
    return grid


def slice_(feat, lo, inv_cell, margin, dims, strides, grid, K: int, basis=None) -> np.ndarray:
    """(B, N, K): the grid read back at the points (multilinear; contracted with the basis)."""
    _kernels()
    B, N, dg = feat.shape
    if basis is None:
        basis = np.empty((B, N, 0), grid.dtype)
    out = np.empty((B, N, K), dtype=grid.dtype)
    kern = _slice3 if dg == 3 else _slice_any
    m = np.float32(margin)
    _run([(kern, (feat, lo, inv_cell, m, dims, strides, basis, grid, out, *t)) for t in _tasks(B, N)])
    return out


# Elementwise work below this many elements per thread stays on one thread.
_MIN_ELEMENTS_PER_THREAD = 1 << 18


def _ranges(n: int) -> list[tuple[int, int]]:
    return _split(n, min(workers(), max(1, n // _MIN_ELEMENTS_PER_THREAD)))


def dot(a: np.ndarray, b: np.ndarray) -> float:
    """sum(a * b) over all elements, accumulated in float64 (same-shape contiguous arrays)."""
    _kernels()
    u, v = a.reshape(-1), b.reshape(-1)
    ranges = _ranges(u.shape[0])
    parts = np.zeros(len(ranges), np.float64)
    _run([(_dot, (u, v, x0, x1, parts, s)) for s, (x0, x1) in enumerate(ranges)])
    return float(parts.sum())


def all_finite(a: np.ndarray) -> bool:
    """Whether every element of a contiguous array is finite (torch's isfinite().all() stalls
    in its OpenMP barriers on a busy machine: 30 ms for 1.6M elements, measured)."""
    _kernels()
    u = a.reshape(-1)
    ranges = _ranges(u.shape[0])
    parts = np.zeros(len(ranges), np.float64)
    _run([(_finite, (u, x0, x1, parts, s)) for s, (x0, x1) in enumerate(ranges)])
    return bool(np.isfinite(parts).all())


def scaled(a: np.ndarray, c: float) -> np.ndarray:
    """c * a as a new array (the loss's backward; off torch's OpenMP pool on purpose, see the
    module docstring)."""
    _kernels()
    out = np.empty_like(a)
    u, v = a.reshape(-1), out.reshape(-1)
    _run([(_scale, (u, v, a.dtype.type(c), x0, x1)) for x0, x1 in _ranges(u.shape[0])])
    return out


def lowrank_basis(feat, axes, lo, scale, coef, index, keep, dtype=np.float32) -> np.ndarray:
    """(B, N, Q) products of the smooth axes' functions (see ``crf._lowrank_basis``)."""
    _kernels()
    B, N, _ = feat.shape
    out = np.empty((B, N, keep.shape[1]), dtype)
    rmax = index.max(axis=(1, 2)) + 1
    coef = np.ascontiguousarray(coef.transpose(0, 1, 3, 2))  # (B, S, rank, m): contiguous over m
    _run([(_basis, (feat, axes, lo, scale, coef, index, keep, rmax, out, *t)) for t in _tasks(B, N)])
    return out
