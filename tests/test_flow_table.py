"""Connection lifecycle in `FlowTable`, with tables of `Segment`s: roles, mid-stream adoption, SYN-ACK
start, FIN/RST ordering behind holes, data after the end, 4-tuple reuse, idle expiry, eviction, SYN
floods, `ignore`, and ACK-before-payload ordering across the two directions."""

from __future__ import annotations

import socket

from reassembly import (
    CloseReason,
    Direction,
    FlowClosed,
    FlowOpened,
    Limits,
    Segment,
    Stats,
    StreamData,
    StreamEvent,
    StreamGap,
    TcpFlags,
)
from reassembly.flow_table import FlowTable

A = int(TcpFlags.ACK)
SYN = int(TcpFlags.SYN)
FIN = int(TcpFlags.FIN)
RST = int(TcpFlags.RST)
P = int(TcpFlags.PSH)
CADDR, SADDR = b"\x0a\x00\x00\x01", b"\x0a\x00\x00\x02"
ISN_C, ISN_S = 1000, 5000
TO_S, TO_C = Direction.TO_SERVER, Direction.TO_CLIENT


class Conn:
    """Segments of one connection by stream offset: `c(...)` client->server, `s(...)` server->client."""

    def __init__(self, cport: int = 40000, sport: int = 80, isn_c: int = ISN_C, isn_s: int = ISN_S) -> None:
        self.cport, self.sport, self.isn_c, self.isn_s = cport, sport, isn_c, isn_s

    def syn(self, ts: float = 0.0) -> Segment:
        return Segment(ts, CADDR, SADDR, self.cport, self.sport, self.isn_c, 0, SYN, b"")

    def synack(self, ts: float = 0.0) -> Segment:
        return Segment(ts, SADDR, CADDR, self.sport, self.cport, self.isn_s, self.isn_c + 1, SYN | A, b"")

    def c(self, off: int, data: bytes = b"", flags: int = A, ack: int = 0, ts: float = 0.0) -> Segment:
        seq, ackn = (self.isn_c + 1 + off) & 0xFFFFFFFF, (self.isn_s + 1 + ack) & 0xFFFFFFFF
        return Segment(ts, CADDR, SADDR, self.cport, self.sport, seq, ackn, flags, data)

    def s(self, off: int, data: bytes = b"", flags: int = A, ack: int = 0, ts: float = 0.0) -> Segment:
        seq, ackn = (self.isn_s + 1 + off) & 0xFFFFFFFF, (self.isn_c + 1 + ack) & 0xFFFFFFFF
        return Segment(ts, SADDR, CADDR, self.sport, self.cport, seq, ackn, flags, data)


def feed_all(table: FlowTable, segs: list[Segment]) -> list[StreamEvent]:
    events: list[StreamEvent] = []
    for seg in segs:
        events += table.feed(seg)
    return events


def rows(events: list[StreamEvent]) -> list[tuple[object, ...]]:
    out: list[tuple[object, ...]] = []
    for e in events:
        if isinstance(e, FlowOpened):
            out.append(("open", e.flow_id, e.client[1], e.server[1], e.mid_stream))
        elif isinstance(e, StreamData):
            out.append(("data", e.flow_id, ">" if e.direction is TO_S else "<", e.offset, e.data))
        elif isinstance(e, StreamGap):
            out.append(
                ("gap", e.flow_id, ">" if e.direction is TO_S else "<", e.offset, e.length, e.reason.value)
            )
        else:
            out.append(("closed", e.flow_id, e.reason.value))
    return out


def table_of(**kw: object) -> tuple[FlowTable, Stats]:
    stats = Stats()
    ports = kw.pop("server_ports", frozenset())
    return FlowTable(Limits(**kw), stats, ports), stats  # type: ignore[arg-type]


def test_full_conversation_with_handshake_and_fin_close() -> None:
    k = Conn()
    table, stats = table_of()
    events = feed_all(
        table,
        [
            k.syn(1.0),
            k.synack(1.1),
            k.c(0, ts=1.2),
            k.c(0, b"GET / HTTP/1.1\r\n\r\n", A | P, ts=1.3),
            k.s(0, b"HTTP/1.1 204 No Content\r\n\r\n", A | P, ack=18, ts=1.4),
            k.c(18, flags=A | FIN, ack=27, ts=1.5),
            k.s(27, flags=A | FIN, ack=19, ts=1.6),
            k.c(19, ack=28, ts=1.7),
        ],
    )
    assert rows(events) == [
        ("open", 1, 40000, 80, False),
        ("data", 1, ">", 0, b"GET / HTTP/1.1\r\n\r\n"),
        ("data", 1, "<", 0, b"HTTP/1.1 204 No Content\r\n\r\n"),
        ("closed", 1, "fin"),
    ]
    opened = events[0]
    assert isinstance(opened, FlowOpened) and opened.client == ("10.0.0.1", 40000) and opened.ts == 1.0
    assert len(table) == 0
    assert stats["tcp_after_close"] == 1  # the last ACK found the tombstone
    assert not stats.losses()


