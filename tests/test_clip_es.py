"""CLIP-ES (plugins/clip_es/model.py) on a tiny random open_clip ViT: the batched path against a
plain per-image reimplementation written here in the authors' style (nn.MultiheadAttention
asked for its weights, explicit Sinkhorn matrices, contour boxes), step by step."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from harness.annotators.clip_maps import class_text_features, load_clip
from harness.errors import HarnessError
from harness.plugins.clip_es import caa
from harness.plugins.clip_es.model import clip_es_maps, embed, positional_embedding
from harness.plugins.clip_es.text import background_words, clean_name, prompt_names, text_features

TINY = Path(__file__).parent / "data" / "tiny-clip-es.json"


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    model, mean_std, tokenizer = load_clip(str(TINY), None, random_init=True)
    # random weights give near-uniform attention; sharpen it so Sinkhorn and the boxes matter
    with torch.no_grad():
        for block in model.visual.transformer.resblocks:
            block.attn.in_proj_weight.mul_(4.0)
    model.logit_scale.data.fill_(np.log(50.0))
    return model, tokenizer


@pytest.fixture(scope="module")
def texts(clip):
    model, tokenizer = clip
    classes = class_text_features(model, tokenizer, ["bird avian", "car", "dog"], ["a clean origami {}."])
    background = class_text_features(model, tokenizer, ["sky", "grass", "tree", "road"], ["a clean origami {}."])
    return classes, background


# ------------------------------------------------------------------ the per-image reference


def ref_pos_emb(pos: torch.Tensor, native: tuple[int, int], grid: tuple[int, int]) -> torch.Tensor:
    """The authors' upsample_pos_emb: class token kept, the grid part resized bilinearly."""
    first, rest = pos[:1], pos[1:]
    d = rest.shape[1]
    rest = rest.permute(1, 0).reshape(1, d, *native)
    rest = F.interpolate(rest, size=grid, mode="bilinear", align_corners=False)
    return torch.cat([first, rest.reshape(d, -1).permute(1, 0)], 0)


def ref_minmax(cam: np.ndarray) -> np.ndarray:
    cam = cam - cam.min()
    return cam / (1e-7 + cam.max())


def ref_box_mask(cam: np.ndarray, tau: float) -> np.ndarray:
    """Choe's binarization, every contour's bounding rectangle (x, y, w, h) filled whole."""
    q = (cam * 255).astype(np.uint8)
    _, binary = cv2.threshold(q, int(tau * np.max(q)), 255, cv2.THRESH_BINARY)
    contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2]
    mask = np.zeros_like(q, dtype=bool)
    for c in contours:
        x, y, w, h = cv2.boundingRect(c)
        mask[y:y + h, x:x + w] = True
    return mask


def ref_sinkhorn(att: torch.Tensor, iters: int) -> torch.Tensor:
    d = att / att.sum(dim=0, keepdim=True)
    d = d / d.sum(dim=1, keepdim=True)
    for _ in range(iters - 1):
        d = d / d.sum(dim=0, keepdim=True)
        d = d / d.sum(dim=1, keepdim=True)
    return d


def ref_clip_es(model, image, cls, class_text, background_text, attn_layers, tau, iters, target="softmax"):
    """One image, one class, as the authors' loop does it."""
    v = model.visual
    blocks = list(v.transformer.resblocks)
    x = v.conv1(image[None].double())
    gh, gw = x.shape[-2:]
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([v.class_embedding.double()[None, None], x], 1)
    x = x + ref_pos_emb(v.positional_embedding.double(), tuple(v.grid_size), (gh, gw))
    x = v.ln_pre(x)
    maps = []
    with torch.no_grad():
        for blk in blocks[:-1]:
            h = blk.ln_1(x)
            out, w = blk.attn(h, h, h, need_weights=True)  # head-averaged, as the authors' patched CLIP
            maps.append(w[0])
            x = x + out
            x = x + blk.mlp(blk.ln_2(x))
    last = blocks[-1]
    a = last.ln_1(x).detach().requires_grad_(True)
    out, w = last.attn(a, a, a, need_weights=True)
    maps.append(w[0].detach())
    y = x + out
    y = y + last.mlp(last.ln_2(y))
    y = v.ln_post(y)
    emb = F.normalize(y[0, 1:].mean(0) @ v.proj, dim=-1)
    texts = torch.cat([class_text[cls][None], background_text]).double()
    logits = model.logit_scale.exp().double() * emb @ F.normalize(texts, dim=-1).T
    score = torch.softmax(logits, dim=0)[0] if target == "softmax" else logits[0]
    (g,) = torch.autograd.grad(score, a)
    acts, grads = a[0, 1:].detach(), g[0, 1:]
    cam = torch.relu((acts * grads.mean(0)).sum(-1)).reshape(gh, gw).numpy()
    cam = ref_minmax(cam)
    att = torch.stack(maps[-attn_layers:]).mean(0)[1:, 1:]
    mask = ref_box_mask(cam, tau)
    d = ref_sinkhorn(att, iters)
    s = (d + d.T) / 2
    s = s @ s
    s = s * torch.from_numpy(mask.reshape(1, -1)).double()
    refined = (s @ torch.from_numpy(cam.reshape(-1)).double()).reshape(gh, gw).numpy()
    return dict(cam=cam, attention=att.numpy(), mask=mask.reshape(-1), sinkhorn=d.numpy(),
                refined=ref_minmax(refined))


