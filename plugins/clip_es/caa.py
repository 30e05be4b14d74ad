"""CLIP-ES's class-aware attention affinity (CAA) refinement of a Grad-CAM map, batched.

CLIP-ES (Lin et al., CVPR 2023) refines the Grad-CAM map of a class with the ViT's attention
among the N patch tokens. Per image, from ``attn`` (N, N) non-negative (heads averaged, mean of
the last layers, CLS row and column dropped), ``cam`` (N,) (the map flattened row-major) and
``mask`` (N,) 0/1 (the tokens inside the map's boxes), the authors compute with explicit
matrices::

    D = attn / attn.sum(0, keepdim=True)     # column normalization
    D = D / D.sum(1, keepdim=True)           # row normalization
    ... the (column, row) pair again, `sinkhorn_iters` rounds in all (the authors: 3)
    S = (D + D.T) / 2
    S = S @ S
    refined = (S * mask[None, :]) @ cam      # columns outside the boxes zeroed

Here the same numbers (equal in exact arithmetic) come without any N x N temporary and in
O(N^2) per image: Sinkhorn only rescales rows and columns, so ``D = diag(r) A diag(c)`` with
``r = 1`` at the start and, each round, ``c = 1 / (A^T r)`` then ``r = 1 / (A c)``. Then
``S u = (r * (A (c * u)) + c * (A^T (r * u))) / 2`` and ``refined = S (S v)`` with
``v = mask * cam``: a few matrix-vector products with ``A`` and ``A^T``, never a matrix product.

Two paths, same numbers up to float32 rounding:

* ``"torch"``: batched matrix-vector products, any device, differentiable;
* ``"triton"``: one kernel launch for the whole batch (:mod:`._caa_triton`), reading each
  image's attention ``sinkhorn_iters + 2`` times, in any float dtype and with any strides (a
  sliced ``attn[:, 1:, 1:]`` or a batch ``expand`` is not copied). CUDA tensors, or CPU tensors
  under ``TRITON_INTERPRET=1`` (Triton's interpreter, for tests); N up to
  ``_caa_triton.MAX_N``.

``backend="auto"`` takes Triton for CUDA tensors when Triton imports, N fits and no gradient is
wanted (and attn is not float64), torch otherwise. The result is float32, float64 from the torch
path for float64 attention, and not min-max normalized (the caller does it).
"""
from __future__ import annotations

import torch
from torch import Tensor

from harness.errors import HarnessError
from harness.kernels._backends import TritonUnavailableError, import_kernels, resolve_backend

__all__ = ["BACKENDS", "caa_refine", "TritonUnavailableError"]

BACKENDS = ("auto", "torch", "triton")


def _import_triton():
    return import_kernels("harness.plugins.clip_es._caa_triton")


# ----------------------------------------------------------------------------- checks


def _check_args(attn: Tensor, cam: Tensor, mask: Tensor, sinkhorn_iters: int, backend: str) -> None:
    if backend not in BACKENDS:
        raise HarnessError(f"CAA: backend={backend!r}: use one of {BACKENDS}")
    if isinstance(sinkhorn_iters, bool) or not isinstance(sinkhorn_iters, int) or sinkhorn_iters < 1:
        raise HarnessError(f"CAA: sinkhorn_iters={sinkhorn_iters!r}: use an int >= 1 (CLIP-ES uses 3)")
    for name, t in (("attn", attn), ("cam", cam), ("mask", mask)):
        if not isinstance(t, Tensor):
            raise HarnessError(f"CAA: {name} must be a torch.Tensor, got {type(t).__name__}")
    if attn.dim() != 3 or attn.shape[1] != attn.shape[2]:
        raise HarnessError(f"CAA: attn must be (B, N, N), the attention among the N patch tokens, got shape "
                           f"{tuple(attn.shape)}: average the heads and drop the CLS row and column first")
    B, N = attn.shape[0], attn.shape[1]
    for name, t in (("cam", cam), ("mask", mask)):
        if tuple(t.shape) != (B, N):
            raise HarnessError(f"CAA: {name} must be (B, N) = ({B}, {N}) to match attn, got shape {tuple(t.shape)}: "
                               f"flatten the (h, w) map row-major, h * w = N")
        if t.device != attn.device:
            raise HarnessError(f"CAA: {name} is on {t.device} but attn on {attn.device}: move them to one device")
    if attn.is_complex() or cam.is_complex():
        raise HarnessError("CAA: attn and cam must be real (float) tensors")


