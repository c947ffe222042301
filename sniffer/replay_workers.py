"""`replay --workers N`: one capture file over N processes, flow by flow, with the events of one process.

Every worker reads the whole file and feeds its `Pipeline` only the frames of its own flows
(`capture.flow_hash.FlowSplitter`, symmetric, like live capture's kernel fanout). Frames are numbered;
all workers number all frames (`capture.flow_hash.WorkerFrames` hands a worker its own frames and, of
the others, those where it has something due), which keeps the result equal to one process's (the same
set of events; their order differs):
- the core's timeouts run at the same frames as in one process: a worker runs them on the frames it
  skips too, on the core's own schedule (every `ADVANCE_INTERVAL_S` of capture time);
- an exchange that cannot be a Kong leg whatever has been seen before becomes an event in the worker
  (`capture.worker_events`: the same builder as one process); its JSON lines go to the output, written
  by the worker itself when that is a regular file or /dev/null (`_shared_output`), else by the main
  process, which also takes the events for the Moesif sender;
- every other exchange goes to the main process, tagged with its frame number, and so does the end time
  of each plain exchange when Kong ports are set (one process's joiner moves its clock on those); worker
  0 also sends the frames at which one process's engine would run the joiner's timeouts. The main
  process merges the workers' streams by frame number (a k-way merge up to the lowest frame number every
  worker has passed), so its `Engine(capture=False)` joins legs in one process's order.
Within one frame, exchanges completed by timeouts in several workers come worker by worker, where one
process would interleave them by flow: only the order of calls that time out at the same instant differs.

Why every worker walks the file rather than one reader dispatching frames: measured on a wrk
capture, walking and hashing cost a worker ~1.5 us per frame, against ~15 us per frame for the core and
the events (compiled, 2026-12-07: ~0.7 us, against ~8 us); a reader would save one worker that walk but
pickle every frame (~0.65 us each way) and be a third busy process on a 2-vCPU machine, and the frame
numbers that keep the joins exact would have to travel too.

Memory stays bounded: a worker that runs ahead is not read from (its pipe fills and it waits) once it
is `MAX_LEAD_FRAMES` ahead of the slowest.
"""

from __future__ import annotations

import contextlib
import io
import marshal
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import stat
from collections import deque
from collections.abc import Callable
from typing import IO, Any

from reassembly.events import Exchange, exchange_end
from reassembly.stats import Stats
from sniffer.capture.exchange_codec import pack
from sniffer.capture.flow_hash import WorkerFrames
from sniffer.capture.pcapfile import open_capture
from sniffer.capture.worker_events import SurelyPlain, WorkerEvents, events_of
from sniffer.capture.workers import exit_reason
from sniffer.config import Config
from sniffer.engine import JOIN_ADVANCE_INTERVAL_S, Engine, EventSink, make_pipeline
from sniffer.errors import CaptureError
from sniffer.replay_merge import NEVER, Record, RecordMerger

__all__ = ["MAX_LEAD_FRAMES", "replay_parallel"]

MAX_LEAD_FRAMES = 1 << 18
BATCH_RECORDS = 2048  # merge records per message
# Packed exchanges per message: each is ~1 KB on Kong traffic, and the main process holds a message's
# bytes and its decoded records at once (2048 of them: ~25 MB more peak RSS there, for no speed).
BATCH_PACKED = 256
BATCH_FRAMES = 1 << 15  # frames walked between messages at the latest (moves the merge forward)


