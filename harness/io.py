"""Atomic file writes: a reader (or a killed run) never sees half a file, and a full disk or
a read-only folder is a named error, never a traceback or a truncated result."""
from __future__ import annotations

import errno
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from harness.errors import HarnessError


class WriteError(HarnessError, OSError):
    """A file could not be written (full disk, read-only folder, ...). It is an ``OSError``
    too, so code that tolerates a failed optional write (a cache, a report) still does."""


_HINTS = {
    errno.ENOSPC: "the disk is full: free some space (or write elsewhere, e.g. --run-root DIR) and run again",
    errno.EDQUOT: "the disk quota is exceeded: free some space (or write elsewhere, e.g. --run-root DIR)",
    errno.EROFS: "the file system is read-only: write elsewhere (e.g. --run-root DIR)",
    errno.EACCES: "permission denied: make the folder writable, or write elsewhere (e.g. --run-root DIR)",
    errno.EPERM: "permission denied: make the folder writable, or write elsewhere (e.g. --run-root DIR)",
}


def write_error(path: str | os.PathLike, exc: OSError) -> WriteError:
    """A :class:`WriteError` naming ``path``, the system's reason and what to do about it."""
    if isinstance(exc, WriteError):
        return exc
    reason = exc.strerror or str(exc)
    hint = _HINTS.get(exc.errno, "check the folder and run again")
    err = WriteError(f"cannot write {path}: {reason} ({hint}); nothing was half-written")
    err.errno = exc.errno
    return err


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success flush it to disk and rename it over
    ``path``. On any failure the temporary file is removed and ``path`` is left as it was; an
    ``OSError`` becomes a :class:`WriteError` naming ``path``."""
    path = Path(path)
    tmp_path = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        yield tmp_path
        # mkstemp makes the file private (0600); results and reports are meant to be shared,
        # so the final file gets the mode a plain open() would give it
        os.chmod(tmp_path, 0o666 & ~_umask())
        _fsync_file(tmp_path)  # the data is on disk before the name points at it
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        raise write_error(path, exc) from exc
    finally:
        if tmp_path is not None and tmp_path.exists():
            tmp_path.unlink()


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    """Make a rename durable; some platforms and file systems cannot open a folder for it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append one line and flush it to disk (logs that must survive a kill)."""
    try:
        with open(path, "a") as f:
            f.write(line.rstrip("\n") + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise write_error(path, exc) from exc


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """The JSON value in ``path``, or a :class:`HarnessError` naming the file and why it cannot
    be read (missing, not UTF-8, not JSON, nested past what the parser takes)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HarnessError(f"{path} does not exist") from None
    except (OSError, ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise HarnessError(f"{path} is not a readable {what} ({type(exc).__name__}: {str(exc)[:200]})") from exc


def save_tensors(path: str | os.PathLike, obj: Any) -> None:
    """``torch.save`` of tensors and plain data, atomically (see :func:`atomic_path`); read back
    with :func:`load_tensors`."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def save_npz(path: str | os.PathLike, arrays: dict) -> None:
    """NumPy arrays (no objects) in one ``.npz``, atomically; read back with :func:`load_npz`."""
    import numpy as np

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def load_npz(path: str | os.PathLike) -> dict:
    """The arrays of a :func:`save_npz` file (``allow_pickle=False``: a file never runs code); a
    missing or damaged file is a :class:`HarnessError` naming it."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise HarnessError(f"{path} does not exist") from None
    except (OSError, ValueError, EOFError) as exc:
        raise HarnessError(f"{path} cannot be read ({type(exc).__name__}: {exc})") from exc


def load_tensors(path: str | os.PathLike, what: str = "checkpoint", mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain data only, never code. A file
    that is damaged, or holds other Python objects, is a one-line :class:`HarnessError`
    naming it (not PyTorch's advice to load it unsafely)."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise HarnessError(f"{what} {path} does not exist") from None
    except Exception as exc:
        text = str(exc)
        detail = " ".join(text.split("WeightsUnpickler error:")[-1].split("Check the documentation")[0].split())
        if isinstance(exc, pickle.UnpicklingError) and "Unsupported global" in detail:
            why = (f"it holds Python objects besides tensors and plain data ({detail[:120]}), and such a file is "
                   f"refused, never run")
        elif isinstance(exc, pickle.UnpicklingError) and "WeightsUnpickler error:" in text:
            why = f"not a file torch.save wrote ({detail[:120]})"
        else:
            why = f"{type(exc).__name__}: {' '.join(str(exc).splitlines()[0].split())[:200] if str(exc) else ''}"
        raise HarnessError(f"{what} {path} cannot be read ({why})") from exc


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")
