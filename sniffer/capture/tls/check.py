"""What TLS capture (SNIFFER_TLS=uprobe) needs on this host, for `moesif-sniffer doctor`'s `tls` check.

The first missing piece is named with its fix: x86_64, Linux >= 5.8 (BPF ring buffer), the uprobe PMU,
CAP_SYS_ADMIN (current kernels let nothing less create uprobes; CAP_BPF + CAP_PERFMON are not enough),
the gateway processes visible (a container needs --pid=host, a pod hostPID: true) and their libssl; then
the probes are really loaded and attached once (`TlsTap.open`) and detached, which also tells when
CAP_SYS_PTRACE is missing (workers of another user), and whether the socket addresses are read in the
kernel (needs its BTF; otherwise a WARN: the /proc fallback races with short connections).
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable

from sniffer.config import Config

__all__ = ["PID_HOST_FIX", "TLS_CAPS_FIX", "kernel_at_least", "tls_check"]

CAP_SYS_ADMIN = 21
TLS_CAPS_FIX = (
    "run as root, or add the capabilities (docker/podman run --cap-add SYS_ADMIN --cap-add SYS_PTRACE, "
    "or --privileged; Kubernetes securityContext.capabilities.add: [SYS_ADMIN, SYS_PTRACE])"
)
PID_HOST_FIX = (
    "start the gateway first; from a container run with --pid=host (Kubernetes: hostPID: true) so the "
    "gateway's processes are visible; SNIFFER_TLS_PROCESS names them (their comm)"
)


def kernel_at_least(release: str, want: tuple[int, int]) -> bool:
    nums = []
    for part in release.split(".")[:2]:
        digits = "".join(c for c in part if c.isdigit()) if part else ""
        nums.append(int(digits) if digits else 0)
    return tuple(nums) >= want


def tls_check(config: Config, has_capability: Callable[[int], bool]) -> tuple[str, str, str]:
    """(status, message, fix) of the doctor's `tls` check; `has_capability(n)`: effective or not."""
    if config.tls != "uprobe":
        return ("skip", "SNIFFER_TLS=off: HTTPS on the Kong ports is seen encrypted, not reported", "")
    release = os.uname().release
    if platform.machine() != "x86_64":
        return ("FAIL", f"the uprobes are x86_64 only, this host is {platform.machine()}", "")
    if not kernel_at_least(release, (5, 8)):
        return (
            "FAIL",
            f"kernel {release} has no BPF ring buffer (needs Linux >= 5.8)",
            "upgrade the kernel",
        )
    if not os.path.exists("/sys/bus/event_source/devices/uprobe/type"):
        return (
            "FAIL",
            "the kernel has no uprobe PMU (/sys/bus/event_source/devices/uprobe)",
            "a kernel built with CONFIG_UPROBES and CONFIG_UPROBE_EVENTS; in a container mount /sys",
        )
    if not has_capability(CAP_SYS_ADMIN):
        return (
            "FAIL",
            "CAP_SYS_ADMIN is not effective: current kernels let nothing less create uprobes "
            "(CAP_BPF + CAP_PERFMON are not enough)",
            TLS_CAPS_FIX,
        )
    from sniffer.capture.tls.processes import find_gateway_processes

    names = "/".join(config.tls_process)
    procs = find_gateway_processes(config.tls_process)
    if not procs:
        return ("WARN", f"no {names} process is visible from here", PID_HOST_FIX)
    libs = sorted({lib.rsplit("/root", 1)[-1] for p in procs for lib in p.libraries})
    try:
        from sniffer.capture.tls import ProbeConfig, TlsTap, TlsUnavailable

        config_ = ProbeConfig(per_call_cap=config.tls_max_call_bytes, rate_limit=config.tls_rate_limit)
        with TlsTap.open(config.tls_process, config_) as tap:
            attached, watched, error = tap.libraries(), tap.watched_pids(), tap.last_error
            in_kernel, why_not = tap.kernel_addresses, tap.kernel_addresses_error
    except TlsUnavailable as exc:
        return ("FAIL", str(exc), TLS_CAPS_FIX if "permitted" in str(exc) else "")
    except OSError as exc:
        return ("FAIL", f"loading the uprobes failed: {exc}", "")
    if not attached:
        return (
            "FAIL",
            f"{len(procs)} {names} process(es) found but no OpenSSL could be probed"
            + (f" ({error})" if error else f" (mapped: {', '.join(libs) or 'no libssl: static build?'})"),
            "",
        )
    attach = f"uprobes attach to {', '.join(libs) or 'the executable'} of {len(watched)} {names} process(es)"
    if not in_kernel:
        return (
            "WARN",
            f"{attach}, but socket addresses come from /proc, not the kernel ({why_not}): short "
            "connections may be reported with placeholder client addresses",
            "a kernel with BTF (CONFIG_DEBUG_INFO_BTF: /sys/kernel/btf/vmlinux readable here)",
        )
    return ("ok", f"{attach} on kernel {release}; socket addresses read in the kernel (BTF)", "")
