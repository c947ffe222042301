"""The daemon as the live benchmarks run it: `moesif-sniffer run` with the pure or the mypyc-compiled
build, waited for until it captures, stopped with SIGTERM; its log and CPU time kept for the tables."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 60.0

__all__ = ["DaemonRun", "running_daemon"]


@dataclass
class DaemonRun:
    log: str = ""
    cpu_s: float = 0.0  # user + system seconds of the daemon and its workers


@contextmanager
def running_daemon(
    settings: dict[str, str], core: str | None, *, prefix: tuple[str, ...] = ()
) -> Iterator[DaemonRun]:
    """The daemon with `settings` (SNIFFER_* variables; the caller's own MOESIF_/SNIFFER_ ones are left
    out) writing events to /dev/null while the body runs; `core`: a compiled build's directory (None:
    the source tree); `prefix`: what the command runs under (`ip netns exec`, `chrt`, `nice`). The
    returned run's log and CPU time are filled in when it has stopped."""
    run = DaemonRun()
    tmp = Path(tempfile.mkdtemp(prefix="bench-daemon-"))
    log = tmp / "daemon.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MOESIF_", "SNIFFER_"))}
    env.update(settings)
    if core:  # the compiled build first on the path (cwd too: the source tree's would shadow it)
        env["PYTHONPATH"] = os.pathsep.join((core, str(ROOT)))
    cmd = [*prefix, sys.executable, "-m", "sniffer", "run", "--output", "/dev/null"]
    with open(log, "wb") as errf:
        proc = subprocess.Popen(cmd, env=env, cwd=core or ROOT, stdout=subprocess.DEVNULL, stderr=errf)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while "capturing on" not in log.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("daemon did not start: " + log.read_text())
            time.sleep(0.05)
        time.sleep(0.5)  # workers forked and polling
        yield run
        proc.send_signal(signal.SIGTERM)
        # wait4's usage of a child includes the children it reaped itself (the capture workers)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while time.monotonic() < deadline:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                run.cpu_s = usage.ru_utime + usage.ru_stime
                break
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        run.log = log.read_text()
        shutil.rmtree(tmp, ignore_errors=True)
