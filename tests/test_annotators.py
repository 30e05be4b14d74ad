"""Pseudo-box annotators: their rules on constructed cases, the cache, the quality report."""
from __future__ import annotations

import json

import numpy as np
import pytest

from harness.annotators import base
from harness.annotators.base import Annotation, annotation_quality, pseudo_boxes
from harness.annotators.noisy_gt import perturb_box
from harness.annotators.proposals import choose_box
from harness.data.base import Frame
from harness.data.synth import load_synth
from harness.errors import HarnessError

TINY = dict(image_size=32, train_videos_per_class=2, val_videos_per_class=1, test_videos_per_class=1,
            shots_per_video=2, frames_per_shot=4)
TINY_CLASSIFIER = dict(epochs=1, batch_size=16, feature_index=1, cache=False)


@pytest.fixture(scope="module")
def dataset():
    return load_synth("yto", TINY, progress=False)


def gt_iou_boxes(dataset, split="val"):
    s = dataset.split(split)
    return {f.id: [list(b) for b in f.boxes] for f in s.frames if f.has_boxes}


# ------------------------------------------------------------------ the proposal chain


def test_choose_box_follows_filter_then_pointing_game_then_score():
    props = np.array([
        [0, 0, 9, 9],    # 0: contains the peak, best filter score, low class score
        [4, 4, 6, 6],    # 1: contains the peak, high class score
        [20, 20, 29, 29],  # 2: misses the peak, the highest class score
        [3, 3, 8, 8],    # 3: contains the peak, filtered out
        [30, 0, 31, 1],  # 4: misses the peak, filtered out
    ])
    scores = np.array([0.1, 0.7, 0.9, 0.8, 0.0])
    filt = np.array([0.9, 0.8, 0.7, 0.1, 0.0])
    out = choose_box(props, scores, filt, peak=(5, 5), fraction=0.6)  # keeps ceil(3) = 3
    assert out["final"] == (4, 4, 6, 6)  # best class score among kept boxes holding the peak
    assert out["pg"] == (3, 3, 8, 8)  # without the filter, box 3 wins
    assert out["top_filtered"] == (0, 0, 9, 9)
    # no kept box holds the peak: the best-scored kept box
    out = choose_box(props, scores, filt, peak=(31, 1), fraction=0.6)
    assert out["final"] == (20, 20, 29, 29)


def test_noisy_gt_perturbation_is_bounded_and_zero_noise_is_identity():
    rng = np.random.default_rng(0)
    assert perturb_box((3, 4, 10, 20), 0.0, rng, 32, 32) == (3, 4, 10, 20)
    for _ in range(200):
        b = perturb_box((8, 8, 23, 23), 0.5, rng, 32, 32)
        assert 0 <= b[0] <= b[2] <= 31 and 0 <= b[1] <= b[3] <= 31
        w = b[2] - b[0] + 1
        assert 4 <= w <= 32  # scale within +-50% and aspect within +-50%: width stays within 16*0.5*0.5..


def test_quality_report_against_hand_computed_iou():
    frames = [Frame("a", 0, "v", "s", 0, ((0, 0, 9, 9),)), Frame("b", 0, "v", "s", 1, ((0, 0, 9, 9),))]
    result = Annotation(
        boxes=[[(0, 0, 9, 9)], [(0, 0, 4, 9)]],  # IoU 1 and 50/100
        steps={"pg": [(0, 0, 9, 4), (0, 0, 9, 9)]},
        candidates=[np.array([[0, 0, 9, 9]]), np.array([[0, 0, 4, 4], [0, 0, 9, 8]])],
        peaks=[(5, 5), (20, 20)],
    )
    q = annotation_quality(frames, result)
    assert q["mean_iou"] == pytest.approx(75.0) and q["corloc"] == 100.0
    assert q["steps"]["pg"] == pytest.approx(75.0)
    assert q["upper_bound_iou"] == pytest.approx(95.0)
    assert q["pointing_game"] == 50.0


# ------------------------------------------------------------------ cache


