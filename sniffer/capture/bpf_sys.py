"""The bpf(2) system call from ctypes: create maps, load programs, read and write map elements.

Only what the TLS probes and the balanced fanout need (see `bpf_asm` for why there is no BCC or
libbpf). Every failure becomes `BpfError`, an OSError whose message says what was attempted and, for a
rejected program, carries the verifier's log, so a bad program or a missing permission reads plainly
instead of as a bare errno.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import platform
import resource
import struct

__all__ = [
    "MAP_ARRAY",
    "MAP_HASH",
    "MAP_LRU_HASH",
    "MAP_PERCPU_ARRAY",
    "MAP_RINGBUF",
    "PROG_KPROBE",
    "PROG_SOCKET_FILTER",
    "BpfError",
    "close_fd",
    "map_create",
    "map_delete",
    "map_keys",
    "map_lookup",
    "map_update",
    "possible_cpus",
    "prog_load",
    "raise_memlock",
]

# syscall numbers differ per architecture; only x86_64 is supported by the probes anyway
_SYSCALLS = {"x86_64": 321, "aarch64": 280}
_NR_BPF = _SYSCALLS.get(platform.machine(), -1)

_CMD_MAP_CREATE, _CMD_MAP_LOOKUP, _CMD_MAP_UPDATE, _CMD_MAP_DELETE, _CMD_MAP_NEXT_KEY = 0, 1, 2, 3, 4
_CMD_PROG_LOAD = 5

MAP_HASH, MAP_ARRAY, MAP_PERCPU_ARRAY, MAP_LRU_HASH, MAP_RINGBUF = 1, 2, 6, 9, 27
PROG_SOCKET_FILTER = 1  # what a PACKET_FANOUT_EBPF group runs (`fanout_balance`)
PROG_KPROBE = 2  # uprobes run BPF_PROG_TYPE_KPROBE programs
_ATTR_SIZE = 128  # larger than every field we set; the kernel checks the tail is zero

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.syscall.restype = ctypes.c_long


class BpfError(OSError):
    """A bpf(2) call failed; `errno` is the kernel's, the message says what was attempted."""


def _bpf(cmd: int, attr: ctypes.Array[ctypes.c_char], what: str) -> int:
    if _NR_BPF < 0:
        raise BpfError(errno.ENOSYS, f"{what}: bpf(2) is not wired for {platform.machine()}")
    ret = _libc.syscall(ctypes.c_long(_NR_BPF), ctypes.c_int(cmd), attr, ctypes.c_uint(_ATTR_SIZE))
    if ret < 0:
        err = ctypes.get_errno()
        raise BpfError(err, f"{what}: {os.strerror(err)}")
    return int(ret)


def _bpf_found(cmd: int, attr: ctypes.Array[ctypes.c_char], what: str) -> bool:
    """`_bpf` on a map element: False when the kernel says there is none (ENOENT)."""
    try:
        _bpf(cmd, attr, what)
    except BpfError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise
    return True


def _attr(fmt: str, *values: object) -> ctypes.Array[ctypes.c_char]:
    buf = ctypes.create_string_buffer(_ATTR_SIZE)
    struct.pack_into(fmt, buf, 0, *values)
    return buf


def map_create(map_type: int, key_size: int, value_size: int, max_entries: int, name: str) -> int:
    """A new map; returns its fd (the caller owns it)."""
    # map_type, key_size, value_size, max_entries, map_flags, inner_map_fd, numa_node, map_name[16]
    attr = _attr("<IIIIIII16s", map_type, key_size, value_size, max_entries, 0, 0, 0, name.encode()[:15])
    return _bpf(_CMD_MAP_CREATE, attr, f"creating map {name}")


def prog_load(prog_type: int, insns: bytes, name: str, *, log_size: int = 1 << 20) -> int:
    """Load a program (license GPL: the helpers we call are GPL-only); the verifier log is in the error."""
    license_ = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(log_size)
    code = ctypes.create_string_buffer(insns, len(insns))
    attr = _attr(
        "<IIQQIIQII16s",
        prog_type,
        len(insns) // 8,
        ctypes.addressof(code),
        ctypes.addressof(license_),
        1,  # log_level 1: the log is only filled when the verifier rejects the program
        log_size,
        ctypes.addressof(log),
        0,  # kern_version: ignored since 5.0, and the ring buffer needs 5.8 anyway
        0,
        name.encode()[:15],
    )
    try:
        return _bpf(_CMD_PROG_LOAD, attr, f"loading program {name}")
    except BpfError as exc:
        text = log.value.decode(errors="replace").strip()
        if text:
            # the verifier's conclusion is at the end of its log
            tail = "\n".join(text.splitlines()[-25:])
            raise BpfError(exc.errno, f"{exc.strerror}; verifier log (tail):\n{tail}") from None
        raise


def map_update(map_fd: int, key: bytes, value: bytes, flags: int = 0) -> None:
    k, v = ctypes.create_string_buffer(key, len(key)), ctypes.create_string_buffer(value, len(value))
    attr = _attr("<IIQQQ", map_fd, 0, ctypes.addressof(k), ctypes.addressof(v), flags)
    _bpf(_CMD_MAP_UPDATE, attr, "updating a map element")


def map_lookup(map_fd: int, key: bytes, value_size: int) -> bytes | None:
    """The value under key (for per-CPU maps: value_size must cover every CPU), or None when absent."""
    k, v = ctypes.create_string_buffer(key, len(key)), ctypes.create_string_buffer(value_size)
    attr = _attr("<IIQQQ", map_fd, 0, ctypes.addressof(k), ctypes.addressof(v), 0)
    return v.raw if _bpf_found(_CMD_MAP_LOOKUP, attr, "looking up a map element") else None


def map_delete(map_fd: int, key: bytes) -> bool:
    """Delete key; False when it was not there."""
    k = ctypes.create_string_buffer(key, len(key))
    attr = _attr("<IIQ", map_fd, 0, ctypes.addressof(k))
    return _bpf_found(_CMD_MAP_DELETE, attr, "deleting a map element")


def map_keys(map_fd: int, key_size: int) -> list[bytes]:
    """Every key of a hash map (BPF_MAP_GET_NEXT_KEY from no key until ENOENT)."""
    keys: list[bytes] = []
    nxt = ctypes.create_string_buffer(key_size)
    cur: ctypes.Array[ctypes.c_char] | None = None
    while True:
        key_ptr = ctypes.addressof(cur) if cur is not None else 0
        attr = _attr("<IIQQ", map_fd, 0, key_ptr, ctypes.addressof(nxt))
        if not _bpf_found(_CMD_MAP_NEXT_KEY, attr, "listing map keys"):
            return keys
        keys.append(nxt.raw)
        cur = ctypes.create_string_buffer(nxt.raw, key_size)


def possible_cpus() -> int:
    """How many per-CPU slots a per-CPU map value has (the kernel sizes them by possible CPUs)."""
    try:
        with open("/sys/devices/system/cpu/possible") as f:
            text = f.read().strip()
    except OSError:
        return os.cpu_count() or 1
    count = 0
    for part in text.split(","):
        low, _, high = part.partition("-")
        count += int(high or low) - int(low) + 1
    return count


def raise_memlock() -> None:
    """Lift RLIMIT_MEMLOCK's soft limit to the hard one: kernels before 5.11 charge BPF maps to it (our
    8 MiB ring would fail with EPERM, read as a missing capability); later kernels use memory cgroups
    and ignore it. Raising the hard limit would need CAP_SYS_RESOURCE, which containers often lack."""
    with contextlib.suppress(OSError, ValueError):
        _soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (hard, hard))


def close_fd(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)
