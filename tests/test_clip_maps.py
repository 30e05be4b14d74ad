"""The ``clip`` pseudo-box annotator (harness/annotators/clip_maps.py), on tiny random CLIPs.

No weights are downloaded: the models are built from a tiny config with ``random_init=True`` (or
from checkpoints written here), and every pretrained-tag test runs with the network cut off.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import open_clip
from harness.annotators import clip_maps
from harness.annotators.clip_maps import (
    class_text_features,
    clip_boxes,
    clip_gradcam,
    load_clip,
    otsu_largest_box,
)
from harness.errors import HarnessError
from harness.evaluation.box_accuracy import otsu_level

TINY_VIT = Path(__file__).parent / "data" / "tiny-clip.json"
_REAL_REACHABLE = clip_maps._reachable
CLASSES = ["cat", "dog", "red car"]
TEMPLATES = ("a photo of a {}.", "a blurry photo of the {}.")


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Belt and braces: offline mode, and the reachability probe says no."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(clip_maps, "_reachable", lambda *a, **k: False)


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    model, mean_std, tok = load_clip(str(TINY_VIT), random_init=True)
    return model, mean_std, tok


@pytest.fixture(scope="module")
def rn_config(tmp_path_factory):
    cfg = json.loads(TINY_VIT.read_text())
    cfg["vision_cfg"] = {"image_size": 96, "layers": [1, 1, 1, 1], "width": 8, "head_width": 32}
    path = tmp_path_factory.mktemp("rn") / "tiny-clip-rn.json"
    path.write_text(json.dumps(cfg))
    return path


@pytest.fixture(scope="module")
def rn(rn_config):
    torch.manual_seed(1)
    return load_clip(str(rn_config), random_init=True)


def _snapshot(model):
    return [(p.requires_grad, None if p.grad is None else p.grad.clone()) for p in model.parameters()]


def _cos_scores(feats, text, labels):
    return (F.normalize(feats.float(), dim=-1) * F.normalize(text, dim=-1)[labels]).sum(-1)


# ---------------------------------------------------------------------------------------------
# Grad-CAM against a naive computation
# ---------------------------------------------------------------------------------------------


def _naive_vit_cam(model, image, text, label):
    """One image: an explicit forward over the ViT's modules, the last block written out, and
    torch.autograd.grad on the explicitly built ln_1 output of the last block."""
    v = model.visual
    x = v.conv1(image[None])  # (1, width, gh, gw)
    x = x.flatten(2).transpose(1, 2)  # (1, gh*gw, width), row-major patches
    x = torch.cat([v.class_embedding.view(1, 1, -1), x], dim=1) + v.positional_embedding
    x = v.ln_pre(x)
    assert v.transformer.batch_first  # open_clip 3.x runs the tower batch-first (N, L, D)
    blocks = list(v.transformer.resblocks)
    with torch.no_grad():
        for blk in blocks[:-1]:
            x = blk(x)
    last = blocks[-1]
    a = last.ln_1(x).detach().requires_grad_(True)
    y = x + last.ls_1(last.attn(a, a, a, need_weights=False)[0])
    y = y + last.ls_2(last.mlp(last.ln_2(y)))
    pooled = v.ln_post(y[:, 0]) @ v.proj
    score = _cos_scores(pooled, text, torch.tensor([label]))[0]
    (g,) = torch.autograd.grad(score, a)
    a, g = a[0, 1:].detach(), g[0, 1:]  # patch tokens
    w = g.mean(dim=0)
    gh, gw = v.grid_size
    return torch.relu((a * w).sum(-1)).reshape(gh, gw), pooled.detach()[0]


def test_vit_gradcam_shape_and_matches_naive(vit):
    model, _, tok = vit
    text = class_text_features(model, tok, CLASSES, TEMPLATES)
    torch.manual_seed(2)
    images = torch.randn(5, 3, 32, 32)
    labels = torch.tensor([0, 1, 2, 1, 0])
    cams = clip_gradcam(model, images, text, labels)
    assert cams.shape == (5, 4, 4)  # 32 / patch 8
    assert torch.isfinite(cams).all() and (cams >= 0).all()
    assert (cams.flatten(1).max(1).values > 0).all()  # not the all-zero map of the block output
    for b in range(5):
        naive, pooled = _naive_vit_cam(model, images[b], text, int(labels[b]))
        with torch.no_grad():  # the explicit forward is the model's forward
            torch.testing.assert_close(pooled, model.encode_image(images[b : b + 1])[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(cams[b], naive, rtol=1e-4, atol=1e-7)


def test_gradcam_of_last_block_output_would_be_zero(vit):
    """Why the ViT target is the last block's ln_1: class-token pooling reads only token 0 of the
    last block's output, so the patch tokens there get exactly zero gradient."""
    model, _, tok = vit
    text = class_text_features(model, tok, CLASSES)
    out = []
    h = model.visual.transformer.resblocks[-1].register_forward_hook(lambda m, i, o: out.append(o))
    try:
        with torch.enable_grad():
            x = torch.randn(2, 3, 32, 32, requires_grad=True)
            score = _cos_scores(model.encode_image(x), text, torch.tensor([0, 1])).sum()
            (g,) = torch.autograd.grad(score, out[0])
    finally:
        h.remove()
    assert g[:, 1:].abs().max() == 0 and g[:, 0].abs().max() > 0


