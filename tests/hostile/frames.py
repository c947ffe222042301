"""Frames built with `struct` (scapy costs ~100 us a packet; these ~2 us) and a streaming pcap writer.

Checksums are left zero: the decoder never checks them (checksum offload makes them garbage anyway).
`TcpConn` keeps both directions' sequence numbers so a legitimate keep-alive exchange can be emitted
anywhere in an attack capture and still be a well-formed connection.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterable, Iterator
from types import TracebackType

__all__ = [
    "ACK",
    "FIN",
    "PSH",
    "RST",
    "SYN",
    "PcapWriter",
    "Record",
    "TcpConn",
    "ether",
    "interleave",
    "ip4",
    "ipv4_tcp",
    "ipv6_tcp",
]

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
MASK = 0xFFFFFFFF
ETH_IPV4 = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00"
ETH_IPV6 = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x86\xdd"

Record = tuple[float, bytes]

_ip4 = struct.Struct("!BBHHHBBH4s4s")
_ip6 = struct.Struct("!IHBB16s16s")
_tcp = struct.Struct("!HHIIBBHHH")
_pcap_rec = struct.Struct("<IIII")


def ip4(text: str) -> bytes:
    return socket.inet_aton(text)


def _tcp_header(sport: int, dport: int, seq: int, ack: int, flags: int, window: int, options: bytes) -> bytes:
    options += b"\x00" * (-len(options) % 4)
    doff = 20 + len(options)
    return _tcp.pack(sport, dport, seq & MASK, ack & MASK, (doff >> 2) << 4, flags, window, 0, 0) + options


def ipv4_tcp(
    src: bytes,
    dst: bytes,
    sport: int,
    dport: int,
    seq: int,
    ack: int,
    flags: int,
    payload: bytes = b"",
    *,
    window: int = 65535,
    options: bytes = b"",
    ident: int = 0,
) -> bytes:
    """An IPv4 datagram (DF set, no IP options) carrying one TCP segment."""
    tcp = _tcp_header(sport, dport, seq, ack, flags, window, options)
    total = 20 + len(tcp) + len(payload)
    return _ip4.pack(0x45, 0, total & 0xFFFF, ident, 0x4000, 64, 6, 0, src, dst) + tcp + payload


def ipv6_tcp(
    src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int, flags: int, payload: bytes = b""
) -> bytes:
    tcp = _tcp_header(sport, dport, seq, ack, flags, 65535, b"")
    return _ip6.pack(6 << 28, len(tcp) + len(payload), 6, 64, src, dst) + tcp + payload


def ether(packet: bytes) -> bytes:
    return (ETH_IPV6 if packet[0] >> 4 == 6 else ETH_IPV4) + packet


class TcpConn:
    """One IPv4 connection's frames (Ethernet), with consistent sequence and acknowledgment numbers."""

    def __init__(
        self, client: tuple[str, int], server: tuple[str, int], isn_client: int = 1000, isn_server: int = 5000
    ) -> None:
        self.caddr, self.cport = ip4(client[0]), client[1]
        self.saddr, self.sport = ip4(server[0]), server[1]
        self.c_seq = isn_client & MASK
        self.s_seq = isn_server & MASK

    def frame(self, from_client: bool, flags: int, payload: bytes = b"", seq: int | None = None) -> bytes:
        """One segment; `seq` overrides the sender's position (retransmissions, holes) without moving it."""
        if from_client:
            s = self.c_seq if seq is None else seq
            pkt = ipv4_tcp(self.caddr, self.saddr, self.cport, self.sport, s, self.s_seq, flags, payload)
        else:
            s = self.s_seq if seq is None else seq
            pkt = ipv4_tcp(self.saddr, self.caddr, self.sport, self.cport, s, self.c_seq, flags, payload)
        return ETH_IPV4 + pkt

    def handshake(self) -> list[bytes]:
        out = [self.frame(True, SYN)]
        self.c_seq = (self.c_seq + 1) & MASK
        out.append(self.frame(False, SYN | ACK))
        self.s_seq = (self.s_seq + 1) & MASK
        out.append(self.frame(True, ACK))
        return out

    def send(self, from_client: bool, data: bytes, mss: int = 1448) -> list[bytes]:
        """`data` in `mss`-sized segments (PSH on the last), then the peer's pure ACK."""
        out = []
        for i in range(0, len(data), mss):
            chunk = data[i : i + mss]
            last = i + mss >= len(data)
            out.append(self.frame(from_client, ACK | (PSH if last else 0), chunk))
            if from_client:
                self.c_seq = (self.c_seq + len(chunk)) & MASK
            else:
                self.s_seq = (self.s_seq + len(chunk)) & MASK
        out.append(self.frame(not from_client, ACK))
        return out

    def close(self) -> list[bytes]:
        out = [self.frame(True, FIN | ACK)]
        self.c_seq = (self.c_seq + 1) & MASK
        out.append(self.frame(False, FIN | ACK))
        self.s_seq = (self.s_seq + 1) & MASK
        out.append(self.frame(True, ACK))
        return out


class PcapWriter:
    """A little-endian microsecond pcap written record by record (a 100 MB capture never sits in memory).

    Timestamps are assigned by the writer: `ts0` plus `step` per record, so capture time advances the same
    way whatever the attack, and the legitimate calls interleaved get distinct, increasing times.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, ts0: float = 1_700_000_000.0, step: float = 10e-6
    ) -> None:
        self._f = open(path, "wb", buffering=1 << 20)  # noqa: SIM115 - closed in close()
        self._f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        self._ticks = round(ts0 * 1_000_000)
        self._step = max(1, round(step * 1_000_000))
        self.count = 0
        self.bytes = 0

    @property
    def ts(self) -> float:
        """The capture time the next record gets."""
        return self._ticks / 1_000_000

    def write(self, frame: bytes) -> None:
        t = self._ticks
        self._f.write(_pcap_rec.pack(t // 1_000_000, t % 1_000_000, len(frame), len(frame)))
        self._f.write(frame)
        self._ticks = t + self._step
        self.count += 1
        self.bytes += len(frame)

    def write_all(self, frames: Iterable[bytes]) -> None:
        for f in frames:
            self.write(f)

    def skip(self, seconds: float) -> None:
        """Let capture time pass without packets (the next record is `seconds` later)."""
        self._ticks += round(seconds * 1_000_000)

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> PcapWriter:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def interleave(attack: Iterator[bytes], legit: list[list[bytes]], total_hint: int) -> Iterator[bytes]:
    """The attack's frames with each legit burst inserted at evenly spread points (by frame count)."""
    every = max(1, total_hint // (len(legit) + 1))
    bursts = iter(legit)
    for n, f in enumerate(attack, 1):
        yield f
        if n % every == 0:
            burst = next(bursts, None)
            if burst is not None:
                yield from burst
    for burst in bursts:
        yield from burst
