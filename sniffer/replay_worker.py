"""One worker process of `replay --workers N` (`sniffer.replay_workers` says how the work is split): walk
the whole file, feed the frames of its own flows to its pipeline, build the events it can, and send the
rest to the main process as merge records.

Compiled (setup.py): every frame of the file passes through `ReplayWorker.run`'s loop, in every worker.
Interpreted, that loop cost a worker ~8 % of its instructions on wrk traffic (callgrind, 2 workers).
"""

from __future__ import annotations

import os
from array import array
from typing import Any

from reassembly.events import Exchange, exchange_end
from reassembly.stats import Stats
from sniffer.capture.exchange_codec import dumps, pack
from sniffer.capture.flow_hash import WorkerFrames
from sniffer.capture.pcapfile import open_capture
from sniffer.capture.worker_events import Output, SurelyPlain, WorkerEvents
from sniffer.config import Config
from sniffer.engine import JOIN_ADVANCE_INTERVAL_S, make_pipeline
from sniffer.errors import CaptureError
from sniffer.replay_merge import NEVER, Record

__all__ = ["BATCH_FRAMES", "BATCH_PACKED", "BATCH_RECORDS", "ReplayWorker", "write_all"]

BATCH_RECORDS = 2048  # merge records per message
# Packed exchanges per message: each is ~1 KB on Kong traffic, and the main process holds a message's
# bytes and its decoded records at once (2048 of them: ~25 MB more peak RSS there, for no speed).
BATCH_PACKED = 256
BATCH_FRAMES = 1 << 15  # frames walked between messages at the latest (moves the merge forward)


