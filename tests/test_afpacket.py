"""The TPACKET_V3 ring and its BPF filter on real loopback traffic: kernel filtering (checked with the
kernel's own counters), loopback duplicates, fanout by flow, PACKET_STATISTICS drops, and the capture
loop's clock behind a backlog."""

from __future__ import annotations

import http.client
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from reassembly.decode import Decoder
from reassembly.limits import Limits
from reassembly.pipeline import Pipeline
from reassembly.stats import Stats
from sniffer.capture.afpacket import LINKTYPE_RAW, RingSocket, interface_names
from sniffer.capture.bpf import BPF_MAXINSNS, port_ranges, tcp_port_filter
from sniffer.capture.workers import IDLE_LAG_S, TEST_RING_ENV, CaptureLoop, open_ring_sets
from sniffer.config import Config
from sniffer.errors import CaptureError

root = pytest.mark.skipif(os.geteuid() != 0, reason="AF_PACKET capture needs root (CAP_NET_RAW)")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = f"hello {self.path}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server6(ThreadingHTTPServer):
    import socket as _s

    address_family = _s.AF_INET6


@contextmanager
def http_server(host: str = "127.0.0.1") -> Iterator[int]:
    cls = _Server6 if ":" in host else ThreadingHTTPServer
    httpd = cls((host, 0), _Handler)
    httpd.daemon_threads = True
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield int(httpd.server_address[1])
    finally:
        httpd.shutdown()
        httpd.server_close()


def get(host: str, port: int, path: str = "/") -> None:
    """One GET on its own connection."""
    conn = http.client.HTTPConnection(host, port, timeout=5)
    conn.request("GET", path)
    assert conn.getresponse().read()
    conn.close()


def walk_all(ring: RingSocket, settle_s: float = 0.25) -> list[tuple[float, bytes, int]]:
    """Everything the ring holds once its current block was retired."""
    time.sleep(settle_s)
    out: list[tuple[float, bytes, int]] = []
    ring.walk(lambda ts, lt, frame, wire: out.append((ts, frame, wire)))
    return out


def ports_of(frames: list[tuple[float, bytes, int]]) -> list[tuple[int, int]]:
    dec = Decoder(Limits(), Stats())
    out = []
    for ts, frame, wire in frames:
        seg = dec.decode(ts, LINKTYPE_RAW, frame, wire)
        assert seg is not None, "only TCP passes the filter"
        out.append((seg.sport, seg.dport))
    return out


def test_port_ranges_merge_neighbours() -> None:
    assert port_ranges([80, 8000, 8001, 8002, 443, 81, 8002]) == [(80, 81), (443, 443), (8000, 8002)]


def test_filter_sizes_and_the_kernel_cap() -> None:
    assert len(tcp_port_filter(())) < len(tcp_port_filter([8000])) < len(tcp_port_filter([8000, 9000]))
    # a contiguous range costs one instruction more than one port, in each of the 4 port checks
    assert len(tcp_port_filter(range(8000, 9001))) == len(tcp_port_filter([8000])) + 4
    big = tcp_port_filter(range(1, 800, 2))  # 400 ports, 3,200+ instructions: jumps still fit 8 bits
    assert len(big) <= BPF_MAXINSNS and all(jt <= 255 and jf <= 255 for _, jt, jf, _ in big)
    with pytest.raises(ValueError, match="instructions"):
        tcp_port_filter(range(1, 4000, 2))


def test_unknown_interface_is_a_capture_error() -> None:
    with pytest.raises(CaptureError, match="nosuch0"):
        interface_names("lo,nosuch0")
    assert interface_names("any") == [None]
    assert interface_names("lo, lo") == ["lo"]


