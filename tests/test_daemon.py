"""`moesif-sniffer run` as a real process capturing real loopback traffic: live capture equals the replay
of tcpdump's pcap of the same packets, SIGTERM drains and flushes (JSON lines and the Moesif sender),
two fanout workers report every call once, privileges are dropped after start, and under pressure (a
tiny ring flooded with uploads) the daemon sheds load, unless SNIFFER_SHED is off."""

from __future__ import annotations

import calendar
import http.client
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="live capture needs root (CAP_NET_RAW)")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from collector import APP_ID, running_collector  # noqa: E402

NEEDS_CURL = pytest.mark.skipif(not shutil.which("curl"), reason="curl not installed")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._answer(json.dumps({"path": self.path}).encode())

    def do_POST(self) -> None:
        n = int(self.headers.get("Content-Length", "0"))
        self._answer(self.rfile.read(n))

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def http_server() -> Iterator[int]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield int(httpd.server_address[1])
    finally:
        httpd.shutdown()
        httpd.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    metrics: str
    out: Path
    err: Path

    def stop(self, timeout: float = 20.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.out.read_bytes().splitlines()]

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.metrics + path, timeout=3) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()


def daemon_env(port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MOESIF_", "SNIFFER_"))}
    env.update(SNIFFER_INTERFACE="lo", SNIFFER_PORTS=str(port), SNIFFER_KONG_PORTS="")
    env.update(extra)
    return env


@contextmanager
def running_daemon(
    tmp: Path, port: int, *args: str, wrap: tuple[str, ...] = (), **extra: str
) -> Iterator[Daemon]:
    mport = free_port()
    out, err = tmp / "events.jsonl", tmp / "daemon.log"
    extra.setdefault("SNIFFER_METRICS_ADDR", f"127.0.0.1:{mport}")
    by_log = not extra["SNIFFER_METRICS_ADDR"]  # no endpoint: ready once the log says so
    env = daemon_env(port, **extra)
    cmd = [*wrap, sys.executable, "-m", "sniffer", "run", "--output", str(out), *args]
    with open(err, "wb") as errf:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=errf, cwd=tmp)
    d = Daemon(proc, f"http://127.0.0.1:{mport}", out, err)
    try:
        deadline = time.monotonic() + 15
        while True:
            assert proc.poll() is None, err.read_text()
            if by_log:
                if err.exists() and "capturing on" in err.read_text():
                    break
            elif _listening(mport) and _ready(d):
                break
            assert time.monotonic() < deadline, "daemon not ready: " + err.read_text()
            time.sleep(0.05)
        yield d
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def _ready(d: Daemon) -> bool:
    """/readyz answers 200. A probe that times out is not an answer yet: a daemon started at
    SNIFFER_CPU_PRIORITY=idle gets no CPU while anything else on the machine wants it."""
    try:
        return d.get("/readyz")[0] == 200
    except (TimeoutError, urllib.error.URLError):  # a connect that timed out comes as URLError
        return False


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def curl(*args: str) -> None:
    subprocess.run(["curl", "-sS", "-o", "/dev/null", *args], check=True, timeout=10)


def calls(port: int) -> int:
    """A mix of real client traffic; returns how many calls it made."""
    base = f"http://127.0.0.1:{port}"
    for i in range(3):
        curl(f"{base}/single?i={i}")
    curl("-o", "/dev/null", f"{base}/keepalive/a", f"{base}/keepalive/b")  # one connection, two calls
    curl("-H", "Content-Type: application/json", "-d", '{"hello": "world"}', f"{base}/post")
    curl("-H", f"X-Moesif-Transaction-Id: {uuid.UUID(int=42)}", f"{base}/with-id")
    return 7


# Two sockets' reads of the clock for one packet: usually < 1 us apart, more when the softirq is preempted.


def _ms(iso: str) -> int:
    head, _, frac = iso.rstrip("Z").partition(".")
    return calendar.timegm(time.strptime(head, "%Y-%m-%dT%H:%M:%S")) * 1000 + int(frac)


