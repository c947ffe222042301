"""Find the gateway processes and the OpenSSL file each one actually runs.

Processes are matched by `comm` (default "nginx": Kong's workers are nginx processes too). For each,
the libssl it maps is read from /proc/<pid>/maps and opened as /proc/<pid>/root/<path>: from a container
run with --pid=host that is the gateway's file, not the container's own libssl (a different inode that
the gateway never executes). When no libssl is mapped, OpenSSL is linked into the executable, which is
then the file to probe (`static_candidate`); the caller checks it really has SSL_read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["GatewayProcess", "find_gateway_processes", "process_start_time"]

_PROC = "/proc"


@dataclass(frozen=True, slots=True)
class GatewayProcess:
    pid: int
    start_time: int  # clock ticks after boot: (pid, start_time) names a process even when pids are reused
    libraries: tuple[str, ...]  # libssl paths to probe, reachable from this mount namespace
    static_candidate: str  # the executable, for when OpenSSL is linked statically
    readable: bool = True  # False: /proc/<pid>/maps refused us (another uid without CAP_SYS_PTRACE)


def _read(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:  # the process exited meanwhile, or we may not look at it
        return None


def process_start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat; None when the process is gone."""
    stat = _read(f"{_PROC}/{pid}/stat")
    if stat is None:
        return None
    # comm (field 2) may contain spaces and parentheses: count fields after the last ")"
    fields = stat[stat.rfind(")") + 2 :].split()
    return int(fields[19]) if len(fields) > 19 else None


def _mapped_libssl(pid: int) -> tuple[str, ...] | None:
    """The libssl files the process maps; None when we may not read its maps."""
    try:
        with open(f"{_PROC}/{pid}/maps", "rb") as f:
            maps = f.read().decode(errors="replace")
    except PermissionError:
        return None
    except OSError:  # exited meanwhile
        return ()
    seen: list[str] = []
    for line in maps.splitlines():
        parts = line.split(None, 5)
        if len(parts) < 6:
            continue
        path = parts[5]
        # " (deleted)": the file was replaced on disk; the new one at that path is not what runs
        if path.endswith(" (deleted)") or not path.startswith("/"):
            continue
        if os.path.basename(path).startswith("libssl.so") and path not in seen:
            seen.append(path)
    return tuple(f"{_PROC}/{pid}/root{path}" for path in seen)


def find_gateway_processes(names: tuple[str, ...] = ("nginx",)) -> list[GatewayProcess]:
    """Every live process whose comm is one of `names`, with the OpenSSL files it runs."""
    wanted = set(names)
    found: list[GatewayProcess] = []
    try:
        entries = os.listdir(_PROC)
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit():
            continue
        comm = _read(f"{_PROC}/{entry}/comm")
        if comm is None or comm.rstrip("\n") not in wanted:
            continue
        pid = int(entry)
        start = process_start_time(pid)
        if start is None:
            continue
        libraries = _mapped_libssl(pid)
        exe = f"{_PROC}/{pid}/exe"
        found.append(GatewayProcess(pid, start, libraries or (), exe, readable=libraries is not None))
    return found
