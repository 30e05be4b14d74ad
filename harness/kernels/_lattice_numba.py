"""numba kernels behind the CPU path of :mod:`harness.kernels.lattice` (permutohedral lattice).

numba is imported, and the kernels compiled, on first use (``cache=True`` keeps the machine
code on disk); importing this module does not import numba. The kernels are single-threaded and
release the GIL; the Python functions below run them over groups (or ranges of points or
vertices of one group) on the thread pool of :mod:`harness.kernels._crf_numba` (see there why
not ``prange``).

Building a plan, per group: (1) every point's elevated coordinates, simplex, barycentric weights
and the packed keys of its D = d + 1 vertices, in blocks of 128 points whose every step is a
straight loop over the block (vectorized; ranks held as small integer floats so that compares
and selects stay in one type); (2) each block's keys go at once into an open-addressing hash
table (linear probing, Fibonacci hashing of the packed int64 key, at most half full; it starts
at 2^12 slots and doubles, so it stays in cache where a table sized for the worst case, 2 N D
slots, would not). Vertex ids are given in order of first appearance. One big group (B = 1) is
cut into ranges of points with their own tables in parallel, whose vertices then go into the
group's table in range order, and the ranges' ids are remapped: the same ids as one sequential
pass. (3) Each vertex's 2 D blur neighbours are looked up in the finished table (parallel over
vertex ranges). A shortcut for a point whose k-th vertex is its predecessor's (half of them in
images) made (2) 3x slower: mispredicted branches.

Applying it: splat in point order (deterministic; a big group with few vertices, N > 2^16 and
the extra tables under 1/8 of its N D slots, splats fixed chunks of 2^16 points into private
tables in parallel, summed in chunk order), blur (one pass per direction, parallel over vertex
ranges), slice (parallel over points); with several groups a thread takes whole groups through
all three without a barrier, following the same chunk rule per group. So a group's result
depends on neither the thread count nor the batch.

The float operations of step (1) are those of ``lattice.points_torch`` in the features' dtype
(the constants arrive as an array of that dtype: a float literal would promote float32 to
float64), and the splat, blur and slice sum in the torch path's order (except a chunked splat),
so the two paths agree bit for bit.

Speed: see :mod:`harness.kernels.lattice`. Fresh output pages cost a good part of a plan (about
4 us per 4 KiB page fault on the development VM when they interleave with the work; touching
them in a sweep first did not help, and no transparent huge pages were granted).
"""
from __future__ import annotations

import numpy as np

from harness import numba_kernels
from harness.numba_kernels import lazy_compiler

# ----------------------------------------------------------------------------- kernels
# Plain Python here; _kernels() replaces each name by its numba dispatcher on first use.

_GOLDEN = 0x9E3779B97F4A7C15  # 2^64 / golden ratio: Fibonacci hashing


def _minmax(feat, lo, hi, b0, b1, i0, i1):
    """lo[b], hi[b] = per-axis min and max of points i0..i1 of feat[b] (B, N, d), groups b0..b1;
    NaN where a feature is NaN (an infinite one shows as such). Selects and an integer NaN flag
    rather than min/max and a float sum: no serial float dependency."""
    d = feat.shape[2]
    for b in range(b0, b1):
        for a in range(d):
            col = feat[b, i0:i1, a]
            m = col[0]
            M = col[0]
            nan = 0
            for i in range(col.shape[0]):
                x = col[i]
                m = x if x < m else m
                M = x if x > M else M
                nan |= x != x
            lo[b, a] = m if nan == 0 else np.nan
            hi[b, a] = M if nan == 0 else np.nan


_PBLOCK = 128  # points per block of the points kernel


