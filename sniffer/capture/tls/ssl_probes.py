"""The eBPF programs on OpenSSL's SSL_* functions (generated here), the layout of their maps and records.

Data path: an entry uprobe on SSL_read/SSL_read_ex/SSL_write/SSL_write_ex saves (ssl, buf, out pointer)
per thread; the return uprobe reads how many bytes moved, copies them from the process's buffer with
bpf_probe_read_user straight into a ring-buffer record (no scratch map, no second copy) and submits it.
SSL_set_fd and SSL_free entry probes emit a header (connection bound to a socket / connection over); the
SSL_set_fd record also carries the socket's addresses, read in the kernel (`sock_read`) when the kernel's
BTF gave the struct offsets.

Bounds, all enforced in the kernel:
- only processes whose tgid is in the `watched` hash map (filled by user space) cost more than one
  map lookup: curl or anything else mapping the same libssl never produces a record;
- a per-process rate limit (calls per second, window in the watched map's value) drops whole calls,
  counted;
- a call is emitted as up to `max_chunks` records of at most `chunk_bytes` (the chunk loop is unrolled
  here in Python, so the verifier sees straight-line code on any kernel); beyond the per-call cap the last
  record's total_len exceeds its data and the lost bytes are counted (truncated_bytes);
- a record reserves one of a few size classes (256 B .. chunk_bytes) so small reads do not take 16 KiB of
  ring space each; the ring being full drops the record, counted (ring_full);
- the reader is woken only when `wakeup_bytes` wait (a wakeup is an irq_work, a VM exit on virtual
  machines), so user space polls with a timeout and reads whatever is there when it expires.

x86_64 only: the programs read arguments and return values at the x86_64 `struct pt_regs` offsets.
Stream offsets: an LRU hash keyed by (tgid, ssl) keeps the bytes each direction has moved since the
connection was bound (SSL_set_fd and SSL_free delete the entry). The return probe adds every call to it
before the rate limit and the ring reservation, so a call the ring had no room for (or the rate limit
dropped) still moves the offsets, and the next record's offset tells user space exactly how many bytes
are missing (a StreamGap instead of an unmarked hole). An entry evicted from the LRU restarts at 0 for
that connection: user space sees the offset go back and resynchronises (counted, no gap).

Record header ("<IIQQIIQ", 40 bytes): kind, tgid, ssl, ts_ns, total_len (fd for BOUND), captured_len,
stream offset of the record's first byte (data records; 0 for the others);
a BOUND record has `sock_read.ADDRESS` after it (captured_len = its size when the addresses were read).
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from sniffer.capture.bpf_asm import R0, R1, R2, R3, R4, R6, R7, R8, R9, R10, Helper, Program
from sniffer.capture.tls.sock_read import ADDRESS, emit_sock_read

if TYPE_CHECKING:  # only annotations: probe_loader imports this module
    from sniffer.capture.tls.probe_loader import LoadedProbes

__all__ = [
    "COUNTER_NAMES",
    "DATA_SYMBOLS",
    "EVENT_SYMBOLS",
    "HEADER",
    "KIND_BOUND",
    "KIND_FREED",
    "KIND_READ",
    "KIND_WRITE",
    "SYMBOLS",
    "data_programs",
    "event_program",
]

HEADER = struct.Struct("<IIQQIIQ")
KIND_READ, KIND_WRITE, KIND_BOUND, KIND_FREED = 1, 2, 3, 4

COUNTER_NAMES = (
    "records",
    "ring_full",  # bpf_ringbuf_reserve failed: the reader is behind (since 6.15 also a lock timeout)
    "rate_limited",
    "truncated_bytes",
    "return_without_entry",
    "read_errors",
)
_C_RECORDS, _C_RING_FULL, _C_RATE_LIMITED, _C_TRUNCATED, _C_NO_ENTRY, _C_READ_ERRORS = range(6)

# symbol -> (kind, is the length written through a size_t* 4th argument)
DATA_SYMBOLS = {
    "SSL_read": (KIND_READ, False),
    "SSL_read_ex": (KIND_READ, True),
    "SSL_write": (KIND_WRITE, False),
    "SSL_write_ex": (KIND_WRITE, True),
}
EVENT_SYMBOLS = {"SSL_set_fd": KIND_BOUND, "SSL_free": KIND_FREED}
SYMBOLS = (*DATA_SYMBOLS, *EVENT_SYMBOLS)

_ONE_SECOND_NS = 1_000_000_000
_BPF_RB_NO_WAKEUP, _BPF_RB_FORCE_WAKEUP, _BPF_RB_AVAIL_DATA = 1, 2, 0
_MAX_CALL_LEN = 1 << 30  # a length beyond this is a garbage out-pointer read, not a real call

# stack slots (offsets from r10, the frame pointer)
_S_TGID, _S_CTR, _S_KEY, _S_ARGS, _S_TS, _S_TMP = -4, -8, -16, -40, -48, -56  # _S_ARGS: ssl, buf, out
_S_OKEY, _S_OVAL, _S_OFF = -72, -88, -96  # offsets-map key (tgid, 0, ssl) and new value; this call's offset
_BPF_NOEXIST = 1


class _Builder:
    """Emits one program; owns the label counter and the shared snippets (watched check, counters)."""

    def __init__(self, regs: dict[str, int], probes: LoadedProbes) -> None:
        self.p = Program()
        self.regs = regs
        self.probes = probes
        self._labels = 0

    def fresh(self, stem: str) -> str:
        self._labels += 1
        return f"{stem}_{self._labels}"

    def arg(self, dst: int, ctx: int, reg: str) -> None:
        self.p.ldx(8, dst, ctx, self.regs[reg])

    def lookup(self, map_fd: int, key_slot: int) -> None:
        """r0 = bpf_map_lookup_elem(map, fp+key_slot)"""
        self.p.ld_map_fd(R1, map_fd)
        self.p.movr(R2, R10)
        self.p.alu(R2, "+", key_slot)
        self.p.call(Helper.map_lookup_elem)

    def count(self, counter: int, value_reg: int | None = None) -> None:
        """counters[counter] += value_reg (a callee-saved register) or 1; clobbers r0-r5."""
        skip = self.fresh("count_done")
        self.p.st(4, R10, _S_CTR, counter)
        self.lookup(self.probes.counters_fd, _S_CTR)
        self.p.jif(R0, "==", 0, skip)
        if value_reg is None:
            self.p.mov(R1, 1)
        else:
            self.p.movr(R1, value_reg)
        self.p.atomic_add(8, R0, 0, R1)
        self.p.label(skip)

    def offsets_key(self) -> None:
        """The offsets-map key (tgid, 0, ssl) at _S_OKEY. Needs r7 = pid_tgid and the ssl at _S_ARGS."""
        p = self.p
        p.movr(R1, R7)
        p.alu(R1, ">>", 32)
        p.stx(4, R10, _S_OKEY, R1)
        p.st(4, R10, _S_OKEY + 4, 0)
        p.ldx(8, R1, R10, _S_ARGS)
        p.stx(8, R10, _S_OKEY + 8, R1)

    def tgid_watched(self, miss: str) -> None:
        """Store the tgid at _S_TGID; r0 = its watched-map value, or jump to `miss`. Needs r7 = pid_tgid."""
        self.p.movr(R1, R7)
        self.p.alu(R1, ">>", 32)
        self.p.stx(4, R10, _S_TGID, R1)
        self.lookup(self.probes.watched_fd, _S_TGID)
        self.p.jif(R0, "==", 0, miss)


def _entry_program(b: _Builder, args_fd: int) -> None:
    """Entry of a data call: remember (ssl, buf, out pointer) for this thread, watched processes only."""
    p = b.p
    p.movr(R6, R1)
    p.call(Helper.get_current_pid_tgid)
    p.movr(R7, R0)
    b.tgid_watched("out")
    p.stx(8, R10, _S_KEY, R7)
    for slot, reg in ((0, "rdi"), (8, "rsi"), (16, "rcx")):  # rcx: the size_t* of the _ex variants
        b.arg(R1, R6, reg)
        p.stx(8, R10, _S_ARGS + slot, R1)
    p.ld_map_fd(R1, args_fd)
    p.movr(R2, R10)
    p.alu(R2, "+", _S_KEY)
    p.movr(R3, R10)
    p.alu(R3, "+", _S_ARGS)
    p.mov(R4, 0)
    p.call(Helper.map_update_elem)
    p.label("out")
    p.mov(R0, 0)
    p.exit()


def _return_program(b: _Builder, args_fd: int, kind: int, length_via_pointer: bool) -> None:
    """Return of a data call: how many bytes moved, then the bytes, as one record per chunk."""
    p, cfg = b.p, b.probes.config
    p.movr(R6, R1)
    p.call(Helper.get_current_pid_tgid)
    p.movr(R7, R0)
    p.stx(8, R10, _S_KEY, R7)
    b.lookup(args_fd, _S_KEY)
    p.jif(R0, "==", 0, "no_entry")
    for slot in (0, 8, 16):
        p.ldx(8, R1, R0, slot)
        p.stx(8, R10, _S_ARGS + slot, R1)
    p.ld_map_fd(R1, args_fd)
    p.movr(R2, R10)
    p.alu(R2, "+", _S_KEY)
    p.call(Helper.map_delete_elem)

    # r9 = bytes moved. The return value is a C int: only its low 32 bits are defined.
    b.arg(R9, R6, "rax")
    p.alu(R9, "<<", 32)
    p.alu(R9, "s>>", 32)
    p.jif(R9, "s<=", 0, "out")
    if length_via_pointer:  # SSL_*_ex returned 1: the count is in *out
        p.movr(R1, R10)
        p.alu(R1, "+", _S_TMP)
        p.mov(R2, 8)
        p.ldx(8, R3, R10, _S_ARGS + 16)
        p.call(Helper.probe_read_user)
        p.jif(R0, "!=", 0, "out")
        p.ldx(8, R9, R10, _S_TMP)
        p.jif(R9, "==", 0, "out")
    p.jif(R9, ">", _MAX_CALL_LEN, "out")

    # this call's stream offset (_S_OFF), and the direction's offset moved past it
    b.offsets_key()
    b.lookup(b.probes.offsets_fd, _S_OKEY)
    p.jif(R0, "!=", 0, "have_offsets")
    p.st(8, R10, _S_OVAL, 0)
    p.st(8, R10, _S_OVAL + 8, 0)
    p.ld_map_fd(R1, b.probes.offsets_fd)
    p.movr(R2, R10)
    p.alu(R2, "+", _S_OKEY)
    p.movr(R3, R10)
    p.alu(R3, "+", _S_OVAL)
    p.mov(R4, _BPF_NOEXIST)
    p.call(Helper.map_update_elem)
    b.lookup(b.probes.offsets_fd, _S_OKEY)
    p.jif(R0, "==", 0, "out")
    p.label("have_offsets")
    side = 0 if kind == KIND_READ else 8
    p.ldx(8, R1, R0, side)
    p.stx(8, R10, _S_OFF, R1)
    p.alu(R1, "+", R9, reg=True)
    p.stx(8, R0, side, R1)

    p.call(Helper.ktime_get_ns)
    p.stx(8, R10, _S_TS, R0)
    b.tgid_watched("out")
    if cfg.rate_limit:
        # a one-second window per process, kept in its watched-map value: [window start, calls in it]
        p.ldx(8, R1, R0, 0)
        p.ldx(8, R2, R10, _S_TS)
        p.alu(R2, "-", R1, reg=True)
        p.jif(R2, "<", _ONE_SECOND_NS, "same_window")
        p.ldx(8, R2, R10, _S_TS)
        p.stx(8, R0, 0, R2)
        p.st(8, R0, 8, 0)
        p.label("same_window")
        p.ldx(8, R1, R0, 8)
        p.jif(R1, ">=", cfg.rate_limit, "limited")
        p.alu(R1, "+", 1)
        p.stx(8, R0, 8, R1)

    offset = 0
    limits = cfg.chunk_limits
    for index, limit in enumerate(limits):
        last = index == len(limits) - 1
        if index:
            p.jif(R9, "<=", offset, "out")
        # r6 = bytes in this record
        p.movr(R6, R9)
        p.alu(R6, "-", offset)
        fits = b.fresh("fits")
        p.jif(R6, "<=", limit, fits)
        p.mov(R6, limit)
        p.label(fits)
        _reserve_sized(b, cfg.size_classes(limit))
        full = b.fresh("ring_full")
        p.jif(R0, "==", 0, full)
        p.movr(R7, R0)
        _header(b, kind)
        if last:  # total_len > captured_len tells user space how much of the call is missing
            p.movr(R1, R9)
            p.alu(R1, "-", offset)
            p.stx(4, R7, 24, R1)
        else:
            p.stx(4, R7, 24, R6)
        p.stx(4, R7, 28, R6)
        p.ldx(8, R1, R10, _S_OFF)
        p.alu(R1, "+", offset)
        p.stx(8, R7, 32, R1)
        p.movr(R1, R7)
        p.alu(R1, "+", HEADER.size)
        p.movr(R2, R6)
        p.ldx(8, R3, R10, _S_ARGS + 8)
        p.alu(R3, "+", offset)
        p.call(Helper.probe_read_user)
        copied = b.fresh("copied")
        p.jif(R0, "==", 0, copied)
        p.st(4, R7, 28, 0)  # an empty record still tells user space these bytes are missing
        b.count(_C_READ_ERRORS)
        p.label(copied)
        _submit(b)
        b.count(_C_RECORDS)
        if last:
            p.movr(R8, R9)
            p.alu(R8, "-", offset)
            p.alu(R8, "-", R6, reg=True)
            p.jif(R8, "==", 0, "out")
            b.count(_C_TRUNCATED, R8)
        following = b.fresh("next")
        p.jmp("out" if last else following)
        p.label(full)
        b.count(_C_RING_FULL)
        p.jmp("out")  # later chunks would leave a hole inside the call: stop here
        p.label(following)
        offset += limit

    if cfg.rate_limit:
        p.label("limited")
        b.count(_C_RATE_LIMITED)
        p.jmp("out")
    p.label("no_entry")
    b.tgid_watched("out")  # unwatched processes return here all the time: not worth counting
    b.count(_C_NO_ENTRY)
    p.label("out")
    p.mov(R0, 0)
    p.exit()


def _reserve_sized(b: _Builder, classes: list[int]) -> None:
    """r0 = bpf_ringbuf_reserve(header + the smallest class >= r6). r6 must be within classes[-1]."""
    p = b.p
    targets = [b.fresh("class") for _ in classes]
    for size, target in zip(classes[:-1], targets[:-1], strict=True):
        p.jif(R6, "<=", size, target)
    done = b.fresh("reserved")
    for size, target in reversed(list(zip(classes, targets, strict=True))):
        p.label(target)
        p.ld_map_fd(R1, b.probes.ring_fd)
        p.mov(R2, HEADER.size + size)  # a constant per path, as the verifier requires
        p.mov(R3, 0)
        p.call(Helper.ringbuf_reserve)
        p.jmp(done)
    p.label(done)


def _submit(b: _Builder) -> None:
    """bpf_ringbuf_submit(r7). With wakeup_bytes, no wakeup until that much waits: each wakeup is an
    irq_work (a self-IPI: a VM exit on virtual machines) that costs more than the record itself."""
    p, threshold = b.p, b.probes.config.wakeup_bytes
    if threshold:
        p.ld_map_fd(R1, b.probes.ring_fd)
        p.mov(R2, _BPF_RB_AVAIL_DATA)
        p.call(Helper.ringbuf_query)
        p.mov(R2, _BPF_RB_NO_WAKEUP)
        quiet = b.fresh("quiet")
        p.jif(R0, "<", threshold, quiet)
        p.mov(R2, _BPF_RB_FORCE_WAKEUP)
        p.label(quiet)
    else:
        p.mov(R2, 0)
    p.movr(R1, R7)
    p.call(Helper.ringbuf_submit)


def _header(b: _Builder, kind: int) -> None:
    """kind, tgid, ssl and ts into the record at r7 (total_len and captured_len are the caller's)."""
    p = b.p
    p.st(4, R7, 0, kind)
    p.ldx(4, R1, R10, _S_TGID)
    p.stx(4, R7, 4, R1)
    p.ldx(8, R1, R10, _S_ARGS)
    p.stx(8, R7, 8, R1)
    p.ldx(8, R1, R10, _S_TS)
    p.stx(8, R7, 16, R1)


def _event_program(b: _Builder, kind: int) -> None:
    """SSL_set_fd(ssl, fd) / SSL_free(ssl) entry: a header (and for SSL_set_fd the socket's addresses)."""
    p = b.p
    p.movr(R6, R1)
    p.call(Helper.get_current_pid_tgid)
    p.movr(R7, R0)
    b.tgid_watched("out")
    p.call(Helper.ktime_get_ns)
    p.stx(8, R10, _S_TS, R0)
    b.arg(R1, R6, "rdi")
    p.stx(8, R10, _S_ARGS, R1)
    b.arg(R8, R6, "rsi")
    p.alu(R8, "=", R8, reg=True, alu32=True)  # the fd is a C int: its low 32 bits, zero-extended
    # a new connection (or none) under this SSL address: its stream offsets start again
    b.offsets_key()
    p.ld_map_fd(R1, b.probes.offsets_fd)
    p.movr(R2, R10)
    p.alu(R2, "+", _S_OKEY)
    p.call(Helper.map_delete_elem)
    bound = kind == KIND_BOUND
    p.ld_map_fd(R1, b.probes.ring_fd)
    p.mov(R2, HEADER.size + (ADDRESS.size if bound else 0))
    p.mov(R3, 0)
    p.call(Helper.ringbuf_reserve)
    p.jif(R0, "==", 0, "full")
    p.movr(R7, R0)
    _header(b, kind)
    if bound:
        p.stx(4, R7, 24, R8)
    else:
        p.st(4, R7, 24, 0)
    p.st(4, R7, 28, 0)
    p.st(8, R7, 32, 0)
    if bound:
        if b.probes.sock_layout is not None:
            emit_sock_read(p, b.probes.sock_layout, R8, R7, HEADER.size, _S_TMP)
        else:
            for off in range(0, ADDRESS.size, 8):  # ring memory is not zeroed: no stale bytes out
                p.st(8, R7, HEADER.size + off, 0)
    _submit(b)
    b.count(_C_RECORDS)
    p.jmp("out")
    p.label("full")
    b.count(_C_RING_FULL)
    p.label("out")
    p.mov(R0, 0)
    p.exit()


def data_programs(
    regs: dict[str, int], probes: LoadedProbes, args_fd: int, symbol: str
) -> tuple[bytes, bytes]:
    """(entry program, return program) of one data function; `regs` are the pt_regs offsets."""
    kind, via_pointer = DATA_SYMBOLS[symbol]
    entry, ret = _Builder(regs, probes), _Builder(regs, probes)
    _entry_program(entry, args_fd)
    _return_program(ret, args_fd, kind, via_pointer)
    return entry.p.assemble(), ret.p.assemble()


def event_program(regs: dict[str, int], probes: LoadedProbes, symbol: str) -> bytes:
    """The entry program of SSL_set_fd or SSL_free."""
    event = _Builder(regs, probes)
    _event_program(event, EVENT_SYMBOLS[symbol])
    return event.p.assemble()
