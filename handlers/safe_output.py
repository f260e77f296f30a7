"""What reaches a terminal: secrets redacted, control characters shown, never obeyed.

ESC, CR and the other C0/C1 controls (except newline and tab) in a name, a reason, a ticket or
a tool's output would move the cursor, rewrite a line or change colours on the reader's screen:
they are written as visible escapes (`\\x1b`, `\\r`) instead.
"""

from __future__ import annotations

import re
from typing import Any, Callable, TextIO

# C0 but \n and \t, DEL, C1, bidirectional overrides, and lone surrogates (undecodable bytes
# in argv or a file name), which a UTF-8 terminal stream cannot even encode.
CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_NAMED = {"\r": "\\r", "\x1b": "\\x1b", "\b": "\\b", "\x0b": "\\v", "\x0c": "\\f", "\x00": "\\0"}


def escape_controls(text: str) -> str:
    """Every control character but newline and tab as a visible escape."""
    if not text:
        return text
    return CONTROL_RE.sub(lambda m: _NAMED.get(m.group(), f"\\u{ord(m.group()):04x}"
                                              if ord(m.group()) > 0xff
                                              else f"\\x{ord(m.group()):02x}"), text)


def is_text(value: str) -> bool:
    """False for undecodable bytes (lone surrogates), which no database or terminal takes."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class SafeStream:
    """A text stream that redacts and escapes everything written through it.

    `redact` is asked at every write: the secrets are known only once the config is loaded.
    """

    def __init__(self, inner: TextIO, redact: Callable[[], Callable[[str], str]]) -> None:
        self._inner = inner
        self._redact = redact

    def write(self, text: str) -> int:
        self._inner.write(escape_controls(self._redact()(text)))
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:  # flush, fileno, isatty, encoding ...
        return getattr(self._inner, name)
