"""`JsonLinesSink`: events written as JSON lines, the output when no Moesif application id is set.

It has the sender's shape (`submit`, `close`) so the engine does not care which one it feeds.
"""

from __future__ import annotations

from typing import IO, Any, Final

import orjson

__all__ = ["JsonLinesSink"]


_DUMPS: Final = orjson.dumps
_LINE: Final = orjson.OPT_APPEND_NEWLINE


class JsonLinesSink:
    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._write = stream.write  # once per event: looked up once

    def submit(self, event: dict[str, Any]) -> None:
        self._write(_DUMPS(event, option=_LINE))

    def write_lines(self, lines: bytes) -> None:
        """Events already encoded as JSON lines (a capture worker built them)."""
        self._write(lines)

    def reopen(self, stream: IO[bytes]) -> None:
        """Write to `stream` from now on (SIGHUP after logrotate moved the file); the old one is flushed,
        its owner closes it."""
        self._stream.flush()
        self._stream = stream
        self._write = stream.write

    def close(self) -> None:
        self._stream.flush()
