"""Read pcap and pcapng capture files as a stream of `(ts, linktype, frame, wire_len)` tuples.

Hand-written on `read()` chunks and fixed-layout reads instead of dpkt, which falls short here (checked):
dpkt.pcapng.Reader keeps the first interface's link type and if_tsresol for every packet (a nanosecond
second interface reads 1000x off), has no per-packet link type, skips Simple Packet Blocks; dpkt.pcap.Reader
yields a cut last frame silently (or raises NeedData), returns `Decimal` timestamps for nanosecond files and
no wire length. Speed, 100k Ethernet frames looped doing nothing (2 vCPU, median of 5): pcap 2.59M pkt/s
here vs dpkt 0.56M; pcapng 1.36M here vs dpkt 0.31M.

Memory is bounded whatever the file size: one read buffer of `CHUNK_BYTES` (or one record, at most
`MAX_RECORD_BYTES`). Damage is reported, never hidden: every complete packet before it is yielded first,
then `CaptureError` names the file and the byte offset.
"""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import Iterator
from types import TracebackType
from typing import BinaryIO, Final

from librt.strings import read_i32_be, read_i32_le, read_i64_be, read_i64_le
from mypy_extensions import i64

from sniffer.errors import CaptureError

__all__ = ["MAX_RECORD_BYTES", "CaptureFile", "Frame", "open_capture"]

Frame = tuple[float, int, bytes, int]
"""(capture time in float seconds, link type, captured bytes, length on the wire)."""

# A record this large is garbage, not a packet: the biggest real snaplen (libpcap) is 256 KiB.
MAX_RECORD_BYTES: Final = 256 << 20
# Big enough that the per-chunk work vanishes in the per-packet work, small enough to stay in L2/L3.
CHUNK_BYTES: Final = 1 << 20

_PCAP_MAGICS: dict[bytes, tuple[str, int, int]] = {
    # file bytes -> (struct byte order, fraction divisor, record header length)
    b"\xd4\xc3\xb2\xa1": ("<", 1_000_000, 16),
    b"\xa1\xb2\xc3\xd4": (">", 1_000_000, 16),
    b"\x4d\x3c\xb2\xa1": ("<", 1_000_000_000, 16),
    b"\xa1\xb2\x3c\x4d": (">", 1_000_000_000, 16),
    # Kuznetzov's patched libpcap: 8 more bytes per record (ifindex, protocol, pkt_type, pad)
    b"\x34\xcd\xb2\xa1": ("<", 1_000_000, 24),
    b"\xa1\xb2\xcd\x34": (">", 1_000_000, 24),
}
_PCAPNG_SHB: Final = b"\x0a\x0d\x0d\x0a"
_BOM_LE: Final = b"\x4d\x3c\x2b\x1a"
_BOM_BE: Final = b"\x1a\x2b\x3c\x4d"
_BT_SHB: Final = 0x0A0D0D0A
_BT_IDB: Final = 1
_BT_PB: Final = 2
_BT_SPB: Final = 3
_BT_EPB: Final = 6
_OPT_IF_TSRESOL: Final = 9
_OPT_IF_TSOFFSET: Final = 14
# libpcap's LT_LINKTYPE(): the upper bits of the pcap header's link type carry FCS information.
_LINKTYPE_MASK: Final = 0x03FFFFFF

_LOOKS_LIKE: tuple[tuple[bytes, str], ...] = (
    (b"\x1f\x8b", "a gzip file (gunzip it first)"),
    (b"BZh", "a bzip2 file (bunzip2 it first)"),
    (b"\xfd7zXZ", "an xz file (unxz it first)"),
    (b"\x28\xb5\x2f\xfd", "a zstd file (unzstd it first)"),
    (b"PK\x03\x04", "a zip archive"),
    (b"snoop\x00", "a Solaris snoop capture (convert it with editcap)"),
    (b"\x7fELF", "an executable"),
)


