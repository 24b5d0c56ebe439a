"""What may stand in a log line of the server: a request's path escaped, an exception in one line."""

from __future__ import annotations

import re
from urllib.parse import quote

_SAFE = "/:@!$&'()*+,;=-._~%"
_UNSAFE = re.compile(r"[^A-Za-z0-9/:@!$&'()*+,;=\-._~%]")


def loggable(path: str) -> str:
    """A request path as it may stand in a log line: control characters, spaces and non-ASCII percent-encoded, so
    one request is one line whatever it was sent as. (The usual path has none: it is returned as it is.)"""
    return quote(path, safe=_SAFE) if _UNSAFE.search(path) else path


def one_line(exc: BaseException) -> str:
    """An exception as one line: its type and the first line of its message (the database driver's own, if any)."""
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
