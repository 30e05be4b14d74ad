"""plugins/dips/proposals.py: DiPS's proposal stage (Algorithm 2.1), batched.

The pieces are checked against hand-built expectations and against OpenCV (Otsu, connected
components, Gaussian blur); the Triton composite (under Triton's interpreter, on CPU tensors)
against the torch one; ``score_composites`` against a loop scoring one composite per forward;
``propose`` against a per-image, per-box loop written here with OpenCV, on a classifier whose
scores are predictable, and on its fallbacks; then the errors.
"""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from harness.errors import HarnessError
from harness.fcam.cam_bank import otsu_region
from harness.fcam.pseudo_labels import otsu_threshold
from harness.kernels._backends import TritonUnavailableError
from harness.plugins.dips import _composite_triton, proposals
from harness.plugins.dips.proposals import (ProposalConfig, Proposals, composite, composite_masks, gaussian_blur,
                                            map_boxes, propose, score_composites)

pytestmark = pytest.mark.usefixtures("triton_interpreter")


# ----------------------------------------------------------------------------- references (OpenCV, one map at a time)


def cv2_boxes(m: np.ndarray, min_px: int, connectivity: int = 8) -> list[list[int]]:
    """Boxes x0, y0, x1, y1 (inclusive) of one map's Otsu components, OpenCV's label order."""
    q = (m * 255).astype(np.uint8)
    level, _ = cv2.threshold(q, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    n, _, stats, _ = cv2.connectedComponentsWithStats((q > level).astype(np.uint8), connectivity=connectivity)
    out = []
    for x, y, w, h, area in stats[1:n]:
        if area >= min_px:
            out.append([int(x), int(y), int(x + w - 1), int(y + h - 1)])
    return out


def cv2_blur(img_chw: torch.Tensor, sigma: float) -> torch.Tensor:
    hwc = np.ascontiguousarray(img_chw.permute(1, 2, 0).numpy().astype(np.float32))
    out = cv2.GaussianBlur(hwc, (0, 0), sigma)
    if out.ndim == 2:
        out = out[:, :, None]
    return torch.from_numpy(out).permute(2, 0, 1)


def naive_propose(classifier, images, labels, maps, cfg):
    """Algorithm 2.1 as written: per image, per map, per box a blur of the whole image and one
    forward; then sort, floor and the fallbacks -> list of (boxes, heads, scores) per image."""
    B, M, H, W = maps.shape
    min_px = max(1, math.ceil(round(cfg.min_area * H * W, 6)))
    sigma = cfg.blur_sigma * min(H, W)
    out = []
    with torch.no_grad():
        for b in range(B):
            cands = []
            for m in range(M):
                for x0, y0, x1, y1 in cv2_boxes(maps[b, m].numpy(), min_px, cfg.connectivity):
                    x = cv2_blur(images[b], sigma)
                    x[:, y0:y1 + 1, x0:x1 + 1] = images[b][:, y0:y1 + 1, x0:x1 + 1]
                    s = prob(classifier, x, labels[b])
                    cands.append((s, m, [x0, y0, x1, y1]))
            if not cands:
                cands = [(prob(classifier, images[b], labels[b]), M - 1, [0, 0, W - 1, H - 1])]
            cands.sort(key=lambda c: -c[0])  # stable
            kept = [c for c in cands if c[0] >= cfg.min_score][:cfg.top_k] or cands[:1]
            out.append(([c[2] for c in kept], [c[1] for c in kept], [c[0] for c in kept]))
    return out


def prob(classifier, x_chw, label) -> float:
    out = classifier(x_chw[None])
    logits = out[0] if isinstance(out, tuple) else out
    return float(logits.float().softmax(1)[0, int(label)])


def assert_matches_naive(got: Proposals, want, atol=1e-5):
    assert len(got) == len(want)
    for b, (boxes, heads, scores) in enumerate(want):
        n = len(boxes)
        assert int(got.count[b]) == n, b
        assert got.boxes[b, :n].tolist() == boxes, b
        assert got.heads[b, :n].tolist() == heads, b
        torch.testing.assert_close(got.scores[b, :n], torch.tensor(scores), rtol=0, atol=atol)
        K = got.boxes.shape[1]  # the padding
        assert (got.boxes[b, n:] == 0).all() and (got.heads[b, n:] == -1).all() and (got.scores[b, n:] == 0).all()
        assert got.boxes.shape == (len(want), K, 4)


# ----------------------------------------------------------------------------- inputs


def rect_map(h, w, rects, value=1.0):
    """A map with ``value`` inside each rectangle (x0, y0, x1, y1 inclusive), 0 elsewhere."""
    m = torch.zeros(h, w)
    for x0, y0, x1, y1 in rects:
        m[y0:y1 + 1, x0:x1 + 1] = value
    return m


def blob_maps(B, M, H, W, seed):
    """Attention-like maps in [0, 1]: Gaussian blobs and noise; heads 0 and 1 identical (their
    boxes coincide), the last map the mean of the others."""
    g = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    maps = np.zeros((B, M, H, W), dtype=np.float32)
    for b in range(B):
        for m in range(M - 1):
            if m == 1:
                maps[b, 1] = maps[b, 0]
                continue
            e = 0.1 * g.random((H, W))
            for _ in range(g.integers(1, 4)):
                cy, cx, s = g.uniform(0, H), g.uniform(0, W), g.uniform(0.05, 0.2) * H
                e += g.uniform(0.3, 1) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
            maps[b, m] = (e - e.min()) / (e.max() - e.min())
        mean = maps[b, :M - 1].mean(0)
        maps[b, M - 1] = (mean - mean.min()) / (mean.max() - mean.min())
    return torch.from_numpy(maps)


class TinyNet(nn.Module):
    """A small CNN with BatchNorm, returning (logits, features) as the harness's Classifier."""

    def __init__(self, classes=3, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Linear(8, classes)
        with torch.no_grad():  # running statistics that are not the identity
            self.body[1].running_mean.uniform_(-0.2, 0.2)
            self.body[1].running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        f = self.body(x)
        return 4 * self.head(f.mean((2, 3))), f


class Recorder(nn.Module):
    """Passes through, recording the batch size of every forward."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.batches = []

    def forward(self, x):
        self.batches.append(x.shape[0])
        return self.inner(x)


class RegionNet(nn.Module):
    """Two classes; class 1's logit is ``gain * (mean of channel 0 over the region - 0.5)``, class
    0's is 0: a bright object in the region scores high when the composite keeps it sharp."""

    def __init__(self, region, gain=20.0):
        super().__init__()
        self.region = region  # x0, y0, x1, y1 inclusive
        self.gain = gain

    def forward(self, x):
        x0, y0, x1, y1 = self.region
        v = x[:, 0, y0:y1 + 1, x0:x1 + 1].mean((1, 2))
        return torch.stack([torch.zeros_like(v), self.gain * (v - 0.5)], 1), None


# ----------------------------------------------------------------------------- map_boxes

# both component labellings: batched torch (GPUs) and OpenCV per map (auto's choice on CPU)
COMPONENTS = pytest.mark.parametrize("components", ["torch", "opencv"])


@COMPONENTS
def test_two_blobs_in_one_head_give_their_tight_boxes_in_raster_order(components):
    H, W = 32, 40
    m0 = rect_map(H, W, [(20, 12, 30, 25)])  # starts lower: numbered second
    m0[3:9, 2:10] = 1.0
    m0[3, 2] = 0.0  # not a rectangle: the box is still the tight one (first pixel (3, 3))
    m0[20, 5:8] = 0.0  # a component of 0 pixels does not exist; a hole changes nothing
    m1 = rect_map(H, W, [(0, 30, 39, 31)])
    got = map_boxes(torch.stack([m0, m1])[None], ProposalConfig(min_area=0.0), components)
    assert len(got) == 1 and got[0].dtype == torch.long
    assert got[0].tolist() == [[0, 2, 3, 9, 8], [0, 20, 12, 30, 25], [1, 0, 30, 39, 31]]


@COMPONENTS
def test_min_area_is_a_fraction_of_the_image_and_counts_the_component(components):
    H, W = 32, 32  # min_area 0.01: ceil(10.24) = 11 pixels
    m = torch.zeros(H, W)
    m[2, 2:12] = 1.0  # 10 pixels: dropped
    m[20, 2:13] = 1.0  # 11 pixels: kept
    m[10:15, 20:25] = 1.0  # 25 pixels
    cfg = ProposalConfig(min_area=0.01)
    assert map_boxes(m[None, None], cfg, components)[0].tolist() == [[0, 20, 10, 24, 14], [0, 2, 20, 12, 20]]
    # a diagonal line of 12 pixels has a 12 x 12 box but area 12: kept at 11, dropped at 13
    d = torch.zeros(H, W)
    d[torch.arange(12), torch.arange(12)] = 1.0
    assert map_boxes(d[None, None], cfg, components)[0].tolist() == [[0, 0, 0, 11, 11]]
    assert map_boxes(d[None, None], ProposalConfig(min_area=13 / 1024), components)[0].tolist() == []
    # 0.07 * 10 * 10 is 7.000000000000001 in floating point: 7 pixels, not 8
    assert proposals.min_pixels(ProposalConfig(min_area=0.07), 10, 10) == 7
    m = rect_map(10, 10, [(0, 0, 6, 0)])
    assert map_boxes(m[None, None], ProposalConfig(min_area=0.07), components)[0].tolist() == [[0, 0, 0, 6, 0]]


@COMPONENTS
def test_otsu_region_and_boxes_equal_opencv_on_attention_like_maps(components):
    maps = blob_maps(3, 4, 48, 40, seed=1)
    cfg = ProposalConfig(min_area=0.005)
    got = map_boxes(maps, cfg, components)
    min_px = math.ceil(0.005 * 48 * 40)
    total = 0
    for b in range(3):
        want = [[m] + box for m in range(4) for box in cv2_boxes(maps[b, m].numpy(), min_px)]
        assert got[b].tolist() == want
        total += len(want)
    assert total >= 12  # the maps do give several boxes each
    # the level itself, on maps whose histograms fill most of the 256 levels
    q = (maps.reshape(12, 48, 40) * 255).floor()
    region = otsu_region(maps.reshape(12, 48, 40))
    for i in range(12):
        level, _ = cv2.threshold(q[i].numpy().astype(np.uint8), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        assert torch.equal(region[i], q[i] > level)
        assert int(otsu_threshold(maps.reshape(12, 48, 40)[i:i + 1])[0]) == int(level)


@COMPONENTS
def test_a_constant_map_gives_no_box_and_a_constant_nonzero_one_the_whole_image(components):
    zero = torch.zeros(1, 2, 16, 20)
    assert map_boxes(zero, ProposalConfig(), components)[0].shape == (0, 5)
    assert cv2_boxes(zero[0, 0].numpy(), 1) == []
    half = torch.full((1, 1, 16, 20), 0.5)  # OpenCV's Otsu level of a constant image is 0
    assert map_boxes(half, ProposalConfig(), components)[0].tolist() == [[0, 0, 0, 19, 15]]
    assert cv2_boxes(half[0, 0].numpy(), 1) == [[0, 0, 19, 15]]


@COMPONENTS
def test_connectivity_on_a_diagonal_pair(components):
    m = rect_map(24, 24, [(2, 2, 7, 7), (8, 8, 13, 13)])  # the squares touch at a corner
    got = map_boxes(m[None, None], ProposalConfig(connectivity=8, min_area=0), components)
    assert got[0].tolist() == [[0, 2, 2, 13, 13]]
    assert map_boxes(m[None, None], ProposalConfig(connectivity=4, min_area=0), components)[0].tolist() == [
        [0, 2, 2, 7, 7], [0, 8, 8, 13, 13]]
    assert cv2_boxes(m.numpy(), 1, connectivity=4) == [[2, 2, 7, 7], [8, 8, 13, 13]]


@COMPONENTS
def test_images_without_boxes_keep_their_place_in_the_list(components):
    maps = torch.zeros(3, 2, 16, 16)
    maps[1, 1] = rect_map(16, 16, [(3, 4, 8, 9)])
    got = map_boxes(maps, ProposalConfig(), components)
    assert [g.tolist() for g in got] == [[], [[1, 3, 4, 8, 9]], []]


def test_components_auto_is_opencv_on_cpu(monkeypatch):
    def refuse(*a):
        raise AssertionError("the batched labelling ran for CPU maps under components='auto'")

    monkeypatch.setattr(proposals, "_boxes_torch", refuse)
    m = rect_map(16, 16, [(3, 4, 8, 9)])
    assert map_boxes(m[None, None], ProposalConfig())[0].tolist() == [[0, 3, 4, 8, 9]]


# ----------------------------------------------------------------------------- blur


@pytest.mark.parametrize("h,w,sigma", [(32, 40, 2.5), (16, 16, 6.0), (17, 9, 1.3), (20, 24, 0.3), (1, 7, 1.0),
                                       (12, 30, 10.08)])
def test_gaussian_blur_equals_opencv(h, w, sigma):
    g = torch.Generator().manual_seed(h * w)
    images = torch.randn(2, 3, h, w, generator=g) * 2
    got = gaussian_blur(images, sigma)
    assert got.shape == images.shape and got.dtype == torch.float32
    want = torch.stack([cv2_blur(img, sigma) for img in images])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_gaussian_taps_are_opencvs():
    for sigma in (0.3, 1.0, 1.3, 2.5, 6.0, 10.08):
        taps = proposals.gaussian_taps(sigma)
        assert taps.numel() == (int(round(sigma * 8 + 1)) | 1)
        want = cv2.getGaussianKernel(taps.numel(), sigma).ravel()
        np.testing.assert_allclose(taps.numpy(), want, rtol=0, atol=1e-12)


def test_gaussian_blur_keeps_the_dtype_and_a_constant_image():
    x = torch.full((1, 2, 10, 12), 0.7, dtype=torch.float16)
    got = gaussian_blur(x, 4.0)
    assert got.dtype == torch.float16 and torch.allclose(got.float(), x.float(), atol=1e-3)
    x64 = torch.randn(1, 1, 9, 9, dtype=torch.float64)
    assert gaussian_blur(x64, 1.0).dtype == torch.float64


# ----------------------------------------------------------------------------- composites


def composite_case(B=3, C=3, H=20, W=24, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(B, C, H, W, generator=g).to(dtype)
    blurred = torch.randn(B, C, H, W, generator=g).to(dtype)
    boxes = torch.tensor([[1, 2, 5, 7], [0, 0, W - 1, H - 1], [4, 4, 3, 3],  # an empty box: all blurred
                          [W - 1, H - 1, W - 1, H - 1], [3, 0, 3, H - 1], [10, 5, 20, 6], [1, 2, 5, 7]])
    owner = torch.tensor([0, 1, 2, 0, 1, 2, 2])
    return images, blurred, boxes, owner


def expected_composites(images, blurred, boxes, owner):
    out = []
    for (x0, y0, x1, y1), o in zip(boxes.tolist(), owner.tolist()):
        x = blurred[o].clone()
        if x0 <= x1 and y0 <= y1:
            x[:, y0:y1 + 1, x0:x1 + 1] = images[o][:, y0:y1 + 1, x0:x1 + 1]
        out.append(x)
    return torch.stack(out)


def test_composite_torch_equals_the_hand_built_one():
    images, blurred, boxes, owner = composite_case()
    got = composite(images, blurred, boxes, owner, backend="torch")
    assert got.shape == (7, 3, 20, 24)
    assert torch.equal(got, expected_composites(images, blurred, boxes, owner))
    assert torch.equal(got[1], images[1]) and torch.equal(got[2], blurred[2])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("size", [(20, 24), (40, 33)])  # 1320 pixels: two pixel blocks per composite
def test_composite_triton_equals_torch_exactly(dtype, size):
    images, blurred, boxes, owner = composite_case(H=size[0], W=size[1], dtype=dtype, seed=size[1])
    got = composite(images, blurred, boxes, owner, backend="triton")
    assert got.dtype == dtype
    assert torch.equal(got, composite(images, blurred, boxes, owner, backend="torch"))
    assert torch.equal(got, expected_composites(images, blurred, boxes, owner))


def test_composite_triton_reads_any_layout_and_an_empty_list():
    images, blurred, boxes, owner = composite_case(seed=3)
    cl = images.contiguous(memory_format=torch.channels_last)
    assert torch.equal(composite(cl, blurred, boxes.int(), owner.int(), backend="triton"),
                       composite(images, blurred, boxes, owner, backend="torch"))
    assert composite(images, blurred, boxes[:0], owner[:0], backend="triton").shape == (0, 3, 20, 24)


def test_composite_auto_is_torch_on_cpu(monkeypatch):
    def refuse(*a):
        raise AssertionError("the Triton path ran for CPU tensors under backend='auto'")

    monkeypatch.setattr(_composite_triton, "composite", refuse)
    images, blurred, boxes, owner = composite_case(seed=4)
    assert torch.equal(composite(images, blurred, boxes, owner), expected_composites(images, blurred, boxes, owner))


def test_composite_masks():
    images, blurred, _, owner = composite_case(seed=5)
    g = torch.Generator().manual_seed(5)
    masks = torch.rand(len(owner), 20, 24, generator=g) < 0.3
    got = composite_masks(images, blurred, masks, owner)
    for p, o in enumerate(owner.tolist()):
        want = torch.where(masks[p], images[o], blurred[o])
        assert torch.equal(got[p], want)


def test_triton_on_cpu_without_the_interpreter(monkeypatch):
    images, blurred, boxes, owner = composite_case(seed=6)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(TritonUnavailableError, match="needs CUDA tensors.*TRITON_INTERPRET=1.*backend='torch'"):
        composite(images, blurred, boxes, owner, backend="triton")
    assert composite(images, blurred, boxes, owner).shape == (7, 3, 20, 24)  # auto: torch


# ----------------------------------------------------------------------------- scoring


def scoring_case(seed=0, B=3, H=20, W=24):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(B, 3, H, W, generator=g)
    labels = torch.tensor([0, 2, 1])[:B]
    blurred = gaussian_blur(images, 2.0)
    boxes = torch.tensor([[1, 2, 5, 7], [0, 0, W - 1, H - 1], [1, 2, 5, 7], [3, 3, 12, 15], [1, 2, 5, 7],
                          [3, 3, 12, 15], [0, 0, 4, 4], [2, 6, 9, 9]])
    owner = torch.tensor([0, 0, 0, 1, 1, 2, 2, 0])
    return images, labels, blurred, boxes, owner


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_score_composites_equals_one_forward_per_composite_and_scores_duplicates_once(backend):
    images, labels, blurred, boxes, owner = scoring_case()
    net = TinyNet()
    net.train()  # scored in eval mode, and left as it was
    rec = Recorder(net)
    got = score_composites(rec, images, labels, blurred, owner, boxes=boxes, cfg=ProposalConfig(batch_size=3),
                           backend=backend)
    assert net.training
    net.eval()
    with torch.no_grad():
        want = torch.tensor([prob(net, x, labels[o]) for x, o in
                             zip(expected_composites(images, blurred, boxes, owner), owner.tolist())])
    assert got.dtype == torch.float32 and got.shape == (8,)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    # 8 composites, (image 0, [1, 2, 5, 7]) twice; the same box of another image, or (1 and 2,
    # [3, 3, 12, 15]), are other composites: 7 distinct, in chunks of at most 3
    assert sum(rec.batches) == 7 and max(rec.batches) <= 3
    assert got[0] == got[2] and not got.requires_grad and not got.is_inference()


def test_score_composites_with_masks():
    images, labels, blurred, _, owner = scoring_case(seed=1)
    g = torch.Generator().manual_seed(1)
    masks = torch.rand(len(owner), 20, 24, generator=g) < 0.5
    net = TinyNet(seed=1).eval()
    got = score_composites(net, images, labels, blurred, owner, masks=masks, cfg=ProposalConfig(batch_size=5))
    with torch.no_grad():
        want = torch.tensor([prob(net, torch.where(masks[p], images[o], blurred[o]), labels[o])
                             for p, o in enumerate(owner.tolist())])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_score_composites_accepts_plain_logits():
    images, labels, blurred, boxes, owner = scoring_case(seed=2)
    net = TinyNet(seed=2).eval()
    plain = score_composites(lambda x: net(x)[0], images, labels, blurred, owner, boxes=boxes, cfg=ProposalConfig())
    torch.testing.assert_close(plain, score_composites(net, images, labels, blurred, owner, boxes=boxes,
                                                       cfg=ProposalConfig()), rtol=0, atol=0)


# ----------------------------------------------------------------------------- propose


def region_case():
    """A dark 32 x 32 image with a bright 8 x 8 object at (12..19, 12..19); the classifier scores
    class 1 by the mean of the object's region. Maps: head 0 a blob on the object; head 1 a blob
    elsewhere; head 2 a blob on the object's left half; head 3 (the mean) the object again."""
    obj = (12, 12, 19, 19)
    images = torch.zeros(1, 3, 32, 32)
    images[:, :, 12:20, 12:20] = 1.0
    maps = torch.stack([rect_map(32, 32, [obj]), rect_map(32, 32, [(0, 0, 7, 7)]),
                        rect_map(32, 32, [(10, 12, 15, 19)]), rect_map(32, 32, [obj])])[None]
    return RegionNet(obj), images, torch.tensor([1]), maps


def test_propose_orders_by_score_and_applies_the_floor():
    net, images, labels, maps = region_case()
    cfg = ProposalConfig(top_k=3, min_score=0.5, blur_sigma=0.15, min_area=0.01)
    got = propose(net, images, labels, maps, cfg)
    # the object's box twice (heads 0 and 3, equal scores: head order), then the half box; the
    # box elsewhere leaves the object blurred and scores lowest
    assert got.count.tolist() == [3]
    assert got.heads.tolist() == [[0, 3, 2]]
    assert got.boxes[0].tolist() == [[12, 12, 19, 19], [12, 12, 19, 19], [10, 12, 15, 19]]
    sharp = torch.sigmoid(torch.tensor(20 * 0.5))  # the object untouched: mean 1
    torch.testing.assert_close(got.scores[0, :2], sharp.repeat(2))
    assert 0.5 <= got.scores[0, 2] < sharp
    assert_matches_naive(got, naive_propose(net, images, labels, maps, cfg))
    everything = propose(net, images, labels, maps, ProposalConfig(top_k=5, min_score=0.0, blur_sigma=0.15))
    assert everything.heads.tolist() == [[0, 3, 2, 1, -1]] and everything.count.tolist() == [4]
    assert everything.scores[0, 3] < 0.5  # the one the floor dropped
    floor = float(got.scores[0, 2]) + 1e-3  # between the half box and the object's box
    got = propose(net, images, labels, maps, ProposalConfig(top_k=3, min_score=floor, blur_sigma=0.15))
    assert got.count.tolist() == [2] and got.heads.tolist() == [[0, 3, -1]]
    assert got.boxes[0, 2].tolist() == [0, 0, 0, 0] and float(got.scores[0, 2]) == 0.0


def test_propose_ties_keep_the_head_and_component_order():
    # a classifier that scores everything alike; 16 heads, two boxes each: a sort that is not
    # stable would scramble them
    H = W = 32
    maps = torch.stack([rect_map(H, W, [(2 * m, 20, 2 * m, 25), (2 * m, 0, 2 * m, 5)]) for m in range(16)])[None]
    got = propose(lambda x: torch.zeros(x.shape[0], 4), torch.rand(1, 3, H, W), torch.tensor([2]), maps,
                  ProposalConfig(top_k=9, min_area=0.005))
    assert got.heads.tolist() == [[0, 0, 1, 1, 2, 2, 3, 3, 4]]
    assert got.boxes[0, :4].tolist() == [[0, 0, 0, 5], [0, 20, 0, 25], [2, 0, 2, 5], [2, 20, 2, 25]]
    torch.testing.assert_close(got.scores, torch.full((1, 9), 0.25))


def test_propose_keeps_the_best_box_when_none_reaches_the_floor():
    net, images, labels, maps = region_case()
    got = propose(net, images, labels, maps[:, [1, 2]], ProposalConfig(min_score=1.0, blur_sigma=0.15))
    assert got.count.tolist() == [1] and got.heads.tolist() == [[1, -1, -1]]
    assert got.boxes[0, 0].tolist() == [10, 12, 15, 19] and float(got.scores[0, 0]) < 1.0


def test_propose_whole_image_when_no_component():
    net = TinyNet(seed=3).eval()
    g = torch.Generator().manual_seed(3)
    images = torch.randn(3, 3, 24, 28, generator=g)
    labels = torch.tensor([2, 0, 1])
    maps = torch.zeros(3, 4, 24, 28)
    maps[1, 2] = rect_map(24, 28, [(3, 4, 10, 12)])
    maps[2, 0] = rect_map(24, 28, [(3, 4, 4, 5)])  # 4 pixels: below min_area (ceil(0.01 * 672) = 7)
    got = propose(net, images, labels, maps, ProposalConfig(min_score=0.0))
    assert got.count.tolist() == [1, 1, 1]
    assert got.boxes[:, 0].tolist() == [[0, 0, 27, 23], [3, 4, 10, 12], [0, 0, 27, 23]]
    assert got.heads[:, 0].tolist() == [3, 2, 3]
    with torch.no_grad():
        for b in (0, 2):
            assert abs(float(got.scores[b, 0]) - prob(net, images[b], labels[b])) < 1e-5
    assert_matches_naive(got, naive_propose(net, images, labels, maps, ProposalConfig(min_score=0.0)))


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_propose_equals_the_per_box_loop(backend):
    B, M, H, W = 4, 4, 40, 36
    maps = blob_maps(B, M, H, W, seed=7)
    g = torch.Generator().manual_seed(7)
    images = torch.randn(B, 3, H, W, generator=g)
    labels = torch.tensor([0, 1, 2, 1])
    net = TinyNet(seed=7).eval()
    # a floor inside the range of the scores, so it drops some boxes and keeps others
    loose = ProposalConfig(top_k=4, min_score=0.0, min_area=0.01, batch_size=5)
    scores = torch.cat([torch.tensor(s) for _, _, s in naive_propose(net, images, labels, maps, loose)])
    cfg = ProposalConfig(top_k=4, min_score=float(scores.median()), min_area=0.01, batch_size=5)
    want = naive_propose(net, images, labels, maps, cfg)
    got = propose(net, images, labels, maps, cfg, backend=backend)
    assert_matches_naive(got, want)
    assert 1 < sum(len(w[0]) for w in want) < 4 * B  # the floor did cut
    assert got.count.dtype == torch.long and got.scores.dtype == torch.float32


def test_proposals_helpers(tmp_path):
    net, images, labels, maps = region_case()
    a = propose(net, images, labels, maps, ProposalConfig(blur_sigma=0.15))
    b = propose(net, images, labels, maps[:, [1, 2]], ProposalConfig(blur_sigma=0.15, min_score=1.0))
    both = Proposals.cat([a, b])
    assert len(both) == 2 and both.count.tolist() == [3, 1] and both.boxes.shape == (2, 3, 4)
    torch.save(both.state(), tmp_path / "p.pt")
    back = Proposals.from_state(torch.load(tmp_path / "p.pt", weights_only=True))
    for f in ("boxes", "heads", "scores", "count"):
        assert torch.equal(getattr(back, f), getattr(both, f))
    boxes, heads, scores = back.of(1)
    assert boxes.tolist() == [[10, 12, 15, 19]] and heads.tolist() == [1] and scores.shape == (1,)
    assert back.to("cpu").count.device.type == "cpu"
    with pytest.raises(HarnessError, match="different top_k"):
        Proposals.cat([a, propose(net, images, labels, maps, ProposalConfig(top_k=2, blur_sigma=0.15))])
    with pytest.raises(HarnessError, match="lack count"):
        Proposals.from_state({"boxes": a.boxes, "heads": a.heads, "scores": a.scores})


def test_empty_batch():
    got = propose(TinyNet(), torch.zeros(0, 3, 8, 8), torch.zeros(0, dtype=torch.long), torch.zeros(0, 2, 8, 8),
                  ProposalConfig(top_k=2))
    assert got.boxes.shape == (0, 2, 4) and got.count.shape == (0,)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("kw,match", [
    ({"top_k": 0}, r"dips proposals.top_k=0 must be >= 1"),
    ({"top_k": 2.0}, r"dips proposals.top_k=2.0 must be >= 1"),
    ({"min_area": 1.5}, r"dips proposals.min_area=1.5 must be in \[0, 1\]"),
    ({"min_score": -0.1}, r"dips proposals.min_score=-0.1 must be in \[0, 1\]"),
    ({"blur_sigma": 0}, r"dips proposals.blur_sigma=0 must be in \(0, 1\]"),
    ({"blur_sigma": float("nan")}, r"dips proposals.blur_sigma=nan"),
    ({"connectivity": 6}, r"dips proposals.connectivity=6: use 4 or 8"),
    ({"batch_size": 0}, r"dips proposals.batch_size=0 must be >= 1"),
])
def test_config_errors(kw, match):
    with pytest.raises(HarnessError, match=match):
        ProposalConfig(**kw)


def call_propose(images=None, labels=None, maps=None, net=None, cfg=None, **kw):
    g = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 16, 16, generator=g) if images is None else images
    labels = torch.tensor([0, 1]) if labels is None else labels
    maps = torch.rand(2, 3, 16, 16, generator=g) if maps is None else maps
    return propose(net or TinyNet().eval(), images, labels, maps, cfg or ProposalConfig(), **kw)


def with_value(t, index, value):
    t = t.clone()
    t[index] = value
    return t


@pytest.mark.parametrize("call,match", [
    (lambda: call_propose(maps=torch.rand(2, 16, 16)),
     r"attention maps must be a float tensor \(B, M, H, W\).*\(2, 16, 16\)"),
    (lambda: call_propose(maps=torch.rand(2, 3, 16, 12)),
     r"maps \(2, 3, 16, 12\) do not match images \(2, 3, 16, 16\)"),
    (lambda: call_propose(maps=torch.rand(1, 3, 16, 16)), r"do not match images"),
    (lambda: call_propose(maps=torch.rand(2, 0, 16, 16)), r"no attention maps"),
    (lambda: call_propose(maps=with_value(torch.rand(2, 3, 16, 16), (1, 2, 3, 4), float("nan"))),
     r"dips: the attention maps hold NaN/inf"),
    (lambda: call_propose(maps=with_value(torch.rand(2, 3, 16, 16), (0, 0, 0, 0), float("inf"))),
     r"dips: the attention maps hold NaN/inf"),
    (lambda: call_propose(maps=torch.rand(2, 3, 16, 16) * 3), r"min-max normalized to \[0, 1\]"),
    (lambda: call_propose(images=with_value(torch.rand(2, 3, 16, 16), (0, 1, 2, 3), float("nan"))),
     r"the images hold NaN/inf"),
    (lambda: call_propose(images=torch.rand(3, 16, 16)), r"images must be a float tensor \(B, C, H, W\)"),
    (lambda: call_propose(labels=torch.tensor([0.0, 1.0])), r"labels must be an integer tensor \(B,\) = \(2,\)"),
    (lambda: call_propose(labels=torch.tensor([0, 1, 2])), r"labels must be an integer tensor"),
    (lambda: call_propose(labels=torch.tensor([0, 3])), r"labels must lie in \[0, 3\)"),
    (lambda: call_propose(backend="nope"), r"backend='nope': use one of \('auto', 'torch', 'triton'\)"),
    (lambda: call_propose(cfg={"top_k": 3}), r"cfg must be a ProposalConfig"),
    (lambda: call_propose(net=lambda x: torch.zeros(x.shape[0])), r"classifier must return logits \(N, classes\)"),
    (lambda: call_propose(net=lambda x: torch.full((x.shape[0], 3), float("nan"))), r"logits hold NaN/inf"),
    (lambda: gaussian_blur(torch.rand(1, 3, 8, 8), 0.0), r"blur sigma must be > 0"),
    (lambda: map_boxes(torch.rand(1, 2, 8, 8), ProposalConfig(), "numba"), r"components='numba': use one of"),
    (lambda: composite(*composite_case()[:2], torch.zeros(7, 3, dtype=torch.long), composite_case()[3]),
     r"boxes must be an integer tensor \(P, 4\) = \(7, 4\)"),
    (lambda: composite(*composite_case()[:3], torch.tensor([0, 1, 2, 0, 1, 2, 3])),
     r"owner indices must lie in \[0, 3\)"),
    (lambda: composite(composite_case()[0], composite_case()[1][:2], *composite_case()[2:]),
     r"blurred .* must match images"),
    (lambda: call_propose(images=torch.rand(2, 3, 0, 16), maps=torch.rand(2, 3, 0, 16)), r"images have no pixels"),
    (lambda: composite_masks(*composite_case()[:2], torch.ones(7, 20, 20, dtype=torch.bool), composite_case()[3]),
     r"masks must be \(P, H, W\) = \(7, 20, 24\)"),
    (lambda: score_composites(TinyNet(), *scoring_case()[:3], scoring_case()[4], cfg=ProposalConfig()),
     r"exactly one of boxes="),
])
def test_errors(call, match):
    with pytest.raises(HarnessError, match=match):
        call()
