"""Numba kernels kept as plain module functions and compiled on first use.

A kernel module lists its functions; :func:`compile_kernels` replaces each by its numba
dispatcher in the module's namespace, helpers first so the later kernels resolve them as
dispatchers. Importing a kernel module therefore never imports numba, a process that never
calls a kernel never compiles one, and ``cache=True`` keeps the machine code on disk so later
processes only load it.
"""
from __future__ import annotations

import threading
from typing import Iterable

_lock = threading.Lock()


def compile_kernels(namespace: dict, names: Iterable[str], inlined: Iterable[str] = ()) -> None:
    """Compile ``namespace[name]`` for each of ``names`` in order, once: a name already holding
    a dispatcher is kept. ``inlined`` helpers are inlined at numba IR level (a call between
    compiled functions costs reference-count updates for every array argument). Raises
    ImportError without numba: the caller says what needs it."""
    inlined = set(inlined)
    with _lock:
        import numba

        for name in names:
            fn = namespace[name]
            if not isinstance(fn, numba.core.dispatcher.Dispatcher):
                options = {"inline": "always"} if name in inlined else {}
                namespace[name] = numba.njit(cache=True, nogil=True, **options)(fn)


def available() -> bool:
    """Whether numba imports (the kernels' callers fall back to torch when it does not)."""
    try:
        import numba  # noqa: F401
    except Exception:
        return False
    return True


def lazy_compiler(namespace: dict, names: Iterable[str], inlined: Iterable[str] = ()):
    """A function that compiles the module's kernels on its first call (see
    :func:`compile_kernels`) and does nothing afterwards."""
    names, inlined, done = tuple(names), tuple(inlined), []

    def compile_once() -> None:
        if not done:
            compile_kernels(namespace, names, inlined)  # ImportError is the caller's to report
            done.append(True)

    return compile_once
