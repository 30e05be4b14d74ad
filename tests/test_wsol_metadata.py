"""Readers of Choe et al.'s metadata (CUB, ILSVRC, OpenImages30k) on generated trees in the exact
format, and one corrupted variant per kind of malformed input, each giving its own Problem."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from harness.data.index import IndexedFrame, Problem
from harness.data.wsol_metadata import (CUB, ILSVRC, OPENIMAGES, READERS, imagenet_wnids,
                                        read_openimages_mask)
from harness.data.wsol_metadata_fixture import (make_cub_tree, make_ilsvrc_tree, make_openimages_tree,
                                                write_lines)
from harness.errors import HarnessError


def run(reader, root, settings=None, progress=False):
    problems: list[Problem] = []
    index = reader.index(Path(root), settings or {}, problems, progress)
    return index, problems


def lines(path: Path) -> list[str]:
    text = path.read_text()
    return text.split("\n") if text else []


def edit(path: Path, fn) -> None:
    write_lines(path, fn(lines(path)))


def replace_line(path: Path, i: int, new: str) -> None:
    """Line ``i`` (1-based) of a metadata file becomes ``new``."""
    edit(path, lambda ls: ls[:i - 1] + [new] + ls[i:])


def one(problems: list[Problem], file: str, line: int | None, *needles: str) -> Problem:
    """The single problem, naming ``file`` and ``line`` and containing every needle."""
    assert len(problems) == 1, "\n".join(map(str, problems))
    p = problems[0]
    assert (p.file, p.line) == (file, line), str(p)
    for n in needles:
        assert n in p.message, str(p)
    return p


@pytest.fixture
def cub(tmp_path):
    return make_cub_tree(tmp_path / "CUB")


@pytest.fixture
def ilsvrc(tmp_path):
    return make_ilsvrc_tree(tmp_path / "ILSVRC")


@pytest.fixture
def oi(tmp_path):
    return make_openimages_tree(tmp_path / "OpenImages")


# ------------------------------------------------------------------------------ reader objects


def test_reader_objects_carry_the_published_counts_and_settings():
    assert READERS == {"cub": CUB, "ilsvrc": ILSVRC, "openimages": OPENIMAGES}
    assert CUB.published == {"train": {"frames": 5994}, "val": {"frames": 1000, "boxes": 1000},
                             "test": {"frames": 5794, "boxes": 5794}}
    assert ILSVRC.published["val"] == {"frames": 10000, "boxes": 18532}
    assert ILSVRC.published["test"] == {"frames": 50000, "boxes": 80477}
    assert OPENIMAGES.published == {"train": {"frames": 29819}, "val": {"frames": 2500, "masks": 3854},
                                    "test": {"frames": 5000, "masks": 7632}}
    assert (CUB.num_classes, ILSVRC.num_classes, OPENIMAGES.num_classes) == (200, 1000, 100)
    assert CUB.defaults == {"metadata": "metadata"} == OPENIMAGES.defaults
    assert ILSVRC.defaults == {"metadata": "metadata", "index_train": True}
    for r in READERS.values():
        assert r.kind == "image" and len(r.classes) == r.num_classes
        assert "clovaai/wsolevaluation" in r.source and "data.metadata" in r.source
    wnids = imagenet_wnids()
    assert ILSVRC.classes == list(wnids) and wnids[0] == "n01440764" and wnids[-1] == "n15075141"


# ------------------------------------------------------------------------------ CUB


def test_cub_tree_is_indexed_exactly(cub):
    index, problems = run(CUB, cub["root"])
    assert problems == []
    counts = index.counts()
    for split, want in cub["counts"].items():
        assert (counts[split]["frames"], counts[split]["boxes"]) == (want["frames"], want["boxes"])
    assert index.kind == "image"
    assert index.classes[:4] == ["Black_footed_Albatross", "Laysan_Albatross", "Sooty_Albatross", "class_3"]
    assert len(index.classes) == 200
    for split in ("train", "val", "test"):
        frames = index.splits[split]
        assert [f.path for f in frames] == cub["ids"][split]          # image_ids.txt order
        for f in frames:
            assert f.label == cub["labels"][f.path] and f.size == cub["sizes"][f.path]
            assert (f.video, f.shot, f.index, f.masks, f.ignore) == (f.path, f.path, 0, (), None)
            assert f.boxes == (() if split == "train" else tuple(cub["boxes"][f.path]))
    first = index.splits["val"][0]
    w, h = first.size
    assert first.boxes == ((2, 1, w - 1, h - 1),)                    # inclusive: x1 = W-1 is inside
    assert any("200 classes" in w for w in index.info["warnings"])   # a 3-class copy is partial


def test_cub_hand_written_lines_keep_file_order_and_inclusive_coordinates(cub):
    val = cub["metadata"] / "val"
    a, b = "001.Black_footed_Albatross/a.jpg", "002.Laysan_Albatross/b.jpg"
    write_lines(val / "image_ids.txt", [a, b])
    write_lines(val / "class_labels.txt", [f"{a},0", f"{b},1"])
    write_lines(val / "image_sizes.txt", [f"{a},64,48", f"{b},500,375"])
    write_lines(val / "localization.txt", [f"{a},0,0,63,47", f"{b},156,163,318,230", f"{b},23,12,101,259"])
    index, problems = run(CUB, cub["root"])
    assert problems == []
    fa, fb = index.splits["val"]
    assert fa == IndexedFrame(path=a, label=0, size=(64, 48), video=a, shot=a, index=0, boxes=((0, 0, 63, 47),))
    assert fb.label == 1 and fb.size == (500, 375)
    assert fb.boxes == ((156, 163, 318, 230), (23, 12, 101, 259))   # x0,y0,x1,y1 in file order


def test_cub_full_class_list_from_the_folders(tmp_path):
    tree = make_cub_tree(tmp_path, num_classes=200, train_per_class=1, val_per_class=1, test_per_class=1)
    index, problems = run(CUB, tmp_path)
    assert problems == [] and index.info["warnings"] == []
    assert index.classes == tree["classes"] and index.classes[199] == "Bird_200"
    assert index.info["labels_per_split"] == {"train": 200, "val": 200, "test": 200}


def test_cub_train_localization_is_never_read(cub):
    loc = cub["metadata"] / "train" / "localization.txt"
    assert loc.is_file() and lines(loc)                              # written, as in the real metadata
    loc.write_text("garbage,,,\nnot even close")
    index, problems = run(CUB, cub["root"])
    assert problems == [] and all(f.boxes == () for f in index.splits["train"])
    loc.unlink()
    assert run(CUB, cub["root"])[1] == []


def test_trailing_newline_crlf_and_progress_are_tolerated(cub):
    path = cub["metadata"] / "val" / "class_labels.txt"
    path.write_bytes(("\r\n".join(lines(path)) + "\r\n").encode())
    index, problems = run(CUB, cub["root"], progress=True)
    assert problems == [] and len(index.splits["val"]) == cub["counts"]["val"]["frames"]


def test_metadata_setting_absolute_or_relative_to_the_root(cub, tmp_path):
    outside = tmp_path / "wsolevaluation" / "metadata" / "CUB"
    shutil.move(str(cub["metadata"]), outside)
    index, problems = run(CUB, cub["root"], {"metadata": str(outside)})
    assert problems == [] and index.info["metadata"] == str(outside)
    (outside / "val" / "image_sizes.txt").unlink()
    _, problems = run(CUB, cub["root"], {"metadata": str(outside)})
    one(problems, str(outside / "val" / "image_sizes.txt"), None, "missing")   # absolute outside the root
    inside = cub["root"] / "meta" / "CUB"
    shutil.move(str(outside), inside)
    _, problems = run(CUB, cub["root"], {"metadata": "meta/CUB"})
    one(problems, "meta/CUB/val/image_sizes.txt", None, "missing")


def test_problems_are_collected_in_one_pass(cub):
    meta = cub["metadata"]
    replace_line(meta / "val" / "class_labels.txt", 1, f"{cub['ids']['val'][0]},999")
    replace_line(meta / "test" / "localization.txt", 2, f"{cub['ids']['test'][1]},5,5,1,1")
    (meta / "train" / "image_sizes.txt").unlink()
    _, problems = run(CUB, cub["root"])
    assert {(p.file, p.line) for p in problems} == {("metadata/val/class_labels.txt", 1),
                                                      ("metadata/test/localization.txt", 2),
                                                      ("metadata/train/image_sizes.txt", None)}


# One corruption each: (what, how to corrupt the CUB tree, file, line, message parts).
def _cub_cases():
    V = "metadata/val/"

    def rm(rel):
        return lambda t: (shutil.rmtree if (t["root"] / rel).is_dir() else os.unlink)(t["root"] / rel)

    def setline(rel, i, fn):
        return lambda t: replace_line(t["root"] / rel, i, fn(t))

    def add(rel, fn):
        return lambda t: edit(t["root"] / rel, lambda ls: ls + [fn(t)])

    def drop(rel, i):
        return lambda t: edit(t["root"] / rel, lambda ls: ls[:i - 1] + ls[i:])

    def v0(t):
        return t["ids"]["val"][0]

    def size0(t):
        return t["sizes"][v0(t)]

    def flatten_first_test_id(t):  # the first test image renamed flat.jpg in all four files
        first = t["ids"]["test"][0]
        for name in ("image_ids.txt", "class_labels.txt", "image_sizes.txt", "localization.txt"):
            path = t["metadata"] / "test" / name
            replace_line(path, 1, "flat.jpg" + lines(path)[0][len(first):])

    return [
        ("no metadata folder", rm("metadata"), "metadata", None, ["metadata folder missing", "data.metadata"]),
        ("no split folder", rm("metadata/test"), "metadata/test", None, ["split folder missing"]),
        ("no image_ids.txt", rm(V + "image_ids.txt"), V + "image_ids.txt", None, ["missing"]),
        ("no class_labels.txt", rm(V + "class_labels.txt"), V + "class_labels.txt", None, ["missing"]),
        ("no localization.txt", rm(V + "localization.txt"), V + "localization.txt", None, ["missing"]),
        ("empty file", lambda t: (t["metadata"] / "val" / "image_sizes.txt").write_text(""),
         V + "image_sizes.txt", None, ["empty"]),
        ("a folder for a file", lambda t: (os.unlink(t["metadata"] / "val" / "image_sizes.txt"),
                                           (t["metadata"] / "val" / "image_sizes.txt").mkdir()),
         V + "image_sizes.txt", None, ["is a folder"]),
        ("git lfs pointer", lambda t: (t["metadata"] / "val" / "image_ids.txt").write_text(
            "version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 42\n"),
         V + "image_ids.txt", None, ["Git LFS pointer", "git lfs pull"]),
        ("not utf-8", lambda t: (t["metadata"] / "val" / "class_labels.txt").write_bytes(b"\xff\xfe\x00a,1"),
         V + "class_labels.txt", None, ["not UTF-8"]),
        ("blank line", lambda t: edit(t["metadata"] / "test" / "class_labels.txt", lambda ls: ls[:1] + [""] + ls[1:]),
         "metadata/test/class_labels.txt", 2, ["empty line"]),
        ("duplicate id", add(V + "image_ids.txt", v0), V + "image_ids.txt", 4, ["duplicate image id", "line 1"]),
        ("comma in id", add(V + "image_ids.txt", lambda t: "001.Black_footed_Albatross/a,b.jpg"),
         V + "image_ids.txt", 4, ["contains a comma"]),
        ("label fields", setline(V + "class_labels.txt", 2, lambda t: f"{t['ids']['val'][1]},1,2"),
         V + "class_labels.txt", 2, ["<image id>,<label>", "got 3"]),
        ("label not int", setline(V + "class_labels.txt", 1, lambda t: f"{v0(t)},zero"),
         V + "class_labels.txt", 1, ["'zero'", "not an integer"]),
        ("label out of range", setline(V + "class_labels.txt", 1, lambda t: f"{v0(t)},200"),
         V + "class_labels.txt", 1, ["label 200", "outside [0, 199]"]),
        ("label unknown id", add(V + "class_labels.txt", lambda t: "001.Black_footed_Albatross/nope.jpg,0"),
         V + "class_labels.txt", 4, ["'001.Black_footed_Albatross/nope.jpg'", "not in image_ids.txt"]),
        ("second label", add(V + "class_labels.txt", lambda t: f"{v0(t)},0"),
         V + "class_labels.txt", 4, ["second label", "line 1"]),
        ("no label line", drop(V + "class_labels.txt", 2), V + "image_ids.txt", 2, ["no line in class_labels.txt"]),
        ("label vs folder", setline(V + "class_labels.txt", 1, lambda t: f"{v0(t)},1"),
         V + "class_labels.txt", 1, ["label 1", "folder says class 0"]),
        ("size unknown id", add(V + "image_sizes.txt", lambda t: "x/y.jpg,10,10"),
         V + "image_sizes.txt", 4, ["not in image_ids.txt"]),
        ("size not positive", setline(V + "image_sizes.txt", 1, lambda t: f"{v0(t)},0,48"),
         V + "image_sizes.txt", 1, ["positive integers"]),
        ("size not int", setline(V + "image_sizes.txt", 1, lambda t: f"{v0(t)},64.5,48"),
         V + "image_sizes.txt", 1, ["positive integers"]),
        ("no size line", drop(V + "image_sizes.txt", 3), V + "image_ids.txt", 3, ["no line in image_sizes.txt"]),
        ("no box line", drop("metadata/test/localization.txt", 4), "metadata/test/image_ids.txt", 4,
         ["no box in localization.txt"]),
        ("box fields", setline(V + "localization.txt", 1, lambda t: f"{v0(t)},1,2,3"),
         V + "localization.txt", 1, ["5 comma-separated fields"]),
        ("box not numbers", setline(V + "localization.txt", 1, lambda t: f"{v0(t)},1,2,x,4"),
         V + "localization.txt", 1, ["not four numbers"]),
        ("box unknown id", add(V + "localization.txt", lambda t: "x/y.jpg,1,1,2,2"),
         V + "localization.txt", 4, ["not in image_ids.txt"]),
        ("x1 < x0", setline(V + "localization.txt", 1, lambda t: f"{v0(t)},10,1,5,8"),
         V + "localization.txt", 1, ["x1 < x0"]),
        ("y1 < y0", setline(V + "localization.txt", 1, lambda t: f"{v0(t)},1,10,5,8"),
         V + "localization.txt", 1, ["y1 < y0"]),
        ("negative", setline(V + "localization.txt", 1, lambda t: f"{v0(t)},-1,1,5,8"),
         V + "localization.txt", 1, ["negative"]),
        ("x1 = W", setline(V + "localization.txt", 1, lambda t: f"{v0(t)},0,0,{size0(t)[0]},{size0(t)[1] - 1}"),
         V + "localization.txt", 1, ["outside the", "inclusive", f"W-1 ="]),
        ("y1 = H", setline(V + "localization.txt", 1, lambda t: f"{v0(t)},0,0,{size0(t)[0] - 1},{size0(t)[1]}"),
         V + "localization.txt", 1, ["outside the", "H-1 ="]),
        ("not a class folder", flatten_first_test_id, "metadata/test/class_labels.txt", 1,
         ["'flat.jpg'", "NNN.Class_name"]),
    ]


@pytest.mark.parametrize("what,corrupt,file,line,needles", _cub_cases(), ids=[c[0] for c in _cub_cases()])
def test_cub_corruption_gives_its_problem(tmp_path, what, corrupt, file, line, needles):
    tree = make_cub_tree(tmp_path, seed=1)
    corrupt(tree)
    index, problems = run(CUB, tmp_path)
    one(problems, file, line, *needles)


# ------------------------------------------------------------------------------ ILSVRC


def test_ilsvrc_tree_is_indexed_exactly(ilsvrc):
    index, problems = run(ILSVRC, ilsvrc["root"])
    assert problems == []
    assert index.classes == list(imagenet_wnids()) and index.classes[:3] == ilsvrc["classes"]
    counts = index.counts()
    for split, want in ilsvrc["counts"].items():
        assert (counts[split]["frames"], counts[split]["boxes"]) == (want["frames"], want["boxes"])
    assert counts["val"]["boxes"] > counts["val"]["frames"]                 # several boxes per image
    for split in ("val", "test"):
        for f in index.splits[split]:
            assert f.label == ilsvrc["labels"][f.path] and f.size == ilsvrc["sizes"][f.path]
            assert f.boxes == tuple(ilsvrc["boxes"][f.path])
    assert all(f.path.startswith("val/ILSVRC2012_val_") for f in index.splits["test"])
    train = index.splits["train"]
    assert [f.path for f in train] == ilsvrc["ids"]["train"] and all(f.boxes == () for f in train)
    assert all(f.size == (0, 0) for f in train) and index.info["unknown_sizes"] == len(train)


def test_ilsvrc_train_sizes_are_used_when_present(tmp_path):
    tree = make_ilsvrc_tree(tmp_path, train_sizes=True)
    index, problems = run(ILSVRC, tmp_path)
    assert problems == [] and "unknown_sizes" not in index.info
    assert [f.size for f in index.splits["train"]] == [tree["sizes"][i] for i in tree["ids"]["train"]]
    drop = tmp_path / "metadata" / "train" / "image_sizes.txt"
    edit(drop, lambda ls: ls[1:])
    one(run(ILSVRC, tmp_path)[1], "metadata/train/image_ids.txt", 1, "no line in image_sizes.txt")


@pytest.mark.parametrize("value", [False, "false", 0, "no"])
def test_ilsvrc_index_train_false_never_touches_train(ilsvrc, value):
    shutil.rmtree(ilsvrc["metadata"] / "train")
    index, problems = run(ILSVRC, ilsvrc["root"], {"index_train": value})
    assert problems == [] and set(index.splits) == {"val", "test"}
    assert index.info["splits_read"] == ["val", "test"]
    one(run(ILSVRC, ilsvrc["root"], {"index_train": True})[1], "metadata/train", None, "split folder missing")


def test_ilsvrc_index_train_rejects_a_non_boolean(ilsvrc):
    with pytest.raises(HarnessError, match="data.index_train"):
        run(ILSVRC, ilsvrc["root"], {"index_train": "sometimes"})


def test_ilsvrc_train_lfs_pointer(ilsvrc):
    (ilsvrc["metadata"] / "train" / "class_labels.txt").write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:4d7a\nsize 38315530\n")
    one(run(ILSVRC, ilsvrc["root"])[1], "metadata/train/class_labels.txt", None, "Git LFS pointer")


def test_ilsvrc_val2_folder_is_the_label(ilsvrc):
    path = ilsvrc["metadata"] / "val" / "class_labels.txt"
    first = ilsvrc["ids"]["val"][0]                                        # val2/0/...
    replace_line(path, 1, f"{first},1")
    one(run(ILSVRC, ilsvrc["root"])[1], "metadata/val/class_labels.txt", 1, "label 1", "class 0 (n01440764)")


def test_ilsvrc_train_wnid_folder_is_the_label(ilsvrc):
    path = ilsvrc["metadata"] / "train" / "class_labels.txt"
    replace_line(path, 1, f"{ilsvrc['ids']['train'][0]},2")
    one(run(ILSVRC, ilsvrc["root"])[1], "metadata/train/class_labels.txt", 1, "label 2", "class 0 (n01440764)")


def test_ilsvrc_unknown_wnid_folder(ilsvrc):
    meta = ilsvrc["metadata"] / "train"
    bad = "train/n99999999/n99999999_1.JPEG"
    edit(meta / "image_ids.txt", lambda ls: ls + [bad])
    edit(meta / "class_labels.txt", lambda ls: ls + [f"{bad},0"])
    n = len(ilsvrc["ids"]["train"]) + 1
    one(run(ILSVRC, ilsvrc["root"])[1], "metadata/train/class_labels.txt", n, "n99999999", "not one of the 1000")


def test_ilsvrc_box_outside_image(ilsvrc):
    test = ilsvrc["ids"]["test"][0]
    w, h = ilsvrc["sizes"][test]
    replace_line(ilsvrc["metadata"] / "test" / "localization.txt", 1, f"{test},0,0,{w},{h}")
    one(run(ILSVRC, ilsvrc["root"])[1], "metadata/test/localization.txt", 1, f"outside the {w}x{h} image")


# ------------------------------------------------------------------------------ OpenImages


def test_openimages_tree_is_indexed_exactly(oi):
    index, problems = run(OPENIMAGES, oi["root"])
    assert problems == []
    assert index.classes[:3] == oi["classes"] == ["01226z", "0138tl", "014j1m"]
    assert index.classes[3] == "class_3" and len(index.classes) == 100
    counts = index.counts()
    for split, want in oi["counts"].items():
        assert (counts[split]["frames"], counts[split]["masks"]) == (want["frames"], want["masks"])
        assert counts[split]["boxes"] == 0
    for split in ("val", "test"):
        for f in index.splits[split]:
            assert f.label == oi["labels"][f.path]
            assert f.size == oi["sizes"][f.path]                           # from the image header
            assert f.masks == tuple(oi["masks"][f.path]) and f.ignore == oi["ignore"][f.path]
    assert all(f.masks == () and f.ignore is None for f in index.splits["train"])
    assert [f.size for f in index.splits["train"]] == [oi["sizes"][i] for i in oi["ids"]["train"]]


def test_openimages_first_line_without_ignore_mask(oi):
    loc = oi["metadata"] / "val" / "localization.txt"
    first = lines(loc)[0]
    replace_line(loc, 1, first.rsplit(",", 1)[0] + ",")
    index, problems = run(OPENIMAGES, oi["root"])
    assert problems == []
    first = index.splits["val"][0]
    assert first.ignore is None and first.masks == tuple(oi["masks"][oi["ids"]["val"][0]])


def _oi_cases():
    V = "metadata/val/"

    def loc(t):
        return t["metadata"] / "val" / "localization.txt"

    def multi(t):  # (line number of a second mask line, its image id)
        for i, line in enumerate(lines(loc(t)), 1):
            if line.endswith(","):
                return i, line.split(",")[0]
        raise AssertionError("the fixture has an image with several masks")

    def later_ignore(t):
        i, iid = multi(t)
        replace_line(loc(t), i, lines(loc(t))[i - 1] + "x_ignore.png")

    def missing_mask(t):
        os.unlink(t["root"] / lines(loc(t))[0].split(",")[1])

    def corrupt_mask(t):
        (t["root"] / lines(loc(t))[0].split(",")[1]).write_bytes(b"\x89PNG\r\n\x1a\nnot a png")

    def missing_ignore(t):
        os.unlink(t["root"] / lines(loc(t))[0].split(",")[2])

    def missing_image(t):
        os.unlink(t["root"] / t["ids"]["val"][1])

    def no_mask(t):
        iid = t["ids"]["val"][2]
        edit(loc(t), lambda ls: [x for x in ls if not x.startswith(iid + ",")])

    second = 3  # val_per_class=2: the second folder's first image is on line 3
    return [
        ("ignore on a later line", later_ignore, V + "localization.txt", None, ["only the first line", "asserts"]),
        ("mask file missing", missing_mask, V + "localization.txt", 1, ["mask", "is missing"]),
        ("mask file unreadable", corrupt_mask, V + "localization.txt", 1, ["mask", "cannot be read"]),
        ("ignore file missing", missing_ignore, V + "localization.txt", 1, ["ignore mask", "is missing"]),
        ("image missing", missing_image, V + "image_ids.txt", 2, ["image val/", "is missing"]),
        ("no mask line", no_mask, V + "image_ids.txt", 3, ["no mask in localization.txt"]),
        ("mask fields", lambda t: replace_line(loc(t), 1, lines(loc(t))[0] + ",extra"),
         V + "localization.txt", 1, ["3 comma-separated fields"]),
        ("two folders one label", lambda t: replace_line(t["metadata"] / "val" / "class_labels.txt", second,
                                                         f"{t['ids']['val'][second - 1]},0"),
         V + "class_labels.txt", second,
         ["label 0 is class '0138tl'", "'01226z' at metadata/train/class_labels.txt:1"]),
        ("one folder two labels", lambda t: replace_line(t["metadata"] / "val" / "class_labels.txt", 2,
                                                         f"{t['ids']['val'][1]},2"),
         V + "class_labels.txt", 2, ["label 2 is class '01226z'", "'014j1m'"]),
    ]


@pytest.mark.parametrize("what,corrupt,file,line,needles", _oi_cases(), ids=[c[0] for c in _oi_cases()])
def test_openimages_corruption_gives_its_problem(tmp_path, what, corrupt, file, line, needles):
    tree = make_openimages_tree(tmp_path, seed=3, max_instances=3)
    corrupt(tree)
    _, problems = run(OPENIMAGES, tmp_path)
    if line is None:   # the line of the image's later mask, computed from the tree
        assert len(problems) == 1 and problems[0].file == file and problems[0].line > 1, problems
        line = problems[0].line
    one(problems, file, line, *needles)


def test_openimages_sizes_file_is_not_needed(oi):
    for split in ("train", "val", "test"):
        (oi["metadata"] / split / "image_sizes.txt").unlink()
    assert run(OPENIMAGES, oi["root"])[1] == []


# ------------------------------------------------------------------------------ OpenImages masks


def _reference_get_mask(mask_root, mask_paths, ignore_path, size):
    """wsolevaluation's ``load_mask_image`` + ``get_mask``, verbatim but for the size."""
    def load_mask_image(file_path, resize_size):
        mask = np.float32(cv2.imread(file_path, cv2.IMREAD_GRAYSCALE))
        return cv2.resize(mask, resize_size, interpolation=cv2.INTER_NEAREST)

    mask_all_instances = []
    for mask_path in mask_paths:
        mask = load_mask_image(os.path.join(mask_root, mask_path), size)
        mask_all_instances.append(mask > 0.5)
    mask_all_instances = np.stack(mask_all_instances, axis=0).any(axis=0)
    ignore_mask = np.zeros_like(mask_all_instances)
    if len(ignore_path) > 0:
        ignore_box_mask = load_mask_image(os.path.join(mask_root, ignore_path), size) > 0.5
        ignore_mask = np.logical_and(ignore_box_mask, np.logical_not(mask_all_instances))
    return mask_all_instances.astype(np.uint8) + 255 * ignore_mask.astype(np.uint8)