def test_capture_starting_at_syn_ack_knows_both_streams_start() -> None:
    k = Conn(cport=80, sport=40000)  # the server uses the higher port: only the SYN-ACK can tell
    table, _ = table_of()
    events = feed_all(table, [k.synack(), k.c(0, b"req"), k.s(0, b"resp", ack=3)])
    assert rows(events) == [
        ("open", 1, 80, 40000, False),
        ("data", 1, ">", 0, b"req"),
        ("data", 1, "<", 0, b"resp"),
    ]


def test_missed_syn_ack_uses_the_handshake_ack_for_the_server_start() -> None:
    k = Conn()
    table, stats = table_of()
    events = feed_all(table, [k.syn(), k.c(0), k.c(0, b"req"), k.s(0, b"re", ack=3), k.s(2, b"sp", ack=3)])
    assert rows(events) == [
        ("open", 1, 40000, 80, False),
        ("data", 1, ">", 0, b"req"),
        ("data", 1, "<", 0, b"re"),
        ("data", 1, "<", 2, b"sp"),
    ]
    assert not stats.losses()


def test_mid_stream_lower_port_is_server_and_gaps_precede_first_data() -> None:
    k = Conn(cport=51000, sport=8000)
    table, stats = table_of()
    events = feed_all(table, [k.s(100, b"tail of a response"), k.c(7, b"GET /next"), k.s(118, b"more")])
    # Both directions' MIDSTREAM gaps come first, so neither looks like a loss after the other's data.
    assert rows(events) == [
        ("open", 1, 51000, 8000, True),
        ("gap", 1, ">", 0, None, "midstream"),
        ("gap", 1, "<", 0, None, "midstream"),
        ("data", 1, "<", 0, b"tail of a response"),
        ("data", 1, ">", 0, b"GET /next"),
        ("data", 1, "<", 18, b"more"),
    ]
    assert stats["gap_midstream"] == 2


def test_mid_stream_server_ports_override_the_port_order() -> None:
    k = Conn(cport=80, sport=8443)  # client port 80 is lower, but 8443 is a known server port
    table, _ = table_of(server_ports=frozenset({8443}))
    events = feed_all(table, [k.c(0, b"x")])
    assert rows(events)[0] == ("open", 1, 80, 8443, True)


def test_mid_stream_segment_before_the_first_seen_is_dropped_or_trimmed() -> None:
    k = Conn()
    table, stats = table_of()
    events = feed_all(table, [k.c(10, b"klmn"), k.c(5, b"fghij"), k.c(8, b"ijklmnop")])
    assert rows(events)[1:] == [
        ("gap", 1, ">", 0, None, "midstream"),
        ("gap", 1, "<", 0, None, "midstream"),
        ("data", 1, ">", 0, b"klmn"),
        ("data", 1, ">", 4, b"op"),
    ]
    assert stats["drop_before_start_bytes"] == 5 + 2
    assert stats["tcp_retrans_bytes"] == 4


def test_pure_acks_and_payloadless_segments_of_unknown_flows_create_nothing() -> None:
    k = Conn()
    table, stats = table_of()
    assert feed_all(table, [k.c(0), k.s(0, flags=A | FIN), k.c(3, flags=RST)]) == []
    assert len(table) == 0 and stats["tcp_ignored_no_payload"] == 3


def test_ack_is_applied_before_the_payload_of_the_same_segment() -> None:
    # The request's middle is lost; the response (acking all of it) must follow the request's gap.
    k = Conn()
    table, _ = table_of()
    events = feed_all(
        table,
        [k.syn(), k.synack(), k.c(0, b"GET /"), k.c(8, b"HTTP/1.1\r\n\r\n"), k.s(0, b"HTTP/1.1 200", ack=20)],
    )
    assert rows(events)[1:] == [
        ("data", 1, ">", 0, b"GET /"),
        ("gap", 1, ">", 5, 3, "acked_unseen"),
        ("data", 1, ">", 8, b"HTTP/1.1\r\n\r\n"),
        ("data", 1, "<", 0, b"HTTP/1.1 200"),
    ]


