"""The bounded event queue between capture and delivery, and turning events into POST-able batches.

`encode_event` serializes an event with orjson as it is submitted, so the queue holds JSON bytes:
a third of what the event's dicts weigh (about 0.9 KB against 2.6 KB on wrk traffic, 1.3 against
4.3 KB on Kong's), counted exactly, and nothing the garbage collector has to walk during an outage.
Moesif takes at most 1 MB per event (it truncates bodies above that) and 50 MB per batch: an event
over `max_event_bytes` loses its bodies (`metadata.capture.body_omitted_event_bytes` says so with
the true size, as moesif.md marks partial events), and is dropped, counted, only if it is still
too large.

`EventQueue.put` is called from the capture thread and never blocks: when the queue is full, by
event count or by bytes, the oldest event is dropped and counted (OTel BatchProcessor's shape, with
the drop counted). The byte cap is what bounds memory: a count alone lets 100,000 events with
100 KB bodies hold gigabytes. It wakes the sender's loop only when the queue goes non-empty or
reaches a batch, so a busy producer costs one lock and one deque append per event, not one
cross-thread wake-up.

`pack_batches` packs encoded events into batches under `max_batch_bytes` (default 5 MB, ten times
under the collector's limit).
"""

from __future__ import annotations

import gzip
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = [
    "DEFAULT_QUEUE_BYTES",
    "MAX_BATCH_BYTES",
    "MAX_EVENT_BYTES",
    "Batch",
    "EventQueue",
    "encode_event",
    "gzip_body",
    "pack_batches",
    "with_weight",
]

MAX_EVENT_BYTES = 1_000_000  # Moesif's 1 MB event limit, in decimal to leave headroom
MAX_BATCH_BYTES = 5_000_000  # well under the collector's 50 MB per batch
# About 50,000 Kong events of 1.3 KB: tens of seconds of a busy node's calls while the collector is
# unreachable, inside the DaemonSet's memory limit next to the capture budgets.
DEFAULT_QUEUE_BYTES = 64 << 20
# What a queued event costs beyond its JSON, measured with tracemalloc: 88 bytes for the deque slot and the
# (time, bytes) tuple, 33 for the bytes object's header (malloc's own headers come on top).
_ITEM_OVERHEAD = 120


class EventQueue:
    """Thread-safe FIFO of (enqueue monotonic time, encoded event), bounded by count and by bytes."""

    def __init__(self, maxsize: int, batch_size: int, max_bytes: int = DEFAULT_QUEUE_BYTES) -> None:
        self.maxsize = max(1, maxsize)
        self.max_bytes = max(1, max_bytes)
        self._batch_size = max(1, batch_size)
        self._items: deque[tuple[float, bytes]] = deque()
        self._lock = threading.Lock()
        self._wake_pending = False
        self._waker: Callable[[], None] | None = None
        self.bytes = 0  # what the queued events hold: their JSON plus _ITEM_OVERHEAD each
        self.accepted = 0
        self.dropped_full = 0

    def set_waker(self, waker: Callable[[], None] | None) -> None:
        """`waker` is called (from any thread) when the consumer should look at the queue."""
        self._waker = waker

    def put(self, data: bytes) -> None:
        wake = False
        size = len(data) + _ITEM_OVERHEAD
        with self._lock:
            items = self._items
            self.bytes += size
            # The newest event always stays, even alone over the byte cap: it is under
            # max_event_bytes, which is what one event may weigh.
            while items and (len(items) >= self.maxsize or self.bytes > self.max_bytes):
                self.bytes -= len(items.popleft()[1]) + _ITEM_OVERHEAD
                self.dropped_full += 1
            items.append((time.monotonic(), data))
            self.accepted += 1
            n = len(items)
            if not self._wake_pending and (n == 1 or n >= self._batch_size):
                self._wake_pending = wake = True
        if wake and self._waker is not None:
            self._waker()

    def arm(self) -> None:
        """The consumer is about to look and then sleep: the next qualifying put must wake it."""
        with self._lock:
            self._wake_pending = False

    def peek(self) -> tuple[int, float | None]:
        """(length, enqueue time of the oldest event or None)."""
        with self._lock:
            return len(self._items), (self._items[0][0] if self._items else None)

    def take(self, n: int) -> list[bytes]:
        with self._lock:
            k = min(n, len(self._items))
            out = [self._items.popleft()[1] for _ in range(k)]
            self.bytes -= sum(map(len, out)) + k * _ITEM_OVERHEAD
            return out

    def fill(self) -> float:
        """How full the queue is, 0..1, by whichever cap is nearer."""
        return max(len(self._items) / self.maxsize, self.bytes / self.max_bytes)

    def __len__(self) -> int:
        return len(self._items)


def _isal() -> Callable[[bytes, int, int], bytes] | None:
    try:
        from isal.isal_zlib import compress
    except ImportError:  # a dependency; an install without it compresses with zlib, as before
        return None
    return compress


