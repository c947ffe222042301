"""`moesif-sniffer replay`: a capture file through the same engine as live capture.

The shell around the engine for files: open the capture, feed every frame, show progress on a terminal,
flush everything at the end (also when the file is damaged: every event before the damage is kept), and
summarise what was seen and what was lost.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import IO

from reassembly.stats import Stats
from sniffer.capture.pcapfile import open_capture
from sniffer.config import Config
from sniffer.engine import Engine, EventSink
from sniffer.errors import CaptureError

__all__ = ["ReplayResult", "replay_file"]

# A progress bar only for files big enough to take noticeable time.
PROGRESS_MIN_BYTES = 4 << 20
PROGRESS_INTERVAL_S = 0.25


@dataclass
class ReplayResult:
    stats: Stats
    seconds: float
    error: CaptureError | None = None  # the file was damaged after `stats["packets"]` packets
    interrupted: bool = False
    extra: dict[str, int] = field(default_factory=dict)


class _Progress:
    def __init__(self, stream: IO[str], total_bytes: int) -> None:
        self._stream = stream
        self._total = max(total_bytes, 1)
        self._next = 0.0

    def update(self, done_bytes: int, packets: int) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + PROGRESS_INTERVAL_S
        frac = min(done_bytes / self._total, 1.0)
        bar = "#" * int(frac * 30)
        self._stream.write(f"\r[{bar:<30}] {frac:6.1%}  {packets:,} packets")
        self._stream.flush()

    def done(self) -> None:
        self._stream.write("\r" + " " * 70 + "\r")
        self._stream.flush()


def replay_file(
    path: str,
    config: Config,
    sink: EventSink,
    *,
    progress: IO[str] | None = None,
    workers: int = 1,
    encoded_out: IO[bytes] | None = None,
    forked: Callable[[], None] | None = None,
) -> ReplayResult:
    """Replay one capture file into `sink`. Raises CaptureError only if the file cannot be opened.

    `workers` > 1 splits the flows over that many processes (`sniffer.replay_workers`: the same set of
    events, in another order); events built in a worker are written to `encoded_out` as JSON lines
    when given (the stream under `sink`, a JsonLinesSink), else submitted to `sink`; `forked` runs
    once the worker processes exist (at once with one worker): where the caller starts its threads."""
    if workers > 1:
        return _replay_parallel(path, config, sink, workers, progress, encoded_out, forked)
    if forked is not None:
        forked()
    stats = Stats()
    engine = Engine(config, sink, stats)
    stop = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    started = time.monotonic()
    error: CaptureError | None = None
    try:
        with open_capture(path) as capture:
            bar = None
            if progress is not None and progress.isatty() and capture.size_bytes >= PROGRESS_MIN_BYTES:
                bar = _Progress(progress, capture.size_bytes)

            def tick(n: int) -> bool:
                if stop:
                    return True
                if bar is not None:
                    bar.update(capture.bytes_read, n)
                return False

            try:
                engine.feed_all(iter(capture), tick, 0x4000)
            except CaptureError as exc:
                error = exc
            if bar is not None:
                bar.done()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    engine.close()
    return ReplayResult(stats=stats, seconds=time.monotonic() - started, error=error, interrupted=stop)


def _replay_parallel(
    path: str,
    config: Config,
    sink: EventSink,
    workers: int,
    progress: IO[str] | None,
    encoded_out: IO[bytes] | None,
    forked: Callable[[], None] | None,
) -> ReplayResult:
    from sniffer.replay_workers import replay_parallel

    stop = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    bar: _Progress | None = None
    if progress is not None and progress.isatty():
        size = os.path.getsize(path)
        if size >= PROGRESS_MIN_BYTES:
            bar = _Progress(progress, size)
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    started = time.monotonic()
    try:
        stats, error, interrupted = replay_parallel(
            path,
            config,
            sink,
            workers,
            encoded_out=encoded_out,
            progress=bar.update if bar is not None else None,
            stop=lambda: stop,
            forked=forked,
        )
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if bar is not None:
            bar.done()
    return ReplayResult(stats=stats, seconds=time.monotonic() - started, error=error, interrupted=interrupted)


def format_summary(path: str, result: ReplayResult, delivery: dict[str, int] | None = None) -> str:
    s = result.stats
    rate = s["packets"] / result.seconds if result.seconds > 0 else 0.0
    lines = [
        f"{path}: {s['packets']:,} packets, {s['flows']:,} flows, {s['exchanges']:,} exchanges, "
        f"{s['events']:,} events ({s['events_partial']:,} partial) in {result.seconds:.2f} s "
        f"({rate:,.0f} packets/s)"
    ]
    losses = s.losses()
    if losses:
        lines.append("  not captured whole: " + ", ".join(f"{k}={v:,}" for k, v in losses.items()))
    if delivery:
        lines.append("  delivery: " + ", ".join(f"{k}={v:,}" for k, v in sorted(delivery.items()) if v))
    if result.interrupted:
        lines.append("  interrupted: stopped early on a signal; everything read so far was flushed")
    return "\n".join(lines)


def print_summary(path: str, result: ReplayResult, delivery: dict[str, int] | None = None) -> None:
    print(format_summary(path, result, delivery), file=sys.stderr)
