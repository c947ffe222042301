"""Every memory budget hit at once, inside a real cgroup memory limit: does the process survive?

Usage: sudo python bench/memory_flood.py [--limit 200Mi] [--flows N] [--legs N] [--holes N] [--keep]
                                        [--live PPS]
Writes /tmp/moesif-sniffer-memory-flood.pcap (made here, all within 4 s of capture time, so no timeout
frees anything):
  - N flows (default 80,000) to port 80 that each send a 1,200-byte request head and never finish it:
    the flow table fills to its cap and the HTTP layer holds every partial head;
  - N Kong client legs (default 20,000) on port 8000, whole calls with 4 KB response bodies whose upstream
    leg is never seen: they wait for a partner until the joiner's caps push them out as events;
  - N flows (default 3,000) that each send 32 KB beyond a lost segment: out-of-order bytes held.
Then replays it twice as a child in a fresh memory cgroup of --limit (v1 or v2), sending to a collector
that cannot be reached (127.0.0.1:9), so the sender's queue fills too:
  - SNIFFER_MEMORY_LIMIT=off: every budget at its default (what the daemon did before the memory plan);
  - unset: the budgets sized for the cgroup's limit (sniffer/memory_plan.py).
Printed per run: exit status (137: killed by the OOM killer), peak RSS, events, and the budget counters.
With `--live PPS` the daemon itself runs instead (`moesif-sniffer run`, 2 workers, in a network namespace
and the cgroup; tcpreplay sends the capture into its veth at PPS): SNIFFER_MEMORY_LIMIT=off, then equal
to the cgroup's limit (`ip netns exec` hides the cgroup files, see `run_live`).

Result (2026-12-07, 2 vCPU, cgroup v1, default sizes: 315,000 frames, 298 MB):
  --limit 200Mi: defaults killed by the OOM killer after 1.7 s (peak RSS 213 MB); planned: exit 0, peak
  RSS 140 MB, 7.3 s, every budget hit (evict_flows, cap_http_buffer_other, cap_buffer, evict_leg_client,
  dropped_queue_full).
  SNIFFER_WORKERS=2, --limit 300Mi: defaults: "replay worker 1 exited unexpectedly" (killed); planned:
  exit 0, main process peak RSS 120 MB.
  --live 40000 --limit 300Mi: defaults: a capture worker OOM-killed after 128,949 of 315,000 frames, the
  daemon exits 1 saying so; planned: exit 0, every frame seen, 0 kernel drops, cgroup peak 205 MB,
  20,000 events (13,483 dropped from the full queue, 6,517 unsent at the flush deadline: counted).
"""

from __future__ import annotations

import argparse
import os
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sniffer.config import Config  # noqa: E402

OUT = Path("/tmp/moesif-sniffer-memory-flood.pcap")
_ETH = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00"
_SYN, _ACK, _PSH = 0x02, 0x10, 0x08


def _frame(src: int, dst: int, sport: int, dport: int, seq: int, ack: int, flags: int, data: bytes) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0)
    ip = struct.pack("!BBHHHBBHII", 0x45, 0, 40 + len(data), 0, 0x4000, 64, 6, 0, src, dst)
    return _ETH + ip + tcp + data


class _Writer:
    def __init__(self, path: Path) -> None:
        self._f = path.open("wb")
        self._f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        self.frames = 0

    def write(self, ts: float, frame: bytes) -> None:
        sec = int(ts)
        self._f.write(struct.pack("<IIII", sec, int((ts - sec) * 1e6), len(frame), len(frame)))
        self._f.write(frame)
        self.frames += 1

    def close(self) -> None:
        self._f.close()


def _client(i: int) -> tuple[int, int]:
    """A distinct (address, port) per connection: 10.x.y.z, ports 1024-60999."""
    return 0x0A000000 + 1 + i // 50_000, 1024 + i % 50_000


