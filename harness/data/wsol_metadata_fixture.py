"""Small copies of CUB, ILSVRC and OpenImages30k in Choe et al.'s exact metadata format, for the
reader tests and the loader benchmark.

Each ``make_*_tree(root, ...)`` writes images under ``root`` and the metadata under
``root/metadata/{train,val,test}/`` as wsolevaluation ships it (comma-separated, no header, no
newline after the last line, one ``localization.txt`` line per box or instance mask, only an
OpenImages image's first mask line naming its ignore mask), and returns what it wrote: ids,
labels, sizes, boxes / masks per split and the expected counts. Images are JPEGs with a noisy
background and each object drawn as a filled rectangle exactly over its (inclusive) box; OpenImages
instance and ignore masks are 0/255 PNGs at the image's size. Sizes default to small random ones
(a tree in a fraction of a second); pass ``image_size=(W, H)`` and larger counts for a benchmark.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np

from harness.data.wsol_metadata import imagenet_wnids

__all__ = ["make_cub_tree", "make_ilsvrc_tree", "make_openimages_tree", "write_lines"]

_CUB_NAMES = ["Black_footed_Albatross", "Laysan_Albatross", "Sooty_Albatross", "Groove_billed_Ani",
              "Crested_Auklet", "Least_Auklet", "Parakeet_Auklet", "Rhinoceros_Auklet"]
_OI_MIDS = ["01226z", "0138tl", "014j1m", "015p6", "0199g", "01_5g", "01bjv", "01bms0"]


def write_lines(path: Path, lines: list[str]) -> None:
    """A metadata file as the originals are: ``\\n``-separated, no newline after the last line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), newline="")


def _size(rng: np.random.Generator, image_size) -> tuple[int, int]:
    if image_size is not None:
        return int(image_size[0]), int(image_size[1])
    return int(rng.integers(48, 97)), int(rng.integers(40, 81))


