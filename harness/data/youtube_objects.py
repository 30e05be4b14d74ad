"""YouTube-Objects v1.0 (``ytov1``) and v2.2 (``ytov2.2``): readers of the public archives as
they unpack, with the train/val/test splits of the CoLo-CAM / TCAM authors' code.

Both read the raw layout in place (no copy, no reformatting script) and build the video / shot
structure from it. Boxes are the datasets' own, in original pixels, inclusive ``x0, y0, x1, y1``.

**YTOv1** (Prest et al. 2012; splits of ``datasets/_video_ds_ytov1_0.py``):

* test = every annotated frame (a ``frameNNNN.jpg_sticks.mat`` beside it with at least one
  box) of the videos in ``<cls>/sets/test.txt``;
* val = 5 videos per class drawn among the train videos that have an annotation file, and only
  their annotated frames. The draw is the authors': the labeled videos sorted, Python's
  ``random.Random(val_seed + class index)``, ``shuffle`` 1000 times, the first 5. With
  ``val_seed = 0`` this is their published split (checked against their ``val/image_ids.txt``
  for aeroplane and bird, order included). ``val_split_file`` reads their published file
  instead (``folds/wsol-done-right-splits/YouTube-Objects-v1.0/val/image_ids.txt`` of
  sbelharbi/colo-cam; absolute, or relative to ``data.root`` (else to the working directory);
  a folder means its ``image_ids.txt``; ``path,label`` lines are taken too): val = the listed
  frames, train = the other train videos;
* train = the other train videos, organized by shot folder (non-empty shots; frames sorted by
  number = temporal order). YTOv1 has ~571k frames. ``train_frames_per_shot`` (default 0 = all)
  keeps a fixed number of frames per shot at index time, evenly spaced (positions ``i * m // n``
  of a shot of ``m`` frames, so the first is always kept). The authors index shots and draw
  random frames of each shot per epoch; the harness does that at training time
  (``loader.train_frames_per_shot``, 10 in the ``ytov1`` / ``ytov2.2`` entries; see
  ``harness/data/frame_sampler.py``), so the index keeps every frame. A shot's frames keep
  their true temporal position as ``index``.
* annotation values: negatives set to 0 (the authors' ``abs(v * (v > 0))``); the two known bad
  boxes are fixed as the authors do: on ``horse/data/0004/shots/055/frame0020.jpg`` x0 and x1
  are swapped back, on ``boat/data/0006/shots/026/frame0001.jpg`` an x1 past the border is set
  to W - 1.

**YTOv2.2** (Kalogeiton et al. 2016; splits of ``datasets/_video_ds_ytov2_2.py``):

* ``Ranges/ranges_<cls>.mat`` gives each shot (a column: start frame, end frame, video id);
  the shot id is its 0-based column (``shot-%06d`` in the authors' copy), the video
  ``<cls>/%04d``. A frame in two shots (the known horse glitch) belongs to the later one, as in
  the authors' id map; it is reported in ``info["warnings"]``;
* a video is train if one of its frames has a training GT box, test if one has a test GT box
  (both is a problem); videos are ordered by first appearance in ``ranges``, which is the
  order of the authors' dicts;
* val = the first 3 train videos per class in that order (not random), their training-GT
  frames; train = every shot of the other train videos (``train_frames_per_shot`` as above);
  test = the test-GT frames.

Boxes of both versions reaching past the border by at most ``box_tolerance`` x the image side
(YTOv1 has x1 = 449.2 on 450-px frames, YTOv2.2 x1 = 1280 on 1280-px ones) are clipped to the
image and counted in ``info``; further out, empty or inverted boxes are problems.
"""
from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from harness.data.index import DatasetIndex, IndexedFrame, Problem
from harness.errors import HarnessError

CLASSES = ["aeroplane", "bird", "boat", "car", "cat", "cow", "dog", "horse", "motorbike", "train"]

V1_SWAP_X = "horse/data/0004/shots/055/frame0020.jpg"   # x0 and x1 swapped in the annotation
V1_CLIP_X1 = "boat/data/0006/shots/026/frame0001.jpg"   # x1 past the right border
V1_VAL_VIDEOS = 5
V22_VAL_VIDEOS = 3
SHUFFLES = 1000  # the authors shuffle the labeled videos 1000 times after seeding


# ------------------------------------------------------------------------------ shared helpers


def _loadmat():
    try:
        from scipy.io import loadmat
    except ImportError as e:  # pragma: no cover - scipy ships with scikit-image
        raise HarnessError("reading YouTube-Objects .mat files needs scipy: pip install scipy") from e
    return loadmat


def _setting_int(settings: dict, key: str, default: int, minimum: int | None = 0) -> int:
    value = settings.get(key, default)
    try:
        out = int(value)
        if out != float(value):
            raise ValueError
    except (TypeError, ValueError):
        raise HarnessError(f"data.{key}={value!r}: expected an integer") from None
    if minimum is not None and out < minimum:
        raise HarnessError(f"data.{key}={out}: must be >= {minimum}")
    return out


