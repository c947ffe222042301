"""Core speed: `Pipeline.feed` over a capture's frames, next to each of its stages alone, in one run.

Usage: python bench/core.py [CAPTURE] [--runs N] [--profile] [--compiled]
CAPTURE (default /tmp/bench-100k.pcap: wrk against nginx, ~50k small keep-alive GETs; made from the 1M
bench capture, or with make_capture.sh, when missing). Frames are read into a list first, so file reading
is not timed. Stages, each timed alone on the same traffic:
  decode  `Decoder.decode` per frame (the baseline: the least any replay can cost per packet)
  flows   `FlowTable.feed`/`advance` on the decoded segments (decode not timed)
  http    the HTTP layer (`HttpConnectionParser`s routed by the pipeline) on the flow table's stream
          events (decode and flows not timed)
  core    `Pipeline.feed` per frame plus `close()`: what a replay runs. Most frames take its fused fast
          path (in-order data and ACKs of live flows: no Segment or StreamData), so core can cost less
          than the three stages above, which time the stage-by-stage path, added up.
Prints packets/s (frames of the capture / stage time), exchanges/s, microseconds per packet, and the
ratio of the full core's time to decode's, measured in the same run (best CPU time of N).
With --compiled the same stages are also timed against the mypyc-compiled core (bench/compiled.py builds
it in a scratch directory; a child process runs with it first on sys.path), and the speed-up per stage
is printed: both variants on the same frames, one after the other.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import os
import pstats
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
# The compiled variant's child process: its core comes first (bench/compiled.py).
CORE_PATH_ENV = "SNIFFER_BENCH_CORE_PATH"
if os.environ.get(CORE_PATH_ENV):
    sys.path.insert(0, os.environ[CORE_PATH_ENV])

import reassembly.pipeline  # noqa: E402
from bench.captures import WRK_CAPTURE, ensure_capture  # noqa: E402
from bench.compiled import ensure_compiled, is_compiled  # noqa: E402
from reassembly.decode import Decoder  # noqa: E402
from reassembly.events import Exchange, Segment, StreamEvent  # noqa: E402
from reassembly.flow_table import FlowTable  # noqa: E402
from reassembly.limits import Limits  # noqa: E402
from reassembly.pipeline import ADVANCE_INTERVAL_S, Pipeline  # noqa: E402
from reassembly.stats import Stats  # noqa: E402
from sniffer.capture.pcapfile import open_capture  # noqa: E402

Frame = tuple[float, int, bytes, int | None]


def read_frames(path: Path) -> list[Frame]:
    with open_capture(path) as cap:
        return [(ts, linktype, frame, wire_len) for ts, linktype, frame, wire_len in cap]


def run_decode(frames: list[Frame]) -> list[Segment]:
    decode = Decoder(Limits(), Stats()).decode
    segments = []
    for ts, linktype, frame, wire_len in frames:
        seg = decode(ts, linktype, frame, wire_len)
        if seg is not None:
            segments.append(seg)
    return segments


def run_flows(segments: list[Segment]) -> list[list[StreamEvent]]:
    """The flow table fed as the pipeline feeds it (timeouts checked once per capture second)."""
    table = FlowTable(Limits(), Stats())
    feed = table.feed
    batches: list[list[StreamEvent]] = []
    next_ts: float | None = None
    for seg in segments:
        ts = seg.ts
        if next_ts is None:
            next_ts = ts + ADVANCE_INTERVAL_S
        elif ts >= next_ts:
            next_ts = ts + ADVANCE_INTERVAL_S
            batches.append(table.advance(ts))
        batches.append(feed(seg))
    end_ts = segments[-1].ts if segments else 0.0
    batches.append(table.close(end_ts))
    return batches


def run_http(batches: list[list[StreamEvent]]) -> int:
    """The HTTP layer alone: the pipeline's own routing over pre-computed stream events."""
    pipeline = Pipeline()
    route = pipeline._route  # the routing is the HTTP layer's entry point
    n = 0
    for events in batches:
        if events:
            out: list[Exchange] = []
            route(events, out)
            n += len(out)
    return n + len(pipeline.close(0.0))


def run_core(frames: list[Frame]) -> int:
    pipeline = Pipeline()
    feed = pipeline.feed
    n = 0
    for ts, linktype, frame, wire_len in frames:
        done = feed(ts, linktype, frame, wire_len)
        if done:
            n += len(done)
    return n + len(pipeline.close())


def best_time(fn: Callable[[], object], runs: int) -> float:
    """Fastest of `runs` CPU times of this process: the least disturbed by the rest of the machine
    (CPU time, not wall time, because this small machine is often shared with test runs)."""
    best = float("inf")
    for _ in range(runs):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best


def measure(frames: list[Frame], runs: int) -> tuple[int, dict[str, float]]:
    """Exchanges, and the best CPU seconds of each stage over `frames`."""
    segments = run_decode(frames)
    batches = run_flows(segments)
    exchanges = run_http(batches)
    # The inputs are long-lived: keep the collector from re-scanning them, as it never would in a replay.
    gc.collect()
    gc.freeze()
    times = {
        "decode": best_time(lambda: run_decode(frames), runs),
        "flows": best_time(lambda: run_flows(segments), runs),
        "http": best_time(lambda: run_http(batches), runs),
        "core": best_time(lambda: run_core(frames), runs),
    }
    return exchanges, times


def measure_compiled(capture: Path, runs: int) -> dict[str, float]:
    """The stage times of the compiled core, from a child process that imports it first."""
    env = {**os.environ, CORE_PATH_ENV: str(ensure_compiled())}
    cmd = [sys.executable, __file__, str(capture), "--runs", str(runs), "--json"]
    done = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    result: dict[str, float] = json.loads(done.stdout)
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("capture", nargs="?", type=Path, default=WRK_CAPTURE)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--profile", action="store_true", help="cProfile the full core instead of timing")
    ap.add_argument("--compiled", action="store_true", help="also time the mypyc-compiled core")
    ap.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # the compiled child's output
    args = ap.parse_args()
    frames = read_frames(ensure_capture(args.capture))
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        run_core(frames)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(30)
        return 0
    exchanges, times = measure(frames, args.runs)
    if args.json:
        if not is_compiled(reassembly.pipeline):
            raise SystemExit(f"{CORE_PATH_ENV} did not give the compiled core")
        print(json.dumps(times))
        return 0
    n = len(frames)
    variant = "compiled" if is_compiled(reassembly.pipeline) else "pure Python"
    print(f"{args.capture}: {n:,} packets, {exchanges:,} exchanges; best of {args.runs} runs ({variant})")
    for stage, seconds in times.items():
        xs = f"{exchanges / seconds:>10,.0f} exchanges/s" if stage in ("http", "core") else " " * 23
        print(f"{stage:<7} {n / seconds:>10,.0f} packets/s {xs}  {seconds / n * 1e6:6.2f} us/packet")
    print(f"core / decode time: {times['core'] / times['decode']:.2f}x")
    if args.compiled:
        compiled = measure_compiled(args.capture, args.runs)
        print("\nmypyc-compiled core (same frames, a child process):")
        for stage, seconds in compiled.items():
            print(
                f"{stage:<7} {n / seconds:>10,.0f} packets/s {seconds / n * 1e6:6.2f} us/packet"
                f"  {times[stage] / seconds:5.2f}x pure Python"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
