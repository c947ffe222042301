"""Load shedding: the level policy fed measurements (rise, hold, step down, off), the flow sampler on
real crafted packets in front of a real engine (fates for a flow's life, both directions, weights that
keep counts right), and body shedding in the engine."""

from __future__ import annotations

from typing import Any

import pytest
from helpers import ListSink, tcp_conversation
from scapy.layers.inet import IP
from scapy.layers.inet6 import IPv6

from reassembly.stats import Stats
from sniffer.config import Config
from sniffer.engine import Engine, make_pipeline
from sniffer.load_shedding import LEVELS, FlowSampler, Pressure, ShedPolicy

HOT = Pressure(kernel_drops=5)
CALM = Pressure()
MIDDLE = Pressure(ring_backlog=0.25)  # neither pressured nor calm


def raw(packets: list[Any]) -> list[tuple[float, int, bytes, int]]:
    """What the AF_PACKET ring hands over: IP packets, link type RAW."""
    out = []
    for p in packets:
        ip = bytes(p[IPv6] if IPv6 in p else p[IP])
        out.append((float(p.time), 101, ip, len(ip)))
    return out


def conversation(i: int, *, ipv6: bool = False, handshake: bool = True, body: bytes = b"") -> list[Any]:
    req = b"POST /c/%d HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
    resp = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"ok": "y"}'
    return tcp_conversation(
        [req % (i, len(body)) + body],
        [resp],
        client=(f"10.1.{i // 250}.{i % 250 + 1}", 30000 + i),
        server=("10.0.0.2", 8080),
        ts0=1_700_000_000.0 + i * 0.01,
        ipv6=ipv6,
        handshake=handshake,
    )


# ---- policy ----


def test_pressure_raises_one_level_per_tick_up_to_the_last_and_holds_there() -> None:
    policy = ShedPolicy()
    seen = [policy.observe(HOT) for _ in range(len(LEVELS) + 3)]
    assert seen[: len(LEVELS) - 1] == list(range(1, len(LEVELS)))
    assert seen[len(LEVELS) - 1 :] == [None] * 4
    assert policy.level is LEVELS[-1] and policy.changes == len(LEVELS) - 1
    assert not LEVELS[1].bodies and LEVELS[1].sample == 1
    assert [lv.sample for lv in LEVELS[2:]] == [2, 4, 8, 16]


@pytest.mark.parametrize(
    "pressure",
    [Pressure(ring_backlog=0.5), Pressure(kernel_drops=1), Pressure(queue_fill=0.9)],
    ids=["ring_backlog", "kernel_drops", "sender_queue"],
)
def test_each_signal_alone_is_pressure(pressure: Pressure) -> None:
    policy = ShedPolicy()
    assert policy.observe(pressure) == 1


def test_steps_down_only_after_calm_ticks_in_a_row_and_middle_readings_hold() -> None:
    policy = ShedPolicy(calm_after=3)
    for _ in range(3):
        policy.observe(HOT)
    assert policy.index == 3
    # calm, calm, then a middle reading: the calm run starts again
    assert [policy.observe(x) for x in (CALM, CALM, MIDDLE, CALM, CALM)] == [None] * 5
    assert policy.index == 3
    assert policy.observe(CALM) == 2  # third calm tick in a row
    for _ in range(100):
        policy.observe(MIDDLE)
    assert policy.index == 2  # hysteresis: between the thresholds nothing moves
    assert policy.observe(HOT) == 3  # pressure again: up at once
    steps = [policy.observe(CALM) for _ in range(9)]
    assert [s for s in steps if s is not None] == [2, 1, 0] and policy.index == 0
    assert policy.observe(CALM) is None


def test_rise_after_needs_consecutive_pressured_ticks() -> None:
    policy = ShedPolicy(rise_after=2)
    assert [policy.observe(x) for x in (HOT, MIDDLE, HOT, HOT, HOT, HOT)] == [None, None, None, 1, None, 2]


def test_disabled_policy_never_sheds() -> None:
    policy = ShedPolicy(enabled=False)
    assert all(policy.observe(HOT) is None for _ in range(20))
    assert policy.index == 0 and policy.level.bodies


def test_shed_is_on_by_default_and_off_by_env() -> None:
    assert Config().shed is True
    assert Config.load(None, {"SNIFFER_SHED": "off"}).shed is False


