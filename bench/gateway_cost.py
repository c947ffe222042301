"""Gateway cost: nginx's throughput and p99 latency under load, without and with the daemon capturing.

Usage: python bench/gateway_cost.py [--seconds 10] [--runs 1] [--workers 1,2] [--priority normal,low,idle]
                                   [--core compiled|pure]
Needs root (AF_PACKET on lo), nginx, wrk and h2load (`apt-get install -y nginx wrk nghttp2-client`).

nginx (worker_processes 1, access_log off, keep-alive, a 56-byte JSON answer like make_capture.sh) on
127.0.0.1:<free port>, on the same 2 vCPUs as the load and the daemon. Two loads:
- saturation: `wrk -t1 -c20 -d<seconds>s --latency`: requests/s (and its p99);
- fixed rate: `h2load --h1 -t1 -c20 --rps <rate/20> -D <seconds>` (nghttp2's load generator, in C;
  --rps is per connection) at `--fraction` (50 %) of the baseline's saturated requests/s: the
  requests/s it held and the p99 of its per-request log (h2load prints no percentiles).
Each load runs with no capture (baseline); with two references: `tcpdump -w /dev/null` on the port
(the C capturer: the kernel's part of capturing, the BPF filter and the copy into the ring, costs the
gateway the same for any capturer) and an "idle spinner" (a Python busy loop at SCHED_IDLE doing
nothing: what any process that uses the CPU the gateway leaves costs it here, however low its
priority); then with `moesif-sniffer run` on lo, SNIFFER_PORTS=<nginx port>, JSON lines to /dev/null,
SNIFFER_WORKERS=1 and then 2, load shedding as shipped (on; whether it changed level is shown), the
compiled core (bench/compiled.py, as the image ships it), at each SNIFFER_CPU_PRIORITY of `--priority`
(normal; low: nice 19 + SCHED_BATCH; idle: SCHED_IDLE). The configurations take turns (`--runs`
rounds, medians), so load from anything else on the machine falls on all of them alike. "thr. loss" is
the saturated throughput lost; at the fixed rate the gateway either holds the rate or shows what it
lost in "fix req/s"; "p99 added" is the fixed rate's p99 relative to the baseline's.

The latest figures are in the README (Speed). What they have shown so far (2 vCPUs; the daemon needs
~6 us of CPU per packet, tcpdump ~0.3): at normal priority the daemon takes CPU the gateway and its
load would use, and at 50 % of capacity the gateway no longer holds the rate (-27 to -31 %, p99 2-3x).
At SNIFFER_CPU_PRIORITY=idle the gateway holds the rate (-0.2 % or less) and the daemon takes what is
left, counting the rest as kernel drops; p99 still rises by ~60 % (0.36 -> 0.57-0.60 ms; the spinner
+14 %, tcpdump within noise). Before h2load, hey (Go) could not drive more than ~15-20k req/s here, so
the fixed rate was 10-20 % of capacity.
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
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import interpreter
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


CORE: list[str | None] = [None]  # the compiled core's directory when --core compiled


# What runs beside the gateway in one configuration: given nginx's port, a context manager for the
# duration of the load, whose DaemonRun is filled in when it has stopped.
Capturer = Callable[[int], AbstractContextManager[DaemonRun]]


@contextmanager
def no_capture(port: int) -> Iterator[DaemonRun]:
    yield DaemonRun()


@contextmanager
def daemon(port: int, workers: int, priority: str) -> Iterator[DaemonRun]:
    """The daemon capturing lo for `port` while the body runs; its log and CPU time are filled in when
    it has stopped. `priority`: its SNIFFER_CPU_PRIORITY."""
    settings = dict(
        SNIFFER_INTERFACE="lo", SNIFFER_PORTS=str(port), SNIFFER_KONG_PORTS="",
        SNIFFER_WORKERS=str(workers), SNIFFER_METRICS_ADDR=f"127.0.0.1:{free_port()}",
        SNIFFER_CPU_PRIORITY=priority,
    )  # fmt: skip
    with running_daemon(settings, CORE[0]) as run:
        yield run


@contextmanager
def tcpdump(port: int) -> Iterator[DaemonRun]:
    """`tcpdump -w /dev/null` on the same port: the C reference for what capturing costs the gateway
    (the kernel's share, the BPF filter and the copy into the ring, is the same for both)."""
    cmd = ["tcpdump", "-i", "lo", "-s", "0", "-B", "131072", "-w", "/dev/null", f"tcp port {port}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)
    run = DaemonRun()
    try:
        yield run
    finally:
        proc.send_signal(signal.SIGINT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        err = proc.stderr.read() if proc.stderr else ""
        got = re.search(r"(\d+) packets captured", err)
        drops = re.search(r"(\d+) packets dropped by kernel", err)
        run.cpu_s = usage.ru_utime + usage.ru_stime
        # in the daemon's summary form, for daemon_note
        run.log = f"{got.group(1) if got else 0} packets, {drops.group(1) if drops else 0} kernel drops"


@contextmanager
def idle_spinner(port: int) -> Iterator[DaemonRun]:
    """A busy loop at SCHED_IDLE, doing nothing: what any process using the CPU the gateway leaves
    costs the gateway here, however low its priority (the floor for the daemon's "idle" rows)."""
    proc = subprocess.Popen(["chrt", "--idle", "0", sys.executable, "-c", "while True: pass"])
    time.sleep(0.5)
    run = DaemonRun()
    try:
        yield run
    finally:
        proc.kill()
        _, _, usage = os.wait4(proc.pid, 0)
        proc.returncode = -9
        run.cpu_s = usage.ru_utime + usage.ru_stime


def wrk(port: int, seconds: float) -> Load:
    cmd = ["wrk", "-t1", "-c20", f"-d{seconds:g}s", "--latency", f"http://127.0.0.1:{port}/api/items?page=1"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=seconds + 60).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    m = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    assert m, out
    return Load(rps, float(m.group(1)) * UNITS[m.group(2)])


def h2load(port: int, seconds: float, rate: float) -> Load:
    """`rate` requests/s over 20 keep-alive HTTP/1.1 connections (h2load's --rps is per connection),
    after a second of warm-up; p99 from its per-request log (h2load prints no percentiles)."""
    conns = 20
    with tempfile.NamedTemporaryFile(prefix="bench-gw-h2load-", suffix=".log") as log:
        cmd = ["h2load", "--h1", "-t1", f"-c{conns}", f"--rps={rate / conns:.2f}", "-D", f"{seconds:g}",
               "--warm-up-time=1", f"--log-file={log.name}",
               f"http://127.0.0.1:{port}/api/items?page=1"]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=seconds + 60).stdout
        # columns: start (us since the epoch), status, microseconds until the end of the response
        micros = sorted(int(line.split()[2]) for line in Path(log.name).read_text().splitlines() if line)
    m = re.search(r"finished in [\d.]+s, ([\d.]+) req/s", out)
    assert m and micros, out
    return Load(float(m.group(1)), micros[min(len(micros) - 1, int(len(micros) * 0.99))] / 1e3)


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


def measure(port: int, capturer: Capturer, load: Callable[[], Load]) -> tuple[Load, DaemonRun]:
    with capturer(port) as run:
        loaded = load()
    return loaded, run


def round_robin(
    port: int,
    configs: list[tuple[str, Capturer]],
    load: Callable[[], Load],
    runs: int,
    label: str,
    notes: list[str],
    seconds: float,
) -> dict[str, Load]:
    """Each configuration under `load`, taking turns `runs` times, so that load from anything else on
    the machine falls on all of them alike; each result is the median of its runs."""
    results: dict[str, list[Load]] = {name: [] for name, _ in configs}
    for _ in range(runs):
        for name, capturer in configs:
            got, run = measure(port, capturer, load)
            results[name].append(got)
            if capturer is not no_capture:
                notes.append(f"  {name}, {label}: {daemon_note(run, seconds)}")
            print(f"{label} {name}: {got.rps:,.0f} req/s", file=sys.stderr, flush=True)
    return {name: median(loads) for name, loads in results.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--runs", type=int, default=1, help="median of N round-robin runs of each load")
    ap.add_argument("--fraction", type=float, default=0.5, help="fixed rate as a fraction of capacity")
    ap.add_argument("--workers", default="1,2", help="daemon worker counts to measure")
    ap.add_argument("--core", choices=("pure", "compiled"), default="compiled", help="the daemon's core")
    ap.add_argument("--priority", default="normal,low,idle", help="SNIFFER_CPU_PRIORITY values to measure")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (AF_PACKET on lo)")
    for tool, package in (("nginx", "nginx"), ("wrk", "wrk"), ("h2load", "nghttp2-client")):
        if not shutil.which(tool):
            sys.exit(f"{tool} not installed (apt-get install -y {package})")
    if args.core == "compiled":
        CORE[0] = compiled_build_or_none()
    configs: list[tuple[str, Capturer]] = [
        ("baseline", no_capture),
        ("tcpdump", tcpdump),
        ("idle spinner", idle_spinner),
    ]
    for prio in args.priority.split(","):
        for w in (int(x) for x in args.workers.split(",")):
            name = f"daemon w={w}{'' if prio == 'normal' else ' ' + prio}"
            configs.append((name, partial(daemon, workers=w, priority=prio)))
    notes: list[str] = []
    secs = args.seconds
    with nginx() as port:
        wrk(port, 2)  # warm-up
        sat = round_robin(port, configs, partial(wrk, port, secs), args.runs, "wrk saturation", notes, secs)
        # When the client cannot deliver the asked rate on this machine even without the daemon, the
        # rate is lowered until it can (a fixed rate the client cannot hold would measure the client's
        # saturation, not nginx's latency).
        rate = sat["baseline"].rps * args.fraction
        for _ in range(4):
            probe, _run = measure(port, no_capture, partial(h2load, port, secs, rate))
            if probe.rps >= 0.95 * rate:
                break
            print(f"h2load reached {probe.rps:,.0f} of {rate:,.0f} req/s: lowering the rate",
                  file=sys.stderr, flush=True)  # fmt: skip
            rate = 0.8 * probe.rps
        fixed = round_robin(
            port, configs, partial(h2load, port, secs, rate), args.runs, "fixed rate", notes, secs
        )
    base_s, base_f = sat["baseline"], fixed["baseline"]
    share = 100 * rate / base_s.rps
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end (2 vCPUs shared)")
    print(f"daemon core: {'compiled (mypyc)' if CORE[0] else 'pure Python'}, on {interpreter.describe()}")
    print(f"nginx on 127.0.0.1, {args.seconds:g} s per load, median of {args.runs}; fixed rate "
          f"{rate:,.0f} req/s = {share:.0f} % of capacity (h2load -c 20 --rps {rate / 20:.0f})")  # fmt: skip
    header = (f"{'':<15} | {'wrk req/s':>9} | {'thr. loss':>9} | {'wrk p99':>8} | {'fix req/s':>9} | "
              f"{'fix p99':>8} | {'p99 added':>9}")  # fmt: skip
    print(header)
    print("-" * len(header))
    for name, _ in configs:
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
