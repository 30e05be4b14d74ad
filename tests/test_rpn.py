"""The rpn pseudo-box annotator's proposal source: harness.annotators.rpn."""
from __future__ import annotations

import urllib.request

import numpy as np
import pytest
import torch
import torchvision
from torchvision.models.detection.transform import resize_boxes

import harness.annotators.rpn as rpn_mod
from harness.annotators.rpn import hub_cache_path, load_rpn, rpn_proposals, rpn_raw, to_inclusive_boxes
from harness.errors import HarnessError

ARCH = "fasterrcnn_mobilenet_v3_large_320_fpn"


def _frames(seed=0):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)  # H=48, W=80
    c = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    return [a, b, c]


def _random_model(**kw):
    torch.manual_seed(0)
    return load_rpn(ARCH, random_init=True, **kw)


@pytest.fixture(scope="module")
def model():
    return _random_model(post_nms_top_n=40, nms_thresh=0.6)


@pytest.fixture(scope="module")
def frames():
    return _frames()


@pytest.fixture(scope="module")
def proposals(model, frames):
    return rpn_proposals(model, frames, batch_size=2)


# ------------------------------------------------------------------ output contract


def test_settings_reach_the_rpn(model):
    assert not model.training
    assert model.rpn.post_nms_top_n() == 40
    assert model.rpn.nms_thresh == 0.6
    assert model.transform.min_size == (320,)  # the arch's own default kept


def test_shapes_dtypes_bounds_and_order(proposals, frames):
    assert len(proposals) == len(frames)
    for (boxes, scores), img in zip(proposals, frames):
        h, w = img.shape[:2]
        assert boxes.dtype == np.int64 and boxes.ndim == 2 and boxes.shape[1] == 4
        assert scores.dtype == np.float32 and scores.shape == (boxes.shape[0],)
        assert 0 < boxes.shape[0] <= 40
        x0, y0, x1, y1 = boxes.T
        assert (x0 >= 0).all() and (y0 >= 0).all() and (x1 <= w - 1).all() and (y1 <= h - 1).all()
        assert (x0 <= x1).all() and (y0 <= y1).all()
        assert ((scores >= 0) & (scores <= 1)).all()
        assert (np.diff(scores) <= 0).all()
    # the 80-wide frame really uses its own grid: some box reaches past x=63
    assert proposals[1][0][:, 2].max() > 63


def test_result_independent_of_batching(model, frames, proposals):
    single = rpn_proposals(model, frames, batch_size=1)
    alone = rpn_proposals(model, [frames[1]])
    for (b, s), (b1, s1) in zip(proposals, single):
        np.testing.assert_array_equal(b, b1)
        np.testing.assert_allclose(s, s1, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(alone[0][0], proposals[1][0])


def test_empty_and_bad_input(model):
    assert rpn_proposals(model, []) == []
    with pytest.raises(HarnessError, match="frame 0"):
        rpn_proposals(model, [np.zeros((8, 8), np.uint8)])
    with pytest.raises(HarnessError, match="frame 1"):
        rpn_proposals(model, [np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.float32)])


# ------------------------------------------------------------------ against torchvision's own RPN


def _torchvision_rpn_forward(model, image_list, features):
    """model.rpn(images, features), recording the scores its filter_proposals computes."""
    seen = {}
    orig = model.rpn.filter_proposals

    def spy(*a, **k):
        seen["out"] = orig(*a, **k)
        return seen["out"]

    model.rpn.filter_proposals = spy
    try:
        boxes, losses = model.rpn(image_list, features)
    finally:
        del model.rpn.filter_proposals
    assert losses == {}
    assert all(b is o for b, o in zip(boxes, seen["out"][0]))
    return boxes, seen["out"][1]