def make_capture(path: Path, flows: int, legs: int, holes: int) -> int:
    w = _Writer(path)
    server, kong = 0xC0A80001, 0xC0A80002
    total = flows + legs + holes
    step = 4.0 / max(1, total)
    ts = 1_700_000_000.0
    head = b"POST /upload HTTP/1.1\r\nHost: api.example.com\r\nX-Pad: " + b"p" * 1150  # never ends
    body = b'{"pad":"' + b"r" * 4000 + b'"}'
    request = b"GET /orders/7 HTTP/1.1\r\nHost: api.example.com\r\nUser-Agent: flood\r\n\r\n"
    response = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
    n = 0
    for _ in range(flows):
        ip, port = _client(n)
        n += 1
        w.write(ts, _frame(ip, server, port, 80, 1000, 0, _SYN, b""))
        w.write(ts, _frame(ip, server, port, 80, 1001, 1, _ACK | _PSH, head))
        ts += step
    for _ in range(legs):
        ip, port = _client(n)
        n += 1
        w.write(ts, _frame(ip, kong, port, 8000, 1000, 0, _SYN, b""))
        w.write(ts, _frame(kong, ip, 8000, port, 5000, 1001, _SYN | _ACK, b""))
        w.write(ts, _frame(ip, kong, port, 8000, 1001, 5001, _ACK | _PSH, request))
        w.write(ts, _frame(kong, ip, 8000, port, 5001, 1001 + len(request), _ACK | _PSH, response + body))
        ts += step
    chunk = b"h" * 1400
    for _ in range(holes):
        ip, port = _client(n)
        n += 1
        w.write(ts, _frame(ip, server, port, 80, 1000, 0, _SYN, b""))
        w.write(ts, _frame(ip, server, port, 80, 1001, 1, _ACK | _PSH, b"POST /a HTTP/1.1\r\n"))
        seq = 1001 + 18 + 1400  # one segment lost, then 32 KB that cannot be delivered yet
        for _ in range(23):
            w.write(ts, _frame(ip, server, port, 80, seq, 1, _ACK | _PSH, chunk))
            seq += 1400
        ts += step
    w.close()
    return w.frames


def cgroup_unavailable() -> str | None:
    """Why a memory cgroup cannot be made here (None: it can)."""
    if os.geteuid() != 0:
        return "needs root to create a memory cgroup"
    v2 = Path("/sys/fs/cgroup/cgroup.controllers")
    if v2.exists() and "memory" in v2.read_text().split():
        if "memory" not in (v2.parent / "cgroup.subtree_control").read_text().split():
            return "cgroup v2: memory is not in /sys/fs/cgroup/cgroup.subtree_control"
        return None if os.access(v2.parent, os.W_OK) else "/sys/fs/cgroup is not writable"
    v1 = Path("/sys/fs/cgroup/memory")
    if v1.is_dir() and os.access(v1, os.W_OK):
        return None
    return "no writable memory cgroup controller (v1 or v2)"


class _Cgroup:
    """A fresh memory cgroup (v2 if mounted with the memory controller, else v1) with a hard limit."""

    def __init__(self, limit: int) -> None:
        name = f"moesif-sniffer-flood-{os.getpid()}"
        v2 = Path("/sys/fs/cgroup")
        controllers = v2 / "cgroup.controllers"
        if controllers.exists() and "memory" in controllers.read_text().split():
            self.dir, self.limit_file = v2 / name, "memory.max"
        else:
            self.dir = Path("/sys/fs/cgroup/memory") / name
            self.limit_file = "memory.limit_in_bytes"
        self.dir.mkdir()
        (self.dir / self.limit_file).write_text(str(limit))

    def enter(self) -> None:  # in the child, before exec
        (self.dir / "cgroup.procs").write_text(str(os.getpid()))

    def oom_kills(self) -> int:
        """Processes the kernel killed in this cgroup for want of memory."""
        for name in ("memory.events", "memory.oom_control"):  # v2, v1
            f = self.dir / name
            if f.exists():
                for line in f.read_text().splitlines():
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        return 0

    def peak_mb(self) -> float:
        """The cgroup's peak charge (RSS, ring pages, kernel memory and page cache), in MB."""
        for name in ("memory.peak", "memory.max_usage_in_bytes"):  # v2, v1
            f = self.dir / name
            if f.exists():
                return int(f.read_text()) / 1e6
        return float("nan")

    def remove(self) -> None:
        for _ in range(50):
            try:
                self.dir.rmdir()
                return
            except OSError:
                time.sleep(0.1)


def run_once(capture: Path, limit: int, memory_limit: str | None) -> dict[str, object]:
    env = dict(os.environ)
    env.update(
        MOESIF_APPLICATION_ID="flood", MOESIF_API_ENDPOINT="http://127.0.0.1:9", MOESIF_FLUSH_TIMEOUT="1"
    )
    env.pop("SNIFFER_MEMORY_LIMIT", None)
    if memory_limit is not None:
        env["SNIFFER_MEMORY_LIMIT"] = memory_limit
    cg = _Cgroup(limit)
    start = time.monotonic()
    with tempfile.TemporaryFile("w+") as err:
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "sniffer", "replay", str(capture), "-o", os.devnull],
                env=env,
                cwd=ROOT,
                preexec_fn=cg.enter,
                stderr=err,
            )
            _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS
            proc.returncode = os.waitstatus_to_exitcode(status)
        finally:
            cg.remove()
        err.seek(0)
        wanted = ("memory plan", "error")
        lines = [ln for ln in err.read().splitlines() if any(w in ln for w in wanted) or ln.startswith("  ")]
    return {
        "status": proc.returncode,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "seconds": time.monotonic() - start,
        "summary": lines,
    }


