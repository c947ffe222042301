"""TlsStreams: TLS records -> exchanges -> the engine's Kong join, next to a packet-captured upstream leg.

The records are what the uprobes emit for nginx terminating client TLS on 10.77.1.2:8443; the socket
under each SSL object is resolved through a /proc tree laid out as the kernel does (fd symlink to
`socket:[inode]`, net/tcp lines). The upstream leg is real packets (scapy) through the real pipeline.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from helpers import ListSink, frames, tcp_conversation

from reassembly.stats import Stats
from sniffer.capture.tls.records import TlsBound, TlsData, TlsFreed, TlsRecord
from sniffer.capture.tls.sockets import SocketResolver
from sniffer.capture.tls.streams import TlsStreams, monotonic_to_epoch_offset
from sniffer.config import Config
from sniffer.engine import Engine

PID = 31337
T0 = 1_764_000_000.0
# epoch = monotonic + OFFSET, with T0 a little ahead of this machine's CLOCK_MONOTONIC: the sockets are
# looked up (now) before any of the records happened, as when the reader keeps up
OFFSET = 0.0


@pytest.fixture(autouse=True)
def _clock() -> None:
    """Each test's records start 10 s ahead of CLOCK_MONOTONIC (set per test: a suite takes minutes)."""
    global OFFSET
    OFFSET = T0 - (time.monotonic() + 10.0)


def hexaddr(ip: str, port: int) -> str:
    return "".join(f"{int(b):02X}" for b in reversed(ip.split("."))) + f":{port:04X}"


def fake_proc(
    root: Path, sockets: dict[int, tuple[tuple[str, int], tuple[str, int]]], stats: Stats
) -> SocketResolver:
    """/proc/PID/fd/<fd> -> socket:[<inode>] and /proc/PID/net/tcp listing them (inode = 7000 + fd)."""
    (root / str(PID) / "fd").mkdir(parents=True)
    (root / str(PID) / "net").mkdir()
    lines = [
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode"
    ]
    for i, (fd, (local, remote)) in enumerate(sockets.items()):
        os.symlink(f"socket:[{7000 + fd}]", root / str(PID) / "fd" / str(fd))
        lines.append(
            f"  {i}: {hexaddr(*local)} {hexaddr(*remote)} 01 00000000:00000000 00:00000000 00000000"
            f"     0        0 {7000 + fd} 1 0000000000000000 20 4 30 10 -1"
        )
    (root / str(PID) / "net" / "tcp").write_text("\n".join(lines) + "\n")
    (root / str(PID) / "net" / "tcp6").write_text(lines[0] + "\n")
    return SocketResolver(str(root), stats=stats)


def ns(t: float) -> int:
    """Epoch capture time `t` as the probes' CLOCK_MONOTONIC nanoseconds."""
    return round((t - OFFSET) * 1e9)


def tls_call(ssl: int, fd: int, t: float, request: bytes, response: bytes) -> list[TlsRecord]:
    return [
        TlsBound(PID, ssl, fd, ns(t)),
        TlsData(PID, ssl, True, ns(t + 0.001), len(request), request),
        TlsData(PID, ssl, False, ns(t + 0.010), len(response), response),
        TlsFreed(PID, ssl, ns(t + 0.011)),
    ]


GW = ("10.77.1.2", 8443)
ALICE = ("10.77.1.1", 50001)
MALLORY = ("10.77.1.1", 50002)


def test_offset_matches_the_clocks() -> None:
    offset = monotonic_to_epoch_offset()
    assert abs(time.monotonic() + offset - time.time()) < 0.01


