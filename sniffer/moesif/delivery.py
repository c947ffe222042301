"""The sender's loop side: cut batches from the queue, send them with bounded concurrency, retry
them in memory or hand them to the spool, drain the spool, and wind down at close.

The dispatcher cuts a batch when the queue holds `batch_size` events or its oldest event is
`batch_max_time_s` old (at close: at once), waits for one of `max_in_flight` slots, and spawns a
delivery task. Without a spool a failing batch retries in memory, holding its slot, so in an outage
events wait in the queue (which drops its oldest when full). With a spool a failing batch goes to
disk, and while the collector fails new batches go straight there; one drainer probes with the
oldest file, and its first success restores direct sending. `finish()` waits until everything is
delivered (deadline or a second signal permitting), then spools or counts what is left.
Everything here runs in the sender's event loop; nothing is thread-safe, nothing needs to be.
"""

from __future__ import annotations

import asyncio
import logging
import time
from asyncio import FIRST_COMPLETED
from collections import Counter
from collections.abc import Coroutine
from typing import Any

from sniffer.moesif.batcher import Batch, EventQueue, pack_batches
from sniffer.moesif.spool import Spool
from sniffer.moesif.transport import Courier, Outcome, PostResult

__all__ = ["SPOOL_BATCH_EVENTS", "Delivery"]

log = logging.getLogger("sniffer.transport")

SPOOL_BATCH_EVENTS = 500  # spool files may hold more than batch_size: fewer fsyncs in an outage


