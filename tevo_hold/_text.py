"""Text as a log message may carry it: for the core and the web layer alike (no Flask here)."""

from __future__ import annotations

__all__ = ["printable"]


def printable(text: str) -> str:
    """``text`` with each character that is not printable written as its escape (``\\x1b``,
    ``\\u2028``, ``\\udc80``): what a client chose (a method, a path) or a POS said, as a log
    *message* has it.

    The JSON lines escape everything themselves, but a host app's plain-text handler writes the
    message as it is: a path with a newline in it (``%0A``) was a second, forged log line there,
    and an ESC sequence reached the terminal of whoever read the log. Not printable is
    :meth:`str.isprintable`'s: the control characters (C0, DEL, C1), line and paragraph
    separators, format characters (bidirectional overrides among them), surrogates and
    characters unassigned or private; a space stays one.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
