"""Untrusted file names as safe text.

Any user can choose a file name, and inodewatch runs as root: a name is data, never markup.
`safe_text` keeps it valid Unicode (for JSON) and `escape_control` keeps it inert on a
terminal.  Neither loses the fact that something odd was there.
"""

from __future__ import annotations


def safe_text(raw: bytes) -> str:
    """A file name as text: UTF-8 where it is, ``\\xNN`` for every byte that is not."""
    return raw.decode("utf-8", "backslashreplace")


def is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def escape_control(text: str) -> str:
    """Escape control and format characters (ESC, newline, bidi overrides) for a terminal."""
    if text.isprintable():
        return text
    return "".join(
        ch if ch.isprintable() else f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}"
        for ch in text
    )


def terminal_text(raw: bytes) -> str:
    """A file name ready to print on a terminal."""
    return escape_control(safe_text(raw))
