"""`moesif-sniffer doctor`: each check against the real thing: capabilities taken away with capsh and
setpriv, a network namespace whose only interface is down, real HTTP on lo for the traffic check, the
ETHTOOL ioctl against `ethtool -k`, and the fake Moesif collector answering 200 or 401."""

from __future__ import annotations

import errno
import http.server
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from collector import APP_ID, running_collector

from sniffer import doctor
from sniffer.capture.bpf_sys import BpfError
from sniffer.cli import main
from sniffer.config import Config
from sniffer.doctor import (
    check_cpu,
    check_fanout,
    check_interfaces,
    check_moesif,
    check_traffic,
    check_user,
    offloads,
)

ROOT = Path(__file__).resolve().parents[1]
ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (AF_PACKET, capsh, netns)")


def _doctor(
    *args: str, env: dict[str, str] | None = None, prefix: tuple[str, ...] = (), python: str = sys.executable
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MOESIF_", "SNIFFER_"))}
    cmd = [*prefix, *([python, "-m", "sniffer", "doctor"] if python else []), *args]
    return subprocess.run(
        cmd,
        env={**base, "PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def _line(out: str, name: str) -> str:
    (line,) = [ln for ln in out.splitlines() if re.match(rf"^\S+\s+{name}: ", ln)]
    return line


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@ROOT_ONLY
def test_root_without_capabilities_is_told_what_is_missing() -> None:
    if not shutil.which("capsh"):
        pytest.skip("capsh missing (apt-get install libcap2-bin)")
    # capsh empties the bounding set of these, so the root shell it starts never gets them back
    command = shlex.join([sys.executable, "-m", "sniffer", "doctor", "--interface", "lo", "--seconds", "0.2"])
    res = _doctor(
        prefix=("capsh", "--drop=cap_net_raw,cap_setuid,cap_setgid", "--", "-c", command), python=""
    )
    assert res.returncode == 1, res.stdout + res.stderr
    capture = _line(res.stdout, "capture")
    assert capture.startswith("FAIL") and "CAP_NET_RAW capability is missing" in capture
    assert "running as root without it" in capture and "NET_RAW" in capture.partition("Fix:")[2]
    user = _line(res.stdout, "user")
    assert user.startswith("FAIL") and "CAP_SETUID and CAP_SETGID missing" in user
    assert _line(res.stdout, "traffic").startswith("skip")
    assert res.stdout.rstrip().endswith("2 check(s) failed")


def _python_for_nobody() -> str | None:
    """An interpreter (3.11+) that user nobody can run with this checkout importable, if any."""
    if not shutil.which("setpriv"):
        return None
    for python in (sys.executable, "/usr/bin/python3"):
        res = subprocess.run(
            [
                "setpriv",
                "--reuid",
                "nobody",
                "--regid",
                "nogroup",
                "--clear-groups",
                python,
                "-c",
                "import sys, sniffer.config; assert sys.version_info >= (3, 11)",
            ],
            env={"PYTHONPATH": str(ROOT), "PATH": os.environ.get("PATH", "")},
            capture_output=True,
            timeout=30,
        )
        if res.returncode == 0:
            return python
    return None


@ROOT_ONLY
def test_unprivileged_user_is_told_to_add_net_raw() -> None:
    python = _python_for_nobody()
    if python is None:
        pytest.skip(
            "no Python 3.11+ that user nobody can run with this checkout (setpriv missing, or "
            "the interpreter or the checkout is not readable by nobody)"
        )
    res = _doctor(
        "--interface",
        "lo",
        "--seconds",
        "0.2",
        python=python,
        prefix=("setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups", "--inh-caps=-all"),
    )
    assert res.returncode == 1, res.stdout + res.stderr
    capture = _line(res.stdout, "capture")
    assert capture.startswith("FAIL")
    assert "the CAP_NET_RAW capability is missing (running as uid 65534)" in capture
    assert "--cap-add NET_RAW" in capture
    assert _line(res.stdout, "user").startswith("ok")  # already nobody: nothing to switch


@pytest.fixture
def http_server() -> Iterator[int]:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


@ROOT_ONLY
def test_traffic_on_the_kong_port_is_seen(http_server: int) -> None:
    stop = threading.Event()

    def calls() -> None:
        while not stop.wait(0.05):
            urllib.request.urlopen(f"http://127.0.0.1:{http_server}/", timeout=5).read()

    caller = threading.Thread(target=calls, daemon=True)
    caller.start()
    try:
        res = _doctor("--interface", "lo", "--kong-ports", str(http_server), "--seconds", "10")
    finally:
        stop.set()
        caller.join(10)
    assert res.returncode == 0, res.stdout + res.stderr
    traffic = _line(res.stdout, "traffic")
    assert re.match(rf"ok   traffic: \d+\+? packets on ports {http_server} on lo$", traffic), traffic
    assert res.stdout.rstrip().endswith("all checks passed")


@ROOT_ONLY
def test_silent_port_is_a_warning_naming_it() -> None:
    port = _free_port()
    check = check_traffic(Config(interface="lo", kong_ports=(port,)), 0.3)
    assert check.status == "WARN"
    assert f"no packets on ports {port} on lo in 0.3 s (nothing listens on {port}" in check.message


@ROOT_ONLY
def test_interface_down_in_a_fresh_namespace() -> None:
    if not shutil.which("ip"):
        pytest.skip("ip (iproute2) missing")
    ns = f"doctor-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        down = _doctor("--interface", "lo", "--seconds", "0.2", prefix=("ip", "netns", "exec", ns))
        assert down.returncode == 1
        line = _line(down.stdout, "interfaces")
        assert line.startswith("FAIL interfaces: lo is down. Fix: set SNIFFER_INTERFACE"), line
        assert _line(down.stdout, "traffic").startswith("skip")
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        up = _doctor("--interface", "lo", "--seconds", "0.2", prefix=("ip", "netns", "exec", ns))
        assert _line(up.stdout, "interfaces") == "ok   interfaces: lo up"
        assert up.returncode == 0, up.stdout
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def test_missing_interface_lists_the_real_ones() -> None:
    check = check_interfaces(Config(interface="lo,nosuch0"))
    assert check.status == "FAIL"
    assert "no interface named 'nosuch0' (here: " in check.message and "lo" in check.message
    assert "--net=host" in check.fix


def test_fanout_check_says_how_the_workers_will_share_flows(monkeypatch: pytest.MonkeyPatch) -> None:
    assert check_fanout(Config(), 1).status == "skip"
    hashed = check_fanout(Config(fanout="hash"), 2)
    assert hashed.status == "ok" and "by the kernel's hash (SNIFFER_FANOUT=hash)" in hashed.message

    def refused(*args: object) -> None:
        raise BpfError(errno.EPERM, "creating map sniff_fanout: Operation not permitted")

    monkeypatch.setattr(doctor, "load_balanced_fanout", refused)
    check = check_fanout(Config(), 2)
    assert check.status == "WARN" and "needs CAP_BPF and a seccomp profile allowing it" in check.message
    assert "SNIFFER_FANOUT=hash" in check.fix


@ROOT_ONLY
def test_fanout_check_loads_the_program() -> None:
    check = check_fanout(Config(ports=(8000,)), 3)
    assert check.status == "ok" and "dealt to the 3 workers in turn" in check.message


def test_unknown_user() -> None:
    check = check_user(Config(user="no-such-user-x"))
    assert check.status == "FAIL" and "'no-such-user-x' does not exist" in check.message


def test_offloads_match_ethtool() -> None:
    ethtool = shutil.which("ethtool") or shutil.which("/usr/sbin/ethtool")
    if not ethtool:
        pytest.skip("ethtool missing")
    names = {
        "generic-receive-offload": "gro",
        "large-receive-offload": "lro",
        "tcp-segmentation-offload": "tso",
    }
    compared = 0
    for name in os.listdir("/sys/class/net"):
        out = subprocess.run([ethtool, "-k", name], capture_output=True, text=True, timeout=10).stdout
        want = {}
        for line in out.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in names:
                want[names[key.strip()]] = value.split()[0] == "on"
        got = offloads(name)
        for key, value in want.items():
            assert got[key] == value, (name, key, got, out)
            compared += 1
    assert compared >= 3


def test_app_id_accepted_and_rejected() -> None:
    with running_collector() as server:
        good = check_moesif(Config(application_id=APP_ID, api_endpoint=server.url))
        bad = check_moesif(Config(application_id="wrong-app-id-0000", api_endpoint=server.url))
        fetches = server.collector.config_fetches
    assert good.status == "ok" and "(HTTP 200)" in good.message and APP_ID not in good.message
    assert bad.status == "FAIL" and "rejects application id ...0000 (HTTP 401)" in bad.message
    assert "MOESIF_APPLICATION_ID" in bad.fix
    assert fetches >= 1


def test_unreachable_endpoint_and_no_app_id() -> None:
    port = _free_port()  # closed again: nothing listens there
    down = check_moesif(Config(application_id=APP_ID, api_endpoint=f"http://127.0.0.1:{port}"))
    assert down.status == "FAIL" and "is unreachable" in down.message and "refused" in down.message.lower()
    assert check_moesif(Config()).status == "skip"
    # Credentials in the endpoint URL are never printed.
    secret = check_moesif(Config(application_id=APP_ID, api_endpoint=f"http://user:s3cret@127.0.0.1:{port}"))
    assert secret.status == "FAIL" and "s3cret" not in str(secret) and "***@127.0.0.1" in secret.message


def test_cli_wrong_app_id_exits_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with running_collector() as server:
        monkeypatch.setenv("MOESIF_APPLICATION_ID", "wrong-app-id-0000")
        monkeypatch.setenv("MOESIF_API_ENDPOINT", server.url)
        status = main(["doctor", "--interface", "lo", "--seconds", "0.1"])
    out = capsys.readouterr().out
    assert status == 1
    assert _line(out, "moesif").startswith("FAIL moesif: ")
    assert "wrong-app-id-0000" not in out  # the id is shown by its last 4 characters only


def test_bad_configuration_is_a_failed_check(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SNIFFER_PORTS", "80,http")
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert _line(out, "config").startswith("FAIL config: SNIFFER_PORTS / --ports: expected")
    for name in ("interfaces", "traffic", "moesif"):
        assert _line(out, name).startswith("skip")


def test_memory_plan_is_reported(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SNIFFER_MEMORY_LIMIT", "512Mi")
    monkeypatch.setenv("SNIFFER_WORKERS", "2")
    main(["doctor"])
    line = _line(capsys.readouterr().out, "memory")
    assert line.startswith("ok   memory: limit 512 MiB (SNIFFER_MEMORY_LIMIT), 2 worker(s): max_flows=")
    monkeypatch.setenv("SNIFFER_MEMORY_LIMIT", "100Mi")
    main(["doctor"])
    line = _line(capsys.readouterr().out, "memory")
    assert line.startswith("FAIL memory: SNIFFER_MEMORY_LIMIT: 100 MiB is too little for 2 capture worker(s)")
    monkeypatch.setenv("SNIFFER_MEMORY_LIMIT", "off")
    main(["doctor"])
    assert _line(capsys.readouterr().out, "memory").startswith("WARN memory: no memory limit")


@pytest.mark.parametrize(
    ("workers", "cores", "limit", "status", "says"),
    [
        (None, 4, None, "ok", "4 capture worker(s) (auto); 4 core(s) to run on, no cgroup CPU limit"),
        (
            None,
            8,
            2.0,
            "ok",
            "2 capture worker(s) (auto); 8 core(s) to run on, the cgroup's quota is 2.00 CPUs",
        ),
        (3, 2, None, "WARN", "more workers than CPUs to run them. Fix: set SNIFFER_WORKERS to at most 2 or"),
        (2, 8, 1.5, "WARN", "at most 1 or leave it unset, or raise the CPU limit"),
        (2, 8, 2.0, "ok", "2 capture worker(s) (SNIFFER_WORKERS)"),
    ],
)
def test_cpu_check_compares_the_workers_with_the_cpus(
    monkeypatch: pytest.MonkeyPatch,
    workers: int | None,
    cores: int,
    limit: float | None,
    status: str,
    says: str,
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    found = None if limit is None else (limit, "/sys/fs/cgroup/cpu.max")
    check = check_cpu(Config(workers=workers), lambda: found)
    assert check.status == status
    assert says in check.line()