@NEEDS_CURL
@pytest.mark.skipif(not shutil.which("tcpdump"), reason="tcpdump not installed")
def test_live_capture_gives_the_events_of_a_replay_of_tcpdumps_pcap(tmp_path: Path) -> None:
    pcap = tmp_path / "same.pcap"
    with http_server() as port, running_daemon(tmp_path, port, SNIFFER_WORKERS="1") as d:
        tcpdump = subprocess.Popen(
            ["tcpdump", "-i", "lo", "-U", "--immediate-mode", "-w", str(pcap), f"tcp port {port}"],
            stderr=subprocess.PIPE,
        )
        try:
            assert tcpdump.stderr is not None
            assert b"listening on lo" in tcpdump.stderr.readline()
            made = calls(port)
            time.sleep(0.3)
        finally:
            tcpdump.send_signal(signal.SIGINT)
            tcpdump.wait(10)
        assert d.stop() == 0
        live = d.events()
    replayed_out = tmp_path / "replay.jsonl"
    env = daemon_env(port)
    subprocess.run(
        [sys.executable, "-m", "sniffer", "replay", "-q", str(pcap), "-o", str(replayed_out)],
        env=env,
        check=True,
        timeout=30,
    )
    replayed = [json.loads(line) for line in replayed_out.read_bytes().splitlines()]
    assert len(live) == len(replayed) == made
    for a, b in zip(live, replayed, strict=True):
        times = [(x["request"].pop("time"), x["response"].pop("time")) for x in (a, b)]
        # Every field is identical, the transaction id included (it hashes the request's second, not
        # the microsecond: tcpdump's socket and ours read the kernel clock separately for loopback
        # packets, ~1 us apart).
        assert a == b
        if a["request"]["uri"].endswith("/with-id"):  # the client's own id wins
            assert a["transaction_id"] == str(uuid.UUID(int=42))
        for ta, tb in zip(times[0], times[1], strict=True):  # ms precision: equal, or 1 ms across a tick
            assert abs(_ms(ta) - _ms(tb)) <= 1
    print(f"live == replay: {len(live)} events, every transaction_id identical")


@NEEDS_CURL
def test_sigterm_drains_the_ring_and_writes_every_event_before_exit_0(tmp_path: Path) -> None:
    with (
        http_server() as port,
        running_daemon(
            tmp_path, port, SNIFFER_WORKERS="1", SNIFFER_LOG_FORMAT="json", SNIFFER_MEMORY_LIMIT="off"
        ) as d,
    ):
        made = calls(port)
        status = d.stop()  # at once: the last packets are still in a block the kernel has not retired
        events = d.events()
        log = [json.loads(line) for line in d.err.read_text().splitlines()]
    assert status == 0
    assert len(events) == made
    assert {e["response"]["status"] for e in events} == {200}
    messages = [rec["message"] for rec in log]
    assert sum("starting:" in m for m in messages) == 1 and messages[-1] == "stopped"
    assert any(rec["message"].startswith("SIGTERM") for rec in log)
    assert "memory: SNIFFER_MEMORY_LIMIT=off; every budget keeps its default" in "\n".join(messages)


@NEEDS_CURL
@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_flushes_the_moesif_sender_before_exit(tmp_path: Path, workers: str) -> None:
    """With two workers the events are built in the workers (no Kong ports) and reach the main
    process's sender encoded: the collector gets each once, whole."""
    with running_collector() as collector, http_server() as port:
        extra = {
            "MOESIF_APPLICATION_ID": APP_ID,
            "MOESIF_API_ENDPOINT": collector.url,
            "MOESIF_BATCH_MAX_TIME": "60",  # nothing leaves before the shutdown flush
            "MOESIF_BATCH_SIZE": "1000",
            "SNIFFER_WORKERS": workers,
            "SNIFFER_MEMORY_LIMIT": "400Mi",  # the budgets sized for it: the same events arrive
        }
        with running_daemon(tmp_path, port, **extra) as d:
            made = calls(port)
            time.sleep(0.5)
            assert collector.collector.event_count == 0
            assert d.stop() == 0
        assert collector.collector.event_count == made
        sent = collector.collector.events()
        log = d.err.read_text()
    assert len({e["transaction_id"] for e in sent}) == made
    assert {e["response"]["status"] for e in sent} == {200}
    assert APP_ID not in log and f"MOESIF_APPLICATION_ID=...{APP_ID[-4:]}" in log
    assert len([line for line in log.splitlines() if "starting:" in line]) == 1
    assert f"memory plan: limit 400 MiB (SNIFFER_MEMORY_LIMIT), {workers} worker(s): max_flows=" in log


