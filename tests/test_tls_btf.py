"""The BTF reader against the running kernel's BTF, cross-checked with bpftool's own decoding.

`Btf.offset` (our binary parser) is held against `bpftool btf dump ... format raw` (the kernel tree's
reference tool, its text output parsed here independently): plain members, members inside anonymous
unions and structs (sock_common's address and port pairs), and a bitfield (kind_flag encoding).
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from functools import cache
from pathlib import Path

import pytest

from sniffer.capture.tls.btf import VMLINUX, Btf, BtfError
from sniffer.capture.tls.sock_read import SockLayout, sock_layout

pytestmark = pytest.mark.skipif(not Path(VMLINUX).exists(), reason=f"{VMLINUX} missing (no kernel BTF)")

# paths the SSL_set_fd walk reads, and a few more; skc_daddr/skc_dport/skc_num sit in anonymous members
PATHS = [
    "task_struct.files",
    "files_struct.fdt",
    "fdtable.max_fds",
    "fdtable.fd",
    "file.private_data",
    "file.f_op",
    "socket.sk",
    "socket.file",
    "sock_common.skc_family",
    "sock_common.skc_num",
    "sock_common.skc_dport",
    "sock_common.skc_rcv_saddr",
    "sock_common.skc_daddr",
    "sock_common.skc_v6_daddr",
    "sock_common.skc_v6_rcv_saddr",
    "sock_common.skc_reuse",  # a bitfield starting on a byte boundary
    "sock.__sk_common",
]


@pytest.fixture(scope="module")
def btf() -> Btf:
    return Btf.load()


@cache
def _raw_dump() -> dict[int, tuple[str, str, int, list[tuple[str, int, int]]]]:
    """id -> (kind, name, referenced type id, [(member name, type id, bit offset)]), from bpftool."""
    text = subprocess.run(
        ["bpftool", "btf", "dump", "file", VMLINUX, "format", "raw"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    types: dict[int, tuple[str, str, int, list[tuple[str, int, int]]]] = {}
    current: list[tuple[str, int, int]] = []
    for line in text.splitlines():
        head = re.match(r"\[(\d+)\] (\w+) '([^']*)'(?: type_id=(\d+))?", line)
        if head:
            current = []
            types[int(head[1])] = (head[2], head[3], int(head[4] or 0), current)
            continue
        member = re.match(r"\s+'([^']*)' type_id=(\d+) bits_offset=(\d+)", line)
        if member:
            current.append((member[1], int(member[2]), int(member[3])))
    return types


def _bpftool_bits(path: str) -> int:
    """The bit offset of `path` as bpftool decodes it (anonymous members searched, modifiers skipped)."""
    types = _raw_dump()
    struct_name, *members = path.split(".")
    by_name = {name: i for i, (kind, name, _, _) in types.items() if kind in ("STRUCT", "UNION") and name}

    def find(tid: int, name: str) -> tuple[int, int] | None:
        while types[tid][0] in ("TYPEDEF", "CONST", "VOLATILE", "RESTRICT", "TYPE_TAG"):
            tid = types[tid][2]
        for member, mtid, bits in types[tid][3]:
            if member == name:
                return bits, mtid
            if member == "(anon)":
                inner = find(mtid, name)
                if inner is not None:
                    return bits + inner[0], inner[1]
        return None

    total, type_id = 0, by_name[struct_name]
    for name in members:
        found = find(type_id, name)
        assert found is not None, path
        total += found[0]
        type_id = found[1]
    return total


@pytest.mark.skipif(shutil.which("bpftool") is None, reason="bpftool missing (apt-get install bpftool)")
@pytest.mark.parametrize("path", PATHS)
def test_offsets_match_bpftool(btf: Btf, path: str) -> None:
    assert btf.offset(path).offset * 8 == _bpftool_bits(path)


def test_sizes_of_what_the_walk_reads(btf: Btf) -> None:
    assert btf.offset("sock_common.skc_family").size == 2
    assert btf.offset("sock_common.skc_daddr").size == 4  # __be32 through typedefs
    assert btf.offset("sock_common.skc_v6_daddr").size == 16  # struct in6_addr
    assert btf.offset("task_struct.files").size == 8  # a pointer
    layout = sock_layout(btf)
    assert isinstance(layout, SockLayout)
    assert layout.family == btf.offset("sock.__sk_common.skc_family").offset


def test_a_missing_member_or_struct_is_named(btf: Btf) -> None:
    with pytest.raises(BtfError, match=r"sock_common has no member skc_nonexistent"):
        btf.offset("sock_common.skc_nonexistent")
    with pytest.raises(BtfError, match=r"sock\.__sk_common has no member nope"):
        btf.offset("sock.__sk_common.nope")
    with pytest.raises(BtfError, match=r"struct no_such_struct_t3 is not in the kernel's BTF"):
        btf.offset("no_such_struct_t3.x")
    with pytest.raises(BtfError, match="bitfield"):
        btf.offset("sock_common.skc_reuseport")  # bit 4 of its byte


def test_not_btf_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BtfError, match="not BTF"):
        Btf(b"\x00" * 64)
    with pytest.raises(BtfError, match="too short"):
        Btf(b"\x9f\xeb")
    # a valid header whose type section ends in the middle of a record
    blob = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, 6, 6, 1) + b"\x00" * 7
    with pytest.raises(BtfError, match="truncated"):
        Btf(blob)
    with pytest.raises(BtfError, match="CONFIG_DEBUG_INFO_BTF"):
        Btf.load(str(tmp_path / "missing"))