@root
def test_ring_captures_only_the_configured_ports_ipv4_and_ipv6() -> None:
    with http_server() as wanted, http_server() as other, http_server("::1") as wanted6:
        filtered = RingSocket("lo", tcp_port_filter([wanted, wanted6]))
        everything = RingSocket("lo", tcp_port_filter(()))
        try:
            for i in range(3):
                get("127.0.0.1", wanted, f"/w{i}")
                get("127.0.0.1", other, f"/o{i}")
            for i in range(2):
                get("::1", wanted6, f"/six{i}")
            got = walk_all(filtered)
            seen = walk_all(everything, 0)
            pipeline = Pipeline()
            exchanges = [ex for ts, frame, wire in got for ex in pipeline.feed(ts, LINKTYPE_RAW, frame, wire)]
            exchanges += pipeline.close()
            packets, _, _ = filtered.read_kernel_stats()
        finally:
            filtered.close()
            everything.close()
    assert sorted(ex.request.target for ex in exchanges) == [b"/six0", b"/six1", b"/w0", b"/w1", b"/w2"]
    assert all(ex.response is not None and ex.response.status == 200 for ex in exchanges)
    mine = {wanted, wanted6}
    ours = [p for p in ports_of(seen) if mine & set(p)]
    foreign = [p for p in ports_of(seen) if other in p]
    assert foreign, "the unfiltered ring saw the other port's traffic"
    assert len(got) == len(ours), "the filtered ring got exactly the configured ports' packets"
    # PACKET_STATISTICS counts what passed the filter: one loopback copy of each of our packets, and
    # not one packet of the other port (dropped in the kernel, before the ring).
    assert packets == len(got) and filtered.loopback_duplicates == 0


@root
def test_loopback_outgoing_copies_are_dropped_in_the_kernel_on_lo_and_any() -> None:
    with http_server() as port:
        on_lo = RingSocket("lo", tcp_port_filter([port]))
        on_any = RingSocket(None, tcp_port_filter([port]))
        both = RingSocket("lo", tcp_port_filter([port], loopback_outgoing=True))  # the walk skips them
        try:
            for i in range(4):
                get("127.0.0.1", port, f"/{i}")
            lo_frames = walk_all(on_lo)
            any_frames = walk_all(on_any, 0)
            both_frames = walk_all(both, 0)
            counts = [r.read_kernel_stats()[0] for r in (on_lo, on_any, both)]
        finally:
            on_lo.close()
            on_any.close()
            both.close()
    n = len(lo_frames)
    assert n > 0 and len({f for _, f, _ in lo_frames}) == n, "no packet twice"
    assert counts == [n, n, 2 * n], "the kernel saw each packet twice and passed one copy"
    assert on_lo.loopback_duplicates == on_any.loopback_duplicates == 0
    assert both.loopback_duplicates == n
    assert [f for _, f, _ in lo_frames] == [f for _, f, _ in any_frames] == [f for _, f, _ in both_frames]


@root
def test_fanout_gives_each_flow_to_one_socket() -> None:
    with http_server() as port:
        program = tcp_port_filter([port])
        a = RingSocket("lo", program)
        b = RingSocket("lo", program)
        try:
            group = a.join_fanout(None)
            assert b.join_fanout(group) == group
            for i in range(40):
                get("127.0.0.1", port, f"/{i}")
            flows_a = {frozenset(p) for p in ports_of(walk_all(a))}
            flows_b = {frozenset(p) for p in ports_of(walk_all(b, 0))}
        finally:
            a.close()
            b.close()
    assert len(flows_a | flows_b) == 40
    assert not flows_a & flows_b, "both directions of a flow reach the same socket"
    assert flows_a and flows_b, f"the hash split 40 flows {len(flows_a)}/{len(flows_b)}"


@root
def test_packet_statistics_report_ring_overflow_drops_and_reset_on_read() -> None:
    with http_server() as port:
        ring = RingSocket("lo", tcp_port_filter([port]), block_size=4096, block_count=2, retire_ms=1)
        try:
            for i in range(30):
                get("127.0.0.1", port, f"/{i}")  # nothing walks the ring meanwhile
            time.sleep(0.05)
            packets, drops, _ = ring.read_kernel_stats()
            again = ring.read_kernel_stats()
            kept = len(walk_all(ring, 0))
        finally:
            ring.close()
    assert drops > 0 and packets > drops
    assert again[:2] == (0, 0), "the kernel resets its counters on every read"
    assert (ring.kernel_packets, ring.kernel_drops) == (packets, drops)
    # what was not dropped is what the two small blocks held
    assert 0 < kept <= packets - drops


