"""Best IoU at all 256 binarizations of a quantized map, from union-find passes over its pixels.

The reference (``docs/metrics.md``, :func:`harness.evaluation.boxes.boxes_at_thresholds`)
binarizes the quantized map ``q`` (uint8) as ``q > t`` for each threshold's level
``t = int(tau * max(q))`` and traces ``cv2.findContours(RETR_TREE, CHAIN_APPROX_SIMPLE)`` on it.
Only 256 binarizations exist (``t = 0 .. 255``; every ``t >= max(q)`` keeps nothing) and they are
nested: as ``t`` decreases, foreground pixels are only added, so components only appear, grow
and merge. This module gets the best IoU of every level without tracing contours, from what the
contours of ``RETR_TREE`` are. Checked against OpenCV on tens of thousands of binarizations
(``tests/test_component_tree.py``):

- **Outer contours** are one-to-one with the 8-connected components of the foreground, and
  ``cv2.boundingRect`` of an outer contour is its component's pixel bounding box (also for
  components touching the image border: OpenCV pads the image with background).
- **Hole contours** are one-to-one with the 4-connected components of the background that do
  not touch the image border. A hole contour's boundingRect is the hole's pixel bounding box
  grown by one pixel on every side (the contour runs through the foreground pixels 4-adjacent
  to the hole, which include the neighbours of its extreme pixels).
- **Areas.** ``cv2.contourArea`` of an outer contour is the area of the unit squares between
  pixel centres whose 4 corner pixels are in the component or enclosed by it, plus half of
  each square with 3 such corners. A hole contour or a nested component lies inside the outer
  contour around it and has a strictly smaller area.

Multi-contour mode (MaxBoxAccV2), two union-find passes over the pixels sorted by value:

1. foreground, descending ``q``, 8-connectivity: the component boxes at every level;
2. enclosed background, ascending ``q``, 4-connectivity: the hole boxes at every level. A
   pixel is enclosed from level ``q`` up to level ``E - 1``, where ``E`` (the level at which its
   background component first reaches the border) comes from a priority flood from the border.

A component's IoU holds over a run of levels until its box changes or it disappears; runs are
max-ed into a 256-level tree when they end, and a component is only re-evaluated at the end of
a level in which it changed. The work is proportional to what changes, and a noise map with
thousands of components stays fast.

Single-contour mode (MaxBoxAcc V1) keeps the contour of largest area: by the facts above, the
outer contour of the *solid* component (foreground plus what it encloses: pixels with ``t < E``)
of largest area. One descending union-find pass over the pixels sorted by ``E`` keeps every
solid component's exact area and box, and the running largest area with the number of
components sharing it. Where two or more share it, OpenCV's contour order decides, so that
level alone is traced with ``cv2.findContours`` (rare: ties of area 0 between single pixels or
lines at the top levels of a noisy map).

Boxes follow the reference exactly: ``[x, y, min(x + w, W - 1), min(y + h, H - 1)]`` from the
boundingRect (one past the last pixel, clamped), IoU inclusive (``+1``), ``[0, 0, 0, 0]`` when
nothing survives. The IoU is the same float64 division of the same integers as
:func:`harness.evaluation.boxes.iou_matrix`, so results are equal (``==``), not just close.

numba is imported, and the kernels compiled, on the first call (``cache=True`` keeps the
machine code on disk, so later processes only load it).
"""
from __future__ import annotations

import threading
from typing import Any

import numpy as np

from harness.numba_kernels import compile_kernels

__all__ = [
    "level_best_iou",
    "best_iou_at_thresholds",
    "threshold_cuts",
    "count_fallback_levels",
]

_NUM_LEVELS = 256

# ----------------------------------------------------------------------------- numba kernels
# Plain Python functions here; _kernels() replaces each module-level name by its numba
# dispatcher (helpers first), so the kernels resolve their helpers as compiled functions and
# ``import harness.evaluation`` does not import numba.


def _find(parent, p):
    # Root of p with path halving.
    while parent[p] != p:
        gp = parent[parent[p]]
        parent[p] = gp
        p = gp
    return p


