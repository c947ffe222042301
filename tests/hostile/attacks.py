"""Attack traffic as frame generators, and the legitimate calls interleaved with it.

Each attack is a generator of Ethernet frames (lazy: a 64 MB capture is streamed to disk, never held);
`write_capture` interleaves the legitimate bursts evenly and writes the pcap. Attackers come from
172.16.0.0/12, legitimate clients from 10.1.0.0/16, every server is 10.2.0.1:80 (an HTTP port).
"""

from __future__ import annotations

import random
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hostile.frames import ACK, PSH, SYN, PcapWriter, TcpConn, interleave, ip4, ipv4_tcp

__all__ = [
    "SERVER",
    "Legit",
    "conflicting_retransmissions",
    "endless_chunked_body",
    "fragment_flood",
    "garbage_and_smuggling",
    "held_header_blocks",
    "huge_header_blocks",
    "legit_calls",
    "slowloris",
    "syn_flood",
    "tiny_pieces",
    "unfilled_holes",
    "write_capture",
]

SERVER = ("10.2.0.1", 80)
_SERVER_ADDR = ip4(SERVER[0])
_ETH = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00"


def attacker(i: int) -> tuple[str, int]:
    """A distinct (address, port) per attacking connection."""
    return f"172.{16 + (i >> 16) % 16}.{(i >> 8) & 255}.{i & 255}", 1024 + (i * 7919) % 60000


def response(status: int, body: bytes = b"", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 %d X\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n%s\r\n%s" % (
        status,
        len(body),
        extra,
        body,
    )


@dataclass
class Legit:
    """Legitimate keep-alive calls: the bursts to interleave, and what each call must become."""

    bursts: list[list[bytes]] = field(default_factory=list)
    expected: dict[str, tuple[int, Any]] = field(default_factory=dict)  # uri -> (status, JSON body)

    def problems(self, events: list[dict[str, Any]]) -> list[str]:
        """Every expected call exactly once, unflagged, with its status and body; else what differs."""
        seen: dict[str, list[dict[str, Any]]] = {}
        for ev in events:
            uri = ev.get("request", {}).get("uri", "")
            if "/legit/" in uri:
                seen.setdefault(uri, []).append(ev)
        out = []
        for uri, (status, body) in self.expected.items():
            got = seen.pop(uri, [])
            if len(got) != 1:
                out.append(f"{uri}: {len(got)} events")
                continue
            ev = got[0]
            if ev.get("response", {}).get("status") != status or ev["response"].get("body") != body:
                out.append(f"{uri}: got {ev.get('response')}")
            if ev["metadata"]["capture"].get("flags"):
                out.append(f"{uri}: flagged {ev['metadata']['capture']['flags']}")
        out.extend(f"{uri}: not a call that was made" for uri in seen)
        return out


def legit_calls(conns: int = 4, calls: int = 3) -> Legit:
    """`conns` keep-alive connections of `calls` GETs each; one burst per call (the first burst also
    opens the connection, the last closes it), bursts of one connection consecutive in the list."""
    legit = Legit()
    for c in range(conns):
        conn = TcpConn((f"10.1.{c >> 8}.{c & 255}", 50000 + c), SERVER, 7000 + c, 90000 + c)
        for i in range(calls):
            uri = f"/legit/{c}/{i}?q={c * 10 + i}"
            body = b'{"conn": %d, "call": %d}' % (c, i)
            burst = conn.handshake() if i == 0 else []
            burst += conn.send(
                True, b"GET %s HTTP/1.1\r\nHost: api.example\r\nUser-Agent: legit\r\n\r\n" % uri.encode()
            )
            burst += conn.send(
                False,
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body),
            )
            if i == calls - 1:
                burst += conn.close()
            legit.bursts.append(burst)
            legit.expected[f"http://api.example:80{uri}"] = (200, {"conn": c, "call": i})
    return legit


def write_capture(
    path: Path, attack: Iterator[bytes], frames_hint: int, legit: Legit, **kw: Any
) -> PcapWriter:
    with PcapWriter(path, **kw) as w:
        w.write_all(interleave(attack, legit.bursts, frames_hint))
    return w


# -- attacks ----------------------------------------------------------------------------------------------


def syn_flood(n: int) -> Iterator[bytes]:
    """`n` half-open flows: one SYN each from a distinct source, never answered."""
    rnd = random.Random(1)
    for i in range(n):
        addr, port = attacker(i)
        yield _ETH + ipv4_tcp(ip4(addr), _SERVER_ADDR, port, 80, rnd.getrandbits(32), 0, SYN)


