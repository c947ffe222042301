"""Events built inside a worker process (`replay --workers`, live `SNIFFER_WORKERS` > 1).

The main process must see every exchange that may be one leg of a Kong call: the two legs of a call
can reach different workers. Every other exchange can become its event in the worker that completed
it, which spares the main process decoding the exchange and building the event (its share of the CPU
was the limit with two workers). This module holds what both kinds of worker share:
- `SurelyPlain`: whether an exchange cannot be a Kong leg whatever the classifier learned before;
- `WorkerEvents`: the worker's own `Engine(capture=False)` (no Kong ports: only plain exchanges reach
  it) and what it built, taken as one payload per message to the main process, by `output`:
  - "jsonl": JSON-lines bytes; the main process writes them as they are;
  - "moesif": for the Moesif sender, each event encoded as the sender queues it (`encode_event`,
    oversize bodies left out), without its weight, with the few fields sampling reads
    (`sampling_view`) and its flow weight: the main process samples on those and adds the weight to
    the bytes (`MoesifSender.submit_encoded`). Until 2026-12-07 the worker sent the event dicts and the
    main process loaded each (~3.6 us) to encode it again (~1.3 us): with two workers the main process
    does that for every plain event of the node;
  - "dicts": the event dicts as orjson (`events_of` loads them), for any other sink (tests).
"""

from __future__ import annotations

import io
import marshal
from collections import Counter
from dataclasses import replace
from typing import Any, Literal

import orjson

from reassembly.events import Exchange
from reassembly.stats import Stats
from sniffer.config import Config
from sniffer.engine import Engine
from sniffer.kong.classify import LegClassifier, LegKind
from sniffer.moesif.batcher import MAX_EVENT_BYTES, encode_event
from sniffer.moesif.jsonlines import JsonLinesSink
from sniffer.moesif.sampling import sampling_view

__all__ = ["Output", "SurelyPlain", "WorkerEvents", "encoded_of", "events_of"]

Output = Literal["jsonl", "moesif", "dicts"]
Encoded = tuple[bytes, dict[str, Any], int]  # (event without its weight, its sampling view, flow weight)

# A message's worth of built events: past either, the worker sends what it has (`WorkerEvents.full`).
BATCH_BYTES = 1 << 20  # of JSON lines
BATCH_EVENTS = 2048  # of event dicts


class SurelyPlain:
    """Whether an exchange is PLAIN for the Kong classifier whatever it learned before. Most exchanges on
    most hosts carry no header any classifier rule reads and are on no leg port: `is_plain` says so in
    one C-level pass over the header names, whatever hosts the classifier knows. The others are
    classified with their client address taken for a Kong host (the only state the classifier keeps):
    one classifier per client address (a compiled LegClassifier cannot be subclassed), bounded."""

    MAX = 4096

    def __init__(self, kong_ports: frozenset[int], upstream_ports: frozenset[int]) -> None:
        self._ports = (kong_ports, upstream_ports)
        self._is_plain = LegClassifier(kong_ports, upstream_ports, stats=Stats()).is_plain
        self._by_client: dict[str, LegClassifier] = {}

    def __call__(self, ex: Exchange) -> bool:
        if self._is_plain(ex):
            return True
        ip = ex.client[0]
        clf = self._by_client.get(ip)
        if clf is None:
            if len(self._by_client) >= self.MAX:
                self._by_client.clear()
            clf = LegClassifier(*self._ports, kong_hosts=frozenset({ip}), stats=Stats())
            self._by_client[ip] = clf
        return clf.classify(ex) is LegKind.PLAIN


class _Collect:
    """The worker engine's sink when the main process does not write JSON lines: event dicts."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def submit(self, event: dict[str, Any]) -> None:
        self.events.append(event)


class _Encode:
    """The worker engine's sink for the Moesif sender: events encoded (see the module docstring)."""

    def __init__(self) -> None:
        self.items: list[Encoded] = []
        self.outcomes: Counter[str] = Counter()

    def submit(self, event: dict[str, Any]) -> None:
        weight = event.pop("weight", 1)
        data, outcome = encode_event(event, MAX_EVENT_BYTES)
        if outcome:
            self.outcomes[outcome] += 1
        if data is not None:
            self.items.append((data, sampling_view(event), weight))


class WorkerEvents:
    """A worker's event builder for exchanges already found plain (`SurelyPlain`, or no Kong ports)."""

    def __init__(self, config: Config, stats: Stats, *, output: Output) -> None:
        """`stats`: the worker's counters (events, events_partial, shed_bodies, ...: they travel with the
        worker's other counters, so the main process counts these events once)."""
        self.output = output
        self._buf = io.BytesIO()
        self._collect = _Collect()
        self._encode = _Encode()
        sink: Any = (
            JsonLinesSink(self._buf)
            if output == "jsonl"
            else self._encode
            if output == "moesif"
            else self._collect
        )
        # Only plain exchanges reach this engine: with no Kong ports its joiner does not classify them a
        # second time (the builder does not look at the ports).
        self.engine = Engine(replace(config, kong_ports=()), sink, stats, capture=False)

    def feed(self, ts: float, exchanges: list[Exchange], weights: dict[int, int] | None = None) -> None:
        """As `Engine.feed_exchanges` (a method, not the engine's bound method kept: compiled, the call
        is then native)."""
        self.engine.feed_exchanges(ts, exchanges, weights)

    @property
    def shed_bodies(self) -> bool:
        return self.engine.shed_bodies

    @shed_bodies.setter
    def shed_bodies(self, on: bool) -> None:
        """Build events without bodies (the main process's load-shedding level says so)."""
        self.engine.shed_bodies = on

    @property
    def full(self) -> bool:
        """Enough built for one message (`BATCH_BYTES` of JSON lines, `BATCH_EVENTS` event dicts)."""
        if self.output == "jsonl":
            return self._buf.tell() >= BATCH_BYTES
        if self.output == "moesif":
            return len(self._encode.items) >= BATCH_EVENTS
        return len(self._collect.events) >= BATCH_EVENTS

    def take(self) -> bytes:
        """What was built since the last call, for the main process (b"": nothing)."""
        if self.output == "jsonl":
            buf = self._buf
            data = buf.getvalue()
            buf.seek(0)
            buf.truncate()
            return data
        if self.output == "moesif":
            encode = self._encode
            if not encode.items and not encode.outcomes:
                return b""
            payload = marshal.dumps((encode.items, dict(encode.outcomes)))
            encode.items = []
            encode.outcomes.clear()
            return payload
        events = self._collect.events
        if not events:
            return b""
        self._collect.events = []
        return orjson.dumps(events)


def encoded_of(payload: bytes) -> tuple[list[Encoded], dict[str, int]]:
    """The encoded events and `encode_event` counts of an "moesif" payload (`WorkerEvents.take`), for
    `MoesifSender.submit_encoded`."""
    return marshal.loads(payload) if payload else ([], {})  # type: ignore[no-any-return]


def events_of(payload: bytes) -> list[dict[str, Any]]:
    """The event dicts of a non-JSON-lines payload (`WorkerEvents.take`), fresh for the sender."""
    return orjson.loads(payload) if payload else []  # type: ignore[no-any-return]