@NEEDS_CURL
def test_two_fanout_workers_report_every_call_once(tmp_path: Path) -> None:
    with http_server() as port, running_daemon(tmp_path, port, SNIFFER_WORKERS="2") as d:
        children = subprocess.run(
            ["pgrep", "-P", str(d.proc.pid)], capture_output=True, text=True, check=False
        ).stdout.split()
        n = 30
        for i in range(n):
            curl(f"http://127.0.0.1:{port}/call/{i}")
        deadline = time.monotonic() + 10  # worker counters reach the main process with their ticks
        while f"moesif_sniffer_exchanges_total {float(n)}" not in (metrics := d.get("/metrics")[1]):
            assert time.monotonic() < deadline, metrics
            time.sleep(0.2)
        assert d.stop() == 0
        events = d.events()
    assert len(children) == 2
    uris = sorted(e["request"]["uri"] for e in events)
    assert uris == sorted(f"http://127.0.0.1:{port}/call/{i}" for i in range(n))
    assert "moesif_sniffer_workers 2.0" in metrics
    # each worker's share: every packet counted by exactly one of them (curl opens a connection a call,
    # so with 30 flows both get some); the exit summary says the same
    per_worker = [
        float(m.group(1))
        for i in range(2)
        if (m := re.search(rf'moesif_sniffer_worker_packets_total\{{worker="{i}"\}} (\S+)', metrics))
    ]
    total = re.search(r"^moesif_sniffer_packets_total (\S+)", metrics, re.M)
    assert len(per_worker) == 2 and all(per_worker) and total and sum(per_worker) == float(total.group(1))
    log = d.err.read_text()
    split = re.search(r"by worker: (\d+) / (\d+) packets, 0 / 0 kernel drops", log)
    assert split and int(split.group(1)) + int(split.group(2)) >= sum(per_worker), log[-2000:]
    # no pressure: nothing shed
    assert "moesif_sniffer_shed_level 0.0" in metrics and "moesif_sniffer_bodies_shed_total 0.0" in metrics


def test_privileges_are_dropped_after_the_capture_is_open(tmp_path: Path) -> None:
    with (
        http_server() as port,
        running_daemon(tmp_path, port, SNIFFER_WORKERS="2", SNIFFER_USER="nobody") as d,
    ):
        pids = [str(d.proc.pid)]
        pids += subprocess.run(["pgrep", "-P", pids[0]], capture_output=True, text=True).stdout.split()
        status = {}
        for pid in pids:
            fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
            status[pid] = {k: fields[k].split() for k in ("Uid", "Gid", "CapEff", "CapPrm", "CapBnd")}
        assert d.get("/healthz")[0] == 200
        assert d.stop() == 0
    assert len(status) == 3
    for fields in status.values():
        assert fields["Uid"] == ["65534"] * 4 and fields["Gid"] == ["65534"] * 4
        assert fields["CapEff"] == fields["CapPrm"] == fields["CapBnd"] == ["0000000000000000"]


def _wait_for(path: Path, text: str) -> None:
    deadline = time.monotonic() + 10
    while not (path.exists() and text in path.read_text()):
        assert time.monotonic() < deadline, f"{text!r} never appeared in {path}"
        time.sleep(0.05)


def test_sighup_reopens_the_log_file_and_is_harmless_on_stderr(tmp_path: Path) -> None:
    # pytest's tmp_path is private to root; the log directory must be reachable by SNIFFER_USER
    logdir = Path(tempfile.mkdtemp(prefix="sniffer-logs-"))
    logdir.chmod(0o755)
    logfile, rotated = logdir / "sniffer.log", logdir / "sniffer.log.1"
    try:
        with http_server() as port:
            with running_daemon(tmp_path, port, "--log-file", str(logfile), SNIFFER_WORKERS="1") as d:
                logfile.rename(rotated)  # what logrotate does before it sends SIGHUP
                d.proc.send_signal(signal.SIGHUP)  # the directory is root's: nobody cannot create the file
                _wait_for(rotated, "cannot reopen log file")
                os.chown(logdir, pwd.getpwnam("nobody").pw_uid, -1)
                d.proc.send_signal(signal.SIGHUP)
                _wait_for(logfile, "SIGHUP: log file reopened")
                assert d.stop() == 0
            assert "starting:" in rotated.read_text() and "starting:" not in logfile.read_text()
            assert logfile.read_text().rstrip().endswith("stopped")
            with running_daemon(tmp_path, port, SNIFFER_WORKERS="1") as d:
                d.proc.send_signal(signal.SIGHUP)
                _wait_for(d.err, "SIGHUP: logging to stderr, nothing to reopen")
                assert d.proc.poll() is None
                assert d.stop() == 0
    finally:
        shutil.rmtree(logdir)


