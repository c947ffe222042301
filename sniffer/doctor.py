"""`moesif-sniffer doctor`: check that `run` can work on this host, one line per check with what to fix.

Checks, in order (a check whose precondition failed is skipped and says why):
- config: the MOESIF_*/SNIFFER_* variables and flags parse;
- capture: CAP_NET_RAW is in the effective set (/proc/self/status CapEff) and an AF_PACKET socket opens;
- fanout: with several workers and SNIFFER_FANOUT=balanced, the eBPF fanout program loads (else the
  workers share flows by hash: a WARN saying what would let it load);
- user: the switch to SNIFFER_USER after opening the capture can happen (user exists; as root it needs
  CAP_SETUID and CAP_SETGID, which Kubernetes pods that drop ALL must add back);
- interfaces: every SNIFFER_INTERFACE exists and is up (/sys/class/net); `any` lists those up;
- traffic: a short capture (the daemon's ring and kernel port filter) sees packets on the Kong ports;
- offloads: GRO / LRO / TSO per interface, read with the ETHTOOL ioctl (no ethtool binary needed);
- tls: with SNIFFER_TLS=uprobe, what HTTPS capture needs, first missing thing named: x86_64, Linux >= 5.8
  (BPF ring buffer), the uprobe PMU, CAP_SYS_ADMIN (current kernels let nothing less create uprobes;
  CAP_BPF + CAP_PERFMON are not enough), the gateway processes visible (a container needs --pid=host, a
  pod hostPID: true) and their libssl; then the probes are really loaded and attached once
  (`TlsTap.open`), and detached (which also tells when CAP_SYS_PTRACE is needed: workers of another user);
- moesif: with MOESIF_APPLICATION_ID set, `GET {endpoint}/v1/config` with the application id:
  2xx accepted, 401/403 a wrong id, a network error an unreachable endpoint.

Each line starts with ok, WARN, FAIL or skip. Exit status 1 when any check FAILs, else 0: a WARN (no
traffic during the check, an interface without carrier) is worth reading but may be normal on an idle
or spare node.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import os
import pwd
import select
import socket
import struct
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import IO

from sniffer import __version__
from sniffer.capture.afpacket import RingSocket
from sniffer.capture.bpf import SNAPLEN, tcp_port_filter
from sniffer.capture.fanout_balance import load_balanced_fanout, unavailable_reason
from sniffer.capture.tls.check import tls_check
from sniffer.cgroup import cgroup_cpu_limit
from sniffer.config import Config, split_interfaces, usable_cpus
from sniffer.errors import CaptureError, ConfigError
from sniffer.memory_plan import NO_LIMIT, fit_config
from sniffer.moesif.transport import mask_app_id, safe_url
from sniffer.privileges import process_status

__all__ = [
    "Check",
    "check_capture",
    "check_config",
    "check_interfaces",
    "check_moesif",
    "check_offloads",
    "check_tls",
    "check_traffic",
    "check_user",
    "has_capability",
    "main",
    "offloads",
    "run_checks",
]

CAP_SETGID = 6
CAP_SETUID = 7
CAP_NET_RAW = 13
SYS_NET = "/sys/class/net"
IFF_UP = 0x1
SIOCETHTOOL = 0x8946
ETHTOOL_GTSO = 0x1E
ETHTOOL_GFLAGS = 0x25
ETHTOOL_GGRO = 0x2B
ETH_FLAG_LRO = 1 << 15
TRAFFIC_ENOUGH = 10  # packets: more would not say more
MOESIF_TIMEOUT_S = 5.0
NET_RAW_FIX = (
    "run as root, or give the container the NET_RAW capability "
    "(docker/podman run --cap-add NET_RAW; Kubernetes securityContext.capabilities.add: [NET_RAW])"
)


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    status: str  # "ok", "WARN", "FAIL" or "skip"
    message: str
    fix: str = ""

    def line(self) -> str:
        fix = f". Fix: {self.fix}" if self.fix else ""
        return f"{self.status:<4} {self.name}: {self.message}{fix}"


def has_capability(cap: int) -> bool:
    """Whether capability number `cap` is in this process's effective set."""
    return bool(int(process_status().get("CapEff", "0"), 16) >> cap & 1)


