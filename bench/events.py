"""Event-building speed: `EventBuilder.build` per call, next to `orjson.dumps` of the same events.

Usage: python bench/events.py [CAPTURE] [--runs N] [--profile]
CAPTURE (default /tmp/bench-100k.pcap, made from the 1M bench capture or with make_capture.sh when
missing) gives the "wrk" mix: keep-alive GETs with JSON bodies and Basic auth, as `replay` sees them.
pcaps/kong-demo.pcap gives the "kong" mix: joined legs, JWT/Basic/apikey, gzip, POST bodies.
The calls are collected once by the real engine (pipeline + leg joiner), so only building is timed.
The baseline is orjson.dumps of the built events, measured in the same run: the serialisation every
event costs anyway, so "build / dumps" says how many serialisations one build is worth.
The "after core" line times everything `replay` does after the core, per exchange: leg join, build,
JSON lines to /dev/null (`Engine.feed_exchanges` with capture=False, as with capture workers).
Against the compiled build: SNIFFER_BENCH_CORE_PATH=$(python bench/compiled.py) python bench/events.py
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
CORE_PATH_ENV = "SNIFFER_BENCH_CORE_PATH"
if os.environ.get(CORE_PATH_ENV):
    sys.path.insert(0, os.environ[CORE_PATH_ENV])

from bench.captures import WRK_CAPTURE, ensure_capture  # noqa: E402
from bench.compiled import is_compiled  # noqa: E402
from reassembly.events import Exchange, replace  # noqa: E402
from sniffer.capture.pcapfile import open_capture  # noqa: E402
from sniffer.config import Config  # noqa: E402
from sniffer.engine import JOIN_ADVANCE_INTERVAL_S, Engine  # noqa: E402
from sniffer.kong.api_call import ApiCall  # noqa: E402
from sniffer.moesif.event import EventBuilder  # noqa: E402
from sniffer.moesif.jsonlines import JsonLinesSink  # noqa: E402

KONG_CAPTURE = ROOT / "pcaps" / "kong-demo.pcap"


def collect_exchanges(capture: Path, config: Config) -> list[tuple[float, list[Exchange]]]:
    """What the core hands the engine: (capture time, exchanges completed by that frame or timeout)."""
    engine = Engine(config, sink=None)  # type: ignore[arg-type]  # only its pipeline is used
    pipeline = engine.pipeline
    assert pipeline is not None
    out: list[tuple[float, list[Exchange]]] = []
    ts = 0.0
    with open_capture(capture) as cap:
        for ts, linktype, frame, wire_len in cap:
            exchanges = pipeline.feed(ts, linktype, frame, wire_len)
            if exchanges:
                out.append((ts, exchanges))
    out.append((ts, pipeline.close(ts)))
    return out


def after_core(name: str, batches: list[tuple[float, list[Exchange]]], config: Config, runs: int) -> None:
    """Joiner + builder + JSON lines for every exchange, through the engine as capture workers feed it."""
    n = sum(len(b) for _, b in batches)

    def run() -> None:
        with open(os.devnull, "wb") as out:
            sink = JsonLinesSink(out)
            engine = Engine(config, sink, capture=False)
            feed = engine.feed_exchanges
            for ts, exchanges in batches:
                feed(ts, exchanges)
            engine.close()
            sink.close()

    t = best_time(run, runs)
    print(f"{name:<6} {n:>7,} exchanges after core: {n / t:>10,.0f} exchanges/s ({t / n * 1e6:6.2f} us)")


def profile_after_core(batches: list[tuple[float, list[Exchange]]], config: Config) -> None:
    with open(os.devnull, "wb") as out:
        sink = JsonLinesSink(out)
        engine = Engine(config, sink, capture=False)
        prof = cProfile.Profile()
        prof.enable()
        for ts, exchanges in batches:
            engine.feed_exchanges(ts, exchanges)
        engine.close()
        sink.close()
        prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(30)


def collect_calls(capture: Path, config: Config) -> list[ApiCall]:
    """The ApiCalls `replay` would build events from, in the same order: the engine's own pipeline and
    joiner, driven as `Engine.feed` drives them (the engine itself cannot hand them over: compiled, its
    builder cannot be swapped for a recorder)."""
    engine = Engine(config, sink=None)  # type: ignore[arg-type]  # nothing is built or submitted
    pipeline, joiner = engine.pipeline, engine.joiner
    assert pipeline is not None
    calls: list[ApiCall] = []
    next_join = 0.0
    ts = 0.0
    with open_capture(capture) as cap:
        for ts, linktype, frame, wire_len in cap:
            for ex in pipeline.feed(ts, linktype, frame, wire_len):
                calls += joiner.feed(ex)
            if ts >= next_join:
                next_join = ts + JOIN_ADVANCE_INTERVAL_S
                calls += joiner.advance(ts)
    for ex in pipeline.close(ts):
        calls += joiner.feed(ex)
    return calls + joiner.close()


def best_time(fn: Callable[[], object], runs: int) -> float:
    """Fastest of `runs` wall times: the least disturbed by the rest of the machine."""
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def bench_mix(name: str, calls: list[ApiCall], builder: EventBuilder, runs: int) -> None:
    build = builder.build
    events = [e for e in (build(c) for c in calls) if e is not None]
    dumps = orjson.dumps

    def build_all() -> None:
        for c in calls:
            build(c)

    def dump_all() -> None:
        for e in events:
            dumps(e)

    t_build = best_time(build_all, runs)
    t_dump = best_time(dump_all, runs)
    n = len(calls)
    print(
        f"{name:<6} {n:>7,} calls  build {n / t_build:>10,.0f} events/s ({t_build / n * 1e6:6.2f} us)"
        f"  orjson.dumps {len(events) / t_dump:>10,.0f} events/s ({t_dump / len(events) * 1e6:5.2f} us)"
        f"  build/dumps {(t_build / n) / (t_dump / len(events)):5.1f}x"
    )


def profile(calls: list[ApiCall], builder: EventBuilder) -> None:
    prof = cProfile.Profile()
    prof.enable()
    for c in calls:
        builder.build(c)
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(25)


def _repeat(batches: list[tuple[float, list[Exchange]]], times: int) -> list[tuple[float, list[Exchange]]]:
    """`batches` `times` over, copy k shifted k hours later (so the joiner's timeouts behave as live)."""
    out: list[tuple[float, list[Exchange]]] = []
    for k in range(times):
        shift = k * 3600.0
        for ts, exchanges in batches:
            out.append((ts + shift, [_shifted(ex, shift) for ex in exchanges]))
    return out


def _shifted(ex: Exchange, shift: float) -> Exchange:
    req, resp = ex.request, ex.response
    if req is not None:
        req = replace(req, ts_start=req.ts_start + shift, ts_end=req.ts_end + shift)
    if resp is not None:
        resp = replace(resp, ts_start=resp.ts_start + shift, ts_end=resp.ts_end + shift)
    return replace(ex, request=req, response=resp)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("capture", nargs="?", type=Path, default=WRK_CAPTURE)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--profile", action="store_true", help="cProfile the wrk mix instead of timing")
    ap.add_argument(
        "--profile-after-core", action="store_true", help="cProfile join + build + JSON lines (wrk mix)"
    )
    args = ap.parse_args()
    config = Config()
    builder = EventBuilder(config)
    capture = ensure_capture(args.capture)
    if args.profile_after_core:
        profile_after_core(collect_exchanges(capture, config), config)
        return 0
    wrk = collect_calls(capture, config)
    if args.profile:
        profile(wrk, builder)
        return 0
    variant = "compiled" if is_compiled(sys.modules[EventBuilder.__module__]) else "pure Python"
    print(f"best of {args.runs} runs; default configuration; {variant}")
    bench_mix("wrk", wrk, builder, args.runs)
    kong: list[ApiCall] = []
    if KONG_CAPTURE.exists():
        kong = collect_calls(KONG_CAPTURE, config)
        # The demo is small: repeat its calls so the timing is not dominated by clock resolution.
        bench_mix("kong", kong * max(1, 20_000 // max(1, len(kong))), builder, args.runs)
    after_core("wrk", collect_exchanges(capture, config), config, args.runs)
    if kong:
        # Repeated whole, each copy shifted in time, so the joiner sees fresh legs (not late partners).
        batches = collect_exchanges(KONG_CAPTURE, config)
        after_core("kong", _repeat(batches, 20_000 // max(1, len(kong))), config, args.runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
