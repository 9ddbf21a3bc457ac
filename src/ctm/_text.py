"""Text from runs and data as a terminal (or a drawn label) gets it.

Class names are folder names, paths come from globs and config.json: any of them can hold control characters.
Printed raw, an ESC sequence recolours, moves the cursor or retitles the terminal, a carriage return overwrites
the line before it. `printable` writes those characters as escapes (ESC as \\x1b, a newline as \\n) and leaves
all other text, non-ASCII letters included, as it is. The CLI prints names and paths through it; the GIF's
labels use it too (matplotlib has no glyph for a control character, and warns with the raw character).
"""

from __future__ import annotations

import re

# C0 and C1 controls and DEL; the line and paragraph separators; the bidirectional embeddings, overrides and
# isolates (they reorder what follows on the line); lone surrogates (a file name's bytes that were not UTF-8,
# which printing would fail on).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(m: re.Match[str]) -> str:
    c = m.group(0)
    o = ord(c)
    if c in _NAMED:
        return _NAMED[c]
    if 0xDC80 <= o <= 0xDCFF:  # os.fsdecode's stand-in for the byte o - 0xDC00
        return f"\\x{o - 0xDC00:02x}"
    return f"\\x{o:02x}" if o <= 0xFF else f"\\u{o:04x}"


def printable(text: object) -> str:
    """`text` with every control character written as an escape: one line, safe to print on a terminal."""
    return _UNSAFE.sub(_escape, str(text))


def printable_lines(text: object) -> str:
    """`printable` for each line of `text`, keeping its line breaks (a message that lists on several lines)."""
    return "\n".join(printable(line) for line in str(text).split("\n"))