def _iou_best(x0, y0, x1, y1, gt):
    # max over GT boxes of the inclusive IoU, exactly as boxes.iou_matrix computes each pair:
    # int64 intersection and union, one float64 division, 0 where the union is <= 0.
    best = 0.0
    area_a = (x1 - x0 + 1) * (y1 - y0 + 1)
    for g in range(gt.shape[0]):
        gx0 = gt[g, 0]
        gy0 = gt[g, 1]
        gx1 = gt[g, 2]
        gy1 = gt[g, 3]
        iw = min(x1, gx1) - max(x0, gx0) + 1
        if iw < 0:
            iw = 0
        ih = min(y1, gy1) - max(y0, gy0) + 1
        if ih < 0:
            ih = 0
        inter = iw * ih
        denom = area_a + (gx1 - gx0 + 1) * (gy1 - gy0 + 1) - inter
        if denom > 0:
            v = inter / denom
            if v > best:
                best = v
    return best


def _span_max(span, lo, hi, val):
    # span: a max segment tree over the 256 levels (leaves 256..511). Raise every level of
    # lo..hi to at least val, touching O(log 256) nodes; _span_read pushes the maxima down.
    l = lo + _NUM_LEVELS
    r = hi + _NUM_LEVELS + 1
    while l < r:
        if l & 1:
            if span[l] < val:
                span[l] = val
            l += 1
        if r & 1:
            r -= 1
            if span[r] < val:
                span[r] = val
        l >>= 1
        r >>= 1


def _span_read(span):
    # Per level, the max of the values raised over it.
    for i in range(2, 2 * _NUM_LEVELS):
        if span[i] < span[i >> 1]:
            span[i] = span[i >> 1]
    return span[_NUM_LEVELS:].copy()


def _sort_pixels(q):
    # Counting sort of the pixels by value: for the k-th pixel, its index in a (H + 2) x (W + 2)
    # grid with a one-pixel frame that is never added (neighbour look-ups need no bound checks)
    # and its x and y (kept, not recomputed: an integer division per pixel costs more than the
    # rest of the pixel's work).
    h, w = q.shape
    wp = w + 2
    start = np.zeros(_NUM_LEVELS + 1, np.int64)
    for y in range(h):
        for x in range(w):
            start[q[y, x] + 1] += 1
    for v in range(_NUM_LEVELS):
        start[v + 1] += start[v]
    pos = start[:_NUM_LEVELS].copy()
    order = np.empty(h * w, np.int32)
    xs = np.empty(h * w, np.int32)
    ys = np.empty(h * w, np.int32)
    for y in range(h):
        base = (y + 1) * wp + 1
        for x in range(w):
            v = q[y, x]
            k = pos[v]
            order[k] = base + x
            xs[k] = x
            ys[k] = y
            pos[v] = k + 1
    return order, xs, ys, start


# Union-find over component ids: a pixel gets the id of the component it starts or joins
# (``label``, over the padded pixel grid); ids are created in order, so the union-find forest
# (``cpar``) and the per-component records (``rec``, one int32 row of 8 per id: a component's
# data share a cache line) stay compact and cache-friendly.
#
# Per-level maxima without a per-level scan: a component's box, and so its IoU ``cval[c]``,
# holds over a run of consecutive levels, from the level where it was last evaluated
# (``rec[c, _OPEN]``) to the level where its box changes or it disappears (merged away, or for
# a hole, reaching the image border). When the run closes, its IoU is max-ed into the levels
# it covered (``_span_max``, a 512-node tree that stays in L1 cache). Components are evaluated
# only at the end of a level in which they changed (``dirty``, stamped by level), a changed box
# with the same IoU just continues the run, and runs of IoU 0 are not recorded at all (a level
# with a component has best IoU >= 0 anyway). The work is proportional to what changes.
# rec fields: pixel count, box, last level queued, level the open run started (-1: none),
# and for the single-contour pass twice the outer contour's area.
_SIZE, _X0, _Y0, _X1, _Y1, _STAMP, _OPEN, _AREA = range(8)


