"""Put the SSL probes into the kernel and read what they produce: create the maps, load the programs
`ssl_probes` generates, sum the kernel counters, decode ring-buffer records into TlsRecords.

The programs read x86_64 `struct pt_regs` offsets; on another architecture loading fails plainly
instead of attaching programs that would read the wrong registers.
"""

from __future__ import annotations

import errno
import platform
import struct
from dataclasses import dataclass, field

from sniffer.capture import bpf_sys
from sniffer.capture.tls.btf import BtfError
from sniffer.capture.tls.records import TlsBound, TlsData, TlsFreed, TlsRecord
from sniffer.capture.tls.sock_read import SockLayout, decode_address, kernel_layout, sock_layout
from sniffer.capture.tls.ssl_probes import (
    COUNTER_NAMES,
    DATA_SYMBOLS,
    EVENT_SYMBOLS,
    HEADER,
    KIND_BOUND,
    KIND_FREED,
    KIND_READ,
    KIND_WRITE,
    data_programs,
    event_program,
)

__all__ = ["LoadedProbes", "ProbeConfig", "decode_record", "load_probes", "read_counters"]

# struct pt_regs offsets (arch/x86/include/uapi/asm/ptrace.h)
_PT_REGS = {"x86_64": {"rdi": 112, "rsi": 104, "rdx": 96, "rcx": 88, "rax": 80}}


@dataclass(frozen=True, slots=True)
class ProbeConfig:
    """The kernel-side budgets; every one has a default."""

    per_call_cap: int = 64 * 1024  # bytes of one SSL_read/SSL_write call that are copied
    chunk_bytes: int = 16 * 1024  # the largest record; nginx never moves more than 16 KiB per call
    rate_limit: int = 0  # calls per second per process; 0 = no limit
    ring_bytes: int = 8 << 20  # ring buffer size (power of two, multiple of the page size)
    # wake the reader only once this many bytes wait (0: on every record the reader has caught up
    # with, the kernel's default); below it the reader finds records when its poll times out.
    # Measured (bench/tls_cost.py): per-record wakeups made SSL_write's return probe 6x dearer.
    wakeup_bytes: int = 64 * 1024
    max_watched: int = 4096  # processes
    max_threads_in_call: int = 16384  # threads inside an SSL call at once
    max_connections: int = 65536  # SSL objects whose stream offsets are kept (LRU)

    def __post_init__(self) -> None:
        if not 1 <= self.chunk_bytes <= 65536:
            raise ValueError("chunk_bytes must be 1..65536")
        if not 1 <= self.per_call_cap <= 16 * self.chunk_bytes:
            raise ValueError("per_call_cap must be 1..16 chunks")
        if self.ring_bytes < 4096 or self.ring_bytes & (self.ring_bytes - 1):
            raise ValueError("ring_bytes must be a power of two >= 4096")
        if not 0 <= self.wakeup_bytes < self.ring_bytes:
            raise ValueError("wakeup_bytes must be 0..ring_bytes-1")
        if self.rate_limit < 0 or self.rate_limit >= 1 << 31:
            raise ValueError("rate_limit must be 0..2^31-1")

    @property
    def chunk_limits(self) -> list[int]:
        """Bytes each successive record of one call may carry (their sum is per_call_cap)."""
        limits, left = [], self.per_call_cap
        while left > 0:
            limits.append(min(left, self.chunk_bytes))
            left -= limits[-1]
        return limits

    def size_classes(self, limit: int) -> list[int]:
        """Data sizes a record may reserve for a chunk of at most `limit` bytes, ascending."""
        classes, size = [limit], limit // 4
        while size >= 256:
            classes.append(size)
            size //= 4
        return sorted(classes)


@dataclass
class LoadedProbes:
    """The maps and programs in the kernel; `programs` maps (symbol, is_return) to a program fd."""

    config: ProbeConfig
    watched_fd: int
    counters_fd: int
    ring_fd: int
    offsets_fd: int
    args_fds: list[int]
    programs: dict[tuple[str, bool], int] = field(default_factory=dict)
    # struct offsets for the in-kernel socket lookup at SSL_set_fd; None: no BTF, addresses from /proc
    sock_layout: SockLayout | None = None
    sock_layout_error: str | None = None  # why sock_layout is None

    def close(self) -> None:
        maps = (self.watched_fd, self.counters_fd, self.ring_fd, self.offsets_fd)
        for fd in (*self.programs.values(), *self.args_fds, *maps):
            bpf_sys.close_fd(fd)
        self.programs.clear()
        self.args_fds.clear()


def _check_arch() -> dict[str, int]:
    regs = _PT_REGS.get(platform.machine())
    if regs is None:
        raise OSError(f"the TLS probes read x86_64 registers; this machine is {platform.machine()}")
    return regs


