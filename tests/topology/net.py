"""Build, run and tear down the client / gw / upstream network-namespace topology.

    client ns                      gw ns                                upstream ns
    10.77.1.1, 10.77.1.3   veth    10.77.1.2 :8000 :8001   veth         10.77.2.2 :9000
    fd77:1::1, fd77:1::3  <---->   fd77:1::2   nginx-as-Kong  <---->    fd77:2::2  upstream_app.py
                                   10.77.2.1 / fd77:2::1 (to upstream)

Everything is started by hand (no systemd): the upstream app and nginx run as child processes inside their
namespace (`ip netns exec` execs in place, so each Popen pid is the server's own pid), tcpdump captures
inside gw, and the client runs `client.py` inside client. Namespace and interface names carry a random
prefix so several topologies (other engineers' tests, CI jobs) can exist at once; all files live in one
temporary directory under /tmp. `down()` ends only the processes this object started (by pid) plus any
left inside its own namespaces, then deletes the namespaces.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from .gateway import GatewayPort, render_nginx_conf

__all__ = [
    "CLIENT2_V4",
    "CLIENT2_V6",
    "CLIENT_V4",
    "CLIENT_V6",
    "GATEWAYS",
    "GW_V4",
    "GW_V6",
    "KONG_PORTS",
    "UPSTREAM_PORT",
    "CaptureLoss",
    "Topology",
]

HERE = Path(__file__).resolve().parent
CLIENT_V4, CLIENT_V6 = "10.77.1.1", "fd77:1::1"
CLIENT2_V4, CLIENT2_V6 = "10.77.1.3", "fd77:1::3"  # a second client host on the same link
GW_V4, GW_V6 = "10.77.1.2", "fd77:1::2"
GWU_V4, GWU_V6 = "10.77.2.1", "fd77:2::1"
UPSTREAM_V4, UPSTREAM_V6 = "10.77.2.2", "fd77:2::2"
UPSTREAM_PORT = 9000
GATEWAYS = (
    GatewayPort("kong39", 8000, "orders_v4", request_id=True),
    GatewayPort("kong34", 8001, "orders_v6", request_id=False),
)
KONG_PORTS = frozenset(g.port for g in GATEWAYS)
CAPTURE_FILTER = " or ".join(f"tcp port {p}" for p in (*sorted(KONG_PORTS), UPSTREAM_PORT))


class CaptureLoss(RuntimeError):
    """tcpdump reported packets dropped by the kernel: the capture is not a faithful record."""


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


class Topology:
    """One topology; use as a context manager (`with Topology() as topo:`), or `up()` / `down()`."""

    def __init__(self, workdir: Path | None = None, *, python: str = sys.executable) -> None:
        self.prefix = "kt" + secrets.token_hex(3)
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="kong-topology-", dir="/tmp"))
        self.python = python
        self.ns_client, self.ns_gw, self.ns_upstream = (f"{self.prefix}-{n}" for n in ("client", "gw", "up"))
        self.veth_client, self.veth_gw_client = f"{self.prefix}-c", f"{self.prefix}-gc"
        self.veth_gw_upstream, self.veth_upstream = f"{self.prefix}-gu", f"{self.prefix}-u"
        self._procs: list[subprocess.Popen[bytes]] = []
        self._plans = 0

    # -- lifecycle -------------------------------------------------------------------------------------
    def __enter__(self) -> Topology:
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def up(self) -> None:
        try:
            self._build_network()
            self._start_upstream()
            self._start_gateway()
        except BaseException:
            self.down()
            raise

    def down(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self._procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        self._procs.clear()
        for ns in (self.ns_client, self.ns_gw, self.ns_upstream):
            self._kill_namespace_leftovers(ns)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)

    def remove_workdir(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)

    @staticmethod
    def _kill_namespace_leftovers(ns: str) -> None:
        # Only processes inside our own namespace can be listed here, and we started all of them.
        res = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=30)
        for pid in res.stdout.split():
            with suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)

    # -- building --------------------------------------------------------------------------------------
    def _build_network(self) -> None:
        for ns in (self.ns_client, self.ns_gw, self.ns_upstream):
            _run("ip", "netns", "add", ns)
            _run("ip", "-n", ns, "link", "set", "lo", "up")
        veths = [(self.veth_client, self.ns_client, self.veth_gw_client, self.ns_gw)]
        veths.append((self.veth_gw_upstream, self.ns_gw, self.veth_upstream, self.ns_upstream))
        for dev, ns, peer, peer_ns in veths:
            _run(*f"ip link add {dev} netns {ns} type veth peer name {peer} netns {peer_ns}".split())
        plan = {
            (self.ns_client, self.veth_client): [CLIENT_V4, CLIENT2_V4, CLIENT_V6, CLIENT2_V6],
            (self.ns_gw, self.veth_gw_client): [GW_V4, GW_V6],
            (self.ns_gw, self.veth_gw_upstream): [GWU_V4, GWU_V6],
            (self.ns_upstream, self.veth_upstream): [UPSTREAM_V4, UPSTREAM_V6],
        }
        for (ns, dev), addrs in plan.items():
            for addr in addrs:
                if ":" in addr:  # nodad: a tentative address cannot be bound, and DAD takes a second or two
                    _run("ip", "-n", ns, "addr", "add", f"{addr}/64", "dev", dev, "nodad")
                else:
                    _run("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            _run("ip", "-n", ns, "link", "set", dev, "up")
        # Static neighbours: no ARP/ND on the wire, and no first call held back a second by a lost
        # neighbour solicitation (seen with IPv6 on fresh veths).
        pairs = [
            ((self.ns_client, self.veth_client), (self.ns_gw, self.veth_gw_client)),
            ((self.ns_gw, self.veth_gw_upstream), (self.ns_upstream, self.veth_upstream)),
        ]
        for a, b in pairs:
            for (ns, dev), (peer_ns, peer_dev) in ((a, b), (b, a)):
                mac = self._mac(peer_ns, peer_dev)
                for addr in plan[(peer_ns, peer_dev)]:
                    _run(*f"ip -n {ns} neigh replace {addr} lladdr {mac} dev {dev} nud permanent".split())

    @staticmethod
    def _mac(ns: str, dev: str) -> str:
        out = subprocess.run(
            ["ip", "-n", ns, "-j", "link", "show", "dev", dev],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
        mac: str = json.loads(out)[0]["address"]
        return mac

    def _spawn(self, ns: str, argv: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], **kw)
        self._procs.append(proc)
        return proc

    def _start_upstream(self) -> None:
        argv = [self.python, str(HERE / "upstream_app.py"), UPSTREAM_V4, str(UPSTREAM_PORT)]
        argv += [UPSTREAM_V6, str(UPSTREAM_PORT)]
        proc = self._spawn(self.ns_upstream, argv, stdout=subprocess.PIPE)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != b"ready":
            raise RuntimeError(f"upstream app did not start: {line!r}")

    def _gateway_conf(self) -> str:
        """The gateway's nginx.conf (subclasses add listeners, e.g. TLS)."""
        return render_nginx_conf(
            self.workdir,
            listen_v4=GW_V4,
            listen_v6=GW_V6,
            upstream_v4=UPSTREAM_V4,
            upstream_v6=UPSTREAM_V6,
            upstream_port=UPSTREAM_PORT,
            ports=self._gateway_ports(),
        )

    def _gateway_ports(self) -> tuple[GatewayPort, ...]:
        return GATEWAYS

    def _gateway_binary(self) -> str:
        return "nginx"

    def _gateway_listening(self) -> set[str]:
        """The `ss -ltn` local addresses the gateway must show before it counts as started."""
        return {f"{a}:{g.port}" for g in GATEWAYS for a in (GW_V4, f"[{GW_V6}]")}

    def _start_gateway(self) -> None:
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.workdir / "nginx-tmp" / sub).mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "nginx.conf"
        conf.write_text(self._gateway_conf())
        proc = self._spawn(
            self.ns_gw,
            [self._gateway_binary(), "-p", str(self.workdir), "-c", str(conf)],
            stderr=subprocess.DEVNULL,
        )
        want = self._gateway_listening()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                log = (self.workdir / "nginx-error.log").read_text(errors="replace")
                raise RuntimeError(f"nginx exited with {proc.returncode}: {log[-2000:]}")
            out = subprocess.run(
                ["ip", "netns", "exec", self.ns_gw, "ss", "-Hltn"], capture_output=True, text=True, timeout=10
            ).stdout
            listening = {line.split()[3] for line in out.splitlines() if len(line.split()) > 3}
            if want <= listening:
                return
            time.sleep(0.05)
        raise RuntimeError("nginx did not start listening within 10 s")

    # -- using -----------------------------------------------------------------------------------------
    @contextmanager
    def capture(self, pcap: Path, *, interface: str = "any", bpf: str = CAPTURE_FILTER) -> Iterator[Path]:
        """tcpdump inside gw for the duration of the block; `interface` is `any` or one gw veth."""
        # In immediate mode libpcap uses TPACKET_V2, whose ring slots are snaplen-sized: with the default
        # 256 KiB snaplen a 2 MiB ring holds 8 packets and `-i any` drops under a burst. 64 KiB covers
        # a GSO super-packet; 32 MiB of ring gives 512 slots.
        argv = ["tcpdump", "-i", interface, "--immediate-mode", "-U", "-n", "-s", "65535", "-B", "32768"]
        argv += ["-Z", "root", "-w", str(pcap), bpf]
        proc = self._spawn(self.ns_gw, argv, stderr=subprocess.PIPE)
        assert proc.stderr is not None
        line = b""
        for _ in range(5):  # "tcpdump: listening on ..." once the socket is live, after notices
            line += proc.stderr.readline()
            if b"listening on" in line or proc.poll() is not None:
                break
        if b"listening on" not in line:
            raise RuntimeError(f"tcpdump did not start: {line!r}")
        try:
            yield pcap
            time.sleep(0.3)  # let the last FIN/ACKs of the clients reach the capture
        finally:
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=10)
            self._procs.remove(proc)
            (self.workdir / f"{pcap.name}.tcpdump.log").write_bytes(line + err)
        dropped = re.search(rb"(\d+) packets? dropped by kernel", err)
        if dropped is None or int(dropped.group(1)):
            raise CaptureLoss(f"tcpdump lost packets: {err.decode(errors='replace').strip()}")

    def run_client(self, plan: dict[str, Any]) -> list[dict[str, Any]]:
        """Run a client plan (see client.py) inside the client namespace; returns the client's call log."""
        self._plans += 1
        plan_path = self.workdir / f"plan-{self._plans}.json"
        log_path = self.workdir / f"calls-{self._plans}.json"
        plan_path.write_text(json.dumps(plan, indent=1))
        argv = ["ip", "netns", "exec", self.ns_client, self.python, str(HERE / "client.py")]
        res = subprocess.run(
            [*argv, str(plan_path), str(log_path)], capture_output=True, text=True, timeout=120
        )
        if res.returncode != 0:
            raise RuntimeError(f"client failed ({res.returncode}): {res.stderr[-3000:]}")
        log: list[dict[str, Any]] = json.loads(log_path.read_text())
        return log

    def gw_exec(self, *argv: str) -> str:
        return subprocess.run(
            ["ip", "netns", "exec", self.ns_gw, *argv], capture_output=True, text=True, timeout=30, check=True
        ).stdout
