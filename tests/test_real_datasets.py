"""The real-dataset framework: serving frames at 224 with rescaled GT, the index cache,
`harness data prepare` on fixture trees in the public formats (and each corruption's named
error), the resized-frame cache, and runs of the method plugins on them."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from harness.cli import main
from harness.data.index import DatasetIndex, IndexedFrame, Problem
from harness.data.real import read_resized, reduced_flag, rescale_box
from harness.errors import HarnessError


# ------------------------------------------------------------------------------ geometry


@pytest.mark.parametrize("box, size, new, expected", [
    ((0, 0, 499, 374), (500, 375), 224, (0, 0, 223, 223)),          # the whole image
    ((60, 27, 385, 331), (500, 375), 224, (26, 16, 172, 197)),       # int(60*224/500)=26, int(331*224/375)=197
    ((455.7, 94.2, 1279, 628), (1280, 720), 224, (79, 29, 223, 195)),  # float boxes (YTOv1)
    ((10, 10, 20, 20), (32, 32), 64, (20, 20, 40, 40)),              # enlarging
])
def test_boxes_rescale_as_wsolevaluation_truncating(box, size, new, expected):
    assert rescale_box(box, size, new) == expected


@pytest.mark.parametrize("size, target, flag", [
    ((1280, 720), 224, cv2.IMREAD_REDUCED_COLOR_2),   # 720 // 4 = 180 < 224 <= 360
    ((2000, 1800), 224, cv2.IMREAD_REDUCED_COLOR_8),  # 1800 // 8 = 225
    ((500, 375), 224, cv2.IMREAD_COLOR),              # 375 // 2 = 187
    ((1280, 720), 64, cv2.IMREAD_REDUCED_COLOR_8),
])
def test_jpeg_reduction_keeps_the_short_side_at_least_the_target(size, target, flag):
    assert reduced_flag(size, target) == flag


def test_read_resized_matches_a_full_decode_closely_and_is_rgb(tmp_path):
    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur(rng.integers(0, 255, (720, 1280, 3), dtype=np.uint8), (31, 31), 8)
    img[200:500, 300:900] = (0, 0, 255)  # red in BGR
    path = tmp_path / "f.jpg"
    cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
    full = read_resized(path, (1280, 720), 224, fast=False)
    fast = read_resized(path, (1280, 720), 224, fast=True)
    assert full.shape == fast.shape == (224, 224, 3) and full.dtype == np.uint8
    assert tuple(full[112, 112]) == pytest.approx((255, 0, 0), abs=8)  # RGB order
    assert np.abs(full.astype(int) - fast.astype(int)).mean() < 2.0
    with pytest.raises(HarnessError, match="cannot decode image"):
        read_resized(tmp_path / "missing.jpg", (1280, 720), 224, fast=True)


# ------------------------------------------------------------------------------ prepare and serving


def _cub(tmp_path, **kw) -> dict:
    from harness.data.wsol_metadata_fixture import make_cub_tree

    return make_cub_tree(tmp_path / "CUB", **kw)


def _dataset(name: str, root: Path, **extra):
    from harness.cli import _dataset_config

    entry, cfg = _dataset_config(name, {"data.root": str(root), **extra})
    return entry.factory(cfg.data, progress=False)


def test_prepare_prints_counts_beside_the_published_ones_and_saves_the_index(tmp_path, capsys):
    tree = _cub(tmp_path)
    assert main(["data", "prepare", "cub", "--root", str(tree["root"]), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "cub: 200 classes, image dataset" in out  # the reader knows CUB's classes; the copy has 3
    assert "test frames: 6 here, 5,794 published" in out  # a partial copy is flagged, not refused
    saved = Path(out.strip().split("index saved to ")[1])
    index = json.loads(saved.read_text())
    assert {k: len(v) for k, v in index["splits"].items()} == {"train": 6, "val": 3, "test": 6}


def test_a_real_dataset_serves_224_frames_with_rescaled_boxes(tmp_path):
    tree = _cub(tmp_path, image_size=(500, 375))
    ds = _dataset("cub", tree["root"])
    test = ds.split("test")
    assert ds.kind == "image" and ds.classes[:3] == tree["classes"] and len(ds.classes) == 200 and len(test) == 6
    frame = test.frames[0]
    (x0, y0, x1, y1), = tree["boxes"][frame.id]
    assert frame.boxes == (rescale_box((x0, y0, x1, y1), (500, 375), 224),)
    assert frame.label == tree["labels"][frame.id] and frame.video == frame.id
    image = test.image(0)
    assert image.shape == (224, 224, 3) and image.dtype == np.uint8
    # the fixture draws the object inside its box: the box region differs from the frame's mean
    bx0, by0, bx1, by1 = frame.boxes[0]
    assert np.abs(image[by0:by1 + 1, bx0:bx1 + 1].mean() - image.mean()) > 1


def test_the_index_is_cached_and_prepare_rebuilds_it(tmp_path, monkeypatch):
    from harness.data import wsol_metadata

    tree = _cub(tmp_path)
    first = _dataset("cub", tree["root"])

    def boom(*a, **k):
        raise AssertionError("the cached index should have been used")

    monkeypatch.setattr(type(wsol_metadata.CUB), "index", boom)
    again = _dataset("cub", tree["root"])
    assert again.identity == first.identity
    with pytest.raises(AssertionError, match="cached index"):
        main(["data", "prepare", "cub", "--root", str(tree["root"]), "--no-progress"])


@pytest.mark.parametrize("damage, needle", [
    ("truncate", "unreadable or corrupt image"),
    ("resize", "image is 40x30 but the metadata says"),
    ("delete", "image file is missing"),
])
def test_prepare_opens_every_evaluated_image(tmp_path, capsys, damage, needle):
    tree = _cub(tmp_path)
    victim = tree["root"] / tree["ids"]["test"][1]
    if damage == "truncate":
        victim.write_bytes(victim.read_bytes()[:200])
    elif damage == "resize":
        cv2.imwrite(str(victim), np.zeros((30, 40, 3), np.uint8))
    else:
        victim.unlink()
    assert main(["data", "prepare", "cub", "--root", str(tree["root"]), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert tree["ids"]["test"][1] in err and needle in err and "1 problem(s)" in err


def test_the_first_line_of_a_failed_prepare_names_the_first_problem(tmp_path, capsys):
    tree = _cub(tmp_path)
    victims = [tree["ids"]["test"][0], tree["ids"]["test"][3], tree["ids"]["val"][1]]
    for v in victims:
        (tree["root"] / v).unlink()
    assert main(["data", "prepare", "cub", "--root", str(tree["root"]), "--no-progress"]) == 2
    lines = capsys.readouterr().err.splitlines()
    first = [v for v in victims if v in lines[0]]
    assert len(first) == 1 and "image file is missing" in lines[0], lines[0]
    assert lines[0].startswith(f"harness: error: dataset 'cub' at {tree['root']}: {first[0]}: image file is missing")
    assert lines[0].endswith("(and 2 more; 3 problem(s) in all, listed below)")
    listed = [line for line in lines[1:] if "image file is missing" in line]
    assert len(listed) == 3 and all(any(v in line for line in listed) for v in victims)  # the list is kept
    assert "fix them (see docs/datasets.md" in lines[-1] and "harness data prepare cub --root" in lines[-1]


def test_a_format_problem_is_the_first_line_too(tmp_path, capsys):
    tree = _cub(tmp_path)
    labels = tree["metadata"] / "test" / "class_labels.txt"
    rows = labels.read_text().splitlines()
    rows[1] = rows[1].split(",")[0] + ",bird"
    labels.write_text("\n".join(rows) + "\n")
    assert main(["data", "prepare", "cub", "--root", str(tree["root"]), "--no-progress"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith(f"harness: error: dataset 'cub' at {tree['root']}: metadata/test/class_labels.txt:2: ")
    assert lines[0].endswith("(1 problem(s))")
    assert lines[1].strip().startswith("metadata/test/class_labels.txt:2: ") and "fix them" in lines[-1]


def test_missing_root_and_unknown_root_name_the_fix(tmp_path, capsys):
    assert main(["data", "prepare", "cub", "--no-progress"]) == 2
    assert "needs its location: --cfg-options data.root=PATH" in capsys.readouterr().err
    assert main(["data", "prepare", "cub", "--root", str(tmp_path / "nope"), "--no-progress"]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_openimages_pxap_leaves_the_ignore_regions_out(tmp_path):
    """PxAP counts on a constant map: every foreground pixel positive, every background pixel
    outside the ignore regions negative, the ignore pixels nowhere."""
    from harness.config import Config
    from harness.data.wsol_metadata_fixture import make_openimages_tree
    from harness.inference import accumulate, evaluated_frames

    tree = make_openimages_tree(tmp_path / "OI", image_size=(96, 64))
    ds = _dataset("openimages", tree["root"], **{"data.image_size": 48})
    split = ds.split("test")
    assert split.read_ignore is not None
    fg = [split.read_mask(i) for i in evaluated_frames(split)]
    ignore = [split.read_ignore(i) for i in evaluated_frames(split)]
    assert any(m.any() for m in ignore)
    maps = ((i, np.full((48, 48), 0.5, np.float32), None) for i in evaluated_frames(split))
    cfg = Config({"eval": {"threshold_step": 0.01, "iou_thresholds": [0.3, 0.5, 0.7], "multi_contour": False}})
    rec = accumulate(maps, split, ds.num_classes, cfg)
    assert sum(rec["masks"]["pos"]) == sum(int(m.sum()) for m in fg)
    assert sum(rec["masks"]["neg"]) == sum(int((~m & ~g).sum()) for m, g in zip(fg, ignore))


def test_resized_cache_serves_the_same_pixels_from_one_memmap(tmp_path):
    tree = _cub(tmp_path)
    plain = _dataset("cub", tree["root"], **{"data.image_size": 64})
    cached = _dataset("cub", tree["root"], **{"data.image_size": 64, "data.resized_cache": True})
    for name in ("train", "val", "test"):
        a, b = plain.split(name), cached.split(name)
        assert all(np.array_equal(a.image(i), b.image(i)) for i in range(len(a)))
    files = sorted((p.parent.name, p.name) for p in (Path(__import__("os").environ["HARNESS_HOME"]) / "resized")
                   .rglob("*.npy"))
    assert [n for d, n in files if d.startswith(f"cub-{plain.identity}-64")] == ["test.npy", "train.npy", "val.npy"]


@pytest.mark.slow
def test_cam_baselines_run_on_cub_unchanged(tmp_path, capsys):
    from conftest import TINY_YTO

    tree = _cub(tmp_path, num_classes=3, train_per_class=6, val_per_class=2, test_per_class=3)
    opts = {k: v for k, v in TINY_YTO.items() if not k.startswith(("data.", "annotators."))}
    argv = ["run", "--plugin", "gradcam", "--protocol", "gt-val", "--dataset", "cub", "--run-root",
            str(tmp_path / "runs"), "--no-progress", "--cfg-options", f"data.root={tree['root']}",
            "data.image_size=32", "loader.num_workers=0", *[f"{k}={v}" for k, v in opts.items()]]
    assert main(argv) == 0
    [run] = (tmp_path / "runs").glob("*-gradcam-gt-val")
    record = json.loads((run / "result.json").read_text())
    assert record["dataset"]["name"] == "cub" and record["metrics"]["test"]["frames"] == 9
    assert "published tables this run fits: " in capsys.readouterr().out
    from harness.leaderboard import get
    from harness.leaderboard.runs import fits, load_record

    assert fits(get("fcam-t1"), load_record(run))  # a real CUB run: no [synth] mark, ranked


# ------------------------------------------------------------------------------ YouTube-Objects


def test_every_real_dataset_is_listed(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("ytov1", "ytov2.2", "cub", "ilsvrc", "openimages", "synth-yto", "synth-cub"):
        assert f" {name} " in out or f"{name}\n" in out or f"| {name}" in out, name


@pytest.mark.parametrize("name, make", [("ytov1", "make_ytov1_tree"), ("ytov2.2", "make_ytov2_2_tree")])
def test_prepare_and_serve_youtube_objects(tmp_path, capsys, name, make):
    from harness.data import youtube_objects_fixture as fx

    tree = getattr(fx, make)(tmp_path / name)
    root = tree["root"] if isinstance(tree, dict) and "root" in tree else tmp_path / name
    assert main(["data", "prepare", name, "--root", str(root), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"{name}: 10 classes, video dataset" in out and "published" in out
    ds = _dataset(name, root, **{"data.image_size": 64})
    test = ds.split("test")
    assert ds.kind == "video" and all(f.has_boxes for f in test.frames)
    assert all(0 <= v <= 63 for f in test.frames for b in f.boxes for v in b)
    train = ds.split("train")
    shots = {}
    for f in train.frames:  # train frames come in temporal order within their shot
        shots.setdefault((f.video, f.shot), []).append(f.index)
    assert shots and all(v == sorted(v) for v in shots.values())
    assert test.image(0).shape == (64, 64, 3)
    # a corrupt test frame is named by prepare
    victim = root / test.frames[0].id
    victim.write_bytes(b"not a jpeg")
    assert main(["data", "prepare", name, "--root", str(root), "--no-progress"]) == 2
    assert test.frames[0].id in capsys.readouterr().err


@pytest.mark.slow
def test_fcam_family_runs_on_ytov1_unchanged(tmp_path):
    """The decoder family (its shot-grouped clips, CAM bank, CRF) on a real-format video dataset."""
    from harness import runner
    from harness.data.youtube_objects_fixture import make_ytov1_tree
    from test_fcam_family_e2e import TINY_DECODER

    make_ytov1_tree(tmp_path / "yto", frames_per_shot=4)
    opts = {k: v for k, v in TINY_DECODER.items() if not k.startswith(("data.", "annotators."))}
    overrides = {**opts, "data.root": str(tmp_path / "yto"), "data.image_size": 32, "loader.num_workers": 0,
                 "data.train_frames_per_shot": 0, "method.decoder.epochs": 1}
    run_dir = runner.prepare("colocam", "gt-val", "ytov1", overrides, tmp_path / "runs")
    record = runner.execute(run_dir, progress=False)
    assert record["dataset"]["name"] == "ytov1" and record["selection"]["stage"] == "decoder"
    # the entry's 10 frames of each shot per epoch train the classifier; the decoder keeps its clips
    assert record["train_frames"] == {"per_shot_per_epoch": 10, "stages_with_own_batches": ["decoder"]}
    assert 0 <= record["metrics"]["test"]["corloc"] <= 100


def test_prepare_takes_the_synthetic_datasets_through_the_same_interface(capsys):
    assert main(["data", "prepare", "synth-cub", "--no-progress", "--cfg-options", "data.image_size=32",
                 "data.num_classes=4", "data.train_images_per_class=4", "data.val_images_per_class=2",
                 "data.test_images_per_class=2"]) == 0
    assert "synth-cub" in capsys.readouterr().out
