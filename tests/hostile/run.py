"""Parent side of the child-process harness: replay a capture under budgets, measure the child's peak RSS.

`replay_in_child` runs `moesif-sniffer replay` (through `child.py`) in a fresh interpreter with only the
given MOESIF_*/SNIFFER_* variables. `child.py --measure` forks it from a small launcher and reaps it with
`os.wait4`, so `ru_maxrss` is that one replay's peak (RUSAGE_CHILDREN in the test process would be the
largest of every child it ever reaped, and a child spawned from pytest inherits pytest's high-water mark
across execve). Returns the peak RSS, the events written, the counters and the summary text.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Replay", "replay_in_child"]

CHILD = Path(__file__).resolve().parent / "child.py"
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Replay:
    status: int
    peak_rss_mib: float
    wall_s: float
    stats: dict[str, Any]
    events: list[dict[str, Any]]
    summary: str

    def stat(self, name: str) -> int:
        return int(self.stats.get(name, 0))


def replay_in_child(capture: Path, budgets: dict[str, str], workdir: Path) -> Replay:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MOESIF_", "SNIFFER_"))}
    env.update(budgets)
    env["PYTHONPATH"] = str(ROOT)
    out = workdir / (capture.stem + ".jsonl")
    err = workdir / (capture.stem + ".stderr")
    started = time.monotonic()
    with open(err, "wb") as err_f:
        proc = subprocess.Popen(
            [sys.executable, str(CHILD), "--measure", "replay", "-o", str(out), str(capture)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err_f,
            env=env,
            cwd=workdir,
        )
        proc.wait()
    wall = time.monotonic() - started
    stats: dict[str, Any] = {}
    rusage: dict[str, Any] = {}
    summary = []
    for line in err.read_text().splitlines():
        if line.startswith("STATS "):
            stats = json.loads(line[6:])
        elif line.startswith("RUSAGE "):
            rusage = json.loads(line[7:])
        else:
            summary.append(line)
    assert rusage, "the launcher did not report the replay's resource usage"
    events = [json.loads(line) for line in out.read_bytes().splitlines()] if out.exists() else []
    return Replay(proc.returncode, rusage["maxrss_kib"] / 1024, wall, stats, events, "\n".join(summary))
