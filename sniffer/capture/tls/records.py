"""The records the TLS uprobes hand to user space: the interface between the kernel side
(`sniffer.capture.tls` probes and ring buffer) and the stages after it (plaintext streams, Kong join).

One SSL object (`ssl`, an address in process `pid`) is one TLS connection: its reads and writes are
already in order, decrypted and free of retransmissions, so they feed the HTTP parser without TCP
reassembly. Timestamps are the kernel's `bpf_ktime_get_ns()` (CLOCK_MONOTONIC); user space turns them
into capture time.
"""

from __future__ import annotations

from dataclasses import dataclass

from reassembly.events import Endpoint
from sniffer.errors import CaptureError

__all__ = ["TlsBound", "TlsData", "TlsFreed", "TlsRecord", "TlsUnavailable"]


@dataclass(slots=True, frozen=True)
class TlsData:
    """Plaintext one SSL_read/SSL_read_ex (is_read) or SSL_write/SSL_write_ex call moved."""

    pid: int  # the process (tgid)
    ssl: int  # the SSL* in that process: identifies the connection
    is_read: bool  # True: bytes the process received; False: bytes it sent
    ts_ns: int  # CLOCK_MONOTONIC when the call returned
    total_len: int  # bytes the call moved
    data: bytes  # the first min(total_len, per-call cap) of them; fewer than total_len means loss
    # where data starts in its direction's stream, counted in the kernel (None: unknown); a record whose
    # offset is beyond the previous one's end says exactly how many bytes were lost before it
    offset: int | None = None


@dataclass(slots=True, frozen=True)
class TlsBound:
    """SSL_set_fd(ssl, fd): the socket under this SSL object.

    local/remote: the socket's addresses as the probe read them in the kernel at that moment (None when
    it could not: no BTF, not a socket yet); then user space may look the fd up in /proc instead."""

    pid: int
    ssl: int
    fd: int
    ts_ns: int
    local: Endpoint | None = None
    remote: Endpoint | None = None


@dataclass(slots=True, frozen=True)
class TlsFreed:
    """SSL_free(ssl): the connection is over; the same address may be reused for a new one."""

    pid: int
    ssl: int
    ts_ns: int


TlsRecord = TlsData | TlsBound | TlsFreed


class TlsUnavailable(CaptureError):
    """TLS capture cannot work on this host; the message says why in plain words (permission, kernel,
    architecture). The daemon reports it once and carries on with packet capture."""