def test_noisy_gt_is_cached_reused_and_invalidated(dataset, monkeypatch):
    first = pseudo_boxes("noisy-gt", {"noise": 0.2, "seed": 1}, dataset, "val", progress=False)
    assert 0 < first.quality["mean_iou"] < 100
    calls = []
    real = base.Annotator.annotate

    def spy(cls):
        orig = cls.annotate

        def wrapped(self, *a, **k):
            calls.append(self.settings)
            return orig(self, *a, **k)
        return wrapped

    from harness.annotators.noisy_gt import NoisyGt

    monkeypatch.setattr(NoisyGt, "annotate", spy(NoisyGt))
    again = pseudo_boxes("noisy-gt", {"noise": 0.2, "seed": 1}, dataset, "val", progress=False)
    assert calls == [] and again.boxes == first.boxes and again.key == first.key
    other = pseudo_boxes("noisy-gt", {"noise": 0.4, "seed": 1}, dataset, "val", progress=False)
    assert len(calls) == 1 and other.key != first.key and other.boxes != first.boxes
    # a damaged cache file is recomputed, never trusted
    path = base.cache_dir(dataset, "noisy-gt", first.key) / "val.json"
    path.write_text("{not json")
    fixed = pseudo_boxes("noisy-gt", {"noise": 0.2, "seed": 1}, dataset, "val", progress=False)
    assert len(calls) == 2 and fixed.boxes == first.boxes
    del real


def test_noisy_gt_at_zero_noise_reproduces_gt(dataset):
    pb = pseudo_boxes("noisy-gt", {"noise": 0.0}, dataset, "val", progress=False)
    assert pb.quality["mean_iou"] == pytest.approx(100.0)
    assert {k: [list(b) for b in v] for k, v in pb.boxes.items()} == gt_iou_boxes(dataset)


# ------------------------------------------------------------------ file annotator


def test_file_annotator_reads_localization_lines(dataset, tmp_path):
    path = tmp_path / "boxes.txt"
    lines = [f"{fid},{b[0]},{b[1]},{b[2]},{b[3]}" for fid, bs in gt_iou_boxes(dataset).items() for b in bs]
    path.write_text("\n".join(lines) + "\n")
    pb = pseudo_boxes("file", {"path": str(path)}, dataset, "val", progress=False)
    assert pb.quality["mean_iou"] == pytest.approx(100.0)
    # the same boxes as JSON give the same result
    jpath = tmp_path / "boxes.json"
    jpath.write_text(json.dumps(gt_iou_boxes(dataset)))
    assert pseudo_boxes("file", {"path": str(jpath)}, dataset, "val", progress=False).boxes == pb.boxes


@pytest.mark.parametrize("content, needle", [
    ("a,1,2,3\n", "boxes.txt:1: expected 'frame_id,x0,y0,x1,y1'"),
    ("a,1,2,x,4\n", "non-numeric"),
    ("a,5,2,3,4\n", "needs 0 <= x0 <= x1"),
    ("a,1,2,3,4\n", "has no box for"),
    # non-finite coordinates
    ("a,1,2,3,4\nb,1,nan,3,4\n", r"boxes.txt:2: box \['1', 'nan', '3', '4'\] has a NaN or infinite coordinate"),
    ("b,0,0,inf,4\n", r"boxes.txt:1: .* has a NaN or infinite coordinate.*fix the box or drop it"),
    ("b,0,0,1e999,4\n", r"boxes.txt:1: .* NaN or infinite"),
    ("b,-inf,0,1,4\n", r"boxes.txt:1: .* NaN or infinite"),
    ("b,1_0,0,12,4\n", r"boxes.txt:1: box \['1_0', .* non-numeric"),  # float() would read 10
])
def test_file_annotator_errors_name_the_problem(dataset, tmp_path, content, needle):
    path = tmp_path / "boxes.txt"
    path.write_text(content)
    with pytest.raises(HarnessError, match=needle):
        pseudo_boxes("file", {"path": str(path)}, dataset, "val", progress=False)


