"""Real traffic through nginx over a lossy link, captured twice: the realnet scenario.

`run_scenario(workdir)` builds the namespaces (netns.py), starts the lossy relay (relay.py), the
upstream app (upstream.py) and nginx in the proxy namespace, then drives real clients from the client
namespace while tcpdump records the proxy's client-facing veth:

1. capture `full.pcap` starts; the raw client (rawclient.py) opens its keep-alive connections (IPv4
   and IPv6) and makes its phase-1 calls; curl runs its phase-1 invocations (keep-alive, several URLs
   each, IPv6, gzip, HEAD, 304, 100-continue POST);
2. capture `mid.pcap` starts only now, on connections that are already established and in use;
3. the raw client makes its phase-2 calls on the same connections (pipelined batches, HEAD then GET,
   100-continue) and curl runs its phase-2 invocations.

A third capture, `client.pcap`, records the client's veth for the whole run: there the responses arrive
after the relay, so the capture itself has holes (dropped segments, later retransmitted), reordering and
duplicates, where the proxy-side capture mostly sees retransmissions of bytes it already has.

Every call is logged by the client that made it (calls.jsonl: method, path, status, decoded body);
that log is the ground truth. Everything started is stopped and the namespaces are deleted on the way
out, also on failure. Run as a script (`python scenario.py WORKDIR`) to keep the files for a look with
tshark.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from realnet.netns import Topology, run  # works both as a module and as a script

__all__ = ["REQUIRED_TOOLS", "ScenarioResult", "run_scenario"]

HERE = Path(__file__).resolve().parent
PORT = 8080
UPSTREAM_PORT = 9000
REQUIRED_TOOLS = ("ip", "nginx", "tcpdump", "curl")
ETAG = '"realnet-v1"'

NGINX_CONF = """
daemon off;
master_process on;
worker_processes 1;
user root;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/tmp_body;
    proxy_temp_path {dir}/tmp_proxy;
    fastcgi_temp_path {dir}/tmp_fcgi;
    uwsgi_temp_path {dir}/tmp_uwsgi;
    scgi_temp_path {dir}/tmp_scgi;
    keepalive_timeout 60s;
    keepalive_requests 1000;
    gzip on;
    gzip_types application/json;
    gzip_proxied any;
    gzip_min_length 256;
    upstream app {{
        server 127.0.0.1:{upstream_port};
        keepalive 8;
    }}
    server {{
        listen {v4}:{port};
        listen [{v6}]:{port};
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
        }}
    }}
}}
"""


@dataclass
class ScenarioResult:
    workdir: Path
    full_pcap: Path  # proxy side of the lossy link, from before the first call
    mid_pcap: Path  # proxy side, started while keep-alive connections were open
    client_pcap: Path  # client side, from before the first call: sees the losses as holes
    calls: list[dict[str, Any]]
    relay: dict[str, int]
    tcpdump: dict[str, str] = field(default_factory=dict)


def _echo_body(call_id: str, size: int) -> str:
    """A JSON request body of about `size` bytes that names its call."""
    items = []
    i = 0
    while len(json.dumps({"call": call_id, "items": items})) < size:
        items.append({"n": i, "word": f"w{i:04d}", "flag": i % 2 == 0})
        i += 1
    return json.dumps({"call": call_id, "items": items})


def _raw_plan(topo: Topology) -> dict[str, Any]:
    def req(call_id: str, method: str, path: str, **kw: Any) -> dict[str, Any]:
        sep = "&" if "?" in path else "?"
        return {"id": call_id, "method": method, "path": f"{path}{sep}call={call_id}", **kw}

    gz = {"Accept-Encoding": "gzip"}
    inm = {"If-None-Match": ETAG}
    post = {"Content-Type": "application/json"}
    c1 = [  # IPv4: pipelines, HEAD before GET, 204/304, a pipelined POST
        {
            "phase": 1,
            "requests": [
                req("r1-01", "GET", "/api/small"),
                req("r1-02", "HEAD", "/api/small"),
                req("r1-03", "GET", "/api/medium"),
            ],
        },
        {"phase": 1, "requests": [req("r1-04", "GET", "/api/etag")]},
        {
            "phase": 2,
            "requests": [
                req("r1-05", "HEAD", "/api/medium"),
                req("r1-06", "GET", "/api/medium"),
                req("r1-07", "GET", "/api/chunked"),
                req("r1-08", "POST", "/api/echo", headers=post, body=_echo_body("r1-08", 600)),
            ],
        },
        {
            "phase": 2,
            "requests": [
                req("r1-09", "GET", "/api/etag", headers=inm),
                req("r1-10", "GET", "/api/nothing"),
                req("r1-11", "GET", "/api/small"),
            ],
        },
        {"phase": 2, "requests": [req("r1-12", "GET", "/api/large")]},
    ]
    c2 = [  # IPv6: gzip, large bodies, 100-continue
        {"phase": 1, "requests": [req("r2-01", "GET", "/api/small")]},
        {
            "phase": 2,
            "requests": [
                req("r2-02", "GET", "/api/large"),
                req("r2-03", "HEAD", "/api/large"),
                req("r2-04", "GET", "/api/gzip", headers=gz),
            ],
        },
        {
            "phase": 2,
            "requests": [
                req(
                    "r2-05",
                    "POST",
                    "/api/echo",
                    headers=post,
                    body=_echo_body("r2-05", 4000),
                    expect_continue=True,
                )
            ],
        },
        {
            "phase": 2,
            "requests": [
                req("r2-06", "GET", "/api/chunked", headers=gz),
                req("r2-07", "HEAD", "/api/chunked"),
                req("r2-08", "GET", "/api/etag"),
            ],
        },
    ]
    c3 = [  # IPv4: a connection idle during the mid-stream start, then a burst
        {"phase": 1, "requests": [req("r3-01", "GET", "/api/medium", headers=gz)]},
        {"phase": 2, "requests": [req(f"r3-{i:02d}", "GET", "/api/small") for i in range(2, 8)]},
        {
            "phase": 2,
            "requests": [
                req(
                    "r3-08",
                    "POST",
                    "/api/echo",
                    headers=post,
                    body=_echo_body("r3-08", 20000),
                    expect_continue=True,
                )
            ],
        },
    ]
    conns = [("c1", 4, topo.proxy_v4, c1), ("c2", 6, topo.proxy_v6, c2), ("c3", 4, topo.proxy_v4, c3)]
    return {
        "connections": [{"name": n, "family": f, "host": h, "port": PORT, "steps": s} for n, f, h, s in conns]
    }


def _curl_plan() -> list[dict[str, Any]]:
    """curl invocations: each reuses one keep-alive connection for all of its URLs."""
    inm = ["-H", f"If-None-Match: {ETAG}"]
    json_ct = ["-H", "Content-Type: application/json"]
    return [
        {
            "phase": 1,
            "family": 4,
            "args": [],
            "calls": [
                ("k1-1", "GET", "/api/small"),
                ("k1-2", "GET", "/api/medium"),
                ("k1-3", "GET", "/api/chunked"),
                ("k1-4", "GET", "/api/nothing"),
                ("k1-5", "GET", "/api/large"),
            ],
        },
        {
            "phase": 1,
            "family": 6,
            "args": ["--compressed"],
            "calls": [
                ("k2-1", "GET", "/api/gzip"),
                ("k2-2", "GET", "/api/medium"),
                ("k2-3", "GET", "/api/small"),
            ],
        },
        {"phase": 1, "family": 4, "args": ["-I"], "calls": [("k3-1", "HEAD", "/api/medium")]},
        {
            "phase": 1,
            "family": 6,
            "args": ["-H", "Expect: 100-continue", *json_ct],
            "body": 3000,
            "calls": [("k4-1", "POST", "/api/echo")],
        },
        {
            "phase": 2,
            "family": 6,
            "args": [],
            "calls": [
                ("k5-1", "GET", "/api/large"),
                ("k5-2", "GET", "/api/chunked"),
                ("k5-3", "GET", "/api/etag"),
            ],
        },
        {
            "phase": 2,
            "family": 4,
            "args": inm,
            "calls": [("k6-1", "GET", "/api/etag"), ("k6-2", "GET", "/api/etag")],
        },
        {
            "phase": 2,
            "family": 4,
            "args": ["-H", "Expect: 100-continue", *json_ct],
            "body": 9000,
            "calls": [("k7-1", "POST", "/api/echo")],
        },
        {
            "phase": 2,
            "family": 4,
            "args": ["--compressed"],
            "calls": [
                ("k8-1", "GET", "/api/chunked"),
                ("k8-2", "GET", "/api/large"),
                ("k8-3", "GET", "/api/nothing"),
            ],
        },
        {"phase": 2, "family": 6, "args": ["-I"], "calls": [("k9-1", "HEAD", "/api/gzip")]},
    ]


class _Procs:
    """Every process the scenario starts, stopped in reverse order on the way out."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, args: list[str], **kw: Any) -> subprocess.Popen[str]:
        proc = subprocess.Popen(args, text=True, **kw)
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[str], sig_int: bool = False, timeout: float = 5.0) -> None:
        if proc.poll() is None:
            if sig_int:
                proc.send_signal(2)
            else:
                proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            self.stop(proc, timeout=2.0)


