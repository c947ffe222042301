"""The flow-balanced fanout (`sniffer.capture.fanout_balance`): real TCP connections on lo, captured by
two rings in one fanout group as the daemon opens them for two workers (root only)."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import pytest

from sniffer.capture.afpacket import RingSocket
from sniffer.capture.workers import open_ring_sets
from sniffer.config import Config

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="AF_PACKET and bpf(2) need root")


@contextmanager
def echo_server(family: socket.AddressFamily, host: str) -> Iterator[int]:
    """A server answering every read with 10 bytes, on a free port; yields the port."""
    srv = socket.socket(family)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, 0))
    srv.listen(128)

    def answer(conn: socket.socket) -> None:
        with conn:
            while conn.recv(100):
                conn.sendall(b"x" * 10)

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=answer, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield srv.getsockname()[1]
    finally:
        srv.close()


# A destination options header (RFC 8200 4.6) of 8 bytes: next header (the kernel fills it in),
# length 0, and a PadN option padding it out.
DEST_OPTIONS = bytes([0, 0, 1, 4, 0, 0, 0, 0])
IPV6_DSTOPTS = 59  # linux/in6.h


def connect(host: str, port: int, dest_options: bool) -> socket.socket:
    if not dest_options:
        return socket.create_connection((host, port))
    sock = socket.socket(socket.AF_INET6)
    sock.setsockopt(socket.IPPROTO_IPV6, IPV6_DSTOPTS, DEST_OPTIONS)  # on every segment it sends
    sock.connect((host, port))
    return sock


def talk(host: str, port: int, connections: int, other: int, others: int, dest_options: bool) -> None:
    """`connections` connections to `port`, each but the last `connections - others` followed by one to
    `other`; three request/answer rounds on each, then closed. With `dest_options` the clients' IPv6
    packets carry a destination options header (the server's answers do not)."""
    clients = []
    for i in range(connections):
        clients.append(connect(host, port, dest_options))
        if i < others:
            clients.append(socket.create_connection((host, other)))
    for _ in range(3):
        for c in clients:
            c.sendall(b"y" * 20)
            c.recv(100)
    for c in clients:
        c.close()


def flows_seen(rings: list[RingSocket], port: int) -> dict[int, set[str]]:
    """Client port -> the directions ("in": to the server, "out": from it) of the packets these rings
    got, for TCP packets to or from `port` (frames are bare IP packets)."""
    seen: dict[int, set[str]] = {}

    def handle(ts: float, linktype: int, frame: bytes, wire_len: int) -> None:
        if frame[0] >> 4 == 4:
            at = (frame[0] & 0x0F) * 4
        else:  # IPv6: the fixed header, then any hop-by-hop, routing or destination options headers
            at, nh = 40, frame[6]
            while nh in (0, 43, 60):
                nh, at = frame[at], at + (frame[at + 1] + 1) * 8
        src, dst = int.from_bytes(frame[at : at + 2], "big"), int.from_bytes(frame[at + 2 : at + 4], "big")
        if dst == port:
            seen.setdefault(src, set()).add("in")
        elif src == port:
            seen.setdefault(dst, set()).add("out")

    for ring in rings:
        for _ in range(64):
            if not ring.walk(handle, 16):
                break
    return seen


def capture(
    fanout: str,
    family: socket.AddressFamily,
    host: str,
    connections: int,
    others: int = 0,
    dest_options: bool = False,
) -> list[dict[int, set[str]]]:
    """Open two workers' rings on lo for a fresh server's port, make `connections` to it (and `others`
    to another port, interleaved: `talk`); what each worker's rings saw (`flows_seen`)."""
    with echo_server(family, host) as port, echo_server(family, host) as other:
        config = replace(Config(), interface="lo", ports=(port,), kong_ports=(), fanout=fanout)
        sets = open_ring_sets(config, 2)
        try:
            talk(host, port, connections, other, others, dest_options)
            time.sleep(0.3)  # past the rings' block retire timeout
            return [flows_seen(rings, port) for rings in sets]
        finally:
            for rings in sets:
                for ring in rings:
                    ring.close()


@pytest.mark.parametrize(
    ("family", "host", "dest_options"),
    [(socket.AF_INET, "127.0.0.1", False), (socket.AF_INET6, "::1", False), (socket.AF_INET6, "::1", True)],
    ids=["ipv4", "ipv6", "ipv6-extension-header-one-way"],
)
def test_flows_are_dealt_evenly_and_each_stays_whole_on_one_worker(
    family: socket.AddressFamily, host: str, dest_options: bool
) -> None:
    first, second = capture("balanced", family, host, 20, dest_options=dest_options)
    # 20 flows, 10 each: the hash fanout splits them as a random draw does (8/12, 13/7, ...)
    assert (len(first), len(second)) == (10, 10)
    assert not set(first) & set(second)  # no flow on both workers
    for seen in (first, second):  # both directions of every flow on its worker
        assert all(directions == {"in", "out"} for directions in seen.values()), seen


def test_flows_of_ports_not_captured_take_no_turn() -> None:
    # every captured connection is followed by one to a port the kernel filter drops: if those took a
    # turn, every captured flow would land on the same worker
    first, second = capture("balanced", socket.AF_INET, "127.0.0.1", 20, others=20)
    assert (len(first), len(second)) == (10, 10)


def test_hash_fanout_still_keeps_each_flow_on_one_worker() -> None:
    first, second = capture("hash", socket.AF_INET, "127.0.0.1", 20)
    assert len(first) + len(second) == 20 and not set(first) & set(second)
    for seen in (first, second):
        assert all(directions == {"in", "out"} for directions in seen.values()), seen
