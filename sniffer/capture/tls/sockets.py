"""`SocketResolver`: a file descriptor of another process -> the (local, remote) TCP endpoints of its socket.

SSL_set_fd tells which fd an SSL object sits on; the addresses come from that process's own /proc:
`/proc/<pid>/fd/<fd>` links to `socket:[<inode>]`, and `/proc/<pid>/net/tcp` and `tcp6` list the sockets
of the process's network namespace with their inodes. Going through the target's /proc (never our own
/proc/net) is what makes this work from a container started with `--pid=host`, and for a gateway living
in another network namespace. Reading another user's /proc/<pid>/fd needs root (or CAP_SYS_PTRACE).

Lookups are cached by socket inode (bounded, oldest forgotten); the namespace's tables are read only on
a miss, and found by a byte search for the inode rather than parsing every line, since a busy gateway
lists thousands of sockets. Every failure is counted and returns None: the caller falls back to marked
placeholder endpoints. IPv4-mapped IPv6 addresses are given as IPv4 text, as the packet path sees them.
"""

from __future__ import annotations

import ipaddress
import os
from collections import OrderedDict

from reassembly.events import Endpoint
from reassembly.stats import Stats

__all__ = ["DEFAULT_MAX_CACHED", "SocketResolver", "parse_proc_address"]

DEFAULT_MAX_CACHED = 4096
_SOCKET_PREFIX = "socket:["


def parse_proc_address(text: bytes) -> Endpoint:
    """One `ADDR:PORT` field of /proc/net/tcp{,6}: hex, each 32-bit word in host (little-endian) order."""
    addr_hex, _, port_hex = text.partition(b":")
    raw = bytes.fromhex(addr_hex.decode())
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    if len(words) == 4:
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv4Address(words)
    else:
        ip6 = ipaddress.IPv6Address(words)
        ip = ip6.ipv4_mapped or ip6
    return str(ip), int(port_hex, 16)


class SocketResolver:
    """fd of a process -> (local, remote); `None` when it cannot be told (counted in `stats`)."""

    def __init__(
        self, proc: str = "/proc", *, max_cached: int = DEFAULT_MAX_CACHED, stats: Stats | None = None
    ) -> None:
        self.proc = proc
        self.stats = stats if stats is not None else Stats()
        self._max = max(1, max_cached)
        self._cache: OrderedDict[int, tuple[Endpoint, Endpoint]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._cache)

    def inode(self, pid: int, fd: int) -> int | None:
        """The socket inode behind `fd` of `pid`, or None (gone, not a socket, no permission)."""
        try:
            target = os.readlink(f"{self.proc}/{pid}/fd/{fd}")
        except FileNotFoundError:
            self.stats["tls_socket_fd_gone"] += 1
            return None
        except OSError:
            self.stats["tls_socket_fd_unreadable"] += 1
            return None
        if not target.startswith(_SOCKET_PREFIX) or not target.endswith("]"):
            self.stats["tls_socket_not_socket"] += 1
            return None
        return int(target[len(_SOCKET_PREFIX) : -1])

    def endpoints(self, pid: int, fd: int) -> tuple[Endpoint, Endpoint] | None:
        """(local, remote) of the TCP socket `fd` of process `pid`."""
        inode = self.inode(pid, fd)
        if inode is None:
            return None
        cache = self._cache
        found = cache.get(inode)
        if found is not None:
            cache.move_to_end(inode)
            self.stats["tls_socket_cached"] += 1
            return found
        found = self._scan(pid, inode)
        if found is None:
            self.stats["tls_socket_not_found"] += 1
            return None
        self.stats["tls_socket_resolved"] += 1
        cache[inode] = found
        if len(cache) > self._max:
            cache.popitem(last=False)
        return found

    def _scan(self, pid: int, inode: int) -> tuple[Endpoint, Endpoint] | None:
        needle = b" %d " % inode
        for table in ("tcp", "tcp6"):
            try:
                with open(f"{self.proc}/{pid}/net/{table}", "rb") as f:
                    text = f.read()
            except OSError:
                self.stats["tls_socket_table_unreadable"] += 1
                continue
            at = text.find(needle)
            while at >= 0:
                start = text.rfind(b"\n", 0, at) + 1
                end = text.find(b"\n", at)
                fields = text[start : end if end >= 0 else len(text)].split()
                # sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...
                if len(fields) > 9 and fields[9] == needle.strip():
                    try:
                        return parse_proc_address(fields[1]), parse_proc_address(fields[2])
                    except ValueError:
                        self.stats["tls_socket_bad_line"] += 1
                        return None
                at = text.find(needle, at + 1)
        return None
