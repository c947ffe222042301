"""A large capture of Kong traffic for the benchmarks: the bundled Kong demo, repeated in time.

Usage: python bench/kong_capture.py [OUT] [--copies N]   (default /tmp/moesif-sniffer-bench-kong.pcap, 2000)

pcaps/kong-demo.pcap (45 calls through a Kong-like gateway, both legs, JWT/Basic/apikey consumers, gzip,
POST bodies, IPv4 and IPv6: 501 frames) written N times, copy k shifted by k * `GAP_S` seconds of
capture time and its clients' ephemeral ports moved by k * `PORT_STEP` (the demo leaves keep-alive
connections open: without new ports a copy would continue the last one's flows). The gap is longer
than the leg joiner's wait, so no leg of one copy can join a leg of another (they share Kong request
ids). Checksums are recomputed; everything else keeps its bytes. The
wrk capture (make_capture.sh) measures plain traffic, which capture workers turn into events
themselves; on this one every exchange is a possible Kong leg, which only the main process can join.
Replay it with `python bench/replay.py OUT --only ours`: each copy gives the demo's 45 events.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import dpkt

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "pcaps" / "kong-demo.pcap"
OUT = Path("/tmp/moesif-sniffer-bench-kong.pcap")
GAP_S = 10.0  # > SNIFFER_LEG_WAIT (5 s) + the demo's 0.5 s
SERVER_PORTS = frozenset({8000, 8001, 8443, 9000})  # the demo's Kong proxy and upstream ports
PORT_STEP = 37  # coprime with the ephemeral range: a tuple comes back only after 64,000 copies
EPHEMERAL = (1024, 65024)


def _moved(port: int, k: int) -> int:
    low, high = EPHEMERAL
    return low + (port - low + k * PORT_STEP) % (high - low)


def _copy(frame: bytes, k: int) -> bytes:
    """`frame` (Linux SLL2) with its client port moved for copy `k`, checksums recomputed."""
    sll = dpkt.sll2.SLL2(frame)
    ip = sll.data
    tcp = ip.data
    if not isinstance(tcp, dpkt.tcp.TCP):
        return frame
    if tcp.sport in SERVER_PORTS:
        tcp.dport = _moved(tcp.dport, k)
    else:
        tcp.sport = _moved(tcp.sport, k)
    tcp.sum = 0  # dpkt recomputes a zero checksum from the (pseudo) header when the IP layer is packed
    if isinstance(ip, dpkt.ip.IP):
        ip.sum = 0
    return bytes(sll)


def make(out: Path, copies: int) -> int:
    """Write `copies` copies of the demo to `out`; returns the number of frames written."""
    with DEMO.open("rb") as f:
        reader = dpkt.pcap.Reader(f)
        linktype = reader.datalink()
        frames = list(reader)
    written = 0
    with out.open("wb") as f:
        writer = dpkt.pcap.Writer(f, snaplen=262144, linktype=linktype, nano=False)
        for k in range(copies):
            shift = k * GAP_S
            for ts, frame in frames:
                writer.writepkt(_copy(frame, k) if k else frame, ts=ts + shift)
                written += 1
    return written


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", nargs="?", type=Path, default=OUT)
    ap.add_argument("--copies", type=int, default=2000)
    args = ap.parse_args()
    n = make(args.out, args.copies)
    print(f"{args.out}: {n:,} frames, {args.copies * 45:,} calls", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