def test_matches_torchvision_rpn_forward(model, frames, proposals):
    for idx in ([0, 2], [1]):  # same-size batches, as rpn_proposals groups them
        tensors = [torch.from_numpy(frames[i]).permute(2, 0, 1).float() / 255 for i in idx]
        with torch.no_grad():
            image_list, _ = model.transform(tensors)
            features = model.backbone(image_list.tensors)
            tv_boxes, tv_scores = _torchvision_rpn_forward(model, image_list, features)
            ours_boxes, ours_scores = rpn_raw(model, image_list)
        for k, i in enumerate(idx):
            # before rescale/rounding: the same continuous boxes and scores, same order
            torch.testing.assert_close(ours_boxes[k], tv_boxes[k], rtol=0, atol=1e-5)
            torch.testing.assert_close(ours_scores[k], tv_scores[k], rtol=0, atol=1e-6)
            assert len(tv_boxes[k]) <= 40
            # and the public output is exactly those boxes, rescaled and rounded
            h, w = frames[i].shape[:2]
            assert image_list.image_sizes[k] != (h, w)  # the transform did resize
            expect = to_inclusive_boxes(resize_boxes(tv_boxes[k], list(image_list.image_sizes[k]), [h, w]), h, w)
            order = torch.argsort(tv_scores[k], descending=True, stable=True)
            np.testing.assert_array_equal(proposals[i][0], expect[order].numpy())
            np.testing.assert_allclose(proposals[i][1], tv_scores[k][order].numpy(), atol=1e-6)


# ------------------------------------------------------------------ rounding rule


def test_rounding_rule_hand_values():
    boxes = torch.tensor(
        [
            [3.2, 4.0, 10.7, 12.0],  # -> pixels 3..10 x 4..11
            [5.0, 5.0, 5.0, 5.0],  # degenerate -> 1 px
            [-1.5, -2.0, 25.0, 30.0],  # outside -> clipped to the 20x16 grid
            [20.0, 0.0, 20.0, 3.0],  # zero-width on the right edge -> last column
            [0.0, 0.0, 11.9999997, 12.0000004],  # rescale float noise -> integer 12
            [2.9999, 7.5, 3.0001, 7.6],  # tiny box straddling nothing -> still 1 px
        ]
    )
    got = to_inclusive_boxes(boxes, height=16, width=20)
    assert got.dtype == torch.int64
    assert got.tolist() == [
        [3, 4, 10, 11],
        [5, 5, 5, 5],
        [0, 0, 19, 15],
        [19, 0, 19, 2],
        [0, 0, 11, 11],
        [3, 7, 3, 7],
    ]


def test_rounding_end_to_end_through_rescale_and_sort(monkeypatch):
    # min_size 64 on a 32x32 frame: the transform doubles it; our fake RPN answers in that
    # doubled grid, rpn_proposals must halve, round and sort.
    m = _random_model(min_size=64, max_size=128)
    raw = torch.tensor([[6.4, 8.0, 21.4, 24.0], [0.0, 0.0, 64.0, 64.0], [10.0, 10.0, 10.0, 10.0]])
    scores = torch.tensor([0.2, 0.9, 0.5])
    seen = {}

    def fake_raw(model, image_list):
        seen["sizes"] = image_list.image_sizes
        return [raw.clone()], [scores.clone()]

    monkeypatch.setattr(rpn_mod, "rpn_raw", fake_raw)
    [(boxes, s)] = rpn_proposals(m, [np.zeros((32, 32, 3), np.uint8)])
    assert seen["sizes"] == [(64, 64)]
    assert boxes.tolist() == [[0, 0, 31, 31], [5, 5, 5, 5], [3, 4, 10, 11]]
    np.testing.assert_allclose(s, [0.9, 0.5, 0.2])


# ------------------------------------------------------------------ loading and its errors


