"""Gaussian-affinity filter behind the dense CRF losses of F-CAM, TCAM and CoLo-CAM.

For features ``f_i`` in R^d (already divided by their bandwidths) and values ``P`` (N, K),

    (W P)_i = sum_j exp(-||f_i - f_j||^2 / 2) P_j        (self term included, no normalization)

for each of B independent groups (an image, or all pixels of a group of frames). Two kernels
are in use (:func:`crf_features`): 5-D per image, ``(x, y) / sigma_xy`` and ``(r, g, b) /
sigma_rgb`` (sigma_xy = 100 px, sigma_rgb = 15 on the 0-255 scale), and CoLo-CAM's colour-only
3-D kernel over all pixels of the frames of a shot. The losses are ``-sum_k P_k^T W P_k``
(:func:`dense_crf_loss`).

Two methods:

* ``"exact"``: the dense sum, chunked over rows: ``exp(q_i . k_j)`` with ``q_i = [f_i,
  -|f_i|^2/2, 1]`` and ``k_j = [f_j, 1, -|f_j|^2/2]`` (centred features), then a matmul with P.
  O(N^2) work, O(N) memory beyond a bounded chunk; the reference, and the fast choice below a
  few thousand points per group. Float32 is within 3e-6 (relative Frobenius) of float64 on a
  128x128 image; logits are floored at -80 (exp(-80) ~ 1e-35), which keeps float32 out of
  denormals (2.5x faster on CPU).
* ``"grid"``: a bilateral grid, O(N + grid cells): splat the values onto a regular grid over
  feature space with multilinear weights, blur with a separable Gaussian along each grid axis,
  slice back with the same weights. What makes it accurate (measured on skimage's astronaut,
  chelsea and coffee at 64-224 px against the exact path; see ``tests/test_kernel_crf.py`` and
  ``benchmarks/crf_speed.py``):

  - *variance compensation*: a linear splat and a linear slice each add on average 1/6 cell^2
    of variance per axis, so the blur uses ``sigma_g^2 = (1/c)^2 - 1/3`` (cells^2, cell ``c``
    in sigma units) while the result is scaled by the *target* Gaussian's integral
    ``sqrt(2 pi) / c`` per axis (the discrete blur kernel is normalized to sum 1 over
    ``+-3 sigma_g``, then cut to the grid's extent; normalizing after the cut is wrong on short
    axes). Truncating at 3 sigma_g is as accurate as 4 (measured) and 25% cheaper;
  - *grid offset*: each group's grid is placed so that its smallest feature lies at sub-cell
    offset ``f0 = (1 - sqrt(1/3)) / 2`` (where ``f0 (1 - f0) = 1/6``): many pixels of one
    saturated colour (0 or 255) then get the average splat variance instead of none
    (astronaut, colour-only, cell 0.5: 6.5% error without it, 1.1% with it);
  - *low-rank smooth axes*: an axis whose range is short in sigma units (the spatial axes of
    the 5-D kernel: 224 px / sigma_xy 100 = 2.2 sigma) is not gridded. Its Gaussian becomes a
    rank-r expansion ``exp(-(x - y)^2 / 2) ~= sum_r psi_r(x) psi_r(y)`` (eigenvectors of the
    kernel on 16 Chebyshev nodes over the group's range, interpolated with Chebyshev
    polynomials), products of the smooth axes' terms are kept while their eigenvalue ratio is
    >= ``lowrank_tol`` (1e-3: Q = 13 products at 224 px, 8 at 128 px), and the grid over the
    remaining axes filters the Q products ``psi_q * P`` at once (Q * K channels). For the 5-D
    kernel this replaces a 7 x 7 spatial grid (32 corners, 5 blurred axes) and is more accurate
    (1.1% vs 1.8% on astronaut 128 px) and faster on CPU (about 1.3x with numba, more with
    the torch path). ``smooth_axes=()`` gives the plain grid.

  At the default cell 0.5: 0.9-1.5% relative Frobenius error vs exact on those images, both
  kernels (the error grows about as cell^2); a colour grid of ~36^3 nodes per group. The
  grid operator is ``S B S^T`` (``S``: slice weights, ``B``: symmetric blur; with smooth axes a
  sum of ``D_q S B S^T D_q``), symmetric like W, so its exact gradient is the same filter
  applied to the incoming gradient.

Grid backends (``backend=``): ``"cpu"`` (numba kernels in ``_crf_numba.py``, on a small thread
pool; CPU tensors), ``"triton"`` (``_crf_triton.py``: splat with atomic adds and slice in
Triton, blur as batched matmuls; CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``),
``"torch"`` (``index_add_`` / gather / matmul; any device, the readable reference of the other
two). ``"auto"``: triton on CUDA when Triton imports, cpu on CPU when numba imports, torch
otherwise. Triton and numba are imported only when their path runs.

Groups: features ``(B, N, d)`` hold B independent groups of N points each; the frames of a shot
are one group (concatenate their pixels: the colour-only kernel ignores layout). Groups of
unequal size can be padded with points whose values are 0 and whose features copy a real point
of the group (a zero value adds nothing to anyone; what the filter returns at a pad point is
meaningless). The grid's extent and which axes are smooth are chosen from all groups of a call;
each group gets its own grid, placed at its own minimum, and its own smooth-axis basis, so a
group gives the same result in a batch as alone (up to float rounding) unless the choice of
smooth axes differs between the two calls (only when groups' feature ranges differ widely).

Results have the values' dtype (float32 or float64); grid coordinates are computed from the
features in float32 (the Triton kernels also form the corner weights in float32). Errors in the
inputs raise :class:`harness.errors.HarnessError`.
"""
from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass, field
from typing import Literal, Sequence

