"""The socket's addresses read in the kernel, inside the SSL_set_fd(ssl, fd) uprobe: no race with its end.

Why in the kernel: looking the fd up later from user space (/proc/<pid>/fd, /proc/<pid>/net/tcp) races
with the connection's end, and short connections on a loaded host lost it (4-9 of 17 in the netns
topology). The uprobe runs in the gateway's own thread at the moment it binds the socket, so the fd is
certainly that socket then. The walk, each step a `bpf_probe_read_kernel` (a fault gives an error, never
a crash):

    bpf_get_current_task() -> task_struct.files -> files_struct.fdt -> fdtable.fd[fd]  (fd < max_fds)
    -> file.private_data = struct socket, accepted only if socket.file points back to that file (a
       non-socket fd's private_data is something else; socket_file_ops is not in kallsyms without
       CONFIG_KALLSYMS_ALL, the back pointer always is) -> socket.sk -> sock_common: family, local port
       (skc_num, host order), remote port (skc_dport, network order), IPv4 or IPv6 addresses.

Offsets come from the running kernel's BTF (`btf.Btf`); `sock_layout()` raises BtfError when one is
missing, and the probes then load without this walk (user space falls back to /proc, see streams.py).

Record: the SSL_set_fd record's data is `ADDRESS` (40 bytes: family, local port, remote port bytes,
local and remote address, 16 bytes each, IPv4 in the first 4); captured_len is ADDRESS.size only when
the walk reached the addresses, 0 otherwise.
"""

from __future__ import annotations

import functools
import socket
import struct
from dataclasses import dataclass

from sniffer.capture.bpf_asm import R0, R1, R2, R3, R6, R9, R10, Helper, Program
from sniffer.capture.tls.btf import Btf, BtfError

__all__ = ["ADDRESS", "SockLayout", "decode_address", "emit_sock_read", "kernel_layout", "sock_layout"]

ADDRESS = struct.Struct("<HH2s2x16s16s")  # family, local port, remote port (big-endian), local, remote
_AF_INET, _AF_INET6 = socket.AF_INET, socket.AF_INET6
_MAPPED = b"\0" * 10 + b"\xff\xff"
_FIELDS = {
    "files": "task_struct.files",
    "fdt": "files_struct.fdt",
    "max_fds": "fdtable.max_fds",
    "fd_array": "fdtable.fd",
    "private_data": "file.private_data",
    "sock_file": "socket.file",
    "sk": "socket.sk",
    "family": "sock.__sk_common.skc_family",
    "num": "sock.__sk_common.skc_num",
    "dport": "sock.__sk_common.skc_dport",
    "rcv_saddr": "sock.__sk_common.skc_rcv_saddr",
    "daddr": "sock.__sk_common.skc_daddr",
    "v6_rcv_saddr": "sock.__sk_common.skc_v6_rcv_saddr",
    "v6_daddr": "sock.__sk_common.skc_v6_daddr",
}
_SIZES = {"max_fds": 4, "family": 2, "num": 2, "dport": 2, "rcv_saddr": 4, "daddr": 4}


@dataclass(frozen=True, slots=True)
class SockLayout:
    """Byte offsets of every member the walk reads, on the running kernel."""

    files: int
    fdt: int
    max_fds: int
    fd_array: int
    private_data: int
    sock_file: int
    sk: int
    family: int
    num: int
    dport: int
    rcv_saddr: int
    daddr: int
    v6_rcv_saddr: int
    v6_daddr: int


def sock_layout(btf: Btf | None = None) -> SockLayout:
    """The layout from `btf` (default: the running kernel's); BtfError when a member is missing or
    not of the size the walk reads (pointers 8 bytes, IPv6 addresses 16)."""
    btf = btf or Btf.load()
    found: dict[str, int] = {}
    for key, path in _FIELDS.items():
        member = btf.offset(path)
        want = _SIZES.get(key, 16 if key.startswith("v6_") else 8)
        if member.size != want:
            raise BtfError(f"{path} is {member.size} bytes on this kernel, the walk reads {want}")
        found[key] = member.offset
    return SockLayout(**found)


@functools.cache
def kernel_layout() -> SockLayout | None:
    """The running kernel's layout, read once per process (the BTF is ~5 MB; only the offsets are
    kept); None when it cannot be had."""
    try:
        return sock_layout()
    except BtfError:
        return None