def _check_values(attn: Tensor, cam: Tensor, mask: Tensor) -> None:
    # All flags first, then one device-to-host copy: one synchronization on CUDA, not six.
    acc = torch.float64 if attn.dtype == torch.float64 else torch.float32
    colsum = attn.sum(dim=1, dtype=acc)
    rowsum = attn.sum(dim=2, dtype=acc)
    flags = torch.stack([
        ~(torch.isfinite(colsum).all() & torch.isfinite(rowsum).all()),  # NaN/inf in attn propagate to the sums
        (attn.amin() < 0),
        (colsum == 0).any(),
        (rowsum == 0).any(),
        ~torch.isfinite(cam).all(),
        ~((mask == 0) | (mask == 1)).all(),  # True for any bool mask
    ]).tolist()
    if flags[0]:
        raise HarnessError("CAA: attention has NaN/inf (or sums that overflow): check the attention weights "
                           "the backbone returned (softmax probabilities averaged over heads)")
    if flags[1]:
        raise HarnessError(f"CAA: attention has negative values (min {attn.amin().item():.4g}): pass attention "
                           f"probabilities (after softmax), not logits")
    if flags[2] or flags[3]:
        which, sums = ("column", colsum) if flags[2] else ("row", rowsum)
        # A zero column (row) makes the authors' column (row) normalization divide 0 by 0.
        raise HarnessError(f"CAA: attention has an all-zero {which} (token {_first_zero(sums)}): every patch token "
                           f"must attend to some token and be attended to by some; pass softmax attention, not a "
                           f"thresholded or masked one")
    if flags[4]:
        raise HarnessError("CAA: cam has NaN/inf: check the Grad-CAM map (a min-max normalization of a constant "
                           "map without a guard divides 0 by 0)")
    if flags[5]:
        raise HarnessError("CAA: mask must be bool or 0/1 (the tokens inside the boxes), got other values: "
                           "threshold it or pass mask.bool()")


def _first_zero(sums: Tensor) -> str:
    b, n = (sums == 0).nonzero()[0].tolist()
    return f"{n} of image {b}"


# ----------------------------------------------------------------------------- torch path


def _matvec(a: Tensor, x: Tensor) -> Tensor:
    """A x for each image: (B, N, N), (B, N) -> (B, N)."""
    return torch.matmul(a, x.unsqueeze(-1)).squeeze(-1)


def _rmatvec(a: Tensor, y: Tensor) -> Tensor:
    """A^T y for each image, without transposing A in memory."""
    return torch.matmul(y.unsqueeze(-2), a).squeeze(-2)


def sinkhorn_scalings(a: Tensor, iters: int) -> tuple[Tensor, Tensor]:
    """``(r, c)`` with ``diag(r) A diag(c)`` the authors' D after ``iters`` (column, row) rounds."""
    r = a.new_ones(a.shape[:2])
    for _ in range(iters):
        c = 1.0 / _rmatvec(a, r)
        r = 1.0 / _matvec(a, c)
    return r, c


def _refine_torch(a: Tensor, v: Tensor, iters: int) -> Tensor:
    r, c = sinkhorn_scalings(a, iters)

    def sym(u: Tensor) -> Tensor:
        # (D + D^T) u / 2 with D = diag(r) A diag(c)
        return 0.5 * (r * _matvec(a, c * u) + c * _rmatvec(a, r * u))

    return sym(sym(v))


# ----------------------------------------------------------------------------- public API


def caa_refine(attn: Tensor, cam: Tensor, mask: Tensor, sinkhorn_iters: int = 3, backend: str = "auto") -> Tensor:
    """attn (B, N, N), cam (B, N), mask (B, N) bool or 0/1 float -> refined (B, N) float32
    (float64 when attn is float64: the torch path then computes in float64).

    ``refined[b] = (S_b * mask[b][None, :]) @ cam[b]`` with ``S_b`` CLIP-ES's symmetrized,
    squared Sinkhorn normalization of ``attn[b]`` (see the module doc). Computed on the inputs'
    device; not min-max normalized. Raises :class:`HarnessError` on bad shapes or
    values (NaN/inf, negative attention, an all-zero attention row or column),
    :class:`TritonUnavailableError` when ``backend="triton"`` cannot run here."""
    _check_args(attn, cam, mask, sinkhorn_iters, backend)
    B, N = cam.shape
    # resolve_backend also knows "cpu" (numba); CAA has no such path, so it is never offered.
    try:
        chosen = resolve_backend(backend, attn.device, _import_triton, lambda: False)
    except TritonUnavailableError as exc:
        raise TritonUnavailableError(f"CAA: {exc} (backend='torch' runs anywhere)") from None
    if chosen == "triton":
        max_n = _import_triton()[0].MAX_N
        wants_grad = torch.is_grad_enabled() and (attn.requires_grad or cam.requires_grad)
        if backend == "auto" and (N > max_n or wants_grad or attn.dtype == torch.float64):
            chosen = "torch"
        elif N > max_n:
            raise HarnessError(f"CAA: backend='triton' handles up to {max_n} patch tokens, got N={N}: use "
                               f"backend='torch' (or 'auto', which does)")
    if B * N == 0:
        return torch.zeros((B, N), dtype=torch.float64 if attn.dtype == torch.float64 else torch.float32,
                           device=attn.device)
    _check_values(attn, cam, mask)
    # float64 in, float64 out: a near-uniform attention leaves the refined map nearly flat, and the
    # caller's min-max normalization magnifies float32 rounding there (random weights do this)
    work = torch.float64 if attn.dtype == torch.float64 else torch.float32
    v = cam.to(work) * mask.to(work)
    if chosen == "triton":
        return _import_triton()[0].refine(attn, v.float(), sinkhorn_iters)
    return _refine_torch(attn.to(work), v, sinkhorn_iters)
