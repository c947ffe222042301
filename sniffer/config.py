"""The whole program's configuration: one option table, rendered as flags, env vars and README rows.

Precedence is flag > environment variable > default. Moesif plugin options are `MOESIF_<OPTION>`
(moesif.md "Configuration names"), capture options are `SNIFFER_<OPTION>`; the flag is always
`--<option-with-dashes>`. Every flag defaults to None so "not given" is distinguishable from a value.

A bad value raises ConfigError with a one-line message naming the variable and the flag. An unknown
`MOESIF_*`/`SNIFFER_*` variable is an error too (a typo would otherwise silently fall back to a default),
except the names in `IGNORED_ENV`: plugin options with no meaning for a passive sniffer, which an operator
moving from the plugin may still carry over. `Config.ignored_env()` lists them so the CLI can warn.
"""

from __future__ import annotations

import argparse
import difflib
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any
from urllib.parse import urlsplit

from reassembly.limits import Limits
from sniffer.cgroup import cgroup_cpu_limit
from sniffer.errors import ConfigError
from sniffer.kong.join import DEFAULT_MAX_PENDING_BYTES, DEFAULT_MAX_PENDING_LEGS
from sniffer.moesif.batcher import DEFAULT_QUEUE_BYTES

__all__ = ["IGNORED_ENV", "OPTIONS", "Config", "Option", "add_arguments", "options_markdown", "split_addr"]

# Plugin options accepted and ignored: timers/keepalive of the Lua transport, header injection, and
# compression (the sniffer always gzips batches, moesif.md "Transport").
IGNORED_ENV = frozenset(
    {
        "MOESIF_TIMEOUT",
        "MOESIF_KEEPALIVE",
        "MOESIF_MAX_CALLBACK_TIME_SPENT",
        "MOESIF_DISABLE_TRANSACTION_ID",
        "MOESIF_ENABLE_COMPRESSION",
    }
)

_L = Limits()
# The probes copy one call in at most 16 records of 16 KiB (sniffer.capture.tls.ssl_probes.ProbeConfig).
TLS_MAX_CALL_BYTES = 16 * 16 * 1024


class _Bad(ValueError):
    """A parser's complaint; Config.load adds the variable and flag names."""


def _str(raw: str) -> str | None:
    raw = raw.strip()
    return raw or None


def _nonempty(raw: str) -> str:
    if not raw.strip():
        raise _Bad("expected a non-empty value")
    return raw.strip()


def _url(raw: str) -> str:
    raw = raw.strip().rstrip("/")
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _Bad(f"expected an http(s) URL, got {raw!r}")
    return raw


