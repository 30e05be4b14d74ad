"""The permutohedral lattice of Adams, Baek and Davis (2010): the Gaussian filter of the dense-CRF
code of Krähenbühl & Koltun (and of the F-CAM authors' CRF loss), for comparison with the
bilateral grid of :mod:`harness.kernels.crf`.

For features ``f`` (B, N, d) in sigma units (already divided by their bandwidths; 1 <= d <= 5)
and values ``v`` (B, N, C), each of the B groups independently, the lattice approximates

    (W v)_i = sum_j exp(-|f_i - f_j|^2 / 2) v_j        (not normalised, self term included)

in five steps (D = d + 1):

1. *Elevation*: feature coordinate ``i`` (0-based) is scaled by ``sqrt(2/3) * D / sqrt((i+1)(i+2))``
   and the point is embedded in the hyperplane ``x . 1 = 0`` of R^D::

       sm = 0
       for i = d .. 1:  cf = scaled f[i-1];  e[i] = sm - i * cf;  sm += cf
       e[0] = sm

2. *Enclosing simplex*: ``r_i`` = the multiple of D nearest to ``e_i`` (``ceil`` when ``ceil(e_i/D) D
   - e_i < e_i - floor(e_i/D) D``, else ``floor``); ``s = sum_i r_i / D``. ``rank_i`` = the number
   of coordinates whose difference ``e_j - r_j`` is larger (ties: the lower index ranks higher).
   If ``s > 0``, the coordinates of rank ``>= D - s`` get ``r_i -= D`` and every rank ``+= s`` (``- D``
   for those); if ``s < 0``, those of rank ``< -s`` get ``r_i += D`` (ranks ``+= s``, ``+ D`` for
   those). Then ``r`` is a remainder-0 lattice point (coordinates multiples of D, summing to 0).
   With ``y[rank_i] = (e_i - r_i) / D`` the barycentric weights are ``b_0 = y_d + (1 - y_0)`` and
   ``b_k = y_{d-k} - y_{d-k+1}`` (k = 1..d): they lie in [0, 1] and sum to 1, and
   ``sum_k b_k vertex_k = e``. Vertex k is ``r`` plus the canonical simplex vertex k,
   ``(k, ..., k, k - D, ..., k - D)`` permuted by the ranks: coordinate ``i`` gets ``k`` if
   ``rank_i <= d - k``, else ``k - D``.
3. *Splat*: ``b_k v`` is added into each of the D vertices (keyed by their first d coordinates,
   the last being minus their sum).
4. *Blur*: for each lattice direction ``j = 0..d`` in turn (``+d`` at coordinate j, ``-1`` at the
   others), every vertex value becomes ``old + 0.5 (old[key - dir] + old[key + dir])``; a
   neighbour that no splat created counts as 0 and is not created.
5. *Slice*: ``out_i = alpha sum_k b_k value(vertex_k)`` with ``alpha = 1 / (1 + 2^-d)``.

The operator is ``L = alpha S B S^T`` (``S``: the (N, vertices) matrix of barycentric weights,
``B = B_d ... B_0`` the blur). Each ``B_j`` is symmetric, and on the full lattice they commute,
but not on the sparse set of vertices a splat creates: a two-step path through a vertex that
does not exist is cut in one order and not in the other. So, unlike the grid of ``crf.py``,
``B`` and ``L`` are symmetric only approximately for d >= 2 (d = 1 is exact: its two directions
are one line): ``|u^T L v - v^T L u| / |u^T L v|`` measured 3e-5 to 3e-3 on 2000 random points
(d = 2, 3, 5) and 5e-6 to 1.2e-3 on 64 px images (both kernels below). The exact transpose
blurs in the reverse order, ``d .. 0`` (``apply(v, transpose=True)``, Krähenbühl's ``reverse``
flag); the autograd backward of :meth:`LatticePlan.apply` uses it, so the gradient w.r.t. the
values is exact. (Tang et al.'s CRF loss, which F-CAM uses, applies the forward filter to the
incoming gradient instead, i.e. treats L as symmetric.)

The lattice is *not* the exact Gaussian sum. Measured against the float64 exact sum on
skimage's astronaut, chelsea, coffee, rocket and immunohistochemistry at 64 and 128 px (INTER_AREA
resize), with smooth two-channel soft masks as values: the least-squares scale ``s = <L v, W v>
/ <W v, W v>``, the shape error ``|L v - s W v| / |s W v|`` left after rescaling, and the
per-pixel ratio ``(L 1)_i / (W 1)_i`` (1st to 99th percentile over the pixels of all images):

* colour-only ``rgb / 15`` (d = 3): s = 0.75 - 0.83, shape error 3.1 - 10.1 % (astronaut 9-10 %,
  the others 3.1 - 5.9 %), per-pixel ratio 0.64 - 0.92 (medians 0.75 - 0.79);
* ``(x, y) / 100, rgb / 15`` (d = 5): s = 0.49 - 0.61, shape error 3.8 - 7.8 %, per-pixel ratio
  0.40 - 0.71 (medians 0.49 - 0.59).

Unscaled, that is a 18 - 25 % (d = 3) and 39 - 51 % (d = 5) relative error, against 0.9 - 1.5 % for
the grid of ``crf.py`` at its default cell. A single point on a lattice point gets ``alpha (1 + 2^-D)``
times its own value (the exact sum: 1), see ``tests/test_kernel_lattice.py``.

Speed of the numba path, 224 x 224 images, C = 2, float32, on a 2-core machine shared with
another job (so ranges; a plan rebuilt at the same size, as in training): one frame, colour-only
(N = 50176, 1123 vertices): plan 2.3 - 3.5 ms, apply 0.9 - 1.6 ms; 16 frames as one colour group
(N = 802816, 1402 vertices): plan 29 - 54 ms, apply 11 - 21 ms; 8 frames, 5-D (B = 8, 2000 - 5200
vertices each): plan 26 - 33 ms, apply 6 - 11 ms. Per point and thread (one frame, memory warm):
the simplex 20 ns (d = 3) / 36 ns (d = 5), the hash insert 2 ns per vertex slot, splat and slice
1.5 ns per slot each; the blur is negligible (few vertices). First-touch page faults on a
plan's fresh arrays can double a plan's time.

Backends (``backend=``): ``"cpu"`` (numba, ``_lattice_numba.py``: hash tables, a small thread pool
over groups), ``"triton"`` (``_lattice_triton.py``: per-point geometry, splat, blur and slice
kernels; CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``), ``"torch"`` (vectorised
torch, any device: the readable reference). ``"auto"``: triton on CUDA when Triton imports, cpu
on CPU when numba imports, torch otherwise. Triton and numba are imported only when their path
runs. The lattice geometry (elevation, rounding, ranks, weights) is computed in the features'
dtype in the same operation order on every backend (the Triton kernel is launched without FMA
contraction for that), so all three pick the same simplices, ties included; the torch and numba
paths give bit-identical results. Values are filtered in their own dtype.

Vertex keys are the first d coordinates minus a per-group lower bound (from the group's feature
range), packed into one int64 (62 bits, with the group index on the torch and Triton paths,
which split the batch into ranges of groups when the index does not fit): every axis may span up
to about 550 sigma at d = 5 and 6000 at d = 4 (d <= 3: no practical limit); wider features raise a
:class:`HarnessError`. Results are deterministic and do not depend on the thread count (on CUDA
the splat's atomic adds make the float sums' order vary). :func:`lattice_bytes` bounds the
memory of a plan and an apply; the plan is O(N (d + 1)) per group.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from harness.errors import HarnessError
from harness.kernels._backends import BACKENDS as _BACKENDS, TritonUnavailableError, import_kernels, resolve_backend

__all__ = ["LatticePlan", "make_lattice_plan", "lattice_bytes", "lattice_filter", "alpha",
           "TritonUnavailableError", "triton_available", "numba_available"]

MAX_DIM = 5
MAX_KEY_BITS = 62  # packed vertex keys (group bits included on the torch and Triton paths)
POINT_CHUNK = 1 << 15  # points per call of points_torch (bounds its temporaries)
_MiB = 1 << 20


# ----------------------------------------------------------------------------- constants


def alpha(d: int) -> float:
    """The slice's scale ``1 / (1 + 2^-d)``."""
    return 1.0 / (1.0 + 2.0 ** -d)


