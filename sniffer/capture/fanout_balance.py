"""A flow-balanced fanout: an eBPF program that deals new TCP flows to the capture workers in turn.

PACKET_FANOUT_HASH sends each flow to the worker its hash names, so the workers share flows only as
evenly as a random draw: with 20 busy connections (the wrk capture) one of two workers got 59-65 % of
the packets and dropped first while the other idled. A Kong node's few keep-alive connections to a
service are the same case. This program (PACKET_FANOUT_EBPF, a socket filter program whose return
value is the worker's index) remembers each flow's worker in an LRU hash map and gives a flow it has
not seen the next worker in turn, so N flows split N/workers each.

- Both directions of a flow must reach the same worker: the map's key is symmetric in the two
  endpoints (XOR and sum of the addresses, of the ports), so either direction finds the same entry.
  Two flows whose keys collide share a worker, which is harmless.
- A flow caught mid-stream is dealt like a new one, at its first packet.
- IPv6: up to three hop-by-hop, routing or destination options headers are followed to the TCP
  header. What is not TCP over IPv4 or IPv6 that way goes to worker 0 (the kernel filter passes only
  TCP): an IPv6 fragment, or a fourth extension header, apart from its flow's other packets (rare;
  the hash fanout cannot keep a later fragment with its flow either, having no ports to hash).
- The map holds `2 x SNIFFER_MAX_FLOWS` flows: a flow evicted from it has been idle while more flows
  than the core keeps came and went, so the core has dropped it too.

`balanced_fanout_program` returns None when the kernel refuses the map or the program (no bpf(2), no
privilege); the caller then keeps the hash fanout and says so. Loading needs bpf(2) at start (as root,
before privileges are dropped): CAP_BPF where the seccomp profile allows the call (container runtimes'
default profiles allow it only with CAP_SYS_ADMIN), or CAP_SYS_ADMIN; most distributions refuse it to
unprivileged users (kernel.unprivileged_bpf_disabled). The DaemonSet's three capabilities do not
include it, so it sets SNIFFER_FANOUT=hash; the TLS DaemonSet (SYS_ADMIN) gets the program.

VLAN-tagged frames whose tag the NIC did not strip, like other non-IP frames, all go to worker 0.
"""

from __future__ import annotations

import errno
import logging
import socket
import struct
from dataclasses import dataclass

from sniffer.capture.bpf_asm import R0, R1, R2, R3, R4, R5, R6, R7, R8, R10, Helper, Program
from sniffer.capture.bpf_sys import (
    MAP_ARRAY,
    MAP_HASH,
    MAP_LRU_HASH,
    PROG_SOCKET_FILTER,
    close_fd,
    map_create,
    map_update,
    prog_load,
    raise_memlock,
)

__all__ = [
    "BalancedFanout",
    "balanced_fanout_program",
    "fanout_program",
    "load_balanced_fanout",
    "unavailable_reason",
]

log = logging.getLogger("sniffer.capture")

SKB_LOAD_BYTES_RELATIVE = 68  # bpf_skb_load_bytes_relative (4.18)
HDR_START_NET = 1  # ... relative to the network header, wherever the link header ends
_SKB_PROTOCOL = 16  # offsetof(struct __sk_buff, protocol): the EtherType, big-endian in the low 16 bits
ETH_P_IP_BE = 0x0008  # htons(0x0800), as a little-endian load of the field sees it
ETH_P_IPV6_BE = 0xDD86  # htons(0x86DD)
KEY_SIZE = 16  # u32 address XOR, u32 address sum, u32 port XOR | port sum << 16, u32 family
# IPv6 extension headers followed to the TCP header: hop-by-hop options, routing, destination options
# (a fragment header is not followed: a later fragment has no ports to key it by)
_EXTENSIONS = (0, 43, 60)
MAX_EXTENSION_HEADERS = 3
# stack (below r10): the key at -16, the network header read at -64 (40 bytes), the ports at -72
_KEY, _HDR, _PORTS, _IDX = -16, -64, -72, -76