def _readline_until(proc: subprocess.Popen[str], stream: Any, marker: str, deadline_s: float) -> str:
    end = time.monotonic() + deadline_s
    seen = []
    while time.monotonic() < end:
        line = stream.readline()
        if not line:
            break
        seen.append(line)
        if marker in line:
            return "".join(seen)
    raise RuntimeError(f"{proc.args!r}: no {marker!r} (exit {proc.poll()}): {''.join(seen)[-500:]}")


def _start_tcpdump(
    procs: _Procs, topo: Topology, path: Path, client_side: bool = False
) -> subprocess.Popen[str]:
    ns, ifname = (topo.client, topo.client_if) if client_side else (topo.proxy, topo.proxy_if)
    proc = procs.start(
        [
            *topo.exec_args(ns),
            "tcpdump",
            "-i",
            ifname,
            "-n",
            "-Z",
            "root",
            "--immediate-mode",
            "-U",
            "-s",
            "0",
            "-w",
            str(path),
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
    )
    assert proc.stderr is not None
    _readline_until(proc, proc.stderr, "listening on", 10.0)
    return proc


def _stop_tcpdump(procs: _Procs, proc: subprocess.Popen[str]) -> str:
    procs.stop(proc, sig_int=True)
    assert proc.stderr is not None
    return proc.stderr.read().strip()


def _curl(topo: Topology, inv: dict[str, Any], work: Path) -> list[dict[str, Any]]:
    host = f"[{topo.proxy_v6}]" if inv["family"] == 6 else topo.proxy_v4
    body_dir = work / "bodies"
    args = [
        *topo.exec_args(topo.client),
        "curl",
        "-sS",
        "-g",
        "--max-time",
        "30",
        f"-{inv['family']}",
        *inv["args"],
        "-w",
        "%{json}\n",
    ]
    request_body = None
    if "body" in inv:
        request_body = _echo_body(inv["calls"][0][0], inv["body"])
        (work / f"{inv['calls'][0][0]}.req").write_text(request_body)
        args += ["--data-binary", f"@{work / inv['calls'][0][0]}.req"]
    for call_id, _method, path in inv["calls"]:
        args += [f"http://{host}:{PORT}{path}?call={call_id}", "-o", str(body_dir / call_id)]
    started = time.time()
    out = run(*args).stdout
    results = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert len(results) == len(inv["calls"]), out
    entries = []
    for (call_id, method, path), res in zip(inv["calls"], results, strict=True):
        body_file = body_dir / call_id
        if method == "HEAD" or not body_file.exists():
            body_file.write_bytes(b"")  # curl -I writes the headers there; no file for an empty body
        entries.append(
            {
                "id": call_id,
                "client": "curl",
                "family": inv["family"],
                "phase": inv["phase"],
                "local_port": res.get("local_port"),
                "num_connects": res.get("num_connects"),
                "pipelined": False,
                "compressed": "--compressed" in inv["args"],
                "method": res.get("method", method),
                "path": f"{path}?call={call_id}",
                "request_body": request_body,
                "status": res["response_code"],
                "interim": [],
                "content_type": res.get("content_type") or "",
                "body_len": body_file.stat().st_size,
                "body_file": str(body_file),
                "started": started,
            }
        )
    return entries


def run_scenario(
    workdir: Path, drop: float = 0.03, reorder: float = 0.04, dup: float = 0.02, seed: int | None = None
) -> ScenarioResult:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "bodies").mkdir(exist_ok=True)
    topo = Topology()
    procs = _Procs()
    tcpdump_out: dict[str, str] = {}
    calls: list[dict[str, Any]] = []
    relay_counts: dict[str, int] = {}
    try:
        topo.up()
        relay_args = [
            *topo.exec_args(topo.relay),
            sys.executable,
            str(HERE / "relay.py"),
            topo.relay_client_if,
            topo.relay_proxy_if,
            "--drop",
            str(drop),
            "--reorder",
            str(reorder),
            "--dup",
            str(dup),
        ]
        if seed is not None:
            relay_args += ["--seed", str(seed)]
        relay = procs.start(relay_args, stdout=subprocess.PIPE)
        assert relay.stdout is not None
        _readline_until(relay, relay.stdout, "READY", 10.0)
        upstream = procs.start(
            [
                *topo.exec_args(topo.proxy),
                sys.executable,
                str(HERE / "upstream.py"),
                "127.0.0.1",
                str(UPSTREAM_PORT),
            ],
            stdout=subprocess.PIPE,
        )
        assert upstream.stdout is not None
        _readline_until(upstream, upstream.stdout, "READY", 10.0)
        ngx = workdir / "nginx"
        ngx.mkdir(exist_ok=True)
        (ngx / "nginx.conf").write_text(
            NGINX_CONF.format(
                dir=ngx, port=PORT, upstream_port=UPSTREAM_PORT, v4=topo.proxy_v4, v6=topo.proxy_v6
            )
        )
        procs.start(
            [
                *topo.exec_args(topo.proxy),
                "nginx",
                "-p",
                str(ngx),
                "-c",
                str(ngx / "nginx.conf"),
                "-e",
                str(ngx / "error.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_ready(topo)

        full_pcap, mid_pcap = workdir / "full.pcap", workdir / "mid.pcap"
        client_pcap = workdir / "client.pcap"
        td_full = _start_tcpdump(procs, topo, full_pcap)
        td_client = _start_tcpdump(procs, topo, client_pcap, client_side=True)
        plan = workdir / "raw_plan.json"
        plan.write_text(json.dumps(_raw_plan(topo)))
        raw_log = workdir / "raw_calls.jsonl"
        raw = procs.start(
            [
                *topo.exec_args(topo.client),
                sys.executable,
                str(HERE / "rawclient.py"),
                str(plan),
                str(raw_log),
                str(workdir / "bodies"),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert raw.stdout is not None and raw.stdin is not None
        _readline_until(raw, raw.stdout, "PAUSED", 30.0)
        curl_plan = _curl_plan()
        for inv in curl_plan:
            if inv["phase"] == 1:
                calls += _curl(topo, inv, workdir)

        td_mid = _start_tcpdump(procs, topo, mid_pcap)
        raw.stdin.write("GO\n")
        raw.stdin.flush()
        for inv in curl_plan:
            if inv["phase"] == 2:
                calls += _curl(topo, inv, workdir)
        _readline_until(raw, raw.stdout, "DONE", 45.0)
        raw.wait(10)
        calls += [json.loads(line) for line in raw_log.read_text().splitlines()]
        time.sleep(0.5)  # let the last FIN/ACK exchanges and retransmissions reach the captures
        tcpdump_out["mid"] = _stop_tcpdump(procs, td_mid)
        tcpdump_out["full"] = _stop_tcpdump(procs, td_full)
        tcpdump_out["client"] = _stop_tcpdump(procs, td_client)
        procs.stop(relay)
        out = relay.stdout.read().strip().splitlines()
        relay_counts = json.loads(out[-1]) if out else {}
        (workdir / "calls.jsonl").write_text("".join(json.dumps(c) + "\n" for c in calls))
        (workdir / "relay.json").write_text(json.dumps(relay_counts))
        return ScenarioResult(workdir, full_pcap, mid_pcap, client_pcap, calls, relay_counts, tcpdump_out)
    finally:
        procs.stop_all()
        topo.down()


def _wait_ready(topo: Topology) -> None:
    """nginx and the relay both answer: a warm-up call (before any capture) through the whole path."""
    url = f"http://{topo.proxy_v4}:{PORT}/api/small?call=warmup"
    for _ in range(50):
        res = run(
            *topo.exec_args(topo.client),
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "2",
            url,
            check=False,
        )
        if res.stdout == "200":
            return
        time.sleep(0.1)
    raise RuntimeError(f"nginx not reachable through the relay: {res.stdout!r} {res.stderr!r}")


def tools_missing() -> list[str]:
    return [t for t in REQUIRED_TOOLS if shutil.which(t) is None]


if __name__ == "__main__":
    result = run_scenario(Path(sys.argv[1]).resolve())
    print(
        json.dumps({"relay": result.relay, "tcpdump": result.tcpdump, "calls": len(result.calls)}, indent=1)
    )
