"""Read the running kernel's BTF (/sys/kernel/btf/vmlinux) just enough to find struct member offsets.

This is CO-RE done at load time in Python: the SSL_set_fd probe walks task_struct -> files_struct ->
fdtable -> file -> socket -> sock_common, and those layouts change between kernel builds. Instead of a
compiler emitting relocations for libbpf to patch, `Btf.offset("sock_common.skc_daddr")` answers with the
byte offset on *this* kernel and the program is generated with it (see `ssl_probes`).

Format (Documentation/bpf/btf.rst): a header (magic 0xEB9F, then type and string section offsets
relative to the header's end), a type section of variable-length records numbered from 1 (0 is void),
and a string section. Only STRUCT/UNION members are decoded; every other kind is skipped by its size.
Members of anonymous nested structs and unions are found as if they were direct members (C's rule),
which is how `skc_daddr` (inside `skc_addrpair`'s anonymous union) is reached. With kind_flag set, a
member's offset word holds the bitfield size in its top 8 bits and the bit offset in the low 24.
Typedef/const/volatile/restrict/type_tag are looked through when a path descends into a member.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = ["VMLINUX", "Btf", "BtfError", "Member"]

VMLINUX = "/sys/kernel/btf/vmlinux"
_MAGIC = 0xEB9F
_HEADER = struct.Struct("<HBBIIIII")  # magic version flags hdr_len type_off type_len str_off str_len
_TYPE = struct.Struct("<III")  # name_off info size_or_type
_MEMBER = struct.Struct("<III")  # name_off type offset

_STRUCT, _UNION = 4, 5
_MODIFIERS = {8, 9, 10, 11, 18}  # typedef volatile const restrict type_tag
# bytes after the 12-byte type record: fixed per kind, or per vlen item
_FIXED = {1: 4, 3: 12, 14: 4, 17: 4}
_PER_ITEM = {4: 12, 5: 12, 6: 8, 13: 8, 15: 12, 19: 12}
_MAX_KIND = 19


class BtfError(ValueError):
    """The BTF cannot answer: unreadable, malformed, or the struct or member is not there."""


@dataclass(frozen=True, slots=True)
class Member:
    offset: int  # bytes from the start of the outermost struct of the path
    size: int  # bytes of the member's type (0 when it has none, e.g. a flexible array)
    type_id: int


class Btf:
    """One BTF blob, indexed: type records by id, structs and unions by name."""

    def __init__(self, blob: bytes) -> None:
        if len(blob) < _HEADER.size:
            raise BtfError("BTF too short")
        magic, _ver, _flags, hdr_len, type_off, type_len, str_off, str_len = _HEADER.unpack_from(blob)
        if magic != _MAGIC:
            raise BtfError(f"not BTF (magic {magic:#x}; big-endian BTF is not supported)")
        self._blob = blob
        self._types_at = hdr_len + type_off
        self._strings = blob[hdr_len + str_off : hdr_len + str_off + str_len]
        self._offsets: list[int] = [0]  # id -> position of its record; id 0 is void
        self._by_name: dict[str, int] = {}
        if self._types_at + type_len > len(blob) or hdr_len + str_off + str_len > len(blob):
            raise BtfError("BTF sections are truncated")
        self._index(self._types_at, self._types_at + type_len)

    @classmethod
    def load(cls, path: str = VMLINUX) -> Btf:
        try:
            with open(path, "rb") as f:
                return cls(f.read())
        except OSError as exc:
            why = exc.strerror or exc
            raise BtfError(f"{path}: {why} (the kernel needs CONFIG_DEBUG_INFO_BTF)") from None

    def _index(self, pos: int, end: int) -> None:
        blob, unpack, offsets, by_name = self._blob, _TYPE.unpack_from, self._offsets, self._by_name
        fixed, per_item = _FIXED, _PER_ITEM
        while pos + 12 <= end:
            name_off, info, _size = unpack(blob, pos)
            kind = (info >> 24) & 0x1F
            if kind > _MAX_KIND:
                raise BtfError(f"unknown BTF kind {kind} at type {len(offsets)}")
            offsets.append(pos)
            if kind in (_STRUCT, _UNION) and name_off:
                by_name.setdefault(self._name(name_off), len(offsets) - 1)
            pos += 12 + fixed.get(kind, 0) + per_item.get(kind, 0) * (info & 0xFFFF)
        if pos != end:
            raise BtfError("BTF type section is truncated")

    def _name(self, off: int) -> str:
        end = self._strings.find(b"\0", off)
        return self._strings[off : end if end >= 0 else len(self._strings)].decode(errors="replace")

    def _type(self, type_id: int) -> tuple[int, int, int, int]:
        """(kind, vlen, kind_flag, size_or_type) of a type id."""
        if not 0 < type_id < len(self._offsets):
            raise BtfError(f"BTF type id {type_id} out of range")
        _name_off, info, size = _TYPE.unpack_from(self._blob, self._offsets[type_id])
        return (info >> 24) & 0x1F, info & 0xFFFF, info >> 31, size

    def _resolve(self, type_id: int) -> int:
        """Look through typedef/const/volatile/restrict/type_tag."""
        for _ in range(32):
            if type_id == 0:
                return 0
            kind, _vlen, _kf, ref = self._type(type_id)
            if kind not in _MODIFIERS:
                return type_id
            type_id = ref
        raise BtfError("BTF modifier chain too long")

    def _size(self, type_id: int) -> int:
        type_id = self._resolve(type_id)
        if type_id == 0:
            return 0
        kind, _vlen, _kf, size = self._type(type_id)
        if kind == 2:  # pointer
            return 8
        if kind == 3:  # array: element size * count
            _elem, _index, count = struct.unpack_from("<III", self._blob, self._offsets[type_id] + 12)
            return self._size(_elem) * count
        return size if kind in (1, 4, 5, 6, 16, 19) else 0

    def _find(self, type_id: int, name: str) -> tuple[int, int] | None:
        """(bit offset, member type) of `name` in struct/union `type_id`, searching anonymous members."""
        kind, vlen, kind_flag, _size = self._type(type_id)
        if kind not in (_STRUCT, _UNION):
            return None
        pos = self._offsets[type_id] + 12
        for _ in range(vlen):
            name_off, member_type, offset = _MEMBER.unpack_from(self._blob, pos)
            pos += 12
            bits = offset & 0xFFFFFF if kind_flag else offset
            if name_off:
                if self._name(name_off) == name:
                    return bits, member_type
            else:  # anonymous struct/union: its members belong to this one
                inner = self._resolve(member_type)
                found = self._find(inner, name) if inner else None
                if found is not None:
                    return bits + found[0], found[1]
        return None

    def struct_id(self, name: str) -> int:
        found = self._by_name.get(name)
        if found is None:
            raise BtfError(f"struct {name} is not in the kernel's BTF")
        return found

    def offset(self, path: str) -> Member:
        """`struct.member[.member...]` -> where that member lies; BtfError names what is missing.

        Each step after the first descends into the previous member's struct (not through pointers)."""
        struct_name, *members = path.split(".")
        if not members:
            raise BtfError(f"{path!r}: expected struct.member")
        type_id, bits, where = self.struct_id(struct_name), 0, struct_name
        for name in members:
            found = self._find(type_id, name)
            if found is None:
                raise BtfError(f"{where} has no member {name} in the kernel's BTF")
            bits += found[0]
            type_id = self._resolve(found[1])
            where = f"{where}.{name}"
        if bits % 8:
            raise BtfError(f"{path} is a bitfield (bit offset {bits}), not byte-addressable")
        return Member(bits // 8, self._size(type_id), type_id)
