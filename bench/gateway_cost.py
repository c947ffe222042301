"""Gateway cost: nginx's throughput and p99 latency under load, without and with the daemon capturing.

Usage: python bench/gateway_cost.py [--seconds 10] [--runs 1] [--workers 1,2] [--priority normal,low]
                                   [--core compiled|pure]
Needs root (AF_PACKET on lo), nginx, wrk and hey (`apt-get install -y hey`).

nginx (worker_processes 1, access_log off, keep-alive, a 56-byte JSON answer like make_capture.sh) on
127.0.0.1:<free port>, on the same 2 vCPUs as the load and the daemon. Two loads:
- saturation: `wrk -t1 -c20 -d<seconds>s --latency`: requests/s (and its p99);
- fixed rate: `hey -z <seconds>s -c 20 -q <rate/20>` (hey's -q is per connection) at 50 % of the
  baseline's saturated requests/s: p99 latency from hey's latency distribution.
Each load runs with no capture (baseline), then with `moesif-sniffer run` on lo, SNIFFER_PORTS=<nginx
port>, JSON lines to /dev/null, SNIFFER_WORKERS=1 and then 2, load shedding as shipped (on; whether
it changed level is shown), the compiled core (bench/compiled.py, as the image ships it); "nice" rows
start the daemon under `chrt --batch 0 nice -n 19` (the scheduler favours the gateway). The
configurations take turns (`--runs` rounds, medians), so load from anything else on the machine falls
on all of them alike. "loss" is the throughput lost and the p99 added, relative to the baseline.

Measured on 2026-11-24 21:47 UTC, 2 vCPU (Firecracker VM, load average ~1.4 from other work), compiled
core, 5 s per load, 3 round-robin runs (medians):

    fixed rate 16,670 req/s = 14 % of capacity (hey -c 20 -q 833)
                    | wrk req/s | thr. loss |  wrk p99 | hey req/s |  hey p99 | p99 added
    -------------------------------------------------------------------------------------
    baseline        |   116,343 |      0.0% |  0.23 ms |    16,340 |  0.80 ms |      0.0%
    daemon w=1      |    44,186 |     62.0% |  2.90 ms |    15,506 |  2.90 ms |    262.5%
    daemon w=2      |    41,706 |     64.2% |  5.42 ms |    15,280 |  2.80 ms |    250.0%
    daemon w=1 nice |    62,585 |     46.2% |  1.93 ms |    16,211 |  1.70 ms |    112.5%
    daemon w=2 nice |    85,816 |     26.2% |  2.93 ms |    15,752 |  2.20 ms |    175.0%

hey (Go) cannot drive more than ~16k req/s here, so the fixed rate is 14 % of capacity, not 50 %.
Reading: at saturation the daemon takes the CPU nginx and wrk would use (w=1: 0.9 CPU, 88k packets/s,
no drops; throughput -62 %). Under `chrt --batch 0 nice -n 19` the scheduler favours the gateway:
-46 % (w=1) and -26 % (w=2), the daemon then dropping what it has no CPU for (kernel drops, load
shedding). At the fixed rate the daemon keeps every packet (0 drops, 0.4-0.7 CPU) and adds 1-2 ms to
p99 (nice: +0.9 ms). Target 3 of issue 6 (<= 3 % throughput, <= 5 % p99) is NOT met on 2 vCPUs shared
with the load generator: the cost is CPU, ~10 us per packet of the daemon's.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compiled import compiled_build_or_none
from daemon_run import DaemonRun, running_daemon

ROOT = Path(__file__).resolve().parents[1]
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "secs": 1e3}

NGINX_CONF = """worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{port};
    location / {{
      default_type application/json;
      return 200 '{{"id":42,"name":"widget","price":9.99,"tags":["a","b"]}}';
    }}
  }}
}}
"""


@dataclass
class Load:
    rps: float
    p99_ms: float


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def nginx() -> Iterator[int]:
    port = free_port()
    d = Path(tempfile.mkdtemp(prefix="bench-gw-"))
    (d / "nginx.conf").write_text(NGINX_CONF.format(dir=d, port=port))
    subprocess.run(["nginx", "-p", str(d), "-c", str(d / "nginx.conf")], check=True, timeout=30)
    try:
        time.sleep(0.3)
        yield port
    finally:
        pid = int((d / "nginx.pid").read_text())
        os.kill(pid, signal.SIGQUIT)
        for _ in range(50):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        shutil.rmtree(d, ignore_errors=True)


# How the daemon's CPU priority is lowered in the "nice" rows: SCHED_BATCH (the scheduler treats it as
# a CPU hog that never preempts an interactive task) and nice 19 (the smallest CPU share under load).
LOW_PRIORITY = ["chrt", "--batch", "0", "nice", "-n", "19"]


CORE: list[str | None] = [None]  # the compiled core's directory when --core compiled


@contextmanager
def daemon(port: int, workers: int | None, low_priority: bool = False) -> Iterator[DaemonRun]:
    """The daemon capturing lo for `port` while the body runs (None: no daemon); its log and CPU time
    are filled in when it has stopped. `low_priority`: started under LOW_PRIORITY."""
    if workers is None:
        yield DaemonRun()
        return
    settings = dict(
        SNIFFER_INTERFACE="lo", SNIFFER_PORTS=str(port), SNIFFER_KONG_PORTS="",
        SNIFFER_WORKERS=str(workers), SNIFFER_METRICS_ADDR=f"127.0.0.1:{free_port()}",
    )  # fmt: skip
    with running_daemon(settings, CORE[0], prefix=tuple(LOW_PRIORITY) if low_priority else ()) as run:
        yield run


def wrk(port: int, seconds: float) -> Load:
    cmd = ["wrk", "-t1", "-c20", f"-d{seconds:g}s", "--latency", f"http://127.0.0.1:{port}/api/items?page=1"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=seconds + 60).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    m = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    assert m, out
    return Load(rps, float(m.group(1)) * UNITS[m.group(2)])


def hey(port: int, seconds: float, rate: float) -> Load:
    conns = 20
    cmd = ["hey", "-z", f"{seconds:g}s", "-c", str(conns), "-q", f"{rate / conns:.0f}",
           f"http://127.0.0.1:{port}/api/items?page=1"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=seconds + 60).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    m = re.search(r"99%+ in ([\d.]+) secs", out)
    assert m, out
    return Load(rps, float(m.group(1)) * 1e3)


def median(runs: list[Load]) -> Load:
    return Load(statistics.median(r.rps for r in runs), statistics.median(r.p99_ms for r in runs))


def daemon_note(run: DaemonRun, seconds: float) -> str:
    """What the daemon did: packets, kernel drops, CPU, whether it shed load."""
    levels = re.findall(r"load shedding: level (\d+)", run.log)
    found = re.findall(r"(\d+) packets, (\d+) kernel drops", run.log)
    note = f"shed levels {','.join(levels)}" if levels else "no shedding"
    if found:
        packets, drops = (int(x) for x in found[-1])
        note = f"{packets / seconds:,.0f} pkt/s, {drops:,} kernel drops, {note}"
    return f"{note}, {run.cpu_s / seconds:.2f} CPU"


def measure(
    port: int, workers: int | None, runs: int, load: Callable[[], Load], low_priority: bool = False
) -> tuple[Load, DaemonRun]:
    with daemon(port, workers, low_priority) as run:
        loads = [load() for _ in range(runs)]
    return median(loads), run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--runs", type=int, default=1, help="median of N round-robin runs of each load")
    ap.add_argument("--fraction", type=float, default=0.5, help="fixed rate as a fraction of capacity")
    ap.add_argument("--workers", default="1,2", help="daemon worker counts to measure")
    ap.add_argument("--core", choices=("pure", "compiled"), default="compiled", help="the daemon's core")
    ap.add_argument("--priority", default="normal,low", help="normal and/or low (chrt --batch, nice 19)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (AF_PACKET on lo)")
    for tool in ("nginx", "wrk", "hey"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not installed (apt-get install -y {tool})")
    if args.core == "compiled":
        CORE[0] = compiled_build_or_none()
    configs: list[tuple[str, int | None, bool]] = [("baseline", None, False)]
    for prio in args.priority.split(","):
        for w in (int(x) for x in args.workers.split(",")):
            low = prio == "low"
            configs.append((f"daemon w={w}{' nice' if low else ''}", w, low))
    sat_runs: dict[str, list[Load]] = {name: [] for name, _, _ in configs}
    fixed_runs: dict[str, list[Load]] = {name: [] for name, _, _ in configs}
    notes: list[str] = []
    secs = args.seconds
    with nginx() as port:
        wrk(port, 2)  # warm-up
        # Round robin: the configurations take turns, `--runs` times, so that load from anything else
        # on the machine falls on all of them alike; each cell is the median of its runs.
        for _ in range(args.runs):
            for name, workers, low in configs:
                load, run = measure(port, workers, 1, partial(wrk, port, args.seconds), low)
                sat_runs[name].append(load)
                if workers:
                    notes.append(f"  {name}, wrk saturation: {daemon_note(run, secs)}")
                print(f"saturation {name}: {load.rps:,.0f} req/s", file=sys.stderr, flush=True)
        sat = {name: median(runs) for name, runs in sat_runs.items()}
        # hey's Go client costs more CPU per request than wrk: when it cannot deliver the asked rate
        # on this machine even without the daemon, the rate is lowered until it can (a fixed rate
        # the client cannot hold would measure the client's saturation, not nginx's latency).
        rate = sat["baseline"].rps * args.fraction
        for _ in range(4):
            probe, _run = measure(port, None, 1, partial(hey, port, args.seconds, rate))
            if probe.rps >= 0.95 * rate:
                break
            print(f"hey reached {probe.rps:,.0f} of {rate:,.0f} req/s: lowering the rate",
                  file=sys.stderr, flush=True)  # fmt: skip
            rate = 0.8 * probe.rps
        for _ in range(args.runs):
            for name, workers, low in configs:
                load, run = measure(port, workers, 1, partial(hey, port, args.seconds, rate), low)
                fixed_runs[name].append(load)
                if workers:
                    notes.append(f"  {name}, hey fixed rate: {daemon_note(run, secs)}")
                print(f"fixed {name}: {load.rps:,.0f} req/s", file=sys.stderr, flush=True)
        fixed = {name: median(runs) for name, runs in fixed_runs.items()}
    base_s, base_f = sat["baseline"], fixed["baseline"]
    share = 100 * rate / base_s.rps
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end (2 vCPUs shared)")
    print(f"daemon core: {'compiled (mypyc)' if CORE[0] else 'pure Python'}")
    print(f"nginx on 127.0.0.1, {args.seconds:g} s per load, median of {args.runs}; fixed rate "
          f"{rate:,.0f} req/s = {share:.0f} % of capacity (hey -c 20 -q {rate / 20:.0f})")  # fmt: skip
    header = (f"{'':<15} | {'wrk req/s':>9} | {'thr. loss':>9} | {'wrk p99':>8} | {'hey req/s':>9} | "
              f"{'hey p99':>8} | {'p99 added':>9}")  # fmt: skip
    print(header)
    print("-" * len(header))
    for name, _, _ in configs:
        s, f = sat[name], fixed[name]
        loss = 100 * (1 - s.rps / base_s.rps)
        added = 100 * (f.p99_ms / base_f.p99_ms - 1)
        print(f"{name:<15} | {s.rps:>9,.0f} | {loss:>8.1f}% | {s.p99_ms:>5.2f} ms | {f.rps:>9,.0f} | "
              f"{f.p99_ms:>5.2f} ms | {added:>8.1f}%")  # fmt: skip
    print("daemon (packets/s it got, kernel drops, CPU cores used, shedding):")
    print("\n".join(notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
