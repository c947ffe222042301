"""`DaemonLoop`: the live daemon's state while it runs, and its loops (`sniffer.daemon` sets it up).

With one worker the loop walks the rings into the `Engine` itself; with more it takes the events the
workers built and writes or sends them, and takes the exchanges that may be Kong legs
(`Engine(capture=False)`) and runs the leg joiner, the event builder and the sink on them.
When no packet arrives the engine's timeouts run with the wall clock (see `capture.workers`).
TLS exchanges are made in the main process in both modes (`TlsSource.poll` after each wake-up, its
`tick` about once a second) and go into the engine like the workers' exchanges. When legs come from more
than one source (workers, the TLS tap) they pass a `TimeMerge` first, so the joiner gets them in
capture-time order whichever source was read first. When the host cannot do
TLS capture the daemon says so once in the log and carries on with packet capture.

Load shedding (SNIFFER_SHED, `sniffer.load_shedding`): every tick the ring backlog, the kernel drops and
the sender's queue fill go to a `ShedPolicy`; its level is applied here (bodies left out by the engine;
flows sampled by a `FlowSampler` in front of the engine, or in each capture worker), logged once per
change and exported as `moesif_sniffer_shed_level` with the shed counters.

Signals: SIGTERM/SIGINT stop gracefully: capture stops after the rings are drained, in-flight exchanges
are finished (`Engine.close()`), the sender flushes within MOESIF_FLUSH_TIMEOUT, exit 0. A second
SIGTERM/SIGINT exits at once (during the sender's flush it ends the flush early instead: what is left
is spooled or counted as unsent). SIGHUP reopens the log file (see `sniffer.logs`) and the `--output`
file.
"""

from __future__ import annotations

import logging
import multiprocessing.connection
import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import IO, Any

from reassembly.stats import Stats
from sniffer.capture.afpacket import RingSocket
from sniffer.capture.time_merge import TimeMerge
from sniffer.capture.tls.source import TLS_POLL_S, TlsSource
from sniffer.capture.worker_events import encoded_of
from sniffer.capture.workers import KERNEL_STATS_S, TICK_S, CaptureLoop, WorkerPool
from sniffer.config import Config
from sniffer.cpu_priority import restore_normal_priority
from sniffer.engine import Engine
from sniffer.events_output import open_events_output
from sniffer.load_shedding import FlowSampler, Pressure, ShedPolicy
from sniffer.logs import reopen
from sniffer.metrics import Health, MetricsServer, Snapshot
from sniffer.moesif.jsonlines import JsonLinesSink

__all__ = ["DaemonLoop", "Signals", "main_process_limit"]

log = logging.getLogger("sniffer.daemon")

SUMMARY_S = 60.0  # a one-line progress summary in the log this often
# Over a summary's interval, a capture worker blocked on the main process for this share of the time or
# more while the kernel dropped packets: the main process is the limit (live, two workers on Kong traffic:
# 28-47 % at 100k packets/s without a drop, 45-64 % at 150k with drops; wrk traffic 5-10 %).
MAIN_LIMIT_SHARE = 0.4
STOP_DRAIN_S = 10.0  # how long the workers get to drain and close after a stop request


def main_process_limit(
    before: list[dict[str, int]], after: list[dict[str, int]], seconds: float
) -> tuple[float, int] | None:
    """(the largest share of `seconds` a capture worker spent blocked on the main process, the kernel
    drops) between two readings of the workers' counters, when the main process was the limit:
    a worker blocked for `MAIN_LIMIT_SHARE` of the time or more while the kernel dropped packets."""
    if seconds <= 0 or len(before) != len(after):
        return None
    waits = [a.get("main_wait_us", 0) - b.get("main_wait_us", 0) for a, b in zip(after, before, strict=True)]
    drops = sum(a.get("drop_kernel", 0) - b.get("drop_kernel", 0) for a, b in zip(after, before, strict=True))
    share = max(waits, default=0) / 1e6 / seconds
    return (share, drops) if share >= MAIN_LIMIT_SHARE and drops > 0 else None


@dataclass
class Signals:
    stop: int = 0
    hup: bool = False