def _box(rng: np.random.Generator, w: int, h: int) -> tuple[int, int, int, int]:
    """An inclusive box inside the image, at least 8 px a side."""
    x0 = int(rng.integers(0, w // 2))
    y0 = int(rng.integers(0, h // 2))
    return x0, y0, int(rng.integers(x0 + 7, w)), int(rng.integers(y0 + 7, h))


def _background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    base = rng.integers(40, 200, size=3)
    noise = rng.integers(-25, 26, size=(h, w, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def _write_image(path: Path, rng: np.random.Generator, w: int, h: int, boxes, colour=None) -> None:
    img = _background(rng, w, h)
    for x0, y0, x1, y1 in boxes:
        img[y0:y1 + 1, x0:x1 + 1] = colour if colour is not None else rng.integers(0, 256, size=3)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, 90]):
        raise OSError(f"cannot write {path}")


def _hex(rng: np.random.Generator, n: int) -> str:
    return "".join(f"{b:02x}" for b in rng.integers(0, 256, size=(n + 1) // 2))[:n]


def _write_split(meta: Path, split: str, files: dict[str, list[str]]) -> None:
    for name, lines in files.items():
        write_lines(meta / split / name, lines)


# ------------------------------------------------------------------------------ CUB


def make_cub_tree(root: Path, *, num_classes: int = 3, train_per_class: int = 2, val_per_class: int = 1,
                  test_per_class: int = 2, image_size: tuple[int, int] | None = None, seed: int = 0) -> dict:
    """CUB-200-2011 with wsolevaluation's splits: ``<root>/NNN.Class_name/<image>.jpg``, one box per
    image; train's ``localization.txt`` is written too (the real one has boxes the reader must
    ignore). The first val image's box touches the right and bottom border (x1 = W-1, y1 = H-1)."""
    root = Path(root)
    meta = root / "metadata"
    rng = np.random.default_rng(seed)
    folders = [f"{k + 1:03d}." + (_CUB_NAMES[k] if k < len(_CUB_NAMES) else f"Bird_{k + 1}")
               for k in range(num_classes)]
    out = {"root": root, "metadata": meta, "classes": [f.split(".", 1)[1] for f in folders],
           "ids": {}, "labels": {}, "sizes": {}, "boxes": {}, "train_boxes": {}, "counts": {}}
    per_class = {"train": train_per_class, "val": val_per_class, "test": test_per_class}
    for split in ("train", "val", "test"):
        ids, labels, sizes, locs = [], [], [], []
        for k, folder in enumerate(folders):
            name = folder.split(".", 1)[1]
            for n in range(per_class[split]):
                if split == "val":   # CUBV2: Flickr ids
                    iid = f"{folder}/{3 * 10**10 + 10**6 * n + int(rng.integers(0, 10**6))}.jpg"
                else:
                    iid = f"{folder}/{name.title()}_{n + 1:04d}_{int(rng.integers(1, 800000))}.jpg"
                w, h = _size(rng, image_size)
                box = (2, 1, w - 1, h - 1) if split == "val" and k == 0 and n == 0 else _box(rng, w, h)
                _write_image(root / iid, rng, w, h, [box])
                ids.append(iid)
                labels.append(f"{iid},{k}")
                sizes.append(f"{iid},{w},{h}")
                locs.append(f"{iid},{box[0]},{box[1]},{box[2]},{box[3]}")
                out["labels"][iid] = k
                out["sizes"][iid] = (w, h)
                (out["train_boxes"] if split == "train" else out["boxes"])[iid] = [box]
        _write_split(meta, split, {"image_ids.txt": ids, "class_labels.txt": labels,
                                   "image_sizes.txt": sizes, "localization.txt": locs})
        out["ids"][split] = ids
        out["counts"][split] = {"frames": len(ids), "boxes": 0 if split == "train" else len(ids)}
    return out


# ------------------------------------------------------------------------------ ILSVRC


def make_ilsvrc_tree(root: Path, *, num_classes: int = 3, train_per_class: int = 2, val_per_class: int = 1,
                     test_per_class: int = 2, max_boxes: int = 3, image_size: tuple[int, int] | None = None,
                     train_sizes: bool = False, seed: int = 0) -> dict:
    """ILSVRC with wsolevaluation's splits: train ``train/<wnid>/<wnid>_<n>.JPEG`` (labels only, plus
    ``image_ids_proxy.txt``; ``image_sizes.txt`` only with ``train_sizes``), val = ImageNetV2
    ``val2/<label>/<sha1>.jpeg``, test = ILSVRC2012 val ``val/ILSVRC2012_val_<8 digits>.JPEG`` (flat),
    1 to ``max_boxes`` boxes per val/test image. Labels are the first ``num_classes`` classes."""
    root = Path(root)
    meta = root / "metadata"
    rng = np.random.default_rng(seed)
    wnids = list(imagenet_wnids() or [f"n{k:08d}" for k in range(1000)])[:num_classes]
    out = {"root": root, "metadata": meta, "classes": wnids, "ids": {}, "labels": {}, "sizes": {},
           "boxes": {}, "counts": {}}
    test_no = 0
    per_class = {"train": train_per_class, "val": val_per_class, "test": test_per_class}
    for split in ("train", "val", "test"):
        ids, labels, sizes, locs = [], [], [], []
        for k, wnid in enumerate(wnids):
            for n in range(per_class[split]):
                if split == "train":
                    iid = f"train/{wnid}/{wnid}_{10 * n + int(rng.integers(0, 10))}.JPEG"
                elif split == "val":
                    iid = f"val2/{k}/{hashlib.sha1(f'{seed}-{k}-{n}'.encode()).hexdigest()}.jpeg"
                else:
                    test_no += int(rng.integers(1, 5))
                    iid = f"val/ILSVRC2012_val_{test_no:08d}.JPEG"
                w, h = _size(rng, image_size)
                n_boxes = 0 if split == "train" else int(rng.integers(1, max_boxes + 1))
                boxes = [_box(rng, w, h) for _ in range(n_boxes)]
                _write_image(root / iid, rng, w, h, boxes)
                ids.append(iid)
                labels.append(f"{iid},{k}")
                sizes.append(f"{iid},{w},{h}")
                locs += [f"{iid},{b[0]},{b[1]},{b[2]},{b[3]}" for b in boxes]
                out["labels"][iid] = k
                out["sizes"][iid] = (w, h)
                if boxes:
                    out["boxes"][iid] = boxes
        if split == "test":   # the ILSVRC2012 val files are listed in file-name order
            order = sorted(range(len(ids)), key=lambda i: ids[i])
            ids, labels, sizes = [ids[i] for i in order], [labels[i] for i in order], [sizes[i] for i in order]
            locs.sort(key=lambda line: line.split(",", 1)[0])
        files = {"image_ids.txt": ids, "class_labels.txt": labels}
        if split == "train":
            files["image_ids_proxy.txt"] = ids[::2]
            if train_sizes:
                files["image_sizes.txt"] = sizes
        else:
            files.update({"image_sizes.txt": sizes, "localization.txt": locs})
        _write_split(meta, split, files)
        out["ids"][split] = ids
        out["counts"][split] = {"frames": len(ids), "boxes": sum(len(out["boxes"].get(i, ())) for i in ids)}
    return out


# ------------------------------------------------------------------------------ OpenImages


def make_openimages_tree(root: Path, *, num_classes: int = 3, train_per_class: int = 2, val_per_class: int = 2,
                         test_per_class: int = 2, max_instances: int = 3,
                         image_size: tuple[int, int] | None = None, seed: int = 0) -> dict:
    """OpenImages30k: ``<split>/<class id>/<16 hex>.jpg``; val/test images have 1 to ``max_instances``
    instance masks ``<id>_m<class id>_<8 hex>.png`` (a filled rectangle, 0/255) and one ignore mask
    ``<id>_ignore.png`` (a rectangle around the first instance, 0/255), named on the image's first
    localization line only. ``image_sizes.txt`` is empty, as in the originals."""
    root = Path(root)
    meta = root / "metadata"
    rng = np.random.default_rng(seed)
    mids = [_OI_MIDS[k] if k < len(_OI_MIDS) else f"0c{k:03d}x" for k in range(num_classes)]
    out = {"root": root, "metadata": meta, "classes": mids, "ids": {}, "labels": {}, "sizes": {},
           "masks": {}, "ignore": {}, "instances": {}, "ignore_boxes": {}, "counts": {}}
    per_class = {"train": train_per_class, "val": val_per_class, "test": test_per_class}
    for split in ("train", "val", "test"):
        ids, labels, locs = [], [], []
        for k, mid in enumerate(mids):
            for n in range(per_class[split]):
                stem = f"{split}/{mid}/{_hex(rng, 16)}"
                iid = stem + ".jpg"
                w, h = _size(rng, image_size)
                n_masks = 0 if split == "train" else int(rng.integers(1, max_instances + 1))
                boxes = [_box(rng, w, h) for _ in range(n_masks)]
                _write_image(root / iid, rng, w, h, boxes)
                ids.append(iid)
                labels.append(f"{iid},{k}")
                out["labels"][iid] = k
                out["sizes"][iid] = (w, h)
                if not boxes:
                    continue
                masks = []
                for b in boxes:
                    m = np.zeros((h, w), np.uint8)
                    m[b[1]:b[3] + 1, b[0]:b[2] + 1] = 255
                    rel = f"{stem}_m{mid}_{_hex(rng, 8)}.png"
                    cv2.imwrite(str(root / rel), m)
                    masks.append(rel)
                x0, y0, x1, y1 = boxes[0]
                ign_box = (max(x0 - 3, 0), max(y0 - 3, 0), min(x1 + 3, w - 1), min(y1 + 3, h - 1))
                ign = np.zeros((h, w), np.uint8)
                ign[ign_box[1]:ign_box[3] + 1, ign_box[0]:ign_box[2] + 1] = 255
                ignore = f"{stem}_ignore.png"
                cv2.imwrite(str(root / ignore), ign)
                locs += [f"{iid},{rel},{ignore if i == 0 else ''}" for i, rel in enumerate(masks)]
                out["masks"][iid] = masks
                out["ignore"][iid] = ignore
                out["instances"][iid] = boxes
                out["ignore_boxes"][iid] = ign_box
        files = {"image_ids.txt": ids, "class_labels.txt": labels, "image_sizes.txt": []}
        if split != "train":
            files["localization.txt"] = locs
        _write_split(meta, split, files)
        out["ids"][split] = ids
        out["counts"][split] = {"frames": len(ids), "masks": sum(len(out["masks"].get(i, ())) for i in ids)}
    return out