def test_tls_client_leg_joins_packet_upstream_leg_and_401_stands_alone(tmp_path: Path) -> None:
    stats = Stats()
    resolver = fake_proc(tmp_path, {7: (GW, ALICE), 9: (GW, MALLORY)}, stats)
    tls = TlsStreams(stats=stats, resolver=resolver, epoch_offset=OFFSET)
    sink = ListSink()
    engine = Engine(Config(), sink, stats)

    rid = "5a1c0e2e7b0d4c3b9b5e000000000001"
    client_req = (
        b"GET /api/orders?page=2 HTTP/1.1\r\nHost: gw\r\napikey: key-alice-123\r\nUser-Agent: curl/8\r\n\r\n"
    )
    client_resp = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n"
        b"Via: 1.1 kong/3.9.0\r\nX-Kong-Request-Id: " + rid.encode() + b'\r\n\r\n{"ok":true}'
    )
    upstream_req = (
        b"GET /api/orders?page=2 HTTP/1.1\r\nHost: upstream\r\n"
        b"apikey: key-alice-123\r\nUser-Agent: curl/8\r\n"
        b"X-Forwarded-For: 10.77.1.1\r\nX-Forwarded-Port: 8443\r\nX-Real-IP: 10.77.1.1\r\n"
        b"Via: 1.1 kong/3.9.0\r\nX-Kong-Request-Id: " + rid.encode() + b"\r\n"
        b"X-Consumer-ID: 6f1f\r\nX-Consumer-Username: alice\r\nX-Consumer-Custom-ID: cust-alice-01\r\n\r\n"
    )
    upstream_resp = (
        b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"ok":true}'
    )
    denied_req = b"GET /api/orders HTTP/1.1\r\nHost: gw\r\napikey: wrong\r\n\r\n"
    denied_resp = (
        b"HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: 48\r\n"
        b'X-Kong-Response-Latency: 0\r\n\r\n{"message":"Invalid authentication credentials"}'
    )
    # The upstream leg on the wire, inside the client leg in time (T0+0.002 .. T0+0.008).
    packets = tcp_conversation(
        [upstream_req],
        [upstream_resp],
        client=("10.77.2.1", 41000),
        server=("10.77.2.2", 9000),
        ts0=T0 + 0.002,
    )
    for ts, linktype, frame, wire_len in frames(packets):
        engine.feed(ts, linktype, frame, wire_len)
    # Each connection read as it happens (its SSL_set_fd before it ended), in batches of records as the
    # ring buffer gives them; the second one reuses the freed SSL object's address.
    first, second = (
        tls_call(0x5500AA, 7, T0, client_req, client_resp),
        tls_call(0x5500AA, 9, T0 + 0.1, denied_req, denied_resp),
    )
    exchanges = tls.feed(first[:2]) + tls.feed(first[2:]) + tls.feed(second[:1]) + tls.feed(second[1:])
    assert [(e.client, e.server, e.response.status) for e in exchanges] == [  # type: ignore[union-attr]
        (ALICE, GW, 200),
        (MALLORY, GW, 401),
    ]
    engine.feed_exchanges(tls.last_ts, exchanges)
    engine.advance(T0 + 60)
    engine.close()

    assert len(sink.events) == 2
    ok, denied = sorted(sink.events, key=lambda e: e["response"]["status"])
    assert ok["user_id"] == "cust-alice-01"
    assert ok["request"]["uri"].endswith("/api/orders?page=2")
    assert denied["response"]["status"] == 401 and "user_id" not in denied
    assert stats["kong_join_request_id"] == 1
    assert stats["tls_socket_resolved"] == 2 and stats["tls_closed_freed"] == 2


def test_a_lookup_after_the_connection_ended_is_refuted_not_trusted(tmp_path: Path) -> None:
    """Read late, the fd of a freed SSL object may belong to the next connection already: the probes'
    timestamps show the SSL_free came before the lookup, so placeholders and a count instead of another
    connection's addresses. The next connection, looked up while it lives, gets its own."""
    stats = Stats()
    # fd 7 is MALLORY's socket now: ALICE's connection on fd 7 ended before its records were read
    tls = TlsStreams(
        stats=stats, resolver=fake_proc(tmp_path, {7: (GW, MALLORY)}, stats), epoch_offset=OFFSET
    )
    req = b"GET /api/orders HTTP/1.1\r\nHost: gw\r\n\r\n"
    resp = b"HTTP/1.1 204 No Content\r\n\r\n"
    late = [*tls_call(0x77, 7, T0, req, resp), TlsBound(PID, 0x78, 7, ns(T0 + 0.02))]
    looked_up = ns(T0 + 0.05)  # after all of them
    resolved = {0: ((GW, MALLORY), looked_up), 4: ((GW, MALLORY), looked_up)}
    exchanges = tls.feed(late, resolved, read_ns=None)
    assert [(e.client[0][:15], e.server[0][:15], e.response.status) for e in exchanges] == [  # type: ignore[union-attr]
        ("unresolved-tls-", "unresolved-tls-", 204)
    ]
    assert stats["tls_socket_refuted"] == 1
    # MALLORY's connection: its request's exchange is held until a later read proves the fd was its own
    held = tls.feed([TlsData(PID, 0x78, True, ns(T0 + 0.03), len(req), req)], {}, read_ns=None)
    held += tls.feed([TlsData(PID, 0x78, False, ns(T0 + 0.04), len(resp), resp)], {}, read_ns=None)
    assert held == []
    (ex,) = tls.feed([], {}, read_ns=looked_up + 1)
    assert (ex.client, ex.server) == (MALLORY, GW)
    assert stats["tls_socket_confirmed"] == 1


