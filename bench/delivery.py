"""Delivery cost: CPU per event of the Moesif sender (encode, queue, batch, gzip, POST) by compressor.

Usage: python bench/delivery.py [--events N] [--with zlib:1,zlib:3,zlib:6,isal:1,isal:2] [--batch-size 50]
                                [--runs N]
(`zlib:N`: the standard library's zlib at level N; `isal:N`: ISA-L's deflate, python-isal, at level N.)
The events are real: the wrk mix from /tmp/bench-100k.pcap (made from the 1M bench capture, or with
make_capture.sh, when missing) and the Kong mix from pcaps/kong-demo.pcap (joined legs, JWT/Basic/apikey,
gzip and POST bodies), built by `replay` as JSON lines and loaded once. Each run submits them to a
`MoesifSender` posting to the local fake collector (tests/collector.py, its own process: its CPU is not
counted) and closes it; the CPU is this process's (user + system, every thread) from the first submit
to the end of the flush. The baseline is `orjson.dumps` of the same events in the same run: the one
serialisation every event costs anyway. Prints µs of CPU per event and gzip'd bytes per event.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))
from captures import ensure_capture  # noqa: E402

from sniffer.moesif import batcher  # noqa: E402
from sniffer.moesif.sender import MoesifSender  # noqa: E402

APP_ID = "bench-delivery-app"


def _events(capture: Path, n: int) -> list[dict[str, Any]]:
    with tempfile.NamedTemporaryFile(suffix=".jsonl") as out:
        subprocess.run(
            [sys.executable, "-m", "sniffer", "replay", str(capture), "--output", out.name],
            check=True, capture_output=True, cwd=ROOT,
        )  # fmt: skip
        lines = Path(out.name).read_bytes().splitlines()
    events = [orjson.loads(line) for line in lines]
    while len(events) < n:  # the Kong demo is small: repeat it (the ids repeat too, the collector keeps one)
        events += events[: n - len(events)]
    return events[:n]


def _collector() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "collector.py"), "--port", "0", "--app-id", APP_ID],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline().split()
    if line[:1] != ["LISTENING"]:
        raise SystemExit(f"collector did not start: {line}")
    return proc, f"http://127.0.0.1:{line[1]}"


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _send(events: list[dict[str, Any]], url: str, batch_size: int) -> tuple[float, int]:
    """(CPU seconds, bytes posted) to send `events` whole."""
    sender = MoesifSender(
        application_id=APP_ID, endpoint=url, batch_size=batch_size, connect_timeout_s=1.0,
        send_timeout_s=5.0, user_agent="moesif-sniffer-bench/1", queue_size=len(events) + 1,
        queue_bytes=1 << 31,
    )  # fmt: skip
    sender.start()
    fresh = orjson.loads(orjson.dumps(events))  # submit may add a weight: each run its own dicts
    before = _cpu()
    for event in fresh:
        sender.submit(event)
    report = sender.close()
    cpu = _cpu() - before
    if report.sent != len(events):
        raise SystemExit(f"sent {report.sent} of {len(events)} events: {report}")
    return cpu, report.stats["bytes_sent"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--with", dest="compressors", default="zlib:1,zlib:3,zlib:6,isal:1,isal:2")
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    compressors = [(name, int(level)) for name, level in (x.split(":") for x in args.compressors.split(","))]
    mixes = {
        "wrk": _events(ensure_capture(Path("/tmp/bench-100k.pcap")), args.events),
        "kong": _events(ROOT / "pcaps" / "kong-demo.pcap", args.events),
    }
    proc, url = _collector()
    default = (batcher.COMPRESSOR, batcher.GZIP_LEVEL, batcher.ISAL_LEVEL)
    level_now = batcher.ISAL_LEVEL if batcher.COMPRESSOR == "isal" else batcher.GZIP_LEVEL
    print(f"{args.events:,} events a run, batches of {args.batch_size}, median of {args.runs}; "
          f"the sender's default: {batcher.COMPRESSOR} {level_now}; "
          f"load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    print(f"{'mix':5} {'what':12} {'CPU us/event':>13} {'gzip B/event':>13} {'x dumps':>8}")
    try:
        for mix, events in mixes.items():
            t = time.process_time()
            for event in events:
                orjson.dumps(event)
            dumps_us = (time.process_time() - t) / len(events) * 1e6
            print(f"{mix:5} {'orjson.dumps':12} {dumps_us:13.2f} {'':>13} {1.0:8.1f}")
            for name, level in compressors:
                batcher.COMPRESSOR = name
                batcher.GZIP_LEVEL = batcher.ISAL_LEVEL = level
                runs = [_send(events, url, args.batch_size) for _ in range(args.runs)]
                cpu = statistics.median(r[0] for r in runs) / len(events) * 1e6
                size = statistics.median(r[1] for r in runs) / len(events)
                print(f"{mix:5} {f'{name} {level}':12} {cpu:13.2f} {size:13.0f} {cpu / dumps_us:8.1f}")
    finally:
        batcher.COMPRESSOR, batcher.GZIP_LEVEL, batcher.ISAL_LEVEL = default
        proc.terminate()
        proc.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