def test_fin_behind_a_hole_waits_for_the_hole() -> None:
    k = Conn()
    table, _ = table_of()
    events = feed_all(
        table, [k.syn(), k.synack(), k.c(0, b"ab"), k.c(4, b"ef", A | FIN), k.s(0, flags=A | FIN)]
    )
    assert rows(events)[1:] == [("data", 1, ">", 0, b"ab")]
    assert len(table) == 1
    events = table.feed(k.c(2, b"cd"))
    assert rows(events) == [("data", 1, ">", 2, b"cd"), ("data", 1, ">", 4, b"ef"), ("closed", 1, "fin")]


def test_fin_behind_a_hole_gaps_out_on_timeout() -> None:
    k = Conn()
    table, stats = table_of(reorder_timeout_s=2.0)
    feed_all(table, [k.syn(), k.synack(), k.c(0, b"ab", ts=1.0), k.c(4, flags=A | FIN, ts=1.0)])
    feed_all(table, [k.s(0, flags=A | FIN, ts=1.5)])
    assert rows(table.advance(3.0)) == [("gap", 1, ">", 2, 2, "timeout"), ("closed", 1, "fin")]
    assert stats["gap_timeout"] == 1


def test_rst_closes_after_flushing_and_gapping_holes_in_both_directions() -> None:
    k = Conn()
    table, stats = table_of()
    events = feed_all(
        table,
        [k.syn(), k.synack(), k.c(0, b"ab"), k.c(4, b"ef"), k.s(0, b"x"), k.s(3, b"z"), k.c(6, flags=RST)],
    )
    # The RST sits after the client's hole, so it waits ...
    assert rows(events)[1:] == [("data", 1, ">", 0, b"ab"), ("data", 1, "<", 0, b"x")]
    # ... until the hole resolves (here: the peer ACKs past it), then both directions are flushed.
    events = table.feed(k.s(4, ack=6))
    assert rows(events) == [
        ("gap", 1, ">", 2, 2, "acked_unseen"),
        ("data", 1, ">", 4, b"ef"),
        ("gap", 1, "<", 1, 2, "closed"),
        ("data", 1, "<", 3, b"z"),
        ("closed", 1, "rst"),
    ]
    assert len(table) == 0 and table._pool.used == 0
    assert stats["tcp_closed_rst"] == 1


def test_rst_at_the_stream_position_closes_at_once() -> None:
    k = Conn()
    table, _ = table_of()
    events = feed_all(table, [k.syn(), k.synack(), k.c(0, b"ab"), k.s(2, b"later"), k.c(2, flags=RST | A)])
    assert rows(events)[1:] == [
        ("data", 1, ">", 0, b"ab"),
        ("gap", 1, "<", 0, 2, "closed"),
        ("data", 1, "<", 2, b"later"),
        ("closed", 1, "rst"),
    ]


def test_data_after_fin_and_after_close_is_dropped_and_counted() -> None:
    k = Conn()
    table, stats = table_of()
    feed_all(table, [k.syn(), k.synack(), k.c(0, b"ab", A | FIN)])
    assert feed_all(table, [k.c(3, b"zz"), k.c(0, b"ab")]) == []
    assert stats["drop_after_fin_bytes"] == 2 and stats["tcp_duplicates"] == 1
    events = feed_all(table, [k.s(0, b"ok", A | FIN), k.s(2, b"late"), k.c(0, b"ab", A | FIN)])
    assert rows(events) == [("data", 1, "<", 0, b"ok"), ("closed", 1, "fin")]
    # After the close, the tombstone keeps late data from adopting a bogus mid-stream flow.
    assert stats["drop_after_close_bytes"] == 4 + 2
    assert len(table) == 0


def test_rst_then_in_flight_data_from_the_peer_is_not_a_new_flow() -> None:
    k = Conn()
    table, stats = table_of()
    events = feed_all(table, [k.syn(), k.synack(), k.c(0, b"req"), k.s(0, flags=RST), k.s(0, b"in flight")])
    assert rows(events)[-1] == ("closed", 1, "rst")
    assert stats["drop_after_close_bytes"] == 9 and stats["tcp_flows"] == 1
    # Once the tombstone expires, the 4-tuple is free again (mid-stream adoption allowed).
    table.advance(1000.0)
    assert rows(table.feed(k.s(9, b"x")))[0] == ("open", 2, 40000, 80, True)


