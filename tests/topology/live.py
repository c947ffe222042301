"""`moesif-sniffer run` capturing live inside a topology's gw namespace, and what it exposes from there.

`live_sniffer(topo, workers=..., interface=...)` starts the daemon with `ip netns exec <gw>` (which execs
in place: the Popen pid is the daemon's own pid), configured as the gateway is (Kong ports 8000/8001,
upstream port 9000, the company header and JWT company claim of `verify.REPLAY_ARGS`), JSON lines to a
file in the topology's workdir, metrics on 127.0.0.1 inside gw (reached with `ip netns exec <gw> curl`),
and waits for /readyz. Leaving the block kills the daemon if a test did not stop it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from .net import KONG_PORTS, UPSTREAM_PORT, Topology

__all__ = ["METRICS_ADDR", "LiveSniffer", "Metrics", "daemon_env", "live_sniffer"]

# The gw namespace has a network stack of its own: this port cannot collide with the host's or another
# topology's daemon.
METRICS_ADDR = "127.0.0.1:9464"
READY_TIMEOUT_S = 20.0


def daemon_env(*, workers: int, interface: str, **extra: str) -> dict[str, str]:
    """The environment of a daemon configured like the topology's gateway (no Moesif application id)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MOESIF_", "SNIFFER_"))}
    kong = ",".join(map(str, sorted(KONG_PORTS)))
    env.update(
        SNIFFER_INTERFACE=interface,
        # Only the gateway's ports pass the kernel filter: not the metrics scrapes on lo inside gw.
        SNIFFER_PORTS=f"{kong},{UPSTREAM_PORT}",
        SNIFFER_KONG_PORTS=kong,
        SNIFFER_UPSTREAM_PORTS=str(UPSTREAM_PORT),
        SNIFFER_WORKERS=str(workers),
        SNIFFER_USER="nobody",
        SNIFFER_METRICS_ADDR=METRICS_ADDR,
        SNIFFER_LOG_FORMAT="json",
        MOESIF_COMPANY_ID_HEADER="X-Company-Id",
        MOESIF_AUTHORIZATION_COMPANY_ID_FIELD="company_id",
    )
    env.update(extra)
    return env


@dataclass
class Metrics:
    """One /metrics scrape: unlabelled samples by name, and every core counter by its Stats name."""

    samples: dict[str, float] = field(default_factory=dict)
    core: dict[str, float] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Metrics:
        m = cls()
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if not s.labels:
                    m.samples[s.name] = s.value
                elif s.name == "moesif_sniffer_core_total":
                    m.core[s.labels["name"]] = s.value
        return m

    def __getitem__(self, name: str) -> float:
        """`packets` -> moesif_sniffer_packets_total (a counter) or moesif_sniffer_packets (a gauge)."""
        for key in (f"moesif_sniffer_{name}_total", f"moesif_sniffer_{name}"):
            if key in self.samples:
                return self.samples[key]
        raise KeyError(name)

    def figures(self) -> str:
        names = (
            "packets",
            "kernel_packets",
            "kernel_drops",
            "flows",
            "exchanges",
            "events",
            "events_partial",
        )
        return ", ".join(f"{n}={self[n]:.0f}" for n in names)


@dataclass
class LiveSniffer:
    topo: Topology
    proc: subprocess.Popen[bytes]
    output: Path
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def get(self, path: str) -> tuple[int, str]:
        """GET on the metrics endpoint from inside gw: (HTTP status, body); (0, error) when unreachable."""
        argv = ["ip", "netns", "exec", self.topo.ns_gw, "curl", "-sS", "-m", "5", "-w", "\n%{http_code}"]
        res = subprocess.run(
            [*argv, f"http://{METRICS_ADDR}{path}"], capture_output=True, text=True, timeout=15
        )
        if res.returncode != 0:
            return 0, res.stderr.strip()
        body, _, code = res.stdout.rpartition("\n")
        return int(code), body

    def metrics(self) -> Metrics:
        status, body = self.get("/metrics")
        assert status == 200, f"/metrics answered {status}: {body[:300]}"
        return Metrics.parse(body)

    def wait_metrics(self, done: Callable[[Metrics], bool], timeout_s: float) -> Metrics:
        """Scrape until `done` holds or `timeout_s` passed; the last scrape either way."""
        deadline = time.monotonic() + timeout_s
        while True:
            m = self.metrics()
            if done(m) or time.monotonic() >= deadline:
                return m
            time.sleep(0.25)

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}: {self.log_tail()}")
            status, body = self.get("/readyz")
            if status == 200:
                return
            if time.monotonic() >= deadline:
                raise RuntimeError(f"daemon not ready in {timeout_s} s ({status} {body}): {self.log_tail()}")
            time.sleep(0.1)

    def pids(self) -> list[int]:
        """The daemon and its capture worker processes."""
        res = subprocess.run(["pgrep", "-P", str(self.pid)], capture_output=True, text=True, timeout=10)
        return [self.pid, *map(int, res.stdout.split())]

    @staticmethod
    def status(pid: int) -> dict[str, list[str]]:
        """/proc/<pid>/status fields, split on whitespace."""
        text = Path(f"/proc/{pid}/status").read_text()
        return {k: v.split() for k, _, v in (line.partition(":") for line in text.splitlines())}

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM, then the exit status (graceful stop: drain, finish exchanges, flush)."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout_s)

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.output.read_bytes().splitlines() if line.strip()]

    def log_records(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:  # a traceback or a line from before logging was set up
                out.append({"message": line})
        return out

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else "(no log)"


_RUNS = [0]


@contextmanager
def live_sniffer(
    topo: Topology, *, workers: int, interface: str = "any", python: str = sys.executable, **extra: str
) -> Iterator[LiveSniffer]:
    """The daemon running in gw and ready; `extra` env vars override `daemon_env`'s."""
    _RUNS[0] += 1
    output = topo.workdir / f"live-{_RUNS[0]}.jsonl"
    log = topo.workdir / f"live-{_RUNS[0]}.log"
    env = daemon_env(workers=workers, interface=interface, **extra)
    argv = ["ip", "netns", "exec", topo.ns_gw, python, "-m", "sniffer", "run", "--output", str(output)]
    with open(log, "wb") as errf:
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=errf, cwd=topo.workdir)
    sniffer = LiveSniffer(topo, proc, output, log)
    try:
        sniffer.wait_ready()
        yield sniffer
    finally:
        if proc.poll() is None:
            proc.kill()  # workers notice the closed pipe and exit; Topology.down() ends any left in gw
            proc.wait(10)
