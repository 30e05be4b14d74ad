"""Deterministic, cached synthetic datasets: ``synth-yto`` (videos) and ``synth-cub`` (images).

They stand in for YouTube-Objects and CUB when the real data is not at hand, and are built to
carry the cues WSOL methods exploit so that methods can differ on them:

* every class has its own body SHAPE and a small class-specific DISCRIMINATIVE PART (a textured
  cap covering ~22% of the object). The body colour comes from a palette shared by all classes,
  so a classifier learns the part first: a plain CAM tends to fire on the part
  (under-localization) while a colour-consistency method can grow to the whole body;
* in videos the object moves and scales smoothly through a shot and keeps its colour, the
  temporal cue of WSVOL methods;
* cluttered backgrounds (low-frequency colour noise plus distractor blobs in palette colours)
  and frames where the object is cut by the border or absent (weak labels are noisy, as in YTO).

Everything is generated from the parameters alone: each video (or image) has its own random
generator seeded from ``(seed, dataset, split, class, number)``, so the pixels do not depend on
the generation order. The result is cached under ``harness_home()/datasets`` with a manifest of
sha256 sums (written last) that is verified on every load; a bad cache is regenerated.

Cache layout (one directory per parameter set)::

    <split>/frames.npy   uint8 (N, H, W, 3) RGB
    <split>/masks.npy    uint8 (N, H, W), val/test only: 0 background, 1 body, 2 discriminative part
    <split>/index.json   {"frames": [Frame.to_json()...], "visible_px": [visible object pixels...]}
    manifest.json        {"name", "generator_version", "params", "files": {relpath: sha256}}
"""
from __future__ import annotations

import colorsys
import difflib
import hashlib
import json
import math
import time
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
from tabulate import tabulate
from tqdm import tqdm

from harness.data.base import Frame, Split, WsolDataset
from harness.errors import HarnessError
from harness.io import atomic_path, write_json
from harness.paths import harness_home

# Bump whenever a change alters the generated pixels or index: it is part of the cache key.
GENERATOR_VERSION = 1

YTO_CLASSES = ("aeroplane", "bird", "boat", "car", "cat", "cow", "dog", "horse", "motorbike",
               "train")
SHAPES = ("ellipse", "rectangle", "triangle", "star", "cross", "ring", "diamond", "hexagon",
          "crescent", "arrow")
TEXTURES = ("stripes", "checker", "dots")
MAX_CUB_CLASSES = len(SHAPES) * len(TEXTURES)

MIN_VISIBLE_PX = 20  # an object smaller than this is not annotated (not in val/test)
PART_FRACTION = 0.22  # share of the object area the discriminative part covers
MASK_BODY, MASK_PART = 1, 2  # values in masks.npy

# Body and distractor colours: shared by all classes so that colour alone gives no class.
BODY_PALETTE = np.array(
    [[200, 60, 50], [230, 150, 40], [220, 210, 70], [70, 170, 80],
     [50, 160, 170], [60, 90, 200], [140, 70, 180], [200, 120, 160]], dtype=np.float32)

SYNTH_YTO_DEFAULTS: dict = {
    "seed": 0,
    "image_size": 64,
    "train_videos_per_class": 6,
    "val_videos_per_class": 2,
    "test_videos_per_class": 2,
    "shots_per_video": 3,
    "frames_per_shot": 8,
    "annotate_every": 2,  # val/test keep every k-th frame of a shot (YTO annotates sparsely)
    "exit_prob": 0.15,  # chance a shot ends with the object leaving the frame
    "dropout_prob": 0.02,  # chance the object is missing from a single frame
    "distractors": 3,  # distractor blobs per shot (or image)
}

SYNTH_CUB_DEFAULTS: dict = {
    "seed": 0,
    "image_size": 64,
    "num_classes": 20,
    "train_images_per_class": 30,
    "val_images_per_class": 3,  # small fully-annotated split (Choe et al.'s train-fullsup)
    "test_images_per_class": 10,
    "distractors": 3,
}