def _neighbour_tables():
    """For each mask of active 8-neighbours (bit j: neighbour j in the order NW, N, NE, W, E,
    SW, S, SE), one representative per group of mutually 8-adjacent active neighbours, and the
    change of twice the contour area when the pixel is added: row
    ``[count, rep0, rep1, rep2, rep3, darea2]``. Two active pixels that are 8-adjacent are
    already in one component, so a new pixel needs one find per group, not one per neighbour.
    ``darea2`` counts the pixel's 4 unit squares (between pixel centres) in which 2 or 3 of the
    other corners are active: each gains half a unit of area (see _single_levels)."""
    d = [(-1, -1), (0, -1), (1, -1), (-1, 0), (1, 0), (-1, 1), (0, 1), (1, 1)]
    squares = ((0, 1, 3), (1, 2, 4), (3, 5, 6), (4, 6, 7))  # NW, NE, SW, SE squares
    table = np.zeros((256, 6), np.int64)
    for mask in range(256):
        active = [j for j in range(8) if mask >> j & 1]
        label = {}
        for j in active:
            if j in label:
                continue
            label[j] = j
            stack = [j]
            while stack:
                a = stack.pop()
                for b in active:
                    if b not in label and max(abs(d[a][0] - d[b][0]), abs(d[a][1] - d[b][1])) == 1:
                        label[b] = j
                        stack.append(b)
        reps = sorted(set(label.values()))
        table[mask, 0] = len(reps)
        table[mask, 1 : 1 + len(reps)] = reps
        table[mask, 5] = sum(sum(mask >> j & 1 for j in sq) >= 2 for sq in squares)
    return table


def _mark(rec, dirty, ndirty, c, t):
    # Queue component c for evaluation at the end of level t (once per level).
    if rec[c, _STAMP] != t:
        rec[c, _STAMP] = t
        dirty[ndirty] = c
        ndirty += 1
    return ndirty


def _new_component(rec, c, x, y):
    rec[c, _SIZE] = 1
    rec[c, _X0] = x
    rec[c, _Y0] = y
    rec[c, _X1] = x
    rec[c, _Y1] = y
    rec[c, _STAMP] = -1
    rec[c, _OPEN] = -1
    rec[c, _AREA] = 0


def _grow(rec, r, x, y):
    # Add pixel (x, y) to component r; True if its box changed.
    rec[r, _SIZE] += 1
    changed = False
    if x < rec[r, _X0]:
        rec[r, _X0] = x
        changed = True
    elif x > rec[r, _X1]:
        rec[r, _X1] = x
        changed = True
    if y < rec[r, _Y0]:
        rec[r, _Y0] = y
        changed = True
    elif y > rec[r, _Y1]:
        rec[r, _Y1] = y
        changed = True
    return changed


def _union(cpar, rec, a, b):
    # Merge roots a != b (union by size): returns (root, absorbed, root's record changed).
    if rec[a, _SIZE] >= rec[b, _SIZE]:
        win = a
        lose = b
    else:
        win = b
        lose = a
    cpar[lose] = win
    rec[win, _SIZE] += rec[lose, _SIZE]
    changed = False
    for f in range(_X0, _Y0 + 1):
        if rec[lose, f] < rec[win, f]:
            rec[win, f] = rec[lose, f]
            changed = True
    for f in range(_X1, _Y1 + 1):
        if rec[lose, f] > rec[win, f]:
            rec[win, f] = rec[lose, f]
            changed = True
    return win, lose, changed


def _close_run(span, rec, cval, c, lo, hi):
    # End component c's open run: its IoU counts for levels lo..hi.
    if lo <= hi:
        _span_max(span, lo, hi, cval[c])
    rec[c, _OPEN] = -1


