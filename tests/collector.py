"""A local fake of the Moesif collector API, for tests over real sockets.

Speaks `POST /v1/events/batch` and `GET /v1/config` like api.moesif.net: checks the
`X-Moesif-Application-Id` header (401 otherwise), gunzips, validates every event's required fields
(moesif.md / moesif-reference.md 2.1: request.time/uri/verb/headers, response.time/status/headers
when a response is present, transaction_id; times as ISO 8601 with milliseconds and `Z`), answers
201 with `X-Moesif-Config-ETag`, and records every accepted event by transaction_id. It can be told
to fail: 503 for N seconds, 429 with Retry-After, 413 above a size, 400, 401, slow answers,
connection resets. A failed request records nothing, so "exactly once" is checkable.

In-process: `with running_collector() as c:` (a thread with its own loop; `c.url`, `c.received`).
As a process: `python tests/collector.py --port N [--app-id X] [--fail-503-for S]`; it prints
`LISTENING <port>` and is steered over HTTP: `POST /_control` with the knob names of
`Collector.control` as JSON, `GET /_received` for the record.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import hashlib
import re
import signal
import socket
import struct
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import orjson
from aiohttp import web

__all__ = ["Collector", "CollectorThread", "running_collector", "validate_event"]

APP_ID = "test-app-id-0123456789"
_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


def validate_event(ev: Any) -> list[str]:
    """Problems with one event against the collector API's required fields (empty when valid)."""
    if not isinstance(ev, dict):
        return ["event is not an object"]
    problems = []
    req = ev.get("request")
    if not isinstance(req, dict):
        return ["request missing"]
    for name, kind in (("time", str), ("uri", str), ("verb", str), ("headers", dict)):
        if not isinstance(req.get(name), kind):
            problems.append(f"request.{name} missing or not {kind.__name__}")
    if isinstance(req.get("time"), str) and not _TIME.match(req["time"]):
        problems.append(f"request.time {req['time']!r} not ISO 8601 ms Z")
    if "response" in ev:
        resp = ev["response"]
        if not isinstance(resp, dict):
            problems.append("response not an object")
        else:
            for name, kind in (("time", str), ("status", int), ("headers", dict)):
                if not isinstance(resp.get(name), kind):
                    problems.append(f"response.{name} missing or not {kind.__name__}")
            if isinstance(resp.get("time"), str) and not _TIME.match(resp["time"]):
                problems.append(f"response.time {resp['time']!r} not ISO 8601 ms Z")
    tid = ev.get("transaction_id")
    if not isinstance(tid, str) or not tid:
        problems.append("transaction_id missing")
    if "weight" in ev and (not isinstance(ev["weight"], int) or ev["weight"] < 1):
        problems.append("weight not a positive integer")
    return problems