def test_read_openimages_mask_matches_wsolevaluation(oi):
    index, _ = run(OPENIMAGES, oi["root"])
    for f in index.splits["val"] + index.splits["test"]:
        for size in ((224, 224), (40, 30)):
            fg, ignore = read_openimages_mask(oi["root"], f, size)
            assert fg.dtype == ignore.dtype == bool and fg.shape == (size[1], size[0])
            ref = _reference_get_mask(str(oi["root"]), f.masks, f.ignore or "", size)
            assert np.array_equal(fg, ref == 1) and np.array_equal(ignore, ref == 255)
            assert not (fg & ignore).any() and ignore.any() and fg.any()
        fg2, ig2 = OPENIMAGES.read_mask(oi["root"], f, (224, 224))           # the framework's entry point
        assert np.array_equal(fg2, read_openimages_mask(oi["root"], f, (224, 224))[0])


def test_read_openimages_mask_golden(tmp_path):
    mask = np.zeros((8, 8), np.uint8)
    mask[0:4, 0:4] = 100                     # any non-zero pixel is foreground (wsolevaluation: > 0.5 raw)
    ignore = np.zeros((8, 8), np.uint8)
    ignore[:, 0:6] = 255
    cv2.imwrite(str(tmp_path / "m.png"), mask)
    cv2.imwrite(str(tmp_path / "i.png"), ignore)
    frame = IndexedFrame(path="x.jpg", label=0, size=(8, 8), video="x.jpg", shot="x.jpg",
                         masks=("m.png",), ignore="i.png")
    fg, ig = read_openimages_mask(tmp_path, frame, (4, 4))   # nearest 8 -> 4 keeps source rows/cols 0, 2, 4, 6
    want_fg = np.zeros((4, 4), bool)
    want_fg[0:2, 0:2] = True
    want_ig = np.zeros((4, 4), bool)
    want_ig[:, 0:3] = True
    want_ig &= ~want_fg
    assert np.array_equal(fg, want_fg) and np.array_equal(ig, want_ig)
    fg, ig = read_openimages_mask(tmp_path, frame, (8, 2))   # (W, H): 2 rows of 8
    assert fg.shape == (2, 8) and fg[0].tolist() == [True] * 4 + [False] * 4 and not fg[1].any()
    no_ignore = IndexedFrame(**{**frame.__dict__, "ignore": None})
    assert not read_openimages_mask(tmp_path, no_ignore, (4, 4))[1].any()
    with pytest.raises(HarnessError, match="cannot read mask"):
        read_openimages_mask(tmp_path, IndexedFrame(**{**frame.__dict__, "masks": ("gone.png",)}), (4, 4))
    with pytest.raises(HarnessError, match="no instance mask"):
        read_openimages_mask(tmp_path, IndexedFrame(**{**frame.__dict__, "masks": ()}), (4, 4))