def test_kernel_read_addresses_are_used_as_they_are_and_never_looked_up(tmp_path: Path) -> None:
    """A TlsBound carrying the addresses the probe read in the kernel: no /proc lookup (the fake /proc
    here would give the wrong answer, MALLORY), no holding back; and the records may be read long after
    the connection ended, with its fd reused meanwhile, without any effect on the result."""
    stats = Stats()
    tls = TlsStreams(
        stats=stats, resolver=fake_proc(tmp_path, {7: (GW, MALLORY)}, stats), epoch_offset=OFFSET
    )
    req = b"GET /api/orders HTTP/1.1\r\nHost: gw\r\n\r\n"
    resp = b"HTTP/1.1 204 No Content\r\n\r\n"
    first = tls_call(0x77, 7, T0, req, resp)
    first[0] = TlsBound(PID, 0x77, 7, ns(T0), GW, ALICE)
    second = tls_call(0x78, 7, T0 + 0.02, req, resp)  # the same fd, the next client
    second[0] = TlsBound(PID, 0x78, 7, ns(T0 + 0.02), GW, MALLORY)
    records = first + second
    assert tls.resolve(records) == {}  # nothing to look up
    exchanges = tls.feed(records, read_ns=None)
    assert [(e.client, e.server) for e in exchanges] == [(ALICE, GW), (MALLORY, GW)]
    assert stats["tls_socket_from_kernel"] == 2
    assert not any(k.startswith("tls_socket_") and k != "tls_socket_from_kernel" for k in stats), stats


def test_kernel_offsets_jumping_or_going_back() -> None:
    """Offsets past the bytes seen: a gap of exactly the difference; an offset going back (the kernel's
    LRU forgot the connection and counts from 0 again): followed from there, counted, no gap."""
    stats = Stats()
    tls = TlsStreams(stats=stats, epoch_offset=OFFSET)
    req = b"GET /a HTTP/1.1\r\nHost: gw\r\n\r\n"
    body = b"0123456789" * 10
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + body
    head = len(resp) - len(body)
    records: list[TlsRecord] = [
        TlsBound(PID, 0x99, 7, ns(T0), GW, ALICE),
        TlsData(PID, 0x99, True, ns(T0 + 0.001), len(req), req, 0),
        TlsData(PID, 0x99, False, ns(T0 + 0.002), head + 20, resp[: head + 20], 0),
        # 30 body bytes never arrived (a dropped record); the rest says where it starts
        TlsData(PID, 0x99, False, ns(T0 + 0.003), 50, resp[head + 50 :], head + 50),
        TlsData(PID, 0x99, True, ns(T0 + 0.004), len(req), req, 0),  # back to 0: the kernel lost count
        TlsData(PID, 0x99, False, ns(T0 + 0.005), len(resp), resp, 0),
    ]
    exchanges = tls.feed(records) + tls.close()
    assert [(e.request.target, e.response.status) for e in exchanges] == [(b"/a", 200), (b"/a", 200)]  # type: ignore[union-attr]
    assert exchanges[0].flags and not exchanges[1].flags
    assert stats["lost_tls_bytes"] == 30 and stats["lost_tls_gaps"] == 1
    assert stats["tls_offset_reset"] == 2  # once per direction
