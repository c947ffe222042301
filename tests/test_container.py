"""The Dockerfile built and run with podman: the container captures real HTTP calls on the host's `lo`
with only NET_RAW added (no --privileged), emits one event per call, runs as nobody with no capabilities
after start, passes its HEALTHCHECK, and its doctor names a missing NET_RAW in plain words.

Two ways to run it: the README's `docker run --net=host --cap-add NET_RAW` (events as JSON lines on
stdout), and the DaemonSet's security context (every capability dropped but NET_RAW, SETUID and
SETGID; read-only root; no-new-privileges; its environment) sending to the fake Moesif collector.

Needs root and podman (`.ci/run` installs podman, runc and debootstrap). The base image
`debian:bookworm-slim` is made with debootstrap when no registry is reachable
(deploy/podman/make-base-image.sh, cached while the image exists); podman is first made to work on
this kind of host (deploy/podman/setup.sh). The build uses podman's layer cache.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import queue
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import orjson
import pytest
from collector import APP_ID, running_collector

ROOT = Path(__file__).resolve().parents[1]
IMAGE = "localhost/moesif-sniffer:test"
BASE = "docker.io/library/debian:bookworm-slim"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
CALLS = 5

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (rootful podman, capture)"),
    pytest.mark.skipif(shutil.which("podman") is None, reason="podman missing (apt-get install podman)"),
    pytest.mark.timeout(600),
]


def _sh(*cmd: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    if res.returncode:
        pytest.fail(f"{' '.join(cmd)} exited {res.returncode}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res


STAGE_LABEL = "io.moesif-sniffer.stage"  # the Dockerfile's label on both stages


def build_image(tag: str, *args: str, timeout: float = 600) -> str:
    """Build the Dockerfile's image as `tag` (`args`: more `podman build` arguments), and leave no image
    behind: each build left its builder stage untagged (~500 MB), and re-tagging `tag` the previous
    image; a test machine had gathered 255 of them. The builder stage is tagged `<tag>-builder`, so the
    next build still finds its layers cached, then what no tag holds any more of either stage goes."""
    _sh("bash", "deploy/podman/setup.sh")
    if subprocess.run(["podman", "image", "exists", BASE]).returncode != 0:
        if shutil.which("debootstrap") is None:
            pytest.skip(f"no {BASE} image and no debootstrap to make one (apt-get install debootstrap)")
        _sh("bash", "deploy/podman/make-base-image.sh", timeout=600)
    build = ["podman", "build", "--network=host", "--format", "docker", "--pull=never", *args]
    if CA_BUNDLE.exists():  # this host's CAs, in case PyPI is reached through an intercepting proxy
        build += ["--secret", f"id=pip_cert,src={CA_BUNDLE}"]
    _sh(*build, "--target", "builder", "-t", f"{tag}-builder", ".", timeout=timeout)
    _sh(*build, "-t", tag, ".", timeout=timeout)
    _sh("podman", "image", "prune", "-f", "--filter", f"label={STAGE_LABEL}")
    return tag


@pytest.fixture(scope="module")
def image() -> str:
    return build_image(IMAGE)


@pytest.fixture
def web() -> Iterator[int]:
    """A real HTTP server on the host's lo (the container shares the host's network)."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _lines(stream: IO[bytes]) -> queue.Queue[bytes]:
    q: queue.Queue[bytes] = queue.Queue()

    def pump() -> None:
        for line in iter(stream.readline, b""):
            q.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return q


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except OSError:  # not listening yet
        return 0, ""