class ReplayWorker:
    """Worker `index` of `n`: `run(path)` walks the file and talks to the main process over `conn` (a
    multiprocessing connection): ("b", frames passed, merge records, events payload, bytes read, plain
    frames, their ends) batches, then one ("d", counters, error, stopped). `output`: what the events
    built here become (`WorkerEvents`); `out_fd`: where to write JSON lines directly."""

    def __init__(
        self, index: int, n: int, config: Config, conn: Any, output: Output, out_fd: int | None
    ) -> None:
        self.index = index
        self.n = n
        self.conn = conn
        self.out_fd = out_fd
        self.stats = Stats()
        self.pipeline = make_pipeline(config, self.stats, n)
        self.events = WorkerEvents(config, self.stats, output=output)
        self.kong = bool(config.kong_ports)
        self.surely_plain = SurelyPlain(frozenset(config.kong_ports), frozenset(config.upstream_ports))
        self.records: list[Record] = []
        # Frames whose exchanges were all plain: only their latest end goes to the merge (`PlainEnds`).
        # Lists, packed into arrays per message: compiled, a list's append is native, an array's generic.
        self.plain_frames: list[int] = []
        self.plain_ends: list[float] = []
        self.packed = 0  # exchanges packed into `records`
        self.full = False  # a message's worth of records, packed exchanges or events: set as they come
        self.bytes_read = 0

    def run(self, path: str) -> None:
        """Walk `path`, then report; returns quietly when the main process is gone."""
        stats = self.stats
        pipeline = self.pipeline
        kong = self.kong
        joins = kong and self.index == 0  # worker 0 carries the joiner's timeouts
        index = self.index
        owned_frames = 0  # into stats["packets"] once, with the last message (a counter per frame costs)
        frame_no = 0
        next_advance: float | None = None
        next_join = 0.0
        last_ts = 0.0
        error: str | None = None
        stopped = False
        try:
            with open_capture(path) as capture:
                # Other workers' frames come through only where this one's timeouts (or the joiner's
                # tick) are due, or to report progress every BATCH_FRAMES frames (the merge waits for it).
                walk = WorkerFrames(iter(capture), self.n, index)
                walk.report_at = BATCH_FRAMES
                try:
                    for item in walk:
                        frame_no = item[0]
                        ts: float = item[1]
                        got: list[Exchange]
                        if item[5]:
                            owned_frames += 1
                            # pipeline.feed itself, not a local bound to it: compiled, a native call
                            got = pipeline.feed(ts, item[2], item[3], item[4])
                            next_advance = pipeline.next_advance_ts
                            if got:
                                self.out(frame_no, ts, got)
                        elif next_advance is None or ts >= next_advance:
                            # the core's timeouts, at the frame one process would run them
                            got = pipeline.tick(ts)
                            next_advance = pipeline.next_advance_ts
                            if got:
                                self.out(frame_no, ts, got)
                        due = NEVER if next_advance is None else next_advance
                        if joins:
                            if ts >= next_join:
                                next_join = ts + JOIN_ADVANCE_INTERVAL_S
                                records = self.records
                                if not records or records[-1][0] != frame_no:
                                    records.append((frame_no, ts, []))
                                    self.full = self.full or len(records) >= BATCH_RECORDS
                            due = min(due, next_join)
                        walk.due = due
                        if frame_no >= walk.report_at or self.full:
                            walk.report_at = frame_no + BATCH_FRAMES
                            self.bytes_read = capture.bytes_read
                            self.send(frame_no)
                            if self.conn.poll() and self.conn.recv() == "stop":
                                stopped = True
                                break
                except CaptureError as exc:
                    error = str(exc)
                frame_no, last_ts = walk.frame_no, walk.last_ts
                self.bytes_read = capture.bytes_read
            frame_no += 1  # what the pipeline flushes comes after every frame
            got = pipeline.close(last_ts)
            if got:
                self.out(frame_no, last_ts, got)
            self.send(frame_no + 1)
            stats["packets"] += owned_frames
            self.conn.send(("d", dict(stats), error, stopped))
        except (BrokenPipeError, EOFError, ConnectionResetError):
            pass  # the main process is gone

    def out(self, no: int, ts: float, exchanges: list[Exchange]) -> None:
        """Exchanges the pipeline completed at frame `no`: events built here, or records for the main
        process (those that may be Kong legs)."""
        if not self.kong:
            self.events.feed(ts, exchanges)
            self.full = self.events.full
            return
        items: list[Any] = []
        plain: list[Exchange] = []
        surely_plain = self.surely_plain
        latest = NEVER
        for ex in exchanges:
            if surely_plain(ex):
                plain.append(ex)
                end = exchange_end(ex)
                items.append(end)
                if end > latest:
                    latest = end
            else:
                items.append(pack(ex))
                self.packed += 1
        if plain:
            self.events.feed(ts, plain)
        if len(plain) == len(exchanges):
            self.plain_frames.append(no)
            self.plain_ends.append(latest)
        else:
            self.records.append((no, ts, items))
        self.full = (
            len(self.records) + len(self.plain_frames) >= BATCH_RECORDS
            or self.packed >= BATCH_PACKED
            or self.events.full
        )

    def send(self, passed: int) -> None:
        """One batch: every record up to frame `passed` (excluded) is in it or sent before."""
        payload = self.events.take()
        if self.out_fd is not None and payload:
            payload = write_all(self.out_fd, payload)
            if payload:
                self.out_fd = None  # a write failed: the main process writes the rest, and reports it
        batch = dumps(self.records)
        plain = (array("q", self.plain_frames).tobytes(), array("d", self.plain_ends).tobytes())
        self.conn.send(("b", passed, batch, payload, self.bytes_read, *plain))
        self.records = []
        self.plain_frames = []
        self.plain_ends = []
        self.packed = 0
        self.full = False


def write_all(fd: int, data: bytes) -> bytes:
    """Write `data` whole to `fd`: b"", or what was left unwritten when a write failed."""
    # No memoryview here: mypy takes one for bytes, and compiled, mypyc's bytes operations on it (its
    # truth, its slice) wrote every batch twice. A write past the first is rare: its copy costs nothing.
    done = 0
    try:
        while done < len(data):
            done += os.write(fd, data[done:] if done else data)
    except OSError:
        return data[done:]
    return b""
