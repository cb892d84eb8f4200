"""Names shown to people: one escaping function per medium.

Tensor, node, input, module and file names come from models and users, so they can hold
anything: ESC sequences that recolour or clear a terminal, newlines that forge a line of
output, carriage returns, bidi overrides that show text in another order, characters XML 1.0
forbids, lone surrogates (a file name that is not UTF-8). Every name, and every message that
carries one, reaches a terminal, an XML or an HTML file through the function of that medium:

- ``terminal(text)``: plain text for a terminal or a log line (``Error: ...``).
- ``markup(text)``: the same, for rich: markup such as ``[bold]`` shown, not applied.
- ``xml(text)``: the same, for XML text and attributes: the file always parses.
- ``html(text)``: the same, HTML-escaped.

Invisible and control characters are shown as Python-style escapes (``\\x1b``, ``\\n``,
``\\u202e``), so a name stays recognisable and on one line. A surrogate from a file name that
is not UTF-8 (``os.fsdecode``'s surrogateescape) is shown as the byte it stands for
(``\\xff``). Backslashes are left alone, so escaping twice changes nothing more. JSON reports
keep names exact (JSON escapes them itself).
"""

from __future__ import annotations

import re
import unicodedata

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}

# Unicode categories never shown raw: controls (C0, DEL, C1 with the 8-bit CSI), format
# characters (bidi overrides and isolates, zero-width characters, BOM), surrogates,
# unassigned code points and noncharacters (U+FFFE), and the line and paragraph separators.
_HIDDEN = {"Cc", "Cf", "Cs", "Cn", "Zl", "Zp"}

# Fast path: printable ASCII needs no look-up character by character.
_PLAIN = re.compile(r"[ -~]*\Z")


def _escape_char(ch: str) -> str:
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # surrogateescape: one undecodable byte of a file name
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _utf8_text(text: str) -> str:
    """Surrogates that stand for the bytes of UTF-8 characters (a UTF-8 file name decoded where
    the file system encoding is ASCII, ``LC_ALL=C``) as those characters; others stay."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "surrogateescape")
    except UnicodeError:  # a lone surrogate that stands for no byte (from JSON, say)
        return text


def terminal(text: object) -> str:
    """``text`` with every control, format, invisible or unassigned character escaped."""
    text = str(text)
    if _PLAIN.match(text):
        return text
    text = _utf8_text(text)
    return "".join(_escape_char(ch) if unicodedata.category(ch) in _HIDDEN else ch for ch in text)


def markup(text: object) -> str:
    """For rich: escaped for the terminal, and rich markup (``[bold]``) escaped too. Use with
    a console made with ``emoji=False`` (see render/text.py), or ``:smile:`` becomes an emoji.
    Never put a markup tag right after the result (``f"[b]{markup(name)}[/]"``): a name that
    ends with a backslash would escape it. Style such a name with a rich ``Text`` instead."""
    from rich.markup import escape

    shown = terminal(text)
    escaped = escape(shown)
    if escaped.endswith("\\\\") and not shown.endswith("\\\\"):
        escaped = escaped[:-1]  # rich doubles a last backslash for a tag that never follows
    return escaped


def xml(text: object) -> str:
    """For XML text and attribute values (ElementTree escapes ``<&>"`` itself): every character
    XML 1.0 forbids (C0 controls but tab and newline, surrogates, U+FFFE, U+FFFF) is among
    those ``terminal`` escapes, so the document always parses."""
    return terminal(text)


def html(text: object) -> str:
    """For HTML: escaped for the terminal, then HTML-escaped (quotes included)."""
    import html  # for HTML reports only: html.entities is a large table

    return html.escape(terminal(text))