def run_live(capture: Path, limit: int, memory_limit: str, pps: int) -> dict[str, object]:
    """`moesif-sniffer run` (2 workers) in the cgroup, in a network namespace, the capture sent into its
    veth by tcpreplay at `pps`; SIGTERM once it is all sent. `ip netns exec` mounts a fresh /sys, where
    the cgroup files are not to be seen, so the limit is given as SNIFFER_MEMORY_LIMIT (or off)."""
    from bench.captures import packets_in
    from bench.live import VethNamespace, replay

    cg = _Cgroup(limit)
    start = time.monotonic()
    try:
        with VethNamespace() as net, tempfile.TemporaryFile("w+") as err:
            env = dict(os.environ)
            env.update(
                MOESIF_APPLICATION_ID="flood",
                MOESIF_API_ENDPOINT="http://127.0.0.1:9",
                MOESIF_FLUSH_TIMEOUT="1",
                SNIFFER_MEMORY_LIMIT=memory_limit,
                SNIFFER_WORKERS="2",
                SNIFFER_INTERFACE=net.inner,
                SNIFFER_USER="",
                SNIFFER_SHED="off",
                SNIFFER_METRICS_ADDR="",
            )
            cmd = net.exec(sys.executable, "-m", "sniffer", "run", "-o", os.devnull)
            proc = subprocess.Popen(cmd, env=env, cwd=ROOT, preexec_fn=cg.enter, stderr=err)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and "capturing on" not in _read(err):
                time.sleep(0.2)
            sent, _ = replay(net, capture, pps, packets_in(capture))
            time.sleep(2)
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            status = proc.wait(60)
            text = _read(err)
    finally:
        peak, kills = cg.peak_mb(), cg.oom_kills()
        cg.remove()
    wanted = ("memory plan", "exited", "packets,", "delivery:", "not captured whole")
    return {
        "status": status,
        "sent": sent,
        "peak_cgroup_mb": peak,
        "oom_kills": kills,
        "seconds": time.monotonic() - start,
        "summary": [ln for ln in text.splitlines() if any(w in ln for w in wanted)],
    }


def _read(f: IO[str]) -> str:
    f.seek(0)
    return f.read()


def parse_size(text: str) -> int:
    """512Mi, 1G, ...: as SNIFFER_MEMORY_LIMIT reads it."""
    return Config.load(None, {"SNIFFER_MEMORY_LIMIT": text}).memory_limit or 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", default="200Mi")
    ap.add_argument("--flows", type=int, default=80_000)
    ap.add_argument("--legs", type=int, default=20_000)
    ap.add_argument("--holes", type=int, default=3_000)
    ap.add_argument("--keep", action="store_true", help="reuse the capture if it exists")
    ap.add_argument("--live", type=int, metavar="PPS", help="the daemon, live, at this rate (tcpreplay)")
    args = ap.parse_args()
    why = cgroup_unavailable()
    if why is not None:
        sys.exit(f"memory_flood.py: {why}")
    if not (args.keep and OUT.exists()):
        frames = make_capture(OUT, args.flows, args.legs, args.holes)
        print(f"{OUT}: {frames:,} frames, {OUT.stat().st_size / 1e6:,.0f} MB")
    limit = parse_size(args.limit)
    if args.live:
        for setting in ("off", args.limit):
            r = run_live(OUT, limit, setting, args.live)
            print(f"\nlive, 2 workers, SNIFFER_MEMORY_LIMIT={setting}, cgroup limit {args.limit}:")
            sent = f"{r['sent']:,} frames sent at {args.live:,}/s"
            print(f"    exit {r['status']}, {sent}, OOM kills {r['oom_kills']}")
            print(f"    cgroup peak {r['peak_cgroup_mb']:.0f} MB, {r['seconds']:.1f} s")
            for line in r["summary"]:  # type: ignore[attr-defined]
                print("   ", line.strip()[:400])
        return
    for label, setting in (
        ("budgets at their defaults (SNIFFER_MEMORY_LIMIT=off)", "off"),
        ("memory plan from the cgroup limit", None),
    ):
        r = run_once(OUT, limit, setting)
        killed = " (killed: out of memory)" if r["status"] in (-9, 137) else ""
        print(f"\n{label}, cgroup limit {args.limit}: exit {r['status']}{killed}")
        print(f"    peak RSS {r['peak_rss_mb']:.0f} MB, {r['seconds']:.1f} s")
        for line in r["summary"]:  # type: ignore[attr-defined]
            print("   ", line.strip())


if __name__ == "__main__":
    main()