class DaemonLoop:
    def __init__(
        self, config: Config, out: IO[bytes] | None, sender_factory: Callable[[Config], Any]
    ) -> None:
        self.config = config
        self.out = out
        self.output_path: str | None = None  # --output: reopened on SIGHUP (logrotate)
        self.sender_factory = sender_factory
        self.signals = Signals()
        self.health = Health()
        self.stats = Stats()
        self.metrics: MetricsServer | None = None
        self.pool: WorkerPool | None = None
        self.loop: CaptureLoop | None = None
        self.sender: Any = None
        self.jsonl: JsonLinesSink | None = None
        self.engine: Engine | None = None
        self._core: Counter[str] = Counter()
        self.policy = ShedPolicy(enabled=config.shed)
        self.sampler: FlowSampler | None = None  # one worker: sampling in front of the engine
        self._drops_seen = 0
        # The workers' counters at the last summary, and when: `main_process_limit` reads the interval.
        self._workers_at_summary: list[dict[str, int]] = []
        self._summary_at = time.monotonic()
        self._sender_stats: dict[str, int] | None = None
        self.tls: TlsSource | None = None
        # Several sources of legs (capture workers, the TLS tap): merged in capture-time order.
        self.merge: TimeMerge | None = None
        self._tls_feed: Any = None

    def tls_feed(self) -> Any:
        """Where the TLS tap's exchanges go: the merge's TLS source when there is one, else the engine."""
        return self._tls_feed if self._tls_feed is not None else self.engine

    def close_merge(self) -> None:
        """Shutdown, after every source's last exchanges: whatever the merge holds goes to the engine."""
        if self.merge is not None:
            self.merge.flush()

    # ---- signals ----

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        self.signals.stop += 1
        if self.signals.stop == 1:
            log.info(
                "%s: stopping (drain capture, finish exchanges, flush events)", signal.Signals(signum).name
            )
            self._stop_at_normal_priority()
            return
        log.warning("%s again: exiting now", signal.Signals(signum).name)
        if self.pool is not None:
            self.pool.kill()
        os._exit(128 + signum)

    def _stop_at_normal_priority(self) -> None:
        """SNIFFER_CPU_PRIORITY low or idle: every process of the daemon back to its starting priority,
        so that draining and flushing do not wait for CPU the node has none of (`cpu_priority`)."""
        priority = self.config.cpu_priority
        if priority not in ("low", "idle"):
            return
        pids = [os.getpid()]
        if self.pool is not None:
            pids += [p.pid for p in self.pool.procs if p.pid is not None]
        failed = restore_normal_priority(pids)
        if failed:
            log.warning("stopping at %s CPU priority: %d threads could not be raised back", priority, failed)
        else:
            log.info("stopping at normal CPU priority")

    def _on_hup(self, signum: int, frame: FrameType | None) -> None:
        self.signals.hup = True  # reopened by the loop, never inside the handler (logging locks)

    # ---- periodic ----

    def publish(self) -> None:
        engine = self.engine
        if engine is not None:
            engine.sync_stats()
        core: Counter[str] = Counter(self.stats)
        gauges: dict[str, float] = {"capture_open": float(self.health.capture_open)}
        if self.pool is not None:
            for d in self.pool.stats:
                core.update(d)
            gauges["flows_active"] = sum(self.pool.flows)
            gauges["workers"] = len(self.pool.procs)
        elif engine is not None and engine.pipeline is not None:
            gauges["flows_active"] = engine.pipeline.flow_count
            gauges["workers"] = 1
        if engine is not None:
            gauges["legs_pending"] = engine.joiner.pending
        if self.merge is not None:
            gauges["legs_held_for_order"] = len(self.merge)
        if self.tls is not None:
            tls_counters, tls_gauges = self.tls.counters()
            core.update(tls_counters)
            gauges.update(tls_gauges)
        level = self.policy.level
        gauges["shed_level"] = self.policy.index
        gauges["shed_sample_1_in"] = level.sample
        gauges["shed_bodies_off"] = float(not level.bodies)
        core["shed_level_changes"] = self.policy.changes
        gauges["last_tick_timestamp_seconds"] = time.time()
        sender_stats = self.sender.stats if self.sender is not None else None
        if sender_stats is not None:
            self.health.observe_sender(sender_stats)
        self._sender_stats = sender_stats
        if self.metrics is not None:
            # (the pool replaces a worker's stats dict on each tick, never changes one: a copy of the list
            # is a snapshot)
            workers = list(self.pool.stats) if self.pool is not None else []
            self.metrics.snapshot = Snapshot(
                core=dict(core), sender=sender_stats, gauges=gauges, workers=workers
            )
        self._core = core

    def shed(self, backlog: float) -> None:
        """One tick of the load-shedding policy, from the counters `publish` just gathered."""
        drops = self._core["drop_kernel"]
        delta, self._drops_seen = drops - self._drops_seen, drops
        queue = (self._sender_stats or {}).get("queue_fill_permille", 0) / 1000
        before = self.policy.level
        if self.policy.observe(Pressure(backlog, delta, queue)) is None:
            return
        level = self.policy.level
        (log.warning if level.sample > before.sample or before.bodies else log.info)(
            "load shedding: level %d (%s): bodies %s, new flows kept 1 in %d "
            "(ring backlog %.0f%%, %d kernel drops, sender queue %.0f%%)",
            self.policy.index, level.name, "captured" if level.bodies else "left out", level.sample,
            backlog * 100, delta, queue * 100,
        )  # fmt: skip
        if self.engine is not None:
            self.engine.shed_bodies = not level.bodies
        if self.pool is not None:
            self.pool.capture_bodies(level.bodies)
            self.pool.sample(level.sample)
        elif self.sampler is not None:
            self.sampler.set_rate(level.sample, self.engine.pipeline if self.engine is not None else None)
            self._install_sampler()

    def _install_sampler(self) -> None:
        if self.loop is None or self.sampler is None or self.engine is None:
            return
        feed = self.engine.feed
        self.loop.set_handler(self.sampler.wrap(feed) if self.sampler.active else feed)  # type: ignore[arg-type]

    def summary(self) -> None:
        c = self._core
        log.info(
            "%d packets, %d kernel drops, %d flows, %d exchanges, %d events (%d partial)",
            c["packets"], c["drop_kernel"], c["flows"], c["exchanges"], c["events"], c["events_partial"],
        )  # fmt: skip
        if self.pool is not None and len(self.pool.stats) > 1:  # how the fanout split the flows
            workers = self.pool.stats
            # The wait: how long each was blocked handing its messages to the main process, the limit
            # when it is a large part of the run (it joins and builds every Kong call, writes or sends
            # every event).
            log.info(
                "by worker: %s packets, %s kernel drops, %s s waiting on the main process",
                " / ".join(str(w.get("packets", 0)) for w in workers),
                " / ".join(str(w.get("drop_kernel", 0)) for w in workers),
                " / ".join(f"{w.get('main_wait_us', 0) / 1e6:.1f}" for w in workers),
            )
            now = time.monotonic()
            seconds = now - self._summary_at
            before = self._workers_at_summary or [{} for _ in workers]
            limit = main_process_limit(before, workers, seconds)
            self._workers_at_summary, self._summary_at = list(workers), now
            if limit is not None:
                log.warning(
                    "a capture worker waited on the main process %.0f%% of the last %.0f s while the kernel "
                    "dropped %d packets: the main process (it joins Kong's legs, builds their events and "
                    "writes or sends every event) is the limit, and more workers will not help",
                    100 * limit[0], seconds, limit[1],
                )  # fmt: skip
        if self.tls is not None:
            log.info(
                "TLS: %d records, %d connections, %d ring-full drops, %d rate-limited, %d bytes truncated",
                c["tls_records"], c["tls_connections"], c["drop_tls_ring_full"], c["drop_tls_rate_limited"],
                c["truncated_tls_bytes"],
            )  # fmt: skip

    # ---- loops ----

    def run_single(self, rings: list[RingSocket]) -> None:
        engine = self.engine
        assert engine is not None
        loop = self.loop = CaptureLoop(rings, engine.feed)  # type: ignore[arg-type]
        tls = self.tls
        merge: TimeMerge | None = None
        if tls is not None:
            loop.watch(tls.fileno())
            # The packets' exchanges go straight in; the TLS tap's wait until the packets walked have
            # passed their end (source 0: the rings' watermark, source 1: the TLS tap's).
            merge = self.merge = self._merge(engine, 2)
            tls_feed = self._tls_feed = merge.source(1)
        sampler = self.sampler = FlowSampler.of(self.config, self.stats, engine.flow_weights)
        clock = 0.0
        now = time.monotonic()
        next_tick, next_kstats, next_summary = now, now + KERNEL_STATS_S, now + SUMMARY_S
        wait_s = TLS_POLL_S if tls is not None else TICK_S / 4
        while not self.signals.stop:
            loop.run_once(wait_s)
            if merge is not None:
                merge.put(0, loop.last_ts)
                tls.poll(tls_feed)  # type: ignore[union-attr]
            now = time.monotonic()
            if now < next_tick:
                continue
            next_tick = now + TICK_S
            clock, idle = loop.tick_clock(clock)
            if idle:
                engine.advance(clock)
            if merge is not None:
                merge.put(0, clock)
                tls.tick(tls_feed)  # type: ignore[union-attr]
            if len(sampler) and sampler.expire(clock) and not sampler.active:
                self._install_sampler()
            if now >= next_kstats:
                next_kstats = now + KERNEL_STATS_S
                loop.update_stats(self.stats)
            self._housekeeping(now >= next_summary, backlog=loop.take_backlog())
            if now >= next_summary:
                next_summary = now + SUMMARY_S
        self.health.capture_open = False
        loop.drain()
        loop.update_stats(self.stats)
        loop.close()

    def run_workers(self, pool: WorkerPool) -> bool:
        """The main process's loop with capture workers; False when a worker died."""
        engine = self.engine
        assert engine is not None
        now = time.monotonic()
        next_tick, next_summary = now, now + SUMMARY_S
        ok = True
        wait_s = TLS_POLL_S if self.tls is not None else TICK_S / 4
        # Worker i is source i, the TLS tap source N: their legs reach the joiner in capture-time order.
        n = len(pool.procs)
        merge = self.merge = self._merge(engine, n + (self.tls is not None))
        if self.tls is not None:
            self._tls_feed = merge.source(n)
        try:
            while not self.signals.stop:
                self._take(pool, wait_s)
                if pool.running < len(pool.procs):
                    ok = False
                    break
                now = time.monotonic()
                if now < next_tick:
                    continue
                next_tick = now + TICK_S
                self.health.last_tick = min([*pool.last_tick, now])
                if self.tls is not None:
                    self.tls.tick(self._tls_feed)
                self._housekeeping(now >= next_summary, tick=False, backlog=pool.take_backlog())
                if now >= next_summary:
                    next_summary = now + SUMMARY_S
        finally:  # also when the output failed (the caller reports it): the workers stop and are drained
            self.health.capture_open = False
            pool.stop()
            deadline = time.monotonic() + STOP_DRAIN_S
            while pool.running and time.monotonic() < deadline:
                self._take(pool, 0.25)
            pool.close()
        return ok

    def _merge(self, engine: Engine, sources: int) -> TimeMerge:
        """The merge in front of the engine's joiner. The legs it holds come out of the legs' budgets
        (SNIFFER_MAX_PENDING_LEGS and _BYTES, which the memory plan counts once): a fifth for the merge,
        where a leg waits about a second at most, the rest for the joiner, where it may wait 5 s."""
        c = self.config
        held, held_bytes = max(1, c.max_pending_legs // 5), max(1, c.max_pending_leg_bytes // 5)
        engine.joiner.max_pending = max(1, c.max_pending_legs - held)
        engine.joiner.max_pending_bytes = max(1, c.max_pending_leg_bytes - held_bytes)
        return TimeMerge(
            engine.feed_exchanges, sources, stats=self.stats, max_held=held, max_held_bytes=held_bytes
        )

    def _take(self, pool: WorkerPool, timeout_s: float) -> None:
        merge = self.merge
        assert merge is not None
        if self.tls is not None:
            # Wake on the TLS records too (without kernel BTF: an SSL_set_fd must be read while its socket
            # still exists).
            live = [c for c, done in zip(pool.conns, pool.done, strict=True) if not done]
            multiprocessing.connection.wait([*live, self.tls.fileno()], timeout_s)
            timeout_s = 0.0
        for i, msg in pool.messages(timeout_s):
            kind = msg[0]
            if kind == "x":
                merge.put(i, msg[1], msg[2], msg[3])
                if msg[4]:
                    self._built(msg[4])
            else:
                merge.put(i, msg[1])
        for i, done in enumerate(pool.done):
            if done:
                merge.retire(i)  # its "d" came, or it died
        if self.tls is not None:
            self.tls.poll(self._tls_feed)

    def _built(self, payload: bytes) -> None:
        """Events a capture worker built (`WorkerEvents.take`) to where the engine's own go."""
        if self.jsonl is not None:
            self.jsonl.write_lines(payload)
        elif self.sender is not None:
            self.sender.submit_encoded(*encoded_of(payload))

    def _reopen_output(self) -> None:
        """SIGHUP: the `--output` file opened again at its path, so logrotate's move-then-HUP works. If it
        cannot be (its directory not writable by SNIFFER_USER), events keep going to the old file."""
        if self.output_path is None or self.jsonl is None or self.out is None:
            return
        try:
            new = open_events_output(self.output_path, append=True)  # the daemon closes it at exit
        except OSError as exc:
            log.warning(
                "SIGHUP: cannot reopen output %s (%s); still writing to the old one",
                self.output_path,
                exc.strerror,
            )
            return
        old, self.out = self.out, new
        self.jsonl.reopen(new)
        old.close()
        log.info("SIGHUP: output %s reopened", self.output_path)

    def _housekeeping(self, summary: bool, tick: bool = True, backlog: float = 0.0) -> None:
        if tick:
            self.health.tick()
        if self.signals.hup:
            self.signals.hup = False
            reopen()
            self._reopen_output()
        if self.out is not None:
            self.out.flush()
        self.publish()
        self.shed(backlog)
        if summary:
            self.summary()