def unfilled_holes(n: int, hole: int = 100, segments: int = 5) -> Iterator[bytes]:
    """`n` handshaken flows whose request starts `hole` bytes late: `segments` full segments wait behind a
    hole that never fills (the flow then goes quiet)."""
    payload = b"A" * 1448
    for i in range(n):
        conn = TcpConn(attacker(i), SERVER, i * 1000, 5000)
        yield from conn.handshake()
        for k in range(segments):
            yield conn.frame(True, ACK, payload, seq=conn.c_seq + hole + k * 1448)


def endless_chunked_body(total: int, chunk: int = 8192) -> Iterator[bytes]:
    """One upload whose chunked body never ends: `total` bytes of chunks, the server ACKing now and then."""
    conn = TcpConn(attacker(0), SERVER, 1, 2)
    yield from conn.handshake()
    yield from conn.send(
        True, b"POST /upload HTTP/1.1\r\nHost: api.example\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    piece = b"%x\r\n" % chunk + bytes(range(256)) * (chunk // 256) + b"\r\n"
    pending = b""
    sent = 0
    segments = 0
    while sent < total:
        pending += piece
        while len(pending) >= 1448:
            seg, pending = pending[:1448], pending[1448:]
            yield conn.frame(True, ACK, seg)
            conn.c_seq = (conn.c_seq + 1448) & 0xFFFFFFFF
            sent += 1448
            segments += 1
            if not segments % 16:
                yield conn.frame(False, ACK)


def huge_header_blocks(n: int, size: int = 1 << 20) -> Iterator[bytes]:
    """`n` connections each sending a `size`-byte header block (many 1 KB lines, or on odd connections
    ONE `size`-byte line), answered 431; then a normal request on the same connection, answered 200."""
    for i in range(n):
        conn = TcpConn(attacker(i), SERVER, 1, 2)
        yield from conn.handshake()
        if i % 2:
            head = b"GET /huge HTTP/1.1\r\nX-Big: " + b"b" * size + b"\r\n\r\n"
        else:
            line = b"X-Pad: " + b"p" * 1017 + b"\r\n"
            head = b"GET /huge HTTP/1.1\r\n" + line * (size // len(line)) + b"\r\n"
        yield from conn.send(True, head)
        yield from conn.send(False, response(431))
        yield from conn.send(True, b"GET /after-huge/%d HTTP/1.1\r\nHost: api.example\r\n\r\n" % i)
        yield from conn.send(False, response(200, b"after %d" % i))
        yield from conn.close()


def slowloris(conns: int, head_bytes: int) -> Iterator[bytes]:
    """`conns` connections open in parallel, each sending a never-ending request head one byte per segment."""
    all_conns = [TcpConn(attacker(i), SERVER, i * 1000, 5000) for i in range(conns)]
    for conn in all_conns:
        yield from conn.handshake()
    head = (b"GET /slow HTTP/1.1\r\nHost: api.example\r\n" + b"X-Slow: 1\r\n" * head_bytes)[:head_bytes]
    for j in range(head_bytes):
        byte = head[j : j + 1]
        for conn in all_conns:
            yield conn.frame(True, ACK | PSH, byte)
            conn.c_seq = (conn.c_seq + 1) & 0xFFFFFFFF


def tiny_pieces(conns: int, pieces: int) -> Iterator[bytes]:
    """`conns` flows in parallel, each sending `pieces` one-byte segments with a one-byte hole before
    each (offsets 1, 3, 5...): nothing is ever deliverable, every piece must be buffered or given up."""
    all_conns = [TcpConn(attacker(i), SERVER, i * 100_000, 5000) for i in range(conns)]
    for conn in all_conns:
        yield from conn.handshake()
    for j in range(pieces):
        for conn in all_conns:
            yield conn.frame(True, ACK, b"t", seq=conn.c_seq + 1 + 2 * j)


def fragment_flood(datagrams: int, fragments: int = 40) -> Iterator[bytes]:
    """`datagrams` IPv4 datagrams (TCP to port 80) each sent as `fragments` 1480-byte fragments with the
    last one never sent: ~59 KB per datagram waits for a piece that never comes."""
    body = bytes(1480)
    for i in range(datagrams):
        addr, port = attacker(i)
        src = ip4(addr)
        tcp = ipv4_tcp(src, _SERVER_ADDR, port, 80, i, 0, ACK, body)[20:]  # the TCP segment alone
        ident = i & 0xFFFF
        for k in range(fragments):
            piece = tcp[:1480] if k == 0 else body
            hdr = struct.pack(
                "!BBHHHBBH4s4s",
                0x45,
                0,
                20 + len(piece),
                ident,
                0x2000 | (k * 185),
                64,
                6,
                0,
                src,
                _SERVER_ADDR,
            )
            yield _ETH + hdr + piece


def conflicting_retransmissions(n: int) -> Iterator[bytes]:
    """`n` connections whose request bytes arrive twice, the second copy altered in the overlap, three
    ways: all delivered, then all retransmitted altered; the tail buffered first, then the head with an
    altered overlap into the tail; the head delivered, then the tail with an altered overlap into the
    head. The first copy of each byte must win: the request stays /first/<i>."""
    for i in range(n):
        conn = TcpConn(attacker(i), SERVER, i * 1000, 5000)
        yield from conn.handshake()
        req = b"GET /first/%06d HTTP/1.1\r\nHost: api.example\r\n\r\n" % i
        base = conn.c_seq
        cut = 12  # inside "/first/"
        kind = i % 3
        if kind == 0:
            yield conn.frame(True, ACK, req[:cut])
            yield conn.frame(True, ACK | PSH, req[cut:], seq=base + cut)
            yield conn.frame(True, ACK | PSH, b"Z" * len(req), seq=base)
        elif kind == 1:
            yield conn.frame(True, ACK | PSH, req[cut:], seq=base + cut)  # tail first: buffered
            yield conn.frame(True, ACK, req[:cut] + b"Z" * 10, seq=base)
        else:
            yield conn.frame(True, ACK, req[:cut])
            yield conn.frame(True, ACK | PSH, b"Z" * 6 + req[cut:], seq=base + cut - 6)
        conn.c_seq = (base + len(req)) & 0xFFFFFFFF
        yield conn.frame(False, ACK)
        yield from conn.send(False, response(200, b"first"))
        yield from conn.close()


H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
H2_SETTINGS = b"\x00\x00\x0c\x04\x00\x00\x00\x00\x00\x00\x03\x00\x00\x00\x64\x00\x04\x00\x01\x00\x00"
GARBAGE_SHAPES = ("random", "h2", "te_cl", "dup_cl", "chunk_2_64")


def garbage_and_smuggling(n_each: int) -> Iterator[bytes]:
    """`n_each` connections of each shape in GARBAGE_SHAPES, round robin: random bytes both ways; the
    HTTP/2 preface and SETTINGS; Transfer-Encoding + Content-Length with a request smuggled in the body
    (TE wins, as RFC 9112 says: the smuggled request is a request); two different Content-Lengths; a
    chunk size of 2**64."""
    rnd = random.Random(7)
    for i in range(n_each * len(GARBAGE_SHAPES)):
        shape = GARBAGE_SHAPES[i % len(GARBAGE_SHAPES)]
        conn = TcpConn(attacker(i), SERVER, rnd.getrandbits(32), rnd.getrandbits(32))
        yield from conn.handshake()
        if shape == "random":
            yield from conn.send(True, rnd.randbytes(rnd.randint(1, 3000)))
            yield from conn.send(False, rnd.randbytes(rnd.randint(1, 3000)))
        elif shape == "h2":
            yield from conn.send(True, H2_PREFACE + H2_SETTINGS)
            yield from conn.send(False, H2_SETTINGS)
        elif shape == "te_cl":
            yield from conn.send(
                True,
                b"POST /te/%d HTTP/1.1\r\nHost: api.example\r\nContent-Length: 4\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                b"GET /smuggled/%d HTTP/1.1\r\nHost: api.example\r\n\r\n" % (i, i),
            )
            yield from conn.send(False, response(200, b"te") + response(404, b"smuggled"))
        elif shape == "dup_cl":
            yield from conn.send(
                True,
                b"POST /dup HTTP/1.1\r\nHost: api.example\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n"
                b"hello, world",
            )
            yield from conn.send(False, response(400, extra=b"Connection: close\r\n"))
        else:
            yield from conn.send(
                True,
                b"POST /chunk HTTP/1.1\r\nHost: api.example\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"10000000000000000\r\n" + b"z" * 2000,
            )
            yield from conn.send(False, response(400, extra=b"Connection: close\r\n"))
        yield from conn.close()


def held_header_blocks(n: int, size: int) -> Iterator[bytes]:
    """`n` connections each sending `size` bytes of a header block that never ends (under the header cap),
    all left open: what the HTTP layer holds for them."""
    line = b"X-Pad: " + b"p" * 1017 + b"\r\n"
    head = (b"GET /held HTTP/1.1\r\n" + line * (size // len(line) + 1))[:size]
    for i in range(n):
        conn = TcpConn(attacker(i), SERVER, i * 1000, 5000)
        yield from conn.handshake()
        yield from conn.send(True, head)
