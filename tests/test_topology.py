"""The live gateway topology (root only): nginx-as-Kong between real clients and a real upstream.

`test_gateway_*` check the emulation itself from what the client and the upstream saw, so a broken
topology is told apart from a broken sniffer. `test_live_*` capture real calls with tcpdump inside the
gateway namespace, replay the capture with `python -m sniffer replay`, and hold the events against the
client's own log: exactly one event per call made, with the user and company the Kong plugin would
compute, and the status and bodies the client saw.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from topology.gateway import CONSUMERS, JWT_SUB
from topology.net import Topology
from topology.plans import burst_plan, call, connection, demo_plan
from topology.skips import topology_skip_reason
from topology.verify import replay, unmatched

pytestmark = pytest.mark.skipif(topology_skip_reason() is not None, reason=str(topology_skip_reason()))


@pytest.fixture(scope="module")
def topo() -> Iterator[Topology]:
    with Topology() as t:
        yield t
    t.remove_workdir()


@pytest.fixture(scope="module")
def demo_run(topo: Topology) -> tuple[Path, list[dict[str, Any]], dict[str, Any]]:
    plan = demo_plan()
    pcap = topo.workdir / "demo.pcap"
    with topo.capture(pcap):
        log = topo.run_client(plan)
    return pcap, log, plan


def test_gateway_answers_every_planned_call(
    demo_run: tuple[Path, list[dict[str, Any]], dict[str, Any]],
) -> None:
    pcap, log, plan = demo_run
    planned = sum(len(c["calls"]) for c in plan["connections"])
    assert len(log) == planned
    assert pcap.stat().st_size > 0
    for entry in log:
        meta = entry["meta"]
        if meta["answered_by"] == "gateway":
            assert entry["status"] in (401, 404)
            assert "via" not in entry["response_headers"]
            assert entry["response_headers"]["x-kong-response-latency"] == "0"
            assert "message" in entry["response_body"]
        else:
            assert entry["status"] in (200, 201, 404)
            assert entry["response_headers"]["via"] == "1.1 kong/3.9.0"
        has_rid = "x-kong-request-id" in entry["response_headers"]
        assert has_rid == (meta["gateway"] == "kong39")


def test_gateway_sets_kong_upstream_headers(topo: Topology) -> None:
    plan = {
        "connections": [
            connection([call("GET", "/api/whoami", name) for name in CONSUMERS]),
            connection(
                [call("GET", "/api/whoami", "jwt"), call("GET", "/svc/api/whoami?x=1", "bob")], port=8001
            ),
        ]
    }
    log = topo.run_client(plan)
    assert len(log) == len(CONSUMERS) + 2
    for entry in log:
        seen = {k.lower(): v for k, v in entry["response_body"]["headers"].items()}
        user = entry["meta"]["user"]
        assert seen["via"] == "1.1 kong/3.9.0"
        assert seen["x-forwarded-for"] == entry["source"] == seen["x-real-ip"]
        assert seen["x-forwarded-port"] == str(entry["port"])
        if entry["port"] == 8000:
            assert seen["x-kong-request-id"] == entry["response_headers"]["x-kong-request-id"]
        else:
            assert "x-kong-request-id" not in seen
        if user == "jwt":
            assert not any(k.startswith("x-consumer-") for k in seen)
            assert entry["meta"]["user_id"] == JWT_SUB
            continue
        consumer = CONSUMERS[user]
        assert seen["x-consumer-id"] == consumer.id
        assert seen.get("x-consumer-username") == consumer.username
        assert seen.get("x-consumer-custom-id") == consumer.custom_id
        assert seen["x-credential-identifier"] == consumer.credential_id
        if entry["path"].startswith("/svc/"):
            assert entry["response_body"]["path"] == "/api/whoami?x=1"
            assert seen["x-forwarded-prefix"] == "/svc"
            assert seen["x-forwarded-path"] == "/svc/api/whoami"


def _legs(events: list[dict[str, Any]]) -> Counter[str]:
    return Counter(e["metadata"]["capture"]["legs"] for e in events)


def test_live_demo_one_event_per_call(demo_run: tuple[Path, list[dict[str, Any]], dict[str, Any]]) -> None:
    pcap, log, _ = demo_run
    events = replay(pcap, pcap.with_suffix(".jsonl"))
    extra, missing = unmatched(events, log)
    assert extra == [] and missing == []
    answered = sum(c["meta"]["answered_by"] == "gateway" for c in log)
    assert _legs(events) == {"client+upstream": len(log) - answered, "client": answered}


def test_live_200_calls_over_20_concurrent_connections(topo: Topology) -> None:
    """Both gateways (with and without request ids), IPv4 and IPv6, few upstream keep-alive connections."""
    pcap = topo.workdir / "burst.pcap"
    with topo.capture(pcap):
        log = topo.run_client(burst_plan(20, 10))
    assert len(log) == 200
    events = replay(pcap, pcap.with_suffix(".jsonl"))
    extra, missing = unmatched(events, log)
    assert extra == [] and missing == []
    assert len(events) == 200
    assert len({e["transaction_id"] for e in events}) == 200
    answered = sum(c["meta"]["answered_by"] == "gateway" for c in log)
    assert _legs(events) == {"client+upstream": 200 - answered, "client": answered}
    assert len({(c["source"], c["local_port"]) for c in log}) == 20
    # The upstream keep-alive pool is shared: upstream connections carried calls of several clients.
    served: dict[str, set[str]] = {}
    for e in events:
        m = e["metadata"]["capture"]
        if m["legs"] == "client+upstream":
            served.setdefault(m["upstream_connection"], set()).add(m["client"])
    assert max(len(clients) for clients in served.values()) > 1


def test_live_capture_of_the_upstream_leg_only(topo: Topology) -> None:
    """tcpdump on the gateway's service-side interface only: each proxied call from its upstream leg."""
    plan = burst_plan(6, 5, seed=11)
    pcap = topo.workdir / "upstream-only.pcap"
    with topo.capture(pcap, interface=topo.veth_gw_upstream):
        log = topo.run_client(plan)
    proxied = [c for c in log if c["meta"]["answered_by"] == "upstream"]
    assert 0 < len(proxied) < len(log)
    events = replay(pcap, pcap.with_suffix(".jsonl"))
    extra, missing = unmatched(events, proxied)
    assert extra == [] and missing == []
    assert _legs(events) == {"upstream": len(proxied)}