class Collector:
    """State and handlers; knobs are plain attributes, safe to set from another thread."""

    def __init__(self, app_id: str = APP_ID, config: dict[str, Any] | None = None) -> None:
        self.app_id = app_id
        self.lock = threading.Lock()
        self.received: dict[str, list[dict[str, Any]]] = {}
        self.batches: list[int] = []  # event counts of accepted batches
        self.statuses: Counter[int] = Counter()
        self.invalid: list[str] = []
        self.user_agents: set[str] = set()
        self.encodings: Counter[str] = Counter()  # Content-Encoding of every batch POST
        self.answers: list[tuple[float, int]] = []  # (monotonic time, status) of every batch POST
        self.in_flight = 0  # batch POSTs being handled
        self.config_fetches = 0
        self.set_config(config or {"sample_rate": 100})
        # failure knobs
        self.fail_503_until = 0.0
        self.fail_429 = 0
        self.retry_after = "1"
        self.fail_401_until = 0.0
        self.fail_400 = 0
        self.max_batch_events: int | None = None  # 413 above this many events
        self.max_body_bytes: int | None = None  # 413 above this many decompressed bytes
        self.delay_s = 0.0
        self.reset_next = 0
        self.fail_config = False
        self.outage_after_batches: int | None = None  # start a 503 outage once this many were accepted
        self.outage_s = 0.0

    def control(self, **knobs: Any) -> None:
        """Set knobs; durations (`fail_503_for`, `fail_401_for`) are relative to now."""
        now = time.monotonic()
        for key, value in knobs.items():
            if key == "fail_503_for":
                self.fail_503_until = now + float(value)
            elif key == "fail_401_for":
                self.fail_401_until = now + float(value)
            elif key == "config":
                self.set_config(value)
            elif hasattr(self, key) and not key.startswith("_"):
                setattr(self, key, value)
            else:
                raise KeyError(key)

    def set_config(self, config: dict[str, Any]) -> None:
        body = orjson.dumps(config)
        self.config_body = body
        self.etag = hashlib.sha1(body).hexdigest()[:16]

    # ---- record access ----

    @property
    def event_count(self) -> int:
        with self.lock:
            return sum(len(v) for v in self.received.values())

    def counts(self) -> dict[str, int]:
        with self.lock:
            return {k: len(v) for k, v in self.received.items()}

    def events(self) -> list[dict[str, Any]]:
        with self.lock:
            return [e for v in self.received.values() for e in v]

    # ---- handlers ----

    def _reset(self, request: web.Request) -> None:
        transport = request.transport
        if transport is not None:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()

    async def batch(self, request: web.Request) -> web.StreamResponse:
        with self.lock:
            self.in_flight += 1
        try:
            return await self._batch(request)
        finally:
            with self.lock:
                self.in_flight -= 1

    def settled(self, quiet_s: float) -> bool:
        """No batch POST being handled, and none answered in the last `quiet_s` seconds: a client that
        gave up on a request (a sender closed at its deadline) can no longer have it judged later, after
        the test changed the knobs."""
        with self.lock:
            last = self.answers[-1][0] if self.answers else float("-inf")
            return self.in_flight == 0 and time.monotonic() - last >= quiet_s

    async def _batch(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        if self.reset_next > 0:
            self.reset_next -= 1
            self._reset(request)
            raise ConnectionResetError("collector told to reset")
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        status, body = self._judge(request, raw)
        with self.lock:
            self.statuses[status] += 1
            self.encodings[request.headers.get("Content-Encoding", "identity")] += 1
            self.answers.append((time.monotonic(), status))
        headers = {"X-Moesif-Config-ETag": self.etag}
        if status == 429:
            headers["Retry-After"] = str(self.retry_after)
        return web.Response(status=status, text=body, headers=headers)

    def _judge(self, request: web.Request, raw: bytes) -> tuple[int, str]:
        now = time.monotonic()
        if self.outage_after_batches is not None and len(self.batches) >= self.outage_after_batches:
            self.outage_after_batches = None
            self.fail_503_until = now + self.outage_s
        if request.headers.get("X-Moesif-Application-Id") != self.app_id or now < self.fail_401_until:
            return 401, '{"message": "Missing or invalid X-Moesif-Application-Id"}'
        if now < self.fail_503_until:
            return 503, "unavailable"
        if self.fail_429 > 0:
            self.fail_429 -= 1
            return 429, "slow down"
        if self.fail_400 > 0:
            self.fail_400 -= 1
            return 400, '{"message": "told to refuse"}'
        if not request.headers.get("Content-Type", "").startswith("application/json"):
            return 400, "content-type must be application/json"
        try:
            data = gzip.decompress(raw) if request.headers.get("Content-Encoding") == "gzip" else raw
            events = orjson.loads(data)
        except (OSError, EOFError, orjson.JSONDecodeError) as exc:
            return 400, f"bad body: {exc}"
        if not isinstance(events, list):
            return 400, "body is not a JSON array"
        if (self.max_body_bytes is not None and len(data) > self.max_body_bytes) or (
            self.max_batch_events is not None and len(events) > self.max_batch_events
        ):
            return 413, "batch too large"
        problems = [f"event {i}: {p}" for i, ev in enumerate(events) for p in validate_event(ev)]
        if problems:
            with self.lock:
                self.invalid.extend(problems)
            return 400, orjson.dumps({"message": problems[:5]}).decode()
        with self.lock:
            for ev in events:
                self.received.setdefault(ev["transaction_id"], []).append(ev)
            self.batches.append(len(events))
            self.user_agents.add(request.headers.get("User-Agent", ""))
        return 201, ""

    async def config(self, request: web.Request) -> web.Response:
        self.config_fetches += 1
        if request.headers.get("X-Moesif-Application-Id") != self.app_id:
            return web.Response(status=401)
        if self.fail_config:
            return web.Response(status=500)
        return web.Response(
            body=self.config_body,
            content_type="application/json",
            headers={"X-Moesif-Config-ETag": self.etag},
        )

    async def control_handler(self, request: web.Request) -> web.Response:
        self.control(**(await request.json()))
        return web.json_response({"ok": True})

    async def received_handler(self, request: web.Request) -> web.Response:
        with self.lock:
            doc = {
                "counts": {k: len(v) for k, v in self.received.items()},
                "batches": list(self.batches),
                "invalid": list(self.invalid),
                "statuses": dict(self.statuses),
                "weights": dict(Counter(e.get("weight", 1) for v in self.received.values() for e in v)),
            }
        return web.Response(
            body=orjson.dumps(doc, option=orjson.OPT_NON_STR_KEYS), content_type="application/json"
        )

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 << 20)
        app.router.add_post("/v1/events/batch", self.batch)
        app.router.add_get("/v1/config", self.config)
        app.router.add_post("/_control", self.control_handler)
        app.router.add_get("/_received", self.received_handler)
        return app


def _listen(port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    return sock


class CollectorThread:
    """Runs a `Collector` on 127.0.0.1 in a background thread with its own event loop."""

    def __init__(self, collector: Collector) -> None:
        self.collector = collector
        self._sock = _listen()
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="collector", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        runner = web.AppRunner(self.collector.app(), access_log=None, auto_decompress=False)
        self._loop.run_until_complete(runner.setup())
        self._loop.run_until_complete(web.SockSite(runner, self._sock).start())
        self._started.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())
        self._loop.close()

    def start(self) -> CollectorThread:
        self._thread.start()
        self._started.wait(10)
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@contextlib.contextmanager
def running_collector(**kwargs: Any) -> Iterator[CollectorThread]:
    server = CollectorThread(Collector(**kwargs)).start()
    try:
        yield server
    finally:
        server.stop()


async def _serve(args: argparse.Namespace) -> None:
    collector = Collector(app_id=args.app_id, config=orjson.loads(args.config) if args.config else None)
    if args.fail_503_for:
        collector.control(fail_503_for=args.fail_503_for)
    runner = web.AppRunner(collector.app(), access_log=None, auto_decompress=False)
    await runner.setup()
    sock = _listen(args.port)
    await web.SockSite(runner, sock).start()
    print(f"LISTENING {sock.getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--app-id", default=APP_ID)
    parser.add_argument("--config", help="JSON served at /v1/config")
    parser.add_argument("--fail-503-for", type=float, default=0.0, help="answer 503 for this many seconds")
    asyncio.run(_serve(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
