"""Small (or benchmark-sized) copies of YouTube-Objects v1.0 and v2.2 in their public formats.

The tests and the loader benchmark read these trees with the real readers
(:mod:`harness.data.youtube_objects`), so they follow the archives exactly:

* **v1.0**: ``<cls>/sets/{train,test}.txt`` (4-digit video ids), frames
  ``<cls>/data/<vid>/shots/<shot>/frameNNNN.jpg`` and, beside an annotated frame,
  ``frameNNNN.jpg_sticks.mat`` holding ``coor``: a 1 x n MATLAB cell of 1 x 4 double
  ``[x0 y0 x1 y1]`` boxes. (The cell is inferred from the authors' reader, which counts boxes
  with ``coor.size`` and squeezes each element to 4 values; the reader also takes an n x 4
  matrix.)
* **v2.2**: flat frames ``<cls>/<8-digit frame>.jpg``, ``Ranges/ranges_<cls>.mat`` holding
  ``ranges`` (3 x n_shots int32: start frame, end frame, video id; an integer type because the
  authors pass the values to ``range()``) and ``GroundTruth/<cls>/bb_gt{Test,Training}_<cls>.mat``
  holding ``bb_gtTest`` / ``bb_gtTraining``: a 1 x n MATLAB struct array with fields ``im``
  (frame id such as ``aeroplane00001139``) and ``boxes`` (k x 4 double ``[x0 y0 x1 y1]``). The
  struct and its field names are inferred from public code reading these files (MATLAB
  ``bb_gt(i).im``, ``bb_gtTraining(i).boxes``; Python unpacking each element of ``...[0]`` into
  (id, boxes)). ``gt_layout`` writes the same data as cell arrays instead, to check that the
  reader takes either.

Images are small JPEGs: a smooth random background with a filled rectangle where the box is.
Frame sizes alternate per video between ``size`` and a 4:3 frame of the same height, as real
videos differ in resolution.

With ``quirks=True`` (the default) the trees carry the real datasets' known defects so that
tests show how the readers handle them: YTOv1's two hand-fixed boxes (x0/x1 swapped on
``horse/data/0004/shots/055/frame0020.jpg``; x1 past the right border on
``boat/data/0006/shots/026/frame0001.jpg``), a negative coordinate, a box reaching 0.18 px past
the border; in v2.2 a horse frame shared by two consecutive shots and a test box touching
``x1 = W``.
"""
from __future__ import annotations

import random
from pathlib import Path

import cv2
import numpy as np

CLASSES = ("aeroplane", "bird", "boat", "car", "cat", "cow", "dog", "horse", "motorbike", "train")

V1_SWAP_FRAME = "horse/data/0004/shots/055/frame0020.jpg"
V1_CLIP_FRAME = "boat/data/0006/shots/026/frame0001.jpg"
V1_NEGATIVE_FRAME = "aeroplane/data/0004/shots/001/frame0001.jpg"
V1_OVERFLOW_FRAME = "aeroplane/data/0006/shots/001/frame0001.jpg"


# ------------------------------------------------------------------------------ pixels


def _background(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    w, h = size
    small = rng.integers(30, 220, size=(3, 4, 3), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def _draw(base: np.ndarray, boxes, colour) -> np.ndarray:
    img = base.copy()
    h, w = img.shape[:2]
    for x0, y0, x1, y1 in boxes:
        a, b = int(max(0, min(x0, x1))), int(max(0, y0))
        c, d = int(min(w - 1, max(x0, x1))), int(min(h - 1, y1))
        if c >= a and d >= b:
            img[b:d + 1, a:c + 1] = colour
    return img


def _write_jpg(path: Path, img: np.ndarray) -> None:
    if not cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, 80]):
        raise OSError(f"cannot write {path}")


def _random_box(rng: random.Random, size: tuple[int, int]) -> list[float]:
    """A float box well inside the image, as the annotation tools give."""
    w, h = size
    x0 = rng.uniform(0.05, 0.45) * w
    y0 = rng.uniform(0.05, 0.45) * h
    x1 = x0 + rng.uniform(0.2, 0.45) * w
    y1 = y0 + rng.uniform(0.2, 0.45) * h
    return [x0, y0, min(x1, w - 2.0), min(y1, h - 2.0)]


