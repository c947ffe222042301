"""Shared test helpers: build TCP conversations with scapy and write them as pcap/pcapng files.

The writers are hand-written on purpose: they produce the variants scapy's writers cannot (big-endian
files, nanosecond pcap, pcapng with several interfaces of different link types and any if_tsresol).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Sequence
from typing import Any

from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import CookedLinux, Ether, Loopback
from scapy.packet import Packet

__all__ = ["ListSink", "frames", "linktype_of", "tcp_conversation", "write_pcap", "write_pcapng"]

Frame = tuple[float, int, bytes, int]


def tcp_conversation(
    client_msgs: list[bytes],
    server_msgs: list[bytes],
    *,
    client: tuple[str, int] = ("10.0.0.1", 40000),
    server: tuple[str, int] = ("10.0.0.2", 80),
    isn_client: int = 1000,
    isn_server: int = 5000,
    mss: int = 1460,
    ts0: float = 1_700_000_000.0,
    handshake: bool = True,
    close: bool = True,
    ipv6: bool = False,
) -> list[Packet]:
    """Ether/IP/TCP packets of one connection: handshake, client message i then server message i
    (each split into `mss`-sized segments, PSH on the last), then a FIN close started by the client.

    Every packet's `.time` is `ts0` plus 1 ms per packet. Sequence and ack numbers are consistent, so
    with `handshake=False` the first packet is mid-stream data at `isn + 1`. With `ipv6=True` an IPv4
    address given is embedded as "fd00::a.b.c.d", so the defaults work for both versions.
    """
    csrc, cport = client
    sdst, sport = server
    if ipv6:
        csrc, sdst = (a if ":" in a else "fd00::" + a for a in (csrc, sdst))
    ip = IPv6 if ipv6 else IP
    c_seq = isn_client
    s_seq = isn_server
    packets: list[Packet] = []

    def emit(from_client: bool, flags: str, payload: bytes = b"", options: list[Any] | None = None) -> None:
        if from_client:
            layer = ip(src=csrc, dst=sdst) / TCP(
                sport=cport,
                dport=sport,
                flags=flags,
                seq=c_seq % 2**32,
                ack=s_seq % 2**32 if "A" in flags else 0,
            )
        else:
            layer = ip(src=sdst, dst=csrc) / TCP(
                sport=sport,
                dport=cport,
                flags=flags,
                seq=s_seq % 2**32,
                ack=c_seq % 2**32 if "A" in flags else 0,
            )
        if options:
            layer[TCP].options = options
        pkt = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / layer
        if payload:
            pkt = pkt / payload
        pkt.time = round(ts0 + len(packets) * 0.001, 6)  # whole microseconds: survive a pcap exactly
        packets.append(pkt)

    if handshake:
        emit(True, "S", options=[("MSS", mss)])
        c_seq += 1
        emit(False, "SA", options=[("MSS", mss)])
        s_seq += 1
        emit(True, "A")
    else:
        c_seq += 1
        s_seq += 1
    for i in range(max(len(client_msgs), len(server_msgs))):
        for from_client, msgs in ((True, client_msgs), (False, server_msgs)):
            if i >= len(msgs) or not msgs[i]:
                continue
            msg = msgs[i]
            for start in range(0, len(msg), mss):
                chunk = msg[start : start + mss]
                emit(from_client, "PA" if start + mss >= len(msg) else "A", chunk)
                if from_client:
                    c_seq += len(chunk)
                else:
                    s_seq += len(chunk)
    if close:
        emit(True, "FA")
        c_seq += 1
        emit(False, "FA")
        s_seq += 1
        emit(True, "A")
    return packets


def linktype_of(packet: Packet) -> int:
    """The pcap link type of a scapy packet's outermost layer."""
    if isinstance(packet, Ether):
        return 1
    if isinstance(packet, CookedLinux):
        return 113
    if isinstance(packet, Loopback):
        return 0
    if isinstance(packet, IP | IPv6):
        return 101
    raise ValueError(f"no link type known for {packet.__class__.__name__}")


def _record(item: Packet | Sequence[Any]) -> tuple[float, bytes, int]:
    """(ts, captured bytes, wire length) from a scapy packet or a (ts, bytes[, wire_len]) tuple."""
    if isinstance(item, Packet):
        data = bytes(item)
        return float(item.time), data, len(data)
    ts, data = item[0], bytes(item[1])
    return float(ts), data, int(item[2]) if len(item) > 2 else len(data)


def write_pcap(
    path: str | os.PathLike[str],
    packets: Iterable[Packet | Sequence[Any]],
    linktype: int = 1,
    nano: bool = False,
    big_endian: bool = False,
) -> None:
    """A classic pcap file. Items are scapy packets or `(ts, frame_bytes[, wire_len])` tuples."""
    e = ">" if big_endian else "<"
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    scale = 1_000_000_000 if nano else 1_000_000
    out = [struct.pack(e + "IHHiIII", magic, 2, 4, 0, 0, 262144, linktype)]
    for item in packets:
        ts, data, wire_len = _record(item)
        ticks = round(ts * scale)
        out.append(struct.pack(e + "IIII", ticks // scale, ticks % scale, len(data), wire_len))
        out.append(data)
    with open(path, "wb") as f:
        f.write(b"".join(out))


def _block(e: str, btype: int, body: bytes) -> bytes:
    body += b"\x00" * (-len(body) % 4)
    blen = len(body) + 12
    return struct.pack(e + "II", btype, blen) + body + struct.pack(e + "I", blen)


def write_pcapng(
    path: str | os.PathLike[str],
    packets_with_linktypes: Iterable[tuple[Packet | Sequence[Any], int]],
    *,
    tsresol: int = 6,
    big_endian: bool = False,
) -> None:
    """A pcapng file with one section and one interface per distinct link type (in order of first use);
    each packet goes in an Enhanced Packet Block on its link type's interface. `tsresol` is the raw
    if_tsresol byte (6 = microseconds, 9 = nanoseconds, 0x80 | k = 2**-k seconds).
    """
    e = ">" if big_endian else "<"
    ticks_per_s = 2 ** (tsresol & 0x7F) if tsresol & 0x80 else 10**tsresol
    out = [_block(e, 0x0A0D0D0A, struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1))]
    ifaces: dict[int, int] = {}
    for item, linktype in packets_with_linktypes:
        if linktype not in ifaces:
            ifaces[linktype] = len(ifaces)
            options = struct.pack(e + "HHB3x", 9, 1, tsresol) + struct.pack(e + "HH", 0, 0)
            out.append(_block(e, 1, struct.pack(e + "HHI", linktype, 0, 0) + options))
        ts, data, wire_len = _record(item)
        ticks = round(ts * ticks_per_s)
        head = struct.pack(
            e + "IIIII", ifaces[linktype], ticks >> 32, ticks & 0xFFFFFFFF, len(data), wire_len
        )
        out.append(_block(e, 6, head + data))
    with open(path, "wb") as f:
        f.write(b"".join(out))


class ListSink:
    """An event sink (the engine's `EventSink`) that keeps what it is given, for assertions."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def submit(self, event: dict[str, Any]) -> None:
        self.events.append(event)


def frames(packets: Iterable[Packet]) -> list[Frame]:
    """Scapy packets as the `(ts, linktype, frame, wire_len)` tuples `CaptureFile` yields."""
    result = []
    for p in packets:
        data = bytes(p)
        result.append((float(p.time), linktype_of(p), data, len(data)))
    return result