def _setting_float(settings: dict, key: str, default: float) -> float:
    value = settings.get(key, default)
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise HarnessError(f"data.{key}={value!r}: expected a number") from None
    if not 0 <= out <= 1:
        raise HarnessError(f"data.{key}={out}: use a fraction of the image side in [0, 1]")
    return out


def spread(m: int, n: int) -> list[int]:
    """``n`` of ``m`` positions evenly spaced, the first included (``i * m // n``); all when
    ``n`` is 0 or ``m <= n``."""
    if n <= 0 or m <= n:
        return list(range(m))
    return [i * m // n for i in range(n)]


def authors_val_choice(videos: list[str], seed: int, k: int) -> list[str]:
    """The authors' val draw: sorted, ``random.seed(seed)``, 1000 ``shuffle``s, the first ``k``
    (in their order). Python's Mersenne Twister and ``shuffle`` are stable across versions."""
    rng = random.Random(seed)
    out = sorted(videos)
    for _ in range(SHUFFLES):
        rng.shuffle(out)
    return out[:k]


def _header_size(root: Path, rel: str, problems: list[Problem]) -> tuple[int, int] | None:
    try:
        with Image.open(root / rel) as im:
            return im.size
    except FileNotFoundError:
        problems.append(Problem(rel, None, "image file is missing"))
    except (OSError, ValueError, SyntaxError) as e:
        problems.append(Problem(rel, None, f"cannot read the image header ({e}); re-extract it from the archive"))
    return None


def _fmt(v: float) -> str:
    return f"{v:g}"


@dataclass
class _Boxes:
    """Cleans raw boxes: negatives to 0, the clip within tolerance, validity; keeps statistics."""

    tolerance: float
    clipped: list[str] = field(default_factory=list)
    negatives: int = 0
    fixes: list[str] = field(default_factory=list)

    def clean(self, values, size: tuple[int, int], where: str) -> tuple[tuple[float, ...] | None, str | None]:
        """(box, None) or (None, what is wrong)."""
        v = np.asarray(values, dtype=np.float64).ravel()
        if v.size != 4:
            return None, f"has {v.size} values, expected 4 (x0, y0, x1, y1)"
        if not np.all(np.isfinite(v)):
            return None, f"has a non-finite value ({', '.join(_fmt(x) for x in v)})"
        if np.any(v < 0):
            self.negatives += int(np.sum(v < 0))
            v = np.abs(v * (v > 0))
        return self.finish([float(x) for x in v], size, where)

    def finish(self, v: list[float], size: tuple[int, int], where: str):
        w, h = size
        x0, y0, x1, y1 = v
        text = ", ".join(_fmt(x) for x in v)
        if x1 < x0 or y1 < y0:
            return None, f"({text}) is inverted: x1 < x0 or y1 < y0"
        lim_x, lim_y = (w - 1) + self.tolerance * w, (h - 1) + self.tolerance * h
        if x0 > w - 1 or y0 > h - 1 or x1 > lim_x or y1 > lim_y:
            return None, (f"({text}) lies outside the {w}x{h} image (beyond data.box_tolerance="
                          f"{self.tolerance:g} of its side)")
        if x1 > w - 1 or y1 > h - 1:
            self.clipped.append(f"{where}: ({text}) -> x1 <= {w - 1}, y1 <= {h - 1}")
            x1, y1 = min(x1, w - 1.0), min(y1, h - 1.0)
        if x1 <= x0 or y1 <= y0:
            return None, f"({text}) is empty (x1 <= x0 or y1 <= y0)"
        return (x0, y0, x1, y1), None

    def notes(self) -> list[str]:
        out = []
        if self.clipped:
            out.append(f"{len(self.clipped)} box(es) reaching past the image border by at most data.box_tolerance "
                       f"were clipped to it, e.g. {self.clipped[0]}")
        if self.negatives:
            out.append(f"{self.negatives} negative box coordinate(s) set to 0, as the authors' readers do")
        return out


def _rel(root: Path, path: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def _by_number(name: str):
    m = re.search(r"(\d+)", name)
    return (int(m.group(1)) if m else -1, name)


# ------------------------------------------------------------------------------ YTOv1


@dataclass
class _Shot1:
    frames: list[str]           # jpg names, temporal order
    sticks: set[str]            # jpg names with a ``_sticks.mat``
    orphans: list[str]          # ``_sticks.mat`` names without their jpg


def _scan_video(shots_dir: Path) -> dict[str, _Shot1]:
    out = {}
    for entry in sorted(os.scandir(shots_dir), key=lambda e: e.name):
        if not entry.is_dir():
            continue
        names = os.listdir(entry.path)
        jpgs = sorted((n for n in names if n.endswith(".jpg")), key=_by_number)
        have = set(jpgs)
        sticks = {n[: -len("_sticks.mat")] for n in names if n.endswith("_sticks.mat")}
        out[entry.name] = _Shot1(jpgs, sticks & have, sorted(f"{s}_sticks.mat" for s in sticks - have))
    return out


def _read_sets(root: Path, cls: str, name: str, problems: list[Problem]) -> dict[str, int]:
    """Video id -> 1-based line of ``<cls>/sets/<name>.txt``."""
    rel = f"{cls}/sets/{name}.txt"
    try:
        text = (root / rel).read_text()
    except FileNotFoundError:
        problems.append(Problem(rel, None, f"video list is missing (it comes with {cls}.tar.gz)"))
        return {}
    except (OSError, UnicodeDecodeError) as e:
        problems.append(Problem(rel, None, f"cannot read it ({e})"))
        return {}
    out: dict[str, int] = {}
    for i, line in enumerate(text.splitlines(), 1):
        vid = line.strip()
        if not vid:
            continue
        if not re.fullmatch(r"\d{4}", vid):
            problems.append(Problem(rel, i, f"{vid!r} is not a 4-digit video id such as 0001"))
        elif vid in out:
            problems.append(Problem(rel, i, f"video {vid} is listed twice (first on line {out[vid]})"))
        else:
            out[vid] = i
    return out


def _read_coor(path: Path, loadmat) -> list[np.ndarray]:
    """The raw boxes of a ``_sticks.mat`` (``coor``: a cell of 1 x 4 boxes, or an n x 4 matrix).
    Raises ValueError with what is wrong."""
    try:
        mat = loadmat(str(path))
    except Exception as e:  # scipy raises a variety of types on damaged files
        raise ValueError(f"cannot read the .mat file ({type(e).__name__}: {e})") from None
    if "coor" not in mat:
        keys = ", ".join(k for k in mat if not k.startswith("__")) or "none"
        raise ValueError(f"has no variable 'coor' (variables: {keys})")
    coor = mat["coor"]
    if not isinstance(coor, np.ndarray):
        raise ValueError(f"'coor' is a {type(coor).__name__}, expected boxes")
    if coor.dtype == object:
        return [np.asarray(e) for e in coor.ravel()]
    if coor.dtype.kind not in "fiu":
        raise ValueError(f"'coor' has type {coor.dtype}, expected numbers")
    if coor.size == 0:
        return []
    if coor.ndim == 2 and coor.shape[1] == 4:
        return list(coor.astype(np.float64))
    if coor.size == 4:
        return [coor.astype(np.float64).ravel()]
    raise ValueError(f"'coor' has shape {coor.shape}, expected n x 4 boxes or a cell of boxes")


class _YTOv1:
    name = "ytov1"
    kind = "video"
    classes = list(CLASSES)
    published = {
        "train": {"shots": 2768, "videos": 78},
        "val": {"frames": 325, "boxes": 347, "videos": 50},
        "test": {"frames": 346, "boxes": 396, "videos": 27},
    }
    source = (
        "YouTube-Objects v1.0 (Prest et al., CVPR 2012): 10 classes, 155 videos.\n"
        "Download https://data.vision.ee.ethz.ch/cvl/youtube-objects/categories/<class>.tar.gz for "
        "aeroplane bird boat car cat cow dog horse motorbike train and extract them all into one folder "
        "(data.root).\n"
        "Expected layout: <root>/<class>/sets/{train,test}.txt (4-digit video ids), "
        "<root>/<class>/data/<video>/shots/<shot>/frameNNNN.jpg, and beside an annotated frame "
        "frameNNNN.jpg_sticks.mat (variable 'coor').\n"
        "Optional: the authors' val split, folds/wsol-done-right-splits/YouTube-Objects-v1.0/val/image_ids.txt "
        "of https://github.com/sbelharbi/colo-cam, via data.val_split_file."
    )
    defaults = {
        "val_seed": 0,                 # class c draws its val videos with seed val_seed + c (0 = the authors')
        "val_split_file": None,        # the authors' val/image_ids.txt instead of the draw
        "train_frames_per_shot": 0,    # evenly spaced frames kept per train shot at index time; 0 = all
        "box_tolerance": 0.02,         # boxes past the border by at most this fraction are clipped
    }

    def index(self, root: Path, settings: dict, problems: list[Problem], progress: bool = False) -> DatasetIndex:
        root = Path(root)
        per_shot = _setting_int(settings, "train_frames_per_shot", 0)
        seed = _setting_int(settings, "val_seed", 0, minimum=None)
        boxes = _Boxes(_setting_float(settings, "box_tolerance", 0.02))
        val_file = settings.get("val_split_file")
        loadmat = _loadmat()
        notes: list[str] = []

        # 1. video lists and the shot folders of every listed video
        lists: dict[str, dict[str, dict[str, int]]] = {}
        scans: dict[tuple[str, str], dict[str, _Shot1]] = {}
        for cls in tqdm(CLASSES, desc="ytov1: scanning videos", disable=not progress, leave=False):
            if not (root / cls).is_dir():
                problems.append(Problem(cls, None, f"class folder is missing: extract {cls}.tar.gz into the root"))
                continue
            train, test = (_read_sets(root, cls, s, problems) for s in ("train", "test"))
            for vid, line in test.items():
                if vid in train:
                    problems.append(Problem(f"{cls}/sets/test.txt", line,
                                            f"video {vid} is also in sets/train.txt (line {train[vid]})"))
            lists[cls] = {"train": {v: n for v, n in train.items() if v not in test}, "test": test}
            for split, vids in lists[cls].items():
                for vid, line in list(vids.items()):
                    shots_dir = root / cls / "data" / vid / "shots"
                    if not shots_dir.is_dir():
                        problems.append(Problem(f"{cls}/sets/{split}.txt", line,
                                                f"video {vid}: folder {cls}/data/{vid}/shots is missing"))
                        del vids[vid]
                        continue
                    scans[cls, vid] = _scan_video(shots_dir)

        # 2. val videos (and frames when read from the authors' file)
        listed: dict[tuple[str, str], set[tuple[str, str]]] | None = None
        val: dict[str, list[str]] = {}
        if val_file:
            listed = self._read_val_file(root, Path(str(val_file)).expanduser(), lists, scans, problems)
            for cls, vid in listed:
                val.setdefault(cls, []).append(vid)
        else:
            for ci, cls in enumerate(CLASSES):
                if cls not in lists:
                    continue
                labeled = [v for v in lists[cls]["train"] if any(s.sticks for s in scans[cls, v].values())]
                val[cls] = authors_val_choice(labeled, seed + ci, V1_VAL_VIDEOS)
                if len(labeled) < V1_VAL_VIDEOS:
                    notes.append(f"{cls}: only {len(labeled)} train video(s) have annotations, "
                                 f"all taken for val (the protocol takes {V1_VAL_VIDEOS})")
        val = {c: sorted(v) for c, v in val.items()}

        # 3. frames
        splits: dict[str, list[IndexedFrame]] = {"train": [], "val": [], "test": []}
        empty_sticks: list[str] = []
        available = 0
        work = [(ci, cls, vid, split) for ci, cls in enumerate(CLASSES) if cls in lists
                for split in ("train", "test") for vid in sorted(lists[cls][split])]
        for ci, cls, vid, split in tqdm(work, desc="ytov1: reading videos", disable=not progress, leave=False):
            if split == "train" and vid in val.get(cls, []):
                split = "val"
            for shot, sh in scans[cls, vid].items():
                base = f"{cls}/data/{vid}/shots/{shot}"
                if split == "train":
                    available += len(sh.frames)
                    for pos in spread(len(sh.frames), per_shot):
                        rel = f"{base}/{sh.frames[pos]}"
                        size = _header_size(root, rel, problems)
                        if size:
                            splits["train"].append(IndexedFrame(rel, ci, size, f"{cls}/{vid}", shot, pos))
                    continue
                for orphan in sh.orphans:
                    problems.append(Problem(f"{base}/{orphan}", None,
                                            f"annotation without its frame {orphan[:-len('_sticks.mat')]}"))
                for pos, name in enumerate(sh.frames):
                    if name not in sh.sticks:
                        continue
                    if listed is not None and split == "val" and (shot, name) not in listed.get((cls, vid), ()):
                        continue
                    rel = f"{base}/{name}"
                    frame = self._annotated(root, rel, ci, f"{cls}/{vid}", shot, pos, boxes, loadmat, problems)
                    if frame is None:
                        continue
                    if not frame.boxes:
                        empty_sticks.append(rel)
                        continue
                    splits[split].append(frame)

        if empty_sticks:
            notes.append(f"{len(empty_sticks)} annotation file(s) hold no box, their frames are not evaluated "
                         f"(as in the authors' split), e.g. {empty_sticks[0]}_sticks.mat")
        notes = boxes.fixes + boxes.notes() + notes
        info = {
            "val_videos": val,
            "val_selection": (f"file {val_file}" if val_file
                              else f"authors' draw, seed val_seed + class index (val_seed={seed})"),
            "train_frames_per_shot": per_shot,
            "train_frames_available": available,
            "clipped_boxes": len(boxes.clipped),
            "warnings": notes,
        }
        return DatasetIndex(list(CLASSES), splits, self.kind, info)

    def _annotated(self, root, rel, label, video, shot, pos, boxes: _Boxes, loadmat, problems) -> IndexedFrame | None:
        size = _header_size(root, rel, problems)
        mat_rel = f"{rel}_sticks.mat"
        try:
            raw = _read_coor(root / mat_rel, loadmat)
        except ValueError as e:
            problems.append(Problem(mat_rel, None, str(e)))
            return None
        if size is None:
            return None
        w, h = size
        out = []
        for i, values in enumerate(raw, 1):
            v = np.asarray(values, dtype=np.float64).ravel()
            if v.size == 4 and np.all(np.isfinite(v)):
                if np.any(v < 0):
                    boxes.negatives += int(np.sum(v < 0))
                    v = np.abs(v * (v > 0))
                v = [float(x) for x in v]
                if rel.endswith(V1_SWAP_X) and v[2] < v[0]:
                    v = [v[2], v[1], v[0], v[3]]
                    boxes.fixes.append(f"fixed {rel}: x0 and x1 were swapped (the authors' fix)")
                if rel.endswith(V1_CLIP_X1) and v[2] > w:
                    boxes.fixes.append(f"fixed {rel}: x1 {_fmt(v[2])} past the {w}-px width set to {w - 1} "
                                       f"(the authors' fix)")
                    v[2] = float(w - 1)
                box, err = boxes.finish(v, size, mat_rel)
            else:
                box, err = boxes.clean(v, size, mat_rel)
            if err:
                problems.append(Problem(mat_rel, i, f"box {i} {err}"))
            else:
                out.append(box)
        if len(out) < len(raw):
            return None
        return IndexedFrame(rel, label, (w, h), video, shot, pos, tuple(out))

    def _read_val_file(self, root: Path, path: Path, lists, scans, problems) -> dict:
        if not path.is_absolute():
            path = root / path if (root / path).exists() or not path.exists() else path.resolve()
        if path.is_dir():
            path = path / "image_ids.txt"
        rel = _rel(root, path)
        out: dict[tuple[str, str], set[tuple[str, str]]] = {}
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            problems.append(Problem(rel, None, f"data.val_split_file cannot be read ({e.__class__.__name__}); "
                                               f"give the authors' val/image_ids.txt or leave it unset"))
            return out
        seen: dict[str, int] = {}
        for i, line in enumerate(text.splitlines(), 1):
            item = line.split(",")[0].strip()
            if not item:
                continue
            m = re.fullmatch(r"([^/]+)/data/(\d{4})/shots/([^/]+)/([^/]+\.jpg)", item)
            if not m:
                problems.append(Problem(rel, i, f"{item!r} is not <class>/data/<video>/shots/<shot>/<frame>.jpg"))
                continue
            cls, vid, shot, name = m.groups()
            if item in seen:
                problems.append(Problem(rel, i, f"{item} is listed twice (first on line {seen[item]})"))
                continue
            seen[item] = i
            if cls not in CLASSES:
                problems.append(Problem(rel, i, f"unknown class {cls!r}"))
            elif cls not in lists:
                continue  # the class folder is missing: reported already
            elif vid not in lists[cls]["train"]:
                where = "a test video" if vid in lists[cls]["test"] else "not in sets/train.txt"
                problems.append(Problem(rel, i, f"video {cls}/{vid} is {where}: val videos come from the train videos"))
            elif shot not in scans[cls, vid] or name not in scans[cls, vid][shot].frames:
                problems.append(Problem(rel, i, f"frame {item} is not in the copy"))
            elif name not in scans[cls, vid][shot].sticks:
                problems.append(Problem(rel, i, f"frame {item} has no annotation ({name}_sticks.mat)"))
            else:
                out.setdefault((cls, vid), set()).add((shot, name))
        return out


# ------------------------------------------------------------------------------ YTOv2.2


def _mat_str(x) -> str:
    """A MATLAB char array as loadmat returns it (``array(['abc'])``, possibly in cells)."""
    while isinstance(x, np.ndarray):
        if x.dtype.kind in "US":
            if x.size != 1:
                raise ValueError(f"expected one string, got a char array of shape {x.shape}")
            x = x.ravel()[0]
            break
        if x.dtype == object and x.size == 1:
            x = x.ravel()[0]
            continue
        raise ValueError(f"expected a string, got an array of type {x.dtype} and shape {x.shape}")
    if isinstance(x, bytes):
        x = x.decode()
    if not isinstance(x, str):
        raise ValueError(f"expected a string, got {type(x).__name__}")
    return x


def _box_rows(x) -> np.ndarray:
    while isinstance(x, np.ndarray) and x.dtype == object and x.size == 1:
        x = x.ravel()[0]
    a = np.asarray(x)
    if a.dtype.kind not in "fiu":
        raise ValueError(f"boxes have type {a.dtype}, expected numbers")
    if a.size == 0:
        return np.zeros((0, 4))
    if a.ndim == 2 and a.shape[1] == 4:
        return a.astype(np.float64)
    if a.size == 4:
        return a.astype(np.float64).reshape(1, 4)
    raise ValueError(f"boxes have shape {a.shape}, expected k x 4 (x0, y0, x1, y1)")


def _gt_entries(arr) -> list[tuple[object, object]]:
    """(frame id, boxes) pairs of a ``bb_gt*`` variable in any of the layouts loadmat gives: a
    struct array (fields ``im``, ``boxes``; others taken by position), a 1 x n or n x 1 cell of
    {id, boxes} cells, or an n x 2 cell."""
    if not isinstance(arr, np.ndarray):
        raise ValueError(f"is a {type(arr).__name__}, expected a struct or cell array")
    names = arr.dtype.names
    if names:
        if len(names) < 2:
            raise ValueError(f"struct has fields {names}, expected a frame id and boxes")
        fid = "im" if "im" in names else names[0]
        fbb = "boxes" if "boxes" in names else [n for n in names if n != fid][0]
        return [(e[fid], e[fbb]) for e in arr.ravel()]
    if arr.dtype != object:
        raise ValueError(f"has type {arr.dtype}, expected a struct or cell array of (frame id, boxes)")
    if arr.size == 0:
        return []
    flat = list(arr.ravel())
    if all(isinstance(e, np.ndarray) and e.dtype == object and e.size == 2 for e in flat):
        return [tuple(e.ravel()) for e in flat]
    if arr.ndim == 2 and arr.shape[1] == 2:
        return [(arr[i, 0], arr[i, 1]) for i in range(arr.shape[0])]
    raise ValueError(f"has shape {arr.shape} and does not hold (frame id, boxes) pairs")


@dataclass
class _Gt:
    entry: int                  # 1-based position in the variable
    frame: int
    boxes: np.ndarray           # raw k x 4


def _nested(root: Path, name: str, probe: str) -> str:
    """``name``, or ``name/name`` where the archive was extracted one level too deep."""
    if not (root / name / probe).exists() and (root / name / name / probe).exists():
        return f"{name}/{name}"
    return name


class _YTOv22:
    name = "ytov2.2"
    kind = "video"
    classes = list(CLASSES)
    published = {
        "train": {"shots": 1289, "videos": 76},
        "val": {"frames": 1177, "boxes": 1177, "videos": 30, "shots": 177},
        "test": {"frames": 1781, "boxes": 2667, "videos": 49, "shots": 334},
    }
    source = (
        "YouTube-Objects v2.2 (Kalogeiton et al., TPAMI 2016): 10 classes, 155 videos, 722,040 frames.\n"
        "Download from http://calvin-vision.net/bigstuff/youtube-objectsv2/ the per-class <class>.tar.gz "
        "(frames), Ranges.tar.gz and GroundTruth.tar.gz, and extract them all into one folder (data.root).\n"
        "Expected layout: <root>/<class>/<8-digit frame>.jpg, <root>/Ranges/ranges_<class>.mat (variable "
        "'ranges'), <root>/GroundTruth/<class>/bb_gtTest_<class>.mat and bb_gtTraining_<class>.mat.\n"
        "The copy is read in place: the authors' reformatting script is not needed."
    )
    defaults = {
        "train_frames_per_shot": 0,    # evenly spaced frames kept per train shot at index time; 0 = all
        "box_tolerance": 0.02,         # boxes past the border by at most this fraction are clipped
    }

    def index(self, root: Path, settings: dict, problems: list[Problem], progress: bool = False) -> DatasetIndex:
        root = Path(root)
        per_shot = _setting_int(settings, "train_frames_per_shot", 0)
        boxes = _Boxes(_setting_float(settings, "box_tolerance", 0.02))
        loadmat = _loadmat()
        ranges_dir = _nested(root, "Ranges", f"ranges_{CLASSES[0]}.mat")
        gt_dir = _nested(root, "GroundTruth", CLASSES[0])
        notes: list[str] = []
        if ranges_dir != "Ranges" or gt_dir != "GroundTruth":
            notes.append(f"read {ranges_dir}/ and {gt_dir}/ (an archive extracted one folder too deep)")
        splits: dict[str, list[IndexedFrame]] = {"train": [], "val": [], "test": []}
        val_videos: dict[str, list[str]] = {}
        overlaps: list[str] = []
        no_box: list[str] = []
        unlabeled = 0
        available = 0

        for ci, cls in enumerate(tqdm(CLASSES, desc="ytov2.2: reading classes", disable=not progress, leave=False)):
            try:
                names = {n for n in os.listdir(root / cls) if n.endswith(".jpg")}
            except FileNotFoundError:
                problems.append(Problem(cls, None, f"class folder of frames is missing: extract {cls}.tar.gz "
                                                   f"into the root"))
                continue
            except NotADirectoryError:
                problems.append(Problem(cls, None, "should be a folder of frames"))
                continue
            ranges_rel = f"{ranges_dir}/ranges_{cls}.mat"
            shots = self._read_ranges(root, ranges_rel, loadmat, problems)
            if shots is None:
                continue
            owner: dict[int, int] = {}
            for row, (start, end, _) in enumerate(shots):
                for f in range(start, end + 1):
                    if f in owner:
                        overlaps.append(f"{cls}/{f:08d}.jpg (shots {owner[f]} and {row})")
                    owner[f] = row
            video_order: list[int] = []
            for _, _, vid in shots:
                if vid not in video_order:
                    video_order.append(vid)
            rank = {v: i for i, v in enumerate(video_order)}

            gts: dict[str, list[_Gt]] = {}
            rels = {}
            for kind, key in (("test", "bb_gtTest"), ("training", "bb_gtTraining")):
                rels[kind] = f"{gt_dir}/{cls}/{key}_{cls}.mat"
                gts[kind] = self._read_gt(root, rels[kind], key, cls, loadmat, problems)
            test_frames = {g.frame: g.entry for g in gts["test"]}
            for g in gts["training"]:
                if g.frame in test_frames:
                    problems.append(Problem(rels["training"], g.entry,
                                            f"entry {g.entry}: frame {cls}{g.frame:08d} also has a test box "
                                            f"(entry {test_frames[g.frame]} of {rels['test']})"))
            # keep the entries whose frame is in a shot and on disk
            for kind in gts:
                kept = []
                for g in gts[kind]:
                    if g.frame not in owner:
                        problems.append(Problem(rels[kind], g.entry, f"entry {g.entry}: frame {cls}{g.frame:08d} "
                                                                     f"is in no shot of {ranges_rel}"))
                    elif f"{g.frame:08d}.jpg" not in names:
                        problems.append(Problem(f"{cls}/{g.frame:08d}.jpg", None,
                                                f"frame with a box (entry {g.entry} of {rels[kind]}) is missing"))
                    else:
                        kept.append(g)
                gts[kind] = kept
            first: dict[str, dict[int, _Gt]] = {"test": {}, "training": {}}
            for kind in gts:
                for g in gts[kind]:
                    first[kind].setdefault(shots[owner[g.frame]][2], g)
            both = set(first["test"]) & set(first["training"])
            for vid in sorted(both, key=rank.get):
                g, t = first["training"][vid], first["test"][vid]
                problems.append(Problem(rels["training"], g.entry,
                                        f"video {vid} has training boxes (e.g. entry {g.entry}, frame {g.frame}) and "
                                        f"test boxes (e.g. entry {t.entry} of {rels['test']}, frame {t.frame}): "
                                        f"a video is either train or test"))
            train_v = [v for v in video_order if v in first["training"] and v not in both]
            test_v = [v for v in video_order if v in first["test"] and v not in both]
            unlabeled += len([v for v in video_order if v not in first["training"] and v not in first["test"]])
            val_v = train_v[:V22_VAL_VIDEOS]
            val_videos[cls] = [f"{v:04d}" for v in val_v]
            if len(train_v) <= V22_VAL_VIDEOS:
                notes.append(f"{cls}: only {len(train_v)} train video(s), all taken for val "
                             f"(the protocol takes {V22_VAL_VIDEOS})")

            def annotated(g: _Gt, kind: str) -> IndexedFrame | None:
                row = owner[g.frame]
                start, _, vid = shots[row]
                rel = f"{cls}/{g.frame:08d}.jpg"
                size = _header_size(root, rel, problems)
                if size is None:
                    return None
                out = []
                for i, values in enumerate(g.boxes, 1):
                    box, err = boxes.clean(values, size, f"{rels[kind]} entry {g.entry}")
                    if err:
                        problems.append(Problem(rels[kind], g.entry, f"entry {g.entry} ({cls}{g.frame:08d}): "
                                                                     f"box {i} {err}"))
                    else:
                        out.append(box)
                if len(out) < len(g.boxes):
                    return None
                if not out:
                    no_box.append(f"{rels[kind]} entry {g.entry}")
                    return None
                return IndexedFrame(rel, ci, size, f"{cls}/{vid:04d}", f"{row:06d}", g.frame - start, tuple(out))

            def key(g: _Gt):
                return rank[shots[owner[g.frame]][2]], owner[g.frame], g.frame

            for split, kind, vids in (("val", "training", set(val_v)), ("test", "test", set(test_v))):
                for g in sorted(gts[kind], key=key):
                    if shots[owner[g.frame]][2] in vids:
                        frame = annotated(g, kind)
                        if frame:
                            splits[split].append(frame)

            rest = set(train_v[V22_VAL_VIDEOS:])
            train_rows = sorted((r for r in range(len(shots)) if shots[r][2] in rest), key=lambda r: (rank[shots[r][2]], r))
            for row in train_rows:
                start, end, vid = shots[row]
                frames = []
                for f in range(start, end + 1):
                    if owner[f] != row:
                        continue
                    if f"{f:08d}.jpg" not in names:
                        problems.append(Problem(f"{cls}/{f:08d}.jpg", None,
                                                f"frame of shot {row} (column {row + 1} of {ranges_rel}) is missing"))
                        continue
                    frames.append(f)
                available += len(frames)
                for pos in spread(len(frames), per_shot):
                    f = frames[pos]
                    rel = f"{cls}/{f:08d}.jpg"
                    size = _header_size(root, rel, problems)
                    if size:
                        splits["train"].append(IndexedFrame(rel, ci, size, f"{cls}/{vid:04d}", f"{row:06d}", f - start))

        if overlaps:
            notes.append(f"{len(overlaps)} frame(s) listed in two shots of Ranges (a known glitch of the data; "
                         f"the frame is kept in the later shot): {', '.join(overlaps[:5])}")
        if no_box:
            notes.append(f"{len(no_box)} GT entr(y/ies) with no box skipped, e.g. {no_box[0]}")
        notes = boxes.notes() + notes
        info = {
            "val_videos": val_videos,
            "val_selection": f"first {V22_VAL_VIDEOS} train videos per class in order of first appearance in Ranges",
            "unlabeled_videos": unlabeled,
            "train_frames_per_shot": per_shot,
            "train_frames_available": available,
            "clipped_boxes": len(boxes.clipped),
            "warnings": notes,
        }
        return DatasetIndex(list(CLASSES), splits, self.kind, info)

    @staticmethod
    def _load(root: Path, rel: str, key: str, loadmat, problems: list[Problem]):
        path = root / rel
        if not path.is_file():
            problems.append(Problem(rel, None, "file is missing (extract Ranges.tar.gz and GroundTruth.tar.gz "
                                               "into the root)"))
            return None
        try:
            mat = loadmat(str(path))
        except Exception as e:  # scipy raises a variety of types on damaged files
            problems.append(Problem(rel, None, f"cannot read the .mat file ({type(e).__name__}: {e})"))
            return None
        if key not in mat:
            keys = ", ".join(k for k in mat if not k.startswith("__")) or "none"
            problems.append(Problem(rel, None, f"has no variable {key!r} (variables: {keys})"))
            return None
        return mat[key]

    def _read_ranges(self, root, rel, loadmat, problems) -> list[tuple[int, int, int]] | None:
        arr = self._load(root, rel, "ranges", loadmat, problems)
        if arr is None:
            return None
        arr = np.asarray(arr)
        if arr.dtype.kind not in "fiu" or arr.ndim != 2 or arr.shape[0] != 3:
            problems.append(Problem(rel, None, f"'ranges' has type {arr.dtype} and shape {arr.shape}, expected "
                                               f"3 x n_shots numbers (start frame, end frame, video id)"))
            return None
        shots = []
        ok = True
        for j in range(arr.shape[1]):
            col = arr[:, j].astype(np.float64)
            if not np.all(np.isfinite(col)) or np.any(col != np.round(col)) or np.any(col < 0):
                problems.append(Problem(rel, j + 1, f"shot {j} (column {j + 1}): {col.tolist()} are not "
                                                    f"non-negative whole numbers"))
                ok = False
                continue
            start, end, vid = (int(v) for v in col)
            if end < start:
                problems.append(Problem(rel, j + 1, f"shot {j} (column {j + 1}) ends (frame {end}) before it starts "
                                                    f"(frame {start})"))
                ok = False
                continue
            shots.append((start, end, vid))
        return shots if ok else None

    def _read_gt(self, root, rel, key, cls, loadmat, problems) -> list[_Gt]:
        arr = self._load(root, rel, key, loadmat, problems)
        if arr is None:
            return []
        try:
            entries = _gt_entries(arr)
        except ValueError as e:
            problems.append(Problem(rel, None, f"'{key}' {e}"))
            return []
        out, seen = [], {}
        for i, (fid, bb) in enumerate(entries, 1):
            try:
                name = _mat_str(fid).strip()
            except ValueError as e:
                problems.append(Problem(rel, i, f"entry {i}: frame id: {e}"))
                continue
            m = re.fullmatch(re.escape(cls) + r"(\d{1,8})", name)
            if not m:
                problems.append(Problem(rel, i, f"entry {i}: frame id {name!r} is not '{cls}' followed by the "
                                                f"frame number (e.g. {cls}00001139)"))
                continue
            frame = int(m.group(1))
            if frame in seen:
                problems.append(Problem(rel, i, f"entry {i}: frame {name} already has entry {seen[frame]}"))
                continue
            seen[frame] = i
            try:
                rows = _box_rows(bb)
            except ValueError as e:
                problems.append(Problem(rel, i, f"entry {i} ({name}): {e}"))
                continue
            out.append(_Gt(i, frame, rows))
        return out


YTOV1 = _YTOv1()
YTOV2_2 = _YTOv22()
READERS = {YTOV1.name: YTOV1, YTOV2_2.name: YTOV2_2}
