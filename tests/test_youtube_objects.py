"""YouTube-Objects v1.0 / v2.2 readers on generated trees in the public formats."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy.io import loadmat, savemat

from harness.data.index import Problem
from harness.data.youtube_objects import (CLASSES, YTOV1, YTOV2_2, _gt_entries, _mat_str, authors_val_choice,
                                          spread)
from harness.data.youtube_objects_fixture import (V1_CLIP_FRAME, V1_NEGATIVE_FRAME, V1_OVERFLOW_FRAME,
                                                  V1_SWAP_FRAME, make_ytov1_tree, make_ytov2_2_tree,
                                                  write_gt, write_ranges, write_sticks)
from harness.errors import HarnessError

ALL = {"train_frames_per_shot": 0}


def index(reader, root, **settings):
    problems: list[Problem] = []
    idx = reader.index(root, {**reader.defaults, **settings}, problems)
    return idx, problems


def clean(reader, root, **settings):
    idx, problems = index(reader, root, **settings)
    assert problems == []
    return idx


def has(problems, file, line, text):
    """The problem naming ``file`` and ``line`` whose message contains ``text``."""
    hits = [p for p in problems if p.file == file and p.line == line and text in p.message]
    assert hits, f"no problem {file}:{line} with {text!r} among:\n" + "\n".join(map(str, problems))
    return hits[0]


def by_path(frames):
    return {f.path: f for f in frames}


# ------------------------------------------------------------------------------ shared


def test_reader_contract():
    assert CLASSES == ["aeroplane", "bird", "boat", "car", "cat", "cow", "dog", "horse", "motorbike", "train"]
    for reader in (YTOV1, YTOV2_2):
        assert reader.kind == "video" and reader.classes == CLASSES
        for split, counts in reader.published.items():
            assert split in ("train", "val", "test")
            assert set(counts) <= {"frames", "boxes", "masks", "videos", "shots"}
        # every train frame is indexed; the runner draws frames of each shot per epoch
        # (loader.train_frames_per_shot, set by the ytov1 / ytov2.2 entries)
        assert "train_frames_per_shot" in reader.defaults and reader.defaults["train_frames_per_shot"] == 0
    assert (YTOV1.name, YTOV2_2.name) == ("ytov1", "ytov2.2")
    assert YTOV1.published["test"] == {"frames": 346, "boxes": 396, "videos": 27}
    assert YTOV1.published["train"] == {"shots": 2768, "videos": 78}
    assert YTOV2_2.published["test"]["boxes"] == 2667 and YTOV2_2.published["val"]["videos"] == 30
    assert "data.vision.ee.ethz.ch/cvl/youtube-objects" in YTOV1.source
    assert "calvin-vision.net/bigstuff/youtube-objectsv2" in YTOV2_2.source
    assert set(YTOV1.defaults) == {"val_seed", "val_split_file", "train_frames_per_shot", "box_tolerance"}


def test_spread_keeps_the_first_frame_evenly():
    assert spread(10, 3) == [0, 3, 6]
    assert spread(100, 10) == list(range(0, 100, 10))
    assert spread(7, 1) == [0]
    assert spread(3, 10) == [0, 1, 2]
    assert spread(5, 0) == [0, 1, 2, 3, 4]
    assert spread(0, 4) == []


def test_authors_val_draw_reproduces_their_published_split():
    # aeroplane: train videos = 1..13 without the test videos 9, 10; their val/image_ids.txt
    # lists 0004, 0001, 0011, 0008, 0005 in this order (seed = class index 0)
    aeroplane = [f"{i:04d}" for i in range(1, 14) if i not in (9, 10)]
    assert authors_val_choice(aeroplane, 0, 5) == ["0004", "0001", "0011", "0008", "0005"]
    # bird (class 1): videos 1..16, test 1, 3, 4; published val 0008, 0002, 0016, 0015, 0014
    bird = [f"{i:04d}" for i in range(1, 17) if i not in (1, 3, 4)]
    assert authors_val_choice(bird, 1, 5) == ["0008", "0002", "0016", "0015", "0014"]
    assert authors_val_choice(["0002", "0001"], 3, 5) in (["0001", "0002"], ["0002", "0001"])


@pytest.mark.parametrize("reader", [YTOV1, YTOV2_2])
@pytest.mark.parametrize("key,value", [("train_frames_per_shot", -1), ("train_frames_per_shot", "many"),
                                       ("train_frames_per_shot", 2.5), ("box_tolerance", 2),
                                       ("box_tolerance", "x")])
def test_bad_settings_are_refused(reader, key, value, tmp_path):
    with pytest.raises(HarnessError, match=f"data.{key}"):
        reader.index(tmp_path, {**reader.defaults, key: value}, [])


# ------------------------------------------------------------------------------ YTOv1


@pytest.fixture(scope="module")
def v1(tmp_path_factory):
    root = tmp_path_factory.mktemp("ytov1")
    return root, make_ytov1_tree(root)


@pytest.fixture
def v1_copy(v1, tmp_path):
    root, written = v1
    shutil.copytree(root, tmp_path / "copy")
    return tmp_path / "copy", written


def test_v1_fixture_writes_the_public_format(v1):
    root, written = v1
    assert (root / "aeroplane/sets/train.txt").read_text().endswith("\n")
    assert not (root / "aeroplane/sets/test.txt").read_text().endswith("\n")
    assert (root / "aeroplane/sets/test.txt").read_text() == "0004\n0006"
    coor = loadmat(str(root / f"{V1_CLIP_FRAME}_sticks.mat"))["coor"]
    assert coor.dtype == object and coor.shape == (1, 2) and coor[0, 0].shape == (1, 4)
    assert (root / "aeroplane/data/0009/shots/003").is_dir()  # the empty shot
    assert not list((root / "aeroplane/data/0009/shots/003").iterdir())


def test_v1_counts_match_what_was_written(v1):
    root, written = v1
    idx = clean(YTOV1, root, **ALL)
    counts = idx.counts()
    for split in ("train", "val", "test"):
        for key, value in written["expected"][split].items():
            assert counts[split][key] == value, (split, key)
    assert counts["val"]["videos"] == 50 and counts["test"]["videos"] == 20
    assert counts["val"]["annotated"] == counts["val"]["frames"]
    assert counts["train"]["boxes"] == 0
    assert idx.kind == "video" and idx.classes == CLASSES


def test_v1_val_videos_are_the_authors_seeded_draw(v1):
    root, written = v1
    idx = clean(YTOV1, root)
    for ci, cls in enumerate(CLASSES):
        expected = sorted(authors_val_choice(written["labeled_train_videos"][cls], ci, 5))
        assert idx.info["val_videos"][cls] == expected
        assert {f.video for f in idx.splits["val"] if f.label == ci} == {f"{cls}/{v}" for v in expected}
    # golden: seed 0, labeled aeroplane videos 0001 0002 0003 0005 0007 0008
    assert idx.info["val_videos"]["aeroplane"] == ["0001", "0002", "0003", "0007", "0008"]
    # the unlabeled train video is never drawn; train = the rest of the train videos
    assert all("0009" not in v for v in idx.info["val_videos"].values())
    train_videos = {f.video for f in idx.splits["train"]}
    assert "aeroplane/0005" in train_videos and "aeroplane/0009" in train_videos
    assert not train_videos & {f.video for f in idx.splits["val"]}
    assert not train_videos & {f.video for f in idx.splits["test"]}
    other = clean(YTOV1, root, val_seed=1)
    assert other.info["val_videos"]["aeroplane"] == sorted(authors_val_choice(
        written["labeled_train_videos"]["aeroplane"], 1, 5))
    assert other.info["val_videos"] != idx.info["val_videos"]


def test_v1_boxes_labels_and_structure(v1):
    root, written = v1
    idx = clean(YTOV1, root)
    evaluated = idx.splits["val"] + idx.splits["test"]
    for f in evaluated:
        cls, _, vid, _, shot, name = f.path.split("/")
        assert f.label == CLASSES.index(cls)
        assert f.video == f"{cls}/{vid}" and f.shot == shot
        assert f.index == int(name[5:9]) - 1  # frames are frame0001.. in the fixture
        assert f.size == written["sizes"][f"{cls}/{vid}"]
        if f.path not in written["known"]:
            assert f.boxes == tuple(tuple(b) for b in written["boxes"][f.path])  # floats untouched
    # every annotated frame of the test videos is there, nothing else
    assert {f.path for f in idx.splits["test"]} == {
        p for p in written["boxes"] if p.split("/")[2] in written["test_videos"][p.split("/")[0]]}
    # sizes come from the headers: odd videos 128x72, even 96x72
    test = by_path(idx.splits["test"])
    assert test["bird/data/0004/shots/001/frame0001.jpg"].size == (96, 72)
    assert test["bird/data/0006/shots/002/frame0001.jpg"].size == (96, 72)
    two = test["cow/data/0004/shots/001/frame0004.jpg"]
    assert len(two.boxes) == 2
    # frames of a split in class, video, shot, temporal order
    keys = [(f.label, f.video, f.shot, f.index) for f in idx.splits["test"]]
    assert keys == sorted(keys)


def test_v1_the_two_known_box_fixes(v1):
    root, written = v1
    test = by_path(clean(YTOV1, root).splits["test"])
    raw = written["boxes"]
    # horse/0004/055/frame0020: x0 > x1 in the file, swapped back
    assert raw[V1_SWAP_FRAME][0][0] > raw[V1_SWAP_FRAME][0][2]
    horse = test[V1_SWAP_FRAME]
    assert horse.boxes == tuple(written["known"][V1_SWAP_FRAME])
    assert horse.boxes[0][0] == raw[V1_SWAP_FRAME][0][2] and horse.boxes[0][2] == raw[V1_SWAP_FRAME][0][0]
    assert horse.shot == "055" and horse.index == 19
    # boat/0006/026/frame0001: x1 = W + 23.5 in the file (far past the tolerance), set to W - 1
    boat = test[V1_CLIP_FRAME]
    assert boat.size == (96, 72) and raw[V1_CLIP_FRAME][0][2] == 96 + 23.5
    assert boat.boxes[0] == (0.0, 8.057603686635957, 95.0, 72 * 0.65)
    assert boat.boxes[1] == tuple(raw[V1_CLIP_FRAME][1])
    # a negative coordinate becomes 0; 0.18 px past the border is clipped and counted
    assert test[V1_NEGATIVE_FRAME].boxes[0][0] == 0.0 and raw[V1_NEGATIVE_FRAME][0][0] == -2.5
    assert test[V1_NEGATIVE_FRAME].boxes == tuple(written["known"][V1_NEGATIVE_FRAME])
    assert test[V1_OVERFLOW_FRAME].boxes[0][2] == 95.0 and raw[V1_OVERFLOW_FRAME][0][2] == 95.18
    info = clean(YTOV1, root).info
    assert info["clipped_boxes"] == 1
    notes = "\n".join(info["warnings"])
    assert V1_SWAP_FRAME in notes and V1_CLIP_FRAME in notes and "1 negative box coordinate" in notes


def test_v1_the_fixes_are_needed(v1_copy):
    """Without the fixes the two boxes are problems: the horse box is inverted, the boat box
    outside its image. Moved to another frame, the same values are reported."""
    root, written = v1_copy
    for src, dst in ((V1_SWAP_FRAME, "horse/data/0004/shots/001/frame0002.jpg"),
                     (V1_CLIP_FRAME, "boat/data/0006/shots/001/frame0002.jpg")):
        shutil.copy(root / f"{src}_sticks.mat", root / f"{dst}_sticks.mat")
    _, problems = index(YTOV1, root)
    has(problems, "horse/data/0004/shots/001/frame0002.jpg_sticks.mat", 1, "inverted")
    has(problems, "boat/data/0006/shots/001/frame0002.jpg_sticks.mat", 1, "outside the 96x72 image")
    assert len(problems) == 2


def test_v1_hand_written_annotation(v1_copy):
    root, _ = v1_copy
    frame = "car/data/0004/shots/001/frame0002.jpg"  # a test video at 96x72, not annotated before
    write_sticks(root / f"{frame}_sticks.mat", [[10.5, 20.25, 60.75, 50.0], [-3, 5, 40, 71.5]])
    f = by_path(clean(YTOV1, root).splits["test"])[frame]
    assert f.size == (96, 72) and f.index == 1 and f.shot == "001" and f.video == "car/0004"
    # -3 -> 0 (the authors' relu); 71.5 > H - 1 = 71 but within 2% of 72: clipped to 71
    assert f.boxes == ((10.5, 20.25, 60.75, 50.0), (0.0, 5.0, 40.0, 71.0))
    assert f.label == 3


def test_v1_a_plain_matrix_coor_is_read_too(v1_copy):
    root, _ = v1_copy
    frame = "car/data/0004/shots/001/frame0003.jpg"
    savemat(str(root / f"{frame}_sticks.mat"), {"coor": np.array([[1.0, 2.0, 30.0, 40.0], [5, 6, 7, 8]])})
    assert by_path(clean(YTOV1, root).splits["test"])[frame].boxes == ((1, 2, 30, 40), (5, 6, 7, 8))


def test_v1_train_frames_per_shot(v1):
    root, written = v1
    full = clean(YTOV1, root, train_frames_per_shot=0).splits["train"]
    two = clean(YTOV1, root, train_frames_per_shot=2).splits["train"]
    one = clean(YTOV1, root, train_frames_per_shot=1).splits["train"]
    default = clean(YTOV1, root).splits["train"]
    assert [f.path for f in default] == [f.path for f in full]  # the default keeps every frame
    assert len(full) == written["expected"]["train"]["frames"] == 4 * len(two) // 2
    assert {f.path.rsplit("/", 1)[1] for f in two} == {"frame0001.jpg", "frame0003.jpg"}
    assert {f.index for f in two} == {0, 2}  # the true position in the shot
    assert {f.path.rsplit("/", 1)[1] for f in one} == {"frame0001.jpg"}
    shots = {(f.video, f.shot) for f in full}
    assert {(f.video, f.shot) for f in one} == shots and len(shots) == written["expected"]["train"]["shots"]
    assert ("aeroplane/0009", "003") not in shots  # the empty shot folder
    for f in full:
        cls, _, vid, _, shot, name = f.path.split("/")
        assert f.boxes == () and f.label == CLASSES.index(cls) and f.size == written["sizes"][f"{cls}/{vid}"]
    keys = [(f.label, f.video, f.shot, f.index) for f in full]
    assert keys == sorted(keys)
    assert clean(YTOV1, root, train_frames_per_shot=2).info["train_frames_available"] == len(full)


def test_v1_frames_sort_by_number_not_name(v1_copy):
    root, _ = v1_copy
    shot = root / "aeroplane/data/0009/shots/001"
    shutil.copy(shot / "frame0001.jpg", shot / "frame10000.jpg")  # sorts before frame9999 as text
    shutil.copy(shot / "frame0002.jpg", shot / "frame9999.jpg")
    frames = [f for f in clean(YTOV1, root, **ALL).splits["train"] if f.video == "aeroplane/0009" and f.shot == "001"]
    assert [f.path.rsplit("/", 1)[1][5:-4] for f in frames] == ["0001", "0002", "0003", "0004", "9999", "10000"]
    assert [f.index for f in frames] == list(range(6))


def _published_val(root: Path, written: dict, picks: dict[str, list[str]]) -> list[str]:
    lines = []
    for cls, vids in picks.items():
        for p in sorted(written["boxes"]):
            if p.startswith(f"{cls}/data/") and p.split("/")[2] in vids:
                lines.append(p)
    return lines


def test_v1_val_split_file(v1_copy, monkeypatch):
    root, written = v1_copy
    picks = {"aeroplane": ["0005", "0008"], "bird": ["0001"]}
    lines = _published_val(root, written, picks)
    lines = lines[:-1]  # a val video need not list all its annotated frames
    folder = root / "folds/val"
    folder.mkdir(parents=True)
    (folder / "image_ids.txt").write_text("\n".join(lines))  # the authors' files: no trailing newline
    for value in ("folds/val/image_ids.txt", "folds/val", str(folder / "image_ids.txt")):
        idx = clean(YTOV1, root, val_split_file=value)
        assert [f.path for f in idx.splits["val"]] == sorted(lines)
        assert idx.info["val_videos"] == picks
        train = {f.video for f in idx.splits["train"]}
        assert {"aeroplane/0001", "aeroplane/0002", "aeroplane/0009", "bird/0002"} <= train
        assert not train & {"aeroplane/0005", "aeroplane/0008", "bird/0001"}
        assert len(idx.splits["test"]) == written["expected"]["test"]["frames"]
    # relative to the working directory when not under the root
    monkeypatch.chdir(root / "folds")
    assert [f.path for f in clean(YTOV1, root, val_split_file="val/image_ids.txt").splits["val"]] == sorted(lines)
    # class_labels.txt lines (path,label) are taken too
    (folder / "labels.txt").write_text("\n".join(f"{p},0" for p in lines))
    assert len(clean(YTOV1, root, val_split_file="folds/val/labels.txt").splits["val"]) == len(lines)


def test_v1_val_split_file_problems(v1_copy):
    root, written = v1_copy
    good = "aeroplane/data/0001/shots/001/frame0001.jpg"
    rows = [good,
            "aeroplane/0001/frame0001.jpg",                       # 2: not the layout
            "aeroplane/data/0004/shots/001/frame0001.jpg",        # 3: a test video
            "aeroplane/data/0001/shots/007/frame0001.jpg",        # 4: no such frame
            "aeroplane/data/0001/shots/001/frame0002.jpg",        # 5: not annotated
            good,                                                 # 6: twice
            "zebra/data/0001/shots/001/frame0001.jpg",            # 7: unknown class
            "aeroplane/data/0042/shots/001/frame0001.jpg"]        # 8: not a listed video
    (root / "val.txt").write_text("\n".join(rows) + "\n")
    _, problems = index(YTOV1, root, val_split_file="val.txt")
    has(problems, "val.txt", 2, "is not <class>/data/<video>/shots/<shot>/<frame>.jpg")
    has(problems, "val.txt", 3, "is a test video")
    has(problems, "val.txt", 4, "is not in the copy")
    has(problems, "val.txt", 5, "has no annotation")
    has(problems, "val.txt", 6, "listed twice (first on line 1)")
    has(problems, "val.txt", 7, "unknown class 'zebra'")
    has(problems, "val.txt", 8, "not in sets/train.txt")
    assert len(problems) == 7
    _, problems = index(YTOV1, root, val_split_file="nowhere/image_ids.txt")
    has(problems, "nowhere/image_ids.txt", None, "cannot be read")


def test_v1_missing_and_malformed_lists(v1_copy):
    root, _ = v1_copy
    shutil.rmtree(root / "cat")
    (root / "dog/sets/test.txt").unlink()
    (root / "bird/sets/train.txt").write_text("0001\n0002\n12x\n0003\n0002\n")
    (root / "car/sets/test.txt").write_text("0004\n0006\n0042\n0001")
    shutil.rmtree(root / "cow/data/0002/shots")
    idx, problems = index(YTOV1, root)
    has(problems, "cat", None, "class folder is missing")
    has(problems, "dog/sets/test.txt", None, "video list is missing")
    has(problems, "bird/sets/train.txt", 3, "'12x' is not a 4-digit video id")
    has(problems, "bird/sets/train.txt", 5, "listed twice (first on line 2)")
    has(problems, "car/sets/test.txt", 3, "folder car/data/0042/shots is missing")
    has(problems, "car/sets/test.txt", 4, "video 0001 is also in sets/train.txt (line 1)")
    has(problems, "cow/sets/train.txt", 2, "folder cow/data/0002/shots is missing")
    assert len(problems) == 7
    assert not any(f.label == CLASSES.index("cat") for s in idx.splits.values() for f in s)  # kept going


def test_v1_bad_annotations(v1_copy):
    root, written = v1_copy
    t = "car/data/0004/shots/{}/frame0001.jpg"  # annotated frames of a 96x72 test video
    (root / f"{t.format('001')}_sticks.mat").write_bytes(b"not a mat file")
    savemat(str(root / f"{t.format('002')}_sticks.mat"), {"boxes": np.zeros((1, 4))})
    write_sticks(root / f"{t.format('001').replace('car', 'cat')}_sticks.mat", [[1, 2, 3]])
    write_sticks(root / f"{t.format('002').replace('car', 'cat')}_sticks.mat", [[10, 5, 96 + 20, 30]])
    write_sticks(root / f"{t.format('001').replace('car', 'dog')}_sticks.mat", [[97, 5, 99, 30]])
    write_sticks(root / f"{t.format('002').replace('car', 'dog')}_sticks.mat", [[10, 5, 40, 30], [50, 20, 30, 40]])
    write_sticks(root / f"{t.format('001').replace('car', 'cow')}_sticks.mat", [[np.nan, 5, 40, 30]])
    write_sticks(root / f"{t.format('002').replace('car', 'cow')}_sticks.mat", [[10, 5, 10, 30]])
    (root / t.format("001").replace("car", "horse")).unlink()           # annotation without frame
    (root / t.format("002").replace("car", "horse")).write_bytes(b"")   # unreadable frame
    write_sticks(root / f"{t.format('001').replace('car', 'train')}_sticks.mat", [])  # no box: a note
    idx, problems = index(YTOV1, root)
    has(problems, f"{t.format('001')}_sticks.mat", None, "cannot read the .mat file")
    has(problems, f"{t.format('002')}_sticks.mat", None, "has no variable 'coor' (variables: boxes)")
    has(problems, f"{t.format('001').replace('car', 'cat')}_sticks.mat", 1, "has 3 values, expected 4")
    has(problems, f"{t.format('002').replace('car', 'cat')}_sticks.mat", 1, "outside the 96x72 image")
    has(problems, f"{t.format('001').replace('car', 'dog')}_sticks.mat", 1, "outside the 96x72 image")
    has(problems, f"{t.format('002').replace('car', 'dog')}_sticks.mat", 2,
        "box 2 (50, 20, 30, 40) is inverted: x1 < x0")
    has(problems, f"{t.format('001').replace('car', 'cow')}_sticks.mat", 1, "non-finite")
    has(problems, f"{t.format('002').replace('car', 'cow')}_sticks.mat", 1, "is empty")
    has(problems, f"{t.format('001').replace('car', 'horse')}_sticks.mat", None, "annotation without its frame")
    has(problems, t.format("002").replace("car", "horse"), None, "cannot read the image header")
    assert len(problems) == 10
    assert any("hold no box" in n for n in idx.info["warnings"])
    assert t.format("001").replace("car", "train") not in by_path(idx.splits["test"])


def test_v1_bigger_tree_parameters(tmp_path):
    written = make_ytov1_tree(tmp_path, train_videos=8, labeled_train_videos=7, test_videos=3, shots_per_video=3,
                              frames_per_shot=12, size=(160, 120), quirks=True, seed=3)
    idx = clean(YTOV1, tmp_path, **ALL)
    for split in ("train", "val", "test"):
        for key, value in written["expected"][split].items():
            assert idx.counts()[split][key] == value
    assert written["test_videos"]["aeroplane"] == ["0004", "0006", "0008"]
    assert {f.size for f in idx.splits["test"]} == {(160, 120)}  # test videos 4, 6, 8 are even: 4:3 at 120 high
    assert len(clean(YTOV1, tmp_path, train_frames_per_shot=5).splits["train"]) == 5 * written["expected"]["train"][
        "shots"]


# ------------------------------------------------------------------------------ YTOv2.2


@pytest.fixture(scope="module")
def v22(tmp_path_factory):
    root = tmp_path_factory.mktemp("ytov22")
    return root, make_ytov2_2_tree(root)


@pytest.fixture
def v22_copy(v22, tmp_path):
    root, written = v22
    shutil.copytree(root, tmp_path / "copy")
    return tmp_path / "copy", written


def read_gt(path: Path, key: str) -> list[tuple[str, np.ndarray]]:
    return [(_mat_str(i), np.asarray(b, dtype=float).reshape(-1, 4)) for i, b in _gt_entries(loadmat(str(path))[key])]


def test_v22_fixture_writes_the_public_format(v22):
    root, _ = v22
    ranges = loadmat(str(root / "Ranges/ranges_aeroplane.mat"))["ranges"]
    assert ranges.shape == (3, 16) and ranges.dtype == np.int32
    assert ranges[:, 0].tolist() == [1, 5, 1]
    gt = loadmat(str(root / "GroundTruth/aeroplane/bb_gtTest_aeroplane.mat"))["bb_gtTest"]
    assert gt.shape[0] == 1 and gt.dtype.names == ("im", "boxes")
    assert str(gt[0][0][0][0]).startswith("aeroplane0000") and gt[0][0][1].shape == (1, 4)
    assert (root / "aeroplane/00000001.jpg").is_file()


def test_v22_counts_videos_and_val(v22):
    root, written = v22
    idx = clean(YTOV2_2, root, **ALL)
    counts = idx.counts()
    for split in ("train", "val", "test"):
        for key, value in written["expected"][split].items():
            assert counts[split][key] == value, (split, key)
    for cls in CLASSES:
        assert idx.info["val_videos"][cls] == [f"{v:04d}" for v in written["train_videos"][cls][:3]]
    # videos in order of first appearance in ranges: cow lists video 8 first
    assert idx.info["val_videos"]["cow"] == ["0008", "0002", "0004"]
    assert idx.info["val_videos"]["aeroplane"] == ["0001", "0003", "0005"]  # 0002 is a test video
    assert idx.info["unlabeled_videos"] == 10
    assert {f.video for f in idx.splits["test"] if f.label == 0} == {"aeroplane/0002", "aeroplane/0006"}
    assert {f.video for f in idx.splits["train"] if f.label == 0} == {"aeroplane/0007", "aeroplane/0008"}
    assert counts["val"]["frames"] == counts["val"]["boxes"]


def test_v22_boxes_and_structure(v22):
    root, written = v22
    idx = clean(YTOV2_2, root)
    for split, kind in (("val", "training"), ("test", "test")):
        for f in idx.splits[split]:
            cls, name = f.path.split("/")
            row = int(f.shot)
            start, end, vid = written["shots"][(cls, row)]
            assert f.video == f"{cls}/{vid:04d}" and f.label == CLASSES.index(cls)
            assert f.index == int(name[:8]) - start and start <= int(name[:8]) <= end
            assert f.size == written["sizes"][f"{cls}/{vid:04d}"]
            if f.path not in written["known"]:
                assert f.boxes == tuple(tuple(b) for b in written["boxes"][kind][f.path])
        keys = [(f.label, f.shot, f.index) for f in idx.splits[split]]
        assert keys == sorted(keys)
    test = by_path(idx.splits["test"])
    # a test box touching x1 = W (as 455,94,1280,628 on 1280x720) is clipped to W - 1 and counted
    (path, known), = written["known"].items()
    assert written["boxes"]["test"][path][0][2] == test[path].size[0] == 96
    assert test[path].boxes == tuple(known) and test[path].boxes[0][2] == 95.0
    assert idx.info["clipped_boxes"] == 1
    assert sum(len(f.boxes) == 2 for f in idx.splits["test"]) == 40  # the last frame of each test shot


def test_v22_frame_in_two_shots(v22):
    root, written = v22
    idx = clean(YTOV2_2, root, **ALL)
    (shared,) = written["overlap_frames"]
    path = f"horse/{shared:08d}.jpg"
    assert any(f"{path} (shots 0 and 1)" in n for n in idx.info["warnings"])
    ranges = loadmat(str(root / "Ranges/ranges_horse.mat"))["ranges"]
    assert ranges[1, 0] == ranges[0, 1] == shared
    # the frame has a training box (val video horse/0001): it is in the later shot, position 0
    val = by_path(idx.splits["val"])
    assert val[path].shot == "000001" and val[path].index == 0 and val[path].video == "horse/0001"
    for split in idx.splits.values():
        assert len({f.path for f in split}) == len(split)


def test_v22_train_frames_per_shot(v22):
    root, written = v22
    full = clean(YTOV2_2, root, **ALL).splits["train"]
    two = clean(YTOV2_2, root, train_frames_per_shot=2).splits["train"]
    assert len(full) == written["expected"]["train"]["frames"] == 5 * written["expected"]["train"]["shots"]
    assert {f.index for f in two} == {0, 2} and len(two) == 2 * written["expected"]["train"]["shots"]
    assert {(f.video, f.shot) for f in two} == {(f.video, f.shot) for f in full}
    f = by_path(full)["aeroplane/00000061.jpg"]  # video 7 = the 4th train video: shot rows 12, 13
    assert (f.video, f.shot, f.index, f.boxes, f.size) == ("aeroplane/0007", "000012", 0, (), (128, 72))
    keys = [(f.label, f.shot, f.index) for f in full]
    assert keys == sorted(keys)


@pytest.mark.parametrize("layout", ["cell", "cell_column", "cell_nx2"])
def test_v22_gt_cell_layouts_read_the_same(v22, layout, tmp_path):
    root, _ = v22
    make_ytov2_2_tree(tmp_path, gt_layout=layout)
    assert clean(YTOV2_2, tmp_path).splits == clean(YTOV2_2, root).splits


def test_v22_archives_extracted_one_level_deeper(v22_copy):
    root, _ = v22_copy
    for name in ("Ranges", "GroundTruth"):
        (root / f"{name}-tmp").mkdir()
        (root / name).rename(root / f"{name}-tmp" / name)
        (root / f"{name}-tmp").rename(root / name)
    idx = clean(YTOV2_2, root)
    assert any("Ranges/Ranges/ and GroundTruth/GroundTruth/" in n for n in idx.info["warnings"])
    assert len(idx.splits["test"]) == 80


def test_v22_missing_files_and_bad_ranges(v22_copy):
    root, _ = v22_copy
    shutil.rmtree(root / "bird")
    (root / "Ranges/ranges_boat.mat").unlink()
    savemat(str(root / "Ranges/ranges_car.mat"), {"range": np.zeros((3, 2))})
    write_ranges(root / "Ranges/ranges_cat.mat", [])  # 3 x 0 is fine but drops every GT frame
    savemat(str(root / "Ranges/ranges_cow.mat"), {"ranges": np.ones((16, 3), dtype=np.int32)})
    r = loadmat(str(root / "Ranges/ranges_dog.mat"))["ranges"]
    r[1, 4] = r[0, 4] - 1
    r[0, 6] = -3
    savemat(str(root / "Ranges/ranges_dog.mat"), {"ranges": r})
    (root / "Ranges/ranges_horse.mat").write_bytes(b"\x00garbage")
    (root / "GroundTruth/motorbike/bb_gtTest_motorbike.mat").unlink()
    idx, problems = index(YTOV2_2, root)
    has(problems, "bird", None, "class folder of frames is missing")
    has(problems, "Ranges/ranges_boat.mat", None, "file is missing")
    has(problems, "Ranges/ranges_car.mat", None, "has no variable 'ranges' (variables: range)")
    has(problems, "GroundTruth/cat/bb_gtTest_cat.mat", 1, "is in no shot of Ranges/ranges_cat.mat")
    has(problems, "Ranges/ranges_cow.mat", None, "expected 3 x n_shots")
    has(problems, "Ranges/ranges_dog.mat", 5, "ends (frame")
    has(problems, "Ranges/ranges_dog.mat", 7, "are not non-negative whole numbers")
    has(problems, "Ranges/ranges_horse.mat", None, "cannot read the .mat file")
    has(problems, "GroundTruth/motorbike/bb_gtTest_motorbike.mat", None, "file is missing")
    assert all(p.file.startswith(("bird", "Ranges/", "GroundTruth/cat/")) or p.file.endswith("motorbike.mat")
               for p in problems)
    assert len({f.label for f in idx.splits["test"]}) == 2  # aeroplane and train were still read


def test_v22_bad_ground_truth(v22_copy):
    root, written = v22_copy
    gt = root / "GroundTruth"

    def edit(cls, kind, fn):
        key = "bb_gtTest" if kind == "test" else "bb_gtTraining"
        path = gt / cls / f"{key}_{cls}.mat"
        write_gt(path, key, fn(read_gt(path, key)))

    edit("aeroplane", "test", lambda e: e[:1] + [("bird00000006", e[1][1])] + e[2:])           # entry 2
    edit("bird", "test", lambda e: e + [("bird00999999", e[0][1])])                            # entry 9
    edit("boat", "test", lambda e: e + [e[3]])                                                 # entry 9
    edit("car", "test", lambda e: [(e[0][0], e[0][1][:, :3])] + e[1:])                         # entry 1
    edit("cat", "test", lambda e: [(e[0][0], np.array([[200.0, 5, 210, 30]]))] + e[1:])       # entry 1
    # entry 16: a test frame (of cow video 1) with a training box too
    edit("cow", "training", lambda e: e + [(read_gt(gt / "cow/bb_gtTest_cow.mat", "bb_gtTest")[0])])
    # entry 16: a training box on another frame of a test video (dog video 2: frames 11..20)
    edit("dog", "training", lambda e: e + [("dog00000012", np.array([[1.0, 2, 30, 40]]))])
    savemat(str(gt / "horse/bb_gtTest_horse.mat"), {"bb_gtTest": np.zeros((2, 4))})
    (root / "motorbike/00000011.jpg").unlink()      # first frame of a test shot (boxes)
    (root / "train/00000062.jpg").unlink()          # a frame of a train shot (video 7: frames 61..70)
    idx, problems = index(YTOV2_2, root)
    has(problems, "GroundTruth/aeroplane/bb_gtTest_aeroplane.mat", 2,
        "frame id 'bird00000006' is not 'aeroplane' followed by the frame number")
    has(problems, "GroundTruth/bird/bb_gtTest_bird.mat", 9, "frame bird00999999 is in no shot of Ranges/ranges_bird")
    has(problems, "GroundTruth/boat/bb_gtTest_boat.mat", 9, "frame boat00000020 already has entry 4")
    has(problems, "GroundTruth/car/bb_gtTest_car.mat", 1, "expected k x 4")
    has(problems, "GroundTruth/cat/bb_gtTest_cat.mat", 1, "lies outside the 96x72 image")
    has(problems, "GroundTruth/cow/bb_gtTraining_cow.mat", 16, "frame cow00000011 also has a test box (entry 1")
    has(problems, "GroundTruth/cow/bb_gtTraining_cow.mat", 16, "video 1 has training boxes")
    has(problems, "GroundTruth/dog/bb_gtTraining_dog.mat", 16,
        "video 2 has training boxes (e.g. entry 16, frame 12) and test boxes (e.g. entry 1 of "
        "GroundTruth/dog/bb_gtTest_dog.mat, frame 11): a video is either train or test")
    has(problems, "GroundTruth/horse/bb_gtTest_horse.mat", None, "expected a struct or cell array")
    has(problems, "motorbike/00000011.jpg", None, "frame with a box (entry 1 of GroundTruth/motorbike/")
    has(problems, "train/00000062.jpg", None, "frame of shot 12 (column 13 of Ranges/ranges_train.mat) is missing")
    assert len(problems) == 11
    # the rest is read: dog's video 2 is neither train nor test, the other test video stays
    assert {f.video for f in idx.splits["test"] if f.label == 6} == {"dog/0006"}
    train = by_path(idx.splits["train"])
    assert "train/00000061.jpg" in train and train["train/00000063.jpg"].index == 2  # true positions kept


def test_v22_entry_without_boxes_is_a_note(v22_copy):
    root, _ = v22_copy
    path = root / "GroundTruth/car/bb_gtTest_car.mat"
    entries = read_gt(path, "bb_gtTest")
    write_gt(path, "bb_gtTest", [(entries[0][0], np.zeros((0, 4)))] + entries[1:])
    idx = clean(YTOV2_2, root)
    assert any("GT entr(y/ies) with no box" in n for n in idx.info["warnings"])
    assert f"car/{entries[0][0][3:]}.jpg" not in by_path(idx.splits["test"])
