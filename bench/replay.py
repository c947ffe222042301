"""Replay speed: `moesif-sniffer replay` (1 and 2 workers) next to tshark, httpry and scapy, one run.

Usage: python bench/replay.py [CAPTURE] [--runs N] [--packets N] [--scapy-packets N] [--only TOOLS]
Without CAPTURE it makes one with bench/make_capture.sh (nginx + wrk + tcpdump on loopback; needs root):
/tmp/moesif-sniffer-bench-<N>.pcap for `--packets N` (1M by default; 3M to check that peak RSS does
not grow with the file). Prints packets/s, exchanges/s, peak RSS and our single-process rate's ratio
to each tool (and the 2-worker rate's). Each tool runs as a child process; peak RSS is the largest sum
of the resident sizes of the child and its own children, sampled every 20 ms (so 2 workers count
3 processes); CPU is user + system time of the child and the children it waited for, per packet.
The median wall time of N runs is used.

ours: full Moesif events (identification, masks, decoded bodies) to /dev/null, default configuration.
`ours compiled`: the same with the optional mypyc build of the core (bench/compiled.py builds it in a
scratch directory, put first on PYTHONPATH), when it can be built here (`--no-compiled` skips it).
tshark: `-Y http` with three fields (requests counted). httpry: request and status lines only.
scapy: `PcapReader` with its HTTP layer bound to the capture's port (BENCH_PORT, 18080), on the
first `--scapy-packets` packets only (it is ~100x slower; its time is measured from the first packet,
so its import is not counted), requests counted.
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
import threading
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import interpreter  # noqa: E402
from compiled import compiled_build_or_none  # noqa: E402

TMP = Path(tempfile.gettempdir())

SCAPY_SCRIPT = """
import sys
from scapy.layers.http import HTTP, HTTPRequest
from scapy.layers.inet import TCP
from scapy.packet import bind_layers
from scapy.utils import PcapReader
for port in sys.argv[3].split(","):  # scapy binds HTTP to 80 and 8080 only
    bind_layers(TCP, HTTP, dport=int(port))
    bind_layers(TCP, HTTP, sport=int(port))
import time
n = requests = 0
limit = int(sys.argv[2])
start = time.perf_counter()
for p in PcapReader(sys.argv[1]):
    n += 1
    if p.haslayer(HTTPRequest):
        requests += 1
    if n >= limit:
        break
