"""Trained stages shared across runs: a stage whose result is fully determined by its config
(e.g. the classifier every CAM method and the F-CAM family start from) is trained once and
its per-epoch checkpoints are reused by every later run with the same key.

``$HARNESS_HOME/stages/<stage>-<key>/`` holds the checkpoints of every epoch and a
``complete.json`` written last (the entry is published with one directory rename, so a
reader never sees half of it). Runs get hard links (copies across file systems) in their
own ``checkpoints/``, so deleting the cache never breaks a run.

Runs that need the same entry at once take turns (:func:`claim`): the first trains and
publishes it, the others wait and then reuse it. The lock files live apart, under
``$HARNESS_HOME/locks/stages/``, so that ``stages/`` holds entries only and deleting it to
clean the cache never deletes a lock someone waits on.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

from harness import io, locks
from harness.errors import HarnessError
from harness.paths import harness_home

log = logging.getLogger("harness")


def cache_root() -> Path:
    return harness_home() / "stages"


def entry_dir(stage_name: str, key: str) -> Path:
    return cache_root() / f"{stage_name}-{key}"


def lock_path(stage_name: str, key: str) -> Path:
    return harness_home() / "locks" / "stages" / f"{stage_name}-{key}.lock"


@contextmanager
def claim(stage_name: str, key: str | None) -> Iterator[None]:
    """Hold the lock of one cache entry while checking for it and, if absent, training and
    publishing it: a run that reaches the same entry meanwhile waits here, then fetches what
    this one published instead of training it again. ``key`` None (a stage that is not
    shared) holds nothing. A lock that cannot be taken (read-only cache, a file system without
    locks) is a warning: the cache is an optimisation, at worst two runs train the stage."""
    with ExitStack() as held:
        if key is not None:
            try:
                held.enter_context(locks.file_lock(
                    lock_path(stage_name, key), f"another run that is training the same {stage_name} stage"))
            except locks.LockError as exc:
                log.warning("%s; training the %s stage without it (another run may train it at the same time)",
                            exc, stage_name)
        yield


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
    """Copy a freshly trained stage into the cache (atomically); never fails the run. An entry
    already complete is kept (the first publisher wins: same key, same training)."""
    dest = entry_dir(stage_name, key)
    if (dest / "complete.json").is_file():
        return dest
    try:
        # Under the entry's lock (already held when the caller claimed the entry), so that two
        # publishers never both find the entry missing. Not waiting: whoever holds the lock
        # is training or publishing this very entry, possibly for hours.
        with locks.file_lock(lock_path(stage_name, key), f"another run publishing the {stage_name} stage",
                             wait=False):
            return _publish(stage_name, key, stage_index, epochs, ckpts, description, dest)
    except locks.Busy:
        log.info("another run is training or publishing the same %s stage: it publishes it to %s", stage_name,
                 dest)
        return None
    except OSError as exc:  # a full or read-only cache only costs a retraining later
        log.warning("could not publish the %s stage to the cache %s: %s", stage_name, dest, exc)
        return None


def _publish(stage_name: str, key: str, stage_index: int, epochs: int, ckpts, description: dict,
             dest: Path) -> Path:
    if (dest / "complete.json").is_file():
        return dest
    if dest.exists():
        # No complete.json: not an entry published here (those appear whole), e.g. a copy cut
        # short by hand. Set aside, as fetch() does, since a rename cannot replace a folder.
        os.replace(dest, dest.with_name(f".{dest.name}.damaged-{os.getpid()}"))
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
    except OSError:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if (dest / "complete.json").is_file():
            return dest  # published meanwhile by a process that took no lock (an older harness)
        raise


def _link_or_copy(src: Path, dst: Path) -> None:
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        with io.atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)
