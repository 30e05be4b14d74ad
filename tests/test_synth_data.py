"""Synthetic datasets (harness.data.synth) and the frame grid (harness.data.show)."""
from __future__ import annotations

import json
import math
import os
import warnings
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import pytest

from harness.data import synth
from harness.data.show import CAPTION, CELL, GAP, save_grid
from harness.data.synth import (
    MIN_VISIBLE_PX, SYNTH_CUB_DEFAULTS, SYNTH_YTO_DEFAULTS, SynthCacheWarning, load_synth,
    summary,
)
from harness.errors import HarnessError

SMALL_YTO = dict(image_size=32, train_videos_per_class=2, val_videos_per_class=1,
                 test_videos_per_class=1, shots_per_video=2, frames_per_shot=6)
SMALL_CUB = dict(image_size=32, num_classes=12, train_images_per_class=4,
                 val_images_per_class=2, test_images_per_class=3)


@pytest.fixture(scope="module")
def yto(tmp_path_factory):
    """The default synth-yto (also checks that the defaults generate)."""
    return load_synth("yto", home=tmp_path_factory.mktemp("home"), progress=False)


def arrays(ds) -> dict[str, np.ndarray]:
    """In-memory copies of every split's pixels and masks (not views of the cache files)."""
    out = {}
    for name, sp in ds.splits.items():
        out[f"{name}/frames"] = np.stack([sp.read(i) for i in range(len(sp))])
        if sp.read_mask is not None:
            out[f"{name}/masks"] = np.stack([sp.read_mask(i) for i in range(len(sp))])
    return out


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k


def visible_px(ds, split: str) -> list[int]:
    return json.loads((Path(ds.info["root"]) / split / "index.json").read_text())["visible_px"]


# --------------------------------------------------------------------------- determinism


def test_same_params_same_data_in_two_homes(tmp_path):
    a = load_synth("yto", SMALL_YTO, home=tmp_path / "a", progress=False)
    b = load_synth("yto", SMALL_YTO, home=tmp_path / "b", progress=False)
    assert a.identity == b.identity
    assert_same(arrays(a), arrays(b))
    assert a.info["params"] == b.info["params"] == {**SYNTH_YTO_DEFAULTS, **SMALL_YTO}
    assert a.info["generator_version"] == synth.GENERATOR_VERSION


def test_other_seed_other_data(tmp_path):
    a = load_synth("yto", SMALL_YTO, home=tmp_path, progress=False)
    b = load_synth("yto", {**SMALL_YTO, "seed": 1}, home=tmp_path, progress=False)
    assert a.info["root"] != b.info["root"]
    assert a.identity != b.identity
    assert not np.array_equal(a.split("train").read(0), b.split("train").read(0))


def test_videos_do_not_depend_on_generation_order(tmp_path):
    # Each video has its own seed: more train videos must leave the val videos untouched.
    a = load_synth("yto", SMALL_YTO, home=tmp_path, progress=False)
    b = load_synth("yto", {**SMALL_YTO, "train_videos_per_class": 3}, home=tmp_path,
                   progress=False)
    assert len(b.split("train")) > len(a.split("train"))
    assert np.array_equal(arrays(a)["val/frames"], arrays(b)["val/frames"])


# --------------------------------------------------------------------------- ground truth


def test_val_test_boxes_are_tight_boxes_of_masks(yto):
    size = yto.info["params"]["image_size"]
    for name in ("val", "test"):
        sp = yto.split(name)
        assert len(sp) > 0
        for i, f in enumerate(sp.frames):
            mask = sp.read_mask(i)
            assert mask.dtype == bool and mask.shape == (size, size)
            assert mask.sum() >= MIN_VISIBLE_PX
            ys, xs = np.nonzero(mask)
            assert f.boxes == ((xs.min(), ys.min(), xs.max(), ys.max()),)
            x0, y0, x1, y1 = f.boxes[0]
            assert 0 <= x0 <= x1 <= size - 1 and 0 <= y0 <= y1 <= size - 1