def _images(n, h=64, w=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    img = torch.rand(n, 3, h, w, generator=g)
    img[:, :, h // 4: h // 2, w // 4: w // 2] += 1.5  # an object-like patch
    return img


@pytest.mark.parametrize("size", [(64, 64), (48, 80)])
def test_batched_equals_the_per_image_reference_step_by_step(clip, texts, size):
    model, _ = clip
    model_d = model.double()
    try:
        classes_t, bg_t = (t.double() for t in texts)
        images = _images(3, *size).double()
        labels = torch.tensor([0, 2, 1])
        out = clip_es_maps(model_d, images, labels, classes_t, bg_t, attn_layers=2, tau_caa=0.4, sinkhorn_iters=3)
        r_, c_ = caa.sinkhorn_scalings(out.attention.double(), 3)
        for i in range(3):
            ref = ref_clip_es(model_d, images[i], int(labels[i]), classes_t, bg_t, 2, 0.4, 3)
            np.testing.assert_allclose(out.attention[i].numpy(), ref["attention"], rtol=1e-4, atol=1e-6)
            np.testing.assert_allclose(out.cams[i].numpy(), ref["cam"], rtol=1e-4, atol=1e-5)
            assert np.array_equal(out.mask[i].numpy(), ref["mask"])
            d = (r_[i, :, None] * out.attention[i].double() * c_[i, None, :]).numpy()
            np.testing.assert_allclose(d, ref["sinkhorn"], rtol=1e-4, atol=1e-7)
            np.testing.assert_allclose(out.maps[i].numpy(), ref["refined"], rtol=1e-4, atol=1e-5)
        gh, gw = size[0] // 16, size[1] // 16
        assert out.maps.shape == (3, gh, gw) and out.attention.shape == (3, gh * gw, gh * gw)
        assert 0 < int(out.mask.sum()) < out.mask.numel()  # the boxes restrict something here
    finally:
        model.float()


def test_positional_embedding_at_the_native_grid_changes_nothing(clip):
    model, _ = clip
    v = model.visual
    assert positional_embedding(v, tuple(v.grid_size)) is v.positional_embedding
    # the general path, asked for the native size, is the identity too
    pos = ref_pos_emb(v.positional_embedding.detach(), tuple(v.grid_size), tuple(v.grid_size))
    torch.testing.assert_close(pos, v.positional_embedding.detach())
    x = _images(2)
    with torch.no_grad():
        ours, grid = embed(v, x)
        theirs = v._embeds(x)
    assert grid == tuple(v.grid_size)
    torch.testing.assert_close(ours, theirs)


def test_the_class_token_logits_are_open_clips_own_zero_shot(clip, texts):
    """At the native size the manual blocks (attention from the projection weights) reproduce
    open_clip's encode_image: the zero-shot logits match its class-token embedding."""
    model, _ = clip
    classes_t, bg_t = texts
    x = _images(4)
    out = clip_es_maps(model, x, None, classes_t, bg_t, attn_layers=2)
    with torch.no_grad():
        emb = F.normalize(model.encode_image(x), dim=-1)
    expected = model.logit_scale.exp() * emb @ classes_t.T
    torch.testing.assert_close(out.logits, expected, rtol=1e-4, atol=1e-4)
    assert torch.equal(out.classes, expected.argmax(1))  # classes=None localizes CLIP's top-1


def test_non_square_inputs_give_non_square_maps(clip, texts):
    model, _ = clip
    out = clip_es_maps(model, _images(2, 32, 96), torch.tensor([0, 1]), *texts, attn_layers=1)
    assert out.maps.shape == (2, 2, 6) and out.cams.shape == (2, 2, 6)
    assert torch.isfinite(out.maps).all() and float(out.maps.max()) <= 1.0


def test_softmax_gradcam_differs_from_logit_gradcam_when_a_background_prompt_competes(clip, texts):
    model, _ = clip
    classes_t, bg_t = texts
    x = _images(2, seed=3)
    labels = torch.tensor([1, 1])
    # a background word that reads almost like the class itself competes for the same regions
    competing = F.normalize(classes_t[1:2] + 0.3 * bg_t[:1], dim=-1)
    soft = clip_es_maps(model, x, labels, classes_t, competing, attn_layers=2, target="softmax")
    soft_other = clip_es_maps(model, x, labels, classes_t, bg_t, attn_layers=2, target="softmax")
    logit = clip_es_maps(model, x, labels, classes_t, competing, attn_layers=2, target="logit")
    logit_other = clip_es_maps(model, x, labels, classes_t, bg_t, attn_layers=2, target="logit")
    assert float((soft.cams - logit.cams).abs().max()) > 0.05
    assert float((soft.cams - soft_other.cams).abs().max()) > 0.05  # the background matters...
    torch.testing.assert_close(logit.cams, logit_other.cams)  # ...only to the softmax target
    for ref_target, out in (("softmax", soft), ("logit", logit)):
        ref = ref_clip_es(model.double(), x[0].double(), 1, classes_t.double(), competing.double(), 2, 0.4, 3,
                          target=ref_target)
        model.float()
        np.testing.assert_allclose(out.cams[0].numpy(), ref["cam"], rtol=1e-3, atol=1e-4)


def test_no_parameter_gradient_and_modes_restored(clip, texts):
    model, _ = clip
    model.train()
    try:
        clip_es_maps(model, _images(1), torch.tensor([0]), *texts, attn_layers=2)
        assert model.training
        assert all(p.grad is None for p in model.parameters())
    finally:
        model.eval()


def test_inputs_are_checked(clip, texts):
    model, _ = clip
    with pytest.raises(HarnessError, match="multiples of the patch size 16"):
        clip_es_maps(model, _images(1, 60, 64), torch.tensor([0]), *texts, attn_layers=2)
    with pytest.raises(HarnessError, match="attn_layers=9: the tower has 3 blocks"):
        clip_es_maps(model, _images(1), torch.tensor([0]), *texts, attn_layers=9)
    with pytest.raises(HarnessError, match=r"tau_caa=1.5"):
        clip_es_maps(model, _images(1), torch.tensor([0]), *texts, attn_layers=2, tau_caa=1.5)
    with pytest.raises(HarnessError, match="each in \\[0, 3\\)"):
        clip_es_maps(model, _images(1), torch.tensor([7]), *texts, attn_layers=2)


# ------------------------------------------------------------------ text


def test_prompt_names_per_dataset():
    assert prompt_names("synth-yto", ["aeroplane", "bird", "car"]) == ["aeroplane", "bird avian", "car"]
    assert prompt_names("cub", ["001.Black_footed_Albatross", "200.Common_Yellowthroat"]) == \
        ["black footed albatross", "common yellowthroat"]
    assert clean_name("ellipse-stripes") == "ellipse stripes"
    assert prompt_names("synth-cub", ["a", "b"], override=["x", "y"]) == ["x", "y"]
    with pytest.raises(HarnessError, match="one prompt name per class"):
        prompt_names("synth-cub", ["a", "b"], override=["x"])
    wnids = [f"n{k:08d}" for k in range(1000)]
    names = prompt_names("ilsvrc", wnids)
    assert len(names) == 1000 and names[0] == "tench"


def test_background_lists():
    voc = background_words("voc")
    assert len(voc) == 25 and voc[0] == "ground" and "keyboard" in voc
    coco = background_words("coco")
    assert len(coco) == 23 and "keyboard" not in coco and "sign" not in coco
    assert background_words(["sky", "sea"]) == ["sky", "sea"]
    with pytest.raises(HarnessError, match="not a known list"):
        background_words("vocc")


def test_text_features_are_cached_by_weights_and_prompts(clip, tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_HOME", str(tmp_path))
    model, tokenizer = clip
    a = text_features(model, tokenizer, ["cat", "dog"], ["a clean origami {}."], "tiny|tag:x")
    files = list((tmp_path / "clip-es" / "text").glob("*.pt"))
    assert len(files) == 1
    calls = []
    import harness.annotators.clip_maps as cm

    real = cm.class_text_features
    monkeypatch.setattr(cm, "class_text_features", lambda *a_, **k: calls.append(1) or real(*a_, **k))
    b = text_features(model, tokenizer, ["cat", "dog"], ["a clean origami {}."], "tiny|tag:x")
    assert calls == [] and torch.equal(a, b)  # read from the cache
    text_features(model, tokenizer, ["cat", "dog"], ["a photo of a {}."], "tiny|tag:x")
    assert calls == [1] and len(list((tmp_path / "clip-es" / "text").glob("*.pt"))) == 2
    files[0].write_bytes(b"not a torch file")  # damaged: recomputed, not fatal
    c = text_features(model, tokenizer, ["cat", "dog"], ["a clean origami {}."], "tiny|tag:x")
    assert calls == [1, 1] and torch.allclose(a, c)
    text_features(model, tokenizer, ["cat"], ["a clean origami {}."], None)  # random weights: never cached
    assert len(list((tmp_path / "clip-es" / "text").glob("*.pt"))) == 2
