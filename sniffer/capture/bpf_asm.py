"""A tiny eBPF assembler: readable instruction helpers in, the kernel's 8-byte instruction words out.

Why hand-assembled eBPF and not BCC or a clang-built object: BCC compiles C at run time and needs kernel
headers that match the running kernel (they do not on these hosts, and it drags LLVM into the image);
a libbpf CO-RE object needs clang at build time plus a C loader. A few hundred instructions
written with these helpers load through bpf(2) from ctypes: nothing to compile, nothing to install.
(The one program that does read kernel structs, SSL_set_fd's socket lookup, takes its offsets from the
running kernel's BTF through `tls/btf.py`: the relocation step of CO-RE, done in Python at load time.)

Each instruction is `struct bpf_insn` packed as "<BBhi" (opcode, dst|src<<4, offset, immediate).
Jumps name a label; `Program.assemble()` resolves labels to relative offsets, so programs read top to
bottom like assembly listings. `ld_map_fd` is the two-word ld_imm64 with BPF_PSEUDO_MAP_FD, which the
kernel replaces with the map's address at load time.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

__all__ = [
    "R0", "R1", "R2", "R3", "R4", "R5", "R6", "R7", "R8", "R9", "R10",
    "Helper", "Program",
]  # fmt: skip

R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, R10 = range(11)

# instruction classes
_LD, _LDX, _ST, _STX, _ALU, _JMP, _ALU64 = 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x07
# sizes and modes
_SIZES = {1: 0x10, 2: 0x08, 4: 0x00, 8: 0x18}
_IMM, _MEM, _ATOMIC = 0x00, 0x60, 0xC0
_K, _X = 0x00, 0x08
_ALU_OPS = {
    "+": 0x00, "-": 0x10, "*": 0x20, "/": 0x30, "|": 0x40, "&": 0x50, "<<": 0x60, ">>": 0x70,
    "%": 0x90, "^": 0xA0, "=": 0xB0, "s>>": 0xC0,
}  # fmt: skip
# jump conditions; unsigned unless prefixed with "s"
_JMP_OPS = {
    "==": 0x10, ">": 0x20, ">=": 0x30, "&": 0x40, "!=": 0x50, "s>": 0x60, "s>=": 0x70,
    "<": 0xA0, "<=": 0xB0, "s<": 0xC0, "s<=": 0xD0,
}  # fmt: skip
_JA, _CALL, _EXIT = 0x00, 0x80, 0x90
_BPF_PSEUDO_MAP_FD = 1
_INSN = struct.Struct("<BBhi")


def _s32(value: int) -> int:
    return value - (1 << 32) if value & 0x80000000 else value


class Helper:
    """Kernel helper ids (include/uapi/linux/bpf.h, `__BPF_FUNC_MAPPER`)."""

    map_lookup_elem = 1
    map_update_elem = 2
    map_delete_elem = 3
    ktime_get_ns = 5
    get_current_pid_tgid = 14
    get_current_task = 35
    probe_read_user = 112
    probe_read_kernel = 113
    ringbuf_output = 130
    ringbuf_reserve = 131
    ringbuf_submit = 132
    ringbuf_discard = 133
    ringbuf_query = 134


@dataclass
class Program:
    """An instruction list under construction; every method appends one instruction (two for ld_imm64)."""

    # (opcode, dst, src, offset, imm, jump label or None)
    insns: list[tuple[int, int, int, int, int, str | None]] = field(default_factory=list)
    labels: dict[str, int] = field(default_factory=dict)

    def _emit(
        self, op: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0, to: str | None = None
    ) -> None:
        self.insns.append((op, dst, src, off, imm, to))

    def label(self, name: str) -> None:
        """Mark the next instruction as `name` (a jump target)."""
        if name in self.labels:
            raise ValueError(f"label {name!r} defined twice")
        self.labels[name] = len(self.insns)

    # ALU (64-bit unless alu32)
    def alu(self, dst: int, op: str, src_or_imm: int, *, reg: bool = False, alu32: bool = False) -> None:
        """`dst op= src` (reg=True) or `dst op= imm`; op is one of + - * / | & << >> % ^ = s>>."""
        cls = _ALU if alu32 else _ALU64
        if reg:
            self._emit(cls | _ALU_OPS[op] | _X, dst, src_or_imm)
        else:
            self._emit(cls | _ALU_OPS[op] | _K, dst, 0, 0, src_or_imm)

    def mov(self, dst: int, imm: int) -> None:
        self.alu(dst, "=", imm)

    def movr(self, dst: int, src: int) -> None:
        self.alu(dst, "=", src, reg=True)

    def ld_imm64(self, dst: int, value: int, src: int = 0) -> None:
        """Load a 64-bit constant (with src=BPF_PSEUDO_MAP_FD: a map fd, made a pointer by the kernel)."""
        self._emit(_LD | _IMM | _SIZES[8], dst, src, 0, _s32(value & 0xFFFFFFFF))
        self._emit(0, 0, 0, 0, _s32((value >> 32) & 0xFFFFFFFF))

    def ld_map_fd(self, dst: int, map_fd: int) -> None:
        self.ld_imm64(dst, map_fd, _BPF_PSEUDO_MAP_FD)

    # memory
    def ldx(self, size: int, dst: int, src: int, off: int) -> None:
        """dst = *(u<size*8> *)(src + off)"""
        self._emit(_LDX | _MEM | _SIZES[size], dst, src, off)

    def stx(self, size: int, dst: int, off: int, src: int) -> None:
        """*(u<size*8> *)(dst + off) = src"""
        self._emit(_STX | _MEM | _SIZES[size], dst, src, off)

    def st(self, size: int, dst: int, off: int, imm: int) -> None:
        """*(u<size*8> *)(dst + off) = imm"""
        self._emit(_ST | _MEM | _SIZES[size], dst, 0, off, imm)

    def atomic_add(self, size: int, dst: int, off: int, src: int) -> None:
        """lock *(u<size*8> *)(dst + off) += src (BPF_ATOMIC with imm BPF_ADD)."""
        self._emit(_STX | _ATOMIC | _SIZES[size], dst, src, off, 0)

    # control flow
    def jmp(self, to: str) -> None:
        self._emit(_JMP | _JA, to=to)

    def jif(self, dst: int, op: str, imm: int, to: str) -> None:
        """if dst <op> imm goto label (unsigned compare unless op starts with "s")."""
        self._emit(_JMP | _JMP_OPS[op] | _K, dst, 0, 0, imm, to)

    def jifr(self, dst: int, op: str, src: int, to: str) -> None:
        """if dst <op> src goto label."""
        self._emit(_JMP | _JMP_OPS[op] | _X, dst, src, 0, 0, to)

    def call(self, helper: int) -> None:
        self._emit(_JMP | _CALL, imm=helper)

    def exit(self) -> None:
        self._emit(_JMP | _EXIT)

    def assemble(self) -> bytes:
        """The program as the kernel wants it; raises ValueError on an unknown label or a jump too far."""
        out = bytearray()
        for index, (op, dst, src, off, imm, to) in enumerate(self.insns):
            if to is not None:
                if to not in self.labels:
                    raise ValueError(f"jump to undefined label {to!r}")
                off = self.labels[to] - index - 1
                if not -32768 <= off <= 32767:
                    raise ValueError(f"jump to {to!r} is out of range")
            out += _INSN.pack(op, (src << 4) | dst, off, imm)
        return bytes(out)

    def __len__(self) -> int:
        return len(self.insns)