import numpy as np
import torch

from harness.errors import HarnessError

__all__ = ["gaussian_filter", "crf_features", "dense_crf_loss", "TritonUnavailableError", "triton_available",
           "numba_available"]

Method = Literal["auto", "exact", "grid"]
Backend = Literal["auto", "torch", "triton", "cpu"]
_METHODS = ("auto", "exact", "grid")
_BACKENDS = ("auto", "torch", "triton", "cpu")

MAX_DIM = 5
DEFAULT_CELL = 0.5  # grid cell in sigma units (see the module docstring for the error it gives)
GRID_OFFSET = (1.0 - math.sqrt(1.0 / 3.0)) / 2.0  # f0 with f0 (1 - f0) = 1/6
BLUR_TRUNCATE = 3.0  # blur taps reach this many sigma_g (4 is no more accurate, and slower)
AUTO_EXACT_PAIRS = 4096 * 4096  # method="auto" is exact while B * N^2 stays below this
SMOOTH_RANGE = 4.0  # axes whose range (sigma units) is at most this get the low-rank expansion
LOWRANK_TOL = 1e-3  # keep products of smooth-axis terms whose eigenvalue ratio is >= this
MAX_LOWRANK_TERMS = 32  # at most this many products (smooth axes are added while it holds)
_CHEB_NODES = 16
_EXACT_CHUNK_ELEMENTS = 1 << 23  # (rows x N) logits per chunk of the exact path (32 MiB fp32)
_GRID_CHUNK_ELEMENTS = 1 << 25  # grid elements (cells x channels) filtered per batch of groups


