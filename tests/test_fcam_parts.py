"""The F-CAM family's shared parts: pseudo-label sampling, CAM bank, clip batches, loss terms."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from harness.data.base import Frame, Split
from harness.errors import HarnessError
from harness.fcam.cam_bank import CamBank, largest_component, previous_frames
from harness.fcam.clips import ClipBatchSampler, pick, shots
from harness.fcam.pseudo_labels import (IGNORE, SamplerConfig, _otsu_floor, otsu_threshold, region_levels, regions,
                                        sample_labels)


# ------------------------------------------------------------------ pseudo-labels


def test_otsu_matches_opencv_and_a_constant_map_has_no_foreground():
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(6, 17, 23, generator=g) ** torch.linspace(0.5, 3, 6)[:, None, None]
    t = otsu_threshold(maps)
    for i in range(6):
        q = (maps[i].numpy() * 255).astype(np.uint8)
        level, _ = cv2.threshold(q, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        assert int(t[i]) == int(level)
    assert int(otsu_threshold(torch.full((1, 5, 5), 0.3))[0]) == 255


def bimodal(b=2, h=12, w=16):
    m = torch.full((b, h, w), 0.1)
    m[:, 3:7, 4:9] = 0.9  # the object: 20 pixels
    m[:, 0, 0] = 0.0
    return m


def test_regions_foreground_is_above_otsu_background_bottom_or_complement():
    m = bimodal()
    fg, bg = regions(m, SamplerConfig(bg="complement"))
    assert fg[0].sum() == 20 and fg[0, 3:7, 4:9].all()
    assert (bg == ~fg).all()
    fg, bg = regions(m, SamplerConfig(bg="bottom", bg_p=0.25))
    # the lowest 25% of 192 pixels: 48 pixels; all background pixels tie at 0.1 so every one <= the 48th value
    assert bg[0, 0, 0] and not (bg & fg).any()
    fg2, _ = regions(m + torch.arange(12 * 16).reshape(12, 16) * 1e-5, SamplerConfig(fg_top_p=0.5))
    assert fg2[0].sum() == 10  # the top half of the 20 object pixels, by activation


def test_seeds_fall_in_their_regions_k_each_and_dilate():
    m = bimodal(b=3)
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        lab = sample_labels(m, SamplerConfig(k=2, bg="complement"), generator=g)
        fg, bg = regions(m, SamplerConfig(bg="complement"))
        assert ((lab == 1).sum((1, 2)) == 2).all() and ((lab == 0).sum((1, 2)) == 2).all()
        assert fg[lab == 1].all() and bg[lab == 0].all()
    lab = sample_labels(m, SamplerConfig(k=1, dilation=3, bg="complement"), generator=g)
    n_fg = int((lab == 1).sum())
    assert 3 * 4 <= n_fg <= 3 * 9  # a 3x3 patch per image, clipped at borders or by conflicts


def test_conflicts_become_unknown_and_constant_maps_get_no_seed():
    m = torch.zeros(1, 4, 4)
    m[0, 1, 1] = 1.0  # one foreground pixel next to background ones
    g = torch.Generator().manual_seed(0)
    lab = sample_labels(m, SamplerConfig(k=16, dilation=3, bg="complement"), generator=g)
    assert lab[0, 1, 1] == IGNORE or lab[0, 1, 1] == 1
    assert ((lab == 1) & (lab == 0)).sum() == 0
    assert (sample_labels(torch.full((2, 5, 5), 0.5), SamplerConfig(k=3)) == IGNORE).all()


def test_multinomial_draws_follow_the_activation_and_uniform_does_not():
    m = torch.zeros(1, 1, 10)
    m[0, 0, :5] = torch.tensor([0.55, 0.6, 0.7, 0.8, 1.0])
    m[0, 0, 5:] = torch.tensor([0.0, 0.01, 0.02, 0.03, 0.04])
    g = torch.Generator().manual_seed(0)
    counts = {"multinomial": np.zeros(10), "uniform": np.zeros(10)}
    for draw in counts:
        for _ in range(2000):
            lab = sample_labels(m, SamplerConfig(k=1, fg_draw=draw, bg="complement"), generator=g)
            counts[draw] += (lab[0, 0] == 1).numpy()
    p = counts["multinomial"][:5] / 2000
    expected = np.array([0.55, 0.6, 0.7, 0.8, 1.0]) / 3.65
    assert np.abs(p - expected).max() < 0.04
    assert np.abs(counts["uniform"][:5] / 2000 - 0.2).max() < 0.04


def test_fewer_candidates_than_k_gives_every_candidate():
    m = bimodal(b=1)
    lab = sample_labels(m, SamplerConfig(k=500, bg="complement"))
    assert int((lab == 1).sum()) == 20 and int((lab == 0).sum()) == 192 - 20


def test_bad_sampler_settings_and_nan_maps():
    with pytest.raises(HarnessError, match="fg_draw"):
        SamplerConfig(fg_draw="gaussian")
    with pytest.raises(HarnessError, match="odd"):
        SamplerConfig(dilation=2)
    with pytest.raises(HarnessError, match="NaN"):
        sample_labels(torch.full((1, 3, 3), float("nan")), SamplerConfig())


def test_otsu_floor_is_the_first_value_of_each_level_in_float32_and_float64():
    t = torch.arange(0, 257)
    for dtype in (torch.float32, torch.float64):
        x = _otsu_floor(t, dtype)
        assert torch.isinf(x[255:]).all()
        x, tt = x[:255], t[:255].to(dtype)
        below = torch.nextafter(x, torch.full_like(x, -1.0))
        assert ((x.clamp(0, 1) * 255).floor() > tt).all()  # x is in the region
        assert not ((below.clamp(0, 1) * 255).floor() > tt).any()  # the value below it is not


def plain_regions(cams, cfg, roi=None, bg_roi=None):
    """The definition, written out per map: Otsu's region (floor(255 m) > t; everything unless
    fg_otsu), in the roi, its top fg_top_p by value (ties kept); the bottom bg_p of the map (of
    the bg_roi's pixels) or the complement; nothing for a constant map."""
    fgs, bgs = [], []
    for i, m in enumerate(cams):
        t = int(otsu_threshold(m[None])[0])
        otsu = (m.clamp(0, 1) * 255).floor() > t
        cand = otsu if cfg.fg_otsu else torch.ones_like(otsu)
        cand = cand if roi is None else cand & roi[i]
        fg = cand.clone()
        if cfg.fg_top_p < 1 and cand.any():
            vals = m[cand].sort(descending=True).values
            fg = cand & (m >= vals[math.ceil(cfg.fg_top_p * len(vals)) - 1])
        if cfg.bg == "complement":
            bg = ~otsu
        elif bg_roi is None:
            bg = m <= m.flatten().sort().values[max(1, int(cfg.bg_p * m.numel())) - 1]
        else:
            vals = m[bg_roi[i]].sort().values
            bg = m <= vals[max(1, int(cfg.bg_p * len(vals))) - 1] if len(vals) else torch.zeros_like(otsu)
        if bg_roi is not None:
            bg = bg & bg_roi[i]
        if m.max() == m.min():
            fg, bg = torch.zeros_like(fg), torch.zeros_like(bg)
        fgs.append(fg)
        bgs.append(bg)
    return torch.stack(fgs), torch.stack(bgs)


@pytest.mark.parametrize("cfg", [SamplerConfig(fg_top_p=0.3, bg_p=0.2), SamplerConfig(bg="complement"),
                                 SamplerConfig(fg_top_p=0.05, bg="complement"),
                                 SamplerConfig(fg_top_p=0.2, bg_p=0.3, fg_otsu=False)])
def test_regions_from_levels_equal_the_plain_definition(cfg):
    g = torch.Generator().manual_seed(3)
    cams = (torch.rand(6, 19, 23, generator=g) ** 2)
    cams[1] = (cams[1] * 255).floor() / 255  # values exactly on the quantization levels
    cams[2] = 0.4  # constant
    cams[3, :5] = 1.0  # ties at the top
    roi = torch.rand(6, 19, 23, generator=g) > 0.3
    bg_roi = torch.rand(6, 19, 23, generator=g) > 0.5
    bg_roi[5] = False  # no background allowed at all
    for r, br in ((None, None), (roi, None), (roi, bg_roi), (None, bg_roi)):
        fg, bg = regions(cams, cfg, r, bg_roi=br)
        pfg, pbg = plain_regions(cams, cfg, r, br)
        assert torch.equal(fg, pfg) and torch.equal(bg, pbg)
        assert fg.any() and bg.any() and not fg[2].any() and not bg[2].any()
        assert br is None or not bg[5].any()


def test_balanced_draws_as_many_background_as_foreground_seeds():
    m = bimodal(b=2)  # 20 foreground pixels
    bg_roi = torch.zeros(2, 12, 16, dtype=torch.bool)
    bg_roi[0, 0, :2] = True  # two background pixels allowed in frame 0, none in frame 1
    g = torch.Generator().manual_seed(0)
    for balanced, fg_n, bg_n in ((False, [5, 5], [2, 0]), (True, [2, 0], [2, 0])):
        lab = sample_labels(m, SamplerConfig(k=5, bg="bottom", bg_p=1.0, balanced=balanced), generator=g, bg_roi=bg_roi)
        assert (lab == 1).sum((1, 2)).tolist() == fg_n and (lab == 0).sum((1, 2)).tolist() == bg_n
        assert (lab[0] == 0).sum() == (lab[0, 0, :2] == 0).sum()  # only where allowed


def test_a_bank_samples_from_levels_computed_once_as_from_its_maps():
    g = torch.Generator().manual_seed(4)
    maps = torch.rand(5, 6, 7, generator=g)
    bank = CamBank(maps.half(), torch.arange(5)[:, None], (12, 14), None)
    bank.roi = bank._rois("largest", 2)
    cfg = SamplerConfig(k=3, fg_top_p=0.5, bg_p=0.2)
    idx, flipped = torch.tensor([4, 0, 2]), torch.tensor([1, 0, 1])
    got = bank.sample(idx, flipped, cfg, torch.Generator().manual_seed(9))
    want = sample_labels(bank.get(idx, flipped), cfg, bank.get_roi(idx, flipped), torch.Generator().manual_seed(9))
    assert torch.equal(got, want) and ((got == 1).sum((1, 2)) == 3).all()
    assert len(bank._levels) == 1 and bank._levels[cfg].shape == (5, 2)  # every frame's, once
    torch.testing.assert_close(bank._levels[cfg][idx], region_levels(bank.get(idx, flipped), cfg,
                                                                     bank.get_roi(idx, flipped)), rtol=0, atol=0)


# ------------------------------------------------------------------ frames, shots, clips


def video_split(shot_lengths=(5, 3, 1), image=None) -> Split:
    frames = []
    for s, n in enumerate(shot_lengths):
        for t in range(n):
            frames.append(Frame(f"v/s{s}/f{t}", s % 2, "v", f"s{s}", t))
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 255, (8, 10, 3), dtype=np.uint8) for _ in frames] if image is None else image
    order = np.random.default_rng(1).permutation(len(frames))  # frames stored out of order
    frames = [frames[i] for i in order]
    imgs = [imgs[i] for i in order]
    return Split("train", frames, lambda i: imgs[i])