# ---- flow sampler in front of a real engine ----


def run(
    frames: list[tuple[float, int, bytes, int]], rate_at: dict[int, int], **engine: Any
) -> tuple[Engine, FlowSampler, ListSink]:
    """Feed `frames` through a sampler into an engine; the sampler's rate changes at the given frame
    indexes (the handler installed only while the sampler is active, as the daemon does)."""
    sink = ListSink()
    eng = Engine(Config(ports=(8080,), kong_ports=()), sink, Stats())
    eng.shed_bodies = engine.get("shed_bodies", False)
    sampler = FlowSampler(eng.stats, eng.flow_weights)
    handle = eng.feed
    for i, f in enumerate(frames):
        if i in rate_at:
            sampler.rate = rate_at[i]
            handle = sampler.wrap(eng.feed) if sampler.active else eng.feed
        handle(*f)
    eng.close()
    return eng, sampler, sink


@pytest.mark.parametrize("ipv6", [False, True], ids=["ipv4", "ipv6"])
def test_sampled_flows_are_whole_or_absent_and_weights_keep_the_count(ipv6: bool) -> None:
    n = 400
    frames = [f for i in range(n) for f in raw(conversation(i, ipv6=ipv6))]
    eng, _, sink = run(frames, {0: 4})
    kept = eng.stats["shed_flows_sampled_in"]
    assert kept + eng.stats["shed_flows_sampled_out"] == n
    assert 0.15 * n < kept < 0.35 * n  # a hash of the endpoints: about 1 in 4
    assert len(sink.events) == kept
    for e in sink.events:  # whole: request and response, nothing partial
        assert e["response"]["status"] == 200 and e["weight"] == 4
        assert e["metadata"]["capture"]["sampled_1_in"] == 4 and "flags" not in e["metadata"]["capture"]
    assert sum(e["weight"] for e in sink.events) == 4 * kept
    assert eng.stats["shed_packets_sampled_out"] == (n - kept) * len(frames) // n
    assert eng.stats["exchanges"] == kept  # the core never saw a sampled-out packet


def test_a_flow_keeps_its_fate_when_the_rate_changes_and_older_flows_are_never_sampled() -> None:
    old = raw(conversation(0))  # started before sampling: its SYN went by at rate 1
    flows = [raw(conversation(i)) for i in range(1, 200)]
    # old's handshake, then every new flow's SYN at 1 in 2, then the rate goes to 16 and back to 1
    # while the rest of every flow (old's included) is still to come
    frames = old[:3] + [f[0] for f in flows] + [f for fl in flows for f in fl[1:]] + old[3:]
    change = 3 + len(flows)
    eng, sampler, sink = run(frames, {3: 2, change: 16, change + 50: 1})
    kept = eng.stats["shed_flows_sampled_in"]
    assert kept + eng.stats["shed_flows_sampled_out"] == len(flows)
    uris = sorted(e["request"]["uri"].rsplit("/", 1)[1] for e in sink.events)
    assert "0" in uris  # the old flow, untouched
    weighted = [e for e in sink.events if e.get("weight", 1) == 2]
    assert len(weighted) == kept and len(sink.events) == kept + 1
    assert all("flags" not in e["metadata"]["capture"] for e in sink.events)
    assert sampler.active  # rate 1 again, but the fates still hold until the flows go idle
    assert sampler.expire(max(f[0] for f in frames) - 1) == 0 and sampler.active
    assert sampler.expire(max(f[0] for f in frames) + 121) == len(flows) and not sampler.active
    assert not eng.flow_weights


_RID = b"X-Kong-Request-Id: r%d\r\n"


