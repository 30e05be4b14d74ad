"""Gaussian-affinity filter behind the dense CRF losses of F-CAM, TCAM and CoLo-CAM.

For features ``f_i`` in R^d (already divided by their bandwidths) and values ``P`` (N, K),

    (W P)_i = sum_j exp(-||f_i - f_j||^2 / 2) P_j        (self term included, no normalization)

for each of B independent groups (an image, or all pixels of a group of frames). Two kernels
are in use (:func:`crf_features`): 5-D per image, ``(x, y) / sigma_xy`` and ``(r, g, b) /
sigma_rgb`` (sigma_xy = 100 px, sigma_rgb = 15 on the 0-255 scale), and CoLo-CAM's colour-only
3-D kernel over all pixels of the frames of a shot. The losses are ``-sum_k P_k^T W P_k``
(:func:`dense_crf_loss`).

Three methods:

* ``"exact"``: the dense sum, chunked over rows: ``exp(q_i . k_j)`` with ``q_i = [f_i,
  -|f_i|^2/2, 1]`` and ``k_j = [f_j, 1, -|f_j|^2/2]`` (centred features), then a matmul with P.
  O(N^2) work, O(N) memory beyond a bounded chunk: the reference. Float32 is within 3e-6
  (relative Frobenius) of float64 on a 128x128 image; logits are floored at -80, which keeps
  float32 out of denormals (2.5x faster on CPU).
* ``"grid"``: a bilateral grid, O(N + grid nodes): splat the values onto a regular grid over
  feature space, blur with a separable Gaussian along each grid axis, slice back with the
  splat's weights. Within 2% of exact on every case of ``tests/test_crf_accuracy_grid.py``
  (12 skimage images including grey, dark and flat-colour ones, 64-224 px, both kernels,
  smooth and CAM-like P; worst 0.8% at the default cell 0.6). What makes it accurate:

  - *quadratic B-spline splat and slice* (3 nodes per axis, weights ``(1/2 - t)^2 / 2``,
    ``3/4 - t^2``, ``(1/2 + t)^2 / 2`` for ``t`` in [-1/2, 1/2) from the nearest node): they
    keep each point's position (mean) and add a variance of exactly 1/4 cell^2 wherever the
    point falls, so the blur's variance ``(1/c)^2 - 1/2`` (cells^2, cell ``c`` in sigma units)
    compensates them exactly. A multilinear splat adds ``t (1 - t)``: 0 on a node, 1/4
    mid-cell. On grey images (r = g = b) and flat colours many pixels share one sub-cell
    position, and the error no longer averages out (the linear grid reached 2.5-5% on camera,
    brick, hubble_deep_field and logo);
  - the blur taps reach 4 sigma_g and are scaled to the target Gaussian's integral
    ``sqrt(2 pi) / c`` per axis (3 sigma_g left a 0.3-0.5% error floor at fine cells);
  - *low-rank smooth axes*: an axis whose range is short in sigma units (the spatial axes of
    the 5-D kernel: 224 px / sigma_xy 100 = 2.2 sigma) is not gridded. Its Gaussian becomes a
    rank-r expansion ``exp(-(x - y)^2 / 2) ~= sum_r psi_r(x) psi_r(y)`` (eigenvectors of the
    kernel on 16 Chebyshev nodes over the group's range, interpolated with Chebyshev
    polynomials); products of the smooth axes' terms are kept while their eigenvalue ratio is
    >= ``lowrank_tol`` (1e-2: Q = 8 products at 224 px, 3 at 64 px), and the grid over the
    other axes filters the Q products ``psi_q * P`` at once (Q * K channels). ``smooth_axes=()``
    gives the plain grid.

  The grid operator is ``S B S^T`` (``S``: slice weights, ``B``: symmetric blur; with smooth
  axes a sum of ``D_q S B S^T D_q``), symmetric like W, so its exact gradient is the same
  filter applied to the incoming gradient.
* ``"lattice"``: the classic permutohedral lattice of Adams, Baek and Davis (2010), our own
  implementation in :mod:`harness.kernels.lattice`, the operator the authors' code uses. It is
  not the Gaussian sum: its W.P is about 0.5-0.9x exact with a few percent shape error (see
  that module), which is why the losses offer it as a *scale* (``losses.crf.scale=lattice``:
  a weight from the authors' code then means what it meant there), never as an approximation.

``method="auto"`` (the losses' default) picks the fastest method within 2% of exact, from the
crossovers measured with ``benchmarks/crf_speed.py --crossover``: exact while a group has at
most ``AUTO_EXACT_POINTS`` points (400: a 20x20 frame), the grid above. When the grid would need
more than ``budget`` bytes (a small sigma: the grid grows as (range / sigma)^3, 1 GiB per group at
sigma_rgb = 1), auto takes exact while ``B * N^2 <= AUTO_EXACT_FALLBACK_PAIRS``, else the lattice
(memory grows with the points, not with 1/sigma^3) and warns once that its scale differs. An
explicit method that cannot fit its budget raises :class:`HarnessError` naming what it needs.

Grid backends (``backend=``): ``"cpu"`` (numba kernels in ``_crf_numba.py``, on a small thread
pool; CPU tensors), ``"triton"`` (``_crf_triton.py``: splat with atomic adds and slice in
Triton, blur as batched matmuls; CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``),
``"torch"`` (``index_add_`` / gather / matmul; any device, the readable reference of the other
two). ``"auto"``: triton on CUDA when Triton imports, cpu on CPU when numba imports, torch
otherwise. The lattice has the same three backends. Triton and numba are imported only when
their path runs.

Groups: features ``(B, N, d)`` hold B independent groups of N points each; the frames of a shot
are one group (concatenate their pixels: the colour-only kernel ignores layout). Groups of
unequal size can be padded with points whose values are 0 and whose features copy a real point
of the group (a zero value adds nothing to anyone; what the filter returns at a pad point is
meaningless). The grid's extent and which axes are smooth are chosen from all groups of a call;
each group gets its own grid, placed at its own minimum, and its own smooth-axis basis, so a
group gives the same result in a batch as alone (up to float rounding) unless the choice of
smooth axes differs between the two calls (only when groups' feature ranges differ widely).

Checked input: NaN or inf in the features or the values raise :class:`HarnessError`, and so do
images outside the 0-255 scale the sigmas are defined on (in [0, 1], or normalized with a mean
and std) in :func:`crf_features`. Results have the values' dtype (float32 or float64); grid
coordinates are computed from the features in float32 (the Triton kernels also form the
weights in float32).
"""
from __future__ import annotations

