"""`encode` / `decode`: batches of `Exchange`s between processes, about 2x cheaper than pickle.

Capture workers hand completed exchanges to the main process. Pickle spends most of its time on its
generic protocol (measured 15-20 us per exchange to dump and 8 us to load, when the core's values were
slotted dataclasses). Here each exchange becomes a tuple of plain values (its messages tuples of their
fields, in `FIELDS` order, which is their constructors' order, so a field added to the core travels
without a change here) and the batch one `marshal` string (`pack`/`unpack`: one exchange inside other
marshal'd data). The only non-plain value, the set of `ExchangeFlag`s, travels as their string values.
Anything else marshal cannot carry (a field of a new type) makes the batch fall back to pickle, whole.
"""

from __future__ import annotations

import marshal
import pickle
from operator import attrgetter
from typing import Any

from reassembly.events import Exchange, ExchangeFlag, HttpRequest, HttpResponse

__all__ = ["decode", "encode", "pack", "unpack"]

_get_req = attrgetter(*HttpRequest.FIELDS)
_get_resp = attrgetter(*HttpResponse.FIELDS)
_MARSHAL, _PICKLE = b"m", b"p"
if Exchange.FIELDS != ("flow_id", "client", "server", "request", "response", "index", "flags"):
    raise RuntimeError("exchange_codec does not carry every field of Exchange")


def pack(ex: Exchange) -> tuple[Any, ...]:
    """One exchange as a tuple of plain values (what marshal can carry), in Exchange.FIELDS order."""
    req, resp = ex.request, ex.response
    return (
        ex.flow_id,
        ex.client,
        ex.server,
        None if req is None else _get_req(req),
        None if resp is None else _get_resp(resp),
        ex.index,
        tuple([str(f) for f in ex.flags]),
    )


def unpack(packed: tuple[Any, ...]) -> Exchange:
    flow_id, client, server, req, resp, index, flags = packed
    return Exchange(
        flow_id,
        client,
        server,
        None if req is None else HttpRequest(*req),
        None if resp is None else HttpResponse(*resp),
        index,
        {ExchangeFlag(f) for f in flags},
    )


def encode(exchanges: list[Exchange]) -> bytes:
    try:
        return _MARSHAL + marshal.dumps([pack(ex) for ex in exchanges])
    except ValueError:  # a field of a type marshal cannot carry
        return _PICKLE + pickle.dumps(exchanges, protocol=pickle.HIGHEST_PROTOCOL)


def decode(data: bytes) -> list[Exchange]:
    if data[:1] == _PICKLE:
        return pickle.loads(data[1:])  # type: ignore[no-any-return]
    return [unpack(t) for t in marshal.loads(data[1:])]
