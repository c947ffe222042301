"""A lossy userspace wire between two interfaces: drops, reorders and duplicates TCP data segments.

This kernel has no netem, so the lossy link is this process: it runs in its own network namespace,
holds an AF_PACKET socket on each of two veths and copies every Ethernet frame from one side to the
other (ARP and NDP included, so IPv4 and IPv6 both resolve). TCP segments that carry payload are
sometimes dropped, sometimes held back and sent after the next data segment in the same direction
(reordered), and sometimes sent twice (duplicated). The endpoints' TCP stacks then recover for real:
fast retransmit, RTO, SACK, tail-loss probes.

Usage: relay.py IFACE_A IFACE_B [--drop 0.03] [--reorder 0.03] [--dup 0.02] [--seed N]
On SIGTERM/SIGINT it prints its counters as one JSON line on stdout and exits 0. It prints `READY`
once both sockets are bound.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import select
import signal
import socket
import struct
import sys
import time
from dataclasses import asdict, dataclass

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
PACKET_IGNORE_OUTGOING = 23
SOL_PACKET = 263
HOLD_TIMEOUT_S = 0.003  # a held frame is released after this even when no next frame comes


@dataclass
class Counters:
    frames: int = 0
    tcp_data: int = 0
    dropped: int = 0
    reordered: int = 0  # a held data segment was overtaken by the next data segment
    delayed: int = 0  # a held data segment was released by the timer, nothing overtook it
    duplicated: int = 0
    send_errors: int = 0


def tcp_payload_len(frame: bytes) -> int:
    """Payload bytes of a TCP segment in an Ethernet frame (0 for anything else)."""
    if len(frame) < 14:
        return 0
    ethertype = struct.unpack_from("!H", frame, 12)[0]
    off = 14
    if ethertype == 0x8100 and len(frame) >= 18:
        ethertype = struct.unpack_from("!H", frame, 16)[0]
        off = 18
    if ethertype == 0x0800 and len(frame) >= off + 20:
        ihl = (frame[off] & 0x0F) * 4
        if frame[off + 9] != 6:
            return 0
        total = struct.unpack_from("!H", frame, off + 2)[0]
        tcp = off + ihl
        if len(frame) < tcp + 13:
            return 0
        return max(0, total - ihl - (frame[tcp + 12] >> 4) * 4)
    if ethertype == 0x86DD and len(frame) >= off + 40:
        if frame[off + 6] != 6:  # no extension headers on this test link
            return 0
        plen = struct.unpack_from("!H", frame, off + 4)[0]
        tcp = off + 40
        if len(frame) < tcp + 13:
            return 0
        return max(0, plen - (frame[tcp + 12] >> 4) * 4)
    return 0


class Side:
    """One direction of the wire: frames received on `rx` leave through `tx`."""

    def __init__(self, rx: socket.socket, tx: socket.socket) -> None:
        self.rx = rx
        self.tx = tx
        self.held: bytes | None = None
        self.held_at = 0.0


def open_socket(iface: str) -> socket.socket:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    with contextlib.suppress(OSError):  # older kernels: outgoing copies are filtered by pkttype below
        s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
    s.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE: never drop by accident
    s.bind((iface, 0))
    return s


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("iface_a")
    ap.add_argument("iface_b")
    ap.add_argument("--drop", type=float, default=0.03)
    ap.add_argument("--reorder", type=float, default=0.03)
    ap.add_argument("--dup", type=float, default=0.02)
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args(argv)

    rng = random.Random(args.seed)
    counters = Counters()
    a = open_socket(args.iface_a)
    b = open_socket(args.iface_b)
    sides = {a: Side(a, b), b: Side(b, a)}
    stop = False

    def on_signal(_sig: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print("READY", flush=True)

    def send(side: Side, frame: bytes) -> None:
        try:
            side.tx.send(frame)
        except OSError:
            counters.send_errors += 1

    def release(side: Side, overtaken: bool) -> None:
        if side.held is not None:
            send(side, side.held)
            side.held = None
            if overtaken:
                counters.reordered += 1
            else:
                counters.delayed += 1

    while not stop:
        try:
            ready, _, _ = select.select([a, b], [], [], HOLD_TIMEOUT_S)
        except InterruptedError:
            continue
        now = time.monotonic()
        for s in ready:
            side = sides[s]
            try:
                frame, addr = s.recvfrom(65535)
            except OSError:
                continue
            if addr[2] == PACKET_OUTGOING:
                continue
            counters.frames += 1
            if tcp_payload_len(frame) == 0:
                send(side, frame)  # ACKs, SYNs, ARP, NDP pass at once, even past a held segment
                continue
            counters.tcp_data += 1
            roll = rng.random()
            if roll < args.drop:
                counters.dropped += 1
                continue
            roll -= args.drop
            if roll < args.reorder and side.held is None:
                side.held, side.held_at = frame, now
                continue
            roll -= args.reorder
            send(side, frame)
            if roll < args.dup:
                counters.duplicated += 1
                send(side, frame)
            release(side, overtaken=True)
        for side in sides.values():
            if side.held is not None and now - side.held_at >= HOLD_TIMEOUT_S:
                release(side, overtaken=False)
    for side in sides.values():
        release(side, overtaken=False)
    print(json.dumps(asdict(counters)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
