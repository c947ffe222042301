"""`moesif-sniffer doctor`'s TLS check: says what HTTPS capture needs, and really attaches when it can."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
from tls.https_gateway import HttpsGateway, missing_tools

from sniffer.capture.tls.check import kernel_at_least
from sniffer.config import Config
from sniffer.doctor import check_tls

UPROBE_PMU = Path("/sys/bus/event_source/devices/uprobe/type")


def _uprobe_skip() -> str | None:
    if os.geteuid() != 0:
        return "needs root (CAP_SYS_ADMIN for uprobes)"
    if platform.machine() != "x86_64" or not UPROBE_PMU.exists():
        return "needs x86_64 with the uprobe PMU"
    return missing_tools()


def test_off_is_a_skip_that_says_what_it_means() -> None:
    check = check_tls(Config())
    assert check.status == "skip" and "encrypted" in check.message


def test_kernel_version_compare() -> None:
    assert kernel_at_least("6.18.44-fc-v657", (5, 8))
    assert kernel_at_least("5.8.0", (5, 8))
    assert not kernel_at_least("5.4.0-150-generic", (5, 8))
    assert not kernel_at_least("4.19", (5, 8))


def test_no_gateway_process_names_pid_host() -> None:
    if _uprobe_skip():
        pytest.skip(str(_uprobe_skip()))
    check = check_tls(Config(tls="uprobe", tls_process=("no-such-comm",)))
    assert check.status == "WARN" and "no-such-comm" in check.message and "--pid=host" in check.fix


def test_with_an_https_nginx_it_attaches_to_its_libssl(tmp_path: Path) -> None:
    if _uprobe_skip():
        pytest.skip(str(_uprobe_skip()))
    with HttpsGateway(tmp_path):
        check = check_tls(Config(tls="uprobe"))
    assert check.status == "ok", check
    assert "libssl.so" in check.message and "nginx process(es)" in check.message
    assert "socket addresses read in the kernel" in check.message


def test_without_bpf_capabilities_it_fails_and_says_which(tmp_path: Path) -> None:
    if _uprobe_skip():
        pytest.skip(str(_uprobe_skip()))
    code = "from sniffer.config import Config; from sniffer.doctor import check_tls; "
    code += "print(check_tls(Config(tls='uprobe')).line())"
    argv = [
        "setpriv",
        "--bounding-set",
        "-bpf,-perfmon,-sys_admin",
        "--inh-caps=-all",
        sys.executable,
        "-c",
        code,
    ]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"setpriv cannot drop the capabilities here: {exc}")
    assert out.startswith("FAIL tls: CAP_SYS_ADMIN is not effective"), out
    assert "--cap-add SYS_ADMIN --cap-add SYS_PTRACE" in out
