"""When and which: an event's ISO times and its transaction id (sent by the client, or derived).

A derived id is uuid5 of where and when the request was seen ("client|server|offset|second"), so a
replay of the same capture gives the same ids. The time is whole seconds on purpose: two capture sockets
(the daemon's and tcpdump's) may read the kernel clock a microsecond apart for the same packet, and the
id must not depend on which one saw it; the 4-tuple and the stream offset already tell requests apart,
and the second only separates reuses of one 4-tuple, which TIME_WAIT keeps far more than a second apart.
Both are computed per event, so both are fast paths:
a per-second memo of the time text, and SHA-1 over a per-flow prefix (uuid5 is sha1(namespace + name)).
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
    "derived_id",
    "endpoint_text",
    "flow_hasher",
    "id_hasher",
    "iso_time",
    "second_text",
    "sent_id",
    "transaction_id",
]

NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "https://moesif-sniffer/transaction-id")
_NAMESPACE_BYTES: Final = NAMESPACE.bytes  # a Python-level property: ~1 us a call
_SECONDS_MAX: Final = 4096  # per-second memo of the time text, emptied when full (bounded)
_SECONDS: dict[int, str] = {}
_MILLIS: Final = [f".{milli:03d}Z" for milli in range(1000)]
# The version-5 UUID's variant digit from the hash's digit at that place (its top two bits become 10).
_VARIANT: Final = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


def iso_time(ts: float) -> str:
    """ISO 8601 UTC, exactly three digits of milliseconds (truncated) and a Z."""
    ms = round(ts * 1_000_000) // 1000  # via microseconds: pcap times are exact in us, not in float ms
    sec, milli = divmod(ms, 1000)
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


def id_hasher(client: Endpoint, server: Endpoint) -> hashlib._Hash:
    """SHA-1 over the namespace and the flow part of a derived id's name: uuid5 is sha1(namespace +
    name), so a copy of this, fed the rest of the name, gives the same UUID without rehashing."""
    return flow_hasher(endpoint_text(client), endpoint_text(server))


def flow_hasher(client_text: str, server_text: str) -> hashlib._Hash:
    """`id_hasher` of the endpoints' `endpoint_text`s (a new flow's event has them already)."""
    return hashlib.sha1(_NAMESPACE_BYTES + f"{client_text}|{server_text}|".encode())


def derived_id(flow_hasher: hashlib._Hash, offset: int, ts: float) -> str:
    """uuid5(NAMESPACE, "client|server|offset|second") of where and when the request was seen."""
    h = flow_hasher.copy()
    h.update(f"{offset}|{int(ts)}".encode())  # the whole second
    x: str = h.hexdigest()  # typed: compiled, its slices are then native (h is Any)
    # As uuid.UUID(bytes=digest[:16], version=5): version digit 5, variant bits 10.
    return f"{x[:8]}-{x[8:12]}-5{x[13:16]}-{_VARIANT[x[16]]}{x[17:20]}-{x[20:32]}"


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
    return derived_id(id_hasher(primary.client, primary.server), offset, ts)
