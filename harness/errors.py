"""The one exception type the CLI turns into a clean message instead of a traceback."""


class HarnessError(Exception):
    """A problem the user can fix: the message says what is wrong and how to fix it."""
