"""The one exception type the CLI turns into a clean message instead of a traceback, and the
wrapper that turns a plugin's own exceptions into it."""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator


class HarnessError(Exception):
    """A problem the user can fix: the message says what is wrong and how to fix it."""


def debugging() -> bool:
    """``HARNESS_DEBUG=1``: plugin errors keep their traceback (for plugin authors)."""
    return os.environ.get("HARNESS_DEBUG", "") not in ("", "0")


@contextmanager
def plugin_code(who: str, what: str) -> Iterator[None]:
    """Run a plugin's code (a stage's loss, a method's predict, ...): an exception it raises is
    reported as a :class:`HarnessError` naming the plugin and the call, not as a traceback from
    inside the harness's loop. ``HARNESS_DEBUG=1`` lets the original exception through."""
    try:
        yield
    except HarnessError:
        raise
    except Exception as exc:
        if debugging():
            raise
        text = " ".join(str(exc).split())[:300]
        raise HarnessError(f"{who}: {what} raised {type(exc).__name__}: {text} (HARNESS_DEBUG=1 shows the "
                           f"traceback)") from exc
