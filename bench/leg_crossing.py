"""What a joined Kong call costs to cross from a capture worker to the main process, stage by stage.

Usage: python bench/leg_crossing.py [CAPTURE] [--runs N]
CAPTURE (default pcaps/kong-demo.pcap; `bench/kong_capture.py` makes a larger one) is replayed through
the real pipeline and leg joiner once; then each stage is timed alone over the joined calls (process
time, best of N, per call, each result dropped at once and the cyclic collector off: see `per_call`):
shipping the legs as they cross today (`capture.exchange_codec`, batches of 64), decoding their
headers, building the event, and what alternatives would cost: the client leg's built event shipped
with marshal, the leg without its headers and bodies, and the event's shown headers and body values as
JSON text embedded with `orjson.Fragment`. The baseline is `orjson.dumps` of the events, which every
event costs anyway. bench/HISTORY.md has what was built from these figures and how it measured.
Against the compiled build: SNIFFER_BENCH_CORE_PATH=$(python bench/compiled.py) python bench/leg_crossing.py
"""

from __future__ import annotations

import argparse
import gc
import marshal
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
if os.environ.get("SNIFFER_BENCH_CORE_PATH"):
    sys.path.insert(0, os.environ["SNIFFER_BENCH_CORE_PATH"])

from bench.compiled import is_compiled  # noqa: E402
from reassembly.events import Exchange, replace  # noqa: E402
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


def _hollow(ex: Exchange) -> Exchange:
    """A copy of `ex` without its messages' headers and bodies."""
    req, resp = ex.request, ex.response
    return replace(  # type: ignore[no-any-return]
        ex,
        request=replace(req, headers=[], body=b"") if req is not None else None,
        response=replace(resp, headers=[], body=b"") if resp is not None else None,
    )


def _pieces(event: dict[str, Any]) -> tuple[bytes, bytes, bytes, bytes]:
    """The shown headers and the body values of both sides, as JSON text."""
    req, resp = event["request"], event.get("response", {})
    return (
        orjson.dumps(req["headers"]),
        orjson.dumps(resp.get("headers")),
        orjson.dumps(req.get("body")),
        orjson.dumps(resp.get("body")),
    )


def _framed(event: dict[str, Any], pieces: tuple[bytes, bytes, bytes, bytes]) -> dict[str, Any]:
    """`event` with those pieces embedded as they would cross: orjson.Fragment, dumped as they are."""
    out = dict(event)
    req = out["request"] = dict(event["request"])
    req["headers"] = orjson.Fragment(pieces[0])
    if "body" in req:
        req["body"] = orjson.Fragment(pieces[2])
    if "response" in event:
        resp = out["response"] = dict(event["response"])
        resp["headers"] = orjson.Fragment(pieces[1])
        if "body" in resp:
            resp["body"] = orjson.Fragment(pieces[3])
    return out


def per_call(fn: Callable[[Any], object], items: list[Any], calls: int, runs: int) -> float:
    """µs of process time a call to run `fn` on each of `items`, best of `runs`. Each result is dropped
    at once, as a daemon drops what it has passed on: kept, thousands of fresh objects fault in new
    memory, and collections walk the data set up here, far more than a daemon holds (both timed with
    the stage that made them, up to ~10x its own cost); the cyclic collector is off for the same reason."""
    best = float("inf")
    gc.collect()
    gc.disable()
    try:
        for _ in range(runs):
            t0 = time.process_time()
            for item in items:
                fn(item)
            best = min(best, time.process_time() - t0)
    finally:
        gc.enable()
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
    # The client legs without their headers and bodies, and the pieces of their events that would then
    # cross as JSON text (headers shown, bodies), embedded with orjson.Fragment: no objects to make.
    hollow_msgs = [encode(b) for b in batches([_hollow(c) for c in clients])]
    pieces = [_pieces(e) for e in events if e is not None]
    framed = [_framed(e, p) for e, p in zip([e for e in events if e is not None], pieces, strict=True)]

    def t(fn: Callable[[Any], object], items: list[Any]) -> float:
        return per_call(fn, items, n, args.runs)

    built = [e for e in events if e is not None]
    rows = [
        ("client leg: encode", t(encode, batches(clients))),
        ("client leg: decode", t(decode, client_msgs)),
        ("upstream leg: encode", t(encode, batches(upstreams))),
        ("upstream leg: decode", t(decode, upstream_msgs)),
        ("header_lists: client request", t(lambda c: header_lists(c.request.headers), clients)),
        ("header_lists: client response", t(lambda c: header_lists(c.response.headers), clients)),
        ("header_lists: upstream request", t(lambda u: header_lists(u.request.headers), upstreams)),
        ("build: joined call", t(builder.build, calls)),
        ("build: client leg alone", t(builder.build, alone)),
        ("client event: marshal dump", t(marshal.dumps, [built[i : i + BATCH] for i in range(0, n, BATCH)])),
        ("client event: marshal load", t(marshal.loads, event_msgs)),
        ("client leg, hollow: decode", t(decode, hollow_msgs)),
        ("client event's JSON pieces: dump", t(_pieces, built)),
        ("event, pieces as Fragments: dumps", t(orjson.dumps, framed)),
    ]
    dumps = t(orjson.dumps, built)
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