def _is_pure_ack(frame: bytes) -> bool:
    seg = Decoder(Limits(), Stats()).decode(0.0, LINKTYPE_RAW, frame, len(frame))
    assert seg is not None
    return not seg.payload and not seg.flags & 0x07


@root
def test_pure_acks_can_be_dropped_in_the_kernel_and_the_exchanges_stay_the_same() -> None:
    with http_server() as port, http_server("::1") as port6:
        ports = [port, port6]
        every = RingSocket("lo", tcp_port_filter(ports))
        lean = RingSocket("lo", tcp_port_filter(ports, drop_pure_acks=True))
        lean_all_ports = RingSocket("lo", tcp_port_filter((), drop_pure_acks=True))
        try:
            for i in range(3):
                get("127.0.0.1", port, f"/v4/{i}")
                get("::1", port6, f"/v6/{i}")
            # One settle for all three rings (the connections' last FIN/ACKs included), so a packet late
            # under load cannot land in a ring walked later and not in one walked earlier.
            full = walk_all(every, 1.0)
            kept = walk_all(lean, 0)
            kept_any = [f for f in walk_all(lean_all_ports, 0) if set(ports) & set(ports_of([f])[0])]
        finally:
            every.close()
            lean.close()
            lean_all_ports.close()
    acks = [f for _, f, _ in full if _is_pure_ack(f)]
    assert acks, "the handshake's third packet at least is a pure ACK"
    assert [f for _, f, _ in kept] == [f for _, f, _ in full if not _is_pure_ack(f)]
    assert [f for _, f, _ in kept_any] == [f for _, f, _ in kept]
    results = []
    for frames in (full, kept):
        pipeline = Pipeline()
        exchanges = [ex for ts, f, w in frames for ex in pipeline.feed(ts, LINKTYPE_RAW, f, w)]
        exchanges += pipeline.close()
        results.append(sorted((ex.request.target, ex.response.status) for ex in exchanges))  # type: ignore[union-attr]
    assert results[0] == results[1] and len(results[0]) == 6


@root
def test_a_tick_takes_the_wall_clock_only_once_the_walks_caught_up_with_the_ring() -> None:
    """Behind a backlog the clock is the newest packet walked, however old: the packets still in the ring
    come next, and timeouts run at the wall's time would expire what they continue."""
    with http_server() as port:
        ring = RingSocket("lo", tcp_port_filter([port]), block_size=4096, block_count=64, retire_ms=1)
        try:
            for i in range(30):
                get("127.0.0.1", port, f"/{i}")  # nothing walks the ring meanwhile: many released blocks
            time.sleep(IDLE_LAG_S + 0.3)  # every packet is now older than the wall clock minus the lag
            walked: list[float] = []
            loop = CaptureLoop([ring], lambda ts, lt, frame, wire: walked.append(ts))
            loop.run_once(0)  # at most 4 blocks
            assert not loop.caught_up and loop.backlog > 0
            clock, idle = loop.tick_clock(0.0)
            assert (clock, idle) == (walked[-1], False)
            assert clock < time.time() - IDLE_LAG_S - 0.2
            while not loop.caught_up:
                loop.run_once(0)
            assert ring.read_kernel_stats()[1] == 0, "the ring held every packet"
            before = time.time()
            clock, idle = loop.tick_clock(walked[-1])
            assert idle and before - IDLE_LAG_S <= clock <= time.time() - IDLE_LAG_S
            assert loop.tick_clock(clock + 60) == (clock + 60, False), "a clock ahead of the wall stays"
        finally:
            ring.close()
    assert len(walked) > 30 * 8 // 2, "the walks saw the connections' packets"


@root
def test_the_ring_size_is_sniffer_ring_mb_per_worker_and_interface(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TEST_RING_ENV, raising=False)
    config = Config.load(None, {"SNIFFER_RING_MB": "3", "SNIFFER_INTERFACE": "lo", "SNIFFER_PORTS": "18080"})
    sets = open_ring_sets(config, 2)
    try:
        assert [len(rings) for rings in sets] == [1, 1]
        for rings in sets:
            ring = rings[0]
            assert ring.block_count == 3
            assert ring._mm is not None and len(ring._mm) == 3 << 20  # what the kernel mapped
    finally:
        for rings in sets:
            for ring in rings:
                ring.close()
