"""harness.kernels.crf: the Gaussian-affinity filter behind the dense CRF losses.

The exact path is checked against a naive float64 numpy sum; the bilateral grid against the
exact path on natural images (<= 2% relative Frobenius error); the grid's backends (numba on
CPU, Triton under the interpreter, plain torch) against each other; the autograd Functions
with gradcheck; the loss's gradient against autograd of the naive quadratic form.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from harness.errors import HarnessError
from harness.kernels import crf
from harness.kernels.crf import crf_features, dense_crf_loss, gaussian_filter

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("triton_interpreter")


# ----------------------------------------------------------------------------- inputs


def naive_filter(features, values):
    """float64 numpy: sum_j exp(-|f_i - f_j|^2 / 2) P_j, per group."""
    f = np.asarray(features, np.float64)
    v = np.asarray(values, np.float64)
    out = np.empty_like(v)
    for b in range(f.shape[0]):
        d2 = ((f[b][:, None, :] - f[b][None, :, :]) ** 2).sum(-1)
        out[b] = np.exp(-0.5 * d2) @ v[b]
    return out


def natural_image(name: str, size: int) -> torch.Tensor:
    """(1, 3, size, size) float32 in [0, 255]: a skimage sample resized with INTER_AREA."""
    from skimage import data

    img = cv2.resize(getattr(data, name)(), (size, size), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(img).permute(2, 0, 1)[None].float()


def smooth_probs(B: int, H: int, W: int, seed: int) -> torch.Tensor:
    """(B, H*W, 2) realistic soft foreground maps: sigmoid of smoothed noise, and 1 - it."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(B, 1, H, W, generator=g)
    k = max(3, H // 8) | 1
    z = torch.nn.functional.avg_pool2d(z, k, 1, k // 2, count_include_pad=False)
    z = torch.nn.functional.avg_pool2d(z, k, 1, k // 2, count_include_pad=False)
    p1 = torch.sigmoid(2 * z / z.std())
    return torch.cat([1 - p1, p1], 1).permute(0, 2, 3, 1).reshape(B, H * W, 2).contiguous()


def rel_err(a, b) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


_EXACT_CACHE: dict = {}


def exact_reference(name, size, xy):
    """(features, probs, rows, exact W P at those rows) for an image, computed once per session.
    At 128 px every 4th pixel's row (a quarter of the O(N^2) work; the relative error over an
    evenly spread subset of rows estimates the full one), at 64 px all rows."""
    key = (name, size, xy)
    if key not in _EXACT_CACHE:
        feats = crf_features(natural_image(name, size), 15.0, 100.0 if xy else None)
        P = smooth_probs(1, size, size, seed=size)
        rows = torch.arange(0, size * size, 4 if size > 64 else 1)
        _EXACT_CACHE[key] = feats, P, rows, crf._ExactPlan(feats).apply(P, rows=rows)
    return _EXACT_CACHE[key]


# ----------------------------------------------------------------------------- exact path


@pytest.mark.parametrize("d", [1, 3, 5])
def test_exact_equals_naive_dense_sum(d):
    g = torch.Generator().manual_seed(d)
    f = torch.rand(2, 37, d, generator=g, dtype=torch.float64) * 3
    v = torch.rand(2, 37, 3, generator=g, dtype=torch.float64)
    expected = naive_filter(f, v)
    got = gaussian_filter(f, v, method="exact")
    assert got.dtype == torch.float64 and got.shape == (2, 37, 3)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=0)
    got32 = gaussian_filter(f.float(), v.float(), method="exact")
    assert got32.dtype == torch.float32
    np.testing.assert_allclose(got32.double().numpy(), expected, rtol=2e-5, atol=0)


def test_exact_float32_is_close_to_float64_on_128x128(monkeypatch):
    monkeypatch.setattr(crf, "_EXACT_CHUNK_ELEMENTS", 1 << 22)  # several row chunks
    feats, P, rows, E32 = exact_reference("astronaut", 128, False)
    rows = rows[::4]  # float64 on every 16th pixel's row
    E64 = crf._ExactPlan(feats.double()).apply(P.double(), rows=rows)
    E32 = crf._ExactPlan(feats).apply(P, rows=rows)
    assert rel_err(E32, E64) < 2e-5  # measured 3e-6
    assert float(((E32.double() - E64) / E64).abs().max()) < 2e-4


def test_exact_rows_subset_and_auto_picks_exact():
    g = torch.Generator().manual_seed(1)
    f = torch.rand(1, crf.AUTO_EXACT_POINTS, 5, generator=g) * 4
    v = torch.rand(1, crf.AUTO_EXACT_POINTS, 2, generator=g)
    full = crf._ExactPlan(f).apply(v)
    torch.testing.assert_close(crf._ExactPlan(f).apply(v, rows=slice(50, 120)), full[:, 50:120])
    idx = torch.tensor([crf.AUTO_EXACT_POINTS - 1, 0, 7, 7])
    torch.testing.assert_close(crf._ExactPlan(f).apply(v, rows=idx), full[:, idx])
    torch.testing.assert_close(gaussian_filter(f, v), full)  # auto: exact for small inputs


# ----------------------------------------------------------------------------- grid accuracy


@pytest.mark.parametrize("size", [64, 128])
@pytest.mark.parametrize("name", ["astronaut", "chelsea", "coffee"])
@pytest.mark.parametrize("xy", [False, True], ids=["rgb", "xyrgb"])
def test_grid_within_2_percent_of_exact(name, size, xy):
    feats, P, rows, E = exact_reference(name, size, xy)
    G = gaussian_filter(feats, P, method="grid")[:, rows]
    err = rel_err(G, E)
    assert err <= 0.02, f"{name} {size} {'5-D' if xy else 'colour'}: {100 * err:.2f}%"
    assert err >= 1e-4  # it is an approximation: a zero error would mean the test compares exact to exact


def test_bspline_splat_keeps_position_and_adds_a_constant_variance():
    """Why the grid is accurate on grey and flat-colour images: wherever a point falls in its
    cell, its three weights per axis sum to 1, their mean is the point and their variance 1/4
    cell^2 (a linear splat's is t (1 - t): 0 on a node, 1/4 mid-cell, which the blur cannot
    compensate when many pixels share a sub-cell position)."""
    g = torch.Generator().manual_seed(3)
    feat = torch.rand(2, 500, 3, generator=g) * 7
    feat[0, :50] = feat[0, :1]  # many points at one position, as on a flat-colour image
    plan = crf._make_grid_plan(feat, "torch", 0.6, (), crf.LOWRANK_TOL)
    base, w = crf._coords_torch(plan.gfeat, plan.lo, plan.inv_cell, plan.dims, plan.strides)
    u = (plan.gfeat.double() - plan.lo.double()[:, None]) / 0.6 + crf.GRID_MARGIN
    first = torch.stack([(base // s) % n for s, n in zip(plan.strides, plan.dims)], -1).double()
    nodes = first[..., None] + torch.arange(3, dtype=torch.float64)
    w = w.double()
    torch.testing.assert_close(w.sum(-1), torch.ones_like(u))
    mean = (w * nodes).sum(-1)
    torch.testing.assert_close(mean, u, atol=2e-5, rtol=0)
    var = (w * (nodes - u[..., None]) ** 2).sum(-1)
    torch.testing.assert_close(var, torch.full_like(var, crf.SPLAT_VARIANCE), atol=2e-5, rtol=0)
    assert bool((w >= 0).all()) and int(first.min()) >= 0
    assert bool((first + 2 < torch.tensor(plan.dims, dtype=torch.float64)).all())  # inside the grid


def test_5d_plain_grid_and_lowrank_spatial_axes():
    """The 5-D kernel's spatial axes span 1.3 sigma at 128 px: low-rank by default; the plain
    243-node grid is also within 2%; the low-rank error shrinks as lowrank_tol does."""
    feats, P, rows, E = exact_reference("chelsea", 128, True)
    plan = crf._make_grid_plan(feats, "cpu", 0.6, "auto", crf.LOWRANK_TOL)
    assert plan.smooth_axes == (0, 1) and plan.grid_axes == (2, 3, 4) and plan.basis.shape[2] >= 3
    lowrank = rel_err(gaussian_filter(feats, P, method="grid")[:, rows], E)
    finer = rel_err(gaussian_filter(feats, P, method="grid", lowrank_tol=1e-4)[:, rows], E)
    plain = rel_err(gaussian_filter(feats, P, method="grid", smooth_axes=())[:, rows], E)
    assert finer < lowrank < 0.01 and plain < 0.01


def test_all_axes_lowrank_when_features_span_little():
    g = torch.Generator().manual_seed(2)
    f = torch.rand(2, 500, 3, generator=g, dtype=torch.float64) * 1.5
    v = torch.rand(2, 500, 2, generator=g, dtype=torch.float64)
    plan = crf._make_grid_plan(f, "torch", 0.5, "auto", 1e-4)
    assert plan.grid_axes == () and plan.basis.shape[2] <= crf.MAX_LOWRANK_TERMS
    got = gaussian_filter(f, v, method="grid", lowrank_tol=1e-4)
    assert rel_err(got, torch.from_numpy(naive_filter(f, v))) < 1e-3


# ----------------------------------------------------------------------------- backends agree


def _random_inputs(B, N, d, K, seed, dtype=torch.float32, span=6.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(B, N, d, generator=g, dtype=dtype) * span,
            torch.rand(B, N, K, generator=g, dtype=dtype))


@pytest.mark.parametrize("B,N,d,K,smooth", [
    (1, 3000, 3, 2, "auto"),  # the colour-only fast kernel (C = 2)
    (3, 500, 3, 5, "auto"),  # generic channel count
    (2, 400, 5, 2, "auto"),  # 5-D, every axis on the grid (span 6 > 4)
    (2, 400, 5, 2, (0, 1)),  # 5-D with two low-rank axes: grid channels Q * K
    (2, 300, 1, 1, "auto"),
    (2, 300, 2, 3, ()),
    (1, 300, 4, 2, ()),
])
def test_cpu_fast_path_equals_torch_path(B, N, d, K, smooth):
    f, v = _random_inputs(B, N, d, K, seed=B * 100 + d)
    ref = gaussian_filter(f, v, method="grid", backend="torch", smooth_axes=smooth)
    got = gaussian_filter(f, v, method="grid", backend="cpu", smooth_axes=smooth)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))
    f64, v64 = f.double(), v.double()
    ref64 = gaussian_filter(f64, v64, method="grid", backend="torch", smooth_axes=smooth)
    got64 = gaussian_filter(f64, v64, method="grid", backend="cpu", smooth_axes=smooth)
    torch.testing.assert_close(got64, ref64, rtol=1e-10, atol=1e-10 * float(ref64.abs().max()))


def test_cpu_fast_path_threads_split_points_and_groups(monkeypatch):
    """Private grids per chunk of points (one group), and whole groups per thread."""
    from harness.kernels import _crf_numba as nb

    for B in (1, 5):
        f, v = _random_inputs(B, 2000, 3, 2, seed=B, span=10.0)
        monkeypatch.setattr(nb, "workers", lambda: 1)
        one = gaussian_filter(f, v, method="grid", backend="cpu")
        monkeypatch.setattr(nb, "workers", lambda: 3)
        monkeypatch.setattr(nb, "_MIN_POINTS_PER_THREAD", 100)
        tasks = nb._tasks(B, 2000)
        assert len(tasks) == 3 and (tasks[0][3] < 2000) == (B == 1)  # B=1: split points
        three = gaussian_filter(f, v, method="grid", backend="cpu")
        torch.testing.assert_close(three, one, rtol=1e-5, atol=1e-5 * float(one.abs().max()))
        monkeypatch.undo()


@pytest.mark.parametrize("d,K,smooth", [(3, 2, "auto"), (4, 3, ()), (5, 2, (0, 1)), (2, 1, ())])  # 4-D plain: 81 nodes (5-D: 243, 40 s interpreted)
def test_triton_kernels_equal_torch_path(d, K, smooth):
    f, v = _random_inputs(2, 100, d, K, seed=d * 10 + K)  # one program per group: the interpreter is slow
    ref = gaussian_filter(f, v, method="grid", backend="torch", smooth_axes=smooth)
    got = gaussian_filter(f, v, method="grid", backend="triton", smooth_axes=smooth)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


def test_triton_splat_and_slice_directly():
    from harness.kernels import _crf_triton as kt

    f, v = _random_inputs(2, 257, 3, 3, seed=5)
    plan = crf._make_grid_plan(f, "torch", 0.5, (), 1e-3)
    base, frac = crf._coords_torch(plan.gfeat, plan.lo, plan.inv_cell, plan.dims, plan.strides)
    grid_ref = crf._splat_torch(base, frac, plan.strides, plan.cells, v)
    grid = kt.splat(plan.gfeat, plan.lo, plan.inv_cell, crf.GRID_MARGIN, plan.dims, plan.strides, v)
    torch.testing.assert_close(grid, grid_ref, rtol=1e-5, atol=1e-5)
    assert float(grid.sum()) == pytest.approx(float(v.sum()), rel=1e-5)  # splat weights sum to 1
    g = torch.rand_like(grid)
    torch.testing.assert_close(kt.slice_(plan.gfeat, plan.lo, plan.inv_cell, crf.GRID_MARGIN, plan.dims,
                                         plan.strides, g),
                               crf._slice_torch(base, frac, plan.strides, g), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("method,backend,d", [
    ("exact", "auto", 3), ("grid", "torch", 3), ("grid", "cpu", 3), ("grid", "cpu", 5), ("grid", "torch", 2),
])
def test_gradcheck_filter(method, backend, d):
    g = torch.Generator().manual_seed(3)
    span = 2.0 if d == 5 else 5.0  # d = 5: every axis short, some go low-rank
    f = torch.rand(2, 8, d, generator=g, dtype=torch.float64) * span
    v = torch.rand(2, 8, 2, generator=g, dtype=torch.float64, requires_grad=True)

    def fn(x):
        return gaussian_filter(f, x, method=method, backend=backend)

    assert torch.autograd.gradcheck(fn, (v,))
    if backend != "torch":  # double backward: the backward is the same Function again
        assert torch.autograd.gradgradcheck(fn, (v,), fast_mode=True)


def test_grid_operator_is_symmetric():
    """<u, W v> = <W u, v> for the approximate W, which is why its backward is itself."""
    f, _ = _random_inputs(1, 800, 5, 1, seed=7, span=5.0, dtype=torch.float64)
    g = torch.Generator().manual_seed(8)
    u, v = torch.rand(2, 1, 800, 2, generator=g, dtype=torch.float64)
    for smooth in ("auto", (), (0, 1)):
        Wu = gaussian_filter(f, u, method="grid", backend="cpu", smooth_axes=smooth)
        Wv = gaussian_filter(f, v, method="grid", backend="cpu", smooth_axes=smooth)
        assert float((u * Wv).sum()) == pytest.approx(float((Wu * v).sum()), rel=1e-12)


def naive_loss(probs, features, weight):
    """-weight * sum_b sum_k P_bk^T W_b P_bk / B with W dense (autograd through everything)."""
    B = probs.shape[0]
    d2 = ((features[:, :, None, :] - features[:, None, :, :]) ** 2).sum(-1)
    W = torch.exp(-0.5 * d2)
    return -weight * (probs * (W @ probs)).sum() / B


def test_loss_value_and_gradient_exact():
    g = torch.Generator().manual_seed(4)
    f = torch.rand(3, 40, 5, generator=g, dtype=torch.float64) * 3
    p = torch.rand(3, 40, 2, generator=g, dtype=torch.float64)
    p1 = p.clone().requires_grad_(True)
    p2 = p.clone().requires_grad_(True)
    loss = dense_crf_loss(p1, f, 2e-3, method="exact")
    ref = naive_loss(p2, f, 2e-3)
    assert float(loss.detach()) == pytest.approx(float(ref.detach()), rel=1e-12)
    loss.backward()
    ref.backward()
    torch.testing.assert_close(p1.grad, p2.grad, rtol=1e-12, atol=0)
    WP = gaussian_filter(f, p, method="exact")
    torch.testing.assert_close(p1.grad, -2 * 2e-3 * WP / 3, rtol=1e-12, atol=0)
    assert torch.autograd.gradcheck(lambda x: dense_crf_loss(x, f, 0.5, method="exact"),
                                    (p.clone().requires_grad_(True),), fast_mode=True)


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_loss_gradient_grid_is_minus_2_WP_over_B(backend):
    images = natural_image("coffee", 32) * torch.tensor([1.0, 0.9])[:, None, None, None]  # 2 images
    feats = crf_features(images)
    p = smooth_probs(2, 32, 32, seed=1).requires_grad_(True)
    loss = dense_crf_loss(p, feats, 0.25, method="grid", backend=backend)
    loss.backward()
    WP = gaussian_filter(feats, p.detach(), method="grid", backend=backend)
    torch.testing.assert_close(p.grad, -2 * 0.25 * WP / 2, rtol=1e-6, atol=0)
    assert float(loss.detach()) == pytest.approx(float(-0.25 * (p.detach() * WP).sum() / 2), rel=1e-5)
    # normalize=False drops the / B
    unnorm = dense_crf_loss(p.detach(), feats, 0.25, method="grid", backend=backend, normalize=False)
    assert float(unnorm) == pytest.approx(2 * float(loss.detach()), rel=1e-6)


def test_loss_costs_one_filter_application(monkeypatch):
    calls = []
    orig = crf._GridPlan.apply
    monkeypatch.setattr(crf._GridPlan, "apply", lambda self, v: calls.append(1) or orig(self, v))
    f, v = _random_inputs(1, 2000, 3, 2, seed=9)
    v.requires_grad_(True)
    dense_crf_loss(v, f, 1.0, method="grid").backward()
    assert len(calls) == 1
    gaussian_filter(f, v, method="grid").sum().backward()
    assert len(calls) == 3  # the plain filter: forward + backward


def test_loss_accepts_bkhw_probs():
    img = natural_image("chelsea", 16)
    p = smooth_probs(1, 16, 16, seed=2)
    bkhw = p.reshape(1, 16, 16, 2).permute(0, 3, 1, 2)
    f = crf_features(img)
    assert float(dense_crf_loss(bkhw, f, 1.0)) == pytest.approx(float(dense_crf_loss(p, f, 1.0)), rel=1e-6)


# ----------------------------------------------------------------------------- groups


def _frames(n, size=32):
    names = ["astronaut", "chelsea", "coffee"]
    imgs = [natural_image(names[i % 3], size) for i in range(n)]
    return torch.cat([im if i < 3 else im.flip(-1) for i, im in enumerate(imgs)])


@pytest.mark.parametrize("method,backend", [("grid", "cpu"), ("grid", "torch"), ("exact", "auto")])
def test_colour_loss_of_a_group_ignores_frame_order(method, backend):
    frames = _frames(4)
    P = smooth_probs(4, 32, 32, seed=3)
    losses = []
    for perm in ([0, 1, 2, 3], [2, 0, 3, 1], [3, 2, 1, 0]):
        f = crf_features(frames[perm], 15.0, None).reshape(1, -1, 3)
        p = P[perm].reshape(1, -1, 2)
        losses.append(float(dense_crf_loss(p, f, 1.0, method=method, backend=backend)))
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    assert losses[2] == pytest.approx(losses[0], rel=1e-5)


@pytest.mark.parametrize("xy", [None, 100.0])
@pytest.mark.parametrize("method,backend", [("grid", "cpu"), ("grid", "torch"), ("exact", "auto")])
def test_groups_in_one_call_equal_separate_calls(xy, method, backend):
    frames = _frames(3, 24)
    f = crf_features(frames, 15.0, xy)
    P = smooth_probs(3, 24, 24, seed=4)
    together = gaussian_filter(f, P, method=method, backend=backend)
    for b in range(3):
        alone = gaussian_filter(f[b:b + 1], P[b:b + 1], method=method, backend=backend)
        torch.testing.assert_close(together[b:b + 1], alone, rtol=1e-5, atol=1e-5 * float(alone.abs().max()))


def test_padding_a_group_with_zero_values_changes_nothing():
    """The documented way to batch groups of unequal size."""
    f = crf_features(_frames(2, 24), 15.0, None).reshape(1, -1, 3)
    P = smooth_probs(2, 24, 24, seed=5).reshape(1, -1, 2)
    fp = torch.cat([f, f[:, :100]], 1)  # pad points copy real features
    Pp = torch.cat([P, torch.zeros(1, 100, 2)], 1)
    for method in ("grid", "exact"):
        ref = gaussian_filter(f, P, method=method)
        got = gaussian_filter(fp, Pp, method=method)[:, :f.shape[1]]
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))
        assert float(dense_crf_loss(Pp, fp, 1.0, method=method)) == pytest.approx(
            float(dense_crf_loss(P, f, 1.0, method=method)), rel=1e-5)


# ----------------------------------------------------------------------------- features


def test_crf_features_layout():
    img = torch.arange(2 * 3 * 2 * 3, dtype=torch.float32).reshape(2, 3, 2, 3)
    f5 = crf_features(img, 15.0, 100.0)
    assert f5.shape == (2, 6, 5) and f5.dtype == torch.float32
    # pixel (y=1, x=2) of image 1 is row 1 * 3 + 2 = 5
    torch.testing.assert_close(f5[1, 5], torch.cat([torch.tensor([2.0, 1.0]) / 100, img[1, :, 1, 2] / 15]))
    f3 = crf_features(img, 10.0, None)
    assert f3.shape == (2, 6, 3)
    torch.testing.assert_close(f3, f5[:, :, 2:] * 1.5)
    assert crf_features(img.double()).dtype == torch.float64
    assert crf_features(img.to(torch.uint8)).dtype == torch.float32


# ----------------------------------------------------------------------------- errors


def test_bad_inputs_are_clear_harness_errors():
    f, v = _random_inputs(2, 10, 3, 2, seed=0)
    with pytest.raises(HarnessError, match="do not match"):
        gaussian_filter(f, v[:, :9])
    with pytest.raises(HarnessError, match="do not match"):
        gaussian_filter(f, v[:1])
    with pytest.raises(HarnessError, match=r"3-D \(B, N, d\)"):
        gaussian_filter(f[0], v)
    with pytest.raises(HarnessError, match=r"d=6 .* 1 to 5"):
        gaussian_filter(torch.rand(2, 10, 6), v)
    with pytest.raises(HarnessError, match="d=0"):
        gaussian_filter(torch.rand(2, 10, 0), v)
    with pytest.raises(HarnessError, match="float32 or float64, got torch.int64"):
        gaussian_filter(f.long(), v)
    with pytest.raises(HarnessError, match=r"float16 \(cast with .float\(\)\)"):
        gaussian_filter(f, v.half())
    with pytest.raises(HarnessError, match="torch.Tensor"):
        gaussian_filter(f.numpy(), v)
    bad = f.clone()
    bad[1, 4, 2] = float("nan")
    for method, backend in (("exact", "auto"), ("grid", "cpu"), ("grid", "torch")):
        with pytest.raises(HarnessError, match="NaN or inf"):
            gaussian_filter(bad, v, method=method, backend=backend)
    bad[1, 4, 2] = float("inf")
    for method, backend in (("exact", "auto"), ("grid", "cpu"), ("grid", "torch")):
        with pytest.raises(HarnessError, match="NaN or inf"):
            dense_crf_loss(v, bad, 1.0, method=method, backend=backend)
    with pytest.raises(HarnessError, match="method"):
        gaussian_filter(f, v, method="bilateral")
    with pytest.raises(HarnessError, match="backend"):
        gaussian_filter(f, v, method="grid", backend="cuda")
    with pytest.raises(HarnessError, match="cell"):
        gaussian_filter(f, v, method="grid", cell=2.0)
    with pytest.raises(HarnessError, match="cell has 2 entries"):
        gaussian_filter(f, v, method="grid", cell=(0.5, 0.5))
    with pytest.raises(HarnessError, match="smooth_axes"):
        gaussian_filter(f, v, method="grid", smooth_axes=(3,))
    with pytest.raises(HarnessError, match="images must be a"):
        crf_features(torch.rand(2, 4, 8, 8))
    with pytest.raises(HarnessError, match="do not match"):
        dense_crf_loss(v[:, :5], f, 1.0)


def test_per_axis_cell():
    feats, P, rows, E = exact_reference("coffee", 64, False)
    # a plain grid (no low-rank axis: its truncation error would hide the cell's)
    fine = rel_err(gaussian_filter(feats, P, method="grid", cell=(0.3, 0.3, 0.3), smooth_axes=()), E)
    mixed = rel_err(gaussian_filter(feats, P, method="grid", cell=(0.3, 0.7, 0.3), smooth_axes=()), E)
    coarse = rel_err(gaussian_filter(feats, P, method="grid", cell=0.7, smooth_axes=()), E)
    assert fine < mixed < coarse  # the error grows steeply with the cell


def test_empty_inputs():
    assert gaussian_filter(torch.rand(0, 5, 3), torch.rand(0, 5, 2)).shape == (0, 5, 2)
    assert gaussian_filter(torch.rand(2, 0, 3), torch.rand(2, 0, 2)).shape == (2, 0, 2)
    assert float(dense_crf_loss(torch.rand(0, 5, 2), torch.rand(0, 5, 3), 1.0)) == 0.0


# ----------------------------------------------------------------------------- backend choice


def test_auto_backend_on_cpu_is_numba():
    assert crf._resolve_backend("auto", torch.device("cpu")) == "cpu"
    assert crf._resolve_backend("torch", torch.device("cpu")) == "torch"


def test_triton_on_cpu_without_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    f, v = _random_inputs(1, 10, 3, 2, seed=0)
    with pytest.raises(crf.TritonUnavailableError, match="needs CUDA tensors.*TRITON_INTERPRET=1"):
        gaussian_filter(f, v, method="grid", backend="triton")


def test_lazy_imports_and_missing_numba():
    """Importing and the torch/exact paths import neither Triton nor numba; without numba,
    backend='auto' falls back to torch on CPU and backend='cpu' says why it cannot run."""
    code = ("import sys, torch\n"
            "from harness.kernels import crf\n"
            "from harness.errors import HarnessError\n"
            "f = torch.rand(1, 5000, 3) * 10; v = torch.rand(1, 5000, 2)\n"
            "crf.gaussian_filter(f, v, method='grid', backend='torch'); crf.gaussian_filter(f[:, :99], v[:, :99])\n"
            "assert 'triton' not in sys.modules and 'numba' not in sys.modules, sorted(sys.modules)\n"
            "sys.modules['numba'] = None\n"  # makes `import numba` raise ImportError
            "assert crf._resolve_backend('auto', torch.device('cpu')) == 'torch'\n"
            "assert crf.gaussian_filter(f, v).shape == (1, 5000, 2)\n"
            "try:\n"
            "    crf.gaussian_filter(f, v, method='grid', backend='cpu')\n"
            "except HarnessError as e:\n"
            "    assert 'needs numba' in str(e), e\n"
            "else:\n"
            "    raise AssertionError('no error')\n")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


COMPILE_CHECK = """
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, compile
from harness.kernels import _crf_triton as kt

splat, slc = kt.kernels()
assert type(splat).__name__ == "JITFunction", type(splat)
target = GPUTarget("cuda", 90, 32)

def build(kernel, types, consts):
    names = list(kernel.arg_names)
    signature = dict(zip(names, types)) | {k: "constexpr" for k in consts}
    src = ASTSource(fn=kernel, signature=signature,
                    constexprs={(names.index(k),): v for k, v in consts.items()})
    assert compile(src, target=target).asm["cubin"]

scalars = ["i32", "i32", "i32", "fp32", "i64", "i64", "i64", "i64"]
for dt, dg in (("fp32", 3), ("fp64", 2)):
    ptrs = ["*fp32", "*fp32", "*fp32", "*i32", "*i64", f"*{dt}", f"*{dt}"]
    for kernel in (splat, slc):
        build(kernel, ptrs + scalars, dict(DG=dg, BLOCK=kt.BLOCK, C_P2=32))
"""


def test_kernels_compile_for_cuda():
    """The interpreter accepts code the compiler rejects: compile the splat and slice kernels to
    cubins for an sm_90 (H100) target (no GPU needed), in a fresh process (see
    tests/test_kernel_cam.py for why)."""
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_DEFAULT_FP_FUSION": "1"}
    subprocess.run([sys.executable, "-c", COMPILE_CHECK], cwd=ROOT, env=env, check=True)


def test_loss_double_backward_is_refused_not_wrong():
    f, v = _random_inputs(1, 50, 3, 2, seed=11)
    v.requires_grad_(True)
    (g,) = torch.autograd.grad(dense_crf_loss(v, f, 1.0, method="exact"), v, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|does not require grad|not have a grad_fn"):
        torch.autograd.grad(g.sum(), v)


# ----------------------------------------------------------------------------- auto, budget, checked input


def test_auto_is_exact_only_for_a_few_hundred_points():
    f, v = _random_inputs(3, crf.AUTO_EXACT_POINTS, 3, 2, seed=7)
    assert isinstance(crf._make_plan(f, v, "auto", crf.DEFAULT_CELL, "auto", "auto", crf.LOWRANK_TOL,
                                     crf.DEFAULT_BUDGET), crf._ExactPlan)
    f, v = _random_inputs(1, crf.AUTO_EXACT_POINTS + 1, 3, 2, seed=7)
    assert isinstance(crf._make_plan(f, v, "auto", crf.DEFAULT_CELL, "auto", "auto", crf.LOWRANK_TOL,
                                     crf.DEFAULT_BUDGET), crf._GridPlan)
    assert 100 <= crf.AUTO_EXACT_POINTS <= 1000  # "never exact above a few hundred pixels"


def _small_sigma(B=1, N=2000, seed=0):
    """Colour features at sigma_rgb = 1: a (255 / 0.6)^3 ~ 77M-node grid, ~600 MiB per channel."""
    g = torch.Generator().manual_seed(seed)
    img = torch.randint(0, 256, (B, 3, 1, N), generator=g).float()
    return crf_features(img, 1.0, None), torch.rand(B, N, 2, generator=g)


def test_grid_over_budget_is_an_error_when_asked_for():
    f, v = _small_sigma()
    with pytest.raises(HarnessError, match=r"method='grid'.*MiB.*budget is 512 MiB.*larger sigma"):
        gaussian_filter(f, v, method="grid")
    with pytest.raises(HarnessError, match="budget"):
        gaussian_filter(f, v, method="grid", budget=-5)


def test_auto_moves_off_the_grid_when_it_does_not_fit(monkeypatch):
    f, v = _small_sigma(N=2000)
    # few pairs: exact (within the bar)
    plan = crf._make_plan(f, v, "auto", crf.DEFAULT_CELL, "auto", "auto", crf.LOWRANK_TOL, crf.DEFAULT_BUDGET)
    assert isinstance(plan, crf._ExactPlan)
    torch.testing.assert_close(gaussian_filter(f, v), gaussian_filter(f, v, method="exact"))
    # too many pairs for exact: the lattice, with a warning that says what changes
    monkeypatch.setattr(crf, "AUTO_EXACT_FALLBACK_PAIRS", 1000)
    monkeypatch.setattr(crf, "_lattice_fallback_warned", False)
    with pytest.warns(UserWarning, match=r"budget is 512 MiB.*permutohedral lattice.*0.5-0.9x"):
        out = gaussian_filter(f, v)
    torch.testing.assert_close(out, gaussian_filter(f, v, method="lattice"))


def test_grid_budget_bounds_the_groups_filtered_at_once(monkeypatch):
    """Many groups: they are filtered in batches that fit the budget, same result."""
    f, v = _random_inputs(6, 400, 3, 2, seed=8, span=12.0)
    whole = gaussian_filter(f, v, method="grid", backend="torch")
    plan = crf._make_grid_plan(f, "torch", crf.DEFAULT_CELL, "auto", crf.LOWRANK_TOL)
    one = plan.group_bytes(2, 4)
    calls = []
    real = crf._GridPlan._apply_groups
    monkeypatch.setattr(crf._GridPlan, "_apply_groups", lambda self, g, x: calls.append(x.shape[0]) or real(self, g, x))
    out = gaussian_filter(f, v, method="grid", backend="torch", budget=max(2 ** 20, 2 * one))
    assert max(calls) * one <= max(2 ** 20, 2 * one) and sum(calls) == 6
    torch.testing.assert_close(out, whole)


def test_nan_or_inf_in_probs_is_named():
    f, v = _random_inputs(2, 300, 3, 2, seed=9)
    v[1, 17, 0] = float("nan")
    for method in ("auto", "exact", "grid", "lattice"):
        with pytest.raises(HarnessError, match=r"probs contain NaN or inf \(1 of 1200 values\)"):
            dense_crf_loss(v, f, 1.0, method=method)
    v[1, 17, 0] = float("inf")
    with pytest.raises(HarnessError, match="values contain NaN or inf"):
        gaussian_filter(f, v)


def test_images_in_the_wrong_range_are_refused():
    img = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.9  # in [0, 0.9]
    with pytest.raises(HarnessError, match=r"lie in \[0, 0\.9\d*\].*\[0, 255\].*Multiply by 255"):
        crf_features(img)
    normalized = (img - 0.45) / 0.225
    with pytest.raises(HarnessError, match="normalized with a mean and std"):
        crf_features(normalized)
    with pytest.raises(HarnessError, match=r"\[0, 255\]"):
        crf_features(img * 65535)
    bad = img * 255
    bad[0, 1, 2, 3] = float("nan")
    with pytest.raises(HarnessError, match="NaN or inf"):
        crf_features(bad)
    # accepted: 0-255 frames, a black frame, a binary 0/1 frame, a little resampling overshoot
    crf_features(img * 255)
    crf_features(torch.zeros(1, 3, 4, 4))
    crf_features(torch.randint(0, 2, (1, 3, 4, 4)).float())
    crf_features(img * 255 * 1.05 - 3)