def test_some_objects_are_cut_by_the_border(yto):
    size = yto.info["params"]["image_size"]
    boxes = [f.boxes[0] for s in ("val", "test") for f in yto.split(s).frames]
    cut = [b for b in boxes if min(b[0], b[1]) == 0 or max(b[2], b[3]) == size - 1]
    assert 0 < len(cut) < len(boxes) / 2


def test_absent_frames_are_in_train_only(yto):
    train = visible_px(yto, "train")
    absent = sum(v == 0 for v in train)
    assert absent == yto.info["absent_frames"]["train"]
    assert 0.02 * len(train) <= absent <= 0.12 * len(train)  # a few percent, as in YTO
    for name in ("val", "test"):
        assert min(visible_px(yto, name)) >= MIN_VISIBLE_PX
        assert yto.info["absent_frames"][name] == 0


def test_train_is_weak(yto):
    train = yto.split("train")
    assert train.read_mask is None
    assert all(f.boxes == () for f in train.frames)
    for name in ("val", "test"):
        assert all(len(f.boxes) == 1 for f in yto.split(name).frames)


def test_images_are_rgb_uint8(yto):
    size = yto.info["params"]["image_size"]
    img = yto.split("test").read(0)
    assert img.dtype == np.uint8 and img.shape == (size, size, 3)
    img[:] = 0  # a copy: must not touch the (read-only) cache
    assert yto.split("test").read(0).any()


# --------------------------------------------------------------------------- structure


def test_split_by_video_and_labels(yto):
    assert yto.kind == "video" and yto.name == "synth-yto"
    assert yto.classes == list(synth.YTO_CLASSES)
    videos = {name: {f.video for f in sp.frames} for name, sp in yto.splits.items()}
    assert not videos["train"] & videos["val"]
    assert not videos["train"] & videos["test"]
    assert not videos["val"] & videos["test"]
    p = yto.info["params"]
    assert len(videos["train"]) == 10 * p["train_videos_per_class"]
    label_of = {}
    for sp in yto.splits.values():
        for f in sp.frames:
            assert f.video.split("/")[0] == yto.classes[f.label]
            assert f.shot.startswith(f.video + "/shot-") and f.id.startswith(f.shot + "/frame-")
            assert label_of.setdefault(f.video, f.label) == f.label
    assert len(set(f.id for sp in yto.splits.values() for f in sp.frames)) == \
        sum(len(sp) for sp in yto.splits.values())


def test_shots_are_consecutive_frames(yto):
    p = yto.info["params"]
    order = defaultdict(list)
    for k, f in enumerate(yto.split("train").frames):
        order[f.shot].append((k, f.index))
    assert len(order) == 10 * p["train_videos_per_class"] * p["shots_per_video"]
    for shot, items in order.items():
        positions, indices = zip(*items)
        assert list(indices) == list(range(p["frames_per_shot"])), shot
        assert list(positions) == list(range(positions[0], positions[0] + len(positions)))
    for name in ("val", "test"):  # sparse annotation: every annotate_every-th frame at most
        for f in yto.split(name).frames:
            assert f.index % p["annotate_every"] == 0 and f.index < p["frames_per_shot"]


def test_synth_cub_structure(tmp_path):
    ds = load_synth("cub", SMALL_CUB, home=tmp_path, progress=False)
    assert ds.kind == "image" and ds.name == "synth-cub"
    assert ds.num_classes == 12 and len(set(ds.classes)) == 12
    counts = {"train": 4, "val": 2, "test": 3}
    for name, sp in ds.splits.items():
        assert len(sp) == 12 * counts[name]
        for f in sp.frames:
            assert f.video == f.shot == f.id and f.index == 0
            assert f.id.split("/")[0] == ds.classes[f.label]
    assert all(not f.boxes for f in ds.split("train").frames)
    for name in ("val", "test"):
        sp = ds.split(name)
        for i, f in enumerate(sp.frames):
            ys, xs = np.nonzero(sp.read_mask(i))
            assert f.boxes == ((xs.min(), ys.min(), xs.max(), ys.max()),)
    assert SYNTH_CUB_DEFAULTS["num_classes"] == 20


def test_default_cub_generates(tmp_path):
    ds = load_synth("cub", home=tmp_path, progress=False)
    assert ds.num_classes == 20
    assert len(ds.split("val")) == 20 * SYNTH_CUB_DEFAULTS["val_images_per_class"]


