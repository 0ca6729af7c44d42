"""Safe text for records and messages: file names of any bytes and length, and messages that quote file content.

File names on Linux are bytes; Python hands them over as ``str`` with undecodable bytes as lone surrogates
(``surrogateescape``), which ``json`` would write as ``"\\udcff"`` (not valid Unicode) and which a terminal
could not print. ``display_name`` turns any name into printable text: bytes that are not UTF-8 become
``\\xNN``, control characters (newlines, ESC, DEL, C1 controls, bidi overrides) become ``\\xNN`` / ``\\uNNNN``.
Records keep the whole (escaped) name; messages on stderr shorten names over ``NAME_LIMIT`` characters in
the middle. ``clean_message`` does the same for any message and makes it one line.
"""

from __future__ import annotations

import os
import re

NAME_LIMIT = 160  # characters of a name shown in a one-line message (records keep the whole name)
MESSAGE_LIMIT = 1000

# C0/C1 controls, DEL, line/paragraph separators, bidi embedding/override/isolate marks, BOM, lone surrogates.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ufeff\ud800-\udfff]")


def _escape(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def display_name(name, limit: int | None = None) -> str:
    """Printable, valid-Unicode text for a file name (``str`` from the OS, ``bytes`` or ``os.PathLike``)."""
    if isinstance(name, os.PathLike):
        name = os.fspath(name)
    if isinstance(name, str):
        raw = name.encode("utf-8", "surrogateescape") if _has_surrogates(name) else None
        text = raw.decode("utf-8", "backslashreplace") if raw is not None else name
    elif isinstance(name, (bytes, bytearray)):
        text = bytes(name).decode("utf-8", "backslashreplace")
    else:
        text = str(name)
    text = _UNSAFE.sub(_escape, text)
    return shorten(text, limit) if limit else text


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def shorten(text: str, limit: int = NAME_LIMIT) -> str:
    """``text`` cut in the middle to at most ``limit`` characters."""
    if len(text) <= limit:
        return text
    keep = max(limit - 3, 2)
    return text[: keep - keep // 3] + "..." + text[len(text) - keep // 3 :]


def clean_message(text, limit: int = MESSAGE_LIMIT) -> str:
    """One printable line: whitespace runs (newlines included) become one space, controls are escaped."""
    text = display_name(re.sub(r"\s+", " ", str(text)).strip())
    return shorten(text, limit)


def short_name(name) -> str:
    """A file name for a message: escaped and at most ``NAME_LIMIT`` characters."""
    return display_name(name, NAME_LIMIT)


__all__ = ["display_name", "clean_message", "short_name", "shorten", "NAME_LIMIT"]
