"""A classic BPF program for `tcp and (port P1 or port P2 ...)`, built in Python, for cooked sockets.

The ring socket is `SOCK_DGRAM`, so the filter sees every packet from its IP header on whatever the link
type (Ethernet, loopback, tunnels, `any`), and the EtherType comes from the ancillary load
`SKF_AD_PROTOCOL` (skb->protocol), not from a link header. One program therefore works on every interface.

On a loopback device every packet is seen twice (OUTGOING, then HOST): the OUTGOING copy is dropped
here, before it takes ring space (ancillary loads SKF_AD_PKTTYPE and SKF_AD_HATYPE), as libpcap drops it
on `lo` and `any`; measured under load on lo this halves the ring's traffic.

What passes: IPv4 TCP with either port in the set, IPv4 fragments with a non-zero offset (no TCP header
to test; the decoder reassembles them), IPv6 TCP with either port in the set, IPv6 packets whose first
next-header is an extension header (hop-by-hop, routing, fragment, destination options: rare, and the
decoder walks them). Everything else is dropped in the kernel. With no ports, all TCP passes.

The accept return value is the snap length (`SNAPLEN`, 256 KiB like libpcap): GRO/TSO super-packets
reach 64 KiB and more. Port sets are compressed into ranges; each range costs 3 instructions per port
field (every conditional jump only skips over the next `ja`, whose offset is 32 bits, so no 8-bit jump
offset overflows whatever the program length). A set too large for the kernel's 4096-instruction cap
raises ValueError.
"""

from __future__ import annotations

import ctypes
import socket
import struct
from collections.abc import Iterable

from sniffer.capture.ring_walk import ARPHRD_LOOPBACK, PACKET_OUTGOING

__all__ = ["BPF_MAXINSNS", "SNAPLEN", "Insn", "attach_filter", "port_ranges", "tcp_port_filter"]

SNAPLEN = 262_144
BPF_MAXINSNS = 4096
SO_ATTACH_FILTER = 26

# Opcodes (linux/bpf_common.h): class | size | mode | op | src.
_LDH_ABS = 0x28  # A = u16 at k
_LDB_ABS = 0x30  # A = u8 at k
_LDH_IND = 0x48  # A = u16 at X + k
_LDXB_MSH = 0xB1  # X = 4 * (u8 at k & 0xf): the IPv4 header length
_LDB_IND = 0x50  # A = u8 at X + k
_LD_MEM = 0x60  # A = M[k]
_ST = 0x02  # M[k] = A
_SUB_X = 0x1C  # A -= X
_RSH = 0x74  # A >>= k
_AND = 0x54  # A &= k
_TAX = 0x07  # X = A
_JGT_X = 0x2D  # A > X
_JA = 0x05
_JEQ = 0x15
_JGT = 0x25
_JGE = 0x35
_JSET = 0x45
_RET = 0x06
SKF_AD_PROTOCOL = 0xFFFFF000  # SKF_AD_OFF (-0x1000) + 0, as u32: skb->protocol
SKF_AD_PKTTYPE = 0xFFFFF004  # skb->pkt_type
SKF_AD_HATYPE = 0xFFFFF01C  # skb->dev->type

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
IPPROTO_TCP = 6
IPV6_EXTENSIONS = (0, 43, 44, 60)  # hop-by-hop, routing, fragment, destination options

Insn = tuple[int, int, int, int]  # (code, jt, jf, k) as the kernel's struct sock_filter