def check_config(args: argparse.Namespace | None, environ: Mapping[str, str]) -> tuple[Check, Config | None]:
    try:
        config = Config.load(args, environ)
    except ConfigError as exc:
        return Check("config", "FAIL", str(exc), "correct or remove that variable or flag"), None
    ports = ",".join(map(str, config.ports)) or "any"
    kong = ",".join(map(str, config.kong_ports)) or "none"
    app = mask_app_id(config.application_id) if config.application_id else "unset (JSON lines)"
    return (
        Check(
            "config",
            "ok",
            f"valid: interface {config.interface}, ports {ports}, Kong ports {kong}, application id {app}",
        ),
        config,
    )


def check_memory(args: argparse.Namespace | None, environ: Mapping[str, str], config: Config) -> Check:
    """The memory plan `run` would log (README, Budgets), or why there is none."""
    try:
        _, plan = fit_config(config, Config.given(args, environ), config.worker_count())
    except ConfigError as exc:
        return Check(
            "memory", "FAIL", str(exc), "raise the container's memory limit, or run fewer SNIFFER_WORKERS"
        )
    if plan is None:
        return Check(
            "memory",
            "WARN",
            f"no memory limit (no cgroup limit, SNIFFER_MEMORY_LIMIT unset or off): {NO_LIMIT}",
            "give the container a memory limit, or set SNIFFER_MEMORY_LIMIT",
        )
    return Check("memory", "ok", plan.describe().removeprefix("memory plan: "))


def check_cpu(config: Config, cpu_limit: Callable[[], tuple[float, str] | None] = cgroup_cpu_limit) -> Check:
    """How many capture workers `run` would start, and whether they fit in the cgroup's CPU quota."""
    cores = len(os.sched_getaffinity(0))
    limit = cpu_limit()
    workers = config.worker_count(lambda: limit)
    quota = f"the cgroup's quota is {limit[0]:.2f} CPUs ({limit[1]})" if limit else "no cgroup CPU limit"
    how = "SNIFFER_WORKERS" if config.workers is not None else "auto"
    message = f"{workers} capture worker(s) ({how}); {cores} core(s) to run on, {quota}"
    # Each worker keeps a CPU busy under load: more than there are share them, throttled or in turns.
    fits = usable_cpus(limit)
    if workers > fits:
        return Check(
            "cpu",
            "WARN",
            f"{message}: more workers than CPUs to run them",
            f"set SNIFFER_WORKERS to at most {fits} or leave it unset"
            + (", or raise the CPU limit" if limit is not None else ""),
        )
    return Check("cpu", "ok", message)


def check_fanout(config: Config, workers: int) -> Check:
    """How `run`'s capture workers would share the flows: whether the balanced fanout's eBPF program
    loads here (loaded once and closed), else why not."""
    if workers <= 1:
        return Check("fanout", "skip", "one capture worker: no flows to share")
    if config.fanout == "hash":
        return Check(
            "fanout", "ok", f"the {workers} workers share flows by the kernel's hash (SNIFFER_FANOUT=hash)"
        )
    try:
        load_balanced_fanout(workers, config.max_flows, config.capture_ports()).close()
    except OSError as exc:
        return Check(
            "fanout",
            "WARN",
            f"the eBPF fanout program does not load ({unavailable_reason(exc)}): the {workers} workers will"
            " share flows by the kernel's hash, where a few busy connections can load one far more",
            "run with CAP_SYS_ADMIN, or CAP_BPF under a seccomp profile that allows bpf(2); or set"
            " SNIFFER_FANOUT=hash",
        )
    return Check(
        "fanout", "ok", f"new flows dealt to the {workers} workers in turn (the eBPF fanout program loads)"
    )


