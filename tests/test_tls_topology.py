"""HTTPS through the gateway, end to end (root only): `moesif-sniffer run` with SNIFFER_TLS=uprobe.

The netns topology (tests/topology) with one more listener on the nginx-as-Kong gateway: 8443 with TLS
(a self-signed certificate made here by openssl), the same routes, consumers and 401s as port 8000,
proxying to the same plaintext upstream on 9000. curl clients in the client namespace call it over HTTPS
with valid apikeys (200, the gateway adds X-Consumer-* on the upstream leg), invalid or missing ones
(401 that nginx answers itself, over TLS) and an unknown route (404, also the gateway's own).

The daemon runs in gw, capturing packets on 8000/8001/8443/9000 (so it also sees 8443's encrypted bytes)
and the plaintext of nginx's SSL calls through the uprobes. Held against what curl saw: every call is
exactly one event, with the user the Kong plugin would report (from the upstream leg's X-Consumer-*
headers, so the TLS client leg and the packet-captured upstream leg were joined) and the client-side
status; the encrypted 8443 packets add nothing.

A second TLS listener, 8444, sends no X-Kong-Request-Id (like Kong < 3.5): its legs are joined by timing
alone, which only works when the probes' monotonic timestamps were converted right to capture time.
The topology files are reused unchanged: `TlsTopology` only overrides how the gateway is started.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from topology.gateway import CONSUMERS, GatewayPort
from topology.live import LiveSniffer, live_sniffer
from topology.net import GATEWAYS, GW_V4, UPSTREAM_PORT, Topology
from topology.skips import topology_skip_reason

TLS_PORT = 8443
TLS_PORT_NO_ID = 8444  # like Kong < 3.5: no X-Kong-Request-Id, so the legs are joined by timing alone
TLS_GATEWAYS = (
    GatewayPort("kong39tls", TLS_PORT, "orders_v4", request_id=True),
    GatewayPort("kong34tls", TLS_PORT_NO_ID, "orders_v6", request_id=False),
)
KONG_PORTS = f"8000,8001,{TLS_PORT},{TLS_PORT_NO_ID}"
EVENTS_WAIT_S = 20.0
OPENSSL_SELF_SIGNED = (
    "openssl",
    "req",
    "-x509",
    "-newkey",
    "rsa:2048",
    "-nodes",
    "-days",
    "2",
    "-subj",
    "/CN=gw",
)


def _skip_reason() -> str | None:
    reason = topology_skip_reason()
    if reason is not None:
        return reason
    if shutil.which("openssl") is None:
        return "the TLS topology needs openssl (apt-get install openssl)"
    if platform.machine() != "x86_64":
        return f"the TLS uprobes are x86_64 only, this is {platform.machine()}"
    if not os.path.exists("/sys/bus/event_source/devices/uprobe"):
        return "the kernel has no uprobe PMU (/sys/bus/event_source/devices/uprobe)"
    return None


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))


class TlsTopology(Topology):
    """The topology, its gateway also listening on 8443 with TLS."""

    @property
    def comm(self) -> str:
        return f"tlsgw{self.prefix}"  # at most 15 characters, the kernel's comm length

    def _gateway_conf(self) -> str:
        cert, key = self.workdir / "gw-cert.pem", self.workdir / "gw-key.pem"
        subprocess.run(
            [*OPENSSL_SELF_SIGNED, "-keyout", str(key), "-out", str(cert)],
            check=True,
            capture_output=True,
            timeout=60,
        )
        text = super()._gateway_conf()
        text = re.sub(rf"(listen \S+:(?:{TLS_PORT}|{TLS_PORT_NO_ID}));", r"\1 ssl;", text)
        return text.replace(
            "http {", f"http {{\n    ssl_certificate {cert};\n    ssl_certificate_key {key};", 1
        )

    def _gateway_ports(self) -> tuple[GatewayPort, ...]:
        return (*GATEWAYS, *TLS_GATEWAYS)

    def _gateway_binary(self) -> str:
        # The gateway runs as its own command name, so the daemon watches it and no other nginx on
        # this machine (SNIFFER_TLS_PROCESS matches the comm; the copy maps the same libssl).
        binary = self.workdir / "bin" / self.comm
        binary.parent.mkdir(exist_ok=True)
        shutil.copy2(shutil.which("nginx") or "/usr/sbin/nginx", binary)
        return str(binary)

    def _gateway_listening(self) -> set[str]:
        return {f"{GW_V4}:{p}" for p in (8000, TLS_PORT, TLS_PORT_NO_ID)}


@pytest.fixture(scope="module")
def topo() -> Iterator[TlsTopology]:
    with TlsTopology() as t:
        yield t
    t.remove_workdir()


ALICE, BOB = CONSUMERS["alice"], CONSUMERS["bob"]
Connection = tuple[int, str | None, str, list[str], str | None]
# (gateway port, apikey, method, paths on one keep-alive connection, expected user); None: no consumer
PLAN: list[Connection] = [
    (TLS_PORT, ALICE.apikey, "GET", ["/api/orders/101", "/api/orders/102", "/api/orders"], ALICE.user_id),
    (TLS_PORT, BOB.apikey, "GET", ["/api/whoami", "/svc/api/orders/103"], BOB.user_id),
    (TLS_PORT, ALICE.apikey, "POST", ["/api/orders"], ALICE.user_id),
    (TLS_PORT, "key-nobody-000", "GET", ["/api/orders", "/api/orders/101"], None),  # 401 invalid key
    (TLS_PORT, None, "GET", ["/api/orders"], None),  # 401 no API key
    (TLS_PORT, ALICE.apikey, "GET", ["/no/route/here"], None),  # 404 from the gateway
    (TLS_PORT, BOB.apikey, "GET", ["/api/stream"], BOB.user_id),  # chunked from the service
    (TLS_PORT_NO_ID, ALICE.apikey, "GET", ["/api/orders/104", "/api/whoami"], ALICE.user_id),
    (TLS_PORT_NO_ID, "key-nobody-000", "GET", ["/api/orders"], None),
]
# then 8 connections at once, 5 calls each, over both TLS ports and both consumers
BURST: list[Connection] = [
    (
        (TLS_PORT, TLS_PORT_NO_ID)[i % 2],
        (ALICE, BOB)[i // 2 % 2].apikey,
        "GET",
        [f"/api/orders/{101 + (i + j) % 6}" for j in range(5)],
        (ALICE, BOB)[i // 2 % 2].user_id,
    )
    for i in range(8)
]


def run_calls(topo: Topology, plan: list[Connection]) -> list[dict[str, Any]]:
    """Every connection of `plan` at once, each one curl process over HTTPS from the client namespace:
    what curl saw, per call."""
    with ThreadPoolExecutor(len(plan)) as pool:
        return [c for calls in pool.map(lambda conn: _curl(topo, *conn), plan) for c in calls]


def _curl(
    topo: Topology, port: int, apikey: str | None, method: str, paths: list[str], user: str | None
) -> list[dict[str, Any]]:
    argv = ["ip", "netns", "exec", topo.ns_client, "curl", "-sk", "--http1.1", "-X", method]
    argv += ["-w", "%{http_code} %{local_port} %{num_connects}\\n"]
    if apikey:
        argv += ["-H", f"apikey: {apikey}"]
    if method == "POST":
        argv += ["-H", "Content-Type: application/json", "--data-binary", '{"item":"tls beans","qty":1}']
    for path in paths:
        argv += ["-o", "/dev/null", f"https://{GW_V4}:{port}{path}"]
    out = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=60).stdout.split("\n")
    calls, connects = [], 0
    for path, line in zip(paths, out, strict=False):
        status, local, n = line.split()
        connects += int(n)
        calls.append(
            {
                "method": method,
                "path": path,
                "status": int(status),
                "gw": port,
                "port": int(local),
                "user": user,
            }
        )
    assert connects == 1, f"curl did not keep one connection for {paths}"
    return calls


def _tls_client_leg(event: dict[str, Any]) -> bool:
    server = event["metadata"]["capture"].get("server", "")
    return server in (f"{GW_V4}:{TLS_PORT}", f"{GW_V4}:{TLS_PORT_NO_ID}")


def call_key(c: dict[str, Any]) -> tuple[Any, ...]:
    """A call as the client saw it: gateway port, its own connection's port, path, status; the user."""
    return (c["method"], c["path"], c["status"], c["gw"], c["port"], c["user"])