import functools
import itertools
import math
import warnings
from dataclasses import dataclass, field
from typing import Literal, Sequence

import numpy as np
import torch

from harness.errors import HarnessError
from harness.kernels._backends import BACKENDS as _BACKENDS, TritonUnavailableError, import_kernels, resolve_backend

__all__ = ["gaussian_filter", "crf_features", "dense_crf_loss", "TritonUnavailableError", "triton_available",
           "numba_available"]

Method = Literal["auto", "exact", "grid", "lattice"]
Backend = Literal["auto", "torch", "triton", "cpu"]
_METHODS = ("auto", "exact", "grid", "lattice")

MAX_DIM = 5
DEFAULT_CELL = 0.6  # grid cell in sigma units (see the module docstring for the error it gives)
GRID_MARGIN = 1.0  # a group's smallest feature sits this many cells past the grid's first node
SPLAT_VARIANCE = 0.25  # cells^2 a quadratic B-spline splat (or slice) adds, wherever the point is
BLUR_TRUNCATE = 4.0  # blur taps reach this many sigma_g (3 leaves a 0.3-0.5% error floor at fine cells)
DEFAULT_BUDGET = 512 * 2 ** 20  # bytes: no method allocates more than this for its working memory
# method="auto" (measured with benchmarks/crf_speed.py --crossover, see the module docstring):
# exact while a group has at most this many points: the grid's fixed cost (plan, basis, dispatch:
# 1.5-3 ms colour, ~10 ms 5-D) makes exact faster below. Measured (1 thread, loaded machine):
# exact/grid ms at 400 points 2.7/11.5 colour, 1.9/11.7 5-D; at 576 11.7/2.7 colour, 5-D B=8 38.5/35.2
AUTO_EXACT_POINTS = 400
AUTO_EXACT_FALLBACK_PAIRS = 1 << 30  # grid over budget: exact while B * N^2 stays below this
SMOOTH_RANGE = 4.0  # axes whose range (sigma units) is at most this get the low-rank expansion
LOWRANK_TOL = 1e-2  # keep products of smooth-axis terms whose eigenvalue ratio is >= this
MAX_LOWRANK_TERMS = 32  # at most this many products (smooth axes are added while it holds)
_CHEB_NODES = 16
_EXACT_CHUNK_ELEMENTS = 1 << 23  # (rows x N) logits per chunk of the exact path (32 MiB fp32)
_GRID_COPIES = 3  # a group's grid is held about this many times at once (grid, blur buffer, a
# second thread's private grid)


# ----------------------------------------------------------------------------- checks


def _check(features: torch.Tensor, values: torch.Tensor, what: str = "values") -> None:
    for name, t in (("features", features), (what, values)):
        if not isinstance(t, torch.Tensor):
            raise HarnessError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in (torch.float32, torch.float64):
            raise HarnessError(f"{name} must be float32 or float64, got {t.dtype}"
                               + (" (cast with .float())" if t.is_floating_point() else ""))
        if t.dim() != 3:
            raise HarnessError(f"{name} must be 3-D ({'B, N, d' if name == 'features' else 'B, N, K'}), "
                               f"got shape {tuple(t.shape)}")
    B, N, d = features.shape
    if not 1 <= d <= MAX_DIM:
        raise HarnessError(f"features have d={d} dimensions per point; the filter supports 1 to {MAX_DIM} "
                           f"(5-D: x, y, r, g, b)")
    if values.shape[:2] != features.shape[:2]:
        raise HarnessError(f"{what} of shape {tuple(values.shape)} do not match features {tuple(features.shape)}: "
                           f"expected ({B}, {N}, K)")
    if values.device != features.device:
        raise HarnessError(f"features are on {features.device} but {what} on {values.device}")


def _check_cell(cell, d: int) -> tuple[float, ...]:
    try:
        cells = (float(cell),) * d if np.ndim(cell) == 0 else tuple(float(c) for c in cell)
    except (TypeError, ValueError):
        raise HarnessError(f"cell must be a number or one number per feature dimension, got {cell!r}") from None
    if len(cells) != d:
        raise HarnessError(f"cell has {len(cells)} entries for {d} feature dimensions")
    for c in cells:
        # the blur's variance (1/c)^2 - 1/2 must stay positive, with some room
        if not 0.05 <= c <= 1.2:
            raise HarnessError(f"cell={c} (sigma units) is out of range: use 0.05 to 1.2 (default {DEFAULT_CELL})")
    return cells


