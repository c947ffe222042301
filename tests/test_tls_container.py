"""HTTPS through the gateway, end to end, with the daemon in its container (root and podman only).

The same topology, plan and checks as test_tls_topology.py; the daemon is the image of the Dockerfile
(built by test_container.py's fixture), run as deploy/README.md says for HTTPS: `--pid=host` (the
gateway's processes and their libssl through /proc/<pid>/root: the image's own libssl is another file)
with SYS_ADMIN, SYS_PTRACE and NET_RAW, in the gateway's network namespace (`--network ns:...`, the
topology's stand-in for `--net=host`).
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator

import pytest
from test_container import build_image
from test_tls_topology import (
    BURST,
    KONG_PORTS,
    PLAN,
    TlsTopology,
    _skip_reason,
    check_one_event_per_call,
    run_calls,
)
from topology.live import LiveSniffer, daemon_env
from topology.net import UPSTREAM_PORT

pytestmark = [
    pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason())),
    pytest.mark.skipif(shutil.which("podman") is None, reason="podman missing (apt-get install podman)"),
    pytest.mark.timeout(900),
]


IMAGE = "localhost/moesif-sniffer:tls-test"


@pytest.fixture(scope="module")
def image() -> str:
    """The Dockerfile's image as test_container.py builds it, pure Python (SNIFFER_COMPILE=0: quicker,
    and what is under test here is the capture, not the compiled core)."""
    return build_image(IMAGE, "--build-arg", "SNIFFER_COMPILE=0", timeout=900)


@pytest.fixture(scope="module")
def topo() -> Iterator[TlsTopology]:
    with TlsTopology() as t:
        yield t
    t.remove_workdir()


def test_https_calls_from_the_container(image: str, topo: TlsTopology) -> None:
    name = f"sniffer-tls-{uuid.uuid4().hex[:8]}"
    output = topo.workdir / "container.jsonl"
    log = topo.workdir / "container.log"
    env = daemon_env(
        workers=1,
        interface="any",
        SNIFFER_TLS="uprobe",
        SNIFFER_TLS_PROCESS=topo.comm,
        SNIFFER_KONG_PORTS=KONG_PORTS,
        SNIFFER_PORTS=f"{KONG_PORTS},{UPSTREAM_PORT}",
    )
    cmd = ["podman", "run", "--rm", "--name", name, "--network", f"ns:/run/netns/{topo.ns_gw}", "--pid=host"]
    cmd += ["--cap-add", "NET_RAW,SYS_ADMIN,SYS_PTRACE", "-v", f"{topo.workdir}:{topo.workdir}"]
    for key, value in env.items():
        if key.startswith(("SNIFFER_", "MOESIF_")):
            cmd += ["-e", f"{key}={value}"]
    with open(log, "wb") as errf:
        proc = subprocess.Popen(
            [*cmd, image, "--output", str(output)], stdout=subprocess.DEVNULL, stderr=errf
        )
    sniffer = LiveSniffer(topo, proc, output, log)
    try:
        sniffer.wait_ready(120)
        calls = run_calls(topo, PLAN) + run_calls(topo, BURST)
        check_one_event_per_call(sniffer, calls, "container")
    finally:
        if proc.poll() is None:
            subprocess.run(["podman", "rm", "-f", "-t", "2", name], capture_output=True, timeout=60)
            proc.wait(30)