def event_key(e: dict[str, Any]) -> tuple[Any, ...]:
    uri = e["request"]["uri"]
    path = uri[uri.index("/", uri.index("//") + 2) :]
    capture = e["metadata"]["capture"]
    gw, port = (int(capture[k].rsplit(":", 1)[1]) for k in ("server", "client"))
    return (e["request"]["verb"], path, e["response"]["status"], gw, port, e.get("user_id"))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("workers", [1, 2], ids=["1-worker", "2-workers"])
def test_https_calls_are_one_event_each_with_user_and_client_status(topo: TlsTopology, workers: int) -> None:
    with live_sniffer(
        topo,
        workers=workers,
        SNIFFER_TLS="uprobe",
        SNIFFER_TLS_PROCESS=topo.comm,
        SNIFFER_KONG_PORTS=KONG_PORTS,
        SNIFFER_PORTS=f"{KONG_PORTS},{UPSTREAM_PORT}",
    ) as sniffer:
        calls = run_calls(topo, PLAN) + run_calls(topo, BURST)
        check_one_event_per_call(sniffer, calls, f"{workers} worker(s)")


def check_one_event_per_call(sniffer: LiveSniffer, calls: list[dict[str, Any]], what: str) -> None:
    """Stop the daemon and hold its events and metrics against the calls (see the module docstring)."""
    m = sniffer.wait_metrics(lambda m: m["events"] >= len(calls), EVENTS_WAIT_S)
    status = sniffer.stop()
    events = sniffer.events()
    log_tail = sniffer.log_tail()
    mine = [e for e in events if _tls_client_leg(e)]
    statuses = Counter(c["status"] for c in calls)
    legs = Counter(e["metadata"]["capture"]["legs"] for e in mine)
    proxied = [c for c in calls if c["status"] in (200, 201)]
    sockets = {k.removeprefix("tls_socket_"): int(v) for k, v in m.core.items() if k.startswith("tls_socket")}
    print(
        f"\n{what}: {len(calls)} HTTPS calls {dict(statuses)} -> {len(mine)} events {dict(legs)} "
        f"({len(events) - len(mine)} other events); TLS records {m['tls_records']:.0f}, joined by request id "
        f"{m.core.get('kong_join_request_id', 0):.0f}, by timing {m.core.get('kong_join_timing', 0):.0f}; "
        f"sockets {sockets}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    assert status == 0, log_tail
    assert "TLS capture unavailable" not in log_tail, log_tail
    assert statuses[401] == 4 and statuses[404] == 1 and len(proxied) == len(calls) - 5

    # Exactly one event per call, with the user the plugin would report and the status the client saw.
    got, want = Counter(map(event_key, mine)), Counter(map(call_key, calls))
    assert m["tls_records"] >= 2 * len(calls)
    assert m["tls_ring_full_drops"] == m["tls_rate_limited"] == m["tls_truncated_bytes"] == 0
    # The TLS tap's client legs and the packets' upstream legs reached the joiner in capture-time order
    # (`capture.time_merge`): none still held once every call's event was out.
    assert m["legs_held_for_order"] == 0
    # Never another connection's addresses: every event with the gateway's address is a call as made.
    others = [(e["request"]["uri"], e["metadata"]["capture"]) for e in events if not _tls_client_leg(e)]
    assert not got - want, (sorted((got - want).elements()), others, log_tail)
    # Every connection's addresses were read in the kernel at SSL_set_fd: none had to be looked up in
    # /proc after the fact (a race short connections lost under load), so none lacks the client's address.
    connections = len({(c["gw"], c["port"]) for c in calls})
    assert sockets.get("from_kernel", 0) == connections, sockets
    assert not {k: v for k, v in sockets.items() if k != "from_kernel"}, sockets
    assert got == want
    # Nothing else about the gateway: no event from the encrypted 8443 packets, no leg left unjoined.
    assert [e["metadata"]["capture"] for e in events if not _tls_client_leg(e)] == []
    assert legs == {"client+upstream": len(proxied), "client": len(calls) - len(proxied)}
    assert m.core.get("kong_join_request_id", 0) == sum(c["gw"] == TLS_PORT for c in proxied)
    assert m.core.get("kong_join_timing", 0) == sum(c["gw"] == TLS_PORT_NO_ID for c in proxied)


@pytest.mark.timeout(90)
def test_without_bpf_privileges_the_daemon_says_so_once_and_captures_packets(topo: TlsTopology) -> None:
    """The same daemon without CAP_BPF/CAP_PERFMON/CAP_SYS_ADMIN (NET_RAW kept): one log line saying why,
    then plaintext calls are still reported, HTTPS calls are not (only their encrypted bytes are seen)."""
    wrapper = topo.workdir / "python-without-bpf"
    wrapper.write_text(
        "#!/bin/sh\nexec setpriv --bounding-set -bpf,-perfmon,-sys_admin --inh-caps=-all "
        f'{sys.executable} "$@"\n'
    )
    wrapper.chmod(0o755)
    with live_sniffer(
        topo,
        workers=1,
        python=str(wrapper),
        SNIFFER_TLS="uprobe",
        SNIFFER_TLS_PROCESS=topo.comm,
        SNIFFER_KONG_PORTS=KONG_PORTS,
        SNIFFER_PORTS=f"{KONG_PORTS},{UPSTREAM_PORT}",
    ) as sniffer:
        https = run_calls(topo, PLAN[:1])
        argv = ["ip", "netns", "exec", topo.ns_client, "curl", "-s", "-w", "%{http_code}\\n"]
        argv += ["-H", f"apikey: {ALICE.apikey}"]
        for path in ("/api/orders/101", "/api/orders/102"):
            argv += ["-o", "/dev/null", f"http://{GW_V4}:8000{path}"]
        codes = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=30).stdout.split()
        sniffer.wait_metrics(lambda m: m["events"] >= len(codes), EVENTS_WAIT_S)
        status = sniffer.stop()
        events = sniffer.events()
        records = sniffer.log_records()
    assert status == 0
    unavailable = [r for r in records if "TLS capture unavailable" in r.get("message", "")]
    assert len(unavailable) == 1 and unavailable[0]["level"] == "warning", records
    assert "carrying on with packet capture only" in unavailable[0]["message"]
    assert codes == ["200", "200"] and [c["status"] for c in https] == [200] * len(https)
    # plaintext calls: both legs joined; HTTPS calls: only their plaintext upstream leg was seen
    legs = sorted((e["metadata"]["capture"]["legs"], e["request"]["uri"].split(":", 2)[2]) for e in events)
    want = [("client+upstream", "8000/api/orders/101"), ("client+upstream", "8000/api/orders/102")]
    want += [("upstream", f"{TLS_PORT}{c['path']}") for c in https]  # the URL the client used
    assert legs == sorted(want), legs
    assert all(e["user_id"] == ALICE.user_id for e in events)
