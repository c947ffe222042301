"""The bundled capture `pcaps/kong-demo.pcap` replayed end to end against the client's own log of its calls.

No root needed: the capture and `kong-demo.calls.json` were made together by `pcaps/make_demo.sh` (see
pcaps/README.md). Replay is the real command, `python -m sniffer replay`, with both gateway ports as Kong
ports and a company header configured.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import dpkt
import pytest
from topology.verify import replay, unmatched

from reassembly.decode import Decoder
from reassembly.limits import Limits
from reassembly.stats import Stats

PCAPS = Path(__file__).resolve().parents[1] / "pcaps"
DEMO = PCAPS / "kong-demo.pcap"
CALLS: list[dict[str, Any]] = json.loads((PCAPS / "kong-demo.calls.json").read_text())


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return replay(DEMO, tmp_path_factory.mktemp("demo") / "events.jsonl")


def test_the_log_covers_every_case() -> None:
    # Guards the bundled capture itself: regenerating it with a thinner plan would hollow out these tests.
    metas = [c["meta"] for c in CALLS]
    assert 30 <= len(CALLS) <= 60
    assert {m["auth"] for m in metas} == {"apikey", "basic", "bearer", "none", "invalid"}
    assert {m["gateway"] for m in metas} == {"kong39", "kong34"}
    assert any(":" in c["source"] for c in CALLS) and any(":" not in c["source"] for c in CALLS)
    assert any(c["response_headers"].get("content-encoding") == "gzip" for c in CALLS)
    assert any(c["response_headers"].get("transfer-encoding") == "chunked" for c in CALLS)
    assert any(c["method"] == "POST" for c in CALLS) and any(c["status"] == 401 for c in CALLS)
    calls_per_conn = Counter((c["source"], c["local_port"]) for c in CALLS)
    assert max(calls_per_conn.values()) > 1  # keep-alive client connections


def test_exactly_one_event_per_call_with_the_plugins_identity(events: list[dict[str, Any]]) -> None:
    extra, missing = unmatched(events, CALLS)
    assert extra == [] and missing == []
    assert len(events) == len(CALLS)
    assert len({e["transaction_id"] for e in events}) == len(events)


def test_legs_and_request_ids(events: list[dict[str, Any]]) -> None:
    kong39 = [c for c in CALLS if c["meta"]["gateway"] == "kong39"]
    rids = {c["response_headers"]["x-kong-request-id"] for c in kong39}
    assert len(rids) == len(kong39)  # every call through the 3.9 gateway has its own id
    legs = Counter(
        (e["metadata"]["capture"]["legs"], e["metadata"]["capture"].get("kong_request_id") in rids)
        for e in events
    )
    proxied = [c for c in CALLS if c["meta"]["answered_by"] == "upstream"]
    by_gateway = Counter(c["meta"]["gateway"] for c in proxied)
    answered = Counter(c["meta"]["gateway"] for c in CALLS if c["meta"]["answered_by"] == "gateway")
    assert legs == {
        ("client+upstream", True): by_gateway["kong39"],
        ("client+upstream", False): by_gateway["kong34"],  # joined by timing: no id on that gateway
        ("client", True): answered["kong39"],
        ("client", False): answered["kong34"],
    }


def test_without_kong_ports_every_exchange_is_its_own_event(tmp_path: Path) -> None:
    events = replay(DEMO, tmp_path / "events.jsonl", "--kong-ports", "")
    proxied = sum(c["meta"]["answered_by"] == "upstream" for c in CALLS)
    assert len(events) == len(CALLS) + proxied
    assert {e["metadata"]["capture"]["legs"] for e in events} == {"single"}


def _upstream_packets_only(src: Path, dst: Path) -> int:
    """Copy the frames of the Kong -> service leg (TCP port 9000) into a new capture, as a tap there would."""
    decoder = Decoder(Limits(), Stats())
    kept = 0
    with src.open("rb") as fin, dst.open("wb") as fout:
        reader = dpkt.pcap.Reader(fin)
        writer = dpkt.pcap.Writer(fout, snaplen=65535, linktype=reader.datalink())
        for ts, frame in reader:
            seg = decoder.decode(float(ts), reader.datalink(), frame)
            if seg is not None and 9000 in (seg.sport, seg.dport):
                writer.writepkt(frame, ts=ts)
                kept += 1
    return kept


def test_capture_of_the_upstream_leg_only(tmp_path: Path) -> None:
    pcap = tmp_path / "upstream-only.pcap"
    assert _upstream_packets_only(DEMO, pcap) > 0
    events = replay(pcap, tmp_path / "events.jsonl")
    proxied = [c for c in CALLS if c["meta"]["answered_by"] == "upstream"]
    extra, missing = unmatched(events, proxied)
    assert extra == [] and missing == []
    assert {e["metadata"]["capture"]["legs"] for e in events} == {"upstream"}