def _uris(path: Path) -> list[str]:
    return [json.loads(line)["request"]["uri"] for line in path.read_bytes().splitlines()]


def test_sighup_reopens_the_output_file_after_logrotate_moved_it(tmp_path: Path) -> None:
    # the output directory must be writable by SNIFFER_USER (nobody) for the new file to be created
    outdir = Path(tempfile.mkdtemp(prefix="sniffer-out-"))
    os.chown(outdir, pwd.getpwnam("nobody").pw_uid, -1)
    output, rotated = outdir / "events.jsonl", outdir / "events.jsonl.1"
    try:
        with http_server() as port:
            base = f"http://127.0.0.1:{port}"
            with running_daemon(tmp_path, port, "--output", str(output), SNIFFER_WORKERS="1") as d:
                curl(f"{base}/before")
                deadline = time.monotonic() + 10
                while not (output.exists() and output.stat().st_size):
                    assert time.monotonic() < deadline, "the first event never reached the file"
                    time.sleep(0.05)
                output.rename(rotated)  # what logrotate does before it sends SIGHUP
                d.proc.send_signal(signal.SIGHUP)
                _wait_for(d.err, f"SIGHUP: output {output} reopened")
                curl(f"{base}/after")
                assert d.stop() == 0
        assert _uris(rotated) == [f"{base}/before"]
        assert _uris(output) == [f"{base}/after"]
    finally:
        shutil.rmtree(outdir)


def test_a_dead_capture_worker_stops_the_daemon_with_status_1(tmp_path: Path) -> None:
    with http_server() as port, running_daemon(tmp_path, port, SNIFFER_WORKERS="2") as d:
        children = subprocess.run(["pgrep", "-P", str(d.proc.pid)], capture_output=True, text=True).stdout
        os.kill(int(children.split()[0]), signal.SIGKILL)
        assert d.proc.wait(15) == 1  # a supervisor (kubelet, systemd) restarts it whole
        log = d.err.read_text()
    assert "exited unexpectedly (killed by SIGKILL: out of memory? see SNIFFER_MEMORY_LIMIT)" in log
    assert log.rstrip().endswith("stopped")


@NEEDS_CURL
@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_full_disk_stops_the_daemon_with_one_line_and_status_1(tmp_path: Path, workers: str) -> None:
    # /dev/full fails every write as a full disk does: before, the daemon died of an OSError traceback
    # (and with workers, left them running).
    with (
        http_server() as port,
        running_daemon(tmp_path, port, "--output", "/dev/full", SNIFFER_WORKERS=workers) as d,
    ):
        calls(port)
        assert d.proc.wait(15) == 1  # a supervisor (kubelet, systemd) restarts it whole
        log = d.err.read_text()
    assert "/dev/full: cannot write the events: No space left on device; stopping" in log
    assert "Traceback" not in log
    assert log.rstrip().endswith("stopped")


@pytest.mark.skipif(not shutil.which("setpriv"), reason="setpriv (util-linux) not installed")
def test_without_cap_setuid_it_stays_uid_0_without_capabilities_and_says_so(tmp_path: Path) -> None:
    # a container started with `--cap-drop ALL --cap-add NET_RAW` as root
    wrap = ("setpriv", "--bounding-set=-all,+net_raw", "--")
    with http_server() as port, running_daemon(tmp_path, port, wrap=wrap, SNIFFER_WORKERS="1") as d:
        status = Path(f"/proc/{d.proc.pid}/status").read_text()
        curl(f"http://127.0.0.1:{port}/still-captures")
        assert d.stop() == 0
        events = d.events()
    assert "\nUid:\t0\t0\t0\t0\n" in status and "\nCapEff:\t0000000000000000\n" in status
    assert "cannot switch to user 'nobody' (no CAP_SETUID/CAP_SETGID" in d.err.read_text()
    assert [e["request"]["uri"].rsplit("/", 1)[1] for e in events] == ["still-captures"]


NETNS = ("snf-test-cli", "snf-test-srv")


