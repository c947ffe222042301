"""`encode` / `decode`: batches of `Exchange`s between processes, about 2x cheaper than pickle.

Capture workers hand completed exchanges to the main process. Pickle spends most of its time on its
generic protocol (measured 15-20 us per exchange to dump and 8 us to load, when the core's values were
slotted dataclasses). Here each exchange becomes a tuple of plain values (its messages tuples of their
fields, in `FIELDS` order, which is their constructors' order, named one by one: see `_CARRIED`) and
the batch one `marshal` string (`pack`/`unpack`: one exchange inside other marshal'd data). The only
non-plain value, the set of `ExchangeFlag`s, travels as their string values. Anything else marshal
cannot carry (a field of a new type) makes the batch fall back to pickle, whole.
"""

from __future__ import annotations

import marshal
import pickle
from typing import Any

from reassembly.events import Exchange, ExchangeFlag, HttpRequest, HttpResponse

__all__ = ["decode", "dumps", "encode", "loads", "pack", "unpack"]

# A pickle (protocol 2 and later) starts with its PROTO opcode; marshal data with a type code, never it.
_PICKLE = b"\x80"
# marshal's current version writes an object seen before in the batch (a header name, a version, an
# address) as a reference to it, so the main process holds one copy of it for all the legs it keeps
# waiting. Version 2 would dump ~25 % cheaper, load no cheaper, and every leg would keep its own copies.
# The fields `pack` and `unpack` name one by one (compiled, an attribute read and a constructor call are
# then native; through attrgetter and a star call they went through generic lookups and argument parsing:
# ~1.5 us an exchange of ~3.6 to pack, measured on Kong legs). A field added to the core must be added
# there too: this check makes forgetting it fail at import, in every test.
_CARRIED = (
    (Exchange.FIELDS, ("flow_id", "client", "server", "request", "response", "index", "flags")),
    (HttpRequest.FIELDS, (
        "method", "target", "version", "headers", "body", "body_size", "body_truncated", "trailers",
        "ts_start", "ts_end", "stream_offset", "complete", "gap",
    )),
    (HttpResponse.FIELDS, (
        "status", "version", "headers", "reason", "body", "body_size", "body_truncated", "trailers",
        "ts_start", "ts_end", "stream_offset", "complete", "gap", "interim",
    )),
)  # fmt: skip
if any(fields != carried for fields, carried in _CARRIED):
    raise RuntimeError("exchange_codec does not carry every field of Exchange, HttpRequest, HttpResponse")


def _pack_request(r: HttpRequest) -> tuple[Any, ...]:
    return (
        r.method, r.target, r.version, r.headers, r.body, r.body_size, r.body_truncated, r.trailers,
        r.ts_start, r.ts_end, r.stream_offset, r.complete, r.gap,
    )  # fmt: skip


def _pack_response(r: HttpResponse) -> tuple[Any, ...]:
    return (
        r.status, r.version, r.headers, r.reason, r.body, r.body_size, r.body_truncated, r.trailers,
        r.ts_start, r.ts_end, r.stream_offset, r.complete, r.gap, r.interim,
    )  # fmt: skip


def _unpack_request(t: tuple[Any, ...]) -> HttpRequest:
    return HttpRequest(t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7], t[8], t[9], t[10], t[11], t[12])


def _unpack_response(t: tuple[Any, ...]) -> HttpResponse:
    return HttpResponse(
        t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7], t[8], t[9], t[10], t[11], t[12], t[13]
    )


def pack(ex: Exchange) -> tuple[Any, ...]:
    """One exchange as a tuple of plain values (what marshal can carry), in Exchange.FIELDS order."""
    req, resp = ex.request, ex.response
    return (
        ex.flow_id,
        ex.client,
        ex.server,
        None if req is None else _pack_request(req),
        None if resp is None else _pack_response(resp),
        ex.index,
        tuple([str(f) for f in ex.flags]) if ex.flags else (),
    )


def unpack(packed: tuple[Any, ...]) -> Exchange:
    flow_id, client, server, req, resp, index, flags = packed
    return Exchange(
        flow_id,
        client,
        server,
        None if req is None else _unpack_request(req),
        None if resp is None else _unpack_response(resp),
        index,
        {ExchangeFlag(f) for f in flags} if flags else set(),
    )


def encode(exchanges: list[Exchange]) -> bytes:
    try:
        return marshal.dumps([pack(ex) for ex in exchanges])
    except ValueError:  # a field of a type marshal cannot carry
        return pickle.dumps(exchanges, protocol=pickle.HIGHEST_PROTOCOL)


def decode(data: bytes) -> list[Exchange]:
    if data[:1] == _PICKLE:
        return pickle.loads(data)  # type: ignore[no-any-return]
    return [unpack(t) for t in marshal.loads(data)]


def dumps(value: Any) -> bytes:
    """Other data holding packed exchanges (`pack`): marshal, or pickle, whole, when something in it is
    of a type marshal cannot carry (a core field of a new type); `loads` tells the two apart."""
    try:
        return marshal.dumps(value)
    except ValueError:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def loads(data: bytes) -> Any:
    return pickle.loads(data) if data[:1] == _PICKLE else marshal.loads(data)
