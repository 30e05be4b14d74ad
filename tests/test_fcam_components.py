"""Batched connected components (harness/fcam/components.py) and the CAM bank's regions of
interest built on them, against OpenCV / numpy written out per frame here.

- labelling: the same partition as cv2.connectedComponents on random masks of several sizes
  and densities, both connectivities, and on worst cases for label propagation (serpentine,
  spiral, maze) at 224 x 224, with the documented numbering (1 + first pixel's index);
- region statistics against numpy; the densest component on hand-built maps and its ties;
- the CAM bank's roi modes ("largest", "largest-box", "densest") against a per-frame host
  reference (cv2 Otsu + cv2 components, the host path the bank used before).
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from harness.data.base import Frame, Split
from harness.errors import HarnessError
from harness.evaluation.box_accuracy import otsu_level
from harness.fcam import components
from harness.fcam.cam_bank import CamBank, largest_component, otsu_region, roi_of
from harness.fcam.components import component_stats, densest_component, label_components


def first_pixel_labels(mask: np.ndarray, connectivity: int) -> np.ndarray:
    """OpenCV's components renumbered as documented: 1 + the linear index of the first pixel."""
    n, lab = cv2.connectedComponents(mask.astype(np.uint8), connectivity=connectivity)
    out = np.zeros(mask.shape, np.int64)
    flat = lab.ravel()
    for k in range(1, n):
        out[lab == k] = np.flatnonzero(flat == k)[0] + 1
    return out


def assert_same_labels(masks: np.ndarray, connectivity: int):
    got = label_components(torch.from_numpy(masks), connectivity).numpy()
    for m, g in zip(masks, got):
        np.testing.assert_array_equal(g, first_pixel_labels(m, connectivity))


# ------------------------------------------------------------------ worst-case shapes


def serpentine(h: int, w: int) -> np.ndarray:
    """Full rows joined at alternating ends: one path of ~h * w / 2 pixels."""
    m = np.zeros((h, w), bool)
    m[::2] = True
    for r in range(1, h, 2):
        m[r, w - 1 if (r // 2) % 2 == 0 else 0] = True
    return m


def spiral(n: int) -> np.ndarray:
    """A one-pixel-wide square spiral walking inwards, walls two pixels apart."""
    m = np.zeros((n, n), bool)
    y, x, dy, dx = 0, 0, 0, 1
    m[y, x] = True
    while True:
        moved = False
        for _ in range(4):  # turn until a step (and the one after it) stays off the path
            ny, nx, fy, fx = y + dy, x + dx, y + 2 * dy, x + 2 * dx
            if 0 <= ny < n and 0 <= nx < n and not m[ny, nx] and not (0 <= fy < n and 0 <= fx < n and m[fy, fx]):
                y, x = ny, nx
                m[y, x] = True
                moved = True
                break
            dy, dx = dx, -dy
        if not moved:
            return m


def maze(n: int, seed: int) -> np.ndarray:
    """A random spanning tree (depth-first) on an n/2 x n/2 cell grid: long winding branches."""
    rng = np.random.default_rng(seed)
    c = n // 2
    m = np.zeros((n, n), bool)
    seen = np.zeros((c, c), bool)
    stack = [(0, 0)]
    seen[0, 0] = m[0, 0] = True
    while stack:
        y, x = stack[-1]
        nb = [(y + a, x + b) for a, b in ((0, 1), (1, 0), (0, -1), (-1, 0))
              if 0 <= y + a < c and 0 <= x + b < c and not seen[y + a, x + b]]
        if not nb:
            stack.pop()
            continue
        ny, nx = nb[rng.integers(len(nb))]
        seen[ny, nx] = m[2 * ny, 2 * nx] = m[y + ny, x + nx] = True
        stack.append((ny, nx))
    return m


# ------------------------------------------------------------------ labelling


@pytest.mark.parametrize("connectivity", [4, 8])
@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (9, 1), (5, 7), (31, 33), (64, 48)])
def test_labels_match_opencv_on_random_masks(shape, connectivity):
    rng = np.random.default_rng(shape[0] * 1000 + shape[1] * 10 + connectivity)
    densities = np.array([0.0, 0.1, 0.3, 0.45, 0.6, 0.8, 1.0])
    masks = rng.random((len(densities), *shape)) < densities[:, None, None]
    assert_same_labels(masks, connectivity)