def _wait(what: str, check: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


def _daemonset_env() -> dict[str, str]:
    yaml = pytest.importorskip("yaml", reason="PyYAML comes with kubernetes-validate")
    ds = yaml.safe_load((ROOT / "deploy/kubernetes/daemonset.yaml").read_text())
    (container,) = ds["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


@contextlib.contextmanager
def _container(name: str, args: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    cmd = ["podman", "run", "--rm", "--name", name, "--net=host", *args]
    for key, value in env.items():
        cmd += ["-e", f"{key}={value}"]
    proc = subprocess.Popen([*cmd, IMAGE], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        yield proc
    finally:
        # A container still being created is not known by name yet: retry until it is gone.
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            subprocess.run(["podman", "rm", "-f", "-t", "2", name], capture_output=True, timeout=60)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(2)


def _processes(name: str) -> list[dict[str, str]]:
    """/proc/<pid>/status of every process of the container, seen from the host."""
    top = _sh("podman", "top", name, "hpid").stdout.split()[1:]
    out = []
    for pid in top:
        with open(f"/proc/{pid}/status") as f:
            out.append({k: v.strip() for k, _, v in (ln.partition(":") for ln in f)})
    return out


VARIANTS = {
    # The README's command line.
    "docker-run": ["--cap-add", "NET_RAW"],
    # The DaemonSet's securityContext and memory limit.
    "kubernetes": [
        "--cap-drop", "ALL", "--cap-add", "NET_RAW,SETUID,SETGID",
        "--read-only", "--read-only-tmpfs=false", "--security-opt", "no-new-privileges",
        "--memory", "512m",
    ],
}  # fmt: skip


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_container_captures_host_traffic_as_nobody(image: str, web: int, variant: str) -> None:
    metrics = _free_port()
    name = f"sniffer-test-{uuid.uuid4().hex[:8]}"
    env = {
        "SNIFFER_INTERFACE": "lo",
        "SNIFFER_PORTS": str(web),
        "SNIFFER_METRICS_ADDR": f"127.0.0.1:{metrics}",
    }
    with contextlib.ExitStack() as stack:
        collector = None
        if variant == "kubernetes":
            collector = stack.enter_context(running_collector())
            env = {
                **_daemonset_env(),
                **env,
                "SNIFFER_METRICS_ADDR": f"0.0.0.0:{metrics}",  # the DaemonSet's host part
                "MOESIF_APPLICATION_ID": APP_ID,
                "MOESIF_API_ENDPOINT": collector.url,
                "MOESIF_BATCH_MAX_TIME": "0.2",
            }
        proc = stack.enter_context(_container(name, VARIANTS[variant], env))
        assert proc.stdout is not None and proc.stderr is not None
        out, err = _lines(proc.stdout), _lines(proc.stderr)
        _wait(
            "/readyz", lambda: proc.poll() is not None or _get(f"http://127.0.0.1:{metrics}/readyz")[0] == 200
        )
        assert proc.poll() is None, f"the container exited {proc.returncode}"

        # After start: every process of the container is nobody, with no capabilities at all.
        statuses = _processes(name)
        assert statuses
        for status in statuses:
            assert status["Uid"].split() == ["65534"] * 4, status["Uid"]
            assert status["Gid"].split() == ["65534"] * 4, status["Gid"]
            assert int(status["CapEff"], 16) == 0 and int(status["CapPrm"], 16) == 0
            assert status["NoNewPrivs"] == "1"

        for i in range(CALLS):
            assert _get(f"http://127.0.0.1:{web}/?call={i}")[0] == 200

        events: list[dict[str, Any]] = []
        if collector is None:
            deadline = time.monotonic() + 30
            while len(events) < CALLS and time.monotonic() < deadline:
                with contextlib.suppress(queue.Empty):
                    events.append(orjson.loads(out.get(timeout=0.5)))
        else:
            _wait("events at the collector", lambda: collector.collector.event_count >= CALLS)
            events = collector.collector.events()
        uris = sorted(e["request"]["uri"] for e in events)
        assert uris == [f"http://127.0.0.1:{web}/?call={i}" for i in range(CALLS)]
        assert all(e["response"]["status"] == 200 for e in events)

        def counted() -> bool:
            text = _get(f"http://127.0.0.1:{metrics}/metrics")[1]
            m = re.search(r"^moesif_sniffer_events_total (\S+)$", text, re.M)
            return m is not None and float(m.group(1)) >= CALLS

        _wait("the events counter", counted)
        assert _get(f"http://127.0.0.1:{metrics}/healthz")[0] == 200
        # The image's HEALTHCHECK (podman runs it on demand here: its timers need systemd).
        health = subprocess.run(
            ["podman", "healthcheck", "run", name], capture_output=True, text=True, timeout=60
        )
        assert health.returncode == 0, health.stdout + health.stderr

        subprocess.run(["podman", "stop", "-t", "20", name], capture_output=True, timeout=60)
        assert proc.wait(30) == 0
    logs = b""
    while not err.empty():
        logs += err.get()
    text = logs.decode(errors="replace")
    assert "running as uid 65534 gid 65534 with no capabilities" in text
    assert APP_ID not in text  # the app id is only ever shown by its last 4 characters
    if variant == "kubernetes":  # the budgets sized for the container's memory limit, read from its cgroup
        assert re.search(
            r"memory plan: limit 512 MiB \(/sys/fs/cgroup/\S+\), 2 worker\(s\): max_flows=23166 ", text
        )
    else:
        assert "memory: no cgroup memory limit found" in text


def test_container_doctor_names_the_missing_capability(image: str) -> None:
    """Without --cap-add NET_RAW (podman's default set has no NET_RAW) doctor says so and exits 1;
    with it, the capture check passes."""
    base = ["podman", "run", "--rm", "--net=host", "--entrypoint", "moesif-sniffer"]
    doctor = ["doctor", "--interface", "lo", "--seconds", "0.2"]
    without = subprocess.run([*base, image, *doctor], capture_output=True, text=True, timeout=120)
    assert without.returncode == 1, without.stdout + without.stderr
    (line,) = [ln for ln in without.stdout.splitlines() if " capture: " in ln]
    assert line.startswith("FAIL capture: the CAP_NET_RAW capability is missing (running as root without it)")
    with_cap = subprocess.run([*base, "--cap-add", "NET_RAW", image, *doctor], capture_output=True, text=True,
                              timeout=120)  # fmt: skip
    (line,) = [ln for ln in with_cap.stdout.splitlines() if " capture: " in ln]
    assert line.startswith("ok   capture: CAP_NET_RAW is effective"), with_cap.stdout
    assert with_cap.returncode == 0, with_cap.stdout