def scales(d: int) -> list[float]:
    """Elevation scale of feature coordinate i: ``sqrt(2/3) (d + 1) / sqrt((i + 1)(i + 2))``."""
    return [math.sqrt(2.0 / 3.0) * (d + 1) / math.sqrt((i + 1) * (i + 2)) for i in range(d)]


def constants(d: int, dtype) -> np.ndarray:
    """What the kernels compute with, in the features' dtype (so that every backend does the same
    float operations): ``[scale_0 .. scale_{d-1}, 1/D, D, 1, 0, 0, 1, ..., d]`` (the last D entries
    are the coordinate indices as floats)."""
    D = d + 1
    return np.array([*scales(d), 1.0 / D, float(D), 1.0, 0.0, *range(D)], dtype=dtype)


def elevation_matrix(d: int) -> np.ndarray:
    """(D, d) float64 ``E`` with ``elevated = E @ f`` (step 1 as a matrix)."""
    D = d + 1
    E = np.zeros((D, d))
    for i, s in enumerate(scales(d)):
        E[: i + 1, i] = s  # f_i's scaled value adds into every coordinate 0..i ...
        E[i + 1, i] = -(i + 1) * s  # ... and -(i+1) times into coordinate i+1
    return E


def directions(d: int, pw: np.ndarray) -> np.ndarray:
    """(D,) int64: lattice direction j (``+d`` at coordinate j, ``-1`` elsewhere) as a packed-key
    difference (coordinate i weighs ``pw[i]``; coordinate d is implied and not in the key)."""
    D = d + 1
    out = np.empty(D, np.int64)
    for j in range(D):
        out[j] = sum((d if i == j else -1) * int(pw[i]) for i in range(d))
    return out