def port_ranges(ports: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted, merged inclusive ranges."""
    out: list[tuple[int, int]] = []
    for p in sorted(set(ports)):
        if out and p == out[-1][1] + 1:
            out[-1] = (out[-1][0], p)
        else:
            out.append((p, p))
    return out


class _Asm:
    """Instructions with symbolic jump targets, resolved to relative offsets at the end."""

    def __init__(self) -> None:
        self.items: list[tuple[int, str | int, str | int, int]] = []
        self.labels: dict[str, int] = {}

    def label(self, name: str) -> None:
        self.labels[name] = len(self.items)

    def op(self, code: int, k: int = 0, jt: str | int = 0, jf: str | int = 0) -> None:
        self.items.append((code, jt, jf, k))

    def ja(self, target: str) -> None:
        self.items.append((_JA, target, 0, 0))

    def assemble(self) -> list[Insn]:
        out: list[Insn] = []
        for i, (code, jt, jf, k) in enumerate(self.items):
            if code == _JA:
                assert isinstance(jt, str)
                off = self.labels[jt] - i - 1
                if off < 0:
                    raise AssertionError(f"BPF jumps only go forward: {jt} from {i}")
                out.append((code, 0, 0, off))
                continue
            offs = [self.labels[j] - i - 1 if isinstance(j, str) else j for j in (jt, jf)]
            if not all(0 <= o <= 255 for o in offs):
                raise AssertionError(f"BPF jump out of range at {i}: {offs}")
            out.append((code, offs[0], offs[1], k & 0xFFFFFFFF))
        return out


def _port_checks(
    asm: _Asm, load: tuple[int, int], ranges: list[tuple[int, int]], target: str = "accept"
) -> None:
    """Load one port field, jump to `target` if it is in any range, else fall through."""
    asm.op(*load)
    for lo, hi in ranges:
        if lo == hi:
            asm.op(_JEQ, lo, 0, 1)  # equal: the next `ja target`; else skip it
        else:
            asm.op(_JGE, lo, 0, 2)  # below: skip the range test and its `ja`
            asm.op(_JGT, hi, 1, 0)  # above: skip the `ja`
        asm.ja(target)


def _pure_ack_check(
    asm: _Asm, flags: tuple[int, int], total: int, doff: tuple[int, int], *, v4: bool, snaplen: int
) -> None:
    """Reject a TCP segment with no payload and no SYN/FIN/RST, accept anything else. `flags` and
    `doff` are the loads of the TCP flags and data-offset bytes; `total` the offset of the IP length
    field (IPv4: total length, from which the header length in X is taken; IPv6: payload length).
    A zero length (segmentation offload: the frame is the truth) is accepted. Jumps only go forward
    in classic BPF, so the block ends with its own accept."""
    ok = f"ok{len(asm.items)}"
    asm.op(*flags)
    _jump_if(asm, _JSET, 0x07, ok)  # FIN, SYN or RST
    asm.op(_LDH_ABS, total)
    _jump_if(asm, _JEQ, 0, ok)
    if v4:
        asm.op(_SUB_X)  # - the IPv4 header length
    asm.op(_ST, 0)
    asm.op(*doff)
    asm.op(_RSH, 2)
    asm.op(_AND, 0x3C)  # the TCP header length in bytes
    asm.op(_TAX)
    asm.op(_LD_MEM, 0)
    _jump_if(asm, _JGT_X, 0, ok)  # payload bytes follow the TCP header
    asm.op(_RET, 0)
    asm.label(ok)
    asm.op(_RET, snaplen)


def _jump_if(asm: _Asm, code: int, k: int, target: str, *, when: bool = True) -> None:
    """Jump to `target` when the test is `when`: a short skip over a long `ja`, never out of range."""
    asm.op(code, k, 0, 1) if when else asm.op(code, k, 1, 0)
    asm.ja(target)


def tcp_port_filter(
    ports: Iterable[int] = (),
    snaplen: int = SNAPLEN,
    *,
    loopback_outgoing: bool = False,
    drop_pure_acks: bool = False,
) -> list[Insn]:
    """The program for `tcp and (port ...)` over IPv4 and IPv6 (all TCP when `ports` is empty);
    `loopback_outgoing` keeps the OUTGOING copies on loopback devices; `drop_pure_acks` also drops
    segments with no payload and no SYN/FIN/RST (IPv4, and IPv6 without extension headers). What that
    costs: the TCP layer declares a hole lost when the peer ACKs past it, else at the reorder timeout,
    so a response that lost bytes and was acknowledged only by pure ACKs ends up to that timeout later
    (measured on the public corpus: 36% of frames are pure ACKs; 1 event of 1,437 differs, its
    response time 30 s later; on wrk keep-alive traffic 0.08% of frames are pure ACKs)."""
    ranges = port_ranges(ports)
    t4 = "ack4" if drop_pure_acks else "accept"
    t6 = "ack6" if drop_pure_acks else "accept"
    a = _Asm()
    if not loopback_outgoing:
        # The OUTGOING copy of a packet on a loopback device: its HOST copy follows (libpcap skips it)
        a.op(_LDH_ABS, SKF_AD_PKTTYPE)
        _jump_if(a, _JEQ, PACKET_OUTGOING, "ip", when=False)
        a.op(_LDH_ABS, SKF_AD_HATYPE)
        _jump_if(a, _JEQ, ARPHRD_LOOPBACK, "reject")
        a.label("ip")
    a.op(_LDH_ABS, SKF_AD_PROTOCOL)
    _jump_if(a, _JEQ, ETH_P_IP, "not_ipv4", when=False)
    a.op(_LDB_ABS, 9)
    _jump_if(a, _JEQ, IPPROTO_TCP, "reject", when=False)
    if ranges or drop_pure_acks:
        a.op(_LDH_ABS, 6)
        _jump_if(a, _JSET, 0x1FFF, "accept")  # a non-first fragment: no ports to test
        a.op(_LDXB_MSH, 0)
    if ranges:
        _port_checks(a, (_LDH_IND, 0), ranges, t4)
        _port_checks(a, (_LDH_IND, 2), ranges, t4)
    a.ja(t4 if not ranges else "reject")
    a.label("not_ipv4")
    _jump_if(a, _JEQ, ETH_P_IPV6, "reject", when=False)
    a.op(_LDB_ABS, 6)
    if ranges:
        _jump_if(a, _JEQ, IPPROTO_TCP, "v6_ext", when=False)
        _port_checks(a, (_LDH_ABS, 40), ranges, t6)
        _port_checks(a, (_LDH_ABS, 42), ranges, t6)
        a.ja("reject")
    else:
        _jump_if(a, _JEQ, IPPROTO_TCP, t6)
    a.label("v6_ext")
    for nh in IPV6_EXTENSIONS:
        _jump_if(a, _JEQ, nh, "accept")
    a.label("reject")
    a.op(_RET, 0)
    a.label("accept")
    a.op(_RET, snaplen)
    if drop_pure_acks:
        a.label("ack4")  # X: the IPv4 header length
        _pure_ack_check(a, (_LDB_IND, 13), 2, (_LDB_IND, 12), v4=True, snaplen=snaplen)
        a.label("ack6")
        _pure_ack_check(a, (_LDB_ABS, 53), 4, (_LDB_ABS, 52), v4=False, snaplen=snaplen)
    prog = a.assemble()
    if len(prog) > BPF_MAXINSNS:
        raise ValueError(f"{len(ranges)} port ranges need {len(prog)} BPF instructions (max {BPF_MAXINSNS})")
    return prog


def attach_filter(sock: socket.socket, prog: list[Insn]) -> None:
    """SO_ATTACH_FILTER; the kernel copies the program, so the buffer need not outlive the call."""
    raw = b"".join(struct.pack("HBBI", *insn) for insn in prog)
    buf = ctypes.create_string_buffer(raw, len(raw))
    fprog = struct.pack("HL", len(prog), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