@pytest.mark.parametrize("grad_mode", [True, False])
def test_gradcam_leaves_params_and_modes_alone(vit, grad_mode):
    model, _, tok = vit
    text = class_text_features(model, tok, CLASSES)
    params = list(model.parameters())
    params[0].requires_grad_(False)  # a frozen one
    params[3].grad = torch.full_like(params[3], 7.0)  # an existing gradient
    model.train()
    before = _snapshot(model)
    try:
        with torch.set_grad_enabled(grad_mode):
            cams = clip_gradcam(model, torch.randn(2, 3, 32, 32), text, [1, 2])
            assert torch.is_grad_enabled() == grad_mode
        after = _snapshot(model)
        assert model.training  # restored
        assert not cams.requires_grad
        for (rg0, g0), (rg1, g1) in zip(before, after):
            assert rg0 == rg1
            assert (g0 is None) == (g1 is None)
            if g0 is not None:
                assert torch.equal(g0, g1)
    finally:
        params[0].requires_grad_(True)
        params[3].grad = None
        model.eval()


def test_gradcam_batch_independent_and_validates(vit):
    model, _, tok = vit
    text = class_text_features(model, tok, CLASSES)
    x = torch.randn(3, 3, 32, 32)
    together = clip_gradcam(model, x, text, [2, 0, 1])
    alone = torch.cat([clip_gradcam(model, x[i : i + 1], text, [l]) for i, l in enumerate([2, 0, 1])])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-7)
    with pytest.raises(HarnessError, match="resize"):
        clip_gradcam(model, torch.randn(1, 3, 40, 40), text, [0])
    with pytest.raises(HarnessError, match="labels"):
        clip_gradcam(model, x, text, [0, 1, 3])


def test_rn_gradcam_matches_naive(rn):
    model, _, tok = rn
    v = model.visual
    assert isinstance(v, open_clip.modified_resnet.ModifiedResNet)
    text = class_text_features(model, tok, CLASSES, TEMPLATES)
    torch.manual_seed(3)
    images = torch.randn(3, 3, 96, 96)
    labels = torch.tensor([1, 0, 2])
    before = _snapshot(model)
    cams = clip_gradcam(model, images, text, labels)
    assert cams.shape == (3, 3, 3)  # 96 / 32
    assert torch.isfinite(cams).all() and (cams >= 0).all()
    with torch.no_grad():
        a = v.layer4(v.layer3(v.layer2(v.layer1(v.stem(images)))))
        torch.testing.assert_close(v.attnpool(a), model.encode_image(images), rtol=1e-5, atol=1e-6)
    a = a.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(_cos_scores(v.attnpool(a), text, labels).sum(), a)
    naive = torch.relu((a.detach() * g.mean(dim=(2, 3), keepdim=True)).sum(1))
    torch.testing.assert_close(cams, naive, rtol=1e-4, atol=1e-7)
    for (rg0, g0), (rg1, g1) in zip(before, _snapshot(model)):
        assert rg0 == rg1 and g0 is None and g1 is None


