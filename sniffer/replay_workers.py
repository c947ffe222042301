"""`replay --workers N`: one capture file over N processes, flow by flow, with the events of one process.

Every worker (`sniffer.replay_worker`) reads the whole file and feeds its `Pipeline` only the frames of
its own flows (`capture.flow_hash.FlowSplitter`, symmetric, like live capture's kernel fanout). Frames
are numbered; all workers number all frames (`capture.flow_hash.WorkerFrames` hands a worker its own
frames and, of the others, those where it has something due), which keeps the result equal to one
process's (the same set of events; their order differs):
- the core's timeouts run at the same frames as in one process: a worker runs them on the frames it
  skips too, on the core's own schedule (every `ADVANCE_INTERVAL_S` of capture time);
- an exchange that cannot be a Kong leg whatever has been seen before becomes an event in the worker
  (`capture.worker_events`: the same builder as one process); its JSON lines go to the output, written
  by the worker itself when that is a regular file or /dev/null (`_shared_output`), else by the main
  process, which also takes the events for the Moesif sender;
- every other exchange goes to the main process, tagged with its frame number, and so does the end time
  of each plain exchange when Kong ports are set (one process's joiner moves its clock on those; frames
  with only plain exchanges send just their latest end, in arrays, `replay_merge.PlainEnds`); worker
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
import multiprocessing
import multiprocessing.connection
import os
import signal
import stat
from collections import deque
from collections.abc import Callable
from typing import IO, Any

from reassembly.stats import Stats
from sniffer.capture.exchange_codec import loads
from sniffer.capture.pcapfile import open_capture
from sniffer.capture.worker_events import Output, encoded_of, events_of
from sniffer.capture.workers import exit_reason
from sniffer.config import Config
from sniffer.engine import Engine, EventSink
from sniffer.errors import CaptureError
from sniffer.replay_merge import PlainEnds, Record, RecordMerger
from sniffer.replay_worker import ReplayWorker

__all__ = ["MAX_LEAD_FRAMES", "replay_parallel"]

MAX_LEAD_FRAMES = 1 << 18


def _worker(
    index: int,
    n: int,
    path: str,
    config: Config,
    conn: Any,
    output: Output,
    others: list[Any],
    out_fd: int | None = None,
) -> None:
    """A worker process's entry (`sniffer.replay_worker`): the JSON lines of the events it builds go
    straight to `out_fd` when given (see `_shared_output`)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)  # the main process decides (it sends "stop")
    for other in others:  # the main process's pipe ends: held here, its exit would never be seen
        other.close()
    try:
        ReplayWorker(index, n, config, conn, output, out_fd).run(path)
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
    submit_encoded = getattr(sink, "submit_encoded", None)  # the Moesif sender takes events encoded
    output: Output = "jsonl" if encoded_out is not None else "moesif" if submit_encoded else "dicts"
    for i in range(workers):
        parent, child = ctx.Pipe(duplex=True)
        proc = ctx.Process(
            target=_worker,
            args=(i, workers, path, config, child, output, [*conns, parent], out_fd),
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
    plain = [PlainEnds() for _ in range(workers)]
    merger = RecordMerger(engine, queues, plain)
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
                    _, passed[i], records, payload, nbytes, plain_frames, plain_ends = msg
                    queues[i].extend(_decoded(records))
                    plain[i].add(plain_frames, plain_ends)
                    if payload:
                        if encoded_out is not None:
                            encoded_out.write(payload)
                        elif submit_encoded is not None:
                            submit_encoded(*encoded_of(payload))
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


def _decoded(data: bytes) -> list[Record]:
    return loads(data)  # type: ignore[no-any-return]
