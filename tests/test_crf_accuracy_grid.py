"""The dense-CRF filter's accuracy bar: what ``method="auto"`` computes (the losses' default) is
within 2% relative Frobenius error of the float64 exact sum on every case of the grid

    12 skimage images x sizes 64, 128, 224 x colour-only and 5-D kernels x smooth and CAM-like P.

The images cover what broke the linear grid: grey (camera, brick, checkerboard: r = g = b),
dark (hubble_deep_field), flat colours (logo, colorwheel), and ordinary photos. At 64 px every
row of W P is compared, at 128 and 224 every 2nd and 4th row (each row still sums over all N
points: an evenly spread subset of rows estimates the full error). 64 px runs in the fast
tests; 128 and 224 are marked slow (the float64 exact reference is O(N^2)).

Also checked here: the operator auto picks on these inputs is the grid (not the exact path),
and the classic lattice, which the authors' code uses, is NOT within the bar (its scale is not
exact's): the test would notice if auto ever fell back to it.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from harness.kernels import crf
from harness.kernels.crf import crf_features, gaussian_filter

IMAGES = ["astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "retina", "colorwheel", "camera", "brick",
          "logo", "checkerboard", "immunohistochemistry"]
ROW_STEP = {64: 1, 128: 2, 224: 4}


def image(name: str, size: int) -> torch.Tensor:
    """(1, 3, size, size) float64 in [0, 255]: grey images stacked to RGB, RGBA cut to RGB."""
    from skimage import data

    im = getattr(data, name)()
    if im.ndim == 2:
        im = np.stack([im] * 3, -1)
    im = cv2.resize(np.ascontiguousarray(im[..., :3]), (size, size), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(im).permute(2, 0, 1)[None].double()


def probs(size: int) -> torch.Tensor:
    """(1, size*size, 4): smooth-field P (2 channels) and CAM-like P (a sharp blob plus a little
    texture, 2 channels)."""
    g = torch.Generator().manual_seed(size)
    z = torch.randn(1, 1, size, size, generator=g, dtype=torch.float64)
    k = max(3, size // 8) | 1
    for _ in range(2):
        z = torch.nn.functional.avg_pool2d(z, k, 1, k // 2, count_include_pad=False)
    z = z / z.std()
    smooth = torch.sigmoid(2 * z)
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64),
                            indexing="ij")
    r = ((yy - 0.45 * size) ** 2 + (xx - 0.55 * size) ** 2).sqrt() / size
    cam = torch.sigmoid((0.25 - r) * 40 + 0.5 * z[0, 0])[None, None]
    p = torch.cat([1 - smooth, smooth, 1 - cam, cam], 1)
    return p.permute(0, 2, 3, 1).reshape(1, size * size, 4).contiguous()


def check_case(size: int, kernel: str) -> None:
    P = probs(size)
    rows = torch.arange(0, size * size, ROW_STEP[size])
    failures, worst = [], 0.0
    for name in IMAGES:
        f = crf_features(image(name, size), 15.0, 100.0 if kernel == "5-D" else None)
        exact = crf._ExactPlan(f).apply(P, rows=rows)  # float64
        f32, p32 = f.float(), P.float()
        plan = crf._make_plan(f32, p32, "auto", crf.DEFAULT_CELL, "auto", "auto", crf.LOWRANK_TOL, crf.DEFAULT_BUDGET)
        assert isinstance(plan, crf._GridPlan), f"auto chose {type(plan).__name__} for {name} {size}"
        got = gaussian_filter(f32, p32).double()[:, rows]
        for label, ch in (("smooth", slice(0, 2)), ("CAM-like", slice(2, 4))):
            err = float((got[..., ch] - exact[..., ch]).norm() / exact[..., ch].norm())
            worst = max(worst, err)
            if err > 0.02:
                failures.append(f"{name} {label}: {100 * err:.2f}%")
            assert err > 1e-5, "an approximation that matches exact to 1e-5 means exact was compared with itself"
    assert not failures, f"{size} px {kernel}: above 2% of exact: {failures}"
    assert worst < 0.015  # measured worst: 0.8% (cell 0.6); a regression shows here before the bar


@pytest.mark.parametrize("kernel", ["colour", "5-D"])
def test_auto_within_2_percent_at_64(kernel):
    check_case(64, kernel)


@pytest.mark.slow
@pytest.mark.parametrize("size", [128, 224])
@pytest.mark.parametrize("kernel", ["colour", "5-D"])
def test_auto_within_2_percent(size, kernel):
    check_case(size, kernel)


def test_the_classic_lattice_is_not_within_the_bar():
    """Why auto does not use the lattice for scale='exact': on a grey image it is far off."""
    f = crf_features(image("camera", 64), 15.0, 100.0).float()
    P = probs(64).float()
    exact = crf._ExactPlan(f.double()).apply(P.double())
    lat = gaussian_filter(f, P, method="lattice").double()
    ratio = float((lat * exact).sum() / (exact * exact).sum())
    assert 0.3 < ratio < 0.9
    assert float((lat - exact).norm() / exact.norm()) > 0.1
