"""One lock per cache entry, so that runs (or ranks of one distributed run) reaching the same
cache at once compute the entry once: the first takes the lock, computes and writes the entry
atomically; the others wait for the lock, then read what the first wrote.

The lock is an exclusive ``fcntl.flock`` on a lock file next to (or for) the entry. It is
held by an open file, not by a file's existence, so a killed process never leaves a stale
lock behind: the kernel releases it with the process. It works between processes of one
machine on any local file system, and between machines on shared file systems that
implement locking (NFSv4, NFSv3 with lockd, Lustre mounted with ``-o flock``, GPFS, ...).
NFS caveats: a Linux NFS client turns ``flock`` into a POSIX byte-range lock on the server,
so an NFS mount with ``nolock`` (or ``local_lock=flock``/``all``) gives locks that only
exclude processes of the same machine; a client that dies holding a lock keeps it until the
server's lease runs out (a minute or two); and some network or FUSE file systems refuse
locks altogether, which is reported by name (:class:`LockError`).

Lock files are left in place: deleting one while another process waits on it would let a
third process lock a new file of the same name while the second holds the old one.

A thread that already holds a lock passes through a nested request for the same file (e.g.
an annotator training the classifier stage the run is training) instead of deadlocking on
itself. Locks are taken in one order (pseudo-boxes, then the classifier stage), so two runs
never wait on each other.
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from harness.errors import HarnessError

log = logging.getLogger("harness")

_held = threading.local()  # absolute paths of the lock files this thread holds


class LockError(HarnessError, OSError):
    """A lock file cannot be created or locked. An ``OSError`` too, so code that tolerates a
    failed optional cache write tolerates it as well."""


class Busy(Exception):
    """``file_lock(..., wait=False)`` found the lock held by another process."""


@contextmanager
def file_lock(path: str | os.PathLike, what: str, wait: bool = True) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created with its folders if missing) for the block.
    When another process holds it, log once ``waiting for <what> (<path>)`` and wait; or, with
    ``wait=False``, raise :class:`Busy` at once."""
    path = Path(path)
    name = os.path.abspath(path)
    held = _held.__dict__.setdefault("paths", set())
    if name in held:
        yield
        return
    fd = _open(path)
    try:
        _lock(fd, path, what, wait)
    except BaseException:  # Busy, LockError, or an interrupt while waiting
        os.close(fd)
        raise
    held.add(name)
    try:
        yield
    finally:
        held.discard(name)
        # explicit unlock: a forked child (e.g. a data-loader worker) shares the open file and
        # would otherwise keep the lock after this process closes it
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _lock(fd: int, path: Path, what: str, wait: bool) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        if not wait:
            raise Busy(f"{what} holds {path}") from None
    except OSError as exc:
        raise _unlockable(path, exc) from exc
    log.info("waiting for %s (%s)", what, path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError as exc:
        raise _unlockable(path, exc) from exc


def _unlockable(path: Path, exc: OSError) -> LockError:
    return LockError(f"cannot lock {path} ({exc.strerror or exc}): its file system refuses file locks (or the file "
                     f"is another user's); set HARNESS_HOME to a folder on a local disk, or on an NFS mount with "
                     f"locking")


def _open(path: Path) -> int:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except PermissionError:
            # another user's lock file in a shared cache: a read-only open still locks locally
            # (over NFS an exclusive lock needs write access, and this raises again)
            return os.open(path, os.O_RDONLY)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        hint = ("free some space" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else
                f"make {path.parent} writable")
        raise LockError(f"cannot create the lock file {path} ({reason}): {hint}, or set HARNESS_HOME to a "
                        f"writable folder") from exc