def test_gradcam_matches_pytorch_grad_cam(rn):
    """The same Grad-CAM as the reference library, after its min-max scaling."""
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model, _, tok = rn
    text = class_text_features(model, tok, CLASSES)
    images = torch.randn(2, 3, 96, 96)
    labels = [2, 1]
    ours = clip_gradcam(model, images, text, labels).numpy()

    class Sims(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.clip = model

        def forward(self, x):
            return F.normalize(self.clip.encode_image(x), dim=-1) @ text.T

    class GridCAM(pgc.GradCAM):  # keep the token grid: no upsampling to the input size
        def get_target_width_height(self, input_tensor):
            return 3, 3

    with GridCAM(model=Sims(), target_layers=[model.visual.layer4]) as cam:
        ref = cam(input_tensor=images, targets=[ClassifierOutputTarget(l) for l in labels])
    for p in model.parameters():
        p.grad = None  # the library backpropagates into the parameters; ours must not
    for o, r in zip(ours, ref):
        o = o - o.min()
        o = o / (1e-7 + o.max())
        np.testing.assert_allclose(o, r, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Otsu / largest component
# ---------------------------------------------------------------------------------------------


def _naive_box(m):
    from scipy import ndimage

    q = (m * 255).astype(np.uint8)
    mask = q > otsu_level(q)
    lab, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=int))
    if n == 0:
        return 0, 0, m.shape[1] - 1, m.shape[0] - 1
    areas = np.bincount(lab.ravel())[1:]
    k = 1 + int(np.argmax(areas))  # first of equals, scipy numbers in raster order too
    ys, xs = np.nonzero(lab == k)
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def test_otsu_two_blobs_larger_wins():
    m = np.zeros((40, 60))
    m[5:10, 3:8] = 0.9  # 25 px
    m[20:31, 30:52] = 0.8  # 242 px, dimmer but larger
    m[0, 59] = 0.85  # a single pixel
    assert otsu_largest_box(m) == (30, 20, 51, 30)
    # 8-connectivity: a diagonal chain is one component, larger than the block
    d = np.zeros((30, 30))
    d[2:6, 2:6] = 1.0  # 16 px
    for i in range(20):
        d[10 + i, 8 + i] = 1.0  # 20 px, diagonal only
    assert otsu_largest_box(d) == (8, 10, 27, 29)
    assert otsu_largest_box(d) == _naive_box(d)


@pytest.mark.parametrize("value", [0.0, 0.3, 1.0])
def test_otsu_constant_map_full_box(value):
    assert otsu_largest_box(np.full((7, 11), value)) == (0, 0, 10, 6)


def test_otsu_ties_first_in_raster_order():
    m = np.zeros((20, 20))
    m[12:15, 1:4] = 1.0  # 9 px, lower
    m[2:5, 15:18] = 1.0  # 9 px, first in raster order
    assert otsu_largest_box(m) == (15, 2, 17, 4) == _naive_box(m)


def test_otsu_matches_naive_on_random_maps():
    import cv2

    rng = np.random.default_rng(0)
    for i in range(40):
        h, w = rng.integers(8, 48, size=2)
        m = cv2.GaussianBlur(rng.random((h, w)), (0, 0), float(rng.uniform(0.5, 2.5)))
        m = (m - m.min()) / (m.max() - m.min())
        if i % 4 == 0:  # quantized maps with many equal-size components
            m = np.round(m * 3) / 3
        assert otsu_largest_box(m) == _naive_box(m), i


def test_otsu_rejects_bad_maps():
    with pytest.raises(HarnessError):
        otsu_largest_box(np.full((4, 4), 1.5))
    with pytest.raises(HarnessError):
        otsu_largest_box(np.zeros((2, 3, 3)))


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def test_load_clip_random_init_outputs(vit):
    model, (mean, std), tok = vit
    assert not model.training
    assert mean == pytest.approx(open_clip.OPENAI_DATASET_MEAN) and std == pytest.approx(open_clip.OPENAI_DATASET_STD)
    assert tok(["a photo of a cat."]).shape == (1, 77)
    text = class_text_features(model, tok, CLASSES, TEMPLATES)
    assert text.shape == (3, 32) and text.dtype == torch.float32
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(3))
    with torch.no_grad():  # the prompt ensemble, by hand
        e = F.normalize(model.encode_text(tok([t.format("dog") for t in TEMPLATES])), dim=-1).mean(0)
    torch.testing.assert_close(text[1], F.normalize(e, dim=-1), rtol=1e-5, atol=1e-6)


