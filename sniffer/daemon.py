"""`moesif-sniffer run`: the live capture daemon's life cycle around the engine.

Start-up, in this order (each step needs the previous one and the privileges it still has):
1. logging, and ONE line with the effective configuration (application id as its last 4 characters);
2. the capture rings (root / CAP_NET_RAW), with SNIFFER_TLS=uprobe the TLS tap (eBPF uprobes on the
   gateway's OpenSSL, `sniffer.capture.tls.source`), the metrics port, the `--output` file;
3. privileges dropped (`sniffer.privileges`): SNIFFER_USER, no capabilities. Not with the TLS tap open:
   following restarted gateway workers needs the bpf() syscall on the tap's maps (CAP_BPF whenever
   kernel.unprivileged_bpf_disabled is set, the default), CAP_SYS_ADMIN to attach a new library (current
   kernels let nothing less create uprobes) and root or CAP_SYS_PTRACE to read the workers' /proc/<pid>
   maps and fds; so the daemon keeps its privileges and says so;
4. with SNIFFER_WORKERS > 1, the capture workers forked (no thread may exist yet), then the TLS reader
   process (`TlsSource.start`; only on a kernel without BTF, see capture/tls/source.py);
5. threads: the metrics endpoint, the Moesif sender.
The loop, load shedding and signals: `sniffer.daemon_loop`.

Exit status: 0 after a graceful stop; 1 when a capture worker died; 2 when the configuration, the
capture, the metrics address or the output cannot be set up.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import IO, Any

from sniffer import __version__
from sniffer.capture.tls.source import TlsSource
from sniffer.capture.workers import WorkerPool, open_ring_sets
from sniffer.cgroup import cgroup_cpu_limit
from sniffer.config import OPTIONS, Config
from sniffer.cpu_priority import apply_cpu_priority
from sniffer.daemon_loop import DaemonLoop
from sniffer.engine import Engine
from sniffer.errors import CaptureError, ConfigError, OutputError
from sniffer.events_output import open_events_output
from sniffer.logs import setup_logging
from sniffer.memory_plan import NO_LIMIT, MemoryPlan
from sniffer.metrics import MetricsServer
from sniffer.moesif.jsonlines import JsonLinesSink
from sniffer.moesif.transport import mask_app_id, safe_url
from sniffer.privileges import PrivilegeError, drop_privileges

__all__ = ["run", "startup_line"]

log = logging.getLogger("sniffer.daemon")


def _preload(config: Config, sender_factory: Callable[[Config], Any]) -> None:
    """Import now what later steps import lazily: after the privilege drop the interpreter's own files
    may no longer be readable (here the Python lives under /root), and a half-started daemon is worse
    than one that refuses to start."""
    import importlib

    for name in ("multiprocessing.popen_fork", "multiprocessing.connection", "encodings.idna"):
        importlib.import_module(name)
    if config.application_id:
        importlib.import_module("sniffer.moesif.sender")


def startup_line(config: Config, workers: int) -> str:
    """Every option's effective value, one line; the app id as its last 4 characters only."""
    parts = [f"moesif-sniffer {__version__} starting:"]
    for opt in OPTIONS:
        value = getattr(config, opt.name)
        if opt.name == "application_id":
            text = mask_app_id(value) if value else "(unset: JSON lines)"
        elif opt.name == "api_endpoint":
            text = safe_url(value)
        elif opt.name == "workers":
            text = str(workers) if value is not None else f"auto={workers}"
        elif isinstance(value, tuple):
            text = ",".join(str(v) for v in value) or "(empty)"
        else:
            text = (
                "(unset)" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
            )
        parts.append(f"{opt.env}={text}")
    ports = config.capture_ports()
    parts.append(f"kernel_filter={'tcp ports ' + ','.join(map(str, ports)) if ports else 'all tcp'}")
    return " ".join(parts)


