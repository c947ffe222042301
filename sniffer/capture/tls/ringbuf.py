"""Consume a BPF_MAP_TYPE_RINGBUF from user space through mmap, without libbpf.

Layout (kernel/bpf/ringbuf.c): page 0 holds consumer_pos and is mapped read-write; page 1 holds
producer_pos, followed by the data area mapped twice in a row (read-only), so a record that wraps
around the end is still contiguous in our mapping. Each record starts with an 8-byte header: u32 length
with bit 31 BUSY (still being written: stop there) and bit 30 DISCARD (skip it), then u32 page offset;
records are 8-byte aligned. Advancing consumer_pos hands the space back to the producer.

The ring fd is pollable (readable when records are waiting), so `fileno()` goes into poll/epoll.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Callable
from typing import TypeVar

__all__ = ["RingBuffer"]

_BUSY = 1 << 31
_DISCARD = 1 << 30
_HEADER = 8
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")

T = TypeVar("T")


class RingBuffer:
    """Reads records from one ring-buffer map fd (the fd stays the caller's)."""

    def __init__(self, map_fd: int, size: int) -> None:
        self._fd = map_fd
        self._size = size
        self._mask = size - 1
        page = mmap.PAGESIZE
        self._consumer = mmap.mmap(map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        try:
            self._producer = mmap.mmap(map_fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        except OSError:
            self._consumer.close()
            raise
        self._data = memoryview(self._producer)[page:]

    def fileno(self) -> int:
        return self._fd

    def pending_bytes(self) -> int:
        """Bytes written by the kernel and not yet consumed."""
        return _U64.unpack_from(self._producer, 0)[0] - _U64.unpack_from(self._consumer, 0)[0]

    def drain(self, decode: Callable[[memoryview], T | None], limit: int = 65536) -> list[T]:
        """Decode up to `limit` waiting records (non-blocking); `decode` sees a view valid only during
        the call and returns None for records to drop."""
        consumer = _U64.unpack_from(self._consumer, 0)[0]
        producer = _U64.unpack_from(self._producer, 0)[0]
        out: list[T] = []
        data, mask = self._data, self._mask
        while consumer < producer and len(out) < limit:
            start = consumer & mask
            length = _U32.unpack_from(data, start)[0]
            if length & _BUSY:
                break  # the kernel is still filling it; records after it wait too, in order
            if not length & _DISCARD:
                item = decode(data[start + _HEADER : start + _HEADER + length])
                if item is not None:
                    out.append(item)
            length &= ~(_BUSY | _DISCARD)
            consumer += (length + _HEADER + 7) & ~7
        _U64.pack_into(self._consumer, 0, consumer)
        return out

    def close(self) -> None:
        self._data.release()
        self._producer.close()
        self._consumer.close()
