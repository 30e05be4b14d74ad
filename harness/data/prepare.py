"""``harness data prepare``: check a user's copy of a dataset, index it, and compare its
counts with the published split sizes.

The reader checks the formats (every problem with its file and line); here every image is
also opened: decoded in full where it is evaluated (val, test), its header read elsewhere
(train: hundreds of thousands of frames), and its size compared with the index's.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import torch
from PIL import Image
from tabulate import tabulate
from tqdm import tqdm

from harness.data.index import DatasetIndex, DatasetProblems, IndexedFrame, Problem
from harness.data.loader import make_loader
from harness.data.real import build_index, dataset_root, index_path, save_index, settings_of
from harness.errors import HarnessError

CHECKS = ("eval", "full", "headers", "none")
EVALUATED = ("val", "test")
COUNT_KEYS = ("frames", "annotated", "boxes", "masks", "videos", "shots")


def prepare(reader, data_cfg: dict, check: str = "eval", progress: bool = True, workers: int = 2) -> str:
    """Index and check the copy at ``data.root``; save the index; return the summary."""
    if check not in CHECKS:
        raise HarnessError(f"--check {check!r}: use one of {', '.join(CHECKS)}")
    root = dataset_root(reader, data_cfg)
    settings = settings_of(reader, data_cfg)
    index = build_index(reader, root, settings, progress)
    problems = check_images(root, index, check, progress, workers)
    if problems:
        raise DatasetProblems(reader.name, root, problems)
    path = index_path(reader.name, root, settings)
    save_index(index, path)
    return summary(reader, index) + f"\n\nindex saved to {path}"


def check_images(root: Path, index: DatasetIndex, check: str, progress: bool, workers: int = 2) -> list[Problem]:
    jobs = []
    for split, frames in index.splits.items():
        mode = {"full": "decode", "headers": "header", "none": None}.get(
            check, "decode" if split in EVALUATED else "header")
        if mode:
            jobs += [(f, mode) for f in frames]
    loader = make_loader(_Check(root, jobs), workers, batch_size=32, collate_fn=_as_list)
    problems = []
    for batch in tqdm(loader, desc="checking images", disable=not progress, leave=False):
        problems += [p for p in batch if p is not None]
    return problems


def _as_list(batch: list) -> list:
    return batch


class _Check(torch.utils.data.Dataset):
    def __init__(self, root: Path, jobs: list[tuple[IndexedFrame, str]]):
        self.root, self.jobs = root, jobs

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, i: int) -> Problem | None:
        frame, mode = self.jobs[i]
        return image_problem(self.root, frame, mode)


def image_problem(root: Path, frame: IndexedFrame, mode: str) -> Problem | None:
    """None when the image opens (``mode`` "decode": in full) with the size the index says."""
    path = root / frame.path
    if not path.is_file():
        return Problem(frame.path, None, "image file is missing")
    try:
        if mode == "decode":
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                raise OSError("OpenCV cannot decode it")
            size = (image.shape[1], image.shape[0])
        else:
            with Image.open(path) as im:
                size = im.size
    except (OSError, ValueError, SyntaxError) as e:
        return Problem(frame.path, None, f"unreadable or corrupt image ({e}); re-extract it from the archive")
    if tuple(size) != tuple(frame.size):
        return Problem(frame.path, None, f"image is {size[0]}x{size[1]} but the metadata says "
                                         f"{frame.size[0]}x{frame.size[1]}")
    return None


def summary(reader, index: DatasetIndex) -> str:
    """Counts per split beside the published ones; a mismatch is flagged, not refused (a partial
    copy is usable, but its numbers are not comparable with the papers')."""
    counts = index.counts()
    rows, differ = [], []
    for split in sorted(counts, key=lambda s: ("train", "val", "test").index(s) if s in ("train", "val", "test") else 9):
        published = reader.published.get(split, {})
        row = [split]
        for key in COUNT_KEYS:
            mine, ref = counts[split][key], published.get(key)
            mark = "" if ref is None or ref == mine else f" (published {ref:,})"
            if mark:
                differ.append(f"{split} {key}: {mine:,} here, {ref:,} published")
            row.append(f"{mine:,}{mark}")
        rows.append(row)
    text = (f"{reader.name}: {len(index.classes)} classes, {index.kind} dataset\n"
            + tabulate(rows, headers=["split", *COUNT_KEYS], tablefmt="github"))
    if differ:
        text += ("\n\nDiffers from the published split sizes (a partial or other version of the data? results "
                 "will not be comparable with the papers'):\n" + "\n".join(f"  {d}" for d in differ))
    else:
        text += "\n\nEvery published count matches."
    notes = index.info.get("warnings") or []
    if notes:
        text += "\n\nNotes:\n" + "\n".join(f"  {n}" for n in notes)
    return text