# ----------------------------------------------------------------------------- key layout


@dataclass
class KeyLayout:
    """How a vertex's first d coordinates are packed into one int64: ``sum_i (c_i - lo[b, i]) <<
    shift_i`` (+ the group's bits on the torch and Triton paths)."""

    lo: np.ndarray  # (B, d) int64: per-group lower bound of every key coordinate (neighbours included)
    bits: np.ndarray  # (d,) bits per coordinate
    pw: np.ndarray  # (d,) int64: 1 << shift_i

    @property
    def coord_bits(self) -> int:
        return int(self.bits.sum())


def key_layout(fmin: np.ndarray, fmax: np.ndarray, d: int) -> KeyLayout:
    """Key layout for groups whose features lie in [fmin, fmax] (B, d) (float64, finite).

    A key coordinate is within ``2.5 D + d`` of the elevated coordinate (rounding to a multiple
    of D: D/2, the sum fix-up: D, the simplex vertex: d, a blur neighbour: D), and the elevated
    coordinate ``E f`` lies in the range of ``E`` over the group's feature box."""
    D = d + 1
    E = elevation_matrix(d)[:d]  # (d, d): the key's coordinates
    lo_e = (np.minimum(E[None] * fmin[:, None, :], E[None] * fmax[:, None, :])).sum(-1)
    hi_e = (np.maximum(E[None] * fmin[:, None, :], E[None] * fmax[:, None, :])).sum(-1)
    slack = 2.5 * D + d + 2.0 + 1e-5 * np.maximum(np.abs(lo_e), np.abs(hi_e))  # float rounding of e
    lo = np.floor(lo_e - slack)
    hi = np.ceil(hi_e + slack)
    width = (hi - lo + 1).max(axis=0) if len(lo) else np.ones(d)
    with np.errstate(all="ignore"):
        bits = np.where(np.isfinite(width), np.ceil(np.log2(np.maximum(width, 2.0))), 64.0).astype(np.int64)
    if int(bits.sum()) > MAX_KEY_BITS or not np.all(np.abs(lo) < 2.0 ** 61):
        span = float((fmax - fmin).max()) if len(fmin) else 0.0
        raise HarnessError(f"the features span too wide a range for the lattice: its vertex keys would need "
                           f"{int(bits.sum())} bits, {MAX_KEY_BITS} are available (largest span {span:.4g} sigma "
                           f"along one axis); divide the features by larger bandwidths, or filter with "
                           f"crf.gaussian_filter")
    shifts = np.concatenate([np.cumsum(bits[::-1])[::-1][1:], [0]]).astype(np.int64)  # coordinate 0 highest
    return KeyLayout(lo=lo.astype(np.int64), bits=bits, pw=(np.int64(1) << shifts).astype(np.int64))