@contextmanager
def two_namespaces() -> Iterator[None]:
    """cli (10.99.0.1 on veth-c) <-> srv (10.99.0.2 on veth-s, and lo)."""

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)

    def down() -> None:
        for ns in NETNS:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)

    down()
    try:
        for ns in NETNS:
            ip("netns", "add", ns)
            ip("-n", ns, "link", "set", "lo", "up")
        ip(
            "link",
            "add",
            "veth-c",
            "netns",
            NETNS[0],
            "type",
            "veth",
            "peer",
            "name",
            "veth-s",
            "netns",
            NETNS[1],
        )
        for ns, dev, addr in ((NETNS[0], "veth-c", "10.99.0.1/24"), (NETNS[1], "veth-s", "10.99.0.2/24")):
            ip("-n", ns, "addr", "add", addr, "dev", dev)
            ip("-n", ns, "link", "set", dev, "up")
        yield
    finally:
        down()


@NEEDS_CURL
@pytest.mark.skipif(not shutil.which("ip"), reason="iproute2 not installed")
def test_an_interface_list_captures_on_each_interface(tmp_path: Path) -> None:
    with two_namespaces():
        srv = NETNS[1]
        server = subprocess.Popen(
            ["ip", "netns", "exec", srv, sys.executable, "-m", "http.server", "8099", "--bind", "0.0.0.0"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=tmp_path,
        )
        wrap = ("ip", "netns", "exec", srv)
        try:
            with running_daemon(
                tmp_path, 8099, wrap=wrap, SNIFFER_INTERFACE="veth-s,lo", SNIFFER_WORKERS="2",
                SNIFFER_METRICS_ADDR="",
            ) as d:  # fmt: skip
                for _ in range(50):  # the server is up
                    if (
                        subprocess.run(
                            [*wrap, "curl", "-s", "-o", "/dev/null", "http://127.0.0.1:8099/"]
                        ).returncode
                        == 0
                    ):
                        break
                    time.sleep(0.1)
                for i in range(3):
                    url = f"http://10.99.0.2:8099/?via=veth{i}"
                    subprocess.run(
                        ["ip", "netns", "exec", NETNS[0], "curl", "-sS", "-o", "/dev/null", url], check=True
                    )
                subprocess.run(
                    [*wrap, "curl", "-sS", "-o", "/dev/null", "http://127.0.0.1:8099/?via=lo"], check=True
                )
                assert d.stop() == 0
                events = d.events()
        finally:
            server.kill()
            server.wait(5)
    uris = sorted(e["request"]["uri"].rsplit("/", 1)[1] for e in events)
    assert uris[-4:] == ["?via=lo", "?via=veth0", "?via=veth1", "?via=veth2"]
    assert {e["request"]["ip_address"] for e in events if "veth" in e["request"]["uri"]} == {"10.99.0.1"}


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise KeyError(f"{name} not in /metrics")


@contextmanager
def upload_flood(port: int, size: int = 200_000, threads: int = 8) -> Iterator[list[int]]:
    """New connections, each posting a `size`-byte JSON body (echoed back), until the block ends."""
    body = b'{"k": "' + b"x" * size + b'"}'
    done = [0]
    stop = threading.Event()

    def post() -> None:
        while not stop.is_set():
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            try:
                c.request("POST", "/up", body, {"Content-Type": "application/json"})
                c.getresponse().read()
                done[0] += 1
            except OSError:
                pass
            finally:
                c.close()

    workers = [threading.Thread(target=post, daemon=True) for _ in range(threads)]
    for t in workers:
        t.start()
    try:
        yield done
    finally:
        stop.set()
        for t in workers:
            t.join(10)


# A ring of four 128 KiB blocks: a few 64 KiB loopback segments fill it, so the kernel drops (the
# pressure signal the daemon cannot miss) while the traffic lasts.
TINY_RING = "131072,4"


@pytest.mark.parametrize("workers", ["1", "2"])
def test_under_pressure_the_daemon_sheds_bodies_then_samples_flows_and_says_so(
    tmp_path: Path, workers: str
) -> None:
    env = {"SNIFFER_WORKERS": workers, "_SNIFFER_TEST_RING": TINY_RING}
    with http_server() as port, running_daemon(tmp_path, port, **env) as d:
        with upload_flood(port) as done:
            deadline = time.monotonic() + 20
            while True:
                metrics = d.get("/metrics")[1]
                if _metric(metrics, "moesif_sniffer_shed_level") >= 3:
                    break
                assert time.monotonic() < deadline, metrics
                time.sleep(0.25)
            time.sleep(1.5)  # new flows meet the sampler
            metrics = d.get("/metrics")[1]
        assert done[0] > 0
        assert d.stop() == 0
        events = d.events()
    log = d.err.read_text()
    assert _metric(metrics, "moesif_sniffer_kernel_drops_total") > 0
    assert _metric(metrics, "moesif_sniffer_bodies_shed_total") > 0
    assert _metric(metrics, "moesif_sniffer_flows_sampled_out_total") > 0
    assert _metric(metrics, "moesif_sniffer_shed_bodies_off") == 1.0
    assert _metric(metrics, "moesif_sniffer_shed_sample_1_in") >= 4
    for level, name in [(1, "bodies_shed"), (2, "sample_1_in_2"), (3, "sample_1_in_4")]:
        assert log.count(f"load shedding: level {level} ({name})") == 1, log  # each change logged once
    shed = [e for e in events if e["metadata"]["capture"].get("body_shed")]
    assert shed and all("body" not in e["request"] for e in shed)
    weighted = [e for e in events if e["weight"] > 1]
    assert weighted and {e["weight"] for e in weighted} <= {2, 4, 8, 16}
    assert all(e["metadata"]["capture"]["sampled_1_in"] == e["weight"] for e in weighted)
    assert "Traceback" not in log


def test_with_shedding_off_the_same_pressure_sheds_nothing(tmp_path: Path) -> None:
    env = {"SNIFFER_WORKERS": "1", "_SNIFFER_TEST_RING": TINY_RING, "SNIFFER_SHED": "off"}
    with http_server() as port, running_daemon(tmp_path, port, **env) as d:
        with upload_flood(port):
            deadline = time.monotonic() + 20
            while _metric(metrics := d.get("/metrics")[1], "moesif_sniffer_kernel_drops_total") == 0:
                assert time.monotonic() < deadline, metrics
                time.sleep(0.25)
            time.sleep(2.5)  # ticks under pressure
            metrics = d.get("/metrics")[1]
        assert d.stop() == 0
        events = d.events()
    assert _metric(metrics, "moesif_sniffer_shed_level") == 0
    assert _metric(metrics, "moesif_sniffer_bodies_shed_total") == 0
    assert _metric(metrics, "moesif_sniffer_flows_sampled_out_total") == 0
    assert "load shedding" not in d.err.read_text()
    assert events and all(e["weight"] == 1 and "body_shed" not in e["metadata"]["capture"] for e in events)


def test_low_cpu_priority_and_pure_ack_filter_keep_every_call(tmp_path: Path) -> None:
    """SNIFFER_CPU_PRIORITY=low reaches the main process and the forked workers (nice 19, SCHED_BATCH);
    with SNIFFER_DROP_PURE_ACKS the kernel filter sheds ACKs, and every call still becomes its event."""
    with (
        http_server() as port,
        running_daemon(
            tmp_path, port, SNIFFER_WORKERS="2", SNIFFER_CPU_PRIORITY="low", SNIFFER_DROP_PURE_ACKS="true"
        ) as d,
    ):
        pids = [d.proc.pid]
        children = subprocess.run(["pgrep", "-P", str(pids[0])], capture_output=True, text=True).stdout
        pids += [int(p) for p in children.split()]
        priorities = {p: (os.getpriority(os.PRIO_PROCESS, p), os.sched_getscheduler(p)) for p in pids}
        n = 20
        for i in range(n):
            curl(f"http://127.0.0.1:{port}/low/{i}")
        deadline = time.monotonic() + 10
        while f"moesif_sniffer_exchanges_total {float(n)}" not in (metrics := d.get("/metrics")[1]):
            assert time.monotonic() < deadline, metrics
            time.sleep(0.2)
        assert d.stop() == 0
        events = d.events()
        log_text = d.err.read_text()
    assert len(pids) == 3
    assert set(priorities.values()) == {(19, os.SCHED_BATCH)}, priorities
    assert sorted(e["request"]["uri"] for e in events) == sorted(
        f"http://127.0.0.1:{port}/low/{i}" for i in range(n)
    )
    assert "running at low CPU priority (nice 19, SCHED_BATCH)" in log_text, log_text
