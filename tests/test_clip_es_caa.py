"""plugins/clip_es/caa.py: CLIP-ES's CAA refinement (class-aware attention affinity).

Both paths are checked against a reference written here as the authors' explicit-matrix code
(one image at a time, float64): the torch path directly, the Triton path (under Triton's
interpreter, on CPU tensors) against the torch path; then invariants of the refinement, two
hand-computed golden cases and the errors.
"""
from __future__ import annotations

import pytest
import torch

from harness.errors import HarnessError
from harness.kernels._backends import TritonUnavailableError
from harness.plugins.clip_es import _caa_triton, caa
from harness.plugins.clip_es.caa import caa_refine

RTOL = 1e-5
ATOL = 1e-7  # refined values are O(1/N); atol only covers exact zeros (all-zero masks)


# ----------------------------------------------------------------------------- the reference


def reference_one(attn, cam, mask, iters):
    """The authors' code for one image, float64: ``(refined (N,), D (N, N), S (N, N))``."""
    D = attn.double()
    for _ in range(iters):
        D = D / D.sum(dim=0, keepdim=True)
        D = D / D.sum(dim=1, keepdim=True)
    S = (D + D.T) / 2
    S2 = S @ S
    refined = (S2 * mask.double()[None, :]) @ cam.double()
    return refined, D, S


def reference(attn, cam, mask, iters):
    return torch.stack([reference_one(a, c, m, iters)[0] for a, c, m in zip(attn, cam, mask)])


def random_case(B, N, seed):
    """Attention as a ViT gives it (softmax over N + 1 tokens, CLS row and column dropped, so
    rows do not sum to 1; a non-contiguous view), a cam in [0, 1], and masks: image 0 all
    zero, image 1 all one, the others random."""
    g = torch.Generator().manual_seed(seed)
    attn = (2 * torch.randn(B, N + 1, N + 1, generator=g)).softmax(dim=-1)[:, 1:, 1:]
    cam = torch.rand(B, N, generator=g)
    mask = torch.rand(B, N, generator=g) < 0.5
    mask[0] = False
    if B > 1:
        mask[1] = True
    return attn, cam, mask


CASES = [(N, iters) for N in (1, 7, 16, 49, 196) for iters in (1, 3, 5)]


# ----------------------------------------------------------------------------- torch path


@pytest.mark.parametrize("N,iters", CASES)
def test_torch_path_equals_the_authors_code(N, iters):
    attn, cam, mask = random_case(3, N, seed=N * 10 + iters)
    got = caa_refine(attn, cam, mask, sinkhorn_iters=iters, backend="torch")
    assert got.dtype == torch.float32 and got.shape == (3, N)
    torch.testing.assert_close(got.double(), reference(attn, cam, mask, iters), rtol=RTOL, atol=ATOL)


def test_float_mask_and_other_dtypes():
    """float64 attention is refined in float64; anything else in float32; masks bool or 0/1."""
    attn, cam, mask = random_case(3, 16, seed=1)
    want = caa_refine(attn, cam, mask, backend="torch")
    got = caa_refine(attn, cam.double(), mask.float(), backend="torch")
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL)
    got = caa_refine(attn.half(), cam, mask.long(), backend="torch")
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, caa_refine(attn.half().float(), cam, mask), rtol=RTOL, atol=ATOL)
    got = caa_refine(attn.double(), cam, mask.float(), backend="torch")
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, reference(attn, cam, mask, 3), rtol=1e-12, atol=1e-15)


