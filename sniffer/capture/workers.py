"""Live capture loops: the rings of one process (`CaptureLoop`) and the PACKET_FANOUT worker processes.

`open_ring_sets` opens every socket up front (as root, before privileges are dropped): for each
interface, one ring per worker, all in one fanout group: both directions of a flow reach the same
worker, IPv4 fragments reassembled by the kernel first. With `SNIFFER_FANOUT=balanced` (the default) an
eBPF program deals new flows to the workers in turn (`fanout_balance`: a few busy connections split
evenly); with `hash`, or when the kernel refuses the program, the kernel's symmetric flow hash decides.
With one worker the rings still join a group of one, for that defragmentation.

With N > 1 workers, `WorkerPool` forks N processes; each walks its own rings into its own
`reassembly.Pipeline`. The exchanges a walk completed that cannot be Kong legs become events in the
worker (`capture.worker_events`: the main process, which built every event, was the limit with two
workers); the others may be one leg of a call whose other leg another worker sees, so they go to the
main process, which joins them. One message per walk (a walk is one or more whole ring blocks, so
messages batch naturally under load; exchanges travel as `exchange_codec` bytes, decoded by
`WorkerPool.messages`):
- ("x", ts, [Exchange, ...], weights, built): `ts` the capture time reached, the exchanges for the leg
  joiner, `weights` None or {index: weight} for exchanges of flows kept by flow sampling
  (`sniffer.load_shedding`), `built` the events made in the worker (`WorkerEvents.take`: JSON lines when
  there is no application id, else events for the sender; b"" for none);
- ("t", ts, stats, flows, backlog): a tick about once a second (counters, live flow count, the largest
  ring backlog fraction seen since the last tick: the load-shedding policy's input);
- ("d", ts, stats, flows): the worker drained its rings and closed its pipeline after a stop request.
A worker counts the time its sends take (`send_to_main`, `stats["main_wait_us"]`): a send blocks while
the main process, busy joining and building Kong calls or writing and sending events, is not reading,
and meanwhile the worker's ring fills. A large share of the wall clock says the main process is the
limit and more workers will not help (live, two workers: 45-64 % of the time on Kong traffic at 150k
packets/s, 5-10 % on wrk traffic).
The main process sends "stop", ("shed", N) to sample new flows 1 in N (1: stop sampling; the
flows already decided keep their fate), or ("bodies", on) to build events with or without bodies. A
worker ignores SIGINT/SIGTERM (the main process decides when to stop and says so over the pipe) and
stops on its own when the main process goes away (end of file on the pipe).

Time: packets carry the kernel's capture time. When the rings are idle the pipeline's timeouts are run
with the wall clock minus `IDLE_LAG_S` (more than a block's retire timeout, so no packet still waiting in a
partly filled block is older than the time the core was moved to): the only place the wall clock enters.
Only when the last walk left no released block behind (`CaptureLoop.tick_clock`): behind a backlog the
packets still in the rings are older than the wall says, and timeouts run at the wall's time would expire
flows, gaps and legs whose next packets are waiting there.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing
import multiprocessing.connection
import os
import select
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

from reassembly.events import Exchange
from reassembly.stats import Stats
from sniffer.capture.afpacket import RETIRE_MS, RingSocket, interface_names
from sniffer.capture.bpf import tcp_port_filter
from sniffer.capture.exchange_codec import decode, encode
from sniffer.capture.fanout_balance import balanced_fanout_program
from sniffer.capture.worker_events import SurelyPlain, WorkerEvents
from sniffer.config import Config
from sniffer.engine import make_pipeline
from sniffer.errors import CaptureError
from sniffer.load_shedding import FlowSampler

__all__ = [
    "IDLE_LAG_S",
    "KERNEL_STATS_S",
    "TICK_S",
    "CaptureLoop",
    "WorkerPool",
    "exit_reason",
    "open_ring_sets",
    "recv_batch",
    "send_to_main",
]

log = logging.getLogger("sniffer.capture")

IDLE_LAG_S = 0.5
TICK_S = 1.0
KERNEL_STATS_S = 2.0
DRAIN_S = 3 * RETIRE_MS / 1000
MAX_MESSAGES = 16  # per worker and call of WorkerPool.messages
# Test hook: "<block bytes>,<blocks>" for a tiny ring that fills under a small burst (not a SNIFFER_
# option: operators have no reason to shrink the ring).
TEST_RING_ENV = "_SNIFFER_TEST_RING"


def open_ring_sets(config: Config, workers: int) -> list[list[RingSocket]]:
    """`workers` lists of rings, one ring per interface in each, fanout groups joined."""
    ports = config.capture_ports()
    # SNIFFER_DROP_PURE_ACKS: see capture/bpf.py for what it costs.
    lean = config.drop_pure_acks
    try:
        program = tcp_port_filter(ports, drop_pure_acks=lean)
    except ValueError as exc:
        log.warning("%s; filtering all TCP in the kernel and the ports in the core instead", exc)
        program = tcp_port_filter((), drop_pure_acks=lean)
        ports = ()
    balance = None
    if workers > 1 and config.fanout == "balanced":
        balance = balanced_fanout_program(workers, config.max_flows, ports)
        if balance is not None:
            log.info("flows dealt to the %d workers in turn (eBPF fanout)", workers)
    sets: list[list[RingSocket]] = [[] for _ in range(workers)]
    geometry = {"block_count": config.ring_mb}  # of BLOCK_SIZE (1 MiB) blocks
    if hook := os.environ.get(TEST_RING_ENV):
        size, count = (int(x) for x in hook.split(","))
        geometry = {"block_size": size, "block_count": count}
    try:
        for name in interface_names(config.interface):
            group: int | None = None
            for rings in sets:
                ring = RingSocket(name, program, **geometry)
                rings.append(ring)
                group = ring.join_fanout(group, None if balance is None else balance.fd)
    except CaptureError:
        for rings in sets:
            for ring in rings:
                ring.close()
        raise
    finally:
        if balance is not None:  # every group holds the program now
            balance.close()
    return sets


def exit_reason(code: int | None) -> str:
    """A worker's exit code, as an operator reads it: a SIGKILL is nearly always the OOM killer."""
    if code is None:
        return "still running"
    if code == -signal.SIGKILL:
        return "killed by SIGKILL: out of memory? see SNIFFER_MEMORY_LIMIT"
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


