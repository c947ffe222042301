"""Command line of the topology: `python -m topology {run,up,down}` from the `tests` directory.

- `run --plan demo --pcap F --log L [--interface any|upstream]`: build, capture, run the plan, tear down.
- `up [--workdir D]`: build and leave it running (state in D/state.json) to explore by hand;
  `down --workdir D` ends it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from .net import Topology
from .plans import load_plan
from .skips import topology_skip_reason


def _run(args: argparse.Namespace) -> int:
    with Topology() as topo:
        iface = topo.veth_gw_upstream if args.interface == "upstream" else args.interface
        with topo.capture(Path(args.pcap).resolve(), interface=iface):
            log = topo.run_client(load_plan(args.plan))
        Path(args.log).write_text(json.dumps(log, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    topo.remove_workdir()
    print(f"{len(log)} calls logged to {args.log}; capture in {args.pcap}")
    return 0


def _up(args: argparse.Namespace) -> int:
    topo = Topology(Path(args.workdir) if args.workdir else None)
    topo.workdir.mkdir(parents=True, exist_ok=True)
    topo.up()
    state = {
        "prefix": topo.prefix,
        "namespaces": [topo.ns_client, topo.ns_gw, topo.ns_upstream],
        "pids": [p.pid for p in topo._procs],
    }
    (topo.workdir / "state.json").write_text(json.dumps(state, indent=1))
    print(f"up: workdir {topo.workdir}")
    print(
        f"  ip netns exec {topo.ns_client} curl -s -H 'apikey: key-alice-123' http://10.77.1.2:8000/api/orders"
    )
    print(f"  ip netns exec {topo.ns_gw} tcpdump -i any -n 'tcp port 8000 or tcp port 9000'")
    print(f"  python -m topology down --workdir {topo.workdir}")
    return 0


def _down(args: argparse.Namespace) -> int:
    state = json.loads((Path(args.workdir) / "state.json").read_text())
    for pid in state["pids"]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    for ns in state["namespaces"]:
        Topology._kill_namespace_leftovers(ns)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
    print("down")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m topology", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="build, capture a plan's calls, tear down")
    run.add_argument("--plan", default="demo")
    run.add_argument("--pcap", required=True)
    run.add_argument("--log", required=True)
    run.add_argument("--interface", default="any", help="'any' (both legs) or 'upstream' (upstream leg only)")
    up = sub.add_parser("up", help="build and leave running")
    up.add_argument("--workdir")
    down = sub.add_parser("down", help="end a topology started with up")
    down.add_argument("--workdir", required=True)
    args = parser.parse_args(argv)
    reason = topology_skip_reason()
    if reason:
        print(f"cannot build the topology: {reason}", file=sys.stderr)
        return 2
    return {"run": _run, "up": _up, "down": _down}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