class Delivery:
    def __init__(
        self,
        queue: EventQueue,
        spool: Spool | None,
        courier: Courier,
        counters: Counter[str],
        *,
        batch_size: int,
        batch_max_time_s: float,
        max_in_flight: int,
        max_batch_bytes: int,
    ) -> None:
        self._queue = queue
        self._spool = spool
        self._courier = courier
        self._counters = counters
        self._batch_size = batch_size
        self._batch_max_time_s = batch_max_time_s
        self._max_batch_bytes = max_batch_bytes
        self._slots = asyncio.Semaphore(max_in_flight)
        self._wake = asyncio.Event()
        self._spool_wake = asyncio.Event()
        self._spool_settled = asyncio.Event()
        self._closing = False
        self._unsettled: set[Batch] = set()  # in-memory batches not yet sent, dropped or spooled
        self._tasks: set[asyncio.Task[None]] = set()
        self._workers: list[asyncio.Task[None]] = []

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    @property
    def events_in_memory(self) -> int:
        return sum(b.count for b in list(self._unsettled))

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._queue.set_waker(lambda: loop.call_soon_threadsafe(self._wake.set))
        self._workers.append(loop.create_task(self._dispatch()))
        if self._spool is not None:
            self._workers.append(loop.create_task(self._drain_spool()))

    def begin_close(self) -> None:
        """Stop waiting for full or old batches: send everything now."""
        self._closing = True
        self._wake.set()
        self._spool_wake.set()

    async def finish(self, deadline: float, hurry: asyncio.Event) -> int:
        """Deliver everything until `deadline` (loop time) or `hurry`; returns events left unsent."""
        self.begin_close()
        loop = asyncio.get_running_loop()
        quiesce = loop.create_task(self._quiesce(self._workers[0]))
        hurried = loop.create_task(hurry.wait())
        await asyncio.wait(
            (quiesce, hurried), timeout=max(0.0, deadline - loop.time()), return_when=FIRST_COMPLETED
        )
        if not quiesce.done():
            log.warning("flush stopped (deadline or signal) with %d batches in flight", len(self._tasks))
        pending = [quiesce, hurried, *self._workers, *self._tasks]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        self._queue.set_waker(None)
        return self._park_leftovers()

    async def _quiesce(self, dispatcher: asyncio.Task[None]) -> None:
        """Return once the queue is empty, nothing is in flight and the spool is drained."""
        await dispatcher
        while True:
            if self._tasks:
                await asyncio.wait(list(self._tasks))
            elif self._spool is not None and len(self._spool):
                await wait_woken(self._spool_settled, None)
            else:
                return

    def _park_leftovers(self) -> int:
        """After the deadline: spool what is still in memory, or count it as left unsent."""
        leftovers = list(self._unsettled)
        self._unsettled.clear()
        while len(self._queue):
            leftovers.extend(self._encode(self._queue.take(SPOOL_BATCH_EVENTS)))
        left = 0
        for batch in leftovers:
            if self._spool is not None and batch.spool_name is None:
                self._spool.write(batch.body, batch.count, batch.raw_bytes)
            elif batch.spool_name is None:
                left += batch.count
        if left:
            log.warning("%d events could not be sent in time and are lost (no spool)", left)
        return left

    def _encode(self, encoded: list[bytes]) -> list[Batch]:
        return pack_batches(encoded, self._max_batch_bytes)

    def _spooling(self) -> bool:
        return self._spool is not None and not self._courier.healthy and len(self._spool) > 0

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _dispatch(self) -> None:
        q = self._queue
        while True:
            q.arm()
            n, oldest = q.peek()
            if n == 0:
                if self._closing:
                    return
                await wait_woken(self._wake, None)
                continue
            if n < self._batch_size and not self._closing and oldest is not None:
                due_in = oldest + self._batch_max_time_s - time.monotonic()
                if due_in > 0:
                    await wait_woken(self._wake, due_in)
                    continue
            if self._spooling():
                for batch in self._encode(q.take(SPOOL_BATCH_EVENTS)):
                    self._to_spool(batch)
                continue
            await self._slots.acquire()
            if self._spooling():  # the collector failed while we waited for a slot
                self._slots.release()
                continue
            batches = self._encode(q.take(self._batch_size))
            self._unsettled.update(batches)
            self._spawn(self._deliver(batches))

    def _to_spool(self, batch: Batch) -> None:
        assert self._spool is not None
        self._unsettled.discard(batch)
        self._spool.write(batch.body, batch.count, batch.raw_bytes)
        self._spool_wake.set()

    async def _deliver(self, batches: list[Batch]) -> None:
        """Send in-memory batches in turn, holding one slot; retry in memory or hand to the spool."""
        try:
            pending = list(batches)
            while pending:
                batch = pending.pop(0)
                result = await self._courier.attempt(batch)
                if result.outcome is Outcome.SPLIT:
                    halves = self._courier.split(batch)
                    self._unsettled.discard(batch)
                    self._unsettled.update(halves)
                    pending[:0] = halves
                elif result.outcome in (Outcome.RETRY, Outcome.AUTH):
                    if self._spool is not None:
                        self._to_spool(batch)
                    else:
                        pending.insert(0, batch)
                        await asyncio.sleep(self._courier.retry_delay(result, batch.attempts - 1))
                else:
                    self._unsettled.discard(batch)
        finally:
            self._slots.release()

    async def _drain_spool(self) -> None:
        """Send spooled batches oldest first: one probe at a time while failing, in parallel when not."""
        spool = self._spool
        assert spool is not None
        while True:
            entry = spool.next_ready()
            if entry is None:
                await wait_woken(self._spool_wake, None)  # a new file, or one in flight settled
                continue
            await self._slots.acquire()
            body = spool.read(entry.name)
            if body is None:
                self._slots.release()
                continue
            batch = Batch(body, entry.count, entry.raw_bytes, None, entry.name)
            if self._courier.healthy:
                self._spawn(self._deliver_spooled(batch))
                continue
            result = await self._deliver_spooled(batch)
            if result is not None:
                await asyncio.sleep(self._courier.retry_delay(result, self._courier.failures - 1))

    async def _deliver_spooled(self, batch: Batch) -> PostResult | None:
        """One attempt at a spool file; returns the failure when the file stays for a retry."""
        spool = self._spool
        assert spool is not None and batch.spool_name is not None
        try:
            result = await self._courier.attempt(batch)
        finally:
            self._slots.release()
        self._spool_wake.set()
        self._spool_settled.set()
        if result.outcome in (Outcome.RETRY, Outcome.AUTH):
            spool.release(batch.spool_name)
            return result
        if result.outcome is Outcome.SPLIT:
            halves = self._courier.split(batch)
            for half in halves:
                spool.write(half.body, half.count, half.raw_bytes)
            self._counters["events_spooled"] -= sum(h.count for h in halves)  # not new events
        spool.remove(batch.spool_name)
        return None


async def wait_woken(event: asyncio.Event, timeout: float | None) -> None:
    """Wait for `event` up to `timeout` seconds (None: forever), then clear it."""
    try:
        if timeout is None:
            await event.wait()
        else:
            await asyncio.wait_for(event.wait(), timeout=max(0.0, timeout))
    except TimeoutError:
        pass
    event.clear()