def _foreground_pass(q, gt, order, xs, ys, start, label, cpar, rec, dirty, cval, tables):
    """Descending pass, 8-connectivity. Returns (comp_best, ncomp) per level t: the best IoU
    over the component boxes (-1 where no box has IoU > 0) and the number of components."""
    h, w = q.shape
    wp = w + 2
    label[:] = -1
    span = np.full(2 * _NUM_LEVELS, -1.0)
    ncomp_at = np.zeros(_NUM_LEVELS, np.int64)
    offs = np.array([-wp - 1, -wp, -wp + 1, -1, 1, wp - 1, wp, wp + 1], np.int64)
    ncomp = 0
    ncreated = 0
    for t in range(_NUM_LEVELS - 2, -1, -1):  # level t: pixels with q > t, i.e. add q == t + 1
        v = t + 1
        ndirty = 0
        for k in range(start[v], start[v + 1]):
            p = order[k]
            x = xs[k]
            y = ys[k]
            mask = 0
            for j in range(8):
                if label[p + offs[j]] >= 0:
                    mask |= 1 << j
            if mask == 0:  # an isolated new pixel: a new component
                c = ncreated
                ncreated += 1
                cpar[c] = c
                _new_component(rec, c, x, y)
                label[p] = c
                ncomp += 1
                ndirty = _mark(rec, dirty, ndirty, c, t)
                continue
            # Join the component of the first group, then merge the other groups' components.
            nb = p + offs[tables[mask, 1]]
            r = _find(cpar, label[nb])
            label[nb] = r
            label[p] = r
            if _grow(rec, r, x, y):
                ndirty = _mark(rec, dirty, ndirty, r, t)
            for g in range(2, tables[mask, 0] + 1):
                nb = p + offs[tables[mask, g]]
                rn = _find(cpar, label[nb])
                label[nb] = rn
                if rn == r:
                    continue
                win, lose, changed = _union(cpar, rec, r, rn)
                ncomp -= 1
                if changed:
                    ndirty = _mark(rec, dirty, ndirty, win, t)
                if rec[lose, _OPEN] >= 0:  # its run ends (one created in this level is queued)
                    ndirty = _mark(rec, dirty, ndirty, lose, t)
                r = win
        for k in range(ndirty):
            c = dirty[k]
            val = 0.0
            if cpar[c] == c:
                val = _iou_best(rec[c, _X0], rec[c, _Y0], min(rec[c, _X1] + 1, w - 1), min(rec[c, _Y1] + 1, h - 1), gt)
            s = rec[c, _OPEN]
            if s >= 0:
                if val == cval[c]:
                    continue  # same IoU: the run goes on
                _close_run(span, rec, cval, c, t + 1, s)  # it held for levels s down to t + 1
            if val > 0.0:
                cval[c] = val
                rec[c, _OPEN] = t
        ncomp_at[t] = ncomp
    for c in range(ncreated):
        if rec[c, _OPEN] >= 0:
            _close_run(span, rec, cval, c, 0, rec[c, _OPEN])
    return _span_read(span), ncomp_at


def _hole_pass(q, gt, order, xs, ys, start, ep, label, cpar, rec, dirty, cval, dnext):
    """Ascending pass over the enclosed background, 4-connectivity. Returns, per level t, the
    best IoU over the boxes of the hole contours, -1 where no hole box has IoU > 0.

    Hole contours are the 4-connected components of the background (q <= t) that do not reach
    the image border, i.e. of the pixels with q <= t < E (``ep``, see _solid_flood). A pixel
    enters that set at level q and leaves it at level E, together with its whole component
    (they reach the border at the same level, so they share E). Pixels with E == q are never
    enclosed and are skipped, and an enclosed pixel is never 4-adjacent to a background pixel
    outside the set (it would reach the border with it), so the union-find only ever sees live
    holes. A component is listed under its E (``dnext``) to end its run when it dies."""
    h, w = q.shape
    wp = w + 2
    label[:] = -1
    span = np.full(2 * _NUM_LEVELS, -1.0)
    dhead = np.full(_NUM_LEVELS, -1, np.int64)
    offs = np.array([-wp, -1, 1, wp], np.int64)
    ncreated = 0
    for t in range(_NUM_LEVELS - 1):  # level t: background q <= t, i.e. add q == t
        c = dhead[t]
        while c >= 0:  # holes reaching the border at level t: their runs end at t - 1
            if cpar[c] == c and rec[c, _OPEN] >= 0:
                _close_run(span, rec, cval, c, rec[c, _OPEN], t - 1)
            c = dnext[c]
        ndirty = 0
        for k in range(start[t], start[t + 1]):
            p = order[k]
            if ep[p] <= t:
                continue  # reaches the border as soon as it is background
            x = xs[k]
            y = ys[k]
            r = -1
            for j in range(4):
                nb = p + offs[j]
                ln = label[nb]
                if ln < 0 or ln == r:
                    continue
                rn = _find(cpar, ln)
                label[nb] = rn
                if rn == r:
                    continue
                if r < 0:  # join the first neighbour's component
                    r = rn
                    label[p] = r
                    if _grow(rec, r, x, y):
                        ndirty = _mark(rec, dirty, ndirty, r, t)
                    continue
                win, lose, changed = _union(cpar, rec, r, rn)
                if changed:
                    ndirty = _mark(rec, dirty, ndirty, win, t)
                if rec[lose, _OPEN] >= 0:  # its run ends (one created in this level is queued)
                    ndirty = _mark(rec, dirty, ndirty, lose, t)
                r = win
            if r < 0:  # an isolated new pixel: a new hole
                c = ncreated
                ncreated += 1
                cpar[c] = c
                _new_component(rec, c, x, y)
                label[p] = c
                e = ep[p]
                dnext[c] = dhead[e]
                dhead[e] = c
                ndirty = _mark(rec, dirty, ndirty, c, t)
        for k in range(ndirty):
            c = dirty[k]
            val = 0.0
            if cpar[c] == c:
                # The hole contour's boundingRect is the hole's pixel box grown by one; a hole
                # never touches the border, so only the one-past end can need the clamp.
                val = _iou_best(rec[c, _X0] - 1, rec[c, _Y0] - 1, min(rec[c, _X1] + 2, w - 1), min(rec[c, _Y1] + 2, h - 1), gt)
            s = rec[c, _OPEN]
            if s >= 0:
                if val == cval[c]:
                    continue
                _close_run(span, rec, cval, c, s, t - 1)  # it held for levels s up to t - 1
            if val > 0.0:
                cval[c] = val
                rec[c, _OPEN] = t
    for c in range(ncreated):  # holes still enclosed at level 254 (none at 255: no foreground)
        if rec[c, _OPEN] >= 0:
            _close_run(span, rec, cval, c, rec[c, _OPEN], _NUM_LEVELS - 2)
    return _span_read(span)