def _u32(buf: bytes, pos: int, little: bool) -> int:
    """The unsigned 32-bit number at `buf[pos:pos + 4]`. librt's fixed-layout reads: compiled, a few
    native instructions (struct's unpack_from is a generic call making a tuple: ~550 per pcap record)."""
    word: int = read_i32_le(buf, pos) if little else read_i32_be(buf, pos)
    return word & 0xFFFFFFFF  # the reads are signed


def _looks_like(head: bytes) -> str:
    for magic, what in _LOOKS_LIKE:
        if head.startswith(magic):
            return what
    if head and all(32 <= b < 127 or b in b"\t\r\n" for b in head):
        return "text"
    return f"unknown magic 0x{head[:4].hex()}"


class CaptureFile:
    """An open capture file: iterate it once for its frames, in file order. Use `open_capture()`."""

    def __init__(self, path: str, fileobj: BinaryIO, fmt: str, size_bytes: int, head: bytes) -> None:
        self.path = path
        self.format = fmt  # "pcap" or "pcapng"
        self.size_bytes = size_bytes  # 0 when the source is not a regular file
        self.bytes_read = 0  # advances a chunk at a time: for progress display
        self._f = fileobj
        self._head = head
        self._frames: Iterator[Frame] = self._pcapng() if fmt == "pcapng" else self._pcap()

    def __enter__(self) -> CaptureFile:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __iter__(self) -> Iterator[Frame]:
        return self._frames

    def close(self) -> None:
        self._f.close()

    def _error(self, what: str) -> CaptureError:
        return CaptureError(f"{self.path}: {what}")

    def _refill(self, buf: bytes, pos: int, need: int) -> bytes:
        """Return the unread bytes from `pos` plus at least `need` more if the file has them."""
        parts = [buf[pos:]]
        have = len(parts[0])
        want = max(CHUNK_BYTES, need - have)
        while have < need or want > 0:
            chunk = self._f.read(want)
            if not chunk:
                break
            self.bytes_read += len(chunk)
            parts.append(chunk)
            have += len(chunk)
            want = need - have  # a pipe may return short reads: only insist on what is needed
        return b"".join(parts)

    def _pcap(self) -> Iterator[Frame]:
        head = self._head
        endian, divisor, hdr_len = _PCAP_MAGICS[head[:4]]
        if len(head) < 24:
            raise self._error(f"truncated pcap file header ({len(head)} of 24 bytes)")
        linktype = struct.unpack_from(endian + "I", head, 20)[0] & _LINKTYPE_MASK
        div = float(divisor)
        little = endian == "<"
        # Typed: compiled, the reads and the arithmetic and slicing below are native (untyped,
        # each step was a generic call: ~1.5k instructions per frame).
        sec: int
        frac: int
        caplen: int
        wire_len: int
        times: i64
        lengths: i64
        buf = head
        pos = 24
        base = 0  # file offset of buf[0]
        n = len(buf)
        while True:
            if n - pos < hdr_len:
                base += pos
                buf = self._refill(buf, pos, hdr_len)
                pos = 0
                n = len(buf)
                if n == 0:
                    return
                if n < hdr_len:
                    raise self._error(
                        f"truncated at byte offset {base}: packet record header cut short "
                        f"({n} of {hdr_len} bytes)"
                    )
            # Two 64-bit reads, not four 32-bit ones (interpreted, each read is a call), signed: masked.
            if little:
                times = read_i64_le(buf, pos)
                lengths = read_i64_le(buf, pos + 8)
                sec = times & 0xFFFFFFFF
                frac = (times >> 32) & 0xFFFFFFFF
                caplen = lengths & 0xFFFFFFFF
                wire_len = (lengths >> 32) & 0xFFFFFFFF
            else:
                times = read_i64_be(buf, pos)
                lengths = read_i64_be(buf, pos + 8)
                sec = (times >> 32) & 0xFFFFFFFF
                frac = times & 0xFFFFFFFF
                caplen = (lengths >> 32) & 0xFFFFFFFF
                wire_len = lengths & 0xFFFFFFFF
            start = pos + hdr_len
            end = start + caplen
            if end > n:
                if caplen > MAX_RECORD_BYTES:
                    raise self._error(
                        f"corrupt packet record at byte offset {base + pos}: captured length {caplen} "
                        f"is absurd (> {MAX_RECORD_BYTES})"
                    )
                base += pos
                buf = self._refill(buf, pos, hdr_len + caplen)
                pos = 0
                n = len(buf)
                start = hdr_len
                end = start + caplen
                if end > n:
                    raise self._error(
                        f"truncated at byte offset {base}: packet record cut short "
                        f"({n - hdr_len} of {caplen} bytes)"
                    )
            yield (sec + frac / div, linktype, buf[start:end], wire_len)
            pos = end

    def _pcapng(self) -> Iterator[Frame]:
        buf = self._head
        pos = 0
        base = 0
        n = len(buf)
        endian = "<"
        little = True
        # per interface of the current section: (link type, ticks per second, offset seconds, snaplen)
        ifaces: list[tuple[int, float, int, int]] = []
        ts = 0.0
        btype: int  # typed as in _pcap: compiled, native numbers
        blen: int
        iface: int
        hi: int
        lo: int
        caplen: int
        wire_len: int
        while True:
            if n - pos < 12:
                base += pos
                buf = self._refill(buf, pos, 12)
                pos = 0
                n = len(buf)
                if n == 0:
                    return
                if n < 12:
                    raise self._error(f"truncated at byte offset {base}: block header cut short")
            btype = _u32(buf, pos, little)
            blen = _u32(buf, pos + 4, little)
            if btype == _BT_SHB:
                bom = buf[pos + 8 : pos + 12]
                if bom == _BOM_LE:
                    endian = "<"
                elif bom == _BOM_BE:
                    endian = ">"
                else:
                    raise self._error(
                        f"corrupt section header at byte offset {base + pos}: "
                        f"bad byte-order magic 0x{bom.hex()}"
                    )
                little = endian == "<"
                blen = _u32(buf, pos + 4, little)
                ifaces = []
            end = pos + blen
            if end > n or blen < 12 or blen & 3:
                if blen < 12 or blen & 3 or blen > MAX_RECORD_BYTES:
                    raise self._error(f"corrupt block at byte offset {base + pos}: block length {blen}")
                base += pos
                buf = self._refill(buf, pos, blen)
                pos = 0
                n = len(buf)
                end = blen
                if end > n:
                    raise self._error(
                        f"truncated at byte offset {base}: block cut short ({n} of {blen} bytes)"
                    )
            if btype == _BT_EPB:
                if blen < 32:
                    raise self._error(
                        f"corrupt packet block at byte offset {base + pos}: block length {blen}"
                    )
                iface = _u32(buf, pos + 8, little)
                hi = _u32(buf, pos + 12, little)
                lo = _u32(buf, pos + 16, little)
                caplen = _u32(buf, pos + 20, little)
                wire_len = _u32(buf, pos + 24, little)
                start = pos + 28
                if start + caplen > end - 4 or _u32(buf, end - 4, little) != blen:
                    raise self._error(f"corrupt packet block at byte offset {base + pos}")
                try:
                    linktype, div, offset, _ = ifaces[iface]
                except IndexError:
                    raise self._error(
                        f"packet block at byte offset {base + pos} names interface {iface} "
                        f"but its section describes {len(ifaces)}"
                    ) from None
                ts = ((hi << 32) | lo) / div + offset
                yield (ts, linktype, buf[start : start + caplen], wire_len)
            elif btype == _BT_IDB:
                ifaces.append(self._interface(buf, pos, end, endian, base))
            elif btype in (_BT_SPB, _BT_PB):
                if blen < (16 if btype == _BT_SPB else 32):
                    raise self._error(
                        f"corrupt packet block at byte offset {base + pos}: block length {blen}"
                    )
                if not ifaces:
                    raise self._error(f"packet block at byte offset {base + pos} before any interface")
                if btype == _BT_SPB:
                    iface = 0
                    wire_len = _u32(buf, pos + 8, little)
                    start = pos + 12
                    caplen = min(wire_len, end - 4 - start)
                    if ifaces[0][3]:
                        caplen = min(caplen, ifaces[0][3])
                else:
                    iface, _drops, hi, lo, caplen, wire_len = struct.unpack_from(
                        endian + "HHIIII", buf, pos + 8
                    )
                    start = pos + 28
                    if start + caplen > end - 4 or iface >= len(ifaces):
                        raise self._error(f"corrupt packet block at byte offset {base + pos}")
                linktype, div, offset, _ = ifaces[iface]
                if btype == _BT_PB:
                    ts = ((hi << 32) | lo) / div + offset
                # a Simple Packet Block has no timestamp: it takes the previous packet's
                yield (ts, linktype, buf[start : start + caplen], wire_len)
            elif btype == _BT_SHB:
                major = struct.unpack_from(endian + "H", buf, pos + 12)[0] if blen >= 28 else 0
                if major != 1:
                    raise self._error(f"unsupported pcapng version {major} at byte offset {base + pos}")
            pos = end

    def _interface(
        self, buf: bytes, pos: int, end: int, endian: str, base: int
    ) -> tuple[int, float, int, int]:
        if end - pos < 20:
            raise self._error(f"corrupt interface description block at byte offset {base + pos}")
        linktype, _reserved, snaplen = struct.unpack_from(endian + "HHI", buf, pos + 8)
        div = 1e6
        offset = 0
        p = pos + 16
        stop = end - 4
        while p + 4 <= stop:
            code, olen = struct.unpack_from(endian + "HH", buf, p)
            if code == 0:
                break
            value = buf[p + 4 : p + 4 + olen]
            if code == _OPT_IF_TSRESOL and olen >= 1:
                res = value[0]
                div = float(2 ** (res & 0x7F)) if res & 0x80 else float(10**res)
            elif code == _OPT_IF_TSOFFSET and olen >= 8:
                offset = struct.unpack_from(endian + "q", value)[0]
            p += 4 + ((olen + 3) & ~3)
        return (linktype, div, offset, snaplen)