class CaptureLoop:
    """Poll a process's rings and walk whichever the kernel released blocks in."""

    def __init__(
        self,
        rings: list[RingSocket],
        handle: Callable[[float, int, bytes, int], object],
        out: list[Any] | None = None,
    ) -> None:
        """`out`: where the lists `handle` returns are collected (see `RingSocket.walk`)."""
        self.rings = rings
        self._handle = handle
        self._out = out
        self._poll = select.poll()
        for ring in rings:
            self._poll.register(ring.fileno(), select.POLLIN)
        self._extra: set[int] = set()
        self.backlog = 0.0  # largest fraction of a ring left unwalked after a walk (reset by the reader)
        self.caught_up = True  # the last walk left no released block in any ring

    def set_handler(self, handle: Callable[[float, int, bytes, int], object]) -> None:
        """Hand packets to `handle` from the next walk on (the flow sampler's filter comes and goes)."""
        self._handle = handle

    def take_backlog(self) -> float:
        """The largest backlog fraction since the last call."""
        b, self.backlog = self.backlog, 0.0
        return b

    def watch(self, fd: int) -> None:
        """Also wake up when `fd` is readable (a control pipe)."""
        self._poll.register(fd, select.POLLIN | select.POLLHUP)
        self._extra.add(fd)

    @property
    def last_ts(self) -> float:
        return max(ring.last_ts for ring in self.rings)

    def tick_clock(self, clock: float) -> tuple[float, bool]:
        """The capture time reached, for a tick: (clock, True when it is the wall clock's and the
        pipeline's timeouts must be run to it). That is the newest packet walked (at least `clock`), or
        the wall clock minus `IDLE_LAG_S` when later, but only if the last walk caught up with the
        kernel: a backlog's packets are older than the wall, and are next."""
        clock = max(clock, self.last_ts)
        if self.caught_up:
            wall = time.time() - IDLE_LAG_S
            if wall > clock:
                return wall, True
        return clock, False

    def run_once(self, timeout_s: float) -> tuple[int, bool]:
        """Wait up to `timeout_s`, walk the rings: (packets handed over, a watched fd is readable)."""
        try:
            ready = self._poll.poll(int(timeout_s * 1000))
        except InterruptedError:  # pragma: no cover - PEP 475 retries; kept for old interpreters
            ready = []
        handle = self._handle
        out = self._out
        n = 0
        backlog = self.backlog
        caught_up = True
        for ring in self.rings:
            n += ring.walk(handle, out=out)
            blocks = ring.backlog()
            if blocks:
                caught_up = False
                left = blocks / ring.block_count
                if left > backlog:
                    backlog = left
        self.backlog = backlog
        self.caught_up = caught_up
        return n, any(fd in self._extra for fd, _ in ready)

    def drain(self) -> int:
        """Stopping: wait until blocks still being filled are retired, walk them all."""
        n = 0
        deadline = time.monotonic() + DRAIN_S
        while (left := deadline - time.monotonic()) > 0:
            n += self.run_once(left)[0]
        for ring in self.rings:
            n += ring.walk(self._handle, max_blocks=ring.block_count, out=self._out)
        return n

    def update_stats(self, stats: Stats) -> None:
        """Read PACKET_STATISTICS of every ring into `stats` (running totals)."""
        for ring in self.rings:
            with contextlib.suppress(OSError):
                ring.read_kernel_stats()
        stats["capture_kernel_packets"] = sum(r.kernel_packets for r in self.rings)
        stats["drop_kernel"] = sum(r.kernel_drops for r in self.rings)
        stats["capture_kernel_freezes"] = sum(r.kernel_freezes for r in self.rings)
        stats["capture_loopback_duplicates"] = sum(r.loopback_duplicates for r in self.rings)

    def close(self) -> None:
        for ring in self.rings:
            ring.close()