def _multi_levels(q, gt, label, cpar, rec, dirty, cval, tables, px, py, qp, ep, nxt, seq):
    order, xs, ys, start = _sort_pixels(q)
    comp_best, ncomp = _foreground_pass(q, gt, order, xs, ys, start, label, cpar, rec, dirty, cval, tables)
    _solid_flood(q, px, py, qp, ep, nxt, seq)
    hole_best = _hole_pass(q, gt, order, xs, ys, start, ep, label, cpar, rec, dirty, cval, seq)
    out = np.empty(_NUM_LEVELS)
    empty = _iou_best(0, 0, 0, 0, gt)  # nothing survives: the reference's [0, 0, 0, 0] box
    for t in range(_NUM_LEVELS):
        if ncomp[t] == 0:
            out[t] = empty
        else:
            # Some box exists, so the best IoU is >= 0; runs of IoU 0 were not recorded.
            best = comp_best[t] if comp_best[t] >= hole_best[t] else hole_best[t]
            out[t] = best if best > 0.0 else 0.0
    return out


def _solid_flood(q, px, py, qp, ep, nxt, seq):
    """Level up to which each pixel is *solid* (foreground, or background enclosed by the
    foreground): E(p) = min over 4-paths from p to the image border of the max of q along the
    path (a background pixel is enclosed at level t iff its 4-connected background component
    at t, i.e. within q <= t, does not reach the border). Pixel p is solid at level t iff
    t < E(p), and E(p) >= q(p). A priority flood from the border with one bucket per value:
    ``ep`` gets E per padded index, ``seq`` the pixels by increasing E, and the returned
    ``bstart[v]`` is where E == v starts in ``seq``."""
    h, w = q.shape
    wp = w + 2
    head = np.full(_NUM_LEVELS, -1, np.int64)
    bstart = np.zeros(_NUM_LEVELS + 1, np.int64)
    # ep doubles as the visit flag: 0 = not reached yet (interior); E is stored as E + 1 while
    # flooding (the frame holds 1: never entered) and shifted back at the end.
    ep[:] = 1
    for y in range(h):
        base = (y + 1) * wp + 1
        for x in range(w):
            qp[base + x] = q[y, x]
            ep[base + x] = 0
    for y in range(h):  # seeds: the pixels on the image border, at their own value
        step = 1 if (y == 0 or y == h - 1) else max(w - 1, 1)
        for x in range(0, w, step):
            p = (y + 1) * wp + x + 1
            if ep[p] == 0:
                v = qp[p]
                ep[p] = v + 1
                nxt[p] = head[v]
                head[v] = p
    k = 0
    for v in range(_NUM_LEVELS):
        bstart[v] = k
        while head[v] >= 0:
            p = head[v]
            head[v] = nxt[p]
            seq[k] = p
            k += 1
            for d in (-wp, -1, 1, wp):
                n = p + d
                if ep[n] == 0:
                    e = qp[n] if qp[n] > v else v
                    ep[n] = e + 1
                    nxt[n] = head[e]
                    head[e] = n
    bstart[_NUM_LEVELS] = k
    for i in range(k):
        p = seq[i]
        ep[p] -= 1
    return bstart


