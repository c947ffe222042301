"""Live ring walk: `walk_blocks` over a TPACKET_V3 ring laid out by hand, next to a bare walk, in one run.

Usage: python bench/ring_walk.py [CAPTURE] [--runs N] [--compiled]
CAPTURE (default /tmp/bench-100k.pcap, wrk against nginx): its frames, from the IP header on (the ring is
SOCK_DGRAM), fill 16 blocks of 1 MiB in an anonymous mapping as packet(7) lays them out, with the kernel's
`blk_len`, as tests/test_ring_walk.py does. No socket and no root: this times the walk alone, with a no-op
handler, where `bench/live.py` measures the whole daemon against the kernel's drop counter.
  walk  `walk_blocks` as the daemon runs it: each block copied out once, its headers read in place,
        each packet a bytes slice handed to the handler
  bare  the least a Python walk of the same ring does: follow each packet's `tp_next_offset` with
        `struct.unpack_from` on the mapping, no time, no slice, no handler (the baseline)
Prints nanoseconds per packet (best of N, each run over a freshly released ring) and walk / bare.
With --compiled the walk is also timed against the mypyc-compiled build (bench/compiled.py), in a child
process that imports it first.
"""

from __future__ import annotations

import argparse
import mmap
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
CORE_PATH_ENV = "SNIFFER_BENCH_CORE_PATH"  # the compiled child's build, first on sys.path
if os.environ.get(CORE_PATH_ENV):
    sys.path.insert(0, os.environ[CORE_PATH_ENV])

import sniffer.capture.ring_walk as ring_walk  # noqa: E402
from bench.captures import WRK_CAPTURE, ensure_capture  # noqa: E402
from bench.compiled import ensure_compiled, is_compiled  # noqa: E402
from reassembly.decode import IPV4_AT  # noqa: E402
from sniffer.capture.pcapfile import open_capture  # noqa: E402

BLOCK = 1 << 20
BLOCKS = 16
FIRST = 48  # tpacket_block_desc, then the first packet
MAC = 80  # tpacket3_hdr + sockaddr_ll, aligned: where a packet's bytes start, from its header
_PKT = struct.Struct("<IIIII4xH30xHB")  # next_offset, sec, nsec, snaplen, len, mac, hatype, pkttype
_BLK = struct.Struct("<IIII")  # block_status, num_pkts, offset_to_first_pkt, blk_len (at byte 8)
_NEXT = struct.Struct("<I").unpack_from


def ip_frames(path: Path) -> list[bytes]:
    """The capture's frames from their IP header on (as a SOCK_DGRAM ring holds them)."""
    out: list[bytes] = []
    with open_capture(path) as cap:
        for _, linktype, frame, _ in cap:
            at = IPV4_AT.get(linktype)
            out.append(frame[at[1] :] if at is not None else frame)
    return out


def fill(mm: mmap.mmap, frames: list[bytes]) -> int:
    """Release every block to user space, packed with `frames` (cycled); returns the packets placed."""
    placed = 0
    k = 0
    for b in range(BLOCKS):
        base = b * BLOCK
        p = base + FIRST
        n = 0
        last = p
        while True:
            frame = frames[k % len(frames)]
            aligned = (MAC + len(frame) + 15) // 16 * 16
            if p + aligned > base + BLOCK:
                break
            _PKT.pack_into(mm, p, aligned, 1_700_000_000 + k // 100_000, k % 1_000_000_000, len(frame),
                           len(frame), MAC, 1, 0)  # fmt: skip
            mm[p + MAC : p + MAC + len(frame)] = frame
            last = p
            p += aligned
            n += 1
            k += 1
        _PKT.pack_into(mm, last, 0, *_PKT.unpack_from(mm, last)[1:])  # the last packet has no next
        _BLK.pack_into(mm, base + 8, ring_walk.TP_STATUS_USER, n, FIRST, p - base)
        placed += n
    return placed


def _noop(ts: float, linktype: int, frame: bytes, wire: int) -> None:
    return None


def bare(mm: mmap.mmap) -> int:
    """Follow every released block's packets by their next offsets; give the blocks back."""
    seen = 0
    for b in range(BLOCKS):
        base = b * BLOCK
        _, num, first, _ = _BLK.unpack_from(mm, base + 8)
        p = base + first
        for _ in range(num):
            p += _NEXT(mm, p)[0]
        seen += num
        _BLK.pack_into(mm, base + 8, ring_walk.TP_STATUS_KERNEL, num, first, 0)
    return seen


def best_ns(frames: list[bytes], runs: int) -> dict[str, float]:
    """Nanoseconds a packet, best of `runs`, for each way of walking the same ring."""
    mm = mmap.mmap(-1, BLOCKS * BLOCK)
    out: dict[str, float] = {}
    for name in ("bare", "walk"):
        best = float("inf")
        for _ in range(runs):
            packets = fill(mm, frames)
            start = time.perf_counter()
            if name == "walk":
                _, handed, _, _ = ring_walk.walk_blocks(mm, 0, BLOCK, BLOCKS, BLOCKS, _noop, None, 0.0)
            else:
                handed = bare(mm)
            seconds = time.perf_counter() - start
            if handed != packets:
                raise SystemExit(f"{name} walked {handed} of {packets} packets")
            best = min(best, seconds / packets * 1e9)
        out[name] = best
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("capture", nargs="?", type=Path, default=WRK_CAPTURE)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--compiled", action="store_true", help="also time the mypyc-compiled walk")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # the compiled child
    args = ap.parse_args()
    frames = ip_frames(ensure_capture(args.capture))
    if args.child:
        if not is_compiled(ring_walk):
            raise SystemExit(f"{CORE_PATH_ENV} did not give the compiled walk")
        print(best_ns(frames, args.runs)["walk"])
        return 0
    ns = best_ns(frames, args.runs)
    variant = "compiled" if is_compiled(ring_walk) else "pure Python"
    where = f"{BLOCKS} x {BLOCK >> 20} MiB blocks"
    print(f"{len(frames):,} frames of {args.capture.name} in {where}, best of {args.runs}")
    print(f"{'walk':<28}{'ns/packet':>10}  {'/ bare':>7}")
    print(f"{'bare (baseline)':<28}{ns['bare']:>10.1f}  {1.0:>6.2f}x")
    print(f"{'walk_blocks, ' + variant:<28}{ns['walk']:>10.1f}  {ns['walk'] / ns['bare']:>6.2f}x")
    if args.compiled:
        env = {**os.environ, CORE_PATH_ENV: str(ensure_compiled())}
        cmd = [sys.executable, __file__, str(args.capture), "--runs", str(args.runs), "--child"]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        compiled = float(done.stdout.strip())
        print(f"{'walk_blocks, compiled':<28}{compiled:>10.1f}  {compiled / ns['bare']:>6.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