def test_port_reuse_after_close_and_syn_with_new_isn_on_a_live_flow() -> None:
    k1, k2, k3 = Conn(isn_c=1000), Conn(isn_c=9000), Conn(isn_c=70000)
    table, stats = table_of()
    events = feed_all(
        table,
        [
            *(k1.syn(), k1.synack(), k1.c(0, b"a", A | FIN), k1.s(0, flags=A | FIN, ack=2)),
            *(k2.syn(), k2.syn(), k2.synack(), k2.c(0, b"b")),
            *(k3.syn(), k3.synack(), k3.c(0, b"c")),
        ],
    )
    assert rows(events) == [
        ("open", 1, 40000, 80, False),
        ("data", 1, ">", 0, b"a"),
        ("closed", 1, "fin"),
        ("open", 2, 40000, 80, False),
        ("data", 2, ">", 0, b"b"),
        ("closed", 2, "reused"),
        ("open", 3, 40000, 80, False),
        ("data", 3, ">", 0, b"c"),
    ]
    assert stats["tcp_syn_retrans"] == 1 and stats["tcp_closed_reused"] == 1


def test_idle_flows_close_oldest_first_and_only_when_expired() -> None:
    table, stats = table_of(idle_timeout_s=10.0)
    for i in range(5):
        k = Conn(cport=41000 + i)
        feed_all(table, [k.syn(float(i)), k.synack(float(i)), k.c(0, b"x", ts=float(i))])
    feed_all(table, [Conn(cport=41000).c(1, b"y", ts=8.0)])  # flow 1 becomes the most recent
    assert table.advance(11.5) == [FlowClosed(2, CloseReason.IDLE, 11.5)]
    closed = [e.flow_id for e in table.advance(14.0) if isinstance(e, FlowClosed)]
    assert closed == [3, 4, 5]
    assert len(table) == 1 and stats["tcp_closed_idle"] == 4
    assert [e.flow_id for e in table.advance(18.0)] == [1]


def test_max_flows_evicts_the_least_recently_active() -> None:
    table, stats = table_of(max_flows=3)
    events: list[StreamEvent] = []
    for i in range(3):
        events += table.feed(Conn(cport=42000 + i).c(0, b"x", ts=float(i)))
    events += table.feed(Conn(cport=42000).c(1, b"y", ts=3.0))
    events += table.feed(Conn(cport=42009).c(0, b"z", ts=4.0))
    assert [e for e in events if isinstance(e, FlowClosed)] == [FlowClosed(2, CloseReason.EVICTED, 4.0)]
    assert len(table) == 3 and stats["evict_flows"] == 1


def test_syn_flood_stays_within_max_flows_and_emits_nothing() -> None:
    table, stats = table_of(max_flows=64)
    events: list[StreamEvent] = []
    for i in range(100_000):
        src = (0x0B000000 + i).to_bytes(4, "big")
        events += table.feed(Segment(i * 1e-5, src, SADDR, 1024 + i % 60000, 80, i * 7919, 0, SYN, b""))
        assert len(table) <= 64
    assert events == []  # half-open flows never delivered anything, so no FlowOpened/FlowClosed
    assert stats["evict_flows"] == 100_000 - 64 and len(table._flows) == 2 * 64
    # A real connection still works during the flood.
    k = Conn()
    assert rows(feed_all(table, [k.syn(2.0), k.synack(2.0), k.c(0, b"hi", ts=2.0)]))[-1] == (
        "data",
        100_001,
        ">",
        0,
        b"hi",
    )


def test_ignore_stops_delivery_and_buffering_but_tracks_the_end() -> None:
    k = Conn()
    table, stats = table_of()
    feed_all(table, [k.syn(), k.synack(), k.c(0, b"CONNECT x:443 HTTP/1.1\r\n\r\n"), k.c(40, b"ooo")])
    assert table._pool.used == 3
    table.ignore(1)
    assert table._pool.used == 0 and not table._pool.holes
    assert feed_all(table, [k.s(0, b"tls bytes"), k.c(26, b"more tls"), k.c(60, flags=A | FIN)]) == []
    assert stats["tcp_ignored_bytes"] == 17
    assert rows(table.feed(k.s(9, flags=A | FIN))) == [("closed", 1, "fin")]
    table.ignore(1)  # unknown or closed flow: a no-op