# ------------------------------------------------------------------------------ fixture format


def test_fixture_files_are_in_the_exact_format(cub, ilsvrc, oi):
    for tree in (cub, ilsvrc, oi):
        for path in tree["metadata"].rglob("*.txt"):
            data = path.read_bytes()
            assert not data.endswith(b"\n") and b"\r" not in data and b"\n\n" not in data, path
    for split in ("train", "val", "test"):
        assert (oi["metadata"] / split / "image_sizes.txt").read_bytes() == b""
    assert sorted(p.name for p in (ilsvrc["metadata"] / "train").iterdir()) == [
        "class_labels.txt", "image_ids.txt", "image_ids_proxy.txt"]
    # OpenImages: one line per mask, the ignore mask on an image's first line only
    loc = lines(oi["metadata"] / "test" / "localization.txt")
    seen = set()
    for line in loc:
        iid, mask, ignore = line.split(",")
        assert mask.startswith(iid[:-4] + "_m") and mask.endswith(".png")
        assert (ignore == iid[:-4] + "_ignore.png") if iid not in seen else ignore == ""
        seen.add(iid)
    assert len(loc) == oi["counts"]["test"]["masks"] > len(seen)
    for rel in oi["masks"][oi["ids"]["val"][0]] + [oi["ignore"][oi["ids"]["val"][0]]]:
        m = cv2.imread(str(oi["root"] / rel), cv2.IMREAD_UNCHANGED)
        assert m.dtype == np.uint8 and m.ndim == 2 and set(np.unique(m)) <= {0, 255}


