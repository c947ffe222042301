"""Network namespaces and veth links for the realnet test: client <-> relay <-> proxy.

`Topology` creates three namespaces with names unique to this process (prefix `rn-`), links them with
two veth pairs and gives the client and the proxy one IPv4 and one IPv6 address on the same subnet;
the relay namespace has no address at all, its veths are only the two ends of the lossy wire that
relay.py bridges. Offloads (TX checksum, scatter-gather, TSO, GSO, GRO) are switched off on every veth
with the SIOCETHTOOL ioctl before the veth moves into its namespace, so each frame is a wire-size
segment with a real checksum: the relay must be able to resend it as is, and the capture sees what a
NIC would put on the wire. `down()` kills whatever still runs in the namespaces and deletes them.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import signal
import socket
import struct
import subprocess
from dataclasses import dataclass, field

__all__ = ["Topology", "disable_offloads", "run"]

SIOCETHTOOL = 0x8946
# ethtool_value commands (linux/ethtool.h): set tx checksum, scatter-gather, TSO, GSO, GRO.
_OFFLOAD_SETS = (0x17, 0x19, 0x1F, 0x24, 0x2C)
_GTSO = 0x1E


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), check=check, capture_output=True, text=True, timeout=30)


def _ethtool(sock: socket.socket, ifname: str, cmd: int, value: int = 0) -> int:
    buf = ctypes.create_string_buffer(struct.pack("II", cmd, value))
    ifr = struct.pack("16sP", ifname.encode(), ctypes.addressof(buf))
    fcntl.ioctl(sock.fileno(), SIOCETHTOOL, ifr)
    return struct.unpack_from("II", buf.raw)[1]


def disable_offloads(ifname: str) -> None:
    """Switch off checksum/segmentation offloads on an interface of the current namespace."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for cmd in _OFFLOAD_SETS:
            _ethtool(s, ifname, cmd, 0)
        if _ethtool(s, ifname, _GTSO):
            raise RuntimeError(f"{ifname}: TSO still on after SIOCETHTOOL")


@dataclass
class Topology:
    """client --(veth)-- relay --(veth)-- proxy, names unique per process."""

    tag: str = field(default_factory=lambda: f"{os.getpid() % 1_000_000}")
    client_v4: str = "10.199.0.1"
    proxy_v4: str = "10.199.0.2"
    client_v6: str = "fd00:199::1"
    proxy_v6: str = "fd00:199::2"
    client_if: str = "rn-c0"  # in the client namespace
    relay_client_if: str = "rn-rc"  # in the relay namespace, facing the client
    relay_proxy_if: str = "rn-rp"  # in the relay namespace, facing the proxy
    proxy_if: str = "rn-p0"  # in the proxy namespace: the capture point

    @property
    def client(self) -> str:
        return f"rn-{self.tag}-client"

    @property
    def relay(self) -> str:
        return f"rn-{self.tag}-relay"

    @property
    def proxy(self) -> str:
        return f"rn-{self.tag}-proxy"

    def namespaces(self) -> tuple[str, str, str]:
        return (self.client, self.relay, self.proxy)

    def exec_args(self, ns: str) -> list[str]:
        return ["ip", "netns", "exec", ns]

    def up(self) -> None:
        self.down()
        for ns in self.namespaces():
            run("ip", "netns", "add", ns)
            run("ip", "-n", ns, "link", "set", "lo", "up")
        # The relay must not speak on the wire (no router solicitations, no DAD of its own).
        run(*self.exec_args(self.relay), "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
        run(*self.exec_args(self.relay), "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1")
        pairs = [
            (self.client, self.client_if, self.relay, self.relay_client_if),
            (self.proxy, self.proxy_if, self.relay, self.relay_proxy_if),
        ]
        for i, (ns_a, if_a, ns_b, if_b) in enumerate(pairs):
            tmp_a, tmp_b = f"rn{self.tag}a{i}", f"rn{self.tag}b{i}"  # root-namespace names, unique
            run("ip", "link", "add", tmp_a, "type", "veth", "peer", "name", tmp_b)
            for tmp, ns, name in ((tmp_a, ns_a, if_a), (tmp_b, ns_b, if_b)):
                disable_offloads(tmp)
                run("ip", "link", "set", tmp, "netns", ns)
                run("ip", "-n", ns, "link", "set", tmp, "name", name)
        for ns, ifname, v4, v6 in (
            (self.client, self.client_if, self.client_v4, self.client_v6),
            (self.proxy, self.proxy_if, self.proxy_v4, self.proxy_v6),
        ):
            run("ip", "-n", ns, "addr", "add", f"{v4}/24", "dev", ifname)
            run("ip", "-n", ns, "addr", "add", f"{v6}/64", "dev", ifname, "nodad")
            run("ip", "-n", ns, "link", "set", ifname, "up")
        for ifname in (self.relay_client_if, self.relay_proxy_if):
            run("ip", "-n", self.relay, "link", "set", ifname, "promisc", "on", "up")

    def down(self) -> None:
        for ns in self.namespaces():
            pids = run("ip", "netns", "pids", ns, check=False).stdout.split()
            for pid in pids:  # only processes inside our own, uniquely named namespaces
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            run("ip", "netns", "del", ns, check=False)
        for i in range(2):  # a veth left in the root namespace by an up() that failed half-way
            if os.path.exists(f"/sys/class/net/rn{self.tag}a{i}"):
                run("ip", "link", "del", f"rn{self.tag}a{i}", check=False)