def open_capture(path: str | os.PathLike[str]) -> CaptureFile:
    """Open a pcap or pcapng file; `CaptureError` (one line naming the file) if it is not usable."""
    name = os.fspath(path)
    try:
        f = open(name, "rb", buffering=0)  # noqa: SIM115 - owned by the returned CaptureFile
    except FileNotFoundError:
        raise CaptureError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise CaptureError(f"{name}: is a directory, not a capture file") from None
    except PermissionError:
        raise CaptureError(f"{name}: permission denied") from None
    except OSError as e:
        raise CaptureError(f"{name}: cannot open: {e.strerror or e}") from None
    try:
        st = os.fstat(f.fileno())
        if stat.S_ISDIR(st.st_mode):
            raise CaptureError(f"{name}: is a directory, not a capture file")
        size = st.st_size if stat.S_ISREG(st.st_mode) else 0
        try:
            head = f.read(CHUNK_BYTES)
        except OSError as e:
            raise CaptureError(f"{name}: cannot read: {e.strerror or e}") from None
        if not head:
            raise CaptureError(f"{name}: empty file, not a capture")
        if head[:4] in _PCAP_MAGICS:
            fmt = "pcap"
        elif head[:4] == _PCAPNG_SHB:
            if len(head) < 12 or head[8:12] not in (_BOM_LE, _BOM_BE):
                raise CaptureError(f"{name}: corrupt pcapng file: bad section header")
            fmt = "pcapng"
        else:
            what = _looks_like(head[:64])
            raise CaptureError(f"{name}: not a pcap or pcapng capture file; it looks like {what}")
    except BaseException:
        f.close()
        raise
    capture = CaptureFile(name, f, fmt, size, head)
    capture.bytes_read = len(head)
    return capture
