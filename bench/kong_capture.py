"""A large capture of Kong traffic for the benchmarks: the bundled Kong demo, repeated in time.

Usage: python bench/kong_capture.py [OUT] [--copies N] [--ethernet]
       (default /tmp/moesif-sniffer-bench-kong.pcap, 2000 copies, Linux SLL2 frames as captured)

pcaps/kong-demo.pcap (45 calls through a Kong-like gateway, both legs, JWT/Basic/apikey consumers, gzip,
POST bodies, IPv4 and IPv6: 501 frames) written N times, copy k shifted by k * `GAP_S` seconds of
capture time and its clients' ephemeral ports moved by k * `PORT_STEP` (the demo leaves keep-alive
connections open: without new ports a copy would continue the last one's flows). The gap is longer
than the leg joiner's wait, and each copy's Kong request ids end in the copy's number (the last 4 of
their 32 hex digits), so no leg of one copy can join a leg of another, even when a live replay sends
the copies microseconds apart. Checksums are recomputed; everything else keeps its bytes, except with
`--ethernet` (for tcpreplay onto a veth, bench/live.py `--traffic kong`), where each frame's SLL2 header
becomes an Ethernet one. The
wrk capture (make_capture.sh) measures plain traffic, which capture workers turn into events
themselves; on this one every exchange is a possible Kong leg, which only the main process can join.
Replay it with `python bench/replay.py OUT --only ours`: each copy gives the demo's 45 events.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import dpkt

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "pcaps" / "kong-demo.pcap"
OUT = Path("/tmp/moesif-sniffer-bench-kong.pcap")
ETHERNET_OUT = Path("/tmp/moesif-sniffer-bench-kong-eth.pcap")
GAP_S = 10.0  # > SNIFFER_LEG_WAIT (5 s) + the demo's 0.5 s
SERVER_PORTS = frozenset({8000, 8001, 8443, 9000})  # the demo's Kong proxy and upstream ports
PORT_STEP = 37  # coprime with the ephemeral range: a tuple comes back only after 64,000 copies
EPHEMERAL = (1024, 65024)
KONG_ID = re.compile(rb"(?i)(x-kong-request-id:[ \t]*[0-9a-f]{28})[0-9a-f]{4}")
LINKTYPE_ETHERNET = 1


def _moved(port: int, k: int) -> int:
    low, high = EPHEMERAL
    return low + (port - low + k * PORT_STEP) % (high - low)


def _copy(frame: bytes, k: int, ethernet: bool) -> bytes:
    """`frame` (Linux SLL2) with its client port and Kong request ids moved for copy `k`, checksums
    recomputed; with `ethernet`, as an Ethernet frame."""
    sll = dpkt.sll2.SLL2(frame)
    ip = sll.data
    tcp = ip.data
    if k == 0 or not isinstance(tcp, dpkt.tcp.TCP):
        return _framed(sll, ethernet)
    if tcp.data:
        tcp.data = KONG_ID.sub(lambda m: m.group(1) + b"%04x" % (k & 0xFFFF), tcp.data)
    if tcp.sport in SERVER_PORTS:
        tcp.dport = _moved(tcp.dport, k)
    else:
        tcp.sport = _moved(tcp.sport, k)
    tcp.sum = 0  # dpkt recomputes a zero checksum from the (pseudo) header when the IP layer is packed
    if isinstance(ip, dpkt.ip.IP):
        ip.sum = 0
    return _framed(sll, ethernet)


def _framed(sll: dpkt.sll2.SLL2, ethernet: bool) -> bytes:
    if not ethernet:
        return bytes(sll)
    return bytes(dpkt.ethernet.Ethernet(src=b"\x02" + b"\x00" * 5, dst=b"\x02" + b"\x00" * 4 + b"\x01",
                                        type=sll.ethtype, data=sll.data))  # fmt: skip


def make(out: Path, copies: int, ethernet: bool = False) -> int:
    """Write `copies` copies of the demo to `out`; returns the number of frames written."""
    with DEMO.open("rb") as f:
        reader = dpkt.pcap.Reader(f)
        linktype = reader.datalink()
        frames = list(reader)
    written = 0
    with out.open("wb") as f:
        writer = dpkt.pcap.Writer(
            f, snaplen=262144, linktype=LINKTYPE_ETHERNET if ethernet else linktype, nano=False
        )
        for k in range(copies):
            shift = k * GAP_S
            for ts, frame in frames:
                writer.writepkt(_copy(frame, k, ethernet) if k or ethernet else frame, ts=ts + shift)
                written += 1
    return written


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", nargs="?", type=Path)
    ap.add_argument("--copies", type=int, default=2000)
    ap.add_argument("--ethernet", action="store_true", help="Ethernet frames (for tcpreplay)")
    args = ap.parse_args()
    out = args.out or (ETHERNET_OUT if args.ethernet else OUT)
    n = make(out, args.copies, args.ethernet)
    print(f"{out}: {n:,} frames, {args.copies * 45:,} calls", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