def _simplices(feat, b, i0, i1, cst, lo, pw, weights, vid, tkeys, tids, vkeys, M):
    """Steps (1) and (2) for points i0..i1 of group b: weights[b, n] (D,), and the packed keys
    (first d coordinates minus lo[b]) of the D simplex vertices inserted into the hash table
    (``_new_table``'s tuple) block by block, their ids in vid[b, n]. cst: ``lattice.constants``.
    Returns the table's tuple.

    Blocks of _PBLOCK points, each step a straight loop over the block (LLVM vectorizes them):
    (D, block) work arrays in the features' dtype, ranks kept as small integer floats so that
    the comparisons and selects stay in one type; no branch depends on a point's values. The
    block's keys go to the table at once (no (N, D) key array: fewer page faults)."""
    d = feat.shape[2]
    D = d + 1
    down = cst[d]
    Df = cst[d + 1]
    one = cst[d + 2]
    zero = cst[d + 3]
    BS = _PBLOCK
    E = np.empty((D, BS), feat.dtype)  # elevated point
    R = np.empty((D, BS), feat.dtype)  # remainder-0 point
    K = np.empty((D, BS), feat.dtype)  # ranks
    Y = np.empty((D, BS), feat.dtype)  # y[rank] = (e - r) / D
    S = np.empty(BS, feat.dtype)
    SM = np.empty(BS, feat.dtype)
    KEY = np.empty(BS, np.int64)
    DELTA = np.empty(BS, np.int64)
    KB = np.empty((BS, D), np.int64)
    lob = lo[b]
    S1 = np.int64(0)
    for i in range(d):
        S1 += pw[i]
    for blk in range(i0, i1, BS):
        n = min(BS, i1 - blk)
        fb = feat[b, blk:blk + n]
        # elevation
        sm = SM[:n]
        for x in range(n):
            sm[x] = zero
        for i in range(d, 0, -1):
            sc = cst[i - 1]
            fi = cst[d + 4 + i]
            ei = E[i, :n]
            for x in range(n):
                cf = fb[x, i - 1] * sc
                ei[x] = sm[x] - fi * cf
                sm[x] += cf
        e0 = E[0, :n]
        for x in range(n):
            e0[x] = sm[x]
        # nearest remainder-0 point and the sum of its coordinates / D
        s = S[:n]
        for x in range(n):
            s[x] = zero
        for i in range(D):
            ei = E[i, :n]
            ri = R[i, :n]
            ki = K[i, :n]
            for x in range(n):
                v = ei[x] * down
                cl = np.ceil(v)
                fl = np.floor(v)
                r = cl if cl * Df - ei[x] < ei[x] - fl * Df else fl
                ri[x] = r * Df
                s[x] += r
                ki[x] = zero
        # ranks of the differences (ties: the lower index ranks higher)
        for i in range(d):
            ei = E[i, :n]
            ri = R[i, :n]
            ki = K[i, :n]
            for j in range(i + 1, D):
                ej = E[j, :n]
                rj = R[j, :n]
                kj = K[j, :n]
                for x in range(n):
                    c = ei[x] - ri[x] < ej[x] - rj[x]
                    ki[x] += one if c else zero
                    kj[x] += zero if c else one
        # sum fix-up
        for i in range(D):
            ri = R[i, :n]
            ki = K[i, :n]
            for x in range(n):
                sx = s[x]
                k = ki[x]
                dn = (sx > zero) & (k >= Df - sx)
                up = (sx < zero) & (k < zero - sx)
                ri[x] = ri[x] - Df if dn else (ri[x] + Df if up else ri[x])
                ki[x] = k + sx + (zero - Df if dn else (Df if up else zero))
        # y[rank_i] = (e_i - r_i) / D, by selects
        for q in range(D):
            rq = cst[d + 4 + q]
            yq = Y[q, :n]
            for x in range(n):
                yq[x] = zero
            for i in range(D):
                ei = E[i, :n]
                ri = R[i, :n]
                ki = K[i, :n]
                for x in range(n):
                    yq[x] = (ei[x] - ri[x]) * down if ki[x] == rq else yq[x]
        # barycentric weights
        wb = weights[b, blk:blk + n]
        y0 = Y[0, :n]
        yd = Y[d, :n]
        for x in range(n):
            wb[x, 0] = yd[x] + (one - y0[x])
        for k in range(1, D):
            ya = Y[d - k, :n]
            yb = Y[d - k + 1, :n]
            for x in range(n):
                wb[x, k] = ya[x] - yb[x]
        # packed keys: vertex 0 is r; vertex k = vertex k-1 + 1 everywhere, - D at the coordinate of rank d-k+1
        key = KEY[:n]
        for x in range(n):
            key[x] = 0
        for i in range(d):
            ri = R[i, :n]
            li = lob[i]
            p = pw[i]
            for x in range(n):
                key[x] += (np.int64(ri[x]) - li) * p
        kb = KB[:n]
        for x in range(n):
            kb[x, 0] = key[x]
        delta = DELTA[:n]
        for k in range(1, D):
            rq = cst[d + 4 + d - k + 1]
            for x in range(n):
                delta[x] = S1
            for i in range(d):
                ki = K[i, :n]
                p = D * pw[i]
                for x in range(n):
                    delta[x] -= p if ki[x] == rq else 0
            for x in range(n):
                key[x] += delta[x]
                kb[x, k] = key[x]
        tkeys, tids, vkeys, M = _insert(kb, vid[b, blk:blk + n], tkeys, tids, vkeys, M)
    return tkeys, tids, vkeys, M


