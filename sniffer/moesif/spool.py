"""A durable, bounded directory of batches that could not be delivered yet.

Each file is one batch exactly as it would be POSTed (a gzip'd JSON array), named
`<wall-clock ns>-<pid>-<seq>-n<events>-r<json bytes>.batch.gz` so names sort oldest first and
carry the event count without opening the file. Writes are atomic (temp file, fsync, rename, fsync of the
directory): after a crash a file is either complete or absent; stray temp files are removed at
open. The total size is bounded by `max_bytes`: the oldest files are deleted to make room, and
their events counted as lost. An exclusive `flock` on `.lock` keeps two senders off one spool.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from sniffer.errors import ConfigError

__all__ = ["Spool", "SpoolEntry"]

log = logging.getLogger("sniffer.transport")

_NAME = re.compile(r"^\d{19,20}-\d+-\d+-n(\d+)(?:-r(\d+))?\.batch\.gz$")


@dataclass(frozen=True, slots=True)
class SpoolEntry:
    name: str
    size: int
    count: int
    raw_bytes: int  # the JSON's size before gzip, for the bytes_sent_uncompressed counter


class Spool:
    def __init__(self, directory: str | os.PathLike[str], max_bytes: int, counters: Counter[str]) -> None:
        self.dir = Path(directory)
        self.max_bytes = max_bytes
        self._counters = counters
        self._seq = 0
        self._entries: dict[str, SpoolEntry] = {}  # insertion order = age order
        self._busy: set[str] = set()  # being delivered: never evicted under the sender's feet
        self.total_bytes = 0
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise ConfigError(f"MOESIF_SPOOL_DIR {self.dir}: {exc.strerror}") from exc
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self._lock_fd)
            raise ConfigError(f"MOESIF_SPOOL_DIR {self.dir}: in use by another sender") from exc
        self._load()

    def _load(self) -> None:
        found: list[SpoolEntry] = []
        for path in self.dir.iterdir():
            if path.name.endswith(".tmp"):
                path.unlink(missing_ok=True)  # an interrupted write: its batch was never acknowledged
                continue
            m = _NAME.match(path.name)
            if m:
                size = path.stat().st_size
                found.append(SpoolEntry(path.name, size, int(m.group(1)), int(m.group(2) or size)))
        for entry in sorted(found, key=lambda e: e.name):
            self._entries[entry.name] = entry
            self.total_bytes += entry.size
        if found:
            log.info(
                "spool %s: %d batches (%d events) from an earlier run",
                self.dir,
                len(found),
                self.pending_events,
            )

    @property
    def pending_events(self) -> int:
        return sum(e.count for e in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def write(self, body: bytes, count: int, raw_bytes: int = 0) -> str | None:
        """Store one batch; returns its name, or None when it cannot be stored (counted as lost)."""
        if len(body) > self.max_bytes:
            self._counters["events_dropped_spool_full"] += count
            return None
        self._make_room(len(body))
        self._seq += 1
        name = f"{time.time_ns():020d}-{os.getpid()}-{self._seq}-n{count}-r{raw_bytes}.batch.gz"
        tmp = self.dir / (name + ".tmp")
        try:
            with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.dir / name)
            self._fsync_dir()
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            self._counters["spool_write_errors"] += 1
            self._counters["events_dropped_spool_error"] += count
            log.error("spool %s: cannot write a batch of %d events: %s", self.dir, count, exc.strerror)
            return None
        self._entries[name] = SpoolEntry(name, len(body), count, raw_bytes)
        self.total_bytes += len(body)
        self._counters["batches_spooled"] += 1
        self._counters["events_spooled"] += count
        return name

    def _make_room(self, need: int) -> None:
        for entry in list(self._entries.values()):
            if self.total_bytes + need <= self.max_bytes:
                return
            if entry.name in self._busy:
                continue
            self._remove(entry.name)
            self._counters["events_dropped_spool_full"] += entry.count
            self._counters["spool_files_evicted"] += 1
            log.warning("spool %s full: deleted the oldest batch (%d events)", self.dir, entry.count)

    def _fsync_dir(self) -> None:
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def next_ready(self) -> SpoolEntry | None:
        """The oldest batch not being delivered; marks it busy."""
        for entry in self._entries.values():
            if entry.name not in self._busy:
                self._busy.add(entry.name)
                return entry
        return None

    def read(self, name: str) -> bytes | None:
        try:
            return (self.dir / name).read_bytes()
        except OSError:
            self._entries.pop(name, None)
            self._busy.discard(name)
            return None

    def release(self, name: str) -> None:
        """Delivery failed for now: the batch stays and can be picked again."""
        self._busy.discard(name)

    def remove(self, name: str) -> None:
        """Delivered (or rejected for good): delete it."""
        self._remove(name)

    def _remove(self, name: str) -> None:
        entry = self._entries.pop(name, None)
        self._busy.discard(name)
        if entry is not None:
            self.total_bytes -= entry.size
        (self.dir / name).unlink(missing_ok=True)

    def close(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = -1
