"""Attach the SSL_* programs to one library file: ELF symbol -> file offset, then perf_event_open.

Symbols are looked up in the ELF symbol tables by a small reader written here rather than with
pyelftools: it needs 60 lines (ELF64 little-endian, .dynsym then .symtab, PT_LOAD to map an address
to a file offset), and the container image stays free of another dependency.

Attaching uses the `uprobe` PMU the way libbpf does (no tracefs needed): perf_event_open with
type = /sys/bus/event_source/devices/uprobe/type, config = the retprobe bit for return probes,
config1 = a pointer to the file's path, config2 = the symbol's file offset, pid = -1 and cpu = 0 (every
process mapping the file; the programs filter by pid themselves), then PERF_EVENT_IOC_SET_BPF and
PERF_EVENT_IOC_ENABLE. The kernel resolves the path to an inode at that moment, so a path through
/proc/<pid>/root/ attaches to the gateway's own library even from another mount namespace.
Closing the perf fds detaches.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import platform
import struct
from dataclasses import dataclass, field

from sniffer.capture import bpf_sys

__all__ = ["Attachment", "attach_library", "elf_symbol_offsets", "uprobe_pmu"]

_NR_PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241}.get(platform.machine(), -1)
_PERF_FLAG_FD_CLOEXEC = 8
_PERF_EVENT_IOC_ENABLE = 0x2400
_PERF_EVENT_IOC_SET_BPF = 0x40042408
_PMU_DIR = "/sys/bus/event_source/devices/uprobe"

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_SYM = struct.Struct("<IBBHQQ")
_PT_LOAD, _SHT_SYMTAB, _SHT_DYNSYM, _STT_FUNC = 1, 2, 11, 2

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def elf_symbol_offsets(path: str, wanted: set[str]) -> dict[str, int]:
    """File offsets of the wanted functions defined in an ELF64 file (missing ones are simply absent).

    Raises OSError when the file cannot be read or is not a little-endian ELF64 file.
    """
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        if len(m) < _EHDR.size or m[:4] != b"\x7fELF" or m[4] != 2 or m[5] != 1:
            raise OSError(errno.ENOEXEC, f"{path}: not a little-endian ELF64 file")
        (_, _, _, _, _, phoff, shoff, _, _, phentsize, phnum, shentsize, shnum, _) = _EHDR.unpack_from(m)
        loads = []
        for i in range(phnum):
            p_type, _, p_offset, p_vaddr, _, _, p_memsz, _ = _PHDR.unpack_from(m, phoff + i * phentsize)
            if p_type == _PT_LOAD:
                loads.append((p_vaddr, p_memsz, p_offset))
        sections = [_SHDR.unpack_from(m, shoff + i * shentsize) for i in range(shnum)] if shoff else []
        found: dict[str, int] = {}
        # .dynsym first: the exported names are what a gateway calls through; .symtab covers static builds
        for wanted_type in (_SHT_DYNSYM, _SHT_SYMTAB):
            for _, sh_type, _, _, sh_offset, sh_size, sh_link, _, _, sh_entsize in sections:
                if sh_type != wanted_type or not sh_entsize:
                    continue
                strtab_offset = sections[sh_link][4]
                for pos in range(sh_offset, sh_offset + sh_size, sh_entsize):
                    st_name, st_info, _, st_shndx, st_value, _ = _SYM.unpack_from(m, pos)
                    if st_info & 0xF != _STT_FUNC or st_shndx == 0 or st_value == 0:
                        continue
                    start = strtab_offset + st_name
                    name = m[start : m.find(b"\0", start)].decode(errors="replace")
                    if name in wanted and name not in found:
                        for vaddr, memsz, offset in loads:
                            if vaddr <= st_value < vaddr + memsz:
                                found[name] = st_value - vaddr + offset
                                break
    return found


def uprobe_pmu() -> tuple[int, int]:
    """(perf type of the uprobe PMU, the config bit marking a return probe); OSError when absent."""
    with open(f"{_PMU_DIR}/type") as f:
        pmu_type = int(f.read())
    with open(f"{_PMU_DIR}/format/retprobe") as f:
        # "config:0": the bit number after the colon
        retprobe_bit = 1 << int(f.read().strip().split(":")[1])
    return pmu_type, retprobe_bit


def _perf_uprobe(path: str, offset: int, is_return: bool, prog_fd: int) -> int:
    pmu_type, retprobe_bit = uprobe_pmu()
    path_buf = ctypes.create_string_buffer(path.encode())
    attr = ctypes.create_string_buffer(128)
    # type, size, config, then config1 (uprobe_path) at 56 and config2 (probe_offset) at 64
    struct.pack_into("<IIQ", attr, 0, pmu_type, 128, retprobe_bit if is_return else 0)
    struct.pack_into("<QQ", attr, 56, ctypes.addressof(path_buf), offset)
    fd = _libc.syscall(
        ctypes.c_long(_NR_PERF_EVENT_OPEN),
        attr,
        ctypes.c_int(-1),
        ctypes.c_int(0),
        ctypes.c_int(-1),
        ctypes.c_ulong(_PERF_FLAG_FD_CLOEXEC),
    )
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"perf_event_open uprobe {path}+{offset:#x}: {os.strerror(err)}")
    try:
        fcntl.ioctl(fd, _PERF_EVENT_IOC_SET_BPF, prog_fd)
        fcntl.ioctl(fd, _PERF_EVENT_IOC_ENABLE, 0)
    except OSError:
        os.close(fd)
        raise
    return int(fd)


@dataclass
class Attachment:
    """The probes on one library file (identified by device and inode)."""

    path: str
    key: tuple[int, int]
    symbols: list[str] = field(default_factory=list)  # the functions found and probed
    perf_fds: list[int] = field(default_factory=list)

    def close(self) -> None:
        for fd in self.perf_fds:
            bpf_sys.close_fd(fd)
        self.perf_fds.clear()


def attach_library(path: str, programs: dict[tuple[str, bool], int]) -> Attachment:
    """Probe every symbol of `programs` ((symbol, is_return) -> prog fd) that the file defines.

    Symbols the library lacks (SSL_read_ex before OpenSSL 1.1.1) are skipped. Raises OSError when the
    file is unreadable or the kernel refuses (the attachment made so far is undone).
    """
    st = os.stat(path)
    offsets = elf_symbol_offsets(path, {symbol for symbol, _ in programs})
    attachment = Attachment(path, (st.st_dev, st.st_ino))
    try:
        for (symbol, is_return), prog_fd in sorted(programs.items()):
            if symbol in offsets:
                attachment.perf_fds.append(_perf_uprobe(path, offsets[symbol], is_return, prog_fd))
                if symbol not in attachment.symbols:
                    attachment.symbols.append(symbol)
    except OSError:
        attachment.close()
        raise
    return attachment