def _single_levels(q, gt, label, cpar, rec, dirty, cval, tables, px, py, qp, ep, nxt, seq):
    """Single-contour mode. Per level: the IoU of the box of the contour of largest
    cv2.contourArea, or -1 where two or more contours share the largest area (OpenCV's order
    decides: the caller traces that level).

    Every contour's area is at most that of the outermost component around it (a hole's or a
    nested component's polygon lies inside it), so the largest is an outer contour of an
    outermost component C. Its polygon through the boundary pixel centres encloses exactly the
    unit squares between pixel centres whose 4 corner pixels are in C or enclosed by it (area 1)
    and half of each square with 3 such corners (the 4th is outside); any other square
    contributes nothing. Those filled components are the 8-connected components of the solid
    pixels, nested as levels decrease, so one descending union-find pass over the pixels by E
    gives every area: adding a pixel adds, for each of its 4 squares, one half if 2 or 3 of the
    other corners are already solid (table column 5, twice the area). Distinct components share
    no square, so areas add on merges. Areas never decrease, so the running maximum and the
    number of components holding it are kept exactly with O(1) work per pixel."""
    h, w = q.shape
    wp = w + 2
    bstart = _solid_flood(q, px, py, qp, ep, nxt, seq)
    label[:] = -1
    offs = np.array([-wp - 1, -wp, -wp + 1, -1, 1, wp - 1, wp, wp + 1], np.int64)
    out = np.full(_NUM_LEVELS, -1.0)
    empty = _iou_best(0, 0, 0, 0, gt)
    out[_NUM_LEVELS - 1] = empty
    best_area = -1
    nbest = 0
    holder = -1
    ncreated = 0
    for t in range(_NUM_LEVELS - 2, -1, -1):
        for k in range(bstart[t + 1], bstart[t + 2]):
            p = seq[k]
            x = px[p]
            y = py[p]
            mask = 0
            for j in range(8):
                if label[p + offs[j]] >= 0:
                    mask |= 1 << j
            if mask == 0:
                r = ncreated
                ncreated += 1
                cpar[r] = r
                _new_component(rec, r, x, y)
                label[p] = r
            else:
                nb = p + offs[tables[mask, 1]]
                r = _find(cpar, label[nb])
                label[nb] = r
                if rec[r, _AREA] == best_area:
                    nbest -= 1
                for g in range(2, tables[mask, 0] + 1):
                    nb = p + offs[tables[mask, g]]
                    rn = _find(cpar, label[nb])
                    label[nb] = rn
                    if rn == r:
                        continue
                    if rec[rn, _AREA] == best_area:
                        nbest -= 1
                    area = rec[r, _AREA] + rec[rn, _AREA]
                    r, _, _ = _union(cpar, rec, r, rn)
                    rec[r, _AREA] = area
                label[p] = r
                _grow(rec, r, x, y)
                rec[r, _AREA] += tables[mask, 5]
            a = rec[r, _AREA]
            if a > best_area:
                best_area = a
                nbest = 1
                holder = r
            elif a == best_area:
                nbest += 1
                holder = r
        if nbest == 0:
            out[t] = empty
        elif nbest == 1:
            out[t] = _iou_best(rec[holder, _X0], rec[holder, _Y0], min(rec[holder, _X1] + 1, w - 1),
                               min(rec[holder, _Y1] + 1, h - 1), gt)
    return out


# Small helpers are inlined at numba IR level: a call between compiled functions costs atomic
# reference-count updates for every array argument, more than these helpers' own work.
_INLINED = ("_find", "_mark", "_new_component", "_grow", "_union", "_span_max", "_close_run")
_KERNEL_NAMES = _INLINED + ("_iou_best", "_span_read", "_sort_pixels", "_foreground_pass", "_hole_pass", "_solid_flood",
                            "_multi_levels", "_single_levels")
_compiled = False
_TABLES = None  # set by _kernels()


