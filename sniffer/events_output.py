"""The JSON-lines output (`replay`, and `run` without an application id): a file or standard output,
opened so that a failed write (a full disk, an I/O error) is one `OutputError` naming the output.

The buffer above the raw file calls it once per 64 KiB, not per event. After the first failure the
output takes nothing more (it says it wrote it): the command reports the one error and stops, and its
shutdown, which flushes what is left, does not fail a second time. A reader gone away (`| head`)
stays a BrokenPipeError, which the commands treat as a quiet stop (and the output takes nothing more).
"""

from __future__ import annotations

import io
import sys
from typing import IO, Any

from sniffer.errors import OutputError

__all__ = ["BUFFER_BYTES", "open_events_output"]

BUFFER_BYTES = 1 << 16


class _EventsFile(io.FileIO):
    def __init__(self, file: str | int, label: str, mode: str) -> None:
        super().__init__(file, mode, closefd=not isinstance(file, int))
        self.label = label
        self.failed = False

    def write(self, data: Any) -> int:
        if self.failed:
            return len(data)  # dropped: the failure was reported once
        try:
            return super().write(data)
        except BrokenPipeError:
            self.failed = True
            raise
        except OSError as exc:
            self.failed = True
            raise OutputError(f"{self.label}: cannot write the events: {exc.strerror}") from None


def open_events_output(path: str | None, *, append: bool = False) -> IO[bytes]:
    """The file at `path` (truncated, or appended to), else standard output: as it is when it is not a
    real file descriptor (e.g. captured by a test). Raises OSError when the file cannot be opened."""
    mode = "ab" if append else "wb"
    if path:
        return io.BufferedWriter(_EventsFile(path, path, mode), buffer_size=BUFFER_BYTES)
    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError, io.UnsupportedOperation):
        return sys.stdout.buffer
    sys.stdout.flush()
    # "wb" whatever `append` says: an open descriptor is neither truncated nor seeked (it may be a pipe)
    return io.BufferedWriter(_EventsFile(fd, "standard output", "wb"), buffer_size=BUFFER_BYTES)