@pytest.mark.parametrize("entry, needle", [
    ("[0, 0, NaN, 4]", r"frame 'f1': box \[0, 0, nan, 4\] has a NaN or infinite coordinate"),
    ("[[0, 0, 2, 4], [Infinity, 0, 1, 1]]", r"frame 'f1': box \[inf, 0, 1, 1\] has a NaN or infinite"),
    ("[0, 0, -Infinity, 4]", "NaN or infinite"),
    ("[0, 0, 1e400, 4]", "NaN or infinite"),  # parses as float inf
    ("[0, 0, 1" + "0" * 400 + ", 4]", "non-numeric"),  # an int too large for a float
    ("[0, 0, true, 4]", "non-numeric"),  # JSON true is not pixel 1
    ('[0, 0, "10", 4]', "non-numeric"),  # nor is a string of digits a number
    ('"0,0,1,1"', "needs a non-empty list"),
])
def test_file_annotator_refuses_non_finite_coordinates_in_json(dataset, tmp_path, entry, needle):
    path = tmp_path / "boxes.json"
    path.write_text('{"f0": [0, 0, 1, 1], "f1": ' + entry + "}")
    with pytest.raises(HarnessError, match=needle) as info:
        pseudo_boxes("file", {"path": str(path)}, dataset, "val", progress=False)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("name, data, needle", [
    ("boxes.txt", b"a,1,2,3,4\n\x89PNG\r\n\x1a\n\x00\x00", r"boxes.txt, line 2: byte 0x89 is not UTF-8 text"),
    ("boxes.json", b"\xff\xd8\xff\xe0\x00\x10JFIF", r"boxes.json, line 1: byte 0xff is not UTF-8"),
    ("boxes.txt", b"a,1,2,3,4\nb,1\x00,2,3,4\n", r"boxes.txt, line 2: NUL byte, a binary file"),
    ("boxes.txt", "a,1,2,3,4\n".encode("utf-16"), r"boxes.txt, line 1: byte 0xff is not UTF-8"),
    ("boxes.txt", "a,1,2,3,4\n".encode("utf-16-le"), r"boxes.txt, line 1: NUL byte.*UTF-16"),
])
def test_file_annotator_names_a_binary_file(dataset, tmp_path, name, data, needle):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(HarnessError, match=needle) as info:
        pseudo_boxes("file", {"path": str(path)}, dataset, "val", progress=False)
    assert "annotators.file.path" in str(info.value) and "UTF-8" in str(info.value)


def test_file_annotator_reads_a_utf8_file_with_a_byte_order_mark(dataset, tmp_path):
    lines = [f"{fid},{b[0]},{b[1]},{b[2]},{b[3]}" for fid, bs in gt_iou_boxes(dataset).items() for b in bs]
    path = tmp_path / "boxes.csv"
    path.write_bytes("\n".join(lines).encode("utf-8-sig"))  # the first id must not start with U+FEFF
    pb = pseudo_boxes("file", {"path": str(path)}, dataset, "val", progress=False)
    assert pb.quality["mean_iou"] == pytest.approx(100.0)


def test_file_annotator_box_outside_image(dataset, tmp_path):
    boxes = gt_iou_boxes(dataset)
    first = next(iter(boxes))
    boxes[first] = [[0, 0, 32, 5]]
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps(boxes))
    with pytest.raises(HarnessError, match="outside its 32x32 image"):
        pseudo_boxes("file", {"path": str(path)}, dataset, "val", progress=False)


def test_file_annotator_needs_a_path(dataset):
    with pytest.raises(HarnessError, match="annotators.file.path="):
        pseudo_boxes("file", None, dataset, "val", progress=False)
    with pytest.raises(HarnessError, match="does not exist"):
        pseudo_boxes("file", {"path": "/nonexistent/boxes.txt"}, dataset, "val", progress=False)


# ------------------------------------------------------------------ the learned annotators


def test_cam_pg_on_synth_reports_each_step(dataset):
    from harness.config import BASE_CONFIG, read_file

    classifier = {**read_file(BASE_CONFIG)["classifier"], **TINY_CLASSIFIER}
    pb = pseudo_boxes("cam-pg", {"classifier": classifier}, dataset, "val", progress=False)
    q = pb.quality
    assert set(q["steps"]) == {"pg", "top_filtered"}
    assert q["proposals_per_frame"] > 1
    # the best proposal bounds every selection rule
    assert q["upper_bound_iou"] >= max(q["mean_iou"], *q["steps"].values())
    assert 0 <= q["pointing_game"] <= 100
    ids = [f.id for f in dataset.split("val").frames if f.has_boxes]
    assert sorted(pb.boxes) == sorted(ids)