print(n, requests, time.perf_counter() - start, file=sys.stderr)
"""


@dataclass
class Run:
    tool: str
    seconds: float
    rss_mb: float
    exchanges: int
    packets: int
    cpu_s: float = 0.0  # user + system time of the tool and the children it waited for


def _tree_rss_kb(pid: int) -> int:
    """Resident KB of `pid` and its descendants (from /proc; processes that just exited count 0)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            with open(f"/proc/{p}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total


LAST_CPU = [0.0]  # CPU seconds of the last _run


def _run(
    cmd: list[str], *, env: dict[str, str] | None = None, stdout: int | None = None, cwd: str | None = None
) -> tuple[float, float, str]:
    """Wall seconds, peak RSS in MB of the child's process tree, and stderr of one run (its CPU
    seconds in LAST_CPU)."""
    start = time.perf_counter()
    out = stdout or subprocess.DEVNULL
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE, env=env, cwd=cwd)
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        # not before the child has exec'd: until then it is a copy of this process (that copy is also
        # why wait4's ru_maxrss is not used)
        done.wait(0.05)
        while not done.wait(0.02):
            peak[0] = max(peak[0], _tree_rss_kb(proc.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    assert proc.stderr is not None
    err = proc.stderr.read().decode(errors="replace")
    # wait4: this child's rusage, including the children it waited for (CPU time)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    LAST_CPU[0] = usage.ru_utime + usage.ru_stime
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed ({proc.returncode}): {err[-500:]}")
    return seconds, peak[0] / 1024.0, err


def count_packets(capture: Path) -> int:
    sys.path.insert(0, str(ROOT))
    from sniffer.capture.pcapfile import open_capture

    with open_capture(capture) as cap:
        return sum(1 for _ in cap)


def bench_ours(capture: Path, packets: int, workers: int, compiled: str | None = None) -> Run:
    exe = [sys.executable, "-m", "sniffer", "replay", str(capture), "--output", os.devnull]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MOESIF_", "SNIFFER_"))}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (compiled, str(ROOT)) if p)
    # cwd: not the source tree, whose `reassembly` would come before the compiled one on sys.path
    seconds, rss, err = _run([*exe, "--workers", str(workers)], env=env, cwd=compiled or str(ROOT))
    m = re.search(r"([\d,]+) exchanges", err)
    name = f"ours{' compiled' if compiled else ''}, {workers} worker{'s' if workers > 1 else ''}"
    return Run(name, seconds, rss, int(m.group(1).replace(",", "")) if m else 0, packets, LAST_CPU[0])


def bench_tshark(capture: Path, packets: int) -> Run | None:
    if not shutil.which("tshark"):
        return None
    cmd = ["tshark", "-r", str(capture), "-Y", "http", "-T", "fields", "-e", "http.request.method",
           "-e", "http.request.uri", "-e", "http.response.code"]  # fmt: skip
    with tempfile.TemporaryFile() as out:
        seconds, rss, _ = _run(cmd, stdout=out.fileno())
        out.seek(0)
        requests = sum(1 for line in out if line.split(b"\t")[0].strip())
    return Run("tshark -Y http", seconds, rss, requests, packets, LAST_CPU[0])


def bench_httpry(capture: Path, packets: int) -> Run | None:
    if not shutil.which("httpry"):
        return None
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "httpry.txt"
        # httpry filters "tcp port 80 or 8080" unless told otherwise
        seconds, rss, _ = _run(["httpry", "-r", str(capture), "-o", str(out), "tcp"])
        lines = out.read_text(errors="replace").splitlines()
        requests = sum(1 for line in lines if "\t>\t" in line)
    return Run("httpry (C)", seconds, rss, requests, packets, LAST_CPU[0])


def bench_scapy(capture: Path, limit: int) -> Run | None:
    try:
        import scapy  # noqa: F401
    except ImportError:
        return None
    ports = os.environ.get("BENCH_PORT", "18080")  # make_capture.sh's nginx
    seconds, rss, err = _run([sys.executable, "-c", SCAPY_SCRIPT, str(capture), str(limit), ports])
    n, requests, seconds = err.split()[-3:]
    return Run(f"scapy ({int(n) // 1000}k packets)", float(seconds), rss, int(requests), int(n))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("capture", nargs="?", type=Path)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--packets", type=int, default=1_000_000, help="size of the capture to make")
    ap.add_argument("--scapy-packets", type=int, default=30_000)
    ap.add_argument("--only", default="", help="comma list among ours,tshark,httpry,scapy (default all)")
    ap.add_argument("--no-compiled", action="store_true", help="skip the mypyc-compiled core")
    args = ap.parse_args()
    capture = args.capture or TMP / f"moesif-sniffer-bench-{args.packets // 1_000_000 or 1}M.pcap"
    if args.packets % 1_000_000 and not args.capture:
        capture = TMP / f"moesif-sniffer-bench-{args.packets}.pcap"
    if not capture.exists():
        print(f"making {capture} ({args.packets:,} packets) with nginx + wrk + tcpdump ...", file=sys.stderr)
        subprocess.run([str(HERE / "make_capture.sh"), str(capture), str(args.packets)], check=True)
    packets = count_packets(capture)
    only = set(filter(None, args.only.split(","))) or {"ours", "tshark", "httpry", "scapy"}
    compiled = None if args.no_compiled or "ours" not in only else compiled_build_or_none()
    benches = []
    if "ours" in only:
        benches += [lambda: bench_ours(capture, packets, 1), lambda: bench_ours(capture, packets, 2)]
        if compiled:
            benches += [
                lambda: bench_ours(capture, packets, 1, compiled),
                lambda: bench_ours(capture, packets, 2, compiled),
            ]
    if "tshark" in only:
        benches.append(lambda: bench_tshark(capture, packets))
    if "httpry" in only:
        benches.append(lambda: bench_httpry(capture, packets))
    if "scapy" in only:
        benches.append(lambda: bench_scapy(capture, min(args.scapy_packets, packets)))
    load = os.getloadavg()
    print(f"capture: {capture} ({capture.stat().st_size / 1e6:.0f} MB, {packets:,} packets); "
          f"{os.cpu_count()} CPUs, load average before {load[0]:.2f}; ours on {interpreter.describe()}",
          flush=True)  # fmt: skip
    results: dict[str, list[Run]] = {}
    for _ in range(args.runs):
        for fn in benches:
            r = fn()
            if r is not None:
                results.setdefault(r.tool, []).append(r)
                print(f"  {r.tool}: {r.seconds:.2f} s", file=sys.stderr, flush=True)
    rows = []
    for tool, runs in results.items():
        secs = statistics.median(r.seconds for r in runs)
        cpu = statistics.median(r.cpu_s for r in runs)
        cpu_us = 1e6 * cpu / runs[0].packets if cpu else 0.0
        rss = max(r.rss_mb for r in runs)
        rows.append((tool, runs[0].packets / secs, runs[0].exchanges / secs, rss, cpu_us))
    base = {t: pps for t, pps, _, _, _ in rows}
    one = base.get("ours, 1 worker")
    two = base.get("ours, 2 workers")
    print(f"\n{'tool':<26} {'packets/s':>10} {'exchanges/s':>12} {'peak RSS MB':>12} {'CPU us/pkt':>11} "
          f"{'ours(1) / tool':>15} {'ours(2) / tool':>15}")  # fmt: skip
    for tool, pps, xps, rss, cpu_us in rows:
        r1 = f"{one / pps:.2f}x" if one else "-"
        r2 = f"{two / pps:.2f}x" if two else "-"
        cpu = f"{cpu_us:.2f}" if cpu_us else "-"
        print(f"{tool:<26} {pps:>10,.0f} {xps:>12,.0f} {rss:>12.0f} {cpu:>11} {r1:>15} {r2:>15}")
    load = os.getloadavg()
    print(f"\n(median of {args.runs} runs; exchanges = requests each tool reported; peak RSS and CPU = all "
          f"processes of the tool; load average after: {' '.join(f'{x:.2f}' for x in load)})")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