def load_probes(config: ProbeConfig, *, kernel_addresses: bool = True) -> LoadedProbes:
    """Create the maps and load every program; raises bpf_sys.BpfError (or OSError on another arch).

    kernel_addresses: read each socket's addresses in the SSL_set_fd probe (needs the kernel's BTF);
    when the BTF lacks a member, or the verifier rejects that walk, the probes load without it."""
    regs = _check_arch()
    layout: SockLayout | None = None
    layout_error: str | None = "disabled" if not kernel_addresses else None
    if kernel_addresses:
        layout = kernel_layout()
        if layout is None:
            try:
                sock_layout()  # again, for the reason
            except BtfError as exc:
                layout_error = str(exc)
    bpf_sys.raise_memlock()
    fds: list[int] = []

    def new_map(map_type: int, key: int, value: int, entries: int, name: str) -> int:
        fds.append(bpf_sys.map_create(map_type, key, value, entries, name))
        return fds[-1]

    def load(code: bytes, name: str) -> int:
        fds.append(bpf_sys.prog_load(bpf_sys.PROG_KPROBE, code, name[:15]))
        return fds[-1]

    try:
        probes = LoadedProbes(
            config=config,
            watched_fd=new_map(bpf_sys.MAP_HASH, 4, 16, config.max_watched, "tls_watched"),
            counters_fd=new_map(bpf_sys.MAP_PERCPU_ARRAY, 4, 8, len(COUNTER_NAMES), "tls_counters"),
            ring_fd=new_map(bpf_sys.MAP_RINGBUF, 0, 0, config.ring_bytes, "tls_ring"),
            offsets_fd=new_map(bpf_sys.MAP_LRU_HASH, 16, 16, config.max_connections, "tls_offsets"),
            args_fds=[],
            sock_layout=layout,
            sock_layout_error=layout_error,
        )
        for symbol, (kind, via_pointer) in DATA_SYMBOLS.items():
            # one args map per function: a nested call of another probed function keeps its own slot
            args_fd = new_map(
                bpf_sys.MAP_HASH, 8, 24, config.max_threads_in_call, f"tls_args_{kind}{via_pointer:d}"
            )
            probes.args_fds.append(args_fd)
            entry, ret = data_programs(regs, probes, args_fd, symbol)
            probes.programs[(symbol, False)] = load(entry, f"{symbol}_in")
            probes.programs[(symbol, True)] = load(ret, f"{symbol}_out")
        for symbol in EVENT_SYMBOLS:
            try:
                fd = bpf_sys.prog_load(bpf_sys.PROG_KPROBE, event_program(regs, probes, symbol), symbol)
            except bpf_sys.BpfError as exc:
                if probes.sock_layout is None or exc.errno in (errno.EPERM, errno.EACCES):
                    raise
                # a kernel whose verifier refuses the walk (e.g. no bpf_probe_read_kernel before 5.5)
                probes.sock_layout, probes.sock_layout_error = None, f"verifier: {exc.strerror}"
                fd = bpf_sys.prog_load(bpf_sys.PROG_KPROBE, event_program(regs, probes, symbol), symbol)
            fds.append(fd)
            probes.programs[(symbol, False)] = fd
    except BaseException:
        for fd in fds:
            bpf_sys.close_fd(fd)
        raise
    return probes


def read_counters(probes: LoadedProbes) -> dict[str, int]:
    """The kernel counters, summed over CPUs."""
    ncpu = bpf_sys.possible_cpus()
    out: dict[str, int] = {}
    for index, name in enumerate(COUNTER_NAMES):
        raw = bpf_sys.map_lookup(probes.counters_fd, struct.pack("<I", index), 8 * ncpu)
        out[name] = sum(struct.unpack(f"<{ncpu}Q", raw)) if raw else 0
    return out


def decode_record(raw: memoryview | bytes) -> TlsRecord | None:
    """One ring-buffer record as a TlsRecord; None for a record too short or of an unknown kind."""
    if len(raw) < HEADER.size:
        return None
    kind, pid, ssl, ts_ns, total_len, captured, offset = HEADER.unpack_from(raw)
    if kind in (KIND_READ, KIND_WRITE):
        data = bytes(raw[HEADER.size : HEADER.size + captured])
        return TlsData(pid, ssl, kind == KIND_READ, ts_ns, total_len, data, offset)
    if kind == KIND_BOUND:
        ends = decode_address(raw[HEADER.size : HEADER.size + captured]) if captured else None
        if ends is None:
            return TlsBound(pid, ssl, total_len, ts_ns)
        return TlsBound(pid, ssl, total_len, ts_ns, ends[0], ends[1])
    if kind == KIND_FREED:
        return TlsFreed(pid, ssl, ts_ns)
    return None