# Per parameter: (type, minimum, maximum). Bounds keep the generator in its working range.
_RULES: dict[str, tuple[type, float, float]] = {
    "seed": (int, 0, 2**63 - 1),
    "image_size": (int, 24, 512),
    "train_videos_per_class": (int, 1, 10_000),
    "val_videos_per_class": (int, 1, 10_000),
    "test_videos_per_class": (int, 1, 10_000),
    "shots_per_video": (int, 1, 1_000),
    "frames_per_shot": (int, 1, 1_000),
    "annotate_every": (int, 1, 1_000),
    "exit_prob": (float, 0.0, 1.0),
    "dropout_prob": (float, 0.0, 1.0),
    "distractors": (int, 0, 50),
    "num_classes": (int, 2, MAX_CUB_CLASSES),
    "train_images_per_class": (int, 1, 100_000),
    "val_images_per_class": (int, 1, 100_000),
    "test_images_per_class": (int, 1, 100_000),
}

_KINDS = {"yto": ("synth-yto", SYNTH_YTO_DEFAULTS), "cub": ("synth-cub", SYNTH_CUB_DEFAULTS)}
_SPLITS = ("train", "val", "test")
_SHIFT = 4  # cv2 fixed-point bits: polygons are placed with 1/16 px precision
_ONE = 1 << _SHIFT


class SynthCacheWarning(UserWarning):
    """The cached copy of a synthetic dataset was bad and is being regenerated."""


# --------------------------------------------------------------------------- parameters