def check_capture() -> Check:
    uid = os.geteuid()
    cap = has_capability(CAP_NET_RAW)
    try:
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0).close()
    except PermissionError:
        who = "root without it" if uid == 0 else f"uid {uid}"
        return Check(
            "capture",
            "FAIL",
            f"the CAP_NET_RAW capability is missing (running as {who}), so packets cannot be captured",
            NET_RAW_FIX if uid else "grant this root process CAP_NET_RAW" + NET_RAW_FIX.partition(",")[2],
        )
    except OSError as exc:
        return Check(
            "capture",
            "FAIL",
            f"an AF_PACKET socket cannot be opened: {exc.strerror}",
            "the kernel needs CONFIG_PACKET; a seccomp or LSM policy may block AF_PACKET sockets",
        )
    how = "CAP_NET_RAW is effective" if cap else "CAP_NET_RAW is not listed but"
    return Check("capture", "ok", f"{how}; an AF_PACKET socket opens")


def check_user(config: Config) -> Check:
    if not config.user:
        return Check(
            "user",
            "WARN",
            f"SNIFFER_USER is empty: the daemon keeps uid {os.geteuid()} (without capabilities)",
            "set SNIFFER_USER to an unprivileged user such as nobody",
        )
    try:
        target = pwd.getpwnam(config.user)
    except KeyError:
        return Check(
            "user",
            "FAIL",
            f"SNIFFER_USER {config.user!r} does not exist here",
            "create the user or set SNIFFER_USER to an existing one (nobody)",
        )
    uid = os.geteuid()
    if uid == target.pw_uid:
        return Check("user", "ok", f"already running as {config.user} (uid {uid})")
    if uid != 0:
        return Check(
            "user",
            "FAIL",
            f"running as uid {uid}, which cannot switch to {config.user}",
            f"start as root (it drops to {config.user} itself), or set SNIFFER_USER to this user",
        )
    missing = [
        n for n, c in (("CAP_SETUID", CAP_SETUID), ("CAP_SETGID", CAP_SETGID)) if not has_capability(c)
    ]
    if missing:
        return Check(
            "user",
            "FAIL",
            f"root cannot switch to {config.user}: {' and '.join(missing)} missing",
            "add the SETUID and SETGID capabilities (Kubernetes: capabilities.add with NET_RAW)",
        )
    return Check("user", "ok", f"switches to {config.user} (uid {target.pw_uid}) after opening the capture")


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _is_up(name: str) -> bool:
    flags = _read(f"{SYS_NET}/{name}/flags")
    return flags is not None and bool(int(flags, 16) & IFF_UP)


def _all_interfaces() -> list[str]:
    try:
        return sorted(os.listdir(SYS_NET))
    except OSError:
        return []


def check_interfaces(config: Config) -> Check:
    names = split_interfaces(config.interface)
    present = _all_interfaces()
    if names is None:
        up = [n for n in present if _is_up(n)]
        if not up:
            return Check(
                "interfaces", "FAIL", "any: no interface is up", "bring the Kong node's interfaces up"
            )
        return Check(
            "interfaces", "ok", f"any: {len(up)} up ({', '.join(up[:8])}{', ...' if len(up) > 8 else ''})"
        )
    problems: list[str] = []
    warns: list[str] = []
    for name in names:
        if name not in present:
            problems.append(f"no interface named {name!r} (here: {', '.join(present) or 'none'})")
        elif not _is_up(name):
            problems.append(f"{name} is down")
        elif _read(f"{SYS_NET}/{name}/operstate") == "down":
            warns.append(f"{name} is up but has no carrier")
    if problems:
        return Check(
            "interfaces",
            "FAIL",
            "; ".join(problems),
            "set SNIFFER_INTERFACE to interfaces that exist and are up (or any); in a container, "
            "share the host's network (--net=host, Kubernetes hostNetwork: true)",
        )
    if warns:
        return Check("interfaces", "WARN", "; ".join(warns), "check the cable or link of that interface")
    return Check("interfaces", "ok", f"{', '.join(names)} up")


