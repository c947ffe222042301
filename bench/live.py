"""Live capture drop rate: ours (1 and 2 workers) next to tcpdump, at increasing packet rates, in one run.

Usage: python bench/live.py [--rates 20000,50000,100000,150000] [--seconds 4] [--core pure,compiled]
                            [--workers 1,2] [--traffic wrk|kong] [--set NAME=VALUE ...] [--runs N]
                            [CAPTURE]
Needs root, tcpreplay (`apt-get install -y tcpreplay`) and tcpdump.

A veth pair: one end in the root namespace, the other in a fresh network namespace. tcpreplay sends the
capture (keep-alive wrk traffic against nginx on port 18080, bench/captures.py) into the root end at a
fixed `--pps`; the capturer runs inside the namespace on the other end: `moesif-sniffer run` (JSON lines
to /dev/null, SNIFFER_SHED=off so it never sheds, SNIFFER_WORKERS=1 then 2; with the pure Python
core, then with the mypyc-compiled one, "ours C", built by bench/compiled.py as the image ships it) or
`tcpdump -i <veth> -w /dev/null` (the C reference). The frames keep their loopback addresses and zero
MACs: the IP layer drops them as martians, but AF_PACKET taps see every frame before that, which is
all that is measured here. Both ends get MTU 65535 because the capture was taken on lo.

`--traffic kong` sends Kong traffic instead: the bundled Kong demo repeated (bench/kong_capture.py
`--ethernet`, 1M frames; client legs to the proxy ports 8000/8001, upstream legs to 9000), captured on
those ports with `SNIFFER_KONG_PORTS=8000,8001`: every exchange is a possible Kong leg, so with 2 workers
the main process joins and builds every event.

`--set` passes a setting to every daemon run (e.g. `--set SNIFFER_DROP_PURE_ACKS=true`).

Each run sends `rate x seconds` packets (`--limit`, from the 1M capture when present, so no packet
repeats). "seen" is what the capturer got; "drop %" is the kernel's drop count (ours: the daemon's
final summary, i.e. PACKET_STATISTICS tp_drops summed over its rings; tcpdump: its "dropped by kernel"
line) over seen + dropped. "sent pps" is tcpreplay's achieved rate; "sender cores" its CPU over its wall
time (the veth's delivery into every listening ring runs in its system calls, so it is counted there:
on these 2 vCPUs whatever the sender takes, the capturers lack). "us/pkt" is ours' CPU (the daemon and
its workers) a packet seen, less a run of the same length without traffic (start-up, idle polls,
stopping). "busiest worker" is the share of the packets the busiest worker got (the daemon's exit
summary): the fanout keeps each flow on one worker and the wrk capture has 20 connections, so with
`--set SNIFFER_FANOUT=hash` the split is rarely even (59-65 %) and the busiest worker drops first; the
default balanced fanout deals them in turn (50-52 %). "main wait" is the longest time a worker spent
blocked handing its messages to the main process (its exit summary), over the time the packets took to
send: a large share says the main process, which joins and builds every Kong call, is the limit
(2026-12-08 ~05:30, two workers: 45-64 % on Kong traffic at 150k, 5-10 % on wrk traffic). With
`--runs N` every rate is measured in N rounds, the tools taking turns, and a last table gives each
one's median drop % (one run can swing from 0 to 15 % on this shared VM).

The latest figures, and how they stand against issue 6's targets, are in the README (Speed). Notes
from earlier runs that still hold: tcpreplay and the veth's delivery take ~0.7 of one of these 2 vCPUs
at 200k packets/s and ~0.95 at 300k (with tcpreplay's default timer, which spins, ~1 at any rate; until
2026-12-08 this bench used it), so two workers share what is left: the per-worker figure needs a
machine with free cores (at ~6 us a packet, two workers at 300k need ~1.8 cores); on Kong traffic
every exchange may be a leg, so with two workers the main process joins and builds every event. A check
at 20k frames/s with the events written out gave 4,500 events, 4,100 of them both legs joined, with 1
and with 2 workers, as `replay` gives on the same frames. `--set SNIFFER_DROP_PURE_ACKS=true` (a third
fewer frames of the Kong capture reach the ring) moves the limit only a little: pure ACKs are the
cheapest frames.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import interpreter
from captures import BIG_CAPTURE, WRK_CAPTURE, ensure_capture, packets_in
from compiled import compiled_build_or_none
from daemon_run import running_daemon
from kong_capture import ETHERNET_OUT
from kong_capture import make as make_kong_capture

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]
PORT = 18080  # the port of make_capture.sh's nginx
KONG_PORTS = "8000,8001"  # the Kong demo's proxy ports (bench/kong_capture.py)
KONG_CAPTURE_PORTS = "8000,8001,8443,9000"  # and its upstream port


@dataclass(frozen=True)
class Traffic:
    """What is sent and what the capturers are told to capture."""

    ports: str  # SNIFFER_PORTS, and tcpdump's port filter
    kong_ports: str  # SNIFFER_KONG_PORTS


WRK = Traffic(str(PORT), "")
KONG = Traffic(KONG_CAPTURE_PORTS, KONG_PORTS)


@dataclass
class Result:
    sent_pps: float
    sent: int
    seen: int
    dropped: int
    sender_cpu: float  # tcpreplay's CPU over its wall time (its send and the veth's delivery), in cores
    us_per_packet: float | None = None  # ours: CPU a packet seen, start-up and idle polling taken off
    busiest: float | None = None  # ours with workers: the busiest worker's share of the packets seen
    main_wait: float | None = None  # ours with workers: the longest wait on the main process / send time

    @property
    def drop_pct(self) -> float:
        total = self.seen + self.dropped
        return 100.0 * self.dropped / total if total else 0.0


class VethNamespace:
    """A veth pair: `outer` in the root namespace (tcpreplay side), `inner` in namespace `ns`."""

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.ns, self.outer, self.inner = f"bl{tag}", f"bl{tag}o", f"bl{tag}i"

    def __enter__(self) -> VethNamespace:
        sh = ["ip", "netns", "add", self.ns], ["ip", "-n", self.ns, "link", "set", "lo", "up"]
        for cmd in (
            *sh,
            ["ip", "link", "add", self.outer, "mtu", "65535", "type", "veth", "peer", "name", self.inner,
             "mtu", "65535", "netns", self.ns],
            ["ip", "link", "set", self.outer, "up"],
            ["ip", "-n", self.ns, "link", "set", self.inner, "up"],
        ):  # fmt: skip
            subprocess.run(cmd, check=True, capture_output=True, timeout=30)
        return self

    def __exit__(self, *exc: object) -> None:
        pids = subprocess.run(["ip", "netns", "pids", self.ns], capture_output=True, text=True).stdout
        for pid in pids.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        subprocess.run(["ip", "link", "del", self.outer], capture_output=True, timeout=30)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True, timeout=30)

    def exec(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *argv]


def replay(net: VethNamespace, capture: Path, pps: int, count: int) -> tuple[int, float, float]:
    """tcpreplay `count` packets at `pps` into the outer end: (packets sent, achieved packets/s, its CPU
    in cores). Its timer sleeps (`--timer=nano`): the default (gtod) spins between packets, a whole core
    at any rate, which the capturers on these 2 vCPUs then lack (measured at 150k packets/s with tcpdump
    listening: 0.97 core spinning, 0.62 sleeping; at 300k, ~0.92 either way). The veth's delivery to the
    listening sockets runs in the sender's system call, so it is counted here too."""
    loops = 0 if count <= 0 else max(1, -(-count // packets_in(capture)))
    cmd = ["tcpreplay", "-q", "-i", net.outer, "--timer=nano", f"--pps={pps}", f"--limit={count}",
           f"--loop={loops}", str(capture)]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    wall = time.monotonic() - started
    # tcpreplay is the only child reaped meanwhile (the daemon is reaped after the send)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    text = out.stdout + out.stderr
    m = re.search(r"Actual: (\d+) packets", text)
    sent = int(m.group(1)) if m else 0
    m2 = re.search(r"Rated: [\d.]+ Bps, [\d.]+ Mbps, ([\d.]+) pps", text)
    return sent, float(m2.group(1)) if m2 else 0.0, cpu / wall if wall else 0.0


def _settings(
    net: VethNamespace, traffic: Traffic, workers: int, extra: dict[str, str] | None
) -> dict[str, str]:
    settings = dict(
        SNIFFER_INTERFACE=net.inner, SNIFFER_PORTS=traffic.ports, SNIFFER_KONG_PORTS=traffic.kong_ports,
        SNIFFER_WORKERS=str(workers), SNIFFER_SHED="off", SNIFFER_METRICS_ADDR="127.0.0.1:9464",
    )  # fmt: skip
    settings.update(extra or {})
    return settings


def idle_cpu(
    net: VethNamespace,
    traffic: Traffic,
    seconds: float,
    workers: int,
    core: str | None = None,
    extra: dict[str, str] | None = None,
) -> float:
    """The daemon's CPU seconds for a run as long as `run_ours`'s with no traffic: start-up, idle polling
    and stopping, which `run_ours` takes off its CPU before dividing by the packets seen."""
    with running_daemon(_settings(net, traffic, workers, extra), core, prefix=tuple(net.exec())) as run:
        time.sleep(seconds + 1.0)
    return run.cpu_s


def run_ours(
    net: VethNamespace,
    capture: Path,
    traffic: Traffic,
    pps: int,
    count: int,
    workers: int,
    core: str | None = None,
    extra: dict[str, str] | None = None,
    idle_cpu_s: float = 0.0,
) -> Result:
    settings = _settings(net, traffic, workers, extra)
    with running_daemon(settings, core, prefix=tuple(net.exec())) as run:
        sent, rate, sender_cpu = replay(net, capture, pps, count)
        time.sleep(1.0)
    found = re.findall(r"(\d+) packets, (\d+) kernel drops", run.log)
    if not found:
        raise RuntimeError("no summary in the daemon log: " + run.log[-2000:])
    seen, dropped = (int(x) for x in found[-1])
    us = 1e6 * max(0.0, run.cpu_s - idle_cpu_s) / seen if seen else None
    split = re.findall(r"by worker: ([\d /]+) packets", run.log)
    counts = [int(x) for x in split[-1].split(" / ")] if split else []
    busiest = max(counts) / sum(counts) if counts and sum(counts) else None
    waits = re.findall(r"kernel drops, ([\d. /]+) s waiting on the main process", run.log)
    longest = max(float(x) for x in waits[-1].split(" / ")) if waits else None
    main_wait = longest / (sent / rate) if longest is not None and sent and rate else None
    return Result(rate, sent, seen, dropped, sender_cpu, us, busiest, main_wait)


def run_tcpdump(net: VethNamespace, capture: Path, traffic: Traffic, pps: int, count: int) -> Result:
    ports = " or ".join(f"port {p}" for p in traffic.ports.split(","))
    cmd = net.exec("tcpdump", "-i", net.inner, "-n", "-w", "/dev/null", f"tcp and ({ports})")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        proc.stderr.readline()  # "listening on ...": the socket is open
        time.sleep(0.3)
        sent, rate, sender_cpu = replay(net, capture, pps, count)
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        err = proc.stderr.read()
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    seen = int(re.search(r"(\d+) packets? captured", err).group(1))  # type: ignore[union-attr]
    dropped = int(re.search(r"(\d+) packets? dropped by kernel", err).group(1))  # type: ignore[union-attr]
    return Result(rate, sent, seen, dropped, sender_cpu)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("capture", nargs="?", type=Path)
    ap.add_argument("--rates", default="20000,50000,100000,150000")
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--core", default="pure,compiled", help="pure and/or compiled (mypyc) core")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--traffic", choices=("wrk", "kong"), default="wrk", help="what CAPTURE defaults to")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="a daemon setting")
    ap.add_argument("--runs", type=int, default=1, help="rounds per rate, the tools taking turns; medians")
    args = ap.parse_args()
    extra = dict(item.split("=", 1) for item in args.set)
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces, AF_PACKET)")
    for tool in ("tcpreplay", "tcpdump"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not installed (apt-get install -y {tool})")
    traffic = KONG if args.traffic == "kong" else WRK
    if args.capture:
        capture = args.capture
    elif traffic is KONG:
        capture = ETHERNET_OUT
        if not capture.exists():
            make_kong_capture(capture, 2000, ethernet=True)
    else:
        capture = BIG_CAPTURE if BIG_CAPTURE.exists() else ensure_capture(WRK_CAPTURE)
    rates = [int(r) for r in args.rates.split(",")]
    rows: list[tuple[str, int, str | None]] = []
    for kind in args.core.split(","):
        core = compiled_build_or_none() if kind == "compiled" else None
        if kind == "compiled" and core is None:
            continue
        for w in (int(x) for x in args.workers.split(",")):
            rows.append((f"ours{' C' if core else ''} w={w}", w, core))
    header = (f"{'offered pps':>11} | {'tool':<12} | {'sent pps':>9} | {'sent':>8} | {'seen':>8} | drop % | "
              f"sender cores | us/pkt | busiest worker | main wait")  # fmt: skip
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"capture {capture}, {args.seconds:g} s per rate; load average {load} (2 vCPUs shared); "
          f"ours C = the mypyc-compiled core; settings {extra or 'default'}")  # fmt: skip
    print(f"ours on {interpreter.describe()}")
    print(header)
    print("-" * len(header))
    tools = [*rows, ("tcpdump", 0, None)]
    drops: dict[tuple[int, str], list[float]] = {}
    with VethNamespace() as net:
        idle = {name: idle_cpu(net, traffic, args.seconds, w, core, extra) for name, w, core in rows}
        for pps in rates:
            count = int(pps * args.seconds)
            # Rounds, not runs in a row: a slow minute of this shared VM then falls on every tool alike.
            for _ in range(args.runs):
                for name, workers, core in tools:
                    if name == "tcpdump":
                        r = run_tcpdump(net, capture, traffic, pps, count)
                    else:
                        r = run_ours(net, capture, traffic, pps, count, workers, core, extra, idle[name])
                    drops.setdefault((pps, name), []).append(r.drop_pct)
                    us = "" if r.us_per_packet is None else f"{r.us_per_packet:6.2f}"
                    share = "" if r.busiest is None else f"{100 * r.busiest:.0f} %"
                    wait = "" if r.main_wait is None else f"{100 * r.main_wait:.0f} %"
                    print(f"{pps:>11,} | {name:<12} | {r.sent_pps:>9,.0f} | {r.sent:>8,} | {r.seen:>8,} | "
                          f"{r.drop_pct:6.2f} | {r.sender_cpu:12.2f} | {us:>6} | {share:>14} | {wait}",
                          flush=True)  # fmt: skip
    if args.runs > 1:
        print(f"\ndrop %, median of {args.runs} rounds (each round's in brackets)")
        print(f"{'offered pps':>11} | " + " | ".join(f"{name:<12}" for name, _, _ in tools))
        for pps in rates:
            cells = []
            for name, _, _ in tools:
                got = drops[(pps, name)]
                cells.append(f"{statistics.median(got):5.2f} [{' '.join(f'{d:.1f}' for d in got)}]")
            print(f"{pps:>11,} | " + " | ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