def test_uncached_tag_offline_raises_how_to(tmp_path, monkeypatch):
    monkeypatch.setattr(open_clip, "download_pretrained", lambda *a, **k: pytest.fail("no download offline"))
    t = time.perf_counter()
    with pytest.raises(HarnessError) as ei:
        load_clip("ViT-B-16", pretrained="openai", cache_dir=str(tmp_path))
    assert time.perf_counter() - t < 5
    msg = str(ei.value)
    for part in ("'ViT-B-16'", "'openai'", "HF_HOME", str(tmp_path), "annotators.clip.checkpoint=", "random_init=True", "only for tests"):
        assert part in msg, part


def test_uncached_tag_unreachable_raises_without_download(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(clip_maps, "_offline", lambda: False)
    monkeypatch.setattr(open_clip, "download_pretrained", lambda *a, **k: pytest.fail("no download when unreachable"))
    with pytest.raises(HarnessError, match="cannot be reached.*annotators.clip.checkpoint"):
        load_clip("RN50", pretrained="openai", cache_dir=str(tmp_path))


def test_unknown_model_and_tag(tmp_path):
    with pytest.raises(HarnessError, match=r"unknown open_clip model 'ViT-Z-99'.*list_models\(\)"):
        load_clip("ViT-Z-99", random_init=True)
    with pytest.raises(HarnessError, match=r"unknown pretrained tag 'nope'.*'openai'"):
        load_clip("ViT-B-16", pretrained="nope", cache_dir=str(tmp_path))
    with pytest.raises(HarnessError, match="not found"):
        load_clip(str(tmp_path / "missing.json"), random_init=True)
    with pytest.raises(HarnessError, match="no weights given"):
        load_clip(str(TINY_VIT), pretrained=None)


def test_checkpoint_missing_mismatched_and_ok(tmp_path, vit):
    missing = tmp_path / "nowhere" / "weights.pt"
    with pytest.raises(HarnessError, match=str(missing).replace("\\", "\\\\")):
        load_clip(str(TINY_VIT), pretrained=None, checkpoint=missing)
    bad = tmp_path / "bad.pt"
    torch.save({"visual.proj": torch.zeros(3)}, bad)
    with pytest.raises(HarnessError, match=r"bad\.pt could not be loaded into model 'tiny-clip'"):
        load_clip(str(TINY_VIT), pretrained=None, checkpoint=bad)
    good = tmp_path / "good.pt"
    torch.save(vit[0].state_dict(), good)
    model, _, _ = load_clip(str(TINY_VIT), pretrained=None, checkpoint=good)
    for (k, a), b in zip(vit[0].state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), k


def test_cached_tag_loads_offline_with_tag_settings(tmp_path, monkeypatch, vit):
    """A tag whose weights sit in the HF cache loads with no network, QuickGELU and the tag's
    mean/std applied (a fake tag for the tiny model, laid out as huggingface_hub caches files)."""
    from safetensors.torch import save_file

    snap = tmp_path / "models--fake--tiny-clip" / "snapshots" / "0123abcd"
    snap.mkdir(parents=True)
    (tmp_path / "models--fake--tiny-clip" / "refs").mkdir()
    (tmp_path / "models--fake--tiny-clip" / "refs" / "main").write_text("0123abcd")
    sd = {k: v.contiguous() for k, v in vit[0].state_dict().items()}
    save_file(sd, str(snap / "open_clip_model.safetensors"))  # preferred over the .bin
    tag_cfg = {"url": "", "hf_hub": "fake/tiny-clip/", "quick_gelu": True, "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}
    real = open_clip.get_pretrained_cfg
    monkeypatch.setattr(open_clip, "get_pretrained_cfg", lambda m, t: tag_cfg if (m, t) == ("tiny-clip", "fake") else real(m, t))
    model, (mean, std), _ = load_clip(str(TINY_VIT), pretrained="fake", cache_dir=str(tmp_path))
    assert (mean, std) == ((0.5,) * 3, (0.25,) * 3)
    assert isinstance(model.visual.transformer.resblocks[0].mlp.gelu, open_clip.model.QuickGELU)
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k
    # a checkpoint stands in for the cache; the tag still sets QuickGELU and mean/std
    ck = tmp_path / "ck.pt"
    torch.save(sd, ck)
    model2, (mean2, _), _ = load_clip(str(TINY_VIT), pretrained="fake", checkpoint=ck, cache_dir=str(tmp_path / "empty"))
    assert mean2 == (0.5,) * 3
    assert isinstance(model2.visual.transformer.resblocks[0].mlp.gelu, open_clip.model.QuickGELU)


def test_reachability_probe_is_quick(monkeypatch):
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    t = time.perf_counter()
    assert _REAL_REACHABLE("https://nowhere.invalid/x", timeout=2.0) is False
    assert _REAL_REACHABLE("not a url") is False
    assert time.perf_counter() - t < 10
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    assert _REAL_REACHABLE("https://nowhere.invalid/x") is True  # a proxy decides, not the probe


def test_config_named_like_a_builtin_is_refused(tmp_path):
    cfg = json.loads(TINY_VIT.read_text())
    (tmp_path / "ViT-B-16.json").write_text(json.dumps(cfg))
    with pytest.raises(HarnessError, match="rename the file"):
        load_clip(str(tmp_path / "ViT-B-16.json"), random_init=True)
    assert open_clip.get_model_config("ViT-B-16")["vision_cfg"]["width"] == 768  # registry untouched


# ---------------------------------------------------------------------------------------------
# End to end
# ---------------------------------------------------------------------------------------------


def test_clip_boxes_end_to_end(vit):
    model, mean_std, tok = vit
    rng = np.random.default_rng(4)
    frames = [rng.integers(0, 256, size=s, dtype=np.uint8) for s in [(40, 50, 3), (32, 32, 3), (64, 48, 3)]]
    labels = [0, 2, 1]
    boxes, maps = clip_boxes(model, mean_std, tok, frames, labels, CLASSES, templates=TEMPLATES, batch_size=2, progress=True)
    assert len(boxes) == len(maps) == 3
    for f, b, m in zip(frames, boxes, maps):
        h, w = f.shape[:2]
        assert m.shape == (h, w) and m.dtype == np.float32
        assert m.min() >= 0 and m.max() <= 1 and m.max() == 1
        x0, y0, x1, y1 = b
        assert all(isinstance(v, int) for v in b)
        assert 0 <= x0 <= x1 < w and 0 <= y0 <= y1 < h
        assert b == otsu_largest_box(m)
    # one frame at a time gives the same maps (no batch effects)
    boxes1, maps1 = clip_boxes(model, mean_std, tok, frames, labels, CLASSES, templates=TEMPLATES, batch_size=1)
    assert boxes1 == boxes
    for a, b in zip(maps, maps1):
        np.testing.assert_allclose(a, b, atol=1e-5)
    # the frame at the model size goes through unresized: its map is the upsampled Grad-CAM
    x = (torch.from_numpy(frames[1]).permute(2, 0, 1).float()[None] / 255 - torch.tensor(mean_std[0]).view(1, 3, 1, 1)) / torch.tensor(
        mean_std[1]
    ).view(1, 3, 1, 1)
    cam = clip_gradcam(model, x, class_text_features(model, tok, CLASSES, TEMPLATES), [2])
    up = F.interpolate(cam[None], size=(32, 32), mode="bilinear", align_corners=False)[0, 0]
    np.testing.assert_allclose(maps[1], ((up - up.min()) / (up.max() - up.min())).numpy(), atol=1e-5)
    with pytest.raises(HarnessError, match="labels"):
        clip_boxes(model, mean_std, tok, frames, [0, 1], CLASSES)