def fanout_program(flows_map: int, counter_map: int, workers: int, ports_map: int | None = None) -> Program:
    """The program: the worker index of the packet in the socket buffer `ctx` (R1). With `ports_map`
    (port, in network byte order as a u32 -> anything), only flows with a port in it are dealt."""
    p = Program()
    p.movr(R6, R1)
    for off in (0, 8):
        p.st(8, R10, _KEY + off, 0)
    p.ldx(4, R7, R6, _SKB_PROTOCOL)
    p.jif(R7, "==", ETH_P_IP_BE, "v4")
    p.jif(R7, "==", ETH_P_IPV6_BE, "v6")
    p.jmp("other")

    def load(off_reg: int | None, off: int, to: int, size: int) -> None:
        """skb_load_bytes_relative(ctx, off, fp + to, size, NET); to `other` when it fails."""
        p.movr(R1, R6)
        if off_reg is None:
            p.mov(R2, off)
        else:
            p.movr(R2, off_reg)
        p.movr(R3, R10)
        p.alu(R3, "+", to)
        p.mov(R4, size)
        p.mov(R5, HDR_START_NET)
        p.call(SKB_LOAD_BYTES_RELATIVE)
        p.jif(R0, "!=", 0, "other")

    p.label("v4")
    load(None, 0, _HDR, 20)
    p.ldx(1, R2, R10, _HDR + 9)  # protocol
    p.jif(R2, "!=", 6, "other")
    p.ldx(1, R8, R10, _HDR)  # version and header length
    p.alu(R8, "&", 0x0F)
    p.alu(R8, "<<", 2)
    p.ldx(4, R2, R10, _HDR + 12)  # source address
    p.ldx(4, R3, R10, _HDR + 16)  # destination address
    p.movr(R4, R2)
    p.alu(R4, "^", R3, reg=True)
    p.stx(4, R10, _KEY, R4)
    p.alu(R2, "+", R3, reg=True, alu32=True)
    p.stx(4, R10, _KEY + 4, R2)
    p.st(4, R10, _KEY + 12, 4)
    load(R8, 0, _PORTS, 4)
    p.jmp("ports")

    p.label("v6")
    load(None, 0, _HDR, 40)
    p.ldx(1, R7, R10, _HDR + 6)  # next header
    p.mov(R8, 40)  # where it starts
    for i in range(MAX_EXTENSION_HEADERS):  # (unrolled: the verifier wants no loop)
        p.jif(R7, "==", 6, "v6_tcp")
        for kind in _EXTENSIONS:
            p.jif(R7, "==", kind, f"v6_ext{i}")
        p.jmp("other")
        p.label(f"v6_ext{i}")
        load(R8, 0, _IDX, 2)  # its next header, and its length in 8 bytes beyond the first 8
        p.ldx(1, R7, R10, _IDX)
        p.ldx(1, R2, R10, _IDX + 1)
        p.alu(R2, "+", 1)
        p.alu(R2, "<<", 3)
        p.alu(R8, "+", R2, reg=True)
    p.jif(R7, "!=", 6, "other")
    p.label("v6_tcp")
    p.mov(R4, 0)  # XOR of every address word of both ends
    p.mov(R5, 0)  # sum of them
    for word in range(8):
        p.ldx(4, R2, R10, _HDR + 8 + 4 * word)
        p.alu(R4, "^", R2, reg=True)
        p.alu(R5, "+", R2, reg=True, alu32=True)
    p.stx(4, R10, _KEY, R4)
    p.stx(4, R10, _KEY + 4, R5)
    p.st(4, R10, _KEY + 12, 6)
    load(R8, 0, _PORTS, 4)

    p.label("ports")
    p.ldx(2, R2, R10, _PORTS)
    p.ldx(2, R3, R10, _PORTS + 2)
    p.movr(R4, R2)
    p.alu(R4, "^", R3, reg=True)
    p.alu(R2, "+", R3, reg=True)
    p.alu(R2, "<<", 16)
    p.alu(R4, "|", R2, reg=True)
    p.stx(4, R10, _KEY + 8, R4)

    def lookup(map_fd: int, key: int) -> None:
        """R0 = bpf_map_lookup_elem(map, fp + key)"""
        p.ld_map_fd(R1, map_fd)
        p.movr(R2, R10)
        p.alu(R2, "+", key)
        p.call(Helper.map_lookup_elem)

    # the flow's worker, if it has one (the usual packet: one lookup)
    lookup(flows_map, _KEY)
    p.jif(R0, "!=", 0, "found")
    if ports_map is not None:  # only new flows the kernel filter passes take a turn (and a map entry)
        for off in (0, 2):
            p.ldx(2, R2, R10, _PORTS + off)
            p.stx(4, R10, _IDX, R2)
            lookup(ports_map, _IDX)
            p.jif(R0, "!=", 0, "captured")
        p.jmp("other")
        p.label("captured")
    # a new flow: the next worker in turn (two CPUs taking the same turn only put two flows together)
    p.st(4, R10, _IDX, 0)
    lookup(counter_map, _IDX)
    p.jif(R0, "==", 0, "other")
    p.mov(R1, 1)
    p.atomic_add(4, R0, 0, R1)
    p.ldx(4, R7, R0, 0)
    p.alu(R7, "%", workers)
    p.stx(4, R10, _IDX, R7)
    p.ld_map_fd(R1, flows_map)
    p.movr(R2, R10)
    p.alu(R2, "+", _KEY)
    p.movr(R3, R10)
    p.alu(R3, "+", _IDX)
    p.mov(R4, 1)  # BPF_NOEXIST: a flow another CPU dealt meanwhile keeps its worker
    p.call(Helper.map_update_elem)
    lookup(flows_map, _KEY)
    p.jif(R0, "!=", 0, "found")
    p.movr(R0, R7)  # the map refused it: this packet still goes to the worker it was dealt
    p.exit()

    p.label("found")
    p.ldx(4, R0, R0, 0)
    p.exit()

    p.label("other")
    p.mov(R0, 0)
    p.exit()
    return p