def _weights_of(exchanges: list[Exchange], weights: dict[tuple[Any, Any], int]) -> dict[int, int] | None:
    """{index: weight} of the exchanges whose flows were kept by flow sampling, None if none."""
    if not weights:
        return None
    w = {i: n for i, ex in enumerate(exchanges) if (n := weights.get((ex.client, ex.server), 0))}
    return w or None


def send_to_main(conn: Any, msg: tuple[Any, ...], stats: Stats) -> None:
    """`conn.send(msg)`, its time added to `stats["main_wait_us"]` (see the module docstring)."""
    start = time.perf_counter_ns()
    conn.send(msg)
    stats["main_wait_us"] += (time.perf_counter_ns() - start) // 1000


def _worker_main(
    index: int, n: int, rings: list[RingSocket], conn: Any, config: Config, others: list[Any]
) -> None:
    """One capture worker: rings -> pipeline -> events of plain exchanges, Kong legs -> main process."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    for other in others:  # the main process's ends of other workers' pipes and their rings
        other.close()
    stats = Stats()
    pipeline = make_pipeline(config, stats, n)
    handle = pipeline.feed  # the walk collects what it returns into `pending`: no wrapper per packet
    pending: list[Exchange] = []
    weights: dict[tuple[Any, Any], int] = {}
    sampler = FlowSampler.of(config, stats, weights)
    events = WorkerEvents(config, stats, output="moesif" if config.application_id else "jsonl")
    kong, upstream = frozenset(config.kong_ports), frozenset(config.upstream_ports)
    surely_plain = SurelyPlain(kong, upstream) if kong else None

    def send(ts: float) -> None:
        if surely_plain is None:
            plain, legs = pending, []
        else:
            plain, legs = [], []
            for ex in pending:
                (plain if surely_plain(ex) else legs).append(ex)
        if plain:
            events.feed(ts, plain, _weights_of(plain, weights))
        send_to_main(conn, ("x", ts, encode(legs), _weights_of(legs, weights), events.take()), stats)
        pending.clear()

    loop = CaptureLoop(rings, handle, pending)
    loop.watch(conn.fileno())
    clock = 0.0
    next_tick = next_kstats = time.monotonic()
    try:
        while True:
            n, control = loop.run_once(TICK_S / 4)
            stats["packets"] += n
            if pending:
                send(loop.last_ts)
            if control:
                msg = conn.recv()  # EOFError when the main process is gone
                if msg == "stop":
                    break
                if isinstance(msg, tuple) and msg[0] == "shed":
                    sampler.set_rate(msg[1], pipeline)
                    loop.set_handler(sampler.wrap(handle) if sampler.active else handle)
                elif isinstance(msg, tuple) and msg[0] == "bodies":
                    events.shed_bodies = not msg[1]
            now = time.monotonic()
            if now >= next_tick:
                next_tick = now + TICK_S
                clock, idle = loop.tick_clock(clock)
                if idle:
                    pending.extend(pipeline.advance(clock))
                if len(sampler) and sampler.expire(clock) and not sampler.active:
                    loop.set_handler(handle)
                if now >= next_kstats:
                    next_kstats = now + KERNEL_STATS_S
                    loop.update_stats(stats)
                if pending:
                    send(clock)
                send_to_main(conn, ("t", clock, dict(stats), pipeline.flow_count, loop.take_backlog()), stats)
        stats["packets"] += loop.drain()
        pending.extend(pipeline.close(loop.last_ts))
        loop.update_stats(stats)
        send(loop.last_ts)
        conn.send(("d", loop.last_ts, dict(stats), 0, 0.0))
    except (EOFError, BrokenPipeError, ConnectionResetError):
        pass  # the main process is gone: nothing to report to
    finally:
        loop.close()
        conn.close()


def recv_batch(conn: Any) -> Any:
    """`conn.recv()`, with the exchanges of an "x" message decoded (`exchange_codec`), the cyclic
    garbage collector paused meanwhile: a batch of exchanges is thousands of new containers, and in a
    process holding many objects each collection pass they trigger walks those too (measured with
    pickle: 35 us per exchange loaded with the collector on, 8 us with it off)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        msg = conn.recv()
        if msg[0] == "x":
            msg = (msg[0], msg[1], decode(msg[2]), *msg[3:])
        return msg
    finally:
        if enabled:
            gc.enable()