def _worker(
    index: int,
    n: int,
    path: str,
    config: Config,
    conn: Any,
    encode: bool,
    others: list[Any],
    out_fd: int | None = None,
) -> None:
    """Walk the whole file, feed own frames, send events and merge records to the main process (the JSON
    lines of its events straight to `out_fd` when given: see `_shared_output`)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)  # the main process decides (it sends "stop")
    for other in others:  # the main process's pipe ends: held here, its exit would never be seen
        other.close()
    stats = Stats()
    pipeline = make_pipeline(config, stats, n)
    feed = pipeline.feed
    events = WorkerEvents(config, stats, jsonl=encode)
    plain_engine = events.feed
    kong = bool(config.kong_ports)
    surely_plain = SurelyPlain(frozenset(config.kong_ports), frozenset(config.upstream_ports))
    records: list[Record] = []
    packed = 0  # exchanges packed into `records`
    owned_frames = 0  # into stats["packets"] once, with the last message (a counter per frame costs)
    frame_no = 0
    next_advance: float | None = None
    next_join = 0.0
    last_ts = 0.0
    error: str | None = None
    stopped = False

    def out(no: int, ts: float, exchanges: list[Exchange]) -> None:
        nonlocal packed
        if not kong:
            plain_engine(ts, exchanges)
            return
        items: list[Any] = []
        plain: list[Exchange] = []
        for ex in exchanges:
            if surely_plain(ex):
                plain.append(ex)
                items.append(exchange_end(ex))
            else:
                items.append(pack(ex))
                packed += 1
        if plain:
            plain_engine(ts, plain)
        records.append((no, ts, items))

    def send(final: bool = False) -> None:
        nonlocal records, packed, out_fd
        payload = events.take()
        if out_fd is not None and payload:
            payload = _write_all(out_fd, payload)
            if payload:
                out_fd = None  # a write failed: the main process writes the rest, and reports the error
        try:
            batch = marshal.dumps(records)
        except ValueError:  # a core field marshal cannot carry (see exchange_codec): slower, still right
            batch = pickle.dumps(records, protocol=pickle.HIGHEST_PROTOCOL)
        conn.send(("b", frame_no if not final else frame_no + 1, batch, payload, bytes_read()))
        records = []
        packed = 0

    bytes_read: Callable[[], int] = lambda: 0  # noqa: E731 - replaced once the file is open
    try:
        with open_capture(path) as capture:
            bytes_read = lambda: capture.bytes_read  # noqa: E731
            # Other workers' frames come through only where this one's timeouts (or the joiner's tick)
            # are due, or to report progress every BATCH_FRAMES frames (the merge waits for it).
            walk = WorkerFrames(iter(capture), n, index)
            walk.report_at = BATCH_FRAMES
            try:
                for frame_no, ts, linktype, frame, wire_len, owned in walk:
                    if owned:
                        owned_frames += 1
                        got = feed(ts, linktype, frame, wire_len)
                        next_advance = pipeline.next_advance_ts
                        if got:
                            out(frame_no, ts, got)
                    elif next_advance is None or ts >= next_advance:
                        # the core's timeouts, at the frame one process would run them (see the docstring)
                        got = pipeline.tick(ts)
                        next_advance = pipeline.next_advance_ts
                        if got:
                            out(frame_no, ts, got)
                    if kong and index == 0 and ts >= next_join:
                        next_join = ts + JOIN_ADVANCE_INTERVAL_S
                        if not records or records[-1][0] != frame_no:
                            records.append((frame_no, ts, []))
                    due = NEVER if next_advance is None else next_advance
                    walk.due = min(due, next_join) if kong and index == 0 else due
                    if (
                        frame_no >= walk.report_at
                        or len(records) >= BATCH_RECORDS
                        or packed >= BATCH_PACKED
                        or events.full
                    ):
                        walk.report_at = frame_no + BATCH_FRAMES
                        send()
                        if conn.poll() and conn.recv() == "stop":
                            stopped = True
                            break
            except CaptureError as exc:
                error = str(exc)
            frame_no, last_ts = walk.frame_no, walk.last_ts
        frame_no += 1  # what the pipeline flushes comes after every frame
        got = pipeline.close(last_ts)
        if got:
            out(frame_no, last_ts, got)
        send(final=True)
        stats["packets"] += owned_frames
        conn.send(("d", dict(stats), error, stopped))
    except (BrokenPipeError, EOFError, ConnectionResetError):
        pass  # the main process is gone
    finally:
        conn.close()


def replay_parallel(
    path: str,
    config: Config,
    sink: EventSink,
    workers: int,
    *,
    encoded_out: IO[bytes] | None,
    progress: Callable[[int, int], None] | None = None,
    stop: Callable[[], bool] = lambda: False,
    forked: Callable[[], None] | None = None,
) -> tuple[Stats, CaptureError | None, bool]:
    """Replay `path` with `workers` processes into `sink` (events built in workers are written to
    `encoded_out` as JSON lines when given, else submitted to `sink`): (stats, damage, interrupted).
    `forked` runs once the workers exist (start threads there, not before: a fork copies no thread).
    Raises CaptureError if the file cannot be opened."""
    open_capture(path).close()  # the error for an unreadable file, before any process starts
    ctx = multiprocessing.get_context("fork")
    conns: list[Any] = []
    procs = []
    out_fd = _shared_output(encoded_out)
    for i in range(workers):
        parent, child = ctx.Pipe(duplex=True)
        proc = ctx.Process(
            target=_worker,
            args=(i, workers, path, config, child, encoded_out is not None, [*conns, parent], out_fd),
            name=f"replay-{i}",
            daemon=True,
        )
        proc.start()
        child.close()
        conns.append(parent)
        procs.append(proc)
    if forked is not None:
        forked()
    stats = Stats()
    engine = Engine(config, sink, stats, capture=False)
    queues: list[deque[Record]] = [deque() for _ in range(workers)]
    merger = RecordMerger(engine, queues)
    passed = [0] * workers  # every record of a worker up to this frame number has arrived
    done = [False] * workers
    error: str | None = None
    interrupted = False
    asked_stop = False
    try:
        while not all(done):
            if not asked_stop and stop():
                asked_stop = True
                for c, d in zip(conns, done, strict=True):
                    if not d:
                        with contextlib.suppress(OSError):
                            c.send("stop")
            slowest = min(p for p, d in zip(passed, done, strict=True) if not d)
            readable = [
                c
                for c, p, d in zip(conns, passed, done, strict=True)
                if not d and p - slowest < MAX_LEAD_FRAMES
            ]
            for conn in multiprocessing.connection.wait(readable, 0.25):
                i = conns.index(conn)
                try:
                    msg = conn.recv()
                except (EOFError, OSError):
                    procs[i].join(1.0)
                    why = exit_reason(procs[i].exitcode)
                    raise CaptureError(f"replay worker {i} exited unexpectedly ({why})") from None
                if msg[0] == "b":
                    _, passed[i], records, payload, nbytes = msg
                    queues[i].extend(_decoded(records))
                    if payload:
                        if encoded_out is not None:
                            encoded_out.write(payload)
                        else:
                            for event in events_of(payload):
                                sink.submit(event)
                    if i == 0 and progress is not None:
                        progress(nbytes, passed[0])
                else:
                    _, worker_stats, err, was_stopped = msg
                    stats.update(worker_stats)
                    error = error or err
                    interrupted = interrupted or was_stopped
                    done[i] = True
                    passed[i] = 1 << 62
            merger.merge(min(passed))
        merger.close()
        engine.close()
    finally:
        for conn in conns:
            conn.close()
        for proc in procs:
            proc.join(5.0)
            if proc.is_alive():
                proc.kill()
                proc.join(1.0)
    return stats, CaptureError(error) if error else None, interrupted


def _shared_output(out: IO[bytes] | None) -> int | None:
    """The JSON-lines output's file descriptor when the workers may write their events to it themselves:
    a regular file, or a character device that is not a terminal (/dev/null). The workers inherit the
    open file (one file offset for all), and Linux makes each write() to a regular file through a shared
    open file land whole, after the previous one (f_pos_lock), so batches of whole lines never mix. That
    spares the main process receiving every worker's JSON lines only to write them: on the 1M-frame wrk
    capture to /dev/null with 2 workers, the main process's CPU went from 0.9-1.2 s to 0.6-0.7 s (user
    + system, of ~12 s for the whole replay; callgrind, user space only: -1.3 % instructions). A pipe or a
    terminal may split a write past PIPE_BUF: the main process writes for them, as before."""
    if out is None:
        return None
    try:
        fd = out.fileno()
        mode = os.fstat(fd).st_mode
    except (OSError, ValueError, io.UnsupportedOperation):
        return None
    if stat.S_ISREG(mode) or (stat.S_ISCHR(mode) and not os.isatty(fd)):
        out.flush()  # what the main process buffered before the fork goes first, and once
        return fd
    return None


def _write_all(fd: int, data: bytes) -> bytes:
    """Write `data` whole to `fd`: b"", or what was left unwritten when a write failed."""
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view) :]
    except OSError:
        return bytes(view)
    return b""


def _decoded(data: bytes) -> list[Record]:
    return marshal.loads(data) if data[:1] != b"\x80" else pickle.loads(data)  # type: ignore[no-any-return]
