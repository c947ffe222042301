"""When and which: an event's ISO times and its transaction id (sent by the client, or derived).

A derived id is a UUID of where and when the request was seen: the connection ("client|server"), the
request's offset in the client's TCP stream, and the whole second of its first byte; so a replay of the
same capture gives the same ids, and Moesif deduplicates a retried batch. The time is whole seconds on
purpose: two capture sockets (the daemon's and tcpdump's) may read the kernel clock a microsecond apart
for the same packet, and the id must not depend on which one saw it; the 4-tuple and the stream offset
already tell requests apart, and the second only separates reuses of one 4-tuple, which TIME_WAIT keeps
far more than a second apart.

Built per event, so built cheaply: SHA-1 of the namespace, the connection and the second gives the first
80 bits (hashed once per connection and second, `FlowIds`), and the last 48 are the hash's own 48 mixed
with the offset by a bijection (an odd multiplier modulo 2^48), so two requests of one connection in one
second never share an id, and ids of different connections or seconds collide only as random 122-bit
values do. A UUID of version 8 (RFC 9562: a custom layout). Until 2026-12-07 it was uuid5 of the whole
name, a SHA-1 per event: ~9 % of the instructions per event on keep-alive traffic, OpenSSL's per-call
overhead mostly; a connection's requests in one second now share one hash.
The ISO time text is memoised per second.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from typing import Final

from reassembly.events import Endpoint
from sniffer.headers import text
from sniffer.kong.api_call import ApiCall

__all__ = [
    "NAMESPACE",
    "FlowIds",
    "derived_id",
    "endpoint_text",
    "flow_ids",
    "iso_time",
    "millis",
    "second_text",
    "sent_id",
    "transaction_id",
]

NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "https://moesif-sniffer/transaction-id")
_NAMESPACE_BYTES: Final = NAMESPACE.bytes  # a Python-level property: ~1 us a call
_SECONDS_MAX: Final = 4096  # per-second memo of the time text, emptied when full (bounded)
_SECONDS: dict[int, str] = {}
_MILLIS: Final = [f".{milli:03d}Z" for milli in range(1000)]
# The UUID's variant digit from the hash's digit at that place (its top two bits become 10).
_VARIANT: Final = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}
_OFFSET_MIX: Final = 0x9E3779B97F4B  # odd: multiplying by it modulo 2^48 is a bijection
_MASK_48: Final = (1 << 48) - 1
# The multiplication modulo 2^48 in 24-bit halves: every product stays below 2^63, so compiled code keeps
# to machine integers (the whole product of a stream offset and the multiplier is a Python long).
_MASK_24: Final = (1 << 24) - 1
_MIX_LO: Final = _OFFSET_MIX & _MASK_24
_MIX_HI: Final = _OFFSET_MIX >> 24
_HEX_PAD: Final = 1 << 48  # hex() of tail | _HEX_PAD is "0x1" and 12 digits, zero-padded


def millis(ts: float) -> int:
    """The millisecond of capture time `ts`: `round(ts * 1_000_000) // 1000`, via microseconds because
    pcap times are exact in microseconds, not in float milliseconds. Python's round (half to even) in
    machine arithmetic: compiled, a call of the builtin `round` is a generic one (~560 instructions; the
    event builder needs two). Below 2^53 microseconds a float's spacing is at most 0.25, so the fraction
    x - int(x) is exact and so is its comparison with 0.5; above, x is a whole number."""
    x = ts * 1_000_000
    r = int(x)
    d = x - r
    if d > 0.5 or (d == 0.5 and r & 1):
        r += 1
    elif d < -0.5 or (d == -0.5 and r & 1):
        r -= 1
    return r // 1000


def iso_time(ts: float) -> str:
    """ISO 8601 UTC, exactly three digits of milliseconds (truncated) and a Z."""
    sec, milli = divmod(millis(ts), 1000)
    return (_SECONDS.get(sec) or second_text(sec)) + _MILLIS[milli]


def second_text(sec: int) -> str:
    """`YYYY-MM-DDTHH:MM:SS` of a whole second, remembered (the event builder inlines `iso_time` with
    the memo and this)."""
    prefix = _SECONDS.get(sec)
    if prefix is None:
        if len(_SECONDS) >= _SECONDS_MAX:
            _SECONDS.clear()
        prefix = _SECONDS[sec] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
    return prefix


def endpoint_text(ep: Endpoint) -> str:
    """`ip:port`, or `[ip]:port` for IPv6."""
    ip, port = ep
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


class FlowIds:
    """The derived ids of one connection's requests: its name, and the hash of the last second an id
    was made for (the UUID's first 20 hex digits as text, its last 48 bits as an int)."""

    __slots__ = ("head", "name", "second", "tail", "tail_hex")

    def __init__(self, client_text: str, server_text: str) -> None:
        self.name = _NAMESPACE_BYTES + f"{client_text}|{server_text}|".encode()
        self.second = -1
        self.head = ""
        self.tail_hex = ""  # the hash's last 12 hex digits: the id of offset 0 ends with them
        self.tail = -1  # the same as an int, read when an offset other than 0 needs it


def flow_ids(client: Endpoint, server: Endpoint) -> FlowIds:
    """The `FlowIds` of the connection between `client` and `server`."""
    return FlowIds(endpoint_text(client), endpoint_text(server))


def derived_id(ids: FlowIds, offset: int, ts: float) -> str:
    """The id of the request at stream offset `offset` of `ids`'s connection, seen at capture time `ts`."""
    second = int(ts)
    if second != ids.second:
        x: str = hashlib.sha1(ids.name + str(second).encode()).hexdigest()
        ids.second = second
        # Version digit 8, variant bits 10.
        ids.head = f"{x[:8]}-{x[8:12]}-8{x[13:16]}-{_VARIANT[x[16]]}{x[17:20]}-"
        ids.tail_hex = x[20:32]
        ids.tail = -1
    if not offset:
        # A connection's first request (most of Kong's client connections carry one): the tail as it
        # is, without the int round trip that made a one-request connection's id ~170 ns dearer than
        # the uuid5 it replaced.
        return ids.head + ids.tail_hex
    tail = ids.tail
    if tail < 0:
        tail = ids.tail = int(ids.tail_hex, 16)
    lo, hi = offset & _MASK_24, (offset >> 24) & _MASK_24
    mixed = (lo * _MIX_LO + (((lo * _MIX_HI + hi * _MIX_LO) & _MASK_24) << 24)) & _MASK_48
    # (tail ^ offset * _OFFSET_MIX) & _MASK_48 as 12 hex digits; compiled, an f-string's format spec
    # was a generic __format__ call, ~2.5k instructions of the ~4k an id took.
    return ids.head + hex(tail ^ mixed | _HEX_PAD)[3:]


def sent_id(call: ApiCall) -> str | None:
    """X-Moesif-Transaction-Id as a UUID, when a request carries a non-blank one."""
    for leg in (call.client_leg, call.upstream_leg):
        if leg is not None and leg.request is not None:
            sent = leg.request.header(b"x-moesif-transaction-id")
            if sent and sent.strip():
                value = text(sent.strip())
                try:
                    return str(uuid.UUID(value))
                except ValueError:
                    return str(uuid.uuid5(NAMESPACE, "header:" + value))
    return None


def transaction_id(call: ApiCall) -> str:
    """X-Moesif-Transaction-Id when sent, else a UUID derived from where and when the request was seen."""
    sent = sent_id(call)
    if sent is not None:
        return sent
    primary = call.primary
    req = primary.request
    offset, ts = (req.stream_offset, req.ts_start) if req is not None else (-1, 0.0)
    return derived_id(flow_ids(primary.client, primary.server), offset, ts)
