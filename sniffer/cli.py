"""The `moesif-sniffer` command line: subcommands, configuration loading, exit statuses.

Exit status: 0 success; 2 bad configuration, or a capture file that is missing, unreadable, not a
capture, or damaged (for a damaged file every event before the damage is still written). `run` (the
live capture daemon, `sniffer.daemon`): 0 after a graceful stop, 1 when a capture worker died, 2 when
the capture, metrics address or output cannot be set up.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import IO, Any

from sniffer import __version__
from sniffer.config import Config, add_arguments
from sniffer.errors import CaptureError, ConfigError, OutputError
from sniffer.events_output import open_events_output
from sniffer.gc_policy import tune_collector
from sniffer.memory_plan import fit_config

__all__ = ["main"]

PROG = "moesif-sniffer"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Passive API-traffic sniffer for Kong nodes: HTTP/1.x calls to Moesif events.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    replay = sub.add_parser(
        "replay",
        help="read a pcap/pcapng file and emit one Moesif event per API call",
        description="Replay a capture file through the capture engine. Without an application id "
        "(MOESIF_APPLICATION_ID / --application-id) events are written as JSON lines. --workers N "
        "(SNIFFER_WORKERS; default 1 for replay) splits the flows over N processes: the same set of "
        "events as one process, in a different order.",
    )
    replay.add_argument("capture", help="a pcap or pcapng file")
    replay.add_argument("-o", "--output", help="write JSON lines here instead of stdout")
    replay.add_argument("-q", "--quiet", action="store_true", help="no summary on stderr")
    add_arguments(replay)
    run = sub.add_parser(
        "run",
        help="capture live (AF_PACKET) and emit one Moesif event per API call until stopped",
        description="The capture daemon: needs root or CAP_NET_RAW to open the capture, then runs as "
        "SNIFFER_USER with no capabilities. Without an application id events are written as JSON lines. "
        "SIGTERM/SIGINT stop gracefully (a second one exits at once); SIGHUP reopens --log-file.",
    )
    run.add_argument("-o", "--output", help="append JSON lines here instead of stdout (no application id)")
    run.add_argument("--log-file", help="write logs here instead of stderr (reopened on SIGHUP)")
    add_arguments(run)
    doctor = sub.add_parser(
        "doctor",
        help="check this host for `run`: capture privileges, interfaces, traffic, offloads, Moesif",
        description="One line per check with what to fix; exit status 1 when any check fails. Run it "
        "with the same environment (and in the same container) as `run`.",
    )
    doctor.add_argument(
        "--seconds", type=float, default=3.0, help="how long to wait for traffic on the Kong ports (3)"
    )
    add_arguments(doctor)
    return parser


def _error(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


def _make_sender(config: Config) -> Any:
    from sniffer.moesif.sender import MoesifSender

    return MoesifSender(
        application_id=config.application_id,
        endpoint=config.api_endpoint,
        batch_size=config.batch_size,
        batch_max_time_s=config.batch_max_time,
        queue_size=config.event_queue_size,
        queue_bytes=config.event_queue_bytes,
        connect_timeout_s=config.connect_timeout / 1000.0,
        send_timeout_s=config.send_timeout / 1000.0,
        flush_timeout_s=config.flush_timeout,
        spool_dir=config.spool_dir,
        spool_max_bytes=config.spool_max_bytes,
        user_agent=f"{PROG}/{__version__}",
    )


def _cmd_replay(args: argparse.Namespace, config: Config) -> int:
    from sniffer.moesif.jsonlines import JsonLinesSink
    from sniffer.replay import print_summary, replay_file

    if not os.path.exists(args.capture):  # a clear error before anything else is opened or created
        return _error(f"{args.capture}: no such file")
    out: IO[bytes] | None = None
    sender = None
    workers = config.workers or 1  # unset or auto: one process (the daemon's default is per core)
    try:
        if config.application_id:
            sender = _make_sender(config)
            sink: Any = sender
        else:
            try:
                out = open_events_output(args.output)
            except OSError as exc:
                return _error(f"{args.output}: cannot write: {exc.strerror}")
            sink = JsonLinesSink(out)
        try:
            result = replay_file(
                args.capture,
                config,
                sink,
                progress=sys.stderr,
                workers=workers,
                encoded_out=out,  # None with the sender
                forked=sender.start if sender is not None else None,
            )
        except CaptureError as exc:
            return _error(str(exc))
        delivery = None
        if sender is not None:
            report = sender.close()
            sender = None
            delivery = {
                "sent": report.sent,
                "sampled_out": report.sampled_out,
                "left_unsent": report.left_unsent,
                "spooled": report.spooled,
                **{f"dropped_{reason}": n for reason, n in report.dropped.items()},
                **{k: report.stats.get(k, 0) for k in ("batches_sent", "batches_retried", "bytes_sent")},
            }
        else:
            sink.close()
        if not args.quiet:
            print_summary(args.capture, result, delivery)
        if result.error is not None:
            return _error(str(result.error))
        return 0
    finally:
        if sender is not None:
            sender.close()
        if out is sys.stdout.buffer:
            out.flush()
        elif out is not None:
            out.close()  # standard output's own file descriptor stays open (closefd=False)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"{PROG}: %(levelname)s %(name)s: %(message)s")
    if args.command == "doctor":  # reports a bad configuration as one of its checks
        from sniffer.doctor import main as doctor

        return doctor(args, os.environ)
    try:
        config = Config.load(args, os.environ)
        workers = config.worker_count() if args.command == "run" else config.workers or 1
        config, plan = fit_config(config, Config.given(args, os.environ), workers)
    except ConfigError as exc:
        return _error(str(exc))
    if args.command == "run":
        from sniffer.daemon import run

        if argv is None:  # this process is the command (tests call main(argv) in their own)
            tune_collector()
        return run(
            config, output=args.output, log_file=args.log_file, sender_factory=_make_sender, memory_plan=plan
        )
    if args.command == "replay":
        if plan is not None:
            logging.getLogger("sniffer").info("%s", plan.describe())
        if argv is None:
            tune_collector()
        try:
            return _cmd_replay(args, config)
        except BrokenPipeError:  # `| head`: the reader went away; not an error worth a traceback
            sys.stderr.close()
            return 0
        except OutputError as exc:
            return _error(str(exc))
    return _error(f"unknown command {args.command}")
