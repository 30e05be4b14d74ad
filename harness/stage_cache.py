"""Trained stages shared across runs: a stage whose result is fully determined by its config
(e.g. the classifier every CAM method and the F-CAM family start from) is trained once and
its per-epoch checkpoints are reused by every later run with the same key.

``$HARNESS_HOME/stages/<stage>-<key>/`` holds the checkpoints of every epoch and a
``complete.json`` written last (the entry is published with one directory rename, so a
reader never sees half of it). Runs get hard links (copies across file systems) in their
own ``checkpoints/``, so deleting the cache never breaks a run.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from harness import io
from harness.errors import HarnessError
from harness.paths import harness_home

log = logging.getLogger("harness")


def cache_root() -> Path:
    return harness_home() / "stages"


def entry_dir(stage_name: str, key: str) -> Path:
    return cache_root() / f"{stage_name}-{key}"


def stage_key(description: dict) -> str:
    """A short stable hash of everything that determines a stage's trained weights."""
    blob = json.dumps(description, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def fetch(stage_name: str, key: str, stage_index: int, epochs: int, ckpts) -> bool:
    """Link a complete cached stage into the run's checkpoints; False when there is none."""
    src = entry_dir(stage_name, key)
    try:
        meta = io.read_json(src / "complete.json", "stage-cache entry")
    except HarnessError:
        return False
    if not isinstance(meta, dict):
        log.warning("stage cache %s is damaged; training the stage again", src)
        return False
    files = [src / f"epoch{e:03d}.pt" for e in range(1, epochs + 1)]
    if meta.get("epochs") != epochs or not all(f.is_file() for f in files):
        log.warning("stage cache %s is incomplete; training the stage again", src)
        return False
    sizes = meta.get("sizes")
    if isinstance(sizes, dict) and any(sizes.get(f.name) != f.stat().st_size for f in files):
        # a file of the entry was written over in place (the runs that link it share it): the
        # entry is set aside so that this run's training publishes a sound one
        aside = src.with_name(f".{src.name}.damaged-{os.getpid()}")
        log.warning("stage cache %s was changed since it was published; set aside as %s, training the stage "
                    "again", src, aside.name)
        try:
            os.replace(src, aside)
        except OSError:
            pass
        return False
    ckpts.dir.mkdir(parents=True, exist_ok=True)
    for epoch, f in enumerate(files, start=1):
        _link_or_copy(f, ckpts.path(stage_index, stage_name, epoch))
    return True


def publish(stage_name: str, key: str, stage_index: int, epochs: int, ckpts, description: dict) -> Path | None:
    """Copy a freshly trained stage into the cache (atomically); never fails the run."""
    dest = entry_dir(stage_name, key)
    if (dest / "complete.json").is_file():
        return dest
    tmp = None
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        sizes = {}
        for epoch in range(1, epochs + 1):
            target = tmp / f"epoch{epoch:03d}.pt"
            _link_or_copy(ckpts.path(stage_index, stage_name, epoch), target)
            os.chmod(target, 0o444)  # shared by every run that links it: never written in place
            sizes[target.name] = target.stat().st_size
        io.write_json(tmp / "complete.json", {"stage": stage_name, "key": key, "epochs": epochs, "sizes": sizes,
                                              **description})
        os.replace(tmp, dest)
        return dest
    except OSError as exc:  # a full or read-only cache only costs a retraining later
        log.warning("could not publish the %s stage to the cache %s: %s", stage_name, dest, exc)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        return None


def _link_or_copy(src: Path, dst: Path) -> None:
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        with io.atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)