def test_discriminative_part_cue_exists(yto):
    """The part has a class-specific colour (mean colour differs between classes) and covers
    15-30% of the object, while the body colour comes from a shared palette."""
    root = Path(yto.info["root"])
    part_px, body_px = defaultdict(list), defaultdict(list)
    for name in ("val", "test"):
        images = np.load(root / name / "frames.npy")
        labels = np.load(root / name / "masks.npy")
        for f, img, lab in zip(yto.split(name).frames, images, labels):
            part_px[f.label].append(img[lab == synth.MASK_PART])
            body_px[f.label].append(img[lab == synth.MASK_BODY])
    means = np.array([np.concatenate(part_px[c]).mean(0) for c in range(yto.num_classes)])
    dist = np.sqrt(((means[:, None] - means[None]) ** 2).sum(-1))
    assert dist[np.triu_indices(len(means), 1)].min() > 20
    for c in range(yto.num_classes):
        n_part = sum(map(len, part_px[c]))
        assert 0.15 <= n_part / (n_part + sum(map(len, body_px[c]))) <= 0.30
        # several body colours per class: colour alone does not name the class
        colours = {tuple(np.round(b.mean(0) / 40)) for b in body_px[c] if len(b)}
        assert len(colours) >= 2


# --------------------------------------------------------------------------- cache


def test_second_load_uses_the_cache(tmp_path, monkeypatch):
    a = load_synth("yto", SMALL_YTO, home=tmp_path, progress=False)
    manifest = Path(a.info["root"]) / "manifest.json"
    stamp = manifest.stat().st_mtime_ns

    def boom(*args, **kwargs):
        raise AssertionError("regenerated a valid cache")

    monkeypatch.setattr(synth, "_generate", boom)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        b = load_synth("yto", SMALL_YTO, home=tmp_path, progress=False)
    assert manifest.stat().st_mtime_ns == stamp
    assert b.identity == a.identity
    assert isinstance(np.load(Path(b.info["root"]) / "train" / "frames.npy", mmap_mode="r"),
                      np.memmap)


def _flip_bytes(path: Path) -> None:
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))


def _truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 3)


@pytest.mark.parametrize("damage, target", [
    (_flip_bytes, "train/frames.npy"),
    (_truncate, "val/masks.npy"),
    (Path.unlink, "test/index.json"),
    (Path.unlink, "manifest.json"),
    (lambda p: p.write_text("{not json"), "manifest.json"),
    (lambda p: p.write_text('{"frames": []}'), "val/index.json"),
])
def test_corrupt_cache_is_regenerated(tmp_path, damage, target):
    first = load_synth("yto", SMALL_YTO, home=tmp_path, progress=False)
    expected, identity = arrays(first), first.identity
    damage(Path(first.info["root"]) / target)
    with pytest.warns(SynthCacheWarning, match=rf"{Path(target).name}.*regenerating"):
        again = load_synth("yto", SMALL_YTO, home=tmp_path, progress=False)
    assert again.identity == identity
    assert_same(arrays(again), expected)
    with warnings.catch_warnings():  # repaired: the next load is clean
        warnings.simplefilter("error")
        load_synth("yto", SMALL_YTO, home=tmp_path, progress=False)


def test_regeneration_removes_only_old_temporaries(tmp_path):
    root = Path(load_synth("yto", SMALL_YTO, home=tmp_path, progress=False).info["root"])
    old, young = root / "train" / ".frames.npy.old.tmp", root / "val" / ".masks.npy.new.tmp"
    old.write_bytes(b"left by a killed writer")
    young.write_bytes(b"another process is writing this")
    os.utime(old, (0, 0))
    (root / "manifest.json").unlink()
    with pytest.warns(SynthCacheWarning):
        load_synth("yto", SMALL_YTO, home=tmp_path, progress=False)
    assert not old.exists() and young.exists()


def test_unwritable_home_is_a_harness_error(tmp_path):
    home = tmp_path / "not-a-dir"
    home.write_text("a file where the cache directory should be")
    with pytest.raises(HarnessError, match="HARNESS_HOME") as err:
        load_synth("cub", SMALL_CUB, home=home, progress=False)
    assert str(home) in str(err.value)