def test_unknown_arch():
    with pytest.raises(HarnessError) as e:
        load_rpn("fasterrcnn_vgg16", random_init=True)
    for arch in rpn_mod.ARCHS:
        assert arch in str(e.value)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """torch hub cache in tmp_path, and any attempt to download fails the test."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def no_network(*a, **k):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    return tmp_path / "hub"


def test_uncached_weights_fail_fast_naming_the_path(offline_hub):
    w = torchvision.models.get_model_weights(ARCH).DEFAULT
    expect = offline_hub / "checkpoints" / w.url.rsplit("/", 1)[1]
    assert hub_cache_path(w) == expect
    with pytest.raises(HarnessError) as e:
        load_rpn(ARCH, weights="DEFAULT")
    msg = str(e.value)
    assert str(expect) in msg and w.url in msg and "annotators.rpn.checkpoint" in msg
    with pytest.raises(HarnessError, match=str(expect).replace("\\", "\\\\")):
        load_rpn(ARCH, weights=f"{type(w).__name__}.COCO_V1")


def test_unknown_weights_tag(offline_hub):
    with pytest.raises(HarnessError, match="COCO_V1"):
        load_rpn(ARCH, weights="IMAGENET1K_V2")
    with pytest.raises(HarnessError, match="not for"):
        load_rpn(ARCH, weights="ResNet50_Weights.DEFAULT")


def _coco_like_state_dict(model):
    """A random model's state dict shaped like torchvision's COCO files (FrozenBatchNorm: no counters)."""
    return {k: v.clone() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


def test_cached_weights_load_without_network(offline_hub, model, frames, proposals):
    w = torchvision.models.get_model_weights(ARCH).DEFAULT
    path = hub_cache_path(w)
    path.parent.mkdir(parents=True)
    torch.save(_coco_like_state_dict(model), path)
    m = load_rpn(ARCH, weights="DEFAULT", post_nms_top_n=40, nms_thresh=0.6)
    assert isinstance(m.backbone.body["0"][1], torchvision.ops.misc.FrozenBatchNorm2d)  # the pretrained build
    got = rpn_proposals(m, frames[:2])
    for (b, s), (b0, s0) in zip(got, proposals[:2]):
        np.testing.assert_allclose(s, s0, atol=1e-5)
        assert (b == b0).all(axis=1).mean() > 0.95  # FrozenBN vs BN: float noise may flip a rounding


def test_corrupt_cached_weights(offline_hub):
    path = hub_cache_path(torchvision.models.get_model_weights(ARCH).DEFAULT)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(HarnessError, match="could not load weights"):
        load_rpn(ARCH, weights="DEFAULT")


def test_checkpoint_roundtrip(tmp_path, model, frames, proposals):
    p = tmp_path / "det.pth"
    torch.save({"model": _coco_like_state_dict(model), "epoch": 3}, p)  # references-style wrapper
    m = load_rpn(ARCH, checkpoint=str(p), post_nms_top_n=40, nms_thresh=0.6)
    [(b, s)] = rpn_proposals(m, [frames[1]])
    np.testing.assert_array_equal(b, proposals[1][0])
    np.testing.assert_allclose(s, proposals[1][1], atol=1e-6)


def test_checkpoint_missing(tmp_path):
    with pytest.raises(HarnessError, match="does not exist"):
        load_rpn(ARCH, checkpoint=str(tmp_path / "nope.pth"))


def test_checkpoint_wrong_keys(tmp_path, model):
    sd = _coco_like_state_dict(model)
    sd["rpn.head.extra.weight"] = sd.pop("rpn.head.cls_logits.weight")
    sd["rpn.head.bbox_pred.bias"] = torch.zeros(7)
    p = tmp_path / "bad.pth"
    torch.save(sd, p)
    with pytest.raises(HarnessError) as e:
        load_rpn(ARCH, checkpoint=p)
    msg = str(e.value)
    assert "rpn.head.cls_logits.weight" in msg and "rpn.head.extra.weight" in msg
    assert "rpn.head.bbox_pred.bias" in msg and "shape" in msg
    other = tmp_path / "other.pth"
    torch.save({"foo": torch.zeros(1)}, other)
    with pytest.raises(HarnessError, match="missing"):
        load_rpn(ARCH, checkpoint=other)


def test_no_weight_source():
    with pytest.raises(HarnessError, match="checkpoint"):
        load_rpn(ARCH, weights=None)
    with pytest.raises(HarnessError, match="exclusive"):
        load_rpn(ARCH, random_init=True, checkpoint="x.pth")