def test_auto_on_cpu_is_torch_and_keeps_the_gradient():
    attn, cam, mask = random_case(2, 7, seed=2)
    attn = attn.clone().requires_grad_(True)
    got = caa_refine(attn, cam, mask)
    got.sum().backward()
    a64 = attn.detach().double().requires_grad_(True)
    reference(a64, cam, mask, 3).sum().backward()
    torch.testing.assert_close(attn.grad.double(), a64.grad, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- invariants


@pytest.mark.parametrize("iters", [1, 3, 5])
def test_scalings_give_the_authors_row_stochastic_D(iters):
    """D = diag(r) A diag(c): the authors' D, whose rows sum to 1 after the last (row) step."""
    attn, _, _ = random_case(3, 49, seed=iters)
    r, c = caa.sinkhorn_scalings(attn.float(), iters)
    D = r[:, :, None] * attn * c[:, None, :]
    for b in range(3):
        _, D_ref, S_ref = reference_one(attn[b], torch.zeros(49), torch.zeros(49), iters)
        torch.testing.assert_close(D_ref.sum(dim=1), torch.ones(49, dtype=torch.float64), rtol=1e-12, atol=0)
        torch.testing.assert_close(S_ref, S_ref.T, rtol=0, atol=0)
        torch.testing.assert_close(D[b].double(), D_ref, rtol=RTOL, atol=0)


def refinement_matrix(attn, backend):
    """The (N, N) matrix of the map cam -> refined (all-one mask), column j from the one-hot
    cam e_j; the attention is expanded (a stride-0 batch), not copied."""
    N = attn.shape[0]
    eye = torch.eye(N)
    return caa_refine(attn.expand(N, N, N), eye, torch.ones(N, N, dtype=torch.bool), backend=backend).T


def check_symmetric_S2(backend):
    attn, _, _ = random_case(1, 16, seed=3)
    M = refinement_matrix(attn[0], backend)
    _, _, S = reference_one(attn[0], torch.zeros(16), torch.zeros(16), 3)
    torch.testing.assert_close(M.double(), S @ S, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(M, M.T, rtol=RTOL, atol=ATOL)


def check_zero_mask_linearity_and_batching(backend):
    attn, cam, mask = random_case(4, 49, seed=4)
    zero = caa_refine(attn, cam, torch.zeros_like(mask), backend=backend)
    assert torch.equal(zero, torch.zeros_like(zero))
    cam2 = torch.rand(cam.shape, generator=torch.Generator().manual_seed(5))
    one, two = caa_refine(attn, cam, mask, backend=backend), caa_refine(attn, cam2, mask, backend=backend)
    mixed = caa_refine(attn, 2 * cam - 0.5 * cam2, mask, backend=backend)
    torch.testing.assert_close(mixed, 2 * one - 0.5 * two, rtol=1e-4, atol=1e-6)
    singles = torch.cat([caa_refine(attn[b:b + 1], cam[b:b + 1], mask[b:b + 1], backend=backend) for b in range(4)])
    torch.testing.assert_close(one, singles, rtol=RTOL, atol=ATOL)


# Golden: attn = [[1, 1], [1, 1]]: D = [[.5, .5], [.5, .5]] after any number of rounds, S = D,
# S @ S = D, so cam = [1, 0] gives [.5, .5].
#
# attn = [[1, 2], [3, 4]], one round. Columns (sums 4, 6): [[1/4, 1/3], [3/4, 2/3]]; rows
# (sums 7/12, 17/12): D = [[3/7, 4/7], [9/17, 8/17]]. S = (D + D^T) / 2 with
# S01 = (4/7 + 9/17) / 2 = (68 + 63) / 238 = 131/238, so over 238:
# S = [[102, 131], [131, 112]] / 238. cam = [1, 1] with mask = [1, 0] is v = [1, 0]:
# S v = [102, 131] / 238, S (S v) = [102^2 + 131^2, 131 (102 + 112)] / 238^2
# = [27565, 28034] / 56644.
GOLDEN = [
    ([[1.0, 1.0], [1.0, 1.0]], [1.0, 0.0], [1.0, 1.0], 1, [0.5, 0.5]),
    ([[1.0, 1.0], [1.0, 1.0]], [1.0, 0.0], [1.0, 1.0], 3, [0.5, 0.5]),
    ([[1.0, 2.0], [3.0, 4.0]], [1.0, 1.0], [1.0, 0.0], 1, [27565 / 56644, 28034 / 56644]),
]


def check_golden(backend):
    for attn, cam, mask, iters, want in GOLDEN:
        got = caa_refine(torch.tensor([attn]), torch.tensor([cam]), torch.tensor([mask]), sinkhorn_iters=iters,
                         backend=backend)
        torch.testing.assert_close(got, torch.tensor([want]), rtol=RTOL, atol=0)
        torch.testing.assert_close(reference_one(torch.tensor(attn), torch.tensor(cam), torch.tensor(mask), iters)[0],
                                   torch.tensor(want, dtype=torch.float64), rtol=1e-12, atol=0)


def test_torch_symmetric_S2():
    check_symmetric_S2("torch")


def test_torch_zero_mask_linearity_and_batching():
    check_zero_mask_linearity_and_batching("torch")


def test_torch_golden():
    check_golden("torch")


def test_empty_batch_and_no_tokens():
    assert caa_refine(torch.ones(0, 4, 4), torch.ones(0, 4), torch.ones(0, 4)).shape == (0, 4)
    a64 = torch.ones(0, 4, 4, dtype=torch.float64)
    assert caa_refine(a64, torch.ones(0, 4), torch.ones(0, 4)).dtype == torch.float64
    assert caa_refine(torch.ones(2, 0, 0), torch.ones(2, 0), torch.ones(2, 0), backend="torch").shape == (2, 0)


# ----------------------------------------------------------------------------- Triton path (interpreter)


@pytest.mark.usefixtures("triton_interpreter")
class TestTriton:
    @pytest.mark.parametrize("N,iters", [c for c in CASES if c[0] <= 64] + [(196, 3)])
    def test_equals_torch_path(self, N, iters):
        attn, cam, mask = random_case(3, N, seed=N * 10 + iters)
        got = caa_refine(attn, cam, mask, sinkhorn_iters=iters, backend="triton")
        assert got.dtype == torch.float32 and got.shape == (3, N)
        torch.testing.assert_close(got, caa_refine(attn, cam, mask, sinkhorn_iters=iters, backend="torch"),
                                   rtol=RTOL, atol=ATOL)

    def test_other_dtypes_and_strides(self):
        attn, cam, mask = random_case(3, 16, seed=6)
        for a in (attn.half(), attn.contiguous(), attn[:1].expand(3, 16, 16), attn.double()):
            # float64 too: the kernel computes in float32 (only the torch path has float64)
            torch.testing.assert_close(caa_refine(a, cam, mask, backend="triton"),
                                       caa_refine(a, cam, mask, backend="torch").float(), rtol=RTOL, atol=ATOL)

    def test_symmetric_S2(self):
        check_symmetric_S2("triton")

    def test_zero_mask_linearity_and_batching(self):
        check_zero_mask_linearity_and_batching("triton")

    def test_golden(self):
        check_golden("triton")

    def test_too_many_tokens(self, monkeypatch):
        monkeypatch.setattr(_caa_triton, "MAX_N", 8)
        attn, cam, mask = random_case(1, 9, seed=7)
        with pytest.raises(HarnessError, match="up to 8 patch tokens, got N=9.*backend='torch'"):
            caa_refine(attn, cam, mask, backend="triton")
        assert caa_refine(attn, cam, mask).shape == (1, 9)  # auto: torch

    def test_checks_the_values_too(self):
        attn, cam, mask = random_case(2, 4, seed=8)
        with pytest.raises(HarnessError, match="attention has NaN/inf"):
            caa_refine(with_value(attn, (0, 0, 0), float("nan")), cam, mask, backend="triton")


# ----------------------------------------------------------------------------- errors


def bad(attn=None, cam=None, mask=None, **kw):
    a, c, m = random_case(2, 4, seed=8)
    return caa_refine(a if attn is None else attn, c if cam is None else cam, m if mask is None else mask,
                      **{"backend": "torch", **kw})


def with_value(t, index, value):
    t = t.clone()
    t[index] = value
    return t


@pytest.mark.parametrize("call,match", [
    (lambda a: bad(attn=with_value(a, (1, 2, 3), float("nan"))), "attention has NaN/inf"),
    (lambda a: bad(attn=with_value(a, (0, 0, 0), float("inf"))), "attention has NaN/inf"),
    (lambda a: bad(attn=with_value(a, (0, 1, 2), -0.1)), "attention has negative values.*not logits"),
    (lambda a: bad(attn=with_value(a, (1, slice(None), 2), 0.0)), "all-zero column \\(token 2 of image 1\\)"),
    (lambda a: bad(attn=with_value(a, (0, 3), 0.0)), "all-zero row \\(token 3 of image 0\\)"),
    (lambda a: bad(attn=a[:, :, :3]), r"attn must be \(B, N, N\).*\(2, 4, 3\)"),
    (lambda a: bad(attn=a[0]), r"attn must be \(B, N, N\)"),
    (lambda a: bad(cam=torch.rand(2, 5)), r"cam must be \(B, N\) = \(2, 4\).*\(2, 5\).*row-major"),
    (lambda a: bad(mask=torch.ones(2, 2, 2)), r"mask must be \(B, N\)"),
    (lambda a: bad(cam=with_value(torch.rand(2, 4), (0, 1), float("nan"))), "cam has NaN/inf"),
    (lambda a: bad(mask=torch.full((2, 4), 0.5)), "mask must be bool or 0/1"),
    (lambda a: bad(sinkhorn_iters=0), "sinkhorn_iters=0: use an int >= 1"),
    (lambda a: bad(sinkhorn_iters=2.0), "sinkhorn_iters=2.0: use an int >= 1"),
    (lambda a: bad(backend="nope"), r"backend='nope': use one of \('auto', 'torch', 'triton'\)"),
    (lambda a: bad(backend="cpu"), r"backend='cpu': use one of"),
])
def test_errors(call, match):
    attn, _, _ = random_case(2, 4, seed=8)
    with pytest.raises(HarnessError, match=match):
        call(attn.contiguous())


def test_triton_on_cpu_without_the_interpreter(monkeypatch):
    """The flag is read at call time: dropping it after Triton ran interpreted still refuses."""
    attn, cam, mask = random_case(1, 4, seed=9)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    caa_refine(attn, cam, mask, backend="triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(TritonUnavailableError, match="needs CUDA tensors.*TRITON_INTERPRET=1.*backend='torch'"):
        caa_refine(attn, cam, mask, backend="triton")
    assert caa_refine(attn, cam, mask).shape == (1, 4)  # auto: torch
