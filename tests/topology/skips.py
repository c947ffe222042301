"""Why the topology cannot run on this machine, if it cannot (for `pytest.mark.skipif`)."""

from __future__ import annotations

import functools
import os
import secrets
import shutil
import subprocess

__all__ = ["topology_skip_reason"]

TOOLS = ("ip", "nginx", "tcpdump", "curl", "ss")


@functools.cache
def topology_skip_reason() -> str | None:
    """None when root with every tool and network namespaces work; else the reason, for a skip."""
    if os.geteuid() != 0:
        return "the topology needs root (network namespaces, veth pairs, tcpdump)"
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        return f"the topology needs {', '.join(missing)} (apt-get install iproute2 nginx tcpdump curl)"
    probe = "ktprobe" + secrets.token_hex(2)
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=30)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=30)
    return None