def _int_min(minimum: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise _Bad(f"expected a whole number, got {raw!r}") from None
        if value < minimum:
            raise _Bad(f"expected a whole number >= {minimum}, got {raw!r}")
        return value

    return parse


_SIZE_UNITS = {
    "": 1,
    "k": 10**3,
    "m": 10**6,
    "g": 10**9,
    "ki": 1 << 10,
    "mi": 1 << 20,
    "gi": 1 << 30,
}


def _memory_limit(raw: str) -> int:
    """Bytes, with Kubernetes' suffixes (K M G decimal, Ki Mi Gi binary); 0 or off: no limit."""
    text = raw.strip().lower().removesuffix("b")
    if text == "off":
        return 0
    digits = text.rstrip("kmgi")
    unit = _SIZE_UNITS.get(text[len(digits) :])
    if not digits.isdigit() or unit is None:
        raise _Bad(f"expected bytes, optionally with K, M, G, Ki, Mi or Gi (e.g. 512Mi), or off, got {raw!r}")
    return int(digits) * unit


def _seconds(raw: str) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise _Bad(f"expected a number of seconds, got {raw!r}") from None
    if not math.isfinite(value) or value < 0:
        raise _Bad(f"expected a finite number of seconds >= 0, got {raw!r}")
    return value


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _bool(raw: str) -> bool:
    low = raw.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise _Bad(f"expected true/false (or 1/0, yes/no, on/off), got {raw!r}")


def _list(raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def _lower_list(raw: str) -> tuple[str, ...]:
    return tuple(item.lower() for item in _list(raw))


def _port(text: str, raw: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise _Bad(f"expected comma-separated ports 1-65535 (or ranges a-b), got {raw!r}")
    return int(text)


def _ports(raw: str) -> tuple[int, ...]:
    out: list[int] = []
    for item in _list(raw):
        low, sep, high = item.partition("-")
        if not sep:
            out.append(_port(low.strip(), raw))
            continue
        a, b = _port(low.strip(), raw), _port(high.strip(), raw)
        if a > b or b - a > 1024:
            raise _Bad(f"port range {item!r} is reversed or wider than 1024 ports, in {raw!r}")
        out.extend(range(a, b + 1))
    return tuple(sorted(set(out)))


def _int_range(minimum: int, maximum: int) -> Callable[[str], int]:
    low = _int_min(minimum)

    def parse(raw: str) -> int:
        value = low(raw)
        if value > maximum:
            raise _Bad(f"expected a whole number {minimum}..{maximum}, got {raw!r}")
        return value

    return parse


def usable_cpus(cpu_limit: tuple[float, str] | None) -> int:
    """The cores this process may run on, no more than the whole CPUs of its cgroup's quota
    (`sniffer.cgroup.cgroup_cpu_limit`), at least one: more busy processes than that share the quota by
    being throttled in turns."""
    cores = len(os.sched_getaffinity(0))
    return max(1, cores if cpu_limit is None else min(cores, int(cpu_limit[0])))


def split_interfaces(spec: str) -> list[str] | None:
    """SNIFFER_INTERFACE as names, each once; None is `any` (every interface through one socket)."""
    names = [n.strip() for n in spec.split(",") if n.strip()]
    return None if not names or "any" in names else list(dict.fromkeys(names))


def _workers(raw: str) -> int | None:
    if raw.strip().lower() == "auto":
        return None
    return _count(raw)


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        low = raw.strip().lower()
        if low not in allowed:
            raise _Bad(f"expected one of {', '.join(allowed)}, got {raw!r}")
        return low

    return parse


def split_addr(addr: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` -> (host without brackets, port): the one parser of listen addresses
    (the option's check, the metrics listener and the port the core must not parse all use it)."""
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"expected host:port (IPv6 as [addr]:port), got {addr!r}")
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        raise ValueError(f"an IPv6 host needs brackets, e.g. [::1]:9464, got {addr!r}")
    return host.strip("[]"), int(port)


def _addr(raw: str) -> str | None:
    """host:port or [v6]:port; empty disables the listener."""
    raw = raw.strip()
    if not raw:
        return None
    try:
        _, port = split_addr(raw)
    except ValueError as exc:
        raise _Bad(str(exc)) from None
    if port == 0:
        raise _Bad(f"expected host:port (IPv6 as [addr]:port), got {raw!r}")
    return raw


@dataclass(frozen=True, slots=True)
class Option:
    name: str  # Config field; flag is --name-with-dashes, env var PREFIX_NAME
    prefix: str  # "MOESIF" or "SNIFFER"
    parse: Callable[[str], Any]
    default: Any
    help: str

    @property
    def env(self) -> str:
        return f"{self.prefix}_{self.name.upper()}"

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def _m(name: str, parse: Callable[[str], Any], default: Any, help: str) -> Option:
    return Option(name, "MOESIF", parse, default, help)


def _s(name: str, parse: Callable[[str], Any], default: Any, help: str) -> Option:
    return Option(name, "SNIFFER", parse, default, help)


_ms = _int_min(0)
_count = _int_min(1)
_bytes = _int_min(0)

OPTIONS: tuple[Option, ...] = (
    _m("application_id", _str, None, "Moesif application id; unset: write events as JSON lines instead"),
    _m("api_endpoint", _url, "https://api.moesif.net", "Collector base URL"),
    _m("user_id_header", _str, None, "Request header holding the user id (checked first)"),
    _m("company_id_header", _str, None, "Request header holding the company id (checked first)"),
    _m("authorization_header_name", _lower_list, ("authorization",), "Token headers; first present wins"),
    _m("authorization_user_id_field", _str, "sub", "JWT claim (or dotted path) holding the user id"),
    _m("authorization_company_id_field", _str, None, "JWT claim (or dotted path) holding the company id"),
    _m("request_max_body_size_limit", _bytes, 100_000, "Larger decoded request bodies are left out"),
    _m("response_max_body_size_limit", _bytes, 100_000, "Larger decoded response bodies are left out"),
    _m("request_header_masks", _lower_list, (), "Request headers removed from events"),
    _m("response_header_masks", _lower_list, (), "Response headers removed from events"),
    _m("request_body_masks", _list, (), "JSON keys removed from request bodies at any depth"),
    _m("response_body_masks", _list, (), "JSON keys removed from response bodies at any depth"),
    _m("request_masks", _list, (), "Deprecated plugin name: used when request_body_masks is empty"),
    _m("response_masks", _list, (), "Deprecated plugin name: used when response_body_masks is empty"),
    _m("request_query_masks", _list, (), "Query parameters whose values become *****"),
    _m("disable_capture_request_body", _bool, False, "Leave request bodies out"),
    _m("disable_capture_response_body", _bool, False, "Leave response bodies out"),
    _m("disable_gzip_payload_decompression", _bool, False, "Send compressed bodies undecoded (base64)"),
    _m("mask_credential_headers", _bool, True, "Remove credential headers (authorization, cookie, ...)"),
    _m("batch_size", _count, 50, "Maximum events per batch POST"),
    _m("batch_max_time", _seconds, 2.0, "Seconds an event may wait before its batch is sent"),
    _m("event_queue_size", _count, 100_000, "Events queued for sending; the oldest are dropped when full"),
    _m(
        "event_queue_bytes",
        _count,
        DEFAULT_QUEUE_BYTES,
        "Bytes of encoded events queued for sending; the oldest are dropped when over",
    ),
    _m("connect_timeout", _ms, 1000, "Milliseconds for the config fetch (plugin unit)"),
    _m("send_timeout", _ms, 5000, "Milliseconds for a batch POST (plugin unit)"),
    _m("flush_timeout", _seconds, 10.0, "Seconds allowed for the final flush on shutdown"),
    _m("spool_dir", _str, None, "Directory where unsent batches are spooled; unset: no spooling"),
    _m("spool_max_bytes", _bytes, 256 << 20, "Size cap of the spool directory"),
    _m("api_version", _str, None, "Copied into request.api_version when set"),
    _m("debug", _bool, False, "Verbose logging"),
    _s("ports", _ports, (), "HTTP server ports to capture; empty: any port"),
    _s("kong_ports", _ports, (8000, 8443), "Kong proxy listening ports; empty: no leg joining"),
    _s("upstream_ports", _ports, (), "Service ports Kong proxies to; empty: any"),
    _s("interface", _nonempty, "any", "Capture interface"),
    _s(
        "workers",
        _workers,
        None,
        "Capture worker processes; unset or auto: one per core, at most 4 and at most the cgroup's CPU "
        "limit (whole CPUs of `cpu.max` / `cpu.cfs_quota_us`, at least 1; logged at start)",
    ),
    _s(
        "ring_mb",
        _int_range(1, 4096),
        16,
        "Capture ring per worker and interface, MiB: what the kernel holds while a worker is busy (16 MiB:"
        " ~0.3 s of 200k packets/s); counted in the memory plan",
    ),
    _s(
        "fanout",
        _choice("balanced", "hash"),
        "balanced",
        "How capture workers share flows: balanced (an eBPF fanout program deals new flows in turn, so a "
        "few busy connections split evenly; hash when the kernel refuses it) or hash (the kernel's flow "
        "hash)",
    ),
    _s("metrics_addr", _addr, "127.0.0.1:9464", "Prometheus metrics listen address; empty: off"),
    _s("log_format", _choice("text", "json"), "text", "Log line format: text or json"),
    _s("user", _str, "nobody", "User to drop privileges to after opening the capture; empty: stay"),
    _s(
        "memory_limit",
        _memory_limit,
        None,
        "Memory the daemon may use (e.g. 512Mi): the budgets not set below are sized to fit in it;"
        " unset: the container's cgroup limit, if any; off: each budget's default",
    ),
    _s("max_flows", _count, _L.max_flows, "Concurrent TCP flows tracked"),
    _s("max_buffer_bytes", _bytes, _L.max_buffer_bytes, "Out-of-order bytes held across all flows"),
    _s("max_flow_buffer_bytes", _bytes, _L.max_flow_buffer_bytes, "Out-of-order bytes held per direction"),
    _s(
        "max_http_buffer_bytes",
        _bytes,
        None,
        "HTTP bytes held across all flows (open heads, bodies in flight); unset: SNIFFER_MAX_BUFFER_BYTES"
        " (with a memory limit: its own share)",
    ),
    _s("max_header_bytes", _count, _L.max_header_bytes, "Largest HTTP header block parsed"),
    _s("max_pending_requests", _count, _L.max_pending_requests, "Pipelined requests awaiting a response"),
    _s("reorder_timeout", _seconds, _L.reorder_timeout_s, "Seconds a hole in a stream is waited for"),
    _s("idle_timeout", _seconds, _L.idle_timeout_s, "Seconds of silence before a flow is closed"),
    _s("leg_wait", _seconds, 5.0, "Seconds to wait for the partner leg of a Kong call"),
    _s("max_pending_legs", _count, DEFAULT_MAX_PENDING_LEGS, "Kong legs awaiting their partner leg"),
    _s(
        "max_pending_leg_bytes",
        _bytes,
        DEFAULT_MAX_PENDING_BYTES,
        "Body bytes of the Kong legs awaiting their partner leg",
    ),
    _s("shed", _bool, True, "Shed load under CPU pressure (bodies, then flows sampled); off: never"),
    _s(
        "cpu_priority",
        _choice("normal", "low", "idle"),
        "normal",
        "low: capture at nice 19 and SCHED_BATCH, so the gateway wins the CPU (what is missed is counted);"
        " idle: SCHED_IDLE, the daemon gets only CPU time the gateway does not want",
    ),
    _s(
        "drop_pure_acks",
        _bool,
        False,
        "Drop pure ACKs in the kernel filter: fewer packets; a lost segment is then declared at the reorder"
        " timeout instead of at the ACK",
    ),
    _s(
        "tls",
        _choice("off", "uprobe"),
        "off",
        "HTTPS in plaintext: off, or uprobe (eBPF uprobes on the gateway's OpenSSL; see TLS capture)",
    ),
    _s("tls_process", _list, ("nginx",), "Process names (comm) whose OpenSSL calls are captured"),
    _s(
        "tls_max_call_bytes",
        _int_range(1, TLS_MAX_CALL_BYTES),
        64 << 10,
        "Bytes of one SSL_read/SSL_write call copied; the rest is a counted gap",
    ),
    _s(
        "tls_rate_limit",
        _int_min(0),
        0,
        "SSL calls per second per process captured (kernel side); 0: no limit",
    ),
)

# Beyond this, one joining/sending process is the bottleneck, not the capture workers.
MAX_AUTO_WORKERS = 4
_BY_NAME = {o.name: o for o in OPTIONS}
_BY_ENV = {o.env: o for o in OPTIONS}
# Room for compression framing: a stored (incompressible) body grows by a few bytes per 16-64 KB block,
# so a wire body within this margin of the limit may still decode to one under it.
_BODY_MARGIN_MIN = 1024


@dataclass(frozen=True, slots=True)
class Config:
    application_id: str | None = None
    api_endpoint: str = "https://api.moesif.net"
    user_id_header: str | None = None
    company_id_header: str | None = None
    authorization_header_name: tuple[str, ...] = ("authorization",)
    authorization_user_id_field: str | None = "sub"
    authorization_company_id_field: str | None = None
    request_max_body_size_limit: int = 100_000
    response_max_body_size_limit: int = 100_000
    request_header_masks: tuple[str, ...] = ()
    response_header_masks: tuple[str, ...] = ()
    request_body_masks: tuple[str, ...] = ()
    response_body_masks: tuple[str, ...] = ()
    request_masks: tuple[str, ...] = ()
    response_masks: tuple[str, ...] = ()
    request_query_masks: tuple[str, ...] = ()
    disable_capture_request_body: bool = False
    disable_capture_response_body: bool = False
    disable_gzip_payload_decompression: bool = False
    mask_credential_headers: bool = True
    batch_size: int = 50
    batch_max_time: float = 2.0
    event_queue_size: int = 100_000
    event_queue_bytes: int = DEFAULT_QUEUE_BYTES
    connect_timeout: int = 1000
    send_timeout: int = 5000
    flush_timeout: float = 10.0
    spool_dir: str | None = None
    spool_max_bytes: int = 256 << 20
    api_version: str | None = None
    debug: bool = False
    ports: tuple[int, ...] = ()
    kong_ports: tuple[int, ...] = (8000, 8443)
    upstream_ports: tuple[int, ...] = ()
    interface: str = "any"
    workers: int | None = None  # None: auto, see worker_count()
    ring_mb: int = 16  # per capture socket: one per worker and interface
    fanout: str = "balanced"
    metrics_addr: str | None = "127.0.0.1:9464"
    log_format: str = "text"
    user: str | None = "nobody"
    memory_limit: int | None = None  # None: the cgroup's limit, if any (see memory_plan); 0: none
    max_flows: int = _L.max_flows
    max_buffer_bytes: int = _L.max_buffer_bytes
    max_flow_buffer_bytes: int = _L.max_flow_buffer_bytes
    max_http_buffer_bytes: int | None = None  # None: max_buffer_bytes (one setting bounds both layers)
    max_header_bytes: int = _L.max_header_bytes
    max_pending_requests: int = _L.max_pending_requests
    reorder_timeout: float = _L.reorder_timeout_s
    idle_timeout: float = _L.idle_timeout_s
    leg_wait: float = 5.0
    max_pending_legs: int = DEFAULT_MAX_PENDING_LEGS
    max_pending_leg_bytes: int = DEFAULT_MAX_PENDING_BYTES
    shed: bool = True
    cpu_priority: str = "normal"
    drop_pure_acks: bool = False
    tls: str = "off"
    tls_process: tuple[str, ...] = ("nginx",)
    tls_max_call_bytes: int = 64 << 10
    tls_rate_limit: int = 0

    @classmethod
    def load(cls, args: argparse.Namespace | None, environ: Mapping[str, str]) -> Config:
        """Merge flags (`args`, from a parser set up by `add_arguments`) over `environ` over defaults."""
        for key in environ:
            if key.startswith(("MOESIF_", "SNIFFER_")) and key not in _BY_ENV and key not in IGNORED_ENV:
                close = difflib.get_close_matches(key, list(_BY_ENV), n=1, cutoff=0.75)
                hint = f"; did you mean {close[0]}?" if close else ""
                raise ConfigError(f"unknown environment variable {key}{hint}")
        values: dict[str, Any] = {}
        for opt in OPTIONS:
            raw = getattr(args, opt.name, None) if args is not None else None
            source = opt.flag
            if raw is None:
                raw = environ.get(opt.env)
                source = opt.env
            if raw is None:
                continue
            try:
                values[opt.name] = opt.parse(raw)
            except _Bad as exc:
                given = " (given as the flag)" if source == opt.flag else ""
                raise ConfigError(f"{opt.env} / {opt.flag}: {exc}{given}") from None
        return replace(cls(), **values)

    @staticmethod
    def given(args: argparse.Namespace | None, environ: Mapping[str, str]) -> frozenset[str]:
        """Names of the options set by a flag or a variable (not left at their default)."""
        return frozenset(
            opt.name
            for opt in OPTIONS
            if (args is not None and getattr(args, opt.name, None) is not None) or opt.env in environ
        )

    def worker_count(self, cpu_limit: Callable[[], tuple[float, str] | None] = cgroup_cpu_limit) -> int:
        """SNIFFER_WORKERS, or when unset ("auto") one capture worker per CPU this process can use
        (`usable_cpus`), at most MAX_AUTO_WORKERS."""
        if self.workers is not None:
            return self.workers
        return min(usable_cpus(cpu_limit()), MAX_AUTO_WORKERS)

    @staticmethod
    def ignored_env(environ: Mapping[str, str]) -> list[str]:
        """The allowlisted plugin-only variables present in `environ`, for a startup warning."""
        return sorted(k for k in environ if k in IGNORED_ENV)

    def capture_ports(self) -> tuple[int, ...]:
        """Ports for the kernel filter: SNIFFER_PORTS with the Kong and upstream ports; () is all TCP
        (an empty SNIFFER_PORTS means the core takes every port, so the filter must too)."""
        if not self.ports:
            return ()
        return tuple(sorted(set(self.ports) | set(self.kong_ports) | set(self.upstream_ports)))

    def limits(self) -> Limits:
        """The core's budgets: the SNIFFER_* values, and a body cap just above the larger body limit."""
        wanted = [
            limit
            for limit, off in (
                (self.request_max_body_size_limit, self.disable_capture_request_body),
                (self.response_max_body_size_limit, self.disable_capture_response_body),
            )
            if not off
        ]
        body = max(wanted) if wanted else 0
        max_body = body + max(_BODY_MARGIN_MIN, body // 256) if wanted else 0
        return replace(
            Limits(),
            max_flows=self.max_flows,
            max_buffer_bytes=self.max_buffer_bytes,
            max_flow_buffer_bytes=self.max_flow_buffer_bytes,
            max_http_buffer_bytes=(
                self.max_buffer_bytes if self.max_http_buffer_bytes is None else self.max_http_buffer_bytes
            ),
            max_header_bytes=self.max_header_bytes,
            max_pending_requests=self.max_pending_requests,
            reorder_timeout_s=self.reorder_timeout,
            idle_timeout_s=self.idle_timeout,
            max_body_bytes=max_body,
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one `--<option>` per option, each defaulting to None (parsed later by Config.load)."""
    group = parser.add_argument_group("configuration (each flag overrides its environment variable)")
    for opt in OPTIONS:
        kwargs: dict[str, Any] = {"dest": opt.name, "default": None, "metavar": "VALUE"}
        if opt.parse is _bool:
            # `--debug` alone means true; `--debug false` is still possible.
            kwargs.update(nargs="?", const="true")
        group.add_argument(opt.flag, help=f"{opt.help} [env {opt.env}]", **kwargs)


def _render_default(value: Any) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value) if value else "(empty)"
    return str(value)


def options_markdown() -> str:
    """The README's option table, generated from OPTIONS."""
    rows = ["| Environment variable | Flag | Default | Meaning |", "|---|---|---|---|"]
    for opt in OPTIONS:
        rows.append(f"| `{opt.env}` | `{opt.flag}` | `{_render_default(opt.default)}` | {opt.help} |")
    return "\n".join(rows) + "\n"


def _check_table() -> None:
    """The table and the dataclass must agree; a mismatch is a programming error caught at import."""
    names = [f.name for f in fields(Config)]
    if names != [o.name for o in OPTIONS]:
        raise RuntimeError("sniffer.config: OPTIONS and Config fields differ")
    defaults = Config()
    for opt in OPTIONS:
        if getattr(defaults, opt.name) != opt.default:
            raise RuntimeError(f"sniffer.config: default of {opt.name} differs between OPTIONS and Config")


_check_table()