class WorkerPool:
    """N capture worker processes, each with its own rings; messages from all of them."""

    def __init__(self, ring_sets: list[list[RingSocket]], config: Config) -> None:
        self._ring_sets = ring_sets
        self._config = config
        self.procs: list[multiprocessing.process.BaseProcess] = []
        self.conns: list[Any] = []
        self.stats: list[dict[str, int]] = [{} for _ in ring_sets]
        self.flows: list[int] = [0 for _ in ring_sets]
        self.last_tick: list[float] = [time.monotonic() for _ in ring_sets]
        self.done: list[bool] = [False for _ in ring_sets]
        self.backlog: list[float] = [0.0 for _ in ring_sets]  # each worker's, from its last tick

    def start(self) -> None:
        """Fork the workers (no thread may run yet); the main process keeps no ring open."""
        ctx = multiprocessing.get_context("fork")
        for i, rings in enumerate(self._ring_sets):
            parent, child = ctx.Pipe(duplex=True)
            others: list[Any] = [*self.conns, parent]
            others += [r for j, rs in enumerate(self._ring_sets) if j != i for r in rs]
            proc = ctx.Process(
                target=_worker_main,
                args=(i, len(self._ring_sets), rings, child, self._config, others),
                name=f"capture-{i}",
                daemon=True,
            )
            proc.start()
            child.close()
            self.procs.append(proc)
            self.conns.append(parent)
        for rings in self._ring_sets:
            for ring in rings:
                ring.close()

    @property
    def running(self) -> int:
        return sum(not d for d in self.done)

    def messages(self, timeout_s: float) -> Iterator[tuple[int, tuple[Any, ...]]]:
        """(worker index, message) for what arrived within `timeout_s`; a dead worker is marked done."""
        live = [c for c, d in zip(self.conns, self.done, strict=True) if not d]
        for conn in multiprocessing.connection.wait(live, timeout_s):
            i = self.conns.index(conn)
            try:
                for _ in range(MAX_MESSAGES):  # then let the caller tick, even under a flood
                    if not conn.poll():
                        break
                    msg = recv_batch(conn)
                    kind = msg[0]
                    if kind in ("t", "d"):
                        self.stats[i], self.flows[i] = msg[2], msg[3]
                        self.backlog[i] = max(self.backlog[i], msg[4])
                        self.last_tick[i] = time.monotonic()
                        if kind == "d":
                            self.done[i] = True
                    yield i, msg
                    if self.done[i]:
                        break
            except (EOFError, OSError):
                if not self.done[i]:
                    log.error("capture worker %d exited unexpectedly (%s)", i, self._exitcode(i))
                self.done[i] = True

    def _exitcode(self, i: int) -> str:
        self.procs[i].join(1.0)
        return exit_reason(self.procs[i].exitcode)

    def take_backlog(self) -> float:
        """The largest backlog fraction any worker reported since the last call."""
        b = max(self.backlog, default=0.0)
        self.backlog = [0.0 for _ in self.backlog]
        return b

    def sample(self, rate: int) -> None:
        """Ask every worker to keep 1 new flow in `rate` (1: no sampling)."""
        self._tell(("shed", rate))

    def capture_bodies(self, on: bool) -> None:
        """Ask every worker to build its events with bodies (`on`) or without (load shedding)."""
        self._tell(("bodies", on))

    def stop(self) -> None:
        """Ask every worker to drain and close; `messages` then yields their last exchanges and events."""
        self._tell("stop")

    def _tell(self, msg: Any) -> None:
        for conn, done in zip(self.conns, self.done, strict=True):
            if not done:
                with contextlib.suppress(OSError):
                    conn.send(msg)

    def close(self, timeout_s: float = 5.0) -> None:
        deadline = time.monotonic() + timeout_s
        for proc in self.procs:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                log.warning("capture worker %s did not stop; killing it", proc.name)
                proc.kill()
                proc.join(1.0)
        for conn in self.conns:
            conn.close()

    def kill(self) -> None:
        """Immediate exit: no draining."""
        for proc in self.procs:
            if proc.is_alive():
                with contextlib.suppress(OSError):
                    os.kill(proc.pid or 0, signal.SIGKILL)
