"""Soak: one in-process `Engine` fed a capture over and over for minutes, RSS sampled; memory must plateau.

Usage: python bench/soak.py [CAPTURE] [--minutes M] [--sample S]
CAPTURE (default /tmp/bench-100k.pcap: wrk keep-alive traffic, see bench/core.py) is read into memory
once; each pass feeds every frame again with its timestamp shifted past the previous pass's end plus the
idle timeout, so every pass's flows are new flows (the old ones time out or close on FIN) and the
engine's tables, joiner and event builder churn the way a long live capture makes them. Events are
serialised with orjson (what a sink would do) and dropped. RSS (/proc/self/statm) is sampled every S
seconds (default 5); printed: RSS after the first minute, at the end, and end / first-minute (target:
within 10 %), plus the largest sample, flows held at the end and the loss counters.

Result (2026-11-24, 2 vCPU shared with a 1M-input fuzzing run, /tmp/bench-100k.pcap, --minutes 4, commit
5a966d8):
  35 passes, 3,461,441 packets, 1,728,659 events in 240 s; flows held at the end 20
  RSS after 1 min 64.4 MiB, at the end 64.9 MiB, ratio 1.007 (largest sample 64.9 MiB); losses: none
  (RSS at start, with the 100k frames loaded: 64.0 MiB; an earlier run before 5a966d8: ratio 1.006.)
Since 2026-12-07 the collector is tuned as `run` and `replay` tune it (sniffer/gc_policy.py), so that
garbage only a full collection frees shows here. Kong traffic (/tmp/kong30k.pcap: the first 30k frames of
bench/kong_capture.py's capture, short connections), --minutes 3: 351 passes, 10.5M packets, 945,592
events; RSS 36.4 MiB after 1 min, 36.5 at the end (ratio 1.000). The same run on the code before closed
parsers were unlinked from their readers: 47.2 and 48.1 MiB, the difference cyclic garbage waiting.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from reassembly.stats import Stats  # noqa: E402
from sniffer.capture.pcapfile import open_capture  # noqa: E402
from sniffer.config import Config  # noqa: E402
from sniffer.engine import Engine  # noqa: E402
from sniffer.gc_policy import tune_collector  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / (1 << 20)


class DropSink:
    def __init__(self) -> None:
        self.events = 0
        self.bytes = 0

    def submit(self, event: dict[str, Any]) -> None:
        self.bytes += len(orjson.dumps(event))
        self.events += 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("capture", nargs="?", default="/tmp/bench-100k.pcap")
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--sample", type=float, default=5.0)
    args = ap.parse_args()
    if not Path(args.capture).exists():
        big = "/tmp/moesif-sniffer-bench-1M.pcap"
        print(f"{args.capture} missing: tcpdump -r {big} -c 100000 -w {args.capture}")
        return 2
    with open_capture(args.capture) as cap:
        frames = list(cap)
    config = Config()
    span = frames[-1][0] - frames[0][0]
    shift_per_pass = span + config.idle_timeout + 10.0
    stats = Stats()
    sink = DropSink()
    engine = Engine(config, sink, stats)
    pipeline = engine.pipeline
    assert pipeline is not None
    feed = engine.feed
    tune_collector()  # the collector as `run` and `replay` set it (gc_policy): what the daemon lives with
    started = time.monotonic()
    deadline = started + args.minutes * 60
    next_sample = started + args.sample
    first_minute: float | None = None
    samples: list[tuple[float, float]] = []
    passes = 0
    print(f"{len(frames):,} frames per pass, RSS at start {rss_mib():.1f} MiB", flush=True)
    while time.monotonic() < deadline:
        shift = passes * shift_per_pass
        for i, (ts, lt, frame, wire) in enumerate(frames):
            feed(ts + shift, lt, frame, wire)
            if not i & 0x3FF:
                now = time.monotonic()
                if now >= next_sample:
                    next_sample = now + args.sample
                    rss = rss_mib()
                    samples.append((now - started, rss))
                    if first_minute is None and now - started >= 60:
                        first_minute = rss
                        print(f"  after the first minute: {rss:.1f} MiB", flush=True)
                    print(
                        f"  {now - started:6.0f} s  pass {passes}  RSS {rss:7.1f} MiB  "
                        f"flows {pipeline.flow_count:6,}  events {sink.events:,}",
                        flush=True,
                    )
                if now >= deadline:
                    break
        passes += 1
    end_rss = rss_mib()
    flows_left = pipeline.flow_count
    engine.close()
    elapsed = time.monotonic() - started
    peak = max(r for _, r in samples) if samples else end_rss
    print(
        f"{passes} passes, {stats['packets']:,} packets, {sink.events:,} events in {elapsed:.0f} s; "
        f"flows held at the end {flows_left:,}"
    )
    if first_minute is None:
        print(f"ran less than a minute: RSS at the end {end_rss:.1f} MiB")
        return 1
    ratio = end_rss / first_minute
    print(
        f"RSS after 1 min {first_minute:.1f} MiB, at the end {end_rss:.1f} MiB, ratio {ratio:.3f} "
        f"(largest sample {peak:.1f} MiB); losses: {stats.losses() or 'none'}"
    )
    return 0 if ratio <= 1.10 else 1


if __name__ == "__main__":
    sys.exit(main())