def _kernels() -> None:
    """Replace the kernels by their compiled versions (once per process)."""
    global _compiled, _TABLES
    if _compiled:
        return
    if _TABLES is None:
        _TABLES = _neighbour_tables()
    try:
        compile_kernels(globals(), _KERNEL_NAMES, _INLINED)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "harness.evaluation.component_tree needs numba for the box metrics: pip install numba"
        ) from exc
    _compiled = True


# ----------------------------------------------------------------------------- Python API

_local = threading.local()


def _workspace(h: int, w: int) -> tuple[np.ndarray, ...]:
    """Work arrays of the kernels for an ``h x w`` map, kept per thread for the last shape seen
    (fresh memory costs a page fault per 4 KiB on first touch, as much as a pass itself):
    ``(label, cpar, rec, dirty, cval, tables, px, py, qp, ep, nxt, seq)``."""
    ws = getattr(_local, "ws", None)
    if ws is None or ws[0] != (h, w):
        n = h * w  # at most one component per pixel
        npad = (h + 2) * (w + 2)
        yy, xx = np.divmod(np.arange(npad, dtype=np.int32), np.int32(w + 2))
        arrays = (
            np.empty(npad, np.int32),  # label: component id of each added pixel
            np.empty(n, np.int32),  # cpar: union-find forest over component ids
            np.empty((n, 8), np.int32),  # rec: size, box, stamp, run start, area of each component
            np.empty(n, np.int32),  # dirty: components to evaluate at the end of a level
            np.empty(n, np.float64),  # cval: IoU of each component's open run
            _TABLES,  # per 8-neighbour mask: groups to merge, area change
            xx - 1,  # px, py: pixel coordinates of each padded index
            yy - 1,
            np.empty(npad, np.uint8),  # qp: q in the padded grid
            np.empty(npad, np.int16),  # ep: solid level E of each pixel (flood)
            np.empty(npad, np.int32),  # nxt: flood bucket lists
            np.empty(n, np.int32),  # seq: pixels by increasing E (flood); hole death lists
        )
        ws = _local.ws = ((h, w), arrays)
    return ws[1]


def _check_q_gt(q: Any, gt: Any) -> tuple[np.ndarray, np.ndarray]:
    q = np.asarray(q)
    if q.dtype != np.uint8 or q.ndim != 2 or q.size == 0:
        raise ValueError(f"level_best_iou: q must be a non-empty 2-D uint8 array, got {q.dtype} {q.shape}")
    gt = np.asarray(gt)
    if gt.ndim != 2 or gt.shape[1] != 4 or gt.shape[0] == 0 or gt.dtype.kind not in "iu":
        raise ValueError(f"level_best_iou: gt must be integer boxes of shape (m >= 1, 4), got {gt.dtype} {gt.shape}")
    return np.ascontiguousarray(q), np.ascontiguousarray(gt, dtype=np.int64)