# ----------------------------------------------------------------------------- exact path


@dataclass
class _ExactPlan:
    features: torch.Tensor  # (B, N, d) in the values' dtype

    def apply(self, values: torch.Tensor, rows: slice | torch.Tensor | None = None) -> torch.Tensor:
        """(B, N, C) -> (B, N, C), or only the rows ``rows`` (a slice or an index tensor) of the
        result: (B, R, C) (each row still sums over all N points)."""
        f = self.features.to(values.dtype)
        f = f - f.mean(dim=1, keepdim=True)  # smaller |f|^2: less cancellation in the logits
        sq = -0.5 * (f * f).sum(-1, keepdim=True)
        one = torch.ones_like(sq)
        q = torch.cat([f, sq, one], -1)  # q_i . k_j = -|f_i - f_j|^2 / 2
        k = torch.cat([f, one, sq], -1)
        B, N, _ = f.shape
        if rows is not None:
            q = q[:, rows]
        R = q.shape[1]
        out = values.new_empty((B, R, values.shape[2]))
        step = max(1, _EXACT_CHUNK_ELEMENTS // max(N, 1))
        # exp below the floor is < 1e-34 of the self term: flushing it to exp(floor) keeps float32
        # out of denormals, which made the CPU path 2.5x slower
        floor = -80.0 if values.dtype == torch.float32 else -700.0
        with _ieee_fp32(values.device):
            for b in range(B):
                kb, vb = k[b], values[b]
                for i in range(0, R, step):
                    logits = q[b, i:i + step] @ kb.T
                    out[b, i:i + step] = logits.clamp_(floor, 0.0).exp_() @ vb
        return out


class _ieee_fp32:
    """Plain float32 matmuls on CUDA inside (TF32 would cost ~1e-3 relative error)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __enter__(self):
        if self.cuda:
            self.saved = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = False

    def __exit__(self, *exc):
        if self.cuda:
            torch.backends.cuda.matmul.allow_tf32 = self.saved


# ----------------------------------------------------------------------------- grid geometry


@functools.lru_cache(maxsize=None)
def _cheb() -> tuple[np.ndarray, np.ndarray]:
    """Chebyshev nodes of the first kind on [-1, 1] and the inverse of their Vandermonde matrix
    ``V[m, j] = T_j(t_m)`` (so node values ``y`` interpolate as ``T(s) @ (Vinv @ y)``)."""
    n = _CHEB_NODES
    t = np.cos(np.pi * (np.arange(n) + 0.5) / n)
    V = np.cos(np.outer(np.arccos(t), np.arange(n)))
    return t, np.linalg.inv(V)


def _axis_expansion(lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending, relative to the first) and Chebyshev coefficients (n, n) of the
    1-D Gaussian on [lo, hi]: ``exp(-(x - y)^2 / 2) ~= sum_r psi_r(x) psi_r(y)`` with
    ``psi_r(x) = sum_j coef[j, r] T_j(s(x))``, ``s = 2 (x - lo) / L - 1``."""
    t, Vinv = _cheb()
    L = max(hi - lo, 1e-6)
    x = lo + (t + 1) * L / 2
    Kc = np.exp(-0.5 * (x[:, None] - x[None]) ** 2)
    lam, U = np.linalg.eigh(Kc)
    lam, U = lam[::-1].clip(min=0.0), U[:, ::-1]
    coef = Vinv @ (U * np.sqrt(lam))
    return lam / lam[0], coef


def _lowrank_terms(los: np.ndarray, his: np.ndarray, axes: Sequence[int], tol: float):
    """Per group: the kept products of the smooth axes' terms, as (ranks per axis, coefs).

    Returns ``terms[b] = list of tuples (r_a for a in axes)`` and ``coefs[b][a]`` (n, n)."""
    terms, coefs = [], []
    for b in range(los.shape[0]):
        rel, cf = [], []
        for a in axes:
            lam, coef = _axis_expansion(float(los[b, a]), float(his[b, a]))
            rel.append(lam[lam >= tol])  # a product is at most each of its factors
            cf.append(coef)
        kept = []
        for combo in itertools.product(*(range(len(r)) for r in rel)):
            p = 1.0
            for r, lam in zip(combo, rel):
                p *= lam[r]
                if p < tol:
                    break
            if p >= tol:
                kept.append(combo)
        terms.append(kept)
        coefs.append(cf)
    return terms, coefs


@dataclass
class _GridPlan:
    """Everything the grid filter needs, fixed by the features (built once, used by the forward
    and the backward)."""

    backend: str
    grid_axes: tuple[int, ...]
    smooth_axes: tuple[int, ...]
    basis: torch.Tensor | None = None  # (B, N, Q): products of the smooth axes' terms (float64 for float64 features)
    gfeat: torch.Tensor | None = None  # (B, N, dg) float32, contiguous: the gridded features
    lo: torch.Tensor | None = None  # (B, dg) float32: each group's grid origin
    inv_cell: torch.Tensor | None = None  # (dg,) float32
    dims: tuple[int, ...] = ()  # grid nodes per axis (the largest extent of any group)
    taps: list = field(default_factory=list)  # per grid axis: (2R+1,) float64, scale folded in
    budget: int = DEFAULT_BUDGET  # bytes of working memory per batch of groups

    @property
    def strides(self) -> tuple[int, ...]:
        s, out = 1, []
        for n in reversed(self.dims):
            out.append(s)
            s *= n
        return tuple(reversed(out))

    @property
    def cells(self) -> int:
        return int(np.prod(self.dims)) if self.dims else 0

    def group_bytes(self, K: int, itemsize: int) -> int:
        """Working memory of one group's filter with K value channels (grid copies and the
        basis-expanded values)."""
        Q = self.basis.shape[2] if self.basis is not None else 1
        N = self.basis.shape[1] if self.basis is not None else self.gfeat.shape[1]
        return (_GRID_COPIES * self.cells + (3 * N if self.basis is not None else 0)) * Q * K * itemsize

    def apply(self, values: torch.Tensor) -> torch.Tensor:
        """(B, N, K) -> (B, N, K): the approximate W applied to each group's values."""
        B, N, K = values.shape
        if not self.grid_axes:  # every axis low-rank: W = Psi Psi^T
            psi = self.basis.to(values.dtype)
            return psi @ (psi.transpose(1, 2) @ values)
        step = max(1, self.budget // max(1, self.group_bytes(K, values.element_size())))  # groups per batch
        if step >= B:
            return self._apply_groups(slice(0, B), values)
        return torch.cat([self._apply_groups(slice(b, b + step), values[b:b + step]) for b in range(0, B, step)])

    def _apply_groups(self, groups: slice, values: torch.Tensor) -> torch.Tensor:
        feat, lo = self.gfeat[groups], self.lo[groups]
        basis = self.basis[groups] if self.basis is not None else None
        values = values.contiguous()
        K = values.shape[2]
        if self.backend == "cpu":  # the basis products are formed and contracted inside the kernels
            from harness.kernels import _crf_numba as nb

            dims = np.asarray(self.dims, np.int64)
            args = (feat.numpy(), lo.numpy(), self.inv_cell.numpy(), GRID_MARGIN, dims,
                    np.asarray(self.strides, np.int64))
            vals = values.detach().numpy()
            bas = None if basis is None else basis.to(values.dtype).numpy()
            grid = nb.splat(*args, vals, bas)
            C = K * (1 if bas is None else bas.shape[2])
            nb.blur(grid, dims, C, [t.astype(grid.dtype) for t in self.taps])
            return torch.from_numpy(nb.slice_(*args, grid, K, bas))
        B, N = values.shape[:2]
        if basis is not None:  # channel q * K + k holds psi_q * P_k
            psi = basis.to(values.dtype)
            values = (psi[:, :, :, None] * values[:, :, None, :]).reshape(B, N, -1)
        if self.backend == "triton":
            mod = _import_triton()[0]
            grid = mod.splat(feat, lo, self.inv_cell, GRID_MARGIN, self.dims, self.strides, values)
            grid = _blur_torch(grid, self.dims, self._toeplitz(values))
            out = mod.slice_(feat, lo, self.inv_cell, GRID_MARGIN, self.dims, self.strides, grid)
        else:
            base, weights = _coords_torch(feat, lo, self.inv_cell, self.dims, self.strides, values.dtype)
            grid = _splat_torch(base, weights, self.strides, self.cells, values)
            grid = _blur_torch(grid, self.dims, self._toeplitz(values))
            out = _slice_torch(base, weights, self.strides, grid)
        if basis is not None:
            out = (out.view(B, N, -1, K) * psi[:, :, :, None]).sum(2)
        return out

    def _toeplitz(self, like: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for n, tp in zip(self.dims, self.taps):
            R = (len(tp) - 1) // 2
            T = np.zeros((n, n))
            for t in range(-R, R + 1):
                T += np.diag(np.full(n - abs(t), tp[R + t]), t)
            out.append(torch.as_tensor(T, dtype=like.dtype, device=like.device))
        return out


def _make_grid_plan(features: torch.Tensor, backend: str, cell, smooth, lowrank_tol: float) -> _GridPlan:
    B, N, d = features.shape
    cells = _check_cell(cell, d)
    feat = features.detach().float().contiguous()
    if backend == "cpu":  # torch's amin over the middle axis is slow on CPU (5 ms for 4 frames)
        from harness.kernels import _crf_numba as nb

        lo_np, hi_np = nb.minmax(feat.numpy())
        lo_all, hi_all = torch.from_numpy(lo_np), torch.from_numpy(hi_np)
    else:
        lo_all, hi_all = feat.amin(dim=1), feat.amax(dim=1)  # (B, d); NaN propagates
    los, his = lo_all.double().cpu().numpy(), hi_all.double().cpu().numpy()
    if not (np.isfinite(los).all() and np.isfinite(his).all()):
        raise HarnessError("features contain NaN or inf (check the images and the sigmas)")
    ranges = (his - los).max(axis=0)  # (d,)

    # smooth (low-rank) axes: shortest first, while the products stay few
    smooth_axes: tuple[int, ...] = ()
    terms = coefs = None
    if isinstance(smooth, str):
        if smooth != "auto":
            raise HarnessError(f"smooth_axes={smooth!r}: use 'auto', () or a tuple of feature axes")
        candidates = sorted((a for a in range(d) if ranges[a] <= SMOOTH_RANGE), key=lambda a: ranges[a])
    else:
        candidates = [int(a) for a in smooth]
        if any(not 0 <= a < d for a in candidates) or len(set(candidates)) != len(candidates):
            raise HarnessError(f"smooth_axes={smooth!r}: give distinct feature axes in 0..{d - 1}, 'auto' or ()")
    for a in candidates:
        trial = (*smooth_axes, a)
        t, c = _lowrank_terms(los, his, trial, lowrank_tol)
        if isinstance(smooth, str) and max(len(x) for x in t) > MAX_LOWRANK_TERMS:
            break
        smooth_axes, terms, coefs = trial, t, c
    grid_axes = tuple(a for a in range(d) if a not in smooth_axes)

    plan = _GridPlan(backend=backend, grid_axes=grid_axes, smooth_axes=smooth_axes)
    if smooth_axes:
        plan.basis = _lowrank_basis(feat, lo_all, hi_all, smooth_axes, terms, coefs, backend,
                                    torch.float64 if features.dtype == torch.float64 else torch.float32)
    if grid_axes:
        ga = list(grid_axes)
        every = ga == list(range(d))
        run = ga == list(range(ga[0], ga[-1] + 1))  # e.g. (2, 3, 4): a strided copy, not a gather
        plan.gfeat = feat if every else (feat[:, :, ga[0]:ga[-1] + 1] if run else feat[:, :, ga]).contiguous()
        plan.lo = lo_all if every else lo_all[:, ga].contiguous()
        plan.inv_cell = torch.tensor([1.0 / cells[a] for a in ga], dtype=torch.float32, device=feat.device)
        # the extent: the largest grid coordinate of any group, in float32 as the kernels compute it
        umax = (hi_all[:, ga] - plan.lo) * plan.inv_cell + GRID_MARGIN
        plan.dims = tuple(int(math.floor(u + 0.5)) + 2 for u in umax.amax(dim=0).tolist())
        plan.taps = [_blur_taps(cells[a], n) for a, n in zip(ga, plan.dims)]
    return plan


def _blur_taps(c: float, n: int) -> np.ndarray:
    """Taps of the blur along a grid axis of n nodes with cell c (sigma units): a Gaussian of
    variance (1/c)^2 - 1/2 cells^2 (the B-spline splat and slice add 1/4 each), normalized
    to sum 1 over +-BLUR_TRUNCATE sigma_g, truncated to the grid (|t| <= n - 1), and scaled by
    the target Gaussian's integral sqrt(2 pi) / c."""
    var = 1.0 / c ** 2 - 2.0 * SPLAT_VARIANCE
    R = int(math.ceil(BLUR_TRUNCATE * math.sqrt(var)))
    t = np.arange(-R, R + 1)
    g = np.exp(-0.5 * t ** 2 / var)
    g *= math.sqrt(2 * math.pi) / c / g.sum()
    r = min(R, n - 1)
    return g[R - r:R + r + 1]


def _lowrank_basis(feat, lo_all, hi_all, axes, terms, coefs, backend, dtype) -> torch.Tensor:
    """(B, N, Q) in ``dtype``: per group, the kept products of the smooth axes' functions, zero
    columns past a group's own count. psi_r(x) = sum_m coef[m, r] T_m(s), s in [-1, 1]."""
    B, N, _ = feat.shape
    Q = max(len(t) for t in terms)
    S = len(axes)
    n = _CHEB_NODES
    dev = feat.device
    # term q of group b is the product over axes j of psi_{j, index[j, b, q]}; padding: keep = 0
    index = np.zeros((S, B, Q), np.int64)
    keep = np.zeros((B, Q), np.float32)
    for b in range(B):
        for q, combo in enumerate(terms[b]):
            index[:, b, q] = combo
            keep[b, q] = 1.0
    ax = list(axes)
    lo = lo_all[:, ax].double()
    scale = 2.0 / torch.clamp(hi_all[:, ax].double() - lo, min=1e-6)
    coef = np.stack([np.stack(coefs[b]) for b in range(B)])  # (B, S, n, n)
    if backend == "cpu":  # one pass in numba (torch's many small parallel ops stall on a busy CPU)
        from harness.kernels import _crf_numba as nb

        out_dtype = np.float64 if dtype == torch.float64 else np.float32
        return torch.from_numpy(nb.lowrank_basis(feat.numpy(), np.asarray(ax, np.int64), lo.numpy(), scale.numpy(),
                                                 coef, index, keep, out_dtype))
    coef_t = torch.as_tensor(coef, dtype=dtype, device=dev)
    f = feat.to(dtype)
    basis = torch.as_tensor(keep, dtype=dtype, device=dev)[:, None, :].expand(B, N, Q)
    for j, a in enumerate(ax):
        s = ((f[:, :, a] - lo[:, j:j + 1].to(dtype)) * scale[:, j:j + 1].to(dtype) - 1.0).clamp_(-1.0, 1.0)
        T = f.new_empty((n, B, N))  # Chebyshev polynomials T_m(s) by the recurrence
        T[0] = 1.0
        T[1] = s
        for m in range(2, n):
            torch.mul(s, T[m - 1], out=T[m])
            T[m].mul_(2.0).sub_(T[m - 2])
        psi = torch.bmm(T.permute(1, 2, 0), coef_t[:, j])  # (B, N, n): psi_r at the points
        idx = torch.as_tensor(index[j], device=dev)[:, None, :].expand(B, N, Q)
        basis = basis * torch.gather(psi, 2, idx)
    return basis.contiguous()


# ----------------------------------------------------------------------------- torch grid path


def _coords_torch(feat, lo, inv_cell, dims, strides, dtype=torch.float32):
    """First-node index (B, N) int64 and the quadratic B-spline weights (B, N, dg, 3) of nodes
    e, e + 1, e + 2 per axis, as the kernels compute them: coordinates in float32, weights in
    ``dtype`` (the values')."""
    u = (feat - lo[:, None, :]) * inv_cell + GRID_MARGIN
    hi = torch.tensor([n - 3 for n in dims], device=feat.device, dtype=torch.float32)
    e = torch.minimum(torch.clamp(torch.floor(u + 0.5) - 1.0, min=0.0), hi)
    t = (u - e - 1.0).to(dtype)
    weights = torch.stack([0.5 * (0.5 - t) * (0.5 - t), 0.75 - t * t, 0.5 * (0.5 + t) * (0.5 + t)], -1)
    st = torch.tensor(strides, device=feat.device, dtype=torch.int64)
    return (e.long() * st).sum(-1), weights


def _corners(base, weights, strides):
    """Yield (node index (B, N), weight (B, N)) for each of a point's 3^dg nodes."""
    dg = weights.shape[2]
    for steps in itertools.product((0, 1, 2), repeat=dg):
        idx = base + sum(s * k for s, k in zip(strides, steps))
        w = weights[:, :, 0, steps[0]]
        for a in range(1, dg):
            w = w * weights[:, :, a, steps[a]]
        yield idx, w


def _splat_torch(base, weights, strides, cells, values):
    B, N, C = values.shape
    grid = values.new_zeros((B * cells, C))
    offset = (torch.arange(B, device=values.device) * cells)[:, None]
    for idx, w in _corners(base, weights, strides):
        grid.index_add_(0, (idx + offset).reshape(-1), (w[..., None] * values).reshape(-1, C))
    return grid.view(B, cells, C)


def _blur_torch(grid, dims, toeplitz):
    """Separable blur along each axis as batched matmuls with (n, n) Toeplitz matrices."""
    B, cells, C = grid.shape
    shape = [B, *dims, C]
    g = grid.reshape(-1)
    with _ieee_fp32(grid.device):
        for a, T in enumerate(toeplitz):
            outer, n, inner = int(np.prod(shape[:a + 1])), shape[a + 1], int(np.prod(shape[a + 2:]))
            g = torch.matmul(T, g.view(outer, n, inner)).reshape(-1)
    return g.view(B, cells, C)


def _slice_torch(base, weights, strides, grid):
    B, cells, C = grid.shape
    flat = grid.reshape(B * cells, C)
    offset = (torch.arange(B, device=grid.device) * cells)[:, None]
    out = None
    for idx, w in _corners(base, weights, strides):
        term = w[..., None] * flat[(idx + offset)]
        out = term if out is None else out.add_(term)
    return out


# ----------------------------------------------------------------------------- backend choice


def _import_triton():
    return import_kernels("harness.kernels._crf_triton")


def _numba_available() -> bool:
    from harness.kernels import _crf_numba

    return _crf_numba.available()


def _resolve_backend(backend: str, device: torch.device) -> str:
    return resolve_backend(backend, device, _import_triton, lambda: _numba_available())


def _mib(n: int) -> str:
    return f"{n / 2 ** 20:,.0f} MiB"


def _check_budget(budget) -> int:
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not math.isfinite(budget) or budget < 2 ** 20:
        raise HarnessError(f"budget={budget!r}: give the working-memory limit in bytes, at least 1 MiB "
                           f"(default {DEFAULT_BUDGET} = {_mib(DEFAULT_BUDGET)})")
    return int(budget)


def _check_finite(t: torch.Tensor, what: str, plan) -> None:
    if getattr(plan, "backend", None) == "cpu" and t.is_contiguous():  # numba is in use anyway
        from harness.kernels import _crf_numba as nb

        finite = nb.all_finite(t.detach().numpy())
    else:
        finite = bool(torch.isfinite(t).all())
    if not finite:
        bad = int((~torch.isfinite(t)).sum())
        raise HarnessError(f"{what} contain NaN or inf ({bad} of {t.numel()} values): the CRF cannot use them; "
                           f"check the model's output (a diverged step, a log of 0) before the loss")


_lattice_fallback_warned = False


def _lattice_plan(features, backend, budget, why: str | None = None):
    from harness.kernels import lattice

    if why is not None:  # auto moved here from the grid: say so once, it changes the operator's scale
        global _lattice_fallback_warned
        if not _lattice_fallback_warned:
            _lattice_fallback_warned = True
            warnings.warn(f"dense CRF: {why}; using the permutohedral lattice instead, whose W.P is about 0.5-0.9x "
                          f"the exact one (pass a larger sigma, fewer points per group or a larger budget to stay "
                          f"within 2% of exact)", stacklevel=4)
    return lattice.make_lattice_plan(features, backend, budget_bytes=budget)


def _make_plan(features, values, method, cell, backend, smooth_axes, lowrank_tol, budget):
    """The filter for these features: exact, grid or lattice (``method="auto"``: see the module
    docstring). Checks the budget before anything big is allocated."""
    if method not in _METHODS:
        raise HarnessError(f"method={method!r}: use one of {_METHODS}")
    if backend not in _BACKENDS:
        raise HarnessError(f"backend={backend!r}: use one of {_BACKENDS}")
    budget = _check_budget(budget)
    B, N, _ = features.shape
    K, itemsize = values.shape[2], values.element_size()
    if method == "lattice":
        return _lattice_plan(features, backend, budget)
    if method == "exact" or (method == "auto" and N <= AUTO_EXACT_POINTS):
        if not bool(torch.isfinite(features).all()):
            raise HarnessError("features contain NaN or inf (check the images and the sigmas)")
        return _ExactPlan(features.detach())
    plan = _make_grid_plan(features, _resolve_backend(backend, features.device), cell, smooth_axes, lowrank_tol)
    plan.budget = budget
    if not plan.grid_axes or plan.group_bytes(K, itemsize) <= budget:
        return plan
    why = (f"one group's bilateral grid needs {_mib(plan.group_bytes(K, itemsize))} ({plan.cells:,} nodes of "
           f"{plan.dims}, cell {cell}) but the budget is {_mib(budget)}")
    if method == "grid":
        raise HarnessError(f"method='grid': {why}. The grid grows as (feature range / sigma)^3: use a larger sigma, "
                           f"method='auto' or 'lattice' (memory grows with the points), or a larger budget=")
    if B * N * N <= AUTO_EXACT_FALLBACK_PAIRS:
        return _ExactPlan(features.detach())
    return _lattice_plan(features, backend, budget, why)


# ----------------------------------------------------------------------------- autograd


class _FilterFn(torch.autograd.Function):
    """values -> W values for a fixed symmetric W (the plan): the backward is the same filter."""

    @staticmethod
    def forward(ctx, plan, values):
        ctx.plan = plan
        return plan.apply(values)

    @staticmethod
    def backward(ctx, grad):
        return None, _FilterFn.apply(ctx.plan, grad.contiguous())


class _CRFLossFn(torch.autograd.Function):
    """``-scale * sum(P * W P)`` with the gradient ``-2 scale W P`` from the forward's W P (for
    the lattice, which is symmetric only to about 1e-3, this is the gradient the authors' code
    and Tang et al.'s loss use).

    On the numba path the dot product and the gradient's scaling run in numba as well: on a
    busy 2-core machine each of torch's parallel elementwise ops can stall for milliseconds in
    its OpenMP barrier (measured), more than the filter itself."""

    @staticmethod
    def forward(ctx, plan, probs, scale):
        wp = plan.apply(probs)
        ctx.save_for_backward(wp)
        ctx.scale = scale
        ctx.numba = getattr(plan, "backend", None) == "cpu"
        if ctx.numba:
            from harness.kernels import _crf_numba as nb

            return probs.new_tensor(-scale * nb.dot(probs.detach().numpy(), wp.numpy()))
        return -scale * torch.dot(probs.reshape(-1), wp.reshape(-1))

    @staticmethod
    @torch.autograd.function.once_differentiable  # W P is a constant here: no Hessian-vector products
    def backward(ctx, grad):
        (wp,) = ctx.saved_tensors
        if ctx.numba:
            from harness.kernels import _crf_numba as nb

            return None, torch.from_numpy(nb.scaled(wp.numpy(), -2.0 * ctx.scale * float(grad))), None
        return None, wp * (grad * (-2.0 * ctx.scale)), None


# ----------------------------------------------------------------------------- public API


def gaussian_filter(features: torch.Tensor, values: torch.Tensor, *, method: Method = "auto",
                    cell: float | Sequence[float] = DEFAULT_CELL, backend: Backend = "auto",
                    smooth_axes: str | Sequence[int] = "auto", lowrank_tol: float = LOWRANK_TOL,
                    budget: int = DEFAULT_BUDGET) -> torch.Tensor:
    """``(W P)_i = sum_j exp(-|f_i - f_j|^2 / 2) P_j`` per group: (B, N, d), (B, N, K) -> (B, N, K).

    ``method``: ``"exact"``, ``"grid"`` (B-spline bilateral grid, at most 2% from exact at the
    default cell), ``"lattice"`` (the classic permutohedral lattice: the papers' operator, about
    0.5-0.9x exact), or ``"auto"`` (exact up to 400 points per group, the grid above, see the
    module docstring). ``cell``: the grid cell in sigma units, one for all axes or one per
    feature axis. ``backend`` (grid and lattice): ``"auto"``, ``"cpu"`` (numba), ``"triton"``
    (CUDA), ``"torch"``. ``budget``: bytes of working memory no method exceeds (auto moves on,
    an explicit method raises).
    ``smooth_axes``: feature axes handled by a low-rank expansion instead of the grid
    (``"auto"``: those spanning at most 4 sigma, e.g. the spatial axes of the 5-D kernel; ``()``
    for a plain grid over every axis); ``lowrank_tol``: the eigenvalue ratio below which
    products of their terms are dropped.

    Differentiable w.r.t. ``values`` (the backward applies the same symmetric filter); the
    features get no gradient.
    """
    _check(features, values)
    if values.numel() == 0:
        return values.new_zeros(values.shape)
    if not 0 < lowrank_tol < 1:
        raise HarnessError(f"lowrank_tol={lowrank_tol}: use a number in (0, 1), e.g. {LOWRANK_TOL}")
    plan = _make_plan(features, values, method, cell, backend, smooth_axes, lowrank_tol, budget)
    _check_finite(values, "values", plan)
    if not isinstance(plan, (_ExactPlan, _GridPlan)):  # the lattice: its own autograd, exact transpose
        return plan.apply(values)
    return _FilterFn.apply(plan, values.contiguous())


def crf_features(images: torch.Tensor, sigma_rgb: float = 15.0, sigma_xy: float | None = 100.0) -> torch.Tensor:
    """(B, 3, H, W) images in [0, 255] -> (B, H*W, 5) features ``(x, y) / sigma_xy, (r, g, b) /
    sigma_rgb`` (row-major pixels), or (B, H*W, 3) colour-only features with ``sigma_xy=None``.

    Frames of a CoLo-CAM group become one group with ``crf_features(frames, 15, None).reshape(1,
    -1, 3)``. The result is float32 (float64 for float64 images)."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise HarnessError(f"images must be a (B, 3, H, W) tensor in [0, 255], got {shape}")
    if not sigma_rgb > 0 or (sigma_xy is not None and not sigma_xy > 0):
        raise HarnessError(f"sigmas must be positive, got sigma_rgb={sigma_rgb}, sigma_xy={sigma_xy}")
    _check_image_range(images)
    dtype = torch.float64 if images.dtype == torch.float64 else torch.float32
    B, _, H, W = images.shape
    rgb = images.to(dtype).permute(0, 2, 3, 1).reshape(B, H * W, 3) / sigma_rgb
    if sigma_xy is None:
        return rgb.contiguous()
    yy, xx = torch.meshgrid(torch.arange(H, device=images.device, dtype=dtype),
                            torch.arange(W, device=images.device, dtype=dtype), indexing="ij")
    xy = torch.stack([xx.reshape(-1), yy.reshape(-1)], -1) / sigma_xy
    return torch.cat([xy.expand(B, H * W, 2), rgb], -1).contiguous()


def _check_image_range(images: torch.Tensor) -> None:
    """The sigmas are in 0-255 units: images in [0, 1], or normalized with a mean and std, would
    make every pixel look alike (sigma_rgb 15 would span the whole colour range)."""
    if images.numel() == 0:
        return
    lo, hi = (float(x) for x in torch.aminmax(images.detach()))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise HarnessError("images contain NaN or inf: the CRF needs the frames in [0, 255]")
    if lo < 0 and hi <= 4.0:
        raise HarnessError(f"images lie in [{lo:.3g}, {hi:.3g}]: they look normalized with a mean and std, but the "
                           f"CRF needs the frames in [0, 255] (sigma_rgb is in those units); pass the un-normalized "
                           f"frames")
    if lo < -64 or hi > 320:  # resampling may overshoot [0, 255] a little, not this much
        raise HarnessError(f"images lie in [{lo:.4g}, {hi:.4g}]: the CRF needs the frames in [0, 255]")
    if hi <= 1.0 and bool((images != images.round()).any()):
        raise HarnessError(f"images lie in [0, {hi:.3g}]: the CRF needs the frames in [0, 255] (sigma_rgb is in those "
                           f"units; in [0, 1] every pixel would look alike). Multiply by 255")


def dense_crf_loss(probs: torch.Tensor, features: torch.Tensor, weight: float = 1.0, *, normalize: bool = True,
                   method: Method = "auto", cell: float | Sequence[float] = DEFAULT_CELL, backend: Backend = "auto",
                   smooth_axes: str | Sequence[int] = "auto", lowrank_tol: float = LOWRANK_TOL,
                   budget: int = DEFAULT_BUDGET) -> torch.Tensor:
    """Tang et al.'s dense CRF loss ``-weight * sum_b sum_k P_bk^T W_b P_bk / B`` (scalar).

    ``probs`` (B, N, K) (or (B, K, H, W), taken as N = H*W row-major pixels), ``features``
    (B, N, d) from :func:`crf_features`. ``normalize=False`` drops the ``/ B`` (the reference
    divides by its batch size; CoLo-CAM's shot term has B = 1). One filter application in all:
    the backward reuses the forward's ``W P`` (``d loss / d P = -2 weight W P / B``: W is
    symmetric, exactly for both methods). The other keyword arguments are
    :func:`gaussian_filter`'s.
    """
    if isinstance(probs, torch.Tensor) and probs.dim() == 4:
        b, k, h, w = probs.shape
        probs = probs.permute(0, 2, 3, 1).reshape(b, h * w, k)
    _check(features, probs, "probs")
    if not 0 < lowrank_tol < 1:
        raise HarnessError(f"lowrank_tol={lowrank_tol}: use a number in (0, 1), e.g. {LOWRANK_TOL}")
    B = probs.shape[0]
    if probs.numel() == 0:
        return probs.sum() * 0.0
    plan = _make_plan(features, probs, method, cell, backend, smooth_axes, lowrank_tol, budget)
    _check_finite(probs, "probs", plan)
    scale = float(weight) / (B if normalize else 1)
    return _CRFLossFn.apply(plan, probs.contiguous(), scale)


def triton_available() -> bool:
    """Whether the Triton kernels can be imported (says nothing about a GPU being present)."""
    return _import_triton()[0] is not None


def numba_available() -> bool:
    """Whether the numba CPU kernels can run."""
    return _numba_available()