def emit_sock_read(p: Program, layout: SockLayout, fd_reg: int, rec_reg: int, at: int, tmp: int) -> None:
    """Append the walk: fills ADDRESS at rec_reg+at and sets the u32 at rec_reg+28 (captured_len) to
    ADDRESS.size when it got the addresses. Clobbers r0-r3, r6, r9 and the 8-byte stack slot `tmp`;
    `fd_reg` (callee-saved) holds the fd zero-extended; `rec_reg` (callee-saved) the record."""
    done = "sock_done"
    for off in range(0, ADDRESS.size, 8):
        p.st(8, rec_reg, at + off, 0)

    def read(dst_base: int, dst_off: int, size: int, src: int, src_off: int) -> None:
        """probe_read_kernel(dst_base + dst_off, size, src + src_off); on error: done."""
        p.movr(R1, dst_base)
        p.alu(R1, "+", dst_off)
        p.mov(R2, size)
        p.movr(R3, src)
        p.alu(R3, "+", src_off)
        p.call(Helper.probe_read_kernel)
        p.jif(R0, "!=", 0, done)

    def load_ptr(dst: int, src: int, src_off: int) -> None:
        """dst = *(u64 *)(src + src_off), read from kernel memory; NULL: done."""
        read(R10, tmp, 8, src, src_off)
        p.ldx(8, dst, R10, tmp)
        p.jif(dst, "==", 0, done)

    p.call(Helper.get_current_task)
    p.movr(R9, R0)
    load_ptr(R9, R9, layout.files)
    load_ptr(R9, R9, layout.fdt)
    p.st(8, R10, tmp, 0)
    read(R10, tmp, 4, R9, layout.max_fds)
    p.ldx(4, R1, R10, tmp)
    p.jifr(fd_reg, ">=", R1, done)  # unsigned: a negative fd is out of range too
    load_ptr(R9, R9, layout.fd_array)
    p.movr(R1, fd_reg)
    p.alu(R1, "<<", 3)
    p.alu(R9, "+", R1, reg=True)
    load_ptr(R6, R9, 0)  # the struct file
    load_ptr(R9, R6, layout.private_data)
    load_ptr(R1, R9, layout.sock_file)
    p.jifr(R1, "!=", R6, done)  # not a socket: its private_data is no struct socket
    load_ptr(R9, R9, layout.sk)
    read(rec_reg, at + 0, 2, R9, layout.family)
    read(rec_reg, at + 2, 2, R9, layout.num)
    read(rec_reg, at + 4, 2, R9, layout.dport)
    p.ldx(2, R1, rec_reg, at)
    p.jif(R1, "==", _AF_INET6, "sock_v6")
    p.jif(R1, "!=", _AF_INET, done)
    read(rec_reg, at + 8, 4, R9, layout.rcv_saddr)
    read(rec_reg, at + 24, 4, R9, layout.daddr)
    p.jmp("sock_got")
    p.label("sock_v6")
    read(rec_reg, at + 8, 16, R9, layout.v6_rcv_saddr)
    read(rec_reg, at + 24, 16, R9, layout.v6_daddr)
    p.label("sock_got")
    p.st(4, rec_reg, 28, ADDRESS.size)
    p.label(done)


def _ip(family: int, raw: bytes) -> str:
    if family == _AF_INET:
        return socket.inet_ntop(_AF_INET, raw[:4])
    if raw[:12] == _MAPPED:  # a dual-stack socket's IPv4 peer: IPv4 text, as the packet path sees it
        return socket.inet_ntop(_AF_INET, raw[12:])
    return socket.inet_ntop(_AF_INET6, raw)


def decode_address(data: bytes | memoryview) -> tuple[tuple[str, int], tuple[str, int]] | None:
    """(local, remote) from an SSL_set_fd record's data, or None when the walk did not get them."""
    if len(data) < ADDRESS.size:
        return None
    family, lport, rport, local, remote = ADDRESS.unpack_from(data)
    if family not in (_AF_INET, _AF_INET6):
        return None
    return (_ip(family, local), lport), (_ip(family, remote), int.from_bytes(rport, "big"))