def run(
    config: Config,
    *,
    output: str | None = None,
    log_file: str | None = None,
    sender_factory: Callable[[Config], Any],
    memory_plan: MemoryPlan | None = None,
) -> int:
    """The daemon, until a signal stops it; returns the exit status. `memory_plan` is logged: it says
    which budgets `config` got from the memory limit."""
    try:
        setup_logging(config.log_format, log_file, config.debug)
    except OSError as exc:
        print(f"moesif-sniffer: error: {log_file}: cannot write: {exc.strerror}", file=sys.stderr)
        return 2
    cpu_limit = cgroup_cpu_limit()  # read once: the count and the log line below
    workers = config.worker_count(lambda: cpu_limit)
    log.info("%s", startup_line(config, workers))
    if cpu_limit is not None and config.workers is None:
        log.info("cpu: the cgroup's quota is %.2f CPUs (%s); auto workers: %d", *cpu_limit, workers)
    if memory_plan is not None:
        log.info("%s", memory_plan.describe())
    else:
        why = "SNIFFER_MEMORY_LIMIT=off" if config.memory_limit == 0 else "no cgroup memory limit found"
        log.info("memory: %s; %s", why, NO_LIMIT)
    apply_cpu_priority(config.cpu_priority)
    for name in Config.ignored_env(os.environ):
        log.warning("%s is a Kong plugin option with no meaning for the sniffer; ignored", name)
    d = DaemonLoop(config, None, sender_factory)
    out: IO[bytes] | None = None
    try:
        ring_sets = open_ring_sets(config, workers)
    except CaptureError as exc:
        log.error("%s", exc)
        return 2
    d.tls = TlsSource.open(config, d.stats)  # before the privilege drop; None: said why, once
    try:
        if config.metrics_addr:
            try:
                d.metrics = MetricsServer(config.metrics_addr, d.health)
            except OSError as exc:
                log.error("SNIFFER_METRICS_ADDR %s: cannot listen: %s", config.metrics_addr, exc.strerror)
                return 2
        if not config.application_id:
            if output:
                try:
                    out = open_events_output(output, append=True)  # closed at the end of run()
                except OSError as exc:
                    log.error("%s: cannot write: %s", output, exc.strerror)
                    return 2
            else:
                out = open_events_output(None)
            d.out = out
            d.output_path = output
        _preload(config, sender_factory)
        user = config.user if os.geteuid() == 0 else None
        if config.user and user is None:
            log.info("not root: keeping uid %d, dropping capabilities only", os.geteuid())
        if d.tls is not None:
            log.info(
                "SNIFFER_TLS=uprobe: privileges kept (following the gateway's workers needs CAP_SYS_ADMIN "
                "and their /proc); uid %d", os.geteuid(),
            )  # fmt: skip
        else:
            try:
                dropped = drop_privileges(user)
                (log.warning if dropped.startswith("cannot switch") else log.info)("%s", dropped)
            except (PrivilegeError, ConfigError) as exc:
                log.error("privilege drop failed: %s", exc)
                return 2
        names = ",".join(r.interface for r in ring_sets[0])
        if workers > 1:
            d.pool = WorkerPool(ring_sets, config)
            d.pool.start()
        signal.signal(signal.SIGTERM, d._on_stop)
        signal.signal(signal.SIGINT, d._on_stop)
        signal.signal(signal.SIGHUP, d._on_hup)
        if d.tls is not None:
            d.tls.start()  # its reader process: after the capture workers, before any thread
        if d.metrics is not None:
            d.metrics.start()
        if config.application_id:
            d.sender = sender_factory(config)
            d.sender.start()
            sink: Any = d.sender
        else:
            sink = d.jsonl = JsonLinesSink(out)  # type: ignore[arg-type]
        d.engine = Engine(config, sink, d.stats, capture=d.pool is None)
        d.health.capture_open = True
        d.publish()
        log.info(
            "capturing on %s with %d worker%s; metrics on %s",
            names, workers, "s" if workers > 1 else "", config.metrics_addr or "(off)",
        )  # fmt: skip
        status = 0
        try:
            if d.pool is not None:
                if not d.run_workers(d.pool):
                    status = 1
            else:
                d.run_single(ring_sets[0])
        except BrokenPipeError:  # stdout reader went away: stop as if signalled
            log.warning("event output closed by its reader; stopping")
        except OutputError as exc:
            status = _output_failed(exc)
        try:
            if d.tls is not None:
                d.tls.close(d.tls_feed())
                d.tls = None
            d.close_merge()
            d.engine.close()
        except OutputError as exc:  # the first failed write came with the shutdown's flush
            status = _output_failed(exc)
        d.publish()
        d.summary()
        if d.sender is not None:
            report = d.sender.close()
            d.sender = None
            log.info(
                "delivery: %d sent, %d dropped, %d spooled, %d left unsent",
                report.sent, sum(report.dropped.values()), report.spooled, report.left_unsent,
            )  # fmt: skip
        if d.jsonl is not None:
            try:
                d.jsonl.close()
            except BrokenPipeError:
                pass
            except OutputError as exc:
                status = _output_failed(exc)
        log.info("stopped")
        return status
    finally:
        if d.tls is not None:
            d.tls.close()
        if d.pool is None:
            for rings in ring_sets:
                for ring in rings:
                    ring.close()
        if d.metrics is not None:
            d.metrics.close()
        if d.sender is not None:
            d.sender.close()
        if d.out is not None and d.out is not sys.stdout.buffer:
            d.out.close()  # the file open now: SIGHUP may have replaced the first


def _output_failed(exc: OutputError) -> int:
    """A write of the events failed (a full disk): said once, and the daemon stops with status 1, as when
    a capture worker dies; a supervisor restarts it. The output takes nothing more, so the shutdown's
    flush does not fail again; what was not written is lost."""
    log.error("%s; stopping (events not yet written are lost)", exc)
    return 1