def _listening(ports: tuple[int, ...]) -> set[int]:
    """Ports with a listening TCP socket in this network namespace (/proc/net/tcp, tcp6)."""
    found: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            next(f, None)
            for line in f:
                fields = line.split()
                if len(fields) > 3 and fields[3] == "0A":  # TCP_LISTEN
                    port = int(fields[1].rpartition(":")[2], 16)
                    if port in ports:
                        found.add(port)
    return found


def check_traffic(config: Config, seconds: float) -> Check:
    # The Kong ports, else what the daemon's kernel filter passes.
    ports = config.kong_ports or config.capture_ports()
    label = f"ports {','.join(map(str, ports))}" if ports else "any TCP port"
    rings: list[RingSocket] = []
    seen = 0
    try:
        program = tcp_port_filter(ports)
        for name in split_interfaces(config.interface) or [None]:
            rings.append(RingSocket(name, program, block_count=2, retire_ms=100))
        deadline = time.monotonic() + seconds
        while seen < TRAFFIC_ENOUGH and (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select(rings, [], [], left)
            for ring in ready:
                seen += ring.walk(lambda *_: None)
    except (CaptureError, ValueError) as exc:
        return Check("traffic", "FAIL", f"cannot capture: {exc}", NET_RAW_FIX)
    finally:
        for ring in rings:
            ring.close()
    where = f"on {config.interface}"
    if seen:
        return Check(
            "traffic", "ok", f"{seen}{'+' if seen >= TRAFFIC_ENOUGH else ''} packets on {label} {where}"
        )
    idle = sorted(set(ports) - _listening(ports)) if ports else []
    hint = f" (nothing listens on {','.join(map(str, idle))} in this network namespace)" if idle else ""
    return Check(
        "traffic",
        "WARN",
        f"no packets on {label} {where} in {seconds:g} s{hint}",
        "if Kong is serving calls now, set SNIFFER_KONG_PORTS/SNIFFER_PORTS to its plain-HTTP proxy "
        "ports and SNIFFER_INTERFACE to where they arrive; in a container share the host's network",
    )


def _ethtool(sock: socket.socket, name: str, cmd: int) -> int | None:
    """One legacy ETHTOOL get (struct ethtool_value) through SIOCETHTOOL; None when unsupported."""
    value = ctypes.create_string_buffer(struct.pack("II", cmd, 0), 8)
    ifreq = struct.pack("16sP", name.encode()[:15], ctypes.addressof(value)).ljust(40, b"\0")
    try:
        fcntl.ioctl(sock.fileno(), SIOCETHTOOL, ifreq)
    except OSError:
        return None
    return int(struct.unpack("II", value.raw)[1])


def offloads(name: str) -> dict[str, bool | None]:
    """GRO, LRO and TSO of interface `name` (None: the driver does not say)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        gro = _ethtool(sock, name, ETHTOOL_GGRO)
        flags = _ethtool(sock, name, ETHTOOL_GFLAGS)
        tso = _ethtool(sock, name, ETHTOOL_GTSO)
    return {
        "gro": None if gro is None else bool(gro),
        "lro": None if flags is None else bool(flags & ETH_FLAG_LRO),
        "tso": None if tso is None else bool(tso),
    }


def check_offloads(config: Config) -> Check:
    names = split_interfaces(config.interface) or [n for n in _all_interfaces() if _is_up(n)]
    parts = []
    merged = False
    for name in [n for n in names if os.path.exists(f"{SYS_NET}/{n}")][:8]:
        got = offloads(name)
        merged |= any(got.values())
        shown = " ".join(f"{k.upper()} {'?' if v is None else 'on' if v else 'off'}" for k, v in got.items())
        parts.append(f"{name} {shown}")
    if not parts:
        return Check("offloads", "skip", "no interface to read")
    effect = (
        f"merged super-packets up to 64 KiB reach the capture, which is fine: the snap length is "
        f"{SNAPLEN // 1024} KiB and no checksum is checked"
        if merged
        else "every packet is captured as sent on the wire"
    )
    return Check("offloads", "ok", f"{'; '.join(parts)}: {effect}")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None  # the sender does not follow redirects either: report them


def check_moesif(config: Config, timeout_s: float = MOESIF_TIMEOUT_S) -> Check:
    if not config.application_id:
        return Check("moesif", "skip", "MOESIF_APPLICATION_ID is unset: events are written as JSON lines")
    url = config.api_endpoint + "/v1/config"
    req = urllib.request.Request(
        url,
        headers={
            "X-Moesif-Application-Id": config.application_id,
            "User-Agent": f"moesif-sniffer/{__version__} doctor",
        },
    )
    app = mask_app_id(config.application_id)
    endpoint = safe_url(config.api_endpoint)  # never print a user:password@ part of the URL
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(req, timeout=timeout_s) as resp:
            status = resp.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return Check(
            "moesif",
            "FAIL",
            f"{endpoint} is unreachable: {reason}",
            "allow outbound HTTPS from the node to the endpoint (DNS, firewall, proxy), or correct "
            "MOESIF_API_ENDPOINT",
        )
    if 200 <= status < 300:
        return Check("moesif", "ok", f"{endpoint} accepts application id {app} (HTTP {status})")
    if status in (401, 403):
        return Check(
            "moesif",
            "FAIL",
            f"{endpoint} rejects application id {app} (HTTP {status})",
            "set MOESIF_APPLICATION_ID to the id shown in Moesif under API Keys",
        )
    return Check(
        "moesif",
        "FAIL",
        f"{safe_url(url)} answered HTTP {status}",
        "check MOESIF_API_ENDPOINT: it is the collector's base URL, e.g. https://api.moesif.net",
    )


def check_tls(config: Config) -> Check:
    """What SNIFFER_TLS=uprobe needs, the first missing piece explained; then a real attach."""
    return Check("tls", *tls_check(config, has_capability))


def run_checks(args: argparse.Namespace | None, environ: Mapping[str, str], seconds: float) -> list[Check]:
    config_check, config = check_config(args, environ)
    capture = check_capture()
    checks = [config_check, capture]
    if config is None:
        return [
            *checks,
            *(
                Check(n, "skip", "needs a valid configuration")
                for n in (
                    "memory",
                    "cpu",
                    "fanout",
                    "user",
                    "interfaces",
                    "traffic",
                    "offloads",
                    "tls",
                    "moesif",
                )
            ),
        ]
    interfaces = check_interfaces(config)
    checks += [check_memory(args, environ, config), check_cpu(config)]
    checks += [check_fanout(config, config.worker_count()), check_user(config), interfaces]
    if capture.status == "FAIL":
        checks.append(Check("traffic", "skip", "needs the capture (see above)"))
    elif interfaces.status == "FAIL":
        checks.append(Check("traffic", "skip", "needs the interfaces (see above)"))
    else:
        checks.append(check_traffic(config, seconds))
    checks += [check_offloads(config), check_tls(config), check_moesif(config)]
    return checks


def main(args: argparse.Namespace, environ: Mapping[str, str], out: IO[str] | None = None) -> int:
    """Print one line per check; 1 when any failed."""
    out = out or sys.stdout
    failed = 0
    for check in run_checks(args, environ, float(getattr(args, "seconds", 3.0))):
        print(check.line(), file=out, flush=True)
        failed += check.status == "FAIL"
    print(f"{failed} check(s) failed" if failed else "all checks passed", file=out)
    return 1 if failed else 0