def _kong_upstream(route: str, n: int, ts0: float) -> list[Any]:
    """Kong's keep-alive connection to its service (10.0.0.5 -> 10.0.0.9:9000): the upstream legs of
    calls 0..n-1 to /`route`/i, each with its request id."""
    return tcp_conversation(
        [
            b"GET /%s/%d HTTP/1.1\r\nHost: svc\r\nVia: 1.1 kong/3.9.0\r\n" % (route.encode(), i)
            + _RID % i
            + b"\r\n"
            for i in range(n)
        ],
        [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"] * n,
        client=("10.0.0.5", 50000),
        server=("10.0.0.9", 9000),
        ts0=ts0,
    )


@pytest.mark.parametrize("opened", ["before", "while"], ids=["upstream-before", "upstream-while-sampling"])
def test_kong_calls_are_counted_once_when_client_connections_are_sampled(opened: str) -> None:
    # 1 in 4 client connections (one call each) is kept. Kong's upstream keep-alive connection is kept
    # whole, whether it was open before sampling began or opened while sampling (from Kong's address,
    # seen serving port 8000): every call's upstream leg is seen. A call whose client leg was sampled
    # out comes out from its upstream leg alone, so the joined calls must not weigh 4 as well: a call
    # weighs what its upstream leg's flow weighs (1 here), else its client's.
    n = 200
    rid = _RID
    upstream = _kong_upstream("u", n, 1_700_000_000.0)
    clients = [
        p
        for i in range(n)
        for p in tcp_conversation(
            [b"GET /u/%d HTTP/1.1\r\nHost: api\r\n\r\n" % i],
            [b"HTTP/1.1 200 OK\r\n" + rid % i + b"Via: 1.1 kong/3.9.0\r\nContent-Length: 2\r\n\r\nok"],
            client=(f"10.1.{i // 250}.{i % 250 + 1}", 30000 + i),
            server=("10.0.0.5", 8000),
            ts0=1_700_000_000.01 + i * 0.004,
        )
    ]
    # A client's SYN to port 8000 first, so Kong's address is known when its own connection opens.
    clients[0].time = upstream[0].time - 0.001
    frames = sorted(raw(upstream + clients), key=lambda f: f[0])
    start = 0 if opened == "while" else 4  # the first client SYN and the upstream handshake go by
    sink = ListSink()
    config = Config(kong_ports=(8000,))
    eng = Engine(config, sink, Stats())
    sampler = FlowSampler.of(config, eng.stats, eng.flow_weights)  # as the daemon and its workers make it
    handle = eng.feed
    for i, f in enumerate(frames):
        if i == start:
            sampler.rate = 4
            handle = sampler.wrap(eng.feed)
        handle(*f)
    eng.close()
    kept = eng.stats["shed_flows_sampled_in"]
    clients_sampled = n if opened == "while" else n - 1
    assert kept + eng.stats["shed_flows_sampled_out"] == clients_sampled and 0.15 * n < kept < 0.35 * n
    assert eng.stats["shed_flows_kong_upstream"] == (opened == "while")
    legs = sorted(e["metadata"]["capture"]["legs"] for e in sink.events)
    joined = kept + (opened == "before")  # the first client connection went by before sampling then
    assert legs == ["client+upstream"] * joined + ["upstream"] * (n - joined)
    assert sum(e.get("weight", 1) for e in sink.events) == n  # each call once, none twice


def test_kongs_new_upstream_connection_is_kept_when_sampling_began_after_its_clients_connected() -> None:
    # A client's keep-alive connection to Kong's proxy port was open before sampling began, and no client
    # connects while sampling: no SYN to port 8000 comes. The connection Kong then opens to its service
    # must still be known as Kong's (learnt from the live flows as sampling begins, `set_rate`, as the
    # daemon and its workers call it) and kept whole: every call joined, none weighed or lost.
    n = 30
    rid = _RID
    client = tcp_conversation(
        [b"GET /k/%d HTTP/1.1\r\nHost: api\r\n\r\n" % i for i in range(n)],
        [
            b"HTTP/1.1 200 OK\r\n" + rid % i + b"Via: 1.1 kong/3.9.0\r\nContent-Length: 2\r\n\r\nok"
            for i in range(n)
        ],
        client=("10.1.0.1", 30000),
        server=("10.0.0.5", 8000),
        ts0=1_700_000_000.0,
    )
    upstream = _kong_upstream("k", n, 1_700_000_000.05)  # its SYN while sampling, after the first calls
    frames = sorted(raw(client + upstream), key=lambda f: f[0])
    start = next(i for i, f in enumerate(frames) if f[0] >= 1_700_000_000.04)
    sink = ListSink()
    config = Config(kong_ports=(8000,))
    eng = Engine(config, sink, Stats())
    sampler = FlowSampler.of(config, eng.stats, eng.flow_weights)
    handle = eng.feed
    for i, f in enumerate(frames):
        if i == start:
            sampler.set_rate(16, eng.pipeline)
            handle = sampler.wrap(eng.feed)
        handle(*f)
    eng.close()
    assert eng.stats["shed_flows_kong_upstream"] == 1
    assert eng.stats["shed_flows_sampled_in"] == eng.stats["shed_flows_sampled_out"] == 0
    assert [e["metadata"]["capture"]["legs"] for e in sink.events] == ["client+upstream"] * n
    assert all(e.get("weight", 1) == 1 and "flags" not in e["metadata"]["capture"] for e in sink.events)


def test_the_sampler_memory_is_capped_oldest_first() -> None:
    stats: Stats = Stats()
    weights: dict[Any, int] = {}
    sampler = FlowSampler(stats, weights, max_flows=50)
    sampler.rate = 2
    handle = sampler.wrap(lambda *a: None)
    for i in range(300):
        handle(*raw(conversation(i))[0])
    assert len(sampler) == 50 and stats["shed_sampler_evictions"] == 250
    assert len(weights) <= 50


def test_garbage_and_non_tcp_frames_pass_through_the_sampler() -> None:
    got: list[bytes] = []
    sampler = FlowSampler(Stats(), {})
    sampler.rate = 16
    handle = sampler.wrap(lambda ts, lt, frame, wl: got.append(frame))
    junk = [
        b"",
        b"\x45",
        b"\xff" * 60,
        bytes(IP(dst="10.0.0.9", proto=17) / (b"u" * 30)),
        b"\x60" + b"\0" * 60,
    ]
    for frame in junk:
        handle(0.0, 101, frame, len(frame))
    assert got == junk


# ---- body shedding ----


def test_body_shedding_keeps_the_metadata_and_counts_each_body() -> None:
    body = b'{"secret": "' + b"x" * 500 + b'"}'
    frames = [f for i in range(5) for f in raw(conversation(i, body=body))]
    _, _, normal = run(frames, {})
    eng, _, shed = run(frames, {}, shed_bodies=True)
    assert len(normal.events) == len(shed.events) == 5
    for a, b in zip(normal.events, shed.events, strict=True):
        assert "body" in a["request"] and "body" in a["response"]
        assert "body" not in b["request"] and "body" not in b["response"]
        assert b["metadata"]["capture"].pop("body_shed") is True
        for side in ("request", "response"):
            a[side].pop("body")
            a[side].pop("transfer_encoding")
        assert a == b  # everything else identical
    assert eng.stats["shed_bodies"] == 10


def test_reused_endpoints_are_decided_again_at_the_current_rate() -> None:
    first = [raw(conversation(i)) for i in range(40)]
    again = [raw(conversation(i)) for i in range(40)]  # the same endpoints, new connections
    for fl in again:
        fl[:] = [(ts + 10.0, lt, frame, wl) for ts, lt, frame, wl in fl]
    frames = [f for fl in first for f in fl] + [f for fl in again for f in fl]
    eng, sampler, sink = run(frames, {0: 2, len(frames) // 2: 1})
    kept = eng.stats["shed_flows_sampled_in"]
    assert 0 < kept < 40 and eng.stats["shed_flows_sampled_out"] == 40 - kept
    late = [e for e in sink.events if e["request"]["time"] >= "2023-11-14T22:13:30"]
    assert len(late) == 40 and all(e["weight"] == 1 for e in late)  # all kept, none weighted
    assert len(sink.events) == kept + 40 and not eng.flow_weights and not len(sampler)


def test_worker_weights_reach_events_and_a_reused_flow_weighs_1_again() -> None:
    # the main process's side with capture workers: exchanges arrive with {index: weight}
    pipeline = make_pipeline(Config(ports=(8080,), kong_ports=()), Stats())
    exchanges = [ex for f in raw(conversation(1)) + raw(conversation(2)) for ex in pipeline.feed(*f)]
    assert len(exchanges) == 2
    sink = ListSink()
    eng = Engine(Config(ports=(8080,), kong_ports=()), sink, Stats(), capture=False)
    eng.feed_exchanges(1.0, exchanges, {1: 8})
    eng.feed_exchanges(2.0, exchanges[1:], None)  # the same endpoints again, a flow kept whole
    eng.close()
    assert [e["weight"] for e in sink.events] == [1, 8, 1]
    assert not eng.flow_weights
