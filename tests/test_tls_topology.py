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

The topology files are reused unchanged: `TlsTopology` only overrides how the gateway is started.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from topology.gateway import CONSUMERS, GatewayPort, render_nginx_conf
from topology.live import live_sniffer
from topology.net import GATEWAYS, GW_V4, GW_V6, UPSTREAM_PORT, UPSTREAM_V4, UPSTREAM_V6, Topology
from topology.skips import topology_skip_reason

TLS_PORT = 8443
TLS_GATEWAY = GatewayPort("kong39tls", TLS_PORT, "orders_v4", request_id=True)
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

    def _start_gateway(self) -> None:
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.workdir / "nginx-tmp" / sub).mkdir(parents=True, exist_ok=True)
        cert, key = self.workdir / "gw-cert.pem", self.workdir / "gw-key.pem"
        subprocess.run(
            [*OPENSSL_SELF_SIGNED, "-keyout", str(key), "-out", str(cert)],
            check=True,
            capture_output=True,
            timeout=60,
        )
        text = render_nginx_conf(
            self.workdir,
            listen_v4=GW_V4,
            listen_v6=GW_V6,
            upstream_v4=UPSTREAM_V4,
            upstream_v6=UPSTREAM_V6,
            upstream_port=UPSTREAM_PORT,
            ports=(*GATEWAYS, TLS_GATEWAY),
        )
        text = re.sub(rf"(listen \S+:{TLS_PORT});", r"\1 ssl;", text)
        text = text.replace(
            "http {", f"http {{\n    ssl_certificate {cert};\n    ssl_certificate_key {key};", 1
        )
        conf = self.workdir / "nginx.conf"
        conf.write_text(text)
        proc = self._spawn(
            self.ns_gw, ["nginx", "-p", str(self.workdir), "-c", str(conf)], stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"nginx exited with {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}"
                )
            listening = self.gw_exec("ss", "-Hltn")
            if f"{GW_V4}:{TLS_PORT}" in listening and f"{GW_V4}:8000" in listening:
                return
            time.sleep(0.05)
        raise RuntimeError("nginx did not start listening within 10 s")


@pytest.fixture(scope="module")
def topo() -> Iterator[TlsTopology]:
    with TlsTopology() as t:
        yield t
    t.remove_workdir()


ALICE, BOB = CONSUMERS["alice"], CONSUMERS["bob"]
# (apikey, method, paths on one keep-alive connection, expected user); None user: no consumer
PLAN: list[tuple[str | None, str, list[str], str | None]] = [
    (ALICE.apikey, "GET", ["/api/orders/101", "/api/orders/102", "/api/orders"], ALICE.user_id),
    (BOB.apikey, "GET", ["/api/whoami", "/svc/api/orders/103"], BOB.user_id),
    (ALICE.apikey, "POST", ["/api/orders"], ALICE.user_id),
    ("key-nobody-000", "GET", ["/api/orders", "/api/orders/101"], None),  # 401 Invalid credentials
    (None, "GET", ["/api/orders"], None),  # 401 No API key found
    (ALICE.apikey, "GET", ["/no/route/here"], None),  # 404 from the gateway
    (BOB.apikey, "GET", ["/api/stream"], BOB.user_id),  # chunked from the service
]


def run_calls(topo: Topology) -> list[dict[str, Any]]:
    """Every planned call with curl over HTTPS from the client namespace: what curl saw, per call."""
    calls: list[dict[str, Any]] = []
    for apikey, method, paths, user in PLAN:
        argv = ["ip", "netns", "exec", topo.ns_client, "curl", "-sk", "--http1.1", "-X", method]
        argv += ["-w", "%{http_code} %{local_port} %{num_connects}\\n"]
        if apikey:
            argv += ["-H", f"apikey: {apikey}"]
        if method == "POST":
            argv += ["-H", "Content-Type: application/json", "--data-binary", '{"item":"tls beans","qty":1}']
        for path in paths:
            argv += ["-o", "/dev/null", f"https://{GW_V4}:{TLS_PORT}{path}"]
        out = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=60).stdout.split("\n")
        connects = 0
        for path, line in zip(paths, out, strict=False):
            status, port, n = line.split()
            connects += int(n)
            calls.append(
                {"method": method, "path": path, "status": int(status), "port": int(port), "user": user}
            )
        assert connects == 1, f"curl did not keep one connection for {paths}"
    return calls


def _tls_client_leg(event: dict[str, Any]) -> bool:
    server = event["metadata"]["capture"].get("server", "")
    return server.endswith(f":{TLS_PORT}") and (GW_V4 in server or GW_V6 in server)


@pytest.mark.timeout(90)
def test_https_calls_are_one_event_each_with_user_and_client_status(topo: TlsTopology) -> None:
    kong = f"8000,8001,{TLS_PORT}"
    with live_sniffer(
        topo,
        workers=1,
        SNIFFER_TLS="uprobe",
        SNIFFER_KONG_PORTS=kong,
        SNIFFER_PORTS=f"{kong},{UPSTREAM_PORT}",
    ) as sniffer:
        calls = run_calls(topo)
        m = sniffer.wait_metrics(lambda m: m["events"] >= len(calls), EVENTS_WAIT_S)
        status = sniffer.stop()
        events = sniffer.events()
        log_tail = sniffer.log_tail()
    mine = [e for e in events if _tls_client_leg(e)]
    statuses = Counter(c["status"] for c in calls)
    legs = Counter(e["metadata"]["capture"]["legs"] for e in mine)
    print(
        f"\n{len(calls)} HTTPS calls {dict(statuses)} -> {len(mine)} events {dict(legs)} "
        f"({len(events) - len(mine)} other events); TLS records {m.core.get('tls_records', 0):.0f}, "
        f"joined by request id {m.core.get('kong_join_request_id', 0):.0f}"
    )
    assert status == 0, log_tail
    assert "TLS capture unavailable" not in log_tail, log_tail
    assert statuses[401] == 3 and statuses[404] == 1 and statuses[200] + statuses[201] == len(calls) - 4

    # Exactly one event per call, keyed as the client saw it: path, status, its own connection's port.
    def call_key(c: dict[str, Any]) -> tuple[Any, ...]:
        return (c["method"], c["path"], c["status"], c["port"], c["user"])

    def event_key(e: dict[str, Any]) -> tuple[Any, ...]:
        uri = e["request"]["uri"]
        path = uri[uri.index("/", uri.index("//") + 2) :]
        port = int(e["metadata"]["capture"]["client"].rsplit(":", 1)[1])
        return (e["request"]["verb"], path, e["response"]["status"], port, e.get("user_id"))

    assert sorted(map(event_key, mine)) == sorted(map(call_key, calls)), log_tail
    # nothing else on the gateway's ports: no event from the encrypted 8443 packets, none left unjoined
    others = [e for e in events if not _tls_client_leg(e)]
    assert not [e for e in others if GW_V4 in str(e["metadata"]["capture"])], others
    proxied = sum(c["status"] in (200, 201) for c in calls)
    assert legs == {"client+upstream": proxied, "client": len(calls) - proxied}
    assert m.core.get("tls_records", 0) > 0 and m.core.get("drop_tls_ring_full", 0) == 0
