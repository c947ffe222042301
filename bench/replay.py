"""Replay speed: `moesif-sniffer replay` next to tshark and httpry on the same capture, in one run.

Usage: python bench/replay.py [CAPTURE] [--runs N]
Without CAPTURE it makes one with bench/make_capture.sh (nginx + wrk + tcpdump on loopback; needs root).
Prints packets/s, exchanges/s, peak RSS and our ratio to each peer. Each tool runs as a child process;
peak RSS is that child's ru_maxrss. The median wall time of N runs is used.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_CAPTURE = Path(tempfile.gettempdir()) / "moesif-sniffer-bench-1M.pcap"


@dataclass
class Run:
    tool: str
    seconds: float
    rss_mb: float
    exchanges: int


def _run(
    cmd: list[str], *, env: dict[str, str] | None = None, stdout: int | None = None
) -> tuple[float, float, str]:
    """Wall seconds, peak RSS in MB of the child, and stderr of one run."""
    # wait4 gives this child's own rusage (RUSAGE_CHILDREN would be the max over all children so far).
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=stdout or subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    assert proc.stderr is not None
    err = proc.stderr.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed ({proc.returncode}): {err[-500:]}")
    return seconds, usage.ru_maxrss / 1024.0, err


def count_packets(capture: Path) -> int:
    sys.path.insert(0, str(ROOT))
    from sniffer.capture.pcapfile import open_capture

    with open_capture(capture) as cap:
        return sum(1 for _ in cap)


def bench_ours(capture: Path) -> Run:
    exe = [sys.executable, "-m", "sniffer", "replay", str(capture), "--output", os.devnull]
    seconds, rss, err = _run(exe, env={**os.environ, "PYTHONPATH": str(ROOT)})
    m = re.search(r"([\d,]+) exchanges", err)
    return Run("moesif-sniffer replay", seconds, rss, int(m.group(1).replace(",", "")) if m else 0)


def bench_tshark(capture: Path) -> Run | None:
    if not shutil.which("tshark"):
        return None
    cmd = ["tshark", "-r", str(capture), "-Y", "http", "-T", "fields", "-e", "http.request.method",
           "-e", "http.request.uri", "-e", "http.response.code"]
    with tempfile.TemporaryFile() as out:
        seconds, rss, _ = _run(cmd, stdout=out.fileno())
        out.seek(0)
        requests = sum(1 for line in out if line.split(b"\t")[0].strip())
    return Run("tshark -Y http", seconds, rss, requests)


def bench_httpry(capture: Path) -> Run | None:
    if not shutil.which("httpry"):
        return None
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "httpry.txt"
        # httpry filters "tcp port 80 or 8080" unless told otherwise
        seconds, rss, _ = _run(["httpry", "-r", str(capture), "-o", str(out), "tcp"])
        lines = out.read_text(errors="replace").splitlines()
        requests = sum(1 for line in lines if "\t>\t" in line)
    return Run("httpry (C)", seconds, rss, requests)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("capture", nargs="?", type=Path)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--packets", type=int, default=1_000_000, help="size of the capture to make")
    args = ap.parse_args()
    capture = args.capture or DEFAULT_CAPTURE
    if not capture.exists():
        print(f"making {capture} ({args.packets:,} packets) with nginx + wrk + tcpdump ...", file=sys.stderr)
        subprocess.run([str(HERE / "make_capture.sh"), str(capture), str(args.packets)], check=True)
    packets = count_packets(capture)
    print(f"capture: {capture} ({capture.stat().st_size / 1e6:.0f} MB, {packets:,} packets)")
    results: dict[str, list[Run]] = {}
    for _ in range(args.runs):
        for fn in (bench_ours, bench_tshark, bench_httpry):
            r = fn(capture)
            if r is not None:
                results.setdefault(r.tool, []).append(r)
    rows = []
    for tool, runs in results.items():
        secs = statistics.median(r.seconds for r in runs)
        rows.append((tool, packets / secs, runs[0].exchanges / secs, max(r.rss_mb for r in runs), secs))
    ours = rows[0]
    print(f"\n{'tool':<24} {'packets/s':>12} {'exchanges/s':>12} {'peak RSS MB':>12} {'ours / tool':>12}")
    for tool, pps, xps, rss, _secs in rows:
        print(f"{tool:<24} {pps:>12,.0f} {xps:>12,.0f} {rss:>12.0f} {ours[1] / pps:>11.2f}x")
    print(f"\n(median of {args.runs} runs; exchanges = requests each tool reported)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