def _video_size(size: tuple[int, int], number: int) -> tuple[int, int]:
    """Odd videos at ``size``, even ones 4:3 at the same height."""
    w, h = size
    return (w, h) if number % 2 else (max(8, h * 4 // 3), h)


# ------------------------------------------------------------------------------ v1.0


def _savemat(path: Path, data: dict) -> None:
    from scipy.io import savemat

    savemat(str(path), data, do_compression=False, oned_as="row")


def write_sticks(path: Path, boxes) -> None:
    """``frameNNNN.jpg_sticks.mat``: ``coor`` = 1 x n cell of 1 x 4 double boxes."""
    cell = np.empty((1, len(boxes)), dtype=object)
    for i, b in enumerate(boxes):
        cell[0, i] = np.asarray(b, dtype=np.float64).reshape(1, -1)
    _savemat(path, {"coor": cell})


def authors_val_videos(labeled: list[str], seed: int, k: int = 5) -> list[str]:
    """The authors' draw (sorted labeled videos, ``random.seed(seed)``, 1000 shuffles, first k)."""
    rng = random.Random(seed)
    out = sorted(labeled)
    for _ in range(1000):
        rng.shuffle(out)
    return out[:k]


def _test_ids(n: int, n_test: int) -> list[int]:
    """Test videos interleaved with train ones: 4, 6, 8, ... first, then the rest ascending,
    so that horse/0004 and boat/0006 (the two hand-fixed boxes) are test videos."""
    pref = list(range(4, n + 1, 2)) + [i for i in range(1, n + 1) if not (i >= 4 and i % 2 == 0)]
    return sorted(pref[:n_test])


def make_ytov1_tree(root: Path, *, train_videos: int = 7, labeled_train_videos: int = 6,
                    test_videos: int = 2, shots_per_video: int = 2, frames_per_shot: int = 4,
                    size: tuple[int, int] = (128, 72), quirks: bool = True, seed: int = 0) -> dict:
    """Write a YouTube-Objects v1.0 copy under ``root``; return what was written.

    Per class: ``train_videos + test_videos`` videos ``0001..``; test ids come from
    :func:`_test_ids`; the first ``labeled_train_videos`` train videos and every test video are
    annotated: ``frame0001`` of every shot (one box) and the last frame of the first shot (two
    boxes). The last train video has an extra empty shot folder. Val videos (returned) follow
    the authors' seeded draw with seed = class index. Benchmark-sized trees: raise the counts
    and ``size``, e.g. ``shots_per_video=10, frames_per_shot=30, size=(640, 360)`` (~27k
    frames; the real v1.0 has 155 videos, 5,507 shots, 571k frames up to 1280 x 720).
    """
    root = Path(root)
    n = train_videos + test_videos
    if quirks and (n < 6 or test_videos < 2):
        raise ValueError("quirks=True needs videos 0004 and 0006 as test videos: "
                         "train_videos + test_videos >= 6 and test_videos >= 2")
    if labeled_train_videos > train_videos:
        raise ValueError("labeled_train_videos > train_videos")
    rng = random.Random(seed)
    nprng = np.random.default_rng(seed)
    out = {"classes": list(CLASSES), "train_videos": {}, "labeled_train_videos": {}, "test_videos": {},
           "val_videos": {}, "boxes": {}, "sizes": {}, "shots": {}, "expected": {}, "known": {}}
    annotations: dict[str, list[list[float]]] = out["boxes"]

    for ci, cls in enumerate(CLASSES):
        test_ids = _test_ids(n, test_videos)
        train_ids = [i for i in range(1, n + 1) if i not in test_ids]
        labeled = train_ids[:labeled_train_videos]
        sets = root / cls / "sets"
        sets.mkdir(parents=True, exist_ok=True)
        # train.txt ends with a newline, test.txt does not: the reader takes either
        (sets / "train.txt").write_text("".join(f"{i:04d}\n" for i in train_ids))
        (sets / "test.txt").write_text("\n".join(f"{i:04d}" for i in test_ids))
        out["train_videos"][cls] = [f"{i:04d}" for i in train_ids]
        out["labeled_train_videos"][cls] = [f"{i:04d}" for i in labeled]
        out["test_videos"][cls] = [f"{i:04d}" for i in test_ids]
        out["val_videos"][cls] = sorted(authors_val_videos(out["labeled_train_videos"][cls], ci))

        for number in range(1, n + 1):
            vid = f"{number:04d}"
            vsize = _video_size(size, number)
            out["sizes"][f"{cls}/{vid}"] = vsize
            annotated = number in labeled or number in test_ids
            shots = {f"{s:03d}": frames_per_shot for s in range(1, shots_per_video + 1)}
            if number == train_ids[-1]:
                shots[f"{shots_per_video + 1:03d}"] = 0  # an empty shot folder
            if quirks and cls == "horse" and vid == "0004":
                shots["055"] = max(frames_per_shot, 20)
            if quirks and cls == "boat" and vid == "0006":
                shots["026"] = frames_per_shot
            out["shots"][f"{cls}/{vid}"] = dict(shots)
            base = _background(nprng, vsize)
            colour = tuple(int(c) for c in nprng.integers(0, 256, size=3))
            for s_index, (shot, count) in enumerate(sorted(shots.items())):
                sdir = root / cls / "data" / vid / "shots" / shot
                sdir.mkdir(parents=True, exist_ok=True)
                obj = _random_box(rng, vsize)
                for f in range(1, count + 1):
                    name = f"frame{f:04d}.jpg"
                    rel = f"{cls}/data/{vid}/shots/{shot}/{name}"
                    boxes = None
                    if annotated and shot not in ("055", "026") and f == 1:
                        boxes = [_random_box(rng, vsize)]
                    if annotated and s_index == 0 and f == count and count > 1:
                        boxes = [_random_box(rng, vsize), _random_box(rng, vsize)]
                    if quirks and rel == V1_SWAP_FRAME:
                        b = _random_box(rng, vsize)
                        boxes = [[b[2], b[1], b[0], b[3]]]  # x0 and x1 swapped
                        out["known"][rel] = [(b[0], b[1], b[2], b[3])]
                    if quirks and rel == V1_CLIP_FRAME:
                        w, h = vsize
                        boxes = [[0.0, 8.057603686635957, w + 23.5, h * 0.65], _random_box(rng, vsize)]
                        out["known"][rel] = [(0.0, 8.057603686635957, float(w - 1), h * 0.65),
                                             tuple(boxes[1])]
                    if quirks and rel == V1_NEGATIVE_FRAME and boxes:
                        boxes[0][0] = -2.5
                        out["known"][rel] = [(0.0, *boxes[0][1:])]
                    if quirks and rel == V1_OVERFLOW_FRAME and boxes:
                        boxes[0][2] = vsize[0] - 1 + 0.18
                        out["known"][rel] = [(boxes[0][0], boxes[0][1], float(vsize[0] - 1), boxes[0][3])]
                    img = _draw(base, boxes if boxes else [obj], colour)
                    _write_jpg(sdir / name, img)
                    if boxes:
                        write_sticks(sdir / f"{name}_sticks.mat", boxes)
                        annotations[rel] = [list(map(float, b)) for b in boxes]

    # expected counts (train_frames_per_shot = 0: every frame)
    def split_counts(videos: dict[str, list[str]]) -> dict:
        frames = [p for p in annotations if p.split("/")[2] in videos.get(p.split("/")[0], [])]
        return {"frames": len(frames), "boxes": sum(len(annotations[p]) for p in frames),
                "videos": sum(len(v) for v in videos.values())}

    out["expected"]["test"] = split_counts(out["test_videos"])
    out["expected"]["val"] = split_counts(out["val_videos"])
    train_v = {c: [v for v in out["train_videos"][c] if v not in out["val_videos"][c]] for c in CLASSES}
    shots = [(c, v, s) for c in CLASSES for v in train_v[c] for s, k in out["shots"][f"{c}/{v}"].items() if k]
    out["expected"]["train"] = {"videos": sum(len(v) for v in train_v.values()), "shots": len(shots),
                                "frames": sum(out["shots"][f"{c}/{v}"][s] for c, v, s in shots)}
    return out


# ------------------------------------------------------------------------------ v2.2

GT_LAYOUTS = ("struct", "cell", "cell_column", "cell_nx2")


def write_gt(path: Path, key: str, entries: list[tuple[str, np.ndarray]], layout: str = "struct") -> None:
    """``bb_gtTest`` / ``bb_gtTraining``: entries (frame id, k x 4 boxes).

    ``struct``: 1 x n struct array with fields ``im`` and ``boxes`` (the published layout, as
    far as public code reading the files shows);
    ``cell``: 1 x n cell of 1 x 2 cells; ``cell_column``: n x 1 cell of 1 x 2 cells;
    ``cell_nx2``: n x 2 cell.
    """
    n = len(entries)
    if layout == "struct":
        arr = np.zeros((1, n), dtype=[("im", object), ("boxes", object)])
        for i, (fid, bb) in enumerate(entries):
            arr[0, i] = (fid, np.atleast_2d(np.asarray(bb, dtype=np.float64)))
    elif layout in ("cell", "cell_column"):
        arr = np.empty((1, n) if layout == "cell" else (n, 1), dtype=object)
        for i, (fid, bb) in enumerate(entries):
            pair = np.empty((1, 2), dtype=object)
            pair[0, 0], pair[0, 1] = fid, np.atleast_2d(np.asarray(bb, dtype=np.float64))
            arr.flat[i] = pair
    elif layout == "cell_nx2":
        arr = np.empty((n, 2), dtype=object)
        for i, (fid, bb) in enumerate(entries):
            arr[i, 0], arr[i, 1] = fid, np.atleast_2d(np.asarray(bb, dtype=np.float64))
    else:
        raise ValueError(f"gt_layout {layout!r}: use one of {GT_LAYOUTS}")
    _savemat(path, {key: arr})


def write_ranges(path: Path, shots: list[tuple[int, int, int]]) -> None:
    """``ranges_<cls>.mat``: ``ranges`` = 3 x n_shots int32 (start, end, video)."""
    arr = np.array(shots, dtype=np.int32).reshape(-1, 3).T.copy()
    _savemat(path, {"ranges": arr})


def _interleave(n_train: int, n_test: int, n_none: int) -> list[str]:
    """Video kinds in ranges order, cycling train, test, train, none while each lasts, so that
    the first three train videos are not the first three videos."""
    left = {"train": n_train, "test": n_test, "none": n_none}
    out = []
    while sum(left.values()):
        for kind in ("train", "test", "train", "none"):
            if left[kind]:
                out.append(kind)
                left[kind] -= 1
    return out


def make_ytov2_2_tree(root: Path, *, train_videos: int = 5, test_videos: int = 2, unlabeled_videos: int = 1,
                      shots_per_video: int = 2, frames_per_shot: int = 5, size: tuple[int, int] = (128, 72),
                      gt_layout: str = "struct", quirks: bool = True, seed: int = 0) -> dict:
    """Write a YouTube-Objects v2.2 copy under ``root``; return what was written.

    Per class: videos ``1..n`` (train = with training GT, test = with test GT, unlabeled = with
    neither) interleaved in ``ranges``; in ``cow`` video n comes first in ``ranges`` (first
    appearance is not numeric order). Frames are numbered from 1 through
    the class, shots are consecutive. Training GT: frame 1 of each shot of a train video gets
    one box (its middle frame too in the first shot); test GT: the first frame of each shot of a
    test video gets one box, its last frame two. Benchmark-sized trees: raise the counts and
    ``size``, e.g. ``shots_per_video=10, frames_per_shot=50, size=(640, 360)`` (~40k frames;
    the real v2.2 has 722k frames, mostly 1280 x 720).
    """
    if train_videos < 4 and quirks:
        raise ValueError("quirks=True needs train_videos >= 4 (3 go to val)")
    root = Path(root)
    rng = random.Random(seed)
    nprng = np.random.default_rng(seed)
    out = {"classes": list(CLASSES), "ranges_order": {}, "train_videos": {}, "test_videos": {}, "val_videos": {},
           "shots": {}, "boxes": {"test": {}, "training": {}}, "sizes": {}, "overlap_frames": [], "known": {},
           "expected": {}}
    gt_root = root / "GroundTruth"
    (root / "Ranges").mkdir(parents=True, exist_ok=True)

    for ci, cls in enumerate(CLASSES):
        cdir = root / cls
        cdir.mkdir(parents=True, exist_ok=True)
        (gt_root / cls).mkdir(parents=True, exist_ok=True)
        kinds = _interleave(train_videos, test_videos, unlabeled_videos)
        order = list(range(1, len(kinds) + 1))
        if cls == "cow":
            order = order[-1:] + order[:-1]  # video n first: first appearance != numeric order
        out["ranges_order"][cls] = order
        out["train_videos"][cls] = [v for v, k in zip(order, kinds) if k == "train"]
        out["test_videos"][cls] = [v for v, k in zip(order, kinds) if k == "test"]
        out["val_videos"][cls] = out["train_videos"][cls][:3]

        shots, tst, trn = [], [], []
        frame = 1
        for vid, kind in zip(order, kinds):
            vsize = _video_size(size, vid)
            out["sizes"][f"{cls}/{vid:04d}"] = vsize
            base = _background(nprng, vsize)
            colour = tuple(int(c) for c in nprng.integers(0, 256, size=3))
            for s in range(shots_per_video):
                start = frame
                if quirks and cls == "horse" and vid == order[0] and s == 1:
                    start = frame - 1  # the glitch: the previous shot's last frame starts this one
                    out["overlap_frames"].append(start)
                end = start + frames_per_shot - 1
                row = len(shots)
                shots.append((start, end, vid))
                out["shots"][(cls, row)] = (start, end, vid)
                obj = _random_box(rng, vsize)
                boxes_of = {}
                if kind == "train":
                    boxes_of[start] = [_random_box(rng, vsize)]
                    if s == 0 and frames_per_shot > 2:
                        boxes_of[start + frames_per_shot // 2] = [_random_box(rng, vsize)]
                elif kind == "test":
                    boxes_of[start] = [_random_box(rng, vsize)]
                    if frames_per_shot > 1:
                        boxes_of[end] = [_random_box(rng, vsize), _random_box(rng, vsize)]
                    if quirks and cls == "aeroplane" and not tst and s == 0:
                        w, h = vsize
                        touch = [0.355 * w, 0.13 * h, float(w), 0.87 * h]  # like 455,94,1280,628 on 1280x720
                        boxes_of[start] = [touch]
                        out["known"][f"{cls}/{start:08d}.jpg"] = [(touch[0], touch[1], float(w - 1), touch[3])]
                for f in range(start, end + 1):
                    if f < frame:
                        continue  # already written (the shared frame)
                    img = _draw(base, boxes_of.get(f, [obj]), colour)
                    _write_jpg(cdir / f"{f:08d}.jpg", img)
                for f, bb in sorted(boxes_of.items()):
                    fid = f"{cls}{f:08d}"
                    (trn if kind == "train" else tst).append((fid, np.array(bb, dtype=np.float64)))
                    out["boxes"]["training" if kind == "train" else "test"][f"{cls}/{f:08d}.jpg"] = \
                        [list(map(float, b)) for b in bb]
                frame = end + 1
        write_ranges(root / "Ranges" / f"ranges_{cls}.mat", shots)
        write_gt(gt_root / cls / f"bb_gtTest_{cls}.mat", "bb_gtTest", tst, gt_layout)
        write_gt(gt_root / cls / f"bb_gtTraining_{cls}.mat", "bb_gtTraining", trn, gt_layout)

    def rows_of(videos: dict) -> list:
        return [(c, r) for (c, r), (_, _, v) in out["shots"].items() if v in videos[c]]

    def gt_counts(kind: str, videos: dict) -> dict:
        frames = [p for p in out["boxes"][kind] if _v22_video(out, p) in videos[p.split("/")[0]]]
        return {"frames": len(frames), "boxes": sum(len(out["boxes"][kind][p]) for p in frames),
                "videos": sum(len(v) for v in videos.values()),
                "shots": len({_v22_row(out, p) for p in frames})}

    out["expected"]["test"] = gt_counts("test", out["test_videos"])
    out["expected"]["val"] = gt_counts("training", out["val_videos"])
    train_v = {c: out["train_videos"][c][3:] for c in CLASSES}
    rows = rows_of(train_v)
    n_frames = 0
    for c, r in rows:
        s, e, _ = out["shots"][(c, r)]
        n_frames += sum(1 for f in range(s, e + 1) if _v22_owner(out, c, f) == r)
    out["expected"]["train"] = {"videos": sum(len(v) for v in train_v.values()), "shots": len(rows),
                                "frames": n_frames}
    return out


def _v22_owner(out: dict, cls: str, frame: int) -> int:
    """The last shot row holding ``frame`` (the reader's rule for a frame in two shots)."""
    rows = [r for (c, r), (s, e, _) in out["shots"].items() if c == cls and s <= frame <= e]
    return max(rows)


def _v22_row(out: dict, path: str) -> tuple[str, int]:
    cls, name = path.split("/")
    return cls, _v22_owner(out, cls, int(name[:8]))


def _v22_video(out: dict, path: str) -> int:
    return out["shots"][_v22_row(out, path)][2]