def test_previous_frames_stay_in_their_shot():
    split = video_split()
    table = previous_frames(split, 2).numpy()
    for i, f in enumerate(split.frames):
        prev = [split.frames[j] for j in table[i]]
        assert all(p.shot == f.shot for p in prev)
        assert [p.index for p in prev] == [max(f.index - j, 0) for j in range(3)]


def test_clip_styles():
    rng = np.random.default_rng(0)
    members = list(range(100, 120))
    for _ in range(50):
        a = pick(members, 4, "adjacent", rng)
        assert a == list(range(a[0], a[0] + 4)) and a[0] >= 100 and a[-1] < 120
        iv = pick(members, 4, "interval", rng)
        assert [(x - 100) // 5 for x in iv] == [0, 1, 2, 3]
        gs = pick(members, 4, "gaussian", rng)
        assert len(set(gs)) == 4 and gs == sorted(gs)
    assert pick([1, 2], 4, "adjacent", rng) == [1, 2]
    central = pick(members, 2, "adjacent", rng, central_fraction=0.5)
    assert 105 <= central[0] and central[-1] < 115


def test_clip_batches_hold_whole_shots_once_per_epoch():
    split = video_split((6, 6, 6, 6, 2))
    sampler = ClipBatchSampler(split, n=3, style="adjacent", batch_size=6, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    seen = [split.frames[i].shot for b in batches for i in b]
    groups = [[split.frames[i].shot for i in b[j:j + 3]] for b in batches for j in range(0, len(b), 3)]
    assert sorted(set(seen)) == ["s0", "s1", "s2", "s3", "s4"]
    assert all(len(set(g)) == 1 for g in groups[:-1] if len(g) == 3)
    assert list(ClipBatchSampler(split, 3, "adjacent", 6, seed=0)) == batches
    assert list(ClipBatchSampler(split, 3, "adjacent", 6, seed=1)) != batches
    with pytest.raises(HarnessError, match="clips.style"):
        ClipBatchSampler(split, 3, "random", 6, 0)
    assert [len(s) for s in shots(split)] == [6, 6, 6, 6, 2]


# ------------------------------------------------------------------ CAM bank


class ConstantSource:
    """A 'CAM source' returning a per-frame map we control: the frame's mean colour pattern."""
    needs_grad = False

    def __call__(self, model, images, classes):
        return images.mean(1), torch.zeros(len(images), 2)


def test_cam_bank_temporal_max_and_flip():
    split = video_split((4, 3))
    bank = CamBank.build(None if False else torch.nn.Identity(), ConstantSource(), split, "cpu", temporal=1,
                         progress=False)
    single = CamBank.build(torch.nn.Identity(), ConstantSource(), split, "cpu", temporal=0, progress=False)
    prev = previous_frames(split, 1)
    idx = torch.arange(len(split.frames))
    both = single.get(idx)
    assert torch.allclose(bank.get(idx), torch.maximum(both, both[prev[:, 1]]), atol=1e-6)
    flipped = torch.tensor([True] * len(idx))
    assert torch.equal(single.get(idx, flipped), both.flip(-1))
    assert both.min() >= 0 and both.max() <= 1 and both.shape[1:] == (8, 10)


def test_largest_component_is_four_connected():
    m = np.zeros((6, 6), bool)
    m[0:2, 0:2] = True  # 4 pixels
    m[3:6, 3:6] = True  # 9 pixels
    m[2, 2] = True  # diagonal link only: not 4-connected
    assert largest_component(m).sum() == 9


# ------------------------------------------------------------------ loss terms (no CRF)


def test_extended_log_barrier_values_and_continuity():
    from harness.fcam.losses import SizeBarrier, extended_log_barrier

    t = 2.0
    z = torch.tensor([-10.0, -1 / t ** 2, -0.1, 0.5])
    v = extended_log_barrier(z, t)
    assert v[0].item() == pytest.approx(-math.log(10) / t)
    left = -math.log(1 / t ** 2) / t
    assert v[1].item() == pytest.approx(left)
    assert extended_log_barrier(torch.tensor(-1 / t ** 2 + 1e-6), t).item() == pytest.approx(left, abs=1e-5)
    assert v[3].item() == pytest.approx(t * 0.5 - math.log(1 / t ** 2) / t + 1 / t)
    s = SizeBarrier(weight=1.0)
    assert s.t(1) == 1.0 and s.t(3) == pytest.approx(1.01 ** 2) and SizeBarrier(mult=10.0).t(5) == 10.0
    # the barrier rewards larger regions: its gradient w.r.t. the probabilities is negative
    p = torch.full((1, 2, 4, 4), 0.5, requires_grad=True)
    s(p, 1).backward()
    assert (p.grad < 0).all()


def _frames_and_probs(b=2, size=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    frames = torch.randint(0, 256, (b, 3, size, size), generator=g).float()
    frames = torch.nn.functional.avg_pool2d(frames, 5, 1, 2, count_include_pad=False)  # some colour structure
    p1 = torch.rand(b, 1, size, size, generator=g)
    return frames, torch.cat([1 - p1, p1], 1)


def test_crf_scale_lattice_runs_the_authors_operator():
    """scale='lattice': the term is -w * sum P^T L P / B with L the permutohedral lattice (what the
    authors' weight was tuned on); scale='exact': the Gaussian sum. Their ratio is the lattice's
    documented scale (docs/fcam-family.md)."""
    from harness.fcam.losses import DenseCRF
    from harness.kernels.crf import crf_features, dense_crf_loss

    frames, probs = _frames_and_probs()
    values = probs.permute(0, 2, 3, 1).reshape(2, -1, 2)
    feats = crf_features(frames, 15.0, 100.0)
    lat = DenseCRF(weight=1.0, reference_pixels=None, scale="lattice")(probs, frames)
    torch.testing.assert_close(lat, dense_crf_loss(values, feats, 1.0, method="lattice"))
    exact = DenseCRF(weight=1.0, reference_pixels=None, method="exact")(probs, frames)
    torch.testing.assert_close(exact, dense_crf_loss(values, feats, 1.0, method="exact"))
    assert 0.3 < float(lat / exact) < 0.9


def test_crf_scale_settings_are_checked_when_built():
    from harness.fcam.losses import ColorCoLoc, DenseCRF

    with pytest.raises(HarnessError, match="scale='approx'.*'exact'.*'lattice'"):
        DenseCRF(scale="approx")
    with pytest.raises(HarnessError, match="method='grid' asks for another filter"):
        DenseCRF(scale="lattice", method="grid")
    with pytest.raises(HarnessError, match="set scale='lattice'"):
        ColorCoLoc(method="lattice")
    assert ColorCoLoc(scale="lattice").scale == "lattice"


def test_code_configs_use_the_lattice_scale_and_paper_configs_exact():
    from harness import config as config_mod
    from harness.registry import registry

    papers = config_mod.__file__.rsplit("/", 1)[0] + "/configs/papers"
    for name, terms in (("fcam_code", ["crf"]), ("tcam_code", ["crf"]), ("colocam_code", ["crf", "coloc"])):
        losses = config_mod.read_file(f"{papers}/{name}.py")["method"]["losses"]
        assert all(losses[t]["scale"] == "lattice" for t in terms), name
    reg = registry()
    for plugin in ("fcam", "tcam", "colocam"):
        losses = config_mod.read_file(reg.get("method", plugin).config)["method"]["losses"]
        assert losses["crf"]["scale"] == "exact"