def test_ignore_of_a_flow_with_pending_ends_closes_at_the_next_advance() -> None:
    k = Conn()
    table, _ = table_of()
    feed_all(table, [k.syn(), k.synack(), k.c(0, b"a"), k.c(5, flags=A | FIN), k.s(0, flags=A | FIN)])
    table.ignore(1)
    assert rows(table.advance(0.5)) == [("closed", 1, "fin")]


def test_close_ends_every_flow_and_flow_ids_are_unique_and_increasing() -> None:
    table, stats = table_of()
    for i in range(3):
        feed_all(table, [Conn(cport=43000 + i).c(0, b"x")])
    closed = [e for e in table.close(99.0) if isinstance(e, FlowClosed)]
    assert closed == [FlowClosed(i, CloseReason.END, 99.0) for i in (1, 2, 3)]
    assert len(table) == 0 and stats["tcp_closed_end"] == 3
    assert rows(table.feed(Conn(cport=43000).c(1, b"y")))[0][:2] == ("open", 4)


def test_ipv6_endpoints_are_formatted_once_as_text() -> None:
    a = socket.inet_pton(socket.AF_INET6, "2001:db8::1")
    b = socket.inet_pton(socket.AF_INET6, "2001:db8::2")
    table, _ = table_of()
    events = table.feed(Segment(0.0, a, b, 50000, 443, 1, 0, A, b"hello"))
    opened = events[0]
    assert isinstance(opened, FlowOpened)
    assert opened.client == ("2001:db8::1", 50000) and opened.server == ("2001:db8::2", 443)


def test_same_port_both_sides_and_self_connection_do_not_break() -> None:
    table, _ = table_of()
    same = Segment(0.0, CADDR, CADDR, 5000, 5000, 10, 0, A, b"loop")
    events = feed_all(table, [same, same, Segment(0.0, CADDR, CADDR, 5000, 5000, 14, 0, A | FIN, b"")])
    assert [type(e) for e in events] == [FlowOpened, StreamGap, StreamGap, StreamData]
    assert len(table.close(1.0)) == 1


def test_syn_on_a_half_closed_flow_replaces_it() -> None:
    old, new = Conn(isn_c=1000), Conn(isn_c=555_555)
    table, _ = table_of()
    events = feed_all(table, [old.syn(), old.synack(), old.c(0, b"a", A | FIN), old.s(0, b"b"), new.syn(1.0)])
    assert rows(events)[-1] == ("closed", 1, "reused")
    assert rows(feed_all(table, [new.synack(1.0), new.c(0, b"c", ts=1.0)])) == [
        ("open", 2, 40000, 80, False),
        ("data", 2, ">", 0, b"c"),
    ]


def test_idle_close_gaps_holes_before_closing() -> None:
    k = Conn()
    table, stats = table_of(idle_timeout_s=30.0, reorder_timeout_s=60.0)
    feed_all(table, [k.syn(), k.synack(), k.c(0, b"a"), k.c(3, b"d")])
    assert rows(table.advance(31.0)) == [
        ("gap", 1, ">", 1, 2, "closed"),
        ("data", 1, ">", 3, b"d"),
        ("closed", 1, "idle"),
    ]
    assert stats["gap_closed"] == 1 and table._pool.used == 0


def test_stale_ack_and_its_rst_before_the_handshake_do_not_end_the_connection() -> None:
    # From a real capture: a stale ACK answers the SYN, the client RSTs it (seq = that ACK) and
    # retransmits its SYN; the connection then proceeds normally.
    k = Conn()
    stale_ack = (ISN_C + 1 + 976_000_000) & 0xFFFFFFFF
    table, stats = table_of()
    events = feed_all(
        table,
        [
            k.syn(0.0),
            Segment(0.1, SADDR, CADDR, 80, 40000, 123456, stale_ack, A, b""),
            Segment(0.1, CADDR, SADDR, 40000, 80, stale_ack, 0, RST, b""),
            k.syn(3.0),
            k.synack(3.1),
            k.c(0, b"hello", ts=3.2),
        ],
    )
    assert rows(events) == [("open", 1, 40000, 80, False), ("data", 1, ">", 0, b"hello")]
    assert stats["tcp_bad_rst"] == 1 and stats["tcp_syn_retrans"] == 1
    assert not stats.losses()