_isal_compress = _isal()
# What compresses a batch: ISA-L's deflate (python-isal) at its level 2 (its default; its level 3 is
# slower than zlib's 3) when installed, else zlib at level 3 (not its default 6: on the gateway's node CPU
# is dearer than bytes to Moesif). Measured on batches of 50 (python bench/delivery.py, 2026-12-07), the
# sender's CPU per event, compressing and posting: see the README's Delivery section. Compression alone,
# the same batches: ISA-L 2 took 0.6 us an event of the wrk mix (zlib 3: 2.4) for 3 % fewer bytes, and
# 1.6 us of the Kong mix (zlib 3: 6.4) for 6 % more. Both release the GIL while compressing, so capture
# keeps running meanwhile.
COMPRESSOR = "isal" if _isal_compress is not None else "zlib"
ISAL_LEVEL = 2
GZIP_LEVEL = 3


def gzip_body(encoded_events: list[bytes]) -> bytes:
    """The events as one gzip'd JSON array."""
    data = b"[" + b",".join(encoded_events) + b"]"
    if COMPRESSOR == "isal" and _isal_compress is not None:
        return _isal_compress(data, ISAL_LEVEL, 31)  # wbits 31: the gzip container
    return gzip.compress(data, compresslevel=GZIP_LEVEL, mtime=0)


@dataclass(slots=True, eq=False)
class Batch:
    """A unit of delivery: the gzip'd body, its event count, and how to split it on a 413."""

    body: bytes
    count: int
    raw_bytes: int
    events: list[bytes] | None = None  # serialized events; None for a batch read back from the spool
    spool_name: str | None = None  # set while the batch is a file in the spool
    attempts: int = 0

    @classmethod
    def of(cls, events: list[bytes]) -> Batch:
        return cls(gzip_body(events), len(events), sum(map(len, events)) + len(events) + 1, events)

    def encoded_events(self) -> list[bytes]:
        if self.events is None:
            self.events = [_exact(orjson.dumps(e)) for e in orjson.loads(gzip.decompress(self.body))]
        return self.events

    def split(self) -> tuple[Batch, Batch]:
        evs = self.encoded_events()
        half = len(evs) // 2
        return Batch.of(evs[:half]), Batch.of(evs[half:])


def _omit_bodies(event: dict[str, Any], size: int) -> dict[str, Any]:
    slim = dict(event)
    for part in ("request", "response"):
        section = slim.get(part)
        if isinstance(section, dict) and ("body" in section or "transfer_encoding" in section):
            section = dict(section)
            section.pop("body", None)
            section.pop("transfer_encoding", None)
            slim[part] = section
    metadata = dict(slim.get("metadata") or {})
    capture = dict(metadata.get("capture") or {})
    capture["body_omitted_event_bytes"] = size
    metadata["capture"] = capture
    slim["metadata"] = metadata
    return slim


def encode_event(event: dict[str, Any], max_event_bytes: int = MAX_EVENT_BYTES) -> tuple[bytes | None, str]:
    """orjson one event -> (bytes, "") or, when it cannot be sent whole, (bytes or None, counter name):
    an oversize event loses its bodies or, failing that, is dropped."""
    try:
        data = orjson.dumps(event)
    except TypeError:
        return None, "events_dropped_unserializable"
    if len(data) <= max_event_bytes:
        return _exact(data), ""
    data = orjson.dumps(_omit_bodies(event, len(data)))
    if len(data) > max_event_bytes:
        return None, "events_dropped_oversize"
    return _exact(data), "events_bodies_omitted_oversize"


def with_weight(data: bytes, weight: int) -> bytes:
    """An event encoded without a `weight` (`encode_event` of a dict without one), with it: orjson
    writes an object's keys in order, so the last one can be added before the closing brace."""
    return b'%s,"weight":%d}' % (data[:-1], weight)


def _exact(data: bytes) -> bytes:
    """A copy of `data` that holds only its bytes. orjson's result keeps the capacity of its output
    buffer (at least 4 KiB, 16 KiB for a 1.4 KB Kong event), which matters for bytes that are kept:
    queued, 46,000 such events held 190 MB of RSS instead of 64 MiB (tests/test_sender.py)."""
    return memoryview(data).tobytes()


def pack_batches(encoded: list[bytes], max_batch_bytes: int = MAX_BATCH_BYTES) -> list[Batch]:
    """Encoded events (at most a batch by count) -> one or more batches, each under `max_batch_bytes`."""
    batches: list[Batch] = []
    current: list[bytes] = []
    size = 2
    for data in encoded:
        if current and size + len(data) + 1 > max_batch_bytes:
            batches.append(Batch.of(current))
            current, size = [], 2
        current.append(data)
        size += len(data) + 1
    if current:
        batches.append(Batch.of(current))
    return batches
