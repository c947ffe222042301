"""`MoesifSender`: the thread-safe front of delivery to Moesif's collector.

`submit()` (any thread) samples the event (`sampling.Sampler`, config from `app_config`), encodes
it to JSON and appends it to a queue bounded by count and bytes (`batcher.EventQueue`): it never
blocks and never touches the network. The sender's own thread runs an asyncio loop where
`delivery.Delivery` batches, sends (`transport`), retries and spools (`spool`) until `close()`.

`close()` stops taking events, sends everything within the deadline, then writes what is left to
the spool or counts it as left unsent, and reports what became of every event (`SendReport`).
Called from the main thread, it keeps SIGTERM/SIGINT from killing the flush: the first signal is
logged, a second one ends the wait early (uvicorn's second Ctrl-C).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import orjson

from sniffer.errors import ConfigError
from sniffer.moesif.app_config import AppConfigFetcher
from sniffer.moesif.batcher import (
    DEFAULT_QUEUE_BYTES,
    MAX_BATCH_BYTES,
    MAX_EVENT_BYTES,
    EventQueue,
    encode_event,
    with_weight,
)
from sniffer.moesif.delivery import Delivery
from sniffer.moesif.sampling import Sampler
from sniffer.moesif.spool import Spool
from sniffer.moesif.transport import Courier, MoesifTransport, RetryPolicy, mask_app_id, safe_url

__all__ = ["MoesifSender", "SendReport"]

log = logging.getLogger("sniffer.transport")


@dataclass(frozen=True)
class SendReport:
    """What happened to every submitted event, at `close()`."""

    sent: int
    dropped: dict[str, int]  # reason -> events lost for good (queue_full, 4xx, too_large, oversize, ...)
    left_unsent: int  # still in memory at the deadline, with no spool to keep them
    spooled: int  # events waiting in the spool directory for the next start
    sampled_out: int
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """Everything that passed sampling was delivered."""
        return self.left_unsent == 0 and self.spooled == 0 and not any(self.dropped.values())


class MoesifSender:
    def __init__(
        self,
        *,
        application_id: str,
        endpoint: str = "https://api.moesif.net",
        batch_size: int = 50,
        batch_max_time_s: float = 2.0,
        queue_size: int = 100_000,
        queue_bytes: int = DEFAULT_QUEUE_BYTES,
        connect_timeout_s: float,
        send_timeout_s: float,
        flush_timeout_s: float = 10.0,
        max_in_flight: int = 4,
        spool_dir: str | None = None,
        spool_max_bytes: int = 1 << 30,
        user_agent: str,
        retry_policy: RetryPolicy | None = None,
        rng: random.Random | None = None,
        max_batch_bytes: int = MAX_BATCH_BYTES,
        max_event_bytes: int = MAX_EVENT_BYTES,
    ) -> None:
        if not application_id:
            raise ConfigError("MOESIF_APPLICATION_ID is empty")
        if not endpoint.startswith(("http://", "https://")):
            raise ConfigError(f"MOESIF_API_ENDPOINT {endpoint!r}: must start with http:// or https://")
        for name, value in (
            ("MOESIF_BATCH_SIZE", batch_size),
            ("MOESIF_EVENT_QUEUE_SIZE", queue_size),
            ("MOESIF_EVENT_QUEUE_BYTES", queue_bytes),
        ):
            if value < 1:
                raise ConfigError(f"{name} must be at least 1, got {value}")
        self._app_id = application_id
        self._endpoint = endpoint
        self._batch_size = batch_size
        self._batch_max_time_s = batch_max_time_s
        self._connect_timeout_s = connect_timeout_s
        self._send_timeout_s = send_timeout_s
        self._flush_timeout_s = flush_timeout_s
        self._max_in_flight = max(1, max_in_flight)
        self._spool_dir = spool_dir
        self._spool_max_bytes = spool_max_bytes
        self._user_agent = user_agent
        self._policy = retry_policy or RetryPolicy()
        self._max_batch_bytes = max_batch_bytes
        self._max_event_bytes = max_event_bytes
        self._queue = EventQueue(queue_size, batch_size, queue_bytes)
        self._sampler = Sampler(rng)
        self._counters: Counter[str] = Counter()  # written by the loop thread only
        self._lock = threading.Lock()
        self._encode_outcomes: Counter[str] = Counter()  # oversize and unserializable, under _lock
        self._sampled_out = 0
        self._after_close = 0
        self._closed = False
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._report: SendReport | None = None
        self._spool: Spool | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._start_healthy = True
        self._delivery: Delivery | None = None

    # ---- caller side (any thread) ----

    def start(self) -> None:
        """Start the sender thread; returns once the first config fetch was tried (bounded wait)."""
        if self._thread is not None:
            raise RuntimeError("MoesifSender already started")
        if self._spool_dir:
            self._spool = Spool(self._spool_dir, self._spool_max_bytes, self._counters)
            self._start_healthy = not len(self._spool)  # old files first: start as if in an outage
        self._thread = threading.Thread(target=self._run, name="moesif-sender", daemon=True)
        self._thread.start()
        self._ready.wait(timeout=self._connect_timeout_s + self._send_timeout_s + 1.0)
        log.info(
            "sending events to %s (application id %s)", safe_url(self._endpoint), mask_app_id(self._app_id)
        )

    def submit(self, event: dict[str, Any]) -> None:
        """Queue one event (not to be mutated afterwards). Never blocks; may drop the oldest."""
        if self._closed:
            with self._lock:
                self._after_close += 1
            return
        weight = self._sampler.weight(event)
        if weight is None:
            with self._lock:
                self._sampled_out += 1
            return
        self._submit_sampled(event, weight)

    def _submit_sampled(self, event: dict[str, Any], weight: int) -> None:
        # The capture may already stand for several calls (flow sampling under load): weights multiply.
        event["weight"] = weight * event.get("weight", 1)
        data, outcome = encode_event(event, self._max_event_bytes)
        if outcome:
            with self._lock:
                self._encode_outcomes[outcome] += 1
        if data is not None:
            self._queue.put(data)

    def submit_encoded(
        self, items: list[tuple[bytes, dict[str, Any], int]], outcomes: dict[str, int] | None = None
    ) -> None:
        """Events a capture worker built and encoded (`worker_events`): (the event encoded without its
        weight, its `sampling_view`, the weight flow sampling gave it); `outcomes`: the worker's
        `encode_event` counts. Sampled and queued as `submit` would; never blocks."""
        if outcomes:
            with self._lock:
                self._encode_outcomes.update(outcomes)
        if self._closed:
            with self._lock:
                self._after_close += len(items)
            return
        weigh, put, limit = self._sampler.weight, self._queue.put, self._max_event_bytes
        sampled_out = 0
        for data, view, flow_weight in items:
            weight = weigh(view)
            if weight is None:
                sampled_out += 1
            elif len(data) + 32 <= limit:  # room for the weight
                put(with_weight(data, weight * flow_weight))
            else:  # within a few bytes of this sender's limit (the worker's may differ): as submit would
                event = orjson.loads(data)
                event["weight"] = flow_weight
                self._submit_sampled(event, weight)
        if sampled_out:
            with self._lock:
                self._sampled_out += sampled_out

    def close(self, timeout_s: float | None = None) -> SendReport:
        """Stop taking events, deliver what is queued within the deadline, stop the thread."""
        timeout = self._flush_timeout_s if timeout_s is None else timeout_s
        with self._lock:
            already, self._closed = self._closed, True
        if self._thread is None:
            return self._make_report(left_unsent=len(self._queue))
        if not already and self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                self._loop.call_soon_threadsafe(self._begin_close, timeout)
        with self._signals_hurry():
            # Past the deadline the loop still cancels and spools; give that a bounded moment.
            self._thread.join(timeout + 10.0)
        if self._report is None:
            log.error("sender thread did not stop in time; %d events unaccounted", len(self._queue))
            return self._make_report(left_unsent=len(self._queue))
        return self._report

    @contextlib.contextmanager
    def _signals_hurry(self) -> Iterator[None]:
        """While flushing in the main thread, SIGTERM/SIGINT no longer kill the process mid-flush: the
        first is logged, a second one stops waiting (what is left is spooled or counted), like
        uvicorn's second Ctrl-C. The caller's handlers are restored afterwards."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        seen = 0

        def on_signal(signum: int, frame: FrameType | None) -> None:
            nonlocal seen
            seen += 1
            if seen == 1:
                log.warning(
                    "%s: still flushing %d queued events; send it again to stop now",
                    signal.Signals(signum).name,
                    len(self._queue) + (self._delivery.events_in_memory if self._delivery else 0),
                )
            elif self._loop is not None:
                with contextlib.suppress(RuntimeError):
                    self._loop.call_soon_threadsafe(self._hurry_now)

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _hurry_now(self) -> None:
        self._hurry.set()

    @property
    def stats(self) -> dict[str, int]:
        for _ in range(5):
            try:
                snap = dict(self._counters)
                break
            except RuntimeError:  # resized by the loop thread mid-copy
                continue
        else:
            snap = {}
        with self._lock:
            snap["events_sampled_out"] = self._sampled_out
            snap["events_dropped_after_close"] = self._after_close
            snap.update(self._encode_outcomes)
        snap["events_queued"] = self._queue.accepted
        snap["events_dropped_queue_full"] = self._queue.dropped_full
        snap["queue_depth"] = len(self._queue)
        snap["queue_bytes"] = self._queue.bytes
        snap["queue_fill_permille"] = round(self._queue.fill() * 1000)
        snap["in_flight"] = self._delivery.in_flight if self._delivery is not None else 0
        if self._spool is not None:
            snap["spool_batches"] = len(self._spool)
            snap["spool_bytes"] = self._spool.total_bytes
        return snap

    def _make_report(self, left_unsent: int) -> SendReport:
        stats = self.stats
        dropped = {
            k.removeprefix("events_dropped_"): v
            for k, v in sorted(stats.items())
            if k.startswith("events_dropped_") and v
        }
        spooled = self._spool.pending_events if self._spool is not None else 0
        stats["events_left_unsent"] = left_unsent
        return SendReport(
            stats.get("events_sent", 0), dropped, left_unsent, spooled, stats["events_sampled_out"], stats
        )

    # ---- loop side ----

    def _run(self) -> None:
        try:
            self._report = asyncio.run(self._main())
        except Exception:
            log.exception("sender loop crashed")
        finally:
            self._ready.set()
            if self._spool is not None:
                self._spool.close()

    async def _main(self) -> SendReport:
        loop = self._loop = asyncio.get_running_loop()
        self._close_requested = asyncio.Event()
        self._hurry = asyncio.Event()
        self._deadline = float("inf")
        transport = MoesifTransport(
            application_id=self._app_id,
            endpoint=self._endpoint,
            user_agent=self._user_agent,
            connect_timeout_s=self._connect_timeout_s,
            send_timeout_s=self._send_timeout_s,
            max_connections=self._max_in_flight + 1,
        )
        fetcher = AppConfigFetcher(transport, self._sampler, self._policy, self._counters)
        courier = Courier(transport, self._policy, self._counters, self._app_id, fetcher.notice_etag)
        courier.healthy = self._start_healthy
        delivery = self._delivery = Delivery(
            self._queue,
            self._spool,
            courier,
            self._counters,
            batch_size=self._batch_size,
            batch_max_time_s=self._batch_max_time_s,
            max_in_flight=self._max_in_flight,
            max_batch_bytes=self._max_batch_bytes,
        )
        config_task = loop.create_task(fetcher.run())
        delivery.start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(fetcher.first_attempt_done.wait(), self._connect_timeout_s + 1)
        self._ready.set()
        if self._closed:  # close() raced start(): its call_soon may have found no loop
            self._begin_close(self._flush_timeout_s)
        await self._close_requested.wait()
        left = await delivery.finish(self._deadline, self._hurry)
        config_task.cancel()
        await asyncio.gather(config_task, return_exceptions=True)
        await transport.close()
        report = self._make_report(left)
        log.info(
            "sender closed: %d events sent, %d dropped, %d spooled, %d left unsent",
            report.sent,
            sum(report.dropped.values()),
            report.spooled,
            report.left_unsent,
        )
        return report

    def _begin_close(self, timeout: float) -> None:
        if self._close_requested.is_set():
            return
        self._deadline = asyncio.get_running_loop().time() + timeout
        self._close_requested.set()
        if self._delivery is not None:
            self._delivery.begin_close()