def group_chunks(B: int, layout: KeyLayout) -> list[tuple[int, int]]:
    """Ranges of groups whose index fits in the key's bits beside the coordinates (torch, Triton)."""
    free = MAX_KEY_BITS - layout.coord_bits
    per = 1 << min(free, 40)
    return [(b, min(B, b + per)) for b in range(0, B, per)] or [(0, 0)]


# ----------------------------------------------------------------------------- memory bound


def lattice_bytes(B: int, N: int, d: int, C: int, itemsize: int) -> int:
    """Upper bound (bytes) of what :func:`make_lattice_plan` on (B, N, d) features and one
    :meth:`LatticePlan.apply` on (B, N, C) values allocate at once on any backend, for float
    itemsize ``itemsize`` (8 for float64, 4 for float32; give the larger of the features' and
    values'). ``C = 0``: the plan alone. With ``P = B N (d + 1)`` vertex slots (the most vertices
    there can be), in bytes per slot:

    * the plan: ids 4, weights ``itemsize``, neighbours ``8 (d + 1)`` (2 (d + 1) int32 per vertex);
    * building it (the torch path, the largest): packed keys 8, ``torch.unique``'s sorted copy,
      sort indices, inverse and output 32, the int64 ids 8, one direction's neighbour search 96,
      48 for freed blocks the C allocator keeps, plus the per-point temporaries of one chunk of
      ``POINT_CHUNK`` points (about 48 arrays of (chunk, d + 1) in 8 bytes);
    * one apply: the splat's products ``C itemsize``, two vertex tables and the blur's two gathers
      ``4 C itemsize``, the weights in the values' dtype ``itemsize``, and per point ``4 C
      itemsize`` (a copy of the values, the slice's accumulator and gather, the output).

    Checked in ``tests/test_kernel_lattice.py`` against the peak of live allocations: where
    every point has its own vertices (the worst case) the torch path peaked at 0.2 - 0.6 of the
    bound, numba at 0.14 - 0.25. With glibc's default allocator, which keeps some freed blocks,
    the process's peak resident memory reached 0.7 - 0.9 of it on the torch path (d = 3 - 5)."""
    B, N, d, C, it = int(B), int(N), int(d), int(C), max(4, int(itemsize))
    D = d + 1
    BN = B * N
    P = BN * D
    plan = P * (4 + it + 8 * D) + 8 * (B + 1)
    chunk = min(BN, max(POINT_CHUNK, B))
    build = P * (8 + 32 + 8 + 96 + 48) + chunk * D * 48 * 8 + (1 << 16)  # 48: the C allocator's retention
    apply = 0
    if C > 0:
        apply = P * (C * it + 4 * C * it + it) + 4 * BN * C * it + 2 * C * it
    return plan + build + apply


def _check_budget(B, N, d, C, itemsize, budget_bytes, what):
    if budget_bytes is None:
        return
    need = lattice_bytes(B, N, d, C, itemsize)
    if need > budget_bytes:
        raise HarnessError(f"the lattice {what} needs up to {need / _MiB:.1f} MiB for {B} group(s) of {N} points "
                           f"(d={d}{f', C={C}' if C else ''}), over the budget of {budget_bytes / _MiB:.1f} MiB: "
                           f"lower the batch (fewer groups or points per call) or raise budget_bytes")


# ----------------------------------------------------------------------------- checks


def _check_features(features) -> None:
    if not isinstance(features, torch.Tensor):
        raise HarnessError(f"features must be a torch.Tensor, got {type(features).__name__}")
    if features.dtype not in (torch.float32, torch.float64):
        raise HarnessError(f"features must be float32 or float64, got {features.dtype}"
                           + (" (cast with .float())" if features.is_floating_point() else ""))
    if features.dim() != 3:
        raise HarnessError(f"features must be 3-D (B, N, d), got shape {tuple(features.shape)}")
    d = features.shape[2]
    if not 1 <= d <= MAX_DIM:
        raise HarnessError(f"features have d={d} dimensions per point; the lattice supports 1 to {MAX_DIM} "
                           f"(5-D: x, y, r, g, b)")


