"""`exchange_codec`: exchanges between processes come out equal to what went in, on real captures."""

from __future__ import annotations

import copy
import marshal
import pickle
from pathlib import Path

import pytest

from reassembly.events import Exchange
from reassembly.pipeline import Pipeline
from sniffer.capture import exchange_codec
from sniffer.capture.pcapfile import open_capture

PUBLIC = Path(__file__).resolve().parents[2] / "shared" / "pcaps" / "public"
DEMO = Path(__file__).resolve().parents[1] / "pcaps" / "kong-demo.pcap"


def _exchanges(path: Path) -> list[Exchange]:
    pipeline = Pipeline()
    out: list[Exchange] = []
    with open_capture(path) as cap:
        for ts, linktype, frame, wire_len in cap:
            out += pipeline.feed(ts, linktype, frame, wire_len)
    return out + pipeline.close()


@pytest.mark.skipif(not PUBLIC.is_dir(), reason=f"public corpus not found at {PUBLIC}")
def test_every_exchange_of_the_corpus_round_trips() -> None:
    exchanges = [ex for p in sorted(PUBLIC.glob("*.pcap*")) for ex in _exchanges(p)] + _exchanges(DEMO)
    assert len(exchanges) > 1400 and any(ex.flags for ex in exchanges)
    assert any(ex.request is None for ex in exchanges) and any(ex.response is None for ex in exchanges)
    data = exchange_codec.encode(exchanges)
    assert isinstance(marshal.loads(data), list)  # marshal, not the pickle fallback
    back = exchange_codec.decode(data)
    assert back == exchanges
    assert [type(f) for ex in back for f in ex.flags] == [type(f) for ex in exchanges for f in ex.flags]


def test_packed_exchanges_inside_other_data_and_the_pickle_fallback() -> None:
    ex = _exchanges(DEMO)[0]
    records = [(7, 1.5, [exchange_codec.pack(ex), 2.25]), (9, 3.0, [])]
    back = marshal.loads(marshal.dumps(records))
    assert exchange_codec.unpack(back[0][2][0]) == ex and back[0][2][1] == 2.25
    odd = copy.deepcopy(ex)
    assert odd.request is not None
    # A header value marshal cannot carry (as a field of a new type would be): the batch goes as pickle.
    odd.request.headers = [(b"X-Odd", Path("x"))]  # type: ignore[list-item]
    data = exchange_codec.encode([ex, odd])
    assert pickle.loads(data) == [ex, odd] == exchange_codec.decode(data)
    # The same for other data holding packed exchanges (a replay worker's records): `dumps` / `loads`.
    assert exchange_codec.dumps(records) == marshal.dumps(records)
    assert exchange_codec.loads(exchange_codec.dumps(records)) == back
    odd_records = [(7, 1.5, [exchange_codec.pack(odd)])]
    data = exchange_codec.dumps(odd_records)
    assert pickle.loads(data) == odd_records == exchange_codec.loads(data)