def _check_params(kind: str, params: dict | None) -> tuple[str, dict]:
    """Merge ``params`` over the defaults of ``kind``; reject unknown keys and bad values."""
    if kind not in _KINDS:
        raise HarnessError(f"unknown synthetic dataset kind {kind!r}; use one of: yto, cub")
    name, defaults = _KINDS[kind]
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise HarnessError(f"{name} parameters must be a mapping of name -> value, "
                           f"got {type(params).__name__}")
    merged = dict(defaults)
    for key, value in params.items():
        if key not in defaults:
            close = difflib.get_close_matches(str(key), defaults, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise HarnessError(
                f"unknown {name} parameter {key!r} (config key data.{key}){hint}; "
                f"valid parameters: {', '.join(defaults)}")
        merged[key] = _check_value(name, key, value)
    return name, merged


def _check_value(name: str, key: str, value):
    typ, lo, hi = _RULES[key]
    is_int = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    is_num = is_int or isinstance(value, (float, np.floating))
    if typ is int and not is_int:
        raise HarnessError(f"{name} parameter {key} (data.{key}) must be an integer, "
                           f"got {value!r} ({type(value).__name__})")
    if typ is float and not is_num:
        raise HarnessError(f"{name} parameter {key} (data.{key}) must be a number, "
                           f"got {value!r} ({type(value).__name__})")
    value = typ(value)  # normalise (numpy scalars, 1 vs 1.0) so the cache key is stable
    if not (lo <= value <= hi) or (typ is float and not math.isfinite(value)):
        raise HarnessError(f"{name} parameter {key} (data.{key}) must be in [{lo}, {hi}], "
                           f"got {value!r}")
    return value


# --------------------------------------------------------------------------- class styles


@dataclass(frozen=True)
class _Style:
    """What makes a class: body shape plus the look and place of its discriminative part."""

    shape: str
    texture: str
    part_dir: tuple[float, float]  # unit vector (shape frame) pointing at the part
    part_threshold: float  # part = body pixels whose projection on part_dir is above this
    tex_angle: float
    tex_freq: float  # texture cycles per unit of object radius
    colours: tuple[tuple[float, float, float], tuple[float, float, float]]


def _style(k: int) -> _Style:
    """Style of class ``k`` (0..29). Classes k, k+10, k+20 share a shape and part place but not
    the part's texture or colour: in synth-cub they differ only by the part (fine-grained)."""
    shape_id = k % len(SHAPES)
    shape = SHAPES[shape_id]
    ang = 2.399963 * shape_id  # golden angle: well spread part directions
    part_dir = (math.cos(ang), math.sin(ang))
    hue = (0.13 + 0.618034 * k) % 1.0  # golden-ratio hues: well spread part colours
    bright = tuple(255.0 * c for c in colorsys.hsv_to_rgb(hue, 0.85, 0.95))
    dark = tuple(255.0 * c for c in colorsys.hsv_to_rgb(hue, 0.6, 0.22))
    return _Style(
        shape=shape,
        texture=TEXTURES[(shape_id + k // len(SHAPES)) % len(TEXTURES)],
        part_dir=part_dir,
        part_threshold=_part_threshold(shape, part_dir),
        tex_angle=math.radians((37 * k) % 180),
        tex_freq=2.5 + 0.25 * (k % 3),
        colours=(bright, dark),
    )


def _class_names(kind: str, params: dict) -> list[str]:
    if kind == "yto":
        return list(YTO_CLASSES)
    return [f"{_style(k).shape}-{_style(k).texture}" for k in range(params["num_classes"])]


@lru_cache(maxsize=None)
def _unit_shape(shape: str) -> tuple[tuple[np.ndarray, bool], ...]:
    """A shape as polygon fill operations (polygon, fill?) in a frame where it fits the unit
    disc; a ``False`` fill cuts a hole (ring, crescent)."""

    def circle(r=1.0, ry=None, cx=0.0, n=48):
        t = np.linspace(0, 2 * np.pi, n, endpoint=False)
        return np.stack([cx + r * np.cos(t), (ry or r) * np.sin(t)], 1)

    def regular(n, r=1.0, start=np.pi / 2):
        t = start + np.arange(n) * 2 * np.pi / n
        return np.stack([r * np.cos(t), r * np.sin(t)], 1)

    if shape == "ellipse":
        ops = [(circle(1.0, 0.6), True)]
    elif shape == "rectangle":
        ops = [(np.array([[-0.85, -0.5], [0.85, -0.5], [0.85, 0.5], [-0.85, 0.5]]), True)]
    elif shape == "triangle":
        ops = [(regular(3), True)]
    elif shape == "star":
        pts = np.empty((10, 2))
        pts[0::2], pts[1::2] = regular(5), regular(5, 0.45, np.pi / 2 + np.pi / 5)
        ops = [(pts, True)]
    elif shape == "cross":
        a, w = 0.95, 0.3
        ops = [(np.array([[-w, -a], [w, -a], [w, -w], [a, -w], [a, w], [w, w], [w, a],
                          [-w, a], [-w, w], [-a, w], [-a, -w], [-w, -w]]), True)]
    elif shape == "ring":
        ops = [(circle(1.0), True), (circle(0.55), False)]
    elif shape == "diamond":
        ops = [(np.array([[0, -1], [0.6, 0], [0, 1], [-0.6, 0]]), True)]
    elif shape == "hexagon":
        ops = [(regular(6, 1.0, 0.0), True)]
    elif shape == "crescent":
        ops = [(circle(1.0), True), (circle(0.85, cx=0.45), False)]
    elif shape == "arrow":
        ops = [(np.array([[-1, -0.22], [0.2, -0.22], [0.2, -0.55], [1, 0], [0.2, 0.55],
                          [0.2, 0.22], [-1, 0.22]]), True)]
    else:  # pragma: no cover - SHAPES is closed
        raise ValueError(shape)
    return tuple((np.asarray(p, dtype=np.float64), fill) for p, fill in ops)


@lru_cache(maxsize=None)
def _part_threshold(shape: str, part_dir: tuple[float, float]) -> float:
    """Projection threshold that makes the part cover PART_FRACTION of the shape's area,
    measured once on a fine raster of the unit shape."""
    n = 256
    pose = _Pose(cx=(n - 1) / 2, cy=(n - 1) / 2, r=n / 2.2, theta=0.0, flip=1.0)
    mask = _rasterize(shape, pose, n)
    ys, xs = np.nonzero(mask)
    u, v = _to_local(xs, ys, pose)
    return float(np.quantile(u * part_dir[0] + v * part_dir[1], 1.0 - PART_FRACTION))


# --------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class _Pose:
    """Where an object is drawn: centre (pixel-centre coordinates), radius px, rotation, flip."""

    cx: float
    cy: float
    r: float
    theta: float
    flip: float  # +1 or -1: mirror the shape frame's x axis (object facing left or right)


def _to_image(pts: np.ndarray, pose: _Pose) -> np.ndarray:
    """Shape-frame points -> fixed-point image points for cv2 (shift=_SHIFT)."""
    c, s = math.cos(pose.theta), math.sin(pose.theta)
    x, y = pts[:, 0] * pose.flip, pts[:, 1]
    ix = pose.cx + pose.r * (c * x - s * y)
    iy = pose.cy + pose.r * (s * x + c * y)
    return np.round(np.stack([ix, iy], 1) * _ONE).astype(np.int32)


def _to_local(xs: np.ndarray, ys: np.ndarray, pose: _Pose) -> tuple[np.ndarray, np.ndarray]:
    """Image pixel coordinates -> shape frame (inverse of _to_image)."""
    c, s = math.cos(pose.theta), math.sin(pose.theta)
    dx, dy = (xs - pose.cx) / pose.r, (ys - pose.cy) / pose.r
    return (c * dx + s * dy) * pose.flip, -s * dx + c * dy


def _rasterize(shape: str, pose: _Pose, size: int) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    for poly, fill in _unit_shape(shape):
        cv2.fillPoly(mask, [_to_image(poly, pose)], 1 if fill else 0, cv2.LINE_8, _SHIFT)
    return mask


def _texture_on(style: _Style, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Where the part shows its bright colour; the pattern lives in the shape frame so it moves,
    scales and turns with the object."""
    c, s = math.cos(style.tex_angle), math.sin(style.tex_angle)
    a, b = (c * u + s * v) * style.tex_freq, (-s * u + c * v) * style.tex_freq
    if style.texture == "stripes":
        return (a % 1.0) < 0.5
    if style.texture == "checker":
        return (np.floor(a) + np.floor(b)) % 2 == 0
    return (a % 1.0 - 0.5) ** 2 + (b % 1.0 - 0.5) ** 2 > 0.09  # dark dots on a bright field


# --------------------------------------------------------------------------- rendering


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth clutter: a coarse random colour grid upsampled, plus a linear gradient."""
    g = int(rng.integers(3, 6))
    coarse = rng.uniform(40, 210, (g, g, 3)).astype(np.float32)
    # Somewhat less saturated than the palette, so objects are findable but not trivially.
    coarse = 0.6 * coarse + 0.4 * coarse.mean(axis=2, keepdims=True)
    bg = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    ramp = np.linspace(-1, 1, size, dtype=np.float32)
    gx, gy = rng.uniform(-25, 25, 2)
    bg += gx * ramp[None, :, None] + gy * ramp[:, None, None]
    return np.clip(bg, 0, 255)


@dataclass(frozen=True)
class _Distractor:
    """A palette-coloured blob without any class part; drifts slowly through a shot."""

    poly: np.ndarray  # irregular polygon around the origin, in pixels
    start: np.ndarray
    drift: np.ndarray
    colour: tuple[float, float, float]

    def points(self, t: float) -> np.ndarray:
        return np.round((self.poly + self.start + t * self.drift) * _ONE).astype(np.int32)


def _distractors(rng: np.random.Generator, size: int, n: int) -> list[_Distractor]:
    out = []
    for _ in range(n):
        k = int(rng.integers(5, 10))
        ang = np.sort(rng.uniform(0, 2 * np.pi, k))
        rad = rng.uniform(0.07, 0.15) * size * rng.uniform(0.55, 1.0, k)
        poly = np.stack([rad * np.cos(ang), rad * np.sin(ang)], 1)
        out.append(_Distractor(
            poly=poly,
            start=rng.uniform(0, size - 1, 2),
            drift=rng.uniform(-0.12, 0.12, 2) * size,
            colour=tuple(float(c) for c in _palette_colour(rng)),
        ))
    return out


def _palette_colour(rng: np.random.Generator) -> np.ndarray:
    base = BODY_PALETTE[int(rng.integers(len(BODY_PALETTE)))]
    return np.clip(base + rng.uniform(-15, 15, 3), 0, 255)


def _render(rng: np.random.Generator, bg: np.ndarray, distractors: list[_Distractor], t: float,
            style: _Style, pose: _Pose | None, body_colour: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray]:
    """One frame: background, distractors, then the object on top. Returns the RGB image and the
    label mask of the visible object (0 background, 1 body, 2 part)."""
    size = bg.shape[0]
    img = bg.copy()
    for d in distractors:
        cv2.fillPoly(img, [d.points(t)], d.colour, cv2.LINE_8, _SHIFT)
    label = np.zeros((size, size), np.uint8)
    if pose is not None:
        ys, xs = np.nonzero(_rasterize(style.shape, pose, size))
        u, v = _to_local(xs, ys, pose)
        part = u * style.part_dir[0] + v * style.part_dir[1] >= style.part_threshold
        bright, dark = (np.array(c, np.float32) for c in style.colours)
        tex = np.where(_texture_on(style, u, v)[:, None], bright, dark)
        img[ys, xs] = np.where(part[:, None], tex, body_colour)
        label[ys, xs] = np.where(part, MASK_PART, MASK_BODY)
    # Lighting flicker and sensor noise: consistent colour, but never exactly constant.
    img *= rng.normal(1.0, 0.03)
    img += rng.normal(0.0, 3.0, img.shape).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), label


# --------------------------------------------------------------------------- videos and images


def _smoothstep(t: float) -> float:
    return t * t * (3 - 2 * t)


def _shot_poses(rng: np.random.Generator, size: int, n: int, exit_prob: float,
                dropout_prob: float) -> list[_Pose | None]:
    """Poses of the object through one shot: a smooth path and scale change; some shots end
    with the object leaving the frame, and single frames may drop out (``None``)."""
    r0 = rng.uniform(0.15, 0.25) * size
    scale_end = rng.uniform(0.7, 1.3)  # smooth +-30% scale change over the shot
    theta0, spin = rng.uniform(-0.5, 0.5), rng.uniform(-0.3, 0.3)
    flip = 1.0 if rng.random() < 0.5 else -1.0
    # Centres near the border give border-cut objects without special casing.
    p0 = rng.uniform(0.2, 0.8, 2) * (size - 1)
    exits = rng.random() < exit_prob
    ang = rng.uniform(0, 2 * np.pi)
    heading = np.array([math.cos(ang), math.sin(ang)])
    if exits:
        # Head out of the frame and stop where the object is fully outside (it fits in a disc
        # of radius r, so 1.4 r beyond the border is out of sight).
        far = p0 + heading * 2.0 * size
        p1 = p0 + (far - p0) * _exit_fraction(p0, far, size, 1.4 * r0 * max(1.0, scale_end))
    else:
        p1 = p0 + heading * rng.uniform(0.05, 0.35) * size
    wobble = rng.uniform(-0.03, 0.03) * size
    normal = np.array([-(p1 - p0)[1], (p1 - p0)[0]]) / (np.linalg.norm(p1 - p0) + 1e-9)
    poses: list[_Pose | None] = []
    for i in range(n):
        t = i / max(n - 1, 1)
        # Exits accelerate (the object lingers first) and are out of sight by t = 0.9.
        w = min(1.0, t / 0.9) ** 2 if exits else _smoothstep(t)
        c = p0 + w * (p1 - p0) + normal * wobble * math.sin(math.pi * t)
        pose = _Pose(cx=float(c[0]), cy=float(c[1]), r=float(r0 * (1 + (scale_end - 1) * t)),
                     theta=float(theta0 + spin * t), flip=flip)
        poses.append(None if rng.random() < dropout_prob else pose)
    return poses


def _exit_fraction(p0: np.ndarray, p1: np.ndarray, size: int, margin: float) -> float:
    """Fraction of the segment p0->p1 after which a point is ``margin`` beyond the image."""
    fractions = []
    d = p1 - p0
    for axis in range(2):
        if d[axis] > 0:
            fractions.append((size - 1 + margin - p0[axis]) / d[axis])
        elif d[axis] < 0:
            fractions.append((-margin - p0[axis]) / d[axis])
    return min(1.0, min(fractions))


def _video(rng: np.random.Generator, style: _Style, p: dict):
    """Yield (shot number, frame number, image, label mask) for one video."""
    size = p["image_size"]
    for shot in range(p["shots_per_video"]):
        bg = _background(rng, size)
        distractors = _distractors(rng, size, p["distractors"])
        body_colour = _palette_colour(rng)  # one colour through the shot
        n = p["frames_per_shot"]
        poses = _shot_poses(rng, size, n, p["exit_prob"], p["dropout_prob"])
        for i, pose in enumerate(poses):
            img, label = _render(rng, bg, distractors, i / max(n - 1, 1), style, pose,
                                 body_colour)
            yield shot, i, img, label


def _image(rng: np.random.Generator, style: _Style, p: dict):
    """One still image: one object, mostly inside, sometimes touching the border."""
    size = p["image_size"]
    bg = _background(rng, size)
    distractors = _distractors(rng, size, p["distractors"])
    c = rng.uniform(0.3, 0.7, 2) * (size - 1)
    pose = _Pose(cx=float(c[0]), cy=float(c[1]), r=float(rng.uniform(0.24, 0.36) * size),
                 theta=float(rng.uniform(-0.5, 0.5)), flip=1.0 if rng.random() < 0.5 else -1.0)
    return _render(rng, bg, distractors, 0.0, style, pose, _palette_colour(rng))


def _tight_box(label: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(label)
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


class _SplitData:
    """A split being generated: frames, pixels, masks (val/test) and visible pixel counts."""

    def __init__(self, name: str):
        self.name = name
        self.frames: list[Frame] = []
        self.images: list[np.ndarray] = []
        self.masks: list[np.ndarray] = []
        self.visible_px: list[int] = []

    def add(self, frame: Frame, img: np.ndarray, label: np.ndarray, annotated: bool) -> None:
        if annotated:
            frame = Frame(frame.id, frame.label, frame.video, frame.shot, frame.index,
                          (_tight_box(label),))
            self.masks.append(label)
        self.frames.append(frame)
        self.images.append(img)
        self.visible_px.append(int(np.count_nonzero(label)))


def _rng(kind: str, p: dict, split: str, label: int, number: int) -> np.random.Generator:
    """Independent stream per video/image so pixels do not depend on generation order."""
    ss = np.random.SeedSequence([p["seed"], ["yto", "cub"].index(kind), _SPLITS.index(split),
                                 label, number])
    return np.random.default_rng(ss)


def _counts(kind: str, p: dict) -> dict[str, int]:
    unit = "videos" if kind == "yto" else "images"
    return {s: p[f"{s}_{unit}_per_class"] for s in _SPLITS}


def _generate(kind: str, p: dict, progress: bool) -> dict[str, _SplitData]:
    classes = _class_names(kind, p)
    counts = _counts(kind, p)
    splits = {s: _SplitData(s) for s in _SPLITS}
    total = len(classes) * sum(counts.values())
    with tqdm(total=total, disable=not progress, desc=f"generating synth-{kind}",
              unit="video" if kind == "yto" else "image", leave=False) as bar:
        for label, cls in enumerate(classes):
            style = _style(label)
            first = 0  # numbers run on across splits so ids are unique per class
            for split in _SPLITS:
                for j in range(counts[split]):
                    rng = _rng(kind, p, split, label, j)
                    if kind == "yto":
                        video = f"{cls}/video-{first + j:04d}"
                        _add_video(splits[split], rng, style, p, label, video)
                    else:
                        image = f"{cls}/image-{first + j:04d}"
                        _add_image(splits[split], rng, style, p, label, image)
                    bar.update(1)
                first += counts[split]
    return splits


def _add_video(out: _SplitData, rng, style: _Style, p: dict, label: int, video: str) -> None:
    weak = out.name == "train"
    for shot, i, img, mask in _video(rng, style, p):
        shot_id = f"{video}/shot-{shot:03d}"
        frame = Frame(f"{shot_id}/frame-{i:04d}", label, video, shot_id, i)
        if weak:  # train: every frame, video label, no boxes (even where the object is absent)
            out.add(frame, img, mask, annotated=False)
        elif i % p["annotate_every"] == 0 and np.count_nonzero(mask) >= MIN_VISIBLE_PX:
            out.add(frame, img, mask, annotated=True)


def _add_image(out: _SplitData, rng, style: _Style, p: dict, label: int, image_id: str) -> None:
    img, mask = _image(rng, style, p)
    out.add(Frame(image_id, label, image_id, image_id, 0), img, mask,
            annotated=out.name != "train")


# --------------------------------------------------------------------------- cache


def _cache_dir(home: Path, name: str, p: dict) -> Path:
    key = json.dumps({"name": name, "version": GENERATOR_VERSION, "params": p}, sort_keys=True)
    return home / "datasets" / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def _expected_files() -> list[str]:
    files = []
    for s in _SPLITS:
        files += [f"{s}/frames.npy", f"{s}/index.json"]
        if s != "train":
            files.append(f"{s}/masks.npy")
    return files


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: np.save adds no suffix
        np.save(f, arr)


def _write_cache(root: Path, name: str, p: dict, splits: dict[str, _SplitData]) -> None:
    manifest = root / "manifest.json"
    manifest.unlink(missing_ok=True)  # the old manifest must not vouch for half-new files
    _remove_stale_temporaries(root)
    size = p["image_size"]
    for s, data in splits.items():
        _save_npy(root / s / "frames.npy",
                  np.stack(data.images) if data.images else np.zeros((0, size, size, 3), np.uint8))
        if s != "train":
            _save_npy(root / s / "masks.npy",
                      np.stack(data.masks) if data.masks else np.zeros((0, size, size), np.uint8))
        write_json(root / s / "index.json", {"frames": [f.to_json() for f in data.frames],
                                             "visible_px": data.visible_px})
    files = {rel: _sha256(root / rel) for rel in _expected_files()}
    write_json(manifest, {"name": name, "generator_version": GENERATOR_VERSION, "params": p,
                          "files": files})


def _remove_stale_temporaries(root: Path, age_s: float = 3600.0) -> None:
    """Delete temporaries a killed writer left behind. Only old ones: a young one may belong to
    another process writing the same cache right now."""
    now = time.time()
    for stale in root.glob("**/.*.tmp"):
        try:
            if now - stale.stat().st_mtime > age_s:
                stale.unlink()
        except OSError:
            pass  # gone already, or not ours to delete: harmless litter


def _verify(root: Path, name: str, p: dict) -> str | None:
    """None if the cache is complete and intact, else what is wrong with it."""
    path = root / "manifest.json"
    try:
        if not path.is_file():
            return f"{path} is missing"
        try:
            manifest = json.loads(path.read_text())
            files = manifest["files"]
            if (manifest["name"], manifest["generator_version"], manifest["params"]) != \
                    (name, GENERATOR_VERSION, p):
                return f"{path} describes other data"
        except (ValueError, KeyError, TypeError) as e:
            return f"{path} is unreadable ({e})"
        for rel in _expected_files():
            f = root / rel
            if not f.is_file():
                return f"{f} is missing"
            if rel not in files or _sha256(f) != files[rel]:
                return f"{f} does not match its sha256 in the manifest"
    except OSError as e:
        return f"a file under {root} cannot be read ({e})"
    return None


def _read_split(root: Path, s: str) -> tuple[Split, int]:
    index = json.loads((root / s / "index.json").read_text())
    frames = [Frame(d["id"], int(d["label"]), d["video"], d["shot"], int(d["index"]),
                    tuple(tuple(int(v) for v in b) for b in d["boxes"])) for d in index["frames"]]
    images = np.load(root / s / "frames.npy", mmap_mode="r")
    if len(images) != len(frames) or len(index["visible_px"]) != len(frames):
        raise ValueError(f"{root / s} holds {len(images)} images for {len(frames)} frames")
    read_mask = None
    if s != "train":
        masks = np.load(root / s / "masks.npy", mmap_mode="r")
        if len(masks) != len(frames):
            raise ValueError(f"{root / s} holds {len(masks)} masks for {len(frames)} frames")
        read_mask = lambda i, m=masks: np.asarray(m[i]) > 0  # noqa: E731
    read = lambda i, a=images: np.array(a[i])  # noqa: E731  (a copy: callers may edit it)
    absent = sum(1 for v in index["visible_px"] if v == 0)
    return Split(s, frames, read, read_mask), absent


def _load_cached(root: Path, kind: str, name: str, p: dict) -> WsolDataset:
    splits, absent = {}, {}
    for s in _SPLITS:
        splits[s], absent[s] = _read_split(root, s)
    info = {
        "generator": name,
        "generator_version": GENERATOR_VERSION,
        "params": dict(p),
        "root": str(root),
        "absent_frames": absent,
        "masks": "masks.npy per val/test split: 0 background, 1 body, 2 discriminative part",
    }
    return WsolDataset(name, "video" if kind == "yto" else "image", _class_names(kind, p),
                       splits, info)


def load_synth(kind: str, params: dict | None = None, home: Path | None = None,
               progress: bool = True) -> WsolDataset:
    """The synthetic dataset ``kind`` ("yto" or "cub") for ``params`` (overriding the defaults),
    from the cache under ``home`` (default ``harness_home()``), generated on first use."""
    name, p = _check_params(kind, params)
    root = _cache_dir(Path(home) if home is not None else harness_home(), name, p)
    if root.exists():
        problem = _verify(root, name, p)
        if problem is None:
            try:
                return _load_cached(root, kind, name, p)
            except (ValueError, KeyError, TypeError, OSError) as e:
                problem = f"{root} could not be read ({e})"
        warnings.warn(f"{name} cache is bad: {problem}; regenerating it in {root}",
                      SynthCacheWarning, stacklevel=2)
    splits = _generate(kind, p, progress)
    try:
        root.mkdir(parents=True, exist_ok=True)
        _write_cache(root, name, p, splits)
    except OSError as e:
        raise HarnessError(
            f"cannot write the {name} cache to {root} ({e}); make that directory writable "
            f"or set HARNESS_HOME to a writable directory") from e
    return _load_cached(root, kind, name, p)


def summary(ds: WsolDataset) -> str:
    """A table per split: videos, shots, frames, annotated frames, boxes; then the classes."""
    rows = []
    for s, split in ds.splits.items():
        frames = split.frames
        rows.append([s, len({f.video for f in frames}), len({f.shot for f in frames}),
                     len(frames), sum(f.has_boxes for f in frames),
                     sum(len(f.boxes) for f in frames)])
    table = tabulate(rows, headers=["split", "videos", "shots", "frames", "annotated", "boxes"])
    return (f"{ds.name} ({ds.kind}, {ds.num_classes} classes)\n{table}\n"
            f"classes: {', '.join(ds.classes)}")