def _slot(key, shift):
    """Home slot of a packed key in a table of 2^(64 - shift) slots."""
    return (np.uint64(key) * np.uint64(_GOLDEN)) >> shift


_LOAD = 2  # the hash table is kept at most 1/_LOAD full


def _new_table(log):
    """An empty hash table of 2^log slots: (slot keys, slot ids (-1: empty), id -> key, count)."""
    return np.empty(1 << log, np.int64), np.full(1 << log, -1, np.int32), np.empty((1 << log) // _LOAD + 1, np.int64), 0


def _insert(keys, vid, tkeys, tids, vkeys, M):
    """Step (2): insert keys (n, D) int64 into the table (``_new_table``'s tuple, M ids in use),
    vid (n, D) int32 = their ids (new keys get M, M + 1, ... in order of first appearance).
    Returns the table's new tuple; it is kept at most 1/_LOAD full (doubled as needed)."""
    n_, D = keys.shape
    LOAD = _LOAD
    T = tkeys.shape[0]
    log = 0
    while (1 << log) < T:
        log += 1
    shift = np.uint64(64 - log)
    mask = np.uint64(T - 1)
    one = np.uint64(1)
    for n in range(n_):
        for k in range(D):
            key = keys[n, k]
            h = _slot(key, shift)
            while True:
                t = tids[h]
                if t < 0:
                    t = np.int32(M)
                    tids[h] = t
                    tkeys[h] = key
                    vkeys[M] = key
                    M += 1
                    if LOAD * M > T:  # grow: re-insert every vertex in id order
                        log += 1
                        T = 1 << log
                        shift = np.uint64(64 - log)
                        mask = np.uint64(T - 1)
                        tkeys = np.empty(T, np.int64)
                        tids = np.full(T, -1, np.int32)
                        grown = np.empty(T // LOAD + 1, np.int64)
                        grown[:M] = vkeys[:M]
                        vkeys = grown
                        for m in range(M):
                            g = _slot(vkeys[m], shift)
                            while tids[g] >= 0:
                                g = (g + one) & mask
                            tids[g] = m
                            tkeys[g] = vkeys[m]
                    break
                if tkeys[h] == key:
                    break
                h = (h + one) & mask
            vid[n, k] = t
    return tkeys, tids, vkeys, M


def _remap(vid, idmap):
    """vid[...] = idmap[vid] (a chunk's local vertex ids made the group's)."""
    v = vid.reshape(-1)
    for x in range(v.shape[0]):
        v[x] = idmap[v[x]]


def _find(key, tkeys, tids, shift):
    """Id of the vertex with this packed key, or -1 (shift: 64 - log2 of the table's size)."""
    mask = np.uint64(tkeys.shape[0] - 1)
    h = _slot(key, shift)
    while True:
        t = tids[h]
        if t < 0 or tkeys[h] == key:
            return t
        h = (h + np.uint64(1)) & mask


def _neighbours(vkeys, tkeys, tids, shift, deltas, nbr, m0, m1):
    """Step (3) for vertices m0..m1 of one group: nbr[j, 0, m] / nbr[j, 1, m] = the id of the
    vertex at key -/+ direction j, or -1."""
    D = deltas.shape[0]
    for m in range(m0, m1):
        key = vkeys[m]
        for j in range(D):
            nbr[j, 0, m] = _find(key - deltas[j], tkeys, tids, shift)
            nbr[j, 1, m] = _find(key + deltas[j], tkeys, tids, shift)


def _place(vid, b, loc, nbr, off):
    """A group's local ids made global: vid[b] += off, and its local neighbours loc (D, 2, M)
    copied to nbr[:, :, off:off + M] with off added (-1 stays -1)."""
    v = vid[b].reshape(-1)
    for x in range(v.shape[0]):
        v[x] += off
    D = loc.shape[0]
    M = loc.shape[2]
    for j in range(D):
        for s in range(2):
            src = loc[j, s]
            dst = nbr[j, s, off:off + M]
            for m in range(M):
                t = src[m]
                dst[m] = t + off if t >= 0 else -1


def _splat(vid, w, vals, tab, b, i0, i1, base):
    """Step 3 for points i0..i1 of group b in point order: tab[vid[b, n, k] - base] += w[b, n, k]
    * vals[b, n]."""
    D = vid.shape[2]
    C = vals.shape[2]
    for n in range(i0, i1):
        ids = vid[b, n]
        wn = w[b, n]
        vn = vals[b, n]
        if C == 2:
            v0 = vn[0]
            v1 = vn[1]
            for k in range(D):
                t = tab[ids[k] - base]
                t[0] += wn[k] * v0
                t[1] += wn[k] * v1
        else:
            for k in range(D):
                t = tab[ids[k] - base]
                a = wn[k]
                for c in range(C):
                    t[c] += a * vn[c]


def _splat_chunks(vid, w, vals, tabs, b, c0, c1, chunk, base):
    """Chunks c0..c1 of group b's points (``chunk`` points each), chunk c into its own zeroed
    table tabs[c] (rows: the group's vertex ids - base)."""
    N = vid.shape[1]
    for c in range(c0, c1):
        _splat(vid, w, vals, tabs[c], b, c * chunk, min(N, (c + 1) * chunk), base)


def _sum_tables(tabs, tab, m0, m1, off):
    """tab[off + m] = ((tabs[0, m] + tabs[1, m]) + tabs[2, m]) + ... for m in m0..m1 (a fixed order)."""
    C = tab.shape[1]
    for m in range(m0, m1):
        o = tab[off + m]
        for c in range(C):
            o[c] = tabs[0, m, c]
        for q in range(1, tabs.shape[0]):
            t = tabs[q, m]
            for c in range(C):
                o[c] += t[c]


def _blur(src, dst, nbr, j, half, m0, m1):
    """Step 4 along direction j for vertices m0..m1: dst[m] = src[m] + half (src[n1] + src[n2])
    (half = 0.5 in the table's dtype), an absent neighbour (-1) reading the zero row at the
    table's end."""
    Z = src.shape[0] - 1
    C = src.shape[1]
    n1 = nbr[j, 0]
    n2 = nbr[j, 1]
    for m in range(m0, m1):
        a = n1[m]
        c = n2[m]
        a = a if a >= 0 else Z
        c = c if c >= 0 else Z
        s = src[m]
        x = src[a]
        z = src[c]
        o = dst[m]
        for q in range(C):
            o[q] = s[q] + half * (x[q] + z[q])


def _slice(vid, w, tab, alpha, out, b0, b1, i0, i1):
    """Step 5 for points i0..i1 of groups b0..b1: out[b, n] = alpha * sum_k w * tab[vid]."""
    D = vid.shape[2]
    C = out.shape[2]
    for b in range(b0, b1):
        for n in range(i0, i1):
            ids = vid[b, n]
            wn = w[b, n]
            o = out[b, n]
            if C == 2:
                t = tab[ids[0]]
                x0 = wn[0] * t[0]
                x1 = wn[0] * t[1]
                for k in range(1, D):
                    t = tab[ids[k]]
                    x0 += wn[k] * t[0]
                    x1 += wn[k] * t[1]
                o[0] = alpha * x0
                o[1] = alpha * x1
            else:
                for c in range(C):
                    o[c] = 0.0
                for k in range(D):
                    t = tab[ids[k]]
                    a = wn[k]
                    for c in range(C):
                        o[c] += a * t[c]
                for c in range(C):
                    o[c] = alpha * o[c]


def _apply_groups(vid, w, vals, nbr, offsets, order, alpha, half, tab, tmp, out, b0, b1, chunk):
    """Steps 3-5 for whole groups b0..b1 (their vertex ranges are disjoint from other groups').
    A group splats in chunks of ``chunk`` points when ``_chunked`` says so, as ``apply`` does
    with one group; the blurred table ends in tab or tmp by the parity of len(order)."""
    N = vid.shape[1]
    C = vals.shape[2]
    for b in range(b0, b1):
        off = offsets[b]
        M = offsets[b + 1] - off
        nch = (N + chunk - 1) // chunk
        if _chunked(N, vid.shape[2], M, chunk):
            tabs = np.zeros((nch, M, C), vals.dtype)
            _splat_chunks(vid, w, vals, tabs, b, 0, nch, chunk, off)
            _sum_tables(tabs, tab, 0, M, off)
        else:
            _splat(vid, w, vals, tab, b, 0, N, 0)
    src = tab
    dst = tmp
    for j in order:
        _blur(src, dst, nbr, j, half, offsets[b0], offsets[b1])
        src, dst = dst, src
    _slice(vid, w, src, alpha, out, b0, b1, 0, N)


def _chunked(N, D, M, chunk):
    """Whether a group of N points and M vertices splats in chunks of ``chunk`` points, each into
    a private table: when it has several chunks and the extra tables are small (at most 1/8 of
    its N D vertex slots). A function of the group alone, so that the sums' order (and the
    result, bit for bit) does not depend on the batch or the threads."""
    nch = (N + chunk - 1) // chunk
    return nch > 1 and (nch - 1) * M * 8 <= N * D


# ----------------------------------------------------------------------------- compilation

_INLINED = ("_slot", "_find")
_KERNEL_NAMES = _INLINED + ("_minmax", "_new_table", "_insert", "_simplices", "_remap", "_neighbours", "_place",
                            "_splat", "_splat_chunks", "_sum_tables", "_blur", "_slice", "_chunked", "_apply_groups")
_kernels = lazy_compiler(globals(), _KERNEL_NAMES, _INLINED)  # replaces each kernel by its dispatcher


available = numba_kernels.available


# ----------------------------------------------------------------------------- threads


def workers() -> int:
    from harness.kernels import _crf_numba

    return _crf_numba.workers()


def _run(calls: list) -> None:
    """Run [(fn, args), ...] on the CRF kernels' thread pool (the first on this thread)."""
    from harness.kernels import _crf_numba

    _crf_numba._run(calls)


def _split(n: int, parts: int) -> list[tuple[int, int]]:
    parts = max(1, min(parts, n))
    return [(n * t // parts, n * (t + 1) // parts) for t in range(parts)]


# Below this many points (vertices) per thread, one thread does the work (a thread hop costs ~20 us).
MIN_POINTS_PER_THREAD = 8192
MIN_VERTICES_PER_THREAD = 16384
SPLAT_CHUNK = 1 << 16  # a big group with few vertices splats in chunks of this many points (``_chunked``)


def _parts(n: int, per: int) -> list[tuple[int, int]]:
    return _split(n, min(workers(), max(1, n // per)))


INITIAL_LOG = 12  # the hash table starts at 2^12 slots (48 KiB: L1/L2) and doubles as needed


def _shift(tkeys: np.ndarray) -> np.uint64:
    return np.uint64(64 - (tkeys.shape[0].bit_length() - 1))


# ----------------------------------------------------------------------------- operations


def minmax(feat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-group, per-axis min and max of (B, N >= 1, d) features (NaN where a group has a NaN
    feature; an infinite one shows as such)."""
    _kernels()
    B, N, d = feat.shape
    if B > 1:  # whole groups per thread, each filling its own rows
        lo = np.empty((B, d), feat.dtype)
        hi = np.empty((B, d), feat.dtype)
        _run([(_minmax, (feat, lo, hi, b0, b1, 0, N)) for b0, b1 in _parts(B, max(1, MIN_POINTS_PER_THREAD // N))])
        return lo, hi
    parts = _parts(N, MIN_POINTS_PER_THREAD)  # ranges of the group's points, then combined
    lo = np.empty((len(parts), 1, d), feat.dtype)
    hi = np.empty((len(parts), 1, d), feat.dtype)
    _run([(_minmax, (feat, lo[s], hi[s], 0, 1, i0, i1)) for s, (i0, i1) in enumerate(parts)])
    return lo.min(0), hi.max(0)  # numpy's min and max propagate NaN


def _group(feat, b, cst, lo, pw, deltas, w, vid):
    """Steps (1)-(3) of one group on this thread: returns (M, local neighbours (D, 2, M))."""
    N, d = feat.shape[1], feat.shape[2]
    D = d + 1
    tkeys, tids, vkeys, M = _simplices(feat, b, 0, N, cst, lo, pw, w, vid, *_new_table(INITIAL_LOG))
    nbr = np.empty((D, 2, M), np.int32)
    _neighbours(vkeys, tkeys, tids, _shift(tkeys), deltas, nbr, 0, M)
    return M, nbr


def _simplices_chunked(feat, cst, lo, pw, w, vid):
    """Steps (1) and (2) for one big group (B = 1): chunks of points get their own hash tables in
    parallel, whose vertices are then inserted into the group's table in chunk order, and the
    chunks' ids remapped. Ids follow first appearance over the whole group, as one sequential
    pass gives them: the result does not depend on the chunking."""
    N = feat.shape[1]
    parts = _parts(N, MIN_POINTS_PER_THREAD)
    if len(parts) == 1:
        return _simplices(feat, 0, 0, N, cst, lo, pw, w, vid, *_new_table(INITIAL_LOG))
    local: list = [None] * len(parts)

    def task(c, i0, i1):
        local[c] = _simplices(feat, 0, i0, i1, cst, lo, pw, w, vid, *_new_table(INITIAL_LOG))

    _run([(task, (c, i0, i1)) for c, (i0, i1) in enumerate(parts)])
    table = _new_table(INITIAL_LOG)
    maps = []
    for _, _, vkeys, M in local:
        idmap = np.empty((M, 1), np.int32)
        table = _insert(vkeys[:M].reshape(M, 1), idmap, *table)
        maps.append(idmap.reshape(-1))
    _run([(_remap, (vid[0, i0:i1], maps[c])) for c, (i0, i1) in enumerate(parts)])
    return table


def build(feat: np.ndarray, lo: np.ndarray, pw: np.ndarray, deltas: np.ndarray, cst: np.ndarray):
    """The plan's arrays for (B, N, d) features: ``(vertex ids (B, N, D) int32, weights (B, N, D),
    neighbours (D, 2, M) int32, offsets (B + 1,) int64)`` with global vertex ids (group b owns
    ``offsets[b]:offsets[b + 1]``). lo (B, d), pw (d,): the key layout (``lattice.key_layout``);
    deltas (D,): the packed directions; cst: ``lattice.constants`` in the features' dtype."""
    _kernels()
    B, N, d = feat.shape
    D = d + 1
    w = np.empty((B, N, D), feat.dtype)
    vid = np.empty((B, N, D), np.int32)
    if B == 1:  # chunks of points in parallel, then neighbours in parallel
        tkeys, tids, vkeys, M = _simplices_chunked(feat, cst, lo, pw, w, vid)
        nbr = np.empty((D, 2, M), np.int32)
        _run([(_neighbours, (vkeys, tkeys, tids, _shift(tkeys), deltas, nbr, m0, m1))
              for m0, m1 in _parts(M, MIN_VERTICES_PER_THREAD)])
        return vid, w, nbr, np.array([0, M], np.int64)
    # whole groups per thread, local ids; then made global
    results: list = [None] * B

    def task(b0, b1):
        for b in range(b0, b1):
            results[b] = _group(feat, b, cst, lo, pw, deltas, w, vid)

    _run([(task, (b0, b1)) for b0, b1 in _parts(B, max(1, MIN_POINTS_PER_THREAD // N))])
    offsets = np.zeros(B + 1, np.int64)
    offsets[1:] = np.cumsum([r[0] for r in results])
    nbr = np.empty((D, 2, int(offsets[-1])), np.int32)

    def place(b0, b1):
        for b in range(b0, b1):
            _place(vid, b, results[b][1], nbr, offsets[b])

    _run([(place, (b0, b1)) for b0, b1 in _split(B, min(workers(), B))])
    return vid, w, nbr, offsets


def apply(vid: np.ndarray, w: np.ndarray, nbr: np.ndarray, offsets: np.ndarray, vals: np.ndarray,
          alpha: float, order: list[int]) -> np.ndarray:
    """Steps 3-5: (B, N, C) values -> (B, N, C) (w in the values' dtype; ``order``: the blur
    directions, ``0..d`` for the filter, reversed for its transpose)."""
    _kernels()
    B, N, C = vals.shape
    M = int(offsets[-1])
    tab = np.zeros((M + 1, C), vals.dtype)  # row M: the zero value of absent neighbours
    tmp = np.zeros((M + 1, C), vals.dtype)
    out = np.empty((B, N, C), vals.dtype)
    a = vals.dtype.type(alpha)
    half = vals.dtype.type(0.5)
    ordr = np.asarray(order, np.int64)
    if B > 1:
        parts = _parts(B, max(1, MIN_POINTS_PER_THREAD // N))
        _run([(_apply_groups, (vid, w, vals, nbr, offsets, ordr, a, half, tab, tmp, out, b0, b1, SPLAT_CHUNK))
              for b0, b1 in parts])
        return out
    if _chunked(N, vid.shape[2], M, SPLAT_CHUNK):  # private tables per chunk, summed in chunk order
        nch = -(-N // SPLAT_CHUNK)
        tabs = np.zeros((nch, M, C), vals.dtype)
        _run([(_splat_chunks, (vid, w, vals, tabs, 0, c0, c1, SPLAT_CHUNK, 0)) for c0, c1 in _split(nch, workers())])
        _run([(_sum_tables, (tabs, tab, m0, m1, 0)) for m0, m1 in _parts(M, MIN_VERTICES_PER_THREAD)])
        del tabs
    else:
        _splat(vid, w, vals, tab, 0, 0, N, 0)
    src, dst = tab, tmp
    vparts = _parts(M, MIN_VERTICES_PER_THREAD)
    for j in order:
        _run([(_blur, (src, dst, nbr, j, half, m0, m1)) for m0, m1 in vparts])
        src, dst = dst, src
    _run([(_slice, (vid, w, src, a, out, 0, 1, i0, i1)) for i0, i1 in _parts(N, MIN_POINTS_PER_THREAD)])
    return out