class TritonUnavailableError(HarnessError):
    """``backend="triton"`` was asked for but cannot run here."""


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
        # the blur's variance (1/c)^2 - 1/3 must stay positive, with some room
        if not 0.05 <= c <= 1.5:
            raise HarnessError(f"cell={c} (sigma units) is out of range: use 0.05 to 1.5 (default {DEFAULT_CELL})")
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

    def apply(self, values: torch.Tensor) -> torch.Tensor:
        """(B, N, K) -> (B, N, K): the approximate W applied to each group's values."""
        B, N, K = values.shape
        if not self.grid_axes:  # every axis low-rank: W = Psi Psi^T
            psi = self.basis.to(values.dtype)
            return psi @ (psi.transpose(1, 2) @ values)
        channels = K * (self.basis.shape[2] if self.basis is not None else 1)
        step = max(1, _GRID_CHUNK_ELEMENTS // max(1, self.cells * channels))  # groups per grid batch
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
            args = (feat.numpy(), lo.numpy(), self.inv_cell.numpy(), GRID_OFFSET, dims,
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
            grid = mod.splat(feat, lo, self.inv_cell, GRID_OFFSET, self.dims, self.strides, values)
            grid = _blur_torch(grid, self.dims, self._toeplitz(values))
            out = mod.slice_(feat, lo, self.inv_cell, GRID_OFFSET, self.dims, self.strides, grid)
        else:
            base, frac = _coords_torch(feat, lo, self.inv_cell, self.dims, self.strides)
            grid = _splat_torch(base, frac, self.strides, self.cells, values)
            grid = _blur_torch(grid, self.dims, self._toeplitz(values))
            out = _slice_torch(base, frac, self.strides, grid)
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
        plan.gfeat = feat if every else feat[:, :, ga].contiguous()
        plan.lo = lo_all if every else lo_all[:, ga].contiguous()
        plan.inv_cell = torch.tensor([1.0 / cells[a] for a in ga], dtype=torch.float32, device=feat.device)
        # the extent: the largest grid coordinate of any group, in float32 as the kernels compute it
        umax = (hi_all[:, ga] - plan.lo) * plan.inv_cell + GRID_OFFSET
        plan.dims = tuple(int(math.floor(u)) + 2 for u in umax.amax(dim=0).tolist())
        plan.taps = [_blur_taps(cells[a], n) for a, n in zip(ga, plan.dims)]
    return plan


def _blur_taps(c: float, n: int) -> np.ndarray:
    """Taps of the blur along a grid axis of n nodes with cell c (sigma units): a Gaussian of
    variance (1/c)^2 - 1/3 cells^2 (linear splat and slice add 1/6 + 1/6 on average), normalized
    to sum 1 over +-BLUR_TRUNCATE sigma_g, truncated to the grid (|t| <= n - 1), and scaled by
    the target Gaussian's integral sqrt(2 pi) / c."""
    var = 1.0 / c ** 2 - 1.0 / 3.0
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


def _coords_torch(feat, lo, inv_cell, dims, strides):
    """Lower-node cell index (B, N) int64 and fractions (B, N, dg), as the kernels compute them."""
    u = (feat - lo[:, None, :]) * inv_cell + GRID_OFFSET
    hi = torch.tensor([n - 2 for n in dims], device=feat.device, dtype=torch.float32)
    i0 = torch.minimum(torch.clamp(torch.floor(u), min=0.0), hi)
    frac = u - i0
    st = torch.tensor(strides, device=feat.device, dtype=torch.int64)
    base = (i0.long() * st).sum(-1)
    return base, frac


def _corners(base, frac, strides):
    """Yield (cell index (B, N), weight (B, N)) for each of the 2^dg corners."""
    dg = frac.shape[-1]
    for bits in itertools.product((0, 1), repeat=dg):
        idx = base + sum(s for s, bit in zip(strides, bits) if bit)
        w = None
        for a, bit in enumerate(bits):
            wa = frac[..., a] if bit else 1.0 - frac[..., a]
            w = wa if w is None else w * wa
        yield idx, w


def _splat_torch(base, frac, strides, cells, values):
    B, N, C = values.shape
    grid = values.new_zeros((B * cells, C))
    offset = (torch.arange(B, device=values.device) * cells)[:, None]
    frac = frac.to(values.dtype)
    for idx, w in _corners(base, frac, strides):
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


def _slice_torch(base, frac, strides, grid):
    B, cells, C = grid.shape
    flat = grid.reshape(B * cells, C)
    offset = (torch.arange(B, device=grid.device) * cells)[:, None]
    frac = frac.to(grid.dtype)
    out = None
    for idx, w in _corners(base, frac, strides):
        term = w[..., None] * flat[(idx + offset)]
        out = term if out is None else out.add_(term)
    return out


# ----------------------------------------------------------------------------- backend choice


@functools.lru_cache(maxsize=None)
def _import_triton():
    try:
        from harness.kernels import _crf_triton
    except Exception as exc:  # ImportError, or a broken Triton install failing at import
        return None, f"{type(exc).__name__}: {exc}"
    return _crf_triton, None


def _numba_available() -> bool:
    from harness.kernels import _crf_numba

    return _crf_numba.available()


def _resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in _BACKENDS:
        raise HarnessError(f"backend={backend!r}: use one of {_BACKENDS}")
    if backend == "auto":
        if device.type == "cuda" and _import_triton()[0] is not None:
            return "triton"
        if device.type == "cpu" and _numba_available():
            return "cpu"
        return "torch"
    if backend == "cpu":
        if device.type != "cpu":
            raise HarnessError(f"backend='cpu' needs CPU tensors (got {device}); use 'auto', 'torch' or 'triton'")
        if not _numba_available():
            raise HarnessError("backend='cpu' needs numba (pip install numba); use backend='torch'")
    if backend == "triton":
        mod, why = _import_triton()
        if mod is None:
            raise TritonUnavailableError(f"backend='triton' but Triton cannot be imported ({why}); install it "
                                         f"(pip install 'wsol-harness[gpu]') or use backend='torch'")
        if device.type != "cuda" and not mod.interpreting():
            raise TritonUnavailableError(f"backend='triton' needs CUDA tensors (got {device}); set TRITON_INTERPRET=1 "
                                         f"before the first Triton call to run the kernels on CPU with Triton's "
                                         f"interpreter")
    return backend


def _make_plan(features, values_shape, method, cell, backend, smooth_axes, lowrank_tol):
    if method not in _METHODS:
        raise HarnessError(f"method={method!r}: use one of {_METHODS}")
    B, N, _ = features.shape
    if method == "auto":
        method = "exact" if B * N * N <= AUTO_EXACT_PAIRS else "grid"
    if method == "exact":
        if backend not in _BACKENDS:
            raise HarnessError(f"backend={backend!r}: use one of {_BACKENDS}")
        if not bool(torch.isfinite(features).all()):
            raise HarnessError("features contain NaN or inf (check the images and the sigmas)")
        return _ExactPlan(features.detach())
    return _make_grid_plan(features, _resolve_backend(backend, features.device), cell, smooth_axes, lowrank_tol)


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
    """``-scale * sum(P * W P)`` with the gradient ``-2 scale W P`` from the forward's W P.

    On the numba path the dot product and the gradient's scaling run in numba as well: on a
    busy 2-core machine each of torch's parallel elementwise ops can stall for milliseconds in
    its OpenMP barrier (measured), more than the filter itself."""

    @staticmethod
    def forward(ctx, plan, probs, scale):
        wp = plan.apply(probs)
        ctx.save_for_backward(wp)
        ctx.scale = scale
        ctx.numba = isinstance(plan, _GridPlan) and plan.backend == "cpu"
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
                    smooth_axes: str | Sequence[int] = "auto", lowrank_tol: float = LOWRANK_TOL) -> torch.Tensor:
    """``(W P)_i = sum_j exp(-|f_i - f_j|^2 / 2) P_j`` per group: (B, N, d), (B, N, K) -> (B, N, K).

    ``method``: ``"exact"``, ``"grid"`` (bilateral grid, ~1% error at the default cell), or
    ``"auto"`` (exact while ``B * N^2 <= 4096^2``). ``cell``: the grid cell in sigma units,
    one for all axes or one per feature axis (the error grows as cell^2; 0.5 gives ~1.1%).
    ``backend`` (grid only): ``"auto"``, ``"cpu"`` (numba), ``"triton"`` (CUDA), ``"torch"``.
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
    plan = _make_plan(features, values.shape, method, cell, backend, smooth_axes, lowrank_tol)
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
    dtype = torch.float64 if images.dtype == torch.float64 else torch.float32
    B, _, H, W = images.shape
    rgb = images.to(dtype).permute(0, 2, 3, 1).reshape(B, H * W, 3) / sigma_rgb
    if sigma_xy is None:
        return rgb.contiguous()
    yy, xx = torch.meshgrid(torch.arange(H, device=images.device, dtype=dtype),
                            torch.arange(W, device=images.device, dtype=dtype), indexing="ij")
    xy = torch.stack([xx.reshape(-1), yy.reshape(-1)], -1) / sigma_xy
    return torch.cat([xy.expand(B, H * W, 2), rgb], -1).contiguous()


def dense_crf_loss(probs: torch.Tensor, features: torch.Tensor, weight: float = 1.0, *, normalize: bool = True,
                   method: Method = "auto", cell: float | Sequence[float] = DEFAULT_CELL, backend: Backend = "auto",
                   smooth_axes: str | Sequence[int] = "auto", lowrank_tol: float = LOWRANK_TOL) -> torch.Tensor:
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
    plan = _make_plan(features, probs.shape, method, cell, backend, smooth_axes, lowrank_tol)
    scale = float(weight) / (B if normalize else 1)
    return _CRFLossFn.apply(plan, probs.contiguous(), scale)


def triton_available() -> bool:
    """Whether the Triton kernels can be imported (says nothing about a GPU being present)."""
    return _import_triton()[0] is not None


def numba_available() -> bool:
    """Whether the numba CPU kernels can run."""
    return _numba_available()