def test_fixture_images_show_the_object_inside_its_box(cub):
    for iid in cub["ids"]["test"]:
        img = cv2.imread(str(cub["root"] / iid))
        w, h = cub["sizes"][iid]
        assert img.shape == (h, w, 3)
        x0, y0, x1, y1 = cub["boxes"][iid][0]
        assert x1 - x0 >= 7 and y1 - y0 >= 7
        inner = img[y0 + 2:y1 - 1, x0 + 2:x1 - 1].reshape(-1, 3).astype(float)
        mad = np.median(np.abs(inner - np.median(inner, axis=0)), axis=0)
        assert mad.max() <= 6                                    # a flat fill (JPEG ringing aside)
        outside = np.ones((h, w), bool)
        outside[y0:y1 + 1, x0:x1 + 1] = False
        if outside.sum() > 50:                                   # the noisy background is not flat
            bg = img[outside].astype(float)
            assert np.median(np.abs(bg - np.median(bg, axis=0)), axis=0).max() > 6


def test_fixture_can_write_realistic_sizes(tmp_path):
    tree = make_cub_tree(tmp_path, num_classes=2, train_per_class=1, val_per_class=1, test_per_class=1,
                         image_size=(500, 375))
    assert set(tree["sizes"].values()) == {(500, 375)}
    index, problems = run(CUB, tmp_path)
    assert problems == [] and {f.size for s in index.splits.values() for f in s} == {(500, 375)}
    assert cv2.imread(str(tmp_path / tree["ids"]["val"][0])).shape == (375, 500, 3)