def _single_contour_box(binary: np.ndarray) -> np.ndarray:
    """The reference's single-contour box of one 0/255 binarization (at least one contour):
    the contour of largest ``cv2.contourArea`` (first of equals), its quirked boundingRect.

    Areas are half the absolute shoelace sum of the integer contour points, the sum OpenCV's
    contourArea accumulates exactly in double precision; computed here in int64 for all
    contours at once (a noisy binarization has thousands)."""
    import cv2

    height, width = binary.shape
    contours = cv2.findContours(binary, mode=cv2.RETR_TREE, method=cv2.CHAIN_APPROX_SIMPLE)[-2]
    n = len(contours)
    lengths = np.fromiter(map(len, contours), dtype=np.int64, count=n)
    starts = np.zeros(n, dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    pts = np.concatenate(contours).reshape(-1, 2).astype(np.int64)
    x, y = pts[:, 0], pts[:, 1]
    prev = np.arange(-1, len(pts) - 1)
    prev[starts] = starts + lengths - 1  # a contour is closed: its first point follows its last
    twice_area = np.abs(np.add.reduceat(x[prev] * y - y[prev] * x, starts))
    k = int(np.argmax(twice_area))
    c = pts[starts[k] : starts[k] + lengths[k]]
    return np.array([
        c[:, 0].min(),
        c[:, 1].min(),
        min(int(c[:, 0].max()) + 1, width - 1),
        min(int(c[:, 1].max()) + 1, height - 1),
    ], dtype=np.int64)


def _single_levels_full(q: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Single-contour levels, with OpenCV for the levels where the largest area is shared;
    also returns the mask of those levels."""
    import cv2

    out = _single_levels(q, gt, *_workspace(*q.shape))
    need = out < 0.0
    if need.any():
        counts = np.bincount(q.ravel(), minlength=_NUM_LEVELS)
        for t in np.flatnonzero(need)[::-1]:  # descending: a level equal to t + 1 reuses it
            t = int(t)
            if counts[t + 1] == 0 and need[t + 1]:
                out[t] = out[t + 1]  # no pixel has the value t + 1: same binarization
                continue
            _, binary = cv2.threshold(q, t, 255, cv2.THRESH_BINARY)
            b = _single_contour_box(binary)
            out[t] = _iou_best(int(b[0]), int(b[1]), int(b[2]), int(b[3]), gt)
    return out, need


def level_best_iou(q: np.ndarray, gt: np.ndarray, multi_contour: bool) -> np.ndarray:
    """Best IoU of the reference's boxes at every binarization level of a quantized map.

    ``q``: uint8 ``(H, W)`` quantized map (``uint8(floor(s * 255))``); ``gt``: integer ``(m, 4)``
    inclusive GT boxes, ``m >= 1``, already validated (inside the image). Returns float64
    ``(256,)``: entry ``t`` is the max over (boxes of the binarization ``q > t``) x (GT boxes) of
    the inclusive IoU, exactly (``==``) what the reference loop gives for any threshold whose
    level ``int(tau * max(q))`` is ``t``. Entries ``t >= max(q)`` (nothing survives) hold the
    IoU of the ``[0, 0, 0, 0]`` box. ``multi_contour=True`` uses every contour (holes
    included, MaxBoxAccV2), ``False`` the contour of largest area (MaxBoxAcc).
    """
    q, gt = _check_q_gt(q, gt)
    _kernels()
    if multi_contour:
        return _multi_levels(q, gt, *_workspace(*q.shape))
    return _single_levels_full(q, gt)[0]


def count_fallback_levels(q: np.ndarray) -> tuple[int, int]:
    """Single-contour diagnostics: ``(levels traced with OpenCV, levels with any foreground)``,
    counting distinct binarizations only (level t is the same binarization as t + 1 when no
    pixel equals t + 1). A level is traced when two or more contours share the largest area."""
    q, _ = _check_q_gt(q, np.zeros((1, 4), np.int64))
    _kernels()
    ws = _workspace(*q.shape)
    need = _single_levels(q, np.zeros((1, 4), np.int64), *ws) < 0.0
    counts = np.bincount(q.ravel(), minlength=_NUM_LEVELS)
    distinct = np.zeros(_NUM_LEVELS, bool)
    distinct[:-1] = counts[1:] > 0  # level t differs from level t + 1 iff some pixel equals t + 1
    has_fg = np.arange(_NUM_LEVELS) < int(q.max())
    return int((need & distinct).sum()), int((has_fg & distinct).sum())


def threshold_cuts(thresholds: np.ndarray, peak: int) -> np.ndarray:
    """The reference's binarization cut ``int(tau * max(q))`` of each threshold (float64
    product, truncation toward zero), clipped to ``[-1, 255]``: ``cv2.threshold`` keeps every
    pixel for a negative cut and none from 255 on, so clipping changes no binarization and
    keeps the cast in range. A cut ``t >= 0`` reads entry ``t`` of :func:`level_best_iou`."""
    return np.trunc(np.clip(np.asarray(thresholds, dtype=np.float64) * float(peak), -1.0, 255.0)).astype(np.int64)


def best_iou_at_thresholds(levels: np.ndarray, q: np.ndarray, gt: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Best IoU per threshold, ``(T,)``, from the 256 ``levels`` of :func:`level_best_iou` for the
    same ``q`` and ``gt``. Thresholds whose cut is negative (``tau < 0`` with ``max(q) > 0``)
    keep every pixel: one component, no hole, box ``[0, 0, W - 1, H - 1]`` in both modes."""
    cut = threshold_cuts(thresholds, int(np.max(q)))
    out = np.asarray(levels)[np.maximum(cut, 0)]
    neg = cut < 0
    if neg.any():
        _kernels()
        h, w = np.shape(q)
        out[neg] = _iou_best(0, 0, w - 1, h - 1, np.ascontiguousarray(gt, dtype=np.int64))
    return out