@pytest.mark.parametrize("connectivity", [4, 8])
def test_labels_match_opencv_on_smooth_blobs(connectivity):
    g = torch.Generator().manual_seed(connectivity)
    low = torch.rand(6, 1, 9, 11, generator=g)
    maps = torch.nn.functional.interpolate(low, size=(70, 90), mode="bilinear", align_corners=False)[:, 0]
    assert_same_labels((maps > torch.linspace(0.3, 0.7, 6)[:, None, None]).numpy(), connectivity)


def test_worst_cases_at_224_are_exact_and_converge_in_few_iterations():
    shapes = [serpentine(224, 224), serpentine(224, 224).T, serpentine(224, 224)[::-1, ::-1],
              spiral(224), maze(224, 0), maze(224, 1)[::-1]]
    for conn in (4, 8):
        for m in shapes:
            m = np.ascontiguousarray(m)
            assert cv2.connectedComponents(m.astype(np.uint8), connectivity=4)[0] == 2  # one long path
            assert_same_labels(m[None], conn)
            # plain min-propagation would need one iteration per path pixel (~25000 here)
            assert components.last_iterations <= 24


def test_labelling_checks_its_inputs():
    with pytest.raises(HarnessError, match="connectivity"):
        label_components(torch.ones(1, 3, 3, dtype=torch.bool), 6)
    with pytest.raises(HarnessError, match="B, H, W"):
        label_components(torch.ones(3, 3, dtype=torch.bool))
    assert label_components(torch.zeros(2, 4, 5, dtype=torch.bool)).eq(0).all()


# ------------------------------------------------------------------ statistics and selections


def test_region_stats_match_numpy():
    rng = np.random.default_rng(3)
    masks = rng.random((4, 20, 30)) < 0.5
    values = rng.random((4, 20, 30))
    labels = label_components(torch.from_numpy(masks), 8)
    area, total = component_stats(labels, torch.from_numpy(values).float())
    lab = labels.numpy()
    for i in range(4):
        for k in range(20 * 30 + 1):
            sel = lab[i] == k
            assert area[i, k] == sel.sum()
            assert total[i, k].item() == pytest.approx(values[i][sel].astype(np.float32).sum(), rel=1e-6, abs=1e-6)


def blobs(h=20, w=20):
    maps = torch.zeros(h, w)
    mask = torch.zeros(h, w, dtype=torch.bool)
    return maps, mask


def test_densest_is_the_small_bright_blob_not_the_big_dim_one():
    maps, mask = blobs()
    maps[0:10, 0:15], mask[0:10, 0:15] = 0.4, True  # big and dim, first in raster order
    maps[15:17, 15:18], mask[15:17, 15:18] = 0.9, True  # small and bright
    maps[2, 3] = 1.0  # the brightest pixel lies in the dim blob: density is the mean, not the peak
    out = densest_component(maps[None], mask[None])[0]
    assert out.sum() == 6 and out[15:17, 15:18].all()


def test_densest_ties_go_to_the_larger_then_the_first_component():
    maps, mask = blobs()
    maps[0:2, 0:2], mask[0:2, 0:2] = 0.5, True  # 4 pixels, first in raster order
    maps[5:8, 5:8], mask[5:8, 5:8] = 0.5, True  # 9 pixels, same mean
    assert densest_component(maps[None], mask[None])[0].sum() == 9
    maps, mask = blobs()
    maps[0:3, 10:13], mask[0:3, 10:13] = 0.5, True  # 9 pixels, first pixel at (0, 10)
    maps[5:8, 0:3], mask[5:8, 0:3] = 0.5, True  # 9 pixels, first pixel at (5, 0): later
    out = densest_component(maps[None], mask[None])[0]
    assert out.sum() == 9 and out[0:3, 10:13].all()


def test_densest_connectivity_batch_and_empty_masks():
    maps, mask = blobs()
    maps[0:2, 0:2], mask[0:2, 0:2] = 0.9, True
    maps[2, 2], mask[2, 2] = 0.1, True  # joins the bright square only 8-connected
    maps[10:12, 10:12], mask[10:12, 10:12] = 0.8, True
    empty = torch.zeros_like(mask)
    out = densest_component(torch.stack([maps, maps, maps]), torch.stack([mask, empty, mask]), connectivity=4)
    assert out[0].sum() == 4 and out[0][0:2, 0:2].all()  # the bright square alone: 0.9
    assert not out[1].any()
    out8 = densest_component(maps[None], mask[None], connectivity=8)[0]
    assert out8.sum() == 4 and out8[10:12, 10:12].all()  # the joined one averages 0.74 < 0.8
    with pytest.raises(HarnessError, match="differ"):
        densest_component(maps[None], mask[None, :5])