def _check_values(plan: "LatticePlan", values) -> None:
    if not isinstance(values, torch.Tensor):
        raise HarnessError(f"values must be a torch.Tensor, got {type(values).__name__}")
    if values.dtype not in (torch.float32, torch.float64):
        raise HarnessError(f"values must be float32 or float64, got {values.dtype}"
                           + (" (cast with .float())" if values.is_floating_point() else ""))
    if values.dim() != 3 or tuple(values.shape[:2]) != (plan.B, plan.N):
        raise HarnessError(f"values of shape {tuple(values.shape)} do not match the plan's features "
                           f"({plan.B}, {plan.N}, {plan.d}): expected ({plan.B}, {plan.N}, C)")
    if values.device != plan.device:
        raise HarnessError(f"the plan was built on {plan.device} but the values are on {values.device}")


# ----------------------------------------------------------------------------- the plan


@dataclass(eq=False)
class LatticePlan:
    """Everything fixed by the features, built once by :func:`make_lattice_plan`; :meth:`apply`
    filters any number of value tensors with it (a loss's forward and backward).

    Vertices of all groups form one table: group b owns ids ``offsets[b]:offsets[b + 1]``.
    ``vertex_ids`` (B, N, D) int32: each point's D simplex vertices (vertex k of step 2);
    ``weights`` (B, N, D), the features' dtype: their barycentric weights; ``neighbours``
    (D, 2, M) int32: per blur direction j, each vertex's neighbours ``key - dir_j`` and ``key +
    dir_j``, -1 where absent. On the plan's device (CPU for ``backend="cpu"``)."""

    backend: str
    B: int
    N: int
    d: int
    device: torch.device
    dtype: torch.dtype
    vertex_ids: torch.Tensor
    weights: torch.Tensor
    neighbours: torch.Tensor
    offsets: list[int]
    budget_bytes: int | None = None
    _cache: dict = field(default_factory=dict, repr=False)  # weights in other dtypes, torch-path neighbours

    @property
    def vertices(self) -> list[int]:
        """Vertex count per group."""
        return [self.offsets[b + 1] - self.offsets[b] for b in range(self.B)]

    @property
    def M(self) -> int:
        """Vertex count of all groups."""
        return self.offsets[-1]

    def weights_as(self, dtype: torch.dtype) -> torch.Tensor:
        """The weights in ``dtype`` (cast once, kept)."""
        if dtype == self.weights.dtype:
            return self.weights
        if dtype not in self._cache:
            self._cache[dtype] = self.weights.to(dtype)
        return self._cache[dtype]

    def apply(self, values: torch.Tensor, *, transpose: bool = False) -> torch.Tensor:
        """(B, N, C) -> (B, N, C) in the values' dtype: the lattice filter of each group's values
        (``transpose=True``: its exact transpose, the blur directions in reverse order).
        Differentiable w.r.t. ``values``: the backward is the transposed filter."""
        _check_values(self, values)
        B, N, C = values.shape
        _check_budget(B, N, self.d, C, max(values.element_size(), torch.finfo(self.dtype).bits // 8),
                      self.budget_bytes, "apply")
        if B * N * C == 0:
            return values.new_zeros(values.shape)
        if values.requires_grad and torch.is_grad_enabled():
            return _LatticeFn.apply(self, values, transpose)
        return self._apply(values.detach(), transpose)

    def _apply(self, values: torch.Tensor, transpose: bool) -> torch.Tensor:
        values = values.contiguous()
        order = range(self.d, -1, -1) if transpose else range(self.d + 1)
        a = alpha(self.d)
        if self.backend == "cpu":
            from harness.kernels import _lattice_numba as nb

            out = nb.apply(self.vertex_ids.numpy(), self.weights_as(values.dtype).numpy(), self.neighbours.numpy(),
                           np.asarray(self.offsets, np.int64), values.numpy(), a, list(order))
            return torch.from_numpy(out)
        if self.backend == "triton":
            mod = _import_triton()[0]
            return mod.apply(self, values, list(order), a)
        return _apply_torch(self, values, list(order), a)


class _LatticeFn(torch.autograd.Function):
    """values -> L values for a fixed plan; the backward applies L^T (the reversed blur)."""

    @staticmethod
    def forward(ctx, plan, values, transpose):
        ctx.plan, ctx.transpose = plan, transpose
        return plan._apply(values, transpose)

    @staticmethod
    def backward(ctx, grad):
        return None, _LatticeFn.apply(ctx.plan, grad.contiguous(), not ctx.transpose), None


# ----------------------------------------------------------------------------- torch path


def points_torch(feat: torch.Tensor, lo: torch.Tensor, pw: torch.Tensor, gpart: torch.Tensor):
    """Steps 1-2 for every point, vectorised: ``(keys (B, N, D) int64, weights (B, N, D))``.

    ``feat`` (B, N, d) float32/64; ``lo`` (B, d) int64 and ``pw`` (d,) int64: the key layout;
    ``gpart`` (B,) int64: each group's bits of the packed key. Every float operation is the one
    the numba and Triton kernels do, in the features' dtype."""
    B, N, d = feat.shape
    D = d + 1
    dev, dt = feat.device, feat.dtype
    cst = torch.as_tensor(constants(d, np.float64 if dt == torch.float64 else np.float32), device=dev)
    down, Df, one = cst[d], cst[d + 1], cst[d + 2]
    # 1. elevation (a loop over the d coordinates, vectorised over points)
    e = feat.new_empty((B, N, D))
    sm = torch.zeros_like(feat[:, :, 0])
    for i in range(d, 0, -1):
        cf = feat[:, :, i - 1] * cst[i - 1]
        e[:, :, i] = sm - cst[d + 4 + i] * cf
        sm = sm + cf
    e[:, :, 0] = sm
    # 2. nearest remainder-0 point, ranks, sum fix-up
    v = e * down
    cl, fl = torch.ceil(v), torch.floor(v)
    r = torch.where(cl * Df - e < e - fl * Df, cl, fl)
    rem = r * Df  # multiples of D, exact in floats
    s = r.sum(-1, keepdim=True).long()  # exact: small integers
    diff = e - rem
    ar = torch.arange(D, device=dev)
    rank = torch.zeros((B, N, D), dtype=torch.int64, device=dev)
    for j in range(D):  # rank_i counts the j with diff_j > diff_i, or diff_j == diff_i and j < i
        dj = diff[:, :, j:j + 1]
        rank += (dj > diff) | ((dj == diff) & (ar > j))
    down_shift = (s > 0) & (rank >= D - s)
    up_shift = (s < 0) & (rank < -s)
    rem = torch.where(down_shift, rem - Df, torch.where(up_shift, rem + Df, rem))
    rank = rank + s - D * down_shift.long() + D * up_shift.long()
    # barycentric weights: y[rank_i] = (e_i - r_i) / D
    y = torch.zeros_like(e).scatter_(-1, rank, (e - rem) * down)
    w = torch.empty_like(e)
    w[:, :, 0] = y[:, :, d] + (one - y[:, :, 0])
    yr = y.flip(-1)  # yr[k] = y_{d-k}
    w[:, :, 1:] = yr[:, :, 1:] - yr[:, :, :d]  # b_k = y_{d-k} - y_{d-k+1}
    # vertex keys: vertex k adds k (rank <= d - k) or k - D to each coordinate of r
    remi = rem[:, :, :d].long() - lo[:, None, :]
    keys = torch.empty((B, N, D), dtype=torch.int64, device=dev)
    for k in range(D):
        coords = remi + torch.where(rank[:, :, :d] <= d - k, k, k - D)
        keys[:, :, k] = (coords * pw).sum(-1) + gpart[:, None]
    return keys, w


def dedupe_torch(keys: torch.Tensor, layout: KeyLayout, groups: int, gshift: int, base: int):
    """Vertex ids and neighbours from the packed keys (B, N, D) of ``groups`` groups: ``(ids (B, N,
    D) int32, neighbours (D, 2, M) int32 with -1, counts (groups,) int64)``, ids offset by
    ``base``. Ids follow the sorted keys (group first), so each group's vertices are contiguous."""
    d = keys.shape[2] - 1
    uniq, inverse = torch.unique(keys.reshape(-1), sorted=True, return_inverse=True)
    ids = (inverse.view(keys.shape) + base).to(torch.int32)
    del inverse
    M = uniq.numel()
    counts = torch.bincount(uniq >> gshift, minlength=groups)
    nbr = torch.empty((d + 1, 2, M), dtype=torch.int32, device=keys.device)
    for j, delta in enumerate(directions(d, layout.pw).tolist()):
        q = torch.stack([uniq - delta, uniq + delta])  # (2, M): key -/+ direction j
        at = torch.searchsorted(uniq, q).clamp_(max=max(M - 1, 0))
        found = uniq[at] == q
        nbr[j] = torch.where(found, at + base, -1)
    return ids, nbr, counts


def _build_geometry(features: torch.Tensor, layout: KeyLayout, points_fn, chunk: int | None) -> tuple:
    """Shared by the torch and Triton paths: points (``points_fn``, on ``chunk`` points (of all
    groups together) at a time), dedupe and neighbours per range of groups whose index fits in
    the key; ids made global."""
    B, N, d = features.shape
    dev = features.device
    D = d + 1
    ids, ws, nbrs, counts = [], [], [], []
    base = 0
    pw = torch.as_tensor(layout.pw, device=dev)
    step = N if chunk is None else max(1, chunk // max(B, 1))
    for b0, b1 in group_chunks(B, layout):
        gshift = layout.coord_bits
        gpart = torch.arange(b1 - b0, device=dev, dtype=torch.int64) << gshift
        lo = torch.as_tensor(layout.lo[b0:b1], device=dev)
        keys = torch.empty((b1 - b0, N, D), dtype=torch.int64, device=dev)
        w = features.new_empty((b1 - b0, N, D))
        for n0 in range(0, N, step):
            keys[:, n0:n0 + step], w[:, n0:n0 + step] = points_fn(features[b0:b1, n0:n0 + step], lo, pw, gpart)
        vid, nbr, cnt = dedupe_torch(keys, layout, b1 - b0, gshift, base)
        del keys
        ids.append(vid)
        nbrs.append(nbr)
        ws.append(w)
        counts.append(cnt)
        base += nbr.shape[2]
    counts = torch.cat(counts).tolist()
    offsets = [0]
    for c in counts:
        offsets.append(offsets[-1] + int(c))
    cat = (lambda xs, dim: xs[0] if len(xs) == 1 else torch.cat(xs, dim))
    return cat(ids, 0), cat(ws, 0), cat(nbrs, 2), offsets


def _neighbours_with_sentinel(plan: LatticePlan) -> torch.Tensor:
    """(D, 2, M) int64 neighbours with absent ones pointing at the zero row M (torch path, cached)."""
    key = "nbr_sentinel"
    if key not in plan._cache:
        n = plan.neighbours.long()
        plan._cache[key] = torch.where(n < 0, plan.M, n)
    return plan._cache[key]


def _apply_torch(plan: LatticePlan, values: torch.Tensor, order: list[int], a: float) -> torch.Tensor:
    B, N, C = values.shape
    D = plan.d + 1
    M = plan.M
    w = plan.weights_as(values.dtype)
    vid = plan.vertex_ids.reshape(-1)
    # 3. splat (a zero row M for absent neighbours)
    table = values.new_zeros((M + 1, C))
    table.index_add_(0, vid, (w[:, :, :, None] * values[:, :, None, :]).reshape(B * N * D, C))
    # 4. blur (in-place steps: the same float operations as the kernels, fewer temporaries)
    nbr = _neighbours_with_sentinel(plan)
    for j in order:
        new = table.index_select(0, nbr[j, 0])
        new.add_(table.index_select(0, nbr[j, 1])).mul_(0.5).add_(table[:M])
        table = torch.cat([new, table[M:]])
    # 5. slice
    ids = plan.vertex_ids.reshape(B * N, D)
    wf = w.reshape(B * N, D)
    acc = table.index_select(0, ids[:, 0]).mul_(wf[:, 0:1])
    for k in range(1, D):
        acc.add_(table.index_select(0, ids[:, k]).mul_(wf[:, k:k + 1]))
    return acc.mul_(a).view(B, N, C)


# ----------------------------------------------------------------------------- backend choice


def _import_triton():
    return import_kernels("harness.kernels._lattice_triton")


def triton_available() -> bool:
    """Whether the Triton kernels can be imported (says nothing about a GPU being present)."""
    return _import_triton()[0] is not None


def numba_available() -> bool:
    """Whether the numba CPU kernels can run."""
    from harness.kernels import _lattice_numba

    return _lattice_numba.available()


def _resolve_backend(backend: str, device: torch.device) -> str:
    return resolve_backend(backend, device, _import_triton, lambda: numba_available())


# ----------------------------------------------------------------------------- public API


def make_lattice_plan(features: torch.Tensor, backend: str = "auto", *,
                      budget_bytes: int | None = None) -> LatticePlan:
    """Build the lattice for (B, N, d) features in sigma units (B independent groups; float32 or
    float64; 1 <= d <= 5): each point's simplex vertices and barycentric weights, each vertex's
    blur neighbours. ``backend``: ``"auto"``, ``"cpu"`` (numba), ``"triton"`` (CUDA, or CPU under
    ``TRITON_INTERPRET=1``), ``"torch"``. ``budget_bytes``: refuse (HarnessError) when
    :func:`lattice_bytes` of the plan exceeds it (:meth:`LatticePlan.apply` checks the plan plus
    its own allocations again). The features get no gradient."""
    _check_features(features)
    B, N, d = features.shape
    backend = _resolve_backend(backend, features.device)
    _check_budget(B, N, d, 0, features.element_size(), budget_bytes, "plan")
    if B * N * (d + 1) >= 2 ** 31:
        raise HarnessError(f"{B} group(s) of {N} points have {B * N * (d + 1)} vertex slots, more than the lattice's "
                           f"int32 vertex ids hold (2^31 - 1): lower the batch (fewer groups or points per call)")
    feat = features.detach().contiguous()
    dev, D = feat.device, d + 1
    if B * N == 0:
        return LatticePlan(backend, B, N, d, dev, feat.dtype,
                           torch.zeros((B, N, D), dtype=torch.int32, device=dev), feat.new_zeros((B, N, D)),
                           torch.zeros((D, 2, 0), dtype=torch.int32, device=dev), [0] * (B + 1), budget_bytes)
    if backend == "cpu":
        from harness.kernels import _lattice_numba as nb

        fmin, fmax = nb.minmax(feat.numpy())
    else:
        fmin, fmax = feat.amin(dim=1), feat.amax(dim=1)  # NaN propagates; inf shows as inf
        fmin, fmax = fmin.double().cpu().numpy(), fmax.double().cpu().numpy()
    if not (np.isfinite(fmin).all() and np.isfinite(fmax).all()):
        raise HarnessError("features contain NaN or inf (check the images and the bandwidths)")
    layout = key_layout(fmin.astype(np.float64), fmax.astype(np.float64), d)
    if backend == "cpu":
        from harness.kernels import _lattice_numba as nb

        vid, w, nbr, offsets = nb.build(feat.numpy(), layout.lo, layout.pw, directions(d, layout.pw),
                                        constants(d, feat.numpy().dtype))
        return LatticePlan(backend, B, N, d, dev, feat.dtype, torch.from_numpy(vid), torch.from_numpy(w),
                           torch.from_numpy(nbr), [int(o) for o in offsets], budget_bytes)
    if backend == "triton":
        vid, w, nbr, offsets = _build_geometry(feat, layout, _import_triton()[0].points, None)
    else:
        vid, w, nbr, offsets = _build_geometry(feat, layout, points_torch, POINT_CHUNK)
    return LatticePlan(backend, B, N, d, dev, feat.dtype, vid, w, nbr, offsets, budget_bytes)


def lattice_filter(features: torch.Tensor, values: torch.Tensor, backend: str = "auto", *,
                   budget_bytes: int | None = None) -> torch.Tensor:
    """``make_lattice_plan(features, backend).apply(values)`` (one-off filtering)."""
    return make_lattice_plan(features, backend, budget_bytes=budget_bytes).apply(values)
