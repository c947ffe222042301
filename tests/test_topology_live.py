"""The capture daemon live on the gateway (root only): `moesif-sniffer run` inside the gw namespace.

The daemon captures on gw's interfaces (`any`, or the two veths as a list) while real clients call the
nginx-as-Kong gateway: the demo plan (every case: both gateways, with and without request ids, keep-alive,
gzip, chunked, strip_path, 401s and 404s answered by the gateway, IPv4 and IPv6) and a burst of 100
calls over 10 concurrent connections. Then SIGTERM. Held against the client's own log (`verify.unmatched`):
exactly one event per call, with the user and company the Kong plugin would compute, and the status and
bodies the client saw. The metrics endpoint, scraped before SIGTERM, counts the same calls with no kernel
drop; the daemon and its workers run as a non-root user with no effective capability.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from topology.live import LiveSniffer, Metrics, live_sniffer
from topology.net import UPSTREAM_PORT, Topology
from topology.plans import burst_plan, demo_plan
from topology.skips import topology_skip_reason
from topology.verify import unmatched

pytestmark = pytest.mark.skipif(topology_skip_reason() is not None, reason=str(topology_skip_reason()))

METRICS_WAIT_S = 15.0  # worker counters reach the main process with their ticks (about 1 s)
NO_CAPS = "0000000000000000"
UPSTREAM_CONNECTIONS = ("ss", "-Htn", "state", "established", f"( dport = :{UPSTREAM_PORT} )")


@pytest.fixture(scope="module")
def topo() -> Iterator[Topology]:
    with Topology() as t:
        yield t
    t.remove_workdir()


def _privileges(sniffer: LiveSniffer) -> dict[int, dict[str, list[str]]]:
    keys = ("Name", "Uid", "Gid", "CapEff", "CapPrm")
    return {pid: {k: sniffer.status(pid)[k] for k in keys} for pid in sniffer.pids()}


def _expected(log: list[dict[str, Any]]) -> dict[str, int]:
    answered = sum(c["meta"]["answered_by"] == "gateway" for c in log)
    return {
        "calls": len(log),
        "answered": answered,
        "proxied": len(log) - answered,
        # a proxied call is two HTTP exchanges (client leg, upstream leg); one the gateway answered is one
        "exchanges": 2 * (len(log) - answered) + answered,
        "client_connections": len({(c["source"], c["local_port"]) for c in log}),
    }


def _settled(want: dict[str, int]) -> Any:
    def done(m: Metrics) -> bool:
        # kernel counters are read every 2 s: settled once they cover every packet handed to the core
        return (
            m["events"] >= want["calls"]
            and m["exchanges"] >= want["exchanges"]
            and m["kernel_packets"] >= m["packets"] + m["kernel_drops"] > 0
        )

    return done


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("workers", "interfaces"), [(1, "any"), (2, "veths")], ids=["1-worker-any", "2-workers-veth-list"]
)
def test_live_daemon_in_gw_reports_every_call_once(topo: Topology, workers: int, interfaces: str) -> None:
    interface = "any" if interfaces == "any" else f"{topo.veth_gw_client},{topo.veth_gw_upstream}"
    with live_sniffer(topo, workers=workers, interface=interface) as sniffer:
        privileges = _privileges(sniffer)
        # nginx's upstream keep-alive connections left by an earlier test: picked up mid-stream if reused
        kept = len(topo.gw_exec(*UPSTREAM_CONNECTIONS).splitlines())
        log = topo.run_client(demo_plan())
        log += topo.run_client(burst_plan(10, 10, seed=23))
        want = _expected(log)
        m = sniffer.wait_metrics(_settled(want), METRICS_WAIT_S)
        ready, healthy = sniffer.get("/readyz")[0], sniffer.get("/healthz")[0]
        status = sniffer.stop()
        events = sniffer.events()
        records = sniffer.log_records()
        log_tail = sniffer.log_tail()
    print(
        f"\n{workers} worker(s) on {interface}: {want['calls']} calls ({want['answered']} answered by the "
        f"gateway, {want['client_connections']} client connections, {kept} upstream connections open before) "
        f"-> {len(events)} events; metrics before SIGTERM: {m.figures()}"
    )

    # First: the load was gentle enough for the kernel to keep every packet (with drops any check below
    # could fail for that reason alone, and this says so).
    assert m["kernel_drops"] == 0, f"the kernel dropped packets: {m.figures()}"

    # The process: privileges dropped in the daemon and in every capture worker, graceful exit.
    assert len(privileges) == 1 + (workers if workers > 1 else 0), privileges
    for pid, f in privileges.items():
        assert all(int(u) != 0 for u in f["Uid"]), (pid, f)
        assert f["CapEff"] == f["CapPrm"] == [NO_CAPS], (pid, f)
    assert status == 0, log_tail
    messages = [r.get("message", "") for r in records]
    assert messages[-1] == "stopped", log_tail
    assert [r for r in records if r.get("level") != "info"] == [], log_tail
    assert "running as uid 65534 gid 65534 with no capabilities" in messages
    # the last summary, written after the drain and the engine's close, tells the same as the scrape;
    # only the packet count may have grown: a late ACK or FIN can arrive between the scrape and SIGTERM
    # (with workers, followed by how they split the packets, which add up to the summary's count)
    by_worker = [msg for msg in messages if msg.startswith("by worker: ")]
    assert len(by_worker) == (1 if workers > 1 else 0), log_tail
    packets, _, rest = messages[-2 - len(by_worker)].partition(" packets, ")
    assert packets.isdigit() and int(packets) >= m["packets"], log_tail
    summary = f"0 kernel drops, {m['flows']:.0f} flows, "
    summary += f"{m['exchanges']:.0f} exchanges, {m['events']:.0f} events (0 partial)"
    assert rest == summary, _partial_events(events) + log_tail
    if by_worker:
        counts, drops, waits = by_worker[0].removeprefix("by worker: ").split(", ")
        assert sum(int(n) for n in counts.removesuffix(" packets").split(" / ")) == int(packets), log_tail
        assert drops == " / ".join(["0"] * workers) + " kernel drops", log_tail
        # each worker's time blocked handing its messages to the main process: a gentle load, short
        waits_s = [float(s) for s in waits.removesuffix(" s waiting on the main process").split(" / ")]
        assert len(waits_s) == workers and all(0 <= s < 5 for s in waits_s), log_tail

    # The client's side of the run: the planned cases really happened.
    assert want["calls"] == sum(len(c["calls"]) for c in demo_plan()["connections"]) + 100
    statuses = Counter(c["status"] for c in log)
    assert statuses[401] > 0 and statuses[404] > 0 and statuses[200] > 0
    assert any(":" in c["source"] for c in log) and any(":" not in c["source"] for c in log)

    # The metrics, scraped before SIGTERM.
    assert m["packets"] > 0
    assert m["kernel_packets"] == m["packets"] + m["loopback_duplicates"], m.figures()
    assert m["exchanges"] == want["exchanges"], m.figures()
    assert m["events"] == want["calls"], m.figures()
    assert m["events_partial"] == 0, _partial_events(events)
    assert m["workers"] == workers
    assert m["capture_open"] == 1
    assert ready == healthy == 200
    assert m.core.get("kong_join_request_id", 0) + m.core.get("kong_join_timing", 0) == want["proxied"]
    assert m.core.get("kong_answered_by_gateway", 0) == want["answered"]
    assert m.core.get("kong_upstream_only", 0) == 0
    gaps = {k: v for k, v in m.core.items() if k.startswith("gap_") and v}
    assert gaps.pop("gap_midstream", 0) <= 2 * kept and gaps == {}, (kept, gaps)

    # The events: exactly one per call, identity and payloads as the client and the plugin have them.
    extra, missing = unmatched(events, log)
    assert extra == [] and missing == []
    assert len(events) == want["calls"]
    assert len({e["transaction_id"] for e in events}) == want["calls"]
    legs = Counter(e["metadata"]["capture"]["legs"] for e in events)
    assert legs == {"client+upstream": want["proxied"], "client": want["answered"]}
    upstream_connections = {
        e["metadata"]["capture"]["upstream_connection"]
        for e in events
        if "upstream_connection" in e["metadata"]["capture"]
    }
    assert m["flows"] == want["client_connections"] + len(upstream_connections), m.figures()


def _partial_events(events: list[dict[str, Any]]) -> str:
    """What a failure needs to tell why: the partial events (those with capture flags) and the calls
    whose legs did not join, briefly."""
    lines = []
    for e in events:
        capture = e["metadata"]["capture"]
        if "flags" in capture or capture["legs"] not in ("client+upstream", "client"):
            request, status = e["request"], e.get("response", {}).get("status")
            lines.append(
                f"{request.get('verb')} {request.get('uri')} -> {status}: legs={capture['legs']} "
                f"flags={capture.get('flags')} upstream_flags={capture.get('upstream_flags')} "
                f"connection={capture.get('connection')} upstream={capture.get('upstream_connection')} "
                f"kong_request_id={capture.get('kong_request_id')}"
            )
    return "partial or unjoined events:\n" + "\n".join(lines) + "\n"
