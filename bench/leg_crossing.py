"""What a joined Kong call costs to cross from a capture worker to the main process, stage by stage.

Usage: python bench/leg_crossing.py [CAPTURE] [--runs N]
CAPTURE (default pcaps/kong-demo.pcap; `bench/kong_capture.py` makes a larger one) is replayed through
the real pipeline and leg joiner once; then each stage is timed alone over the joined calls (process
time, best of N, per call): shipping the legs as they cross today (`capture.exchange_codec`, batches
of 64), decoding their headers, building the event, and the alternative of a worker building the client
leg's event and shipping that (marshal). The baseline is `orjson.dumps` of the events, which every
event costs anyway. What the main process and the workers would each spend with the alternative is
estimated from these figures in bench/HISTORY.md.
Against the compiled build: SNIFFER_BENCH_CORE_PATH=$(python bench/compiled.py) python bench/leg_crossing.py
"""

from __future__ import annotations

import argparse
import marshal
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
if os.environ.get("SNIFFER_BENCH_CORE_PATH"):
    sys.path.insert(0, os.environ["SNIFFER_BENCH_CORE_PATH"])

from bench.compiled import is_compiled  # noqa: E402
from reassembly.events import Exchange  # noqa: E402
from sniffer.capture.exchange_codec import decode, encode  # noqa: E402
from sniffer.capture.pcapfile import open_capture  # noqa: E402
from sniffer.config import Config  # noqa: E402
from sniffer.engine import Engine  # noqa: E402
from sniffer.headers import header_lists  # noqa: E402
from sniffer.kong.api_call import ApiCall, Legs  # noqa: E402
from sniffer.kong.join import LegJoiner  # noqa: E402
from sniffer.moesif.event import EventBuilder  # noqa: E402

BATCH = 64  # legs per message in the timing (a worker's batch is a ring block's: often far more)


def joined_calls(capture: Path, config: Config) -> list[ApiCall]:
    """The capture's calls whose two legs joined, as one process capturing everything joins them."""
    engine = Engine(config, sink=None)  # type: ignore[arg-type]  # only its pipeline is used
    pipeline = engine.pipeline
    assert pipeline is not None
    joiner = LegJoiner(config.kong_ports, config.upstream_ports)
    calls: list[ApiCall] = []
    ts = 0.0
    with open_capture(capture) as cap:
        for ts, linktype, frame, wire_len in cap:
            for exchange in pipeline.feed(ts, linktype, frame, wire_len):
                calls += joiner.feed(exchange)
    for exchange in pipeline.close(ts):
        calls += joiner.feed(exchange)
    calls += joiner.close()
    return [c for c in calls if c.legs is Legs.CLIENT_AND_UPSTREAM]


def batches(items: list[Exchange]) -> list[list[Exchange]]:
    return [items[i : i + BATCH] for i in range(0, len(items), BATCH)]


def per_call(fn: Callable[[], object], calls: int, runs: int) -> float:
    """µs of process time a call, best of `runs`."""
    best = float("inf")
    for _ in range(runs):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("capture", nargs="?", type=Path, default=ROOT / "pcaps" / "kong-demo.pcap")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    config = Config.load(None, {"SNIFFER_KONG_PORTS": "8000,8001"})
    calls = joined_calls(args.capture, config)
    if not calls:
        sys.exit(f"{args.capture}: no joined Kong calls (Kong ports 8000,8001)")
    n = len(calls)
    clients = [c.client_leg for c in calls if c.client_leg is not None]
    upstreams = [c.upstream_leg for c in calls if c.upstream_leg is not None]
    builder = EventBuilder(config)
    alone = [ApiCall(client_leg=c, upstream_leg=None, legs=Legs.CLIENT_ONLY) for c in clients]
    events = [builder.build(a) for a in alone]
    client_msgs = [encode(b) for b in batches(clients)]
    upstream_msgs = [encode(b) for b in batches(upstreams)]
    event_msgs = [marshal.dumps(events[i : i + BATCH]) for i in range(0, n, BATCH)]

    def t(fn: Callable[[], object]) -> float:
        return per_call(fn, n, args.runs)

    rows = [
        ("client leg: encode", t(lambda: [encode(b) for b in batches(clients)])),
        ("client leg: decode", t(lambda: [decode(m) for m in client_msgs])),
        ("upstream leg: encode", t(lambda: [encode(b) for b in batches(upstreams)])),
        ("upstream leg: decode", t(lambda: [decode(m) for m in upstream_msgs])),
        ("header_lists: client request", t(lambda: [header_lists(c.request.headers) for c in clients])),  # type: ignore[union-attr]
        ("header_lists: client response", t(lambda: [header_lists(c.response.headers) for c in clients])),  # type: ignore[union-attr]
        ("header_lists: upstream request", t(lambda: [header_lists(u.request.headers) for u in upstreams])),  # type: ignore[union-attr]
        ("build: joined call", t(lambda: [builder.build(c) for c in calls])),
        ("build: client leg alone", t(lambda: [builder.build(a) for a in alone])),
        (
            "client event: marshal dump",
            t(lambda: [marshal.dumps(events[i : i + BATCH]) for i in range(0, n, BATCH)]),
        ),
        ("client event: marshal load", t(lambda: [marshal.loads(m) for m in event_msgs])),
    ]
    dumps = t(lambda: [orjson.dumps(e) for e in events])
    leg_bytes = sum(map(len, client_msgs)) / len(clients)
    event_bytes = sum(map(len, event_msgs)) / n
    build = "compiled" if is_compiled(sys.modules[EventBuilder.__module__]) else "pure Python"
    print(f"{args.capture}: {n:,} joined calls; {build}; µs of process time a call, best of {args.runs}")
    print(f"{'stage':34s} {'µs/call':>8s} {'x dumps':>8s}")
    for name, us in [*rows, ("orjson.dumps of the event (baseline)", dumps)]:
        print(f"{name:34s} {us:8.2f} {us / dumps:7.2f}x")
    print(f"bytes a call crossing: client leg {leg_bytes:,.0f}, client event {event_bytes:,.0f}")


if __name__ == "__main__":
    main()