def test_rpn_annotator_with_random_weights_runs_the_same_chain(dataset):
    from harness.config import BASE_CONFIG, read_file

    classifier = {**read_file(BASE_CONFIG)["classifier"], **TINY_CLASSIFIER}
    rpn = dict(arch="fasterrcnn_mobilenet_v3_large_320_fpn", weights=None, checkpoint=None, random_init=True,
               post_nms_top_n=50)
    pb = pseudo_boxes("rpn", {"classifier": classifier, "rpn": rpn}, dataset, "val", progress=False)
    assert pb.quality["upper_bound_iou"] >= pb.quality["mean_iou"]


@pytest.mark.parametrize("maps", ["clip-es", "gradcam"])
def test_clip_annotator_with_a_tiny_random_clip(dataset, maps):
    from pathlib import Path

    config = Path(__file__).parent / "data" / "tiny-clip.json"
    pb = pseudo_boxes("clip", {"model": str(config), "pretrained": None, "random_init": True, "maps": maps,
                               "attn_layers": 2}, dataset, "val", progress=False)
    assert pb.quality["frames"] == len(pb.boxes) and "pointing_game" in pb.quality


def test_clip_annotator_maps_are_clip_es_by_default_and_checked(dataset, monkeypatch):
    import harness.plugins.clip_es.model as clip_es_model
    from harness.annotators.clip import ClipAnnotator

    assert ClipAnnotator({}).settings["maps"] == "clip-es"
    with pytest.raises(HarnessError, match="annotators.clip.maps='clipes'"):
        ClipAnnotator({"maps": "clipes"})
    calls = []
    real = clip_es_model.clip_es_maps
    monkeypatch.setattr(clip_es_model, "clip_es_maps", lambda *a, **k: calls.append(k) or real(*a, **k))
    from pathlib import Path

    config = Path(__file__).parent / "data" / "tiny-clip.json"
    pseudo_boxes("clip", {"model": str(config), "pretrained": None, "random_init": True, "attn_layers": 1,
                          "tau_caa": 0.6}, dataset, "val", progress=False)
    assert calls and all(k["attn_layers"] == 1 and k["tau_caa"] == 0.6 for k in calls)


def test_clip_without_weights_says_how_to_supply_them(dataset, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HarnessError, match="annotators.clip.checkpoint"):
        pseudo_boxes("clip", {"model": "ViT-B-32", "pretrained": "laion2b_s34b_b79k"}, dataset, "val", progress=False)


def test_unknown_annotator_lists_the_valid_ones(dataset):
    with pytest.raises(HarnessError, match="cam-pg"):
        pseudo_boxes("nope", None, dataset, "val", progress=False)


def test_harness_annotate_prints_the_quality(capsys):
    from harness.cli import main

    argv = ["annotate", "--annotator", "noisy-gt", "--no-progress", "--cfg-options", "annotators.noisy-gt.noise=0",
            *[f"data.{k}={v}" for k, v in TINY.items()]]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "noisy-gt on synth-yto val" in out and "100" in out
    assert main(["annotate", "--annotator", "noisy-gt", "--cfg-options", "classifier.lr=1"]) == 2
    assert "annotators.* and data.* options only" in capsys.readouterr().err


def test_missing_rpn_weights_fail_before_any_training(dataset, tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    trained = []
    monkeypatch.setattr("harness.annotators.proposals.trained_classifier", lambda *a, **k: trained.append(1))
    with pytest.raises(HarnessError, match="annotators.rpn.checkpoint"):
        pseudo_boxes("rpn", None, dataset, "val", progress=False)
    assert trained == []


def test_file_annotator_names_json_nested_past_the_parser(dataset, tmp_path):
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(HarnessError, match=r"deep.json is not valid JSON: RecursionError"):
        pseudo_boxes("file", {"path": str(path), "format": "json"}, dataset, "val", progress=False)
