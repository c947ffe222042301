"""Child-process entry: `moesif-sniffer ...` exactly as the CLI runs it, plus the full Stats as JSON.

The replay summary on stderr only lists loss counters; the tests also want the others (flows_not_http,
http_te_and_cl, tcp_flows...), so `print_summary` is wrapped to add one `STATS {json}` line after it.

`child.py --measure ARGS...` is the launcher: it forks, the fork execs `child.py ARGS...`, and the
launcher reaps it with wait4 and prints `RUSAGE {json}`. The extra hop is what makes ru_maxrss mean the
replay's own peak: Linux carries a process's max RSS across execve (and a vfork'd child is charged the
parent's high-water mark), so a child spawned straight from pytest reports pytest's RSS when larger. A
fork of this small launcher starts a fresh count.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any


def _measure(argv: list[str]) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            os.execv(sys.executable, [sys.executable, __file__, *argv])
        finally:
            os._exit(127)
    _, status, usage = os.wait4(pid, 0)
    rusage = {"maxrss_kib": usage.ru_maxrss, "utime": usage.ru_utime, "stime": usage.ru_stime}
    print("RUSAGE " + json.dumps(rusage), file=sys.stderr, flush=True)
    return os.waitstatus_to_exitcode(status)


def _replay(argv: list[str]) -> int:
    import sniffer.replay as replay
    from sniffer import cli

    print_summary = replay.print_summary

    def print_summary_and_stats(path: str, result: replay.ReplayResult, delivery: Any = None) -> None:
        print_summary(path, result, delivery)
        print("STATS " + json.dumps({**result.stats, "_seconds": result.seconds}), file=sys.stderr)

    replay.print_summary = print_summary_and_stats
    return cli.main(argv)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--measure"]:
        sys.exit(_measure(sys.argv[2:]))
    sys.exit(_replay(sys.argv[1:]))