def test_device_largest_matches_opencv_including_ties():
    rng = np.random.default_rng(5)
    masks = rng.random((40, 12, 15)) < rng.uniform(0.2, 0.7, (40, 1, 1))
    tie = np.zeros((12, 15), bool)
    tie[0:2, 8:10] = tie[5:7, 0:2] = tie[9:11, 4:6] = True  # three 4-pixel components
    masks = np.concatenate([masks, tie[None], np.zeros((1, 12, 15), bool)])
    got = components.largest_component(torch.from_numpy(masks), 4).numpy()
    for m, g in zip(masks, got):
        np.testing.assert_array_equal(g, largest_component(m))


# ------------------------------------------------------------------ the CAM bank's regions


def reference_roi(m: np.ndarray, mode: str) -> np.ndarray:
    """The per-frame host path: cv2 Otsu on uint8(map * 255), then cv2 components."""
    q = (np.clip(m, 0, 1) * 255).astype(np.uint8)
    region = q > otsu_level(q)
    if mode in ("largest", "largest-box"):
        comp = largest_component(region)
        if mode == "largest-box" and comp.any():
            ys, xs = np.nonzero(comp)
            comp = np.zeros_like(comp)
            comp[ys.min():ys.max() + 1, xs.min():xs.max() + 1] = True
        return comp
    n, lab = cv2.connectedComponents(region.astype(np.uint8), connectivity=8)
    if n <= 1:
        return np.zeros_like(region)
    # the densest: highest mean, then the larger, then the first label (OpenCV's raster order)
    keys = [(m[lab == k].astype(np.float64).mean(), (lab == k).sum(), -k) for k in range(1, n)]
    return lab == -max(keys)[2]


def random_bank(n=24, low=(7, 9), size=(40, 52), seed=0) -> CamBank:
    g = torch.Generator().manual_seed(seed)
    m = torch.rand(n, *low, generator=g) ** 3  # peaky: several Otsu components
    m[3] = 0  # a blank CAM (min-max normalized to zeros): empty region
    lo, hi = m.amin((1, 2), keepdim=True), m.amax((1, 2), keepdim=True)
    m = torch.where(hi > lo, (m - lo) / (hi - lo).clamp_min(1e-12), torch.zeros_like(m)).half()
    return CamBank(m, torch.arange(n)[:, None], size, None)


def test_otsu_region_matches_opencv_and_keeps_its_constant_map_rule():
    bank = random_bank(40, seed=1)
    maps = bank.get(torch.arange(40))
    maps = torch.cat([maps, torch.full((1, *maps.shape[1:]), 0.5), torch.zeros(1, *maps.shape[1:])])
    region = otsu_region(maps).numpy()
    for m, r in zip(maps.numpy(), region):
        q = (np.clip(m, 0, 1) * 255).astype(np.uint8)
        np.testing.assert_array_equal(r, q > otsu_level(q))
    assert region[-2].all() and not region[-1].any()  # OpenCV's level 0 for a constant image


@pytest.mark.parametrize("mode", ["largest", "largest-box", "densest"])
def test_cam_bank_rois_match_the_per_frame_host_path(mode):
    bank = random_bank()
    rois = bank._rois(mode, batch_size=5)  # batches that do not divide the frames
    maps = bank.get(torch.arange(len(bank.maps))).numpy()
    for i, m in enumerate(maps):
        np.testing.assert_array_equal(rois[i].numpy(), reference_roi(m, mode), err_msg=f"frame {i}")
    assert not rois[3].any()
    assert roi_of(torch.from_numpy(maps), mode).equal(rois)


class MapSource:
    """A 'CAM source' returning the frame's mean colour as its map."""
    needs_grad = False

    def __call__(self, model, images, classes):
        return images.mean(1), torch.zeros(len(images), 2)


def test_cam_bank_build_accepts_densest_and_rejects_unknown_modes():
    rng = np.random.default_rng(0)
    frames = [Frame(f"v/s0/f{t}", 0, "v", "s0", t) for t in range(5)]
    imgs = [rng.integers(0, 255, (16, 20, 3), dtype=np.uint8) for _ in frames]
    split = Split("train", frames, lambda i: imgs[i])
    bank = CamBank.build(torch.nn.Identity(), MapSource(), split, "cpu", roi="densest", batch_size=2, progress=False)
    assert bank.roi.shape == (5, 16, 20) and bank.roi.any()
    flipped = torch.tensor([True, False])
    assert bank.get_roi(torch.tensor([0, 1]), flipped)[0].equal(bank.roi[0].flip(-1))
    with pytest.raises(HarnessError, match="densest"):
        CamBank.build(torch.nn.Identity(), MapSource(), split, "cpu", roi="biggest", progress=False)