def test_default_home_is_harness_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_HOME", str(tmp_path))
    ds = load_synth("cub", SMALL_CUB, progress=False)
    assert Path(ds.info["root"]).parent == tmp_path / "datasets"
    assert (Path(ds.info["root"]) / "manifest.json").is_file()


# --------------------------------------------------------------------------- parameters


def test_unknown_param_names_it_and_lists_valid_ones(tmp_path):
    with pytest.raises(HarnessError, match="image_sze") as err:
        load_synth("yto", {"image_sze": 32}, home=tmp_path)
    assert "image_size" in str(err.value) and "frames_per_shot" in str(err.value)
    with pytest.raises(HarnessError, match="num_classes"):  # a cub key is not a yto key
        load_synth("yto", {"num_classes": 5}, home=tmp_path)


@pytest.mark.parametrize("key, value", [
    ("image_size", "64"), ("image_size", 64.0), ("seed", True), ("exit_prob", "0.1"),
    ("image_size", 8), ("exit_prob", 1.5), ("frames_per_shot", 0), ("seed", -1),
    ("exit_prob", float("nan")),
])
def test_bad_param_values(tmp_path, key, value):
    with pytest.raises(HarnessError, match=key):
        load_synth("yto", {key: value}, home=tmp_path)


def test_bad_kind_and_params_container(tmp_path):
    with pytest.raises(HarnessError, match="yto, cub"):
        load_synth("ytb", home=tmp_path)
    with pytest.raises(HarnessError, match="mapping"):
        load_synth("yto", [("seed", 1)], home=tmp_path)


def test_equal_values_share_a_cache(tmp_path):
    a = load_synth("cub", SMALL_CUB, home=tmp_path, progress=False)
    b = load_synth("cub", {**SMALL_CUB, "seed": np.int64(0)}, home=tmp_path, progress=False)
    assert a.info["root"] == b.info["root"]


# --------------------------------------------------------------------------- show / summary


def test_save_grid_writes_a_png(tmp_path):
    ds = load_synth("cub", SMALL_CUB, home=tmp_path / "home", progress=False)
    out = save_grid(ds, "test", tmp_path / "grid.png", n=5)
    img = cv2.imread(str(out))
    cols = math.ceil(math.sqrt(5))
    assert img.shape == (2 * (CELL + CAPTION + GAP), cols * (CELL + GAP), 3)
    green = (img[..., 1] > 150) & (img[..., 0] < 60) & (img[..., 2] < 60)
    assert green.sum() > 100  # the GT boxes
    assert save_grid(ds, "test", tmp_path / "again.png", n=5).read_bytes() == out.read_bytes()


def test_save_grid_overlays_maps(tmp_path):
    ds = load_synth("cub", SMALL_CUB, home=tmp_path / "home", progress=False)
    maps = {i: np.full((8, 8), 1.0 if i % 2 else 0.0) for i in range(4)}
    plain = cv2.imread(str(save_grid(ds, "val", tmp_path / "a.png", n=4)))
    heat = cv2.imread(str(save_grid(ds, "val", tmp_path / "b.png", n=4, maps=maps)))
    assert plain.shape == heat.shape and not np.array_equal(plain, heat)
    with pytest.raises(HarnessError, match="frame index"):
        save_grid(ds, "val", tmp_path / "c.png", maps={10_000: np.zeros((4, 4))})
    with pytest.raises(HarnessError, match="2-D"):
        save_grid(ds, "val", tmp_path / "e.png", maps={0: np.zeros((4, 4, 3))})
    with pytest.raises(HarnessError, match="no split"):
        save_grid(ds, "nope", tmp_path / "d.png")


def test_summary_mentions_every_split_and_class(yto):
    text = summary(yto)
    for name in ("train", "val", "test"):
        assert name in text
    for cls in yto.classes:
        assert cls in text
    val_row = next(line for line in text.splitlines() if line.startswith("val"))
    n_val = len(yto.split("val"))
    assert val_row.split()[3:] == [str(n_val), str(n_val), str(n_val)]
