"""The bounded event queue between capture and delivery, and turning events into POST-able batches.

`EventQueue.put` is called from the capture thread and never blocks: when the queue is full the
oldest event is dropped and counted (OTel BatchProcessor's shape, with the drop counted). It wakes
the sender's loop only when the queue goes non-empty or reaches a batch, so a busy producer costs
one lock and one deque append per event, not one cross-thread wake-up.

`encode_batches` serializes events with orjson on the sender's thread and packs them by count and
bytes. Moesif takes at most 1 MB per event (it truncates bodies above that) and 50 MB per batch:
an event over `max_event_bytes` loses its bodies (`metadata.capture.body_omitted_event_bytes` says
so with the true size, as moesif.md marks partial events), and is dropped, counted, only if it is
still too large. Batches stay under `max_batch_bytes` (default 5 MB, ten times under the limit).
"""

from __future__ import annotations

import asyncio
import gzip
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = ["MAX_BATCH_BYTES", "MAX_EVENT_BYTES", "Batch", "EventQueue", "encode_batches", "gzip_body"]

MAX_EVENT_BYTES = 1_000_000  # Moesif's 1 MB event limit, in decimal to leave headroom
MAX_BATCH_BYTES = 5_000_000  # well under the collector's 50 MB per batch


class EventQueue:
    """Thread-safe bounded FIFO of (enqueue monotonic time, event)."""

    def __init__(self, maxsize: int, batch_size: int) -> None:
        self.maxsize = max(1, maxsize)
        self._batch_size = max(1, batch_size)
        self._items: deque[tuple[float, dict[str, Any]]] = deque()
        self._lock = threading.Lock()
        self._wake_pending = False
        self._waker: Callable[[], None] | None = None
        self.accepted = 0
        self.dropped_full = 0

    def set_waker(self, waker: Callable[[], None] | None) -> None:
        """`waker` is called (from any thread) when the consumer should look at the queue."""
        self._waker = waker

    def put(self, event: dict[str, Any]) -> None:
        wake = False
        with self._lock:
            items = self._items
            if len(items) >= self.maxsize:
                items.popleft()
                self.dropped_full += 1
            items.append((time.monotonic(), event))
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

    def take(self, n: int) -> list[dict[str, Any]]:
        with self._lock:
            k = min(n, len(self._items))
            return [self._items.popleft()[1] for _ in range(k)]

    def __len__(self) -> int:
        return len(self._items)


def gzip_body(encoded_events: list[bytes]) -> bytes:
    # zlib drops the GIL while compressing, so capture keeps running meanwhile.
    return gzip.compress(b"[" + b",".join(encoded_events) + b"]", compresslevel=6, mtime=0)


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
            self.events = [orjson.dumps(e) for e in orjson.loads(gzip.decompress(self.body))]
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


def encode_events(
    events: list[dict[str, Any]], counters: Counter[str], max_event_bytes: int = MAX_EVENT_BYTES
) -> list[bytes]:
    """orjson each event; oversize ones lose their bodies or, failing that, are dropped (counted)."""
    out: list[bytes] = []
    for event in events:
        try:
            data = orjson.dumps(event)
        except TypeError:
            counters["events_dropped_unserializable"] += 1
            continue
        if len(data) > max_event_bytes:
            data = orjson.dumps(_omit_bodies(event, len(data)))
            if len(data) > max_event_bytes:
                counters["events_dropped_oversize"] += 1
                continue
            counters["events_bodies_omitted_oversize"] += 1
        out.append(data)
    return out


def encode_batches(
    events: list[dict[str, Any]],
    counters: Counter[str],
    *,
    max_event_bytes: int = MAX_EVENT_BYTES,
    max_batch_bytes: int = MAX_BATCH_BYTES,
) -> list[Batch]:
    """Events (at most a batch by count) -> one or more batches, each under `max_batch_bytes`."""
    batches: list[Batch] = []
    current: list[bytes] = []
    size = 2
    for data in encode_events(events, counters, max_event_bytes):
        if current and size + len(data) + 1 > max_batch_bytes:
            batches.append(Batch.of(current))
            current, size = [], 2
        current.append(data)
        size += len(data) + 1
    if current:
        batches.append(Batch.of(current))
    return batches


async def wait_woken(event: asyncio.Event, timeout: float | None) -> None:
    """Wait for `event` up to `timeout` seconds (None: forever), then clear it."""
    try:
        if timeout is None:
            await event.wait()
        else:
            await asyncio.wait_for(event.wait(), timeout=max(0.0, timeout))
    except TimeoutError:
        pass
    event.clear()