@dataclass
class BalancedFanout:
    """The loaded program (`fd`) and its maps' descriptors; `close` once every group has it (the
    groups keep the program, and the program its maps)."""

    fd: int
    maps: tuple[int, ...]

    def close(self) -> None:
        for fd in (self.fd, *self.maps):
            close_fd(fd)


def load_balanced_fanout(workers: int, max_flows: int, ports: tuple[int, ...]) -> BalancedFanout:
    """Load the program for `workers` workers remembering up to 2 x `max_flows` flows of `ports` (()
    every port); raises BpfError (OSError) when the kernel refuses the map or the program."""
    maps: list[int] = []
    try:
        raise_memlock()
        maps.append(map_create(MAP_LRU_HASH, KEY_SIZE, 4, max(1024, 2 * max_flows), "sniff_fanout"))
        maps.append(map_create(MAP_ARRAY, 4, 4, 1, "sniff_turn"))
        ports_map = None
        if ports:
            ports_map = map_create(MAP_HASH, 4, 1, len(ports), "sniff_ports")
            maps.append(ports_map)
            for port in ports:
                map_update(ports_map, struct.pack("=I", socket.htons(port)), b"\x01")
        prog = fanout_program(maps[0], maps[1], workers, ports_map).assemble()
        fd = prog_load(PROG_SOCKET_FILTER, prog, "sniff_fanout")
    except OSError:
        for map_fd in maps:
            close_fd(map_fd)
        raise
    return BalancedFanout(fd, tuple(maps))


def unavailable_reason(exc: OSError) -> str:
    """Why the program did not load, with what would let it where that is a missing privilege."""
    if exc.errno == errno.EPERM:
        return f"{exc}; bpf(2) needs CAP_BPF and a seccomp profile allowing it, or CAP_SYS_ADMIN"
    return str(exc)


def balanced_fanout_program(workers: int, max_flows: int, ports: tuple[int, ...]) -> BalancedFanout | None:
    """`load_balanced_fanout`, or None (logged) when the kernel refuses it."""
    try:
        return load_balanced_fanout(workers, max_flows, ports)
    except OSError as exc:
        log.info("flow-balanced fanout unavailable (%s): flows are spread by hash", unavailable_reason(exc))
        return None
