"""Capture file reader: pcap in both byte orders and precisions, pcapng with several interfaces, link
types, resolutions and sections, and every way a file can be unusable or damaged."""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from helpers import frames, tcp_conversation, write_pcap, write_pcapng
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP

from sniffer.capture.pcapfile import CHUNK_BYTES, CaptureFile, open_capture
from sniffer.errors import CaptureError

MSGS = (
    [b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n", b"POST /b HTTP/1.1\r\n\r\n"],
    [b"HTTP/1.1 200 OK\r\n\r\n" + b"z" * 3000],
)


def read_all(path: Path) -> list[tuple[float, int, bytes, int]]:
    with open_capture(path) as capture:
        return list(capture)


def assert_same(got: list, expected: list, tol: float) -> None:
    assert len(got) == len(expected)
    for (ts, lt, data, wl), (ets, elt, edata, ewl) in zip(got, expected, strict=True):
        assert abs(ts - ets) <= tol
        assert (lt, data, wl) == (elt, edata, ewl)


# --- pcap -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ts0", [1_700_000_000.123456, 3_000_000_000.5], ids=["2023", "2065"])
@pytest.mark.parametrize("big_endian", [False, True], ids=["le", "be"])
@pytest.mark.parametrize("nano", [False, True], ids=["usec", "nsec"])
def test_pcap_byte_orders_and_precisions(tmp_path: Path, big_endian: bool, nano: bool, ts0: float) -> None:
    # 2065: seconds past 2^31, which the reader's signed reads must not turn negative
    packets = tcp_conversation(*MSGS, ts0=ts0)
    path = tmp_path / "c.pcap"
    write_pcap(path, packets, nano=nano, big_endian=big_endian)
    with open_capture(path) as capture:
        assert capture.format == "pcap" and capture.path == str(path)
        assert capture.size_bytes == path.stat().st_size
        got = list(capture)
        assert capture.bytes_read == capture.size_bytes
    assert_same(got, frames(packets), tol=1e-6)


def test_pcap_nanosecond_fraction_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "ns.pcap"
    write_pcap(
        path, [(1_000.000000123, b"\x00" * 20), (1_000.999999999, b"\x00" * 20)], linktype=101, nano=True
    )
    (ts1, *_), (ts2, *_) = read_all(path)
    assert ts1 == pytest.approx(1_000.000000123, abs=1e-12)
    assert ts2 == pytest.approx(1_000.999999999, abs=1e-12)


def test_pcap_reports_wire_length_of_snaplen_cut_frames(tmp_path: Path) -> None:
    path = tmp_path / "snap.pcap"
    write_pcap(path, [(1.0, b"a" * 96, 1514), (2.0, b"b" * 60)])
    assert [(len(f), wl) for _, _, f, wl in read_all(path)] == [(96, 1514), (60, 60)]


def test_pcap_linktype_fcs_bits_are_masked(tmp_path: Path) -> None:
    path = tmp_path / "fcs.pcap"
    write_pcap(path, [(1.0, b"x" * 64)], linktype=1 | 0x10000000 | 0x04000000)  # FCS length 1 word, F bit
    assert read_all(path)[0][1] == 1


def test_pcap_header_only_yields_nothing(tmp_path: Path) -> None:
    path = tmp_path / "none.pcap"
    write_pcap(path, [])
    assert read_all(path) == []


def test_pcap_streams_records_across_chunks_and_larger_than_a_chunk(tmp_path: Path) -> None:
    big = bytes(range(256)) * ((CHUNK_BYTES + CHUNK_BYTES // 2) // 256)
    records = [(float(i), bytes([i % 251]) * (1000 + i * 7)) for i in range(3000)]
    records.insert(1500, (1500.5, big))
    path = tmp_path / "big.pcap"
    write_pcap(path, records, linktype=101)
    size = path.stat().st_size
    assert size > 4 * CHUNK_BYTES
    with open_capture(path) as capture:
        it = iter(capture)
        next(it)
        assert capture.bytes_read < size  # read a chunk at a time, not the whole file
        got = [next(it) for _ in range(len(records) - 1)]
        assert next(it, None) is None
    assert [f for _, _, f, _ in got] == [r[1] for r in records[1:]]


# --- pcapng ---------------------------------------------------------------------------------------------


def block(e: str, btype: int, body: bytes) -> bytes:
    body += b"\x00" * (-len(body) % 4)
    return struct.pack(e + "II", btype, len(body) + 12) + body + struct.pack(e + "I", len(body) + 12)


def shb(e: str) -> bytes:
    return block(e, 0x0A0D0D0A, struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1))


def idb(
    e: str, linktype: int, tsresol: int | None = None, tsoffset: int | None = None, snaplen: int = 0
) -> bytes:
    opts = b""
    if tsresol is not None:
        opts += struct.pack(e + "HHB3x", 9, 1, tsresol)
    if tsoffset is not None:
        opts += struct.pack(e + "HHq", 14, 8, tsoffset)
    opts += struct.pack(e + "HH", 2, 4) + b"eth0"  # if_name, to walk past an option we do not use
    return block(e, 1, struct.pack(e + "HHI", linktype, 0, snaplen) + opts + struct.pack(e + "HH", 0, 0))


def epb(e: str, iface: int, ticks: int, data: bytes, wire_len: int | None = None) -> bytes:
    head = struct.pack(e + "IIIII", iface, ticks >> 32, ticks & 0xFFFFFFFF, len(data), wire_len or len(data))
    return block(e, 6, head + data)


ETH_FRAME = bytes.fromhex("020000000002020000000001") + b"\x08\x00" + bytes(IP() / TCP())
RAW_FRAME = bytes(IP(src="10.9.9.9") / TCP(dport=8080))


@pytest.mark.parametrize("e", ["<", ">"], ids=["le", "be"])
def test_pcapng_interleaved_interfaces_with_own_linktype_and_resolution(tmp_path: Path, e: str) -> None:
    data = (
        shb(e)
        + idb(e, 1, tsresol=6)  # Ethernet, microseconds
        + idb(e, 101, tsresol=9, tsoffset=1_000)  # raw IP, nanoseconds, offset 1000 s
        + block(e, 4, b"\x00\x00\x00\x00")  # name resolution block: skipped
        + epb(e, 0, 1_700_000_000_500_000, ETH_FRAME)
        + epb(e, 1, 1_699_999_000_250_000_001, RAW_FRAME, 1500)
        + block(e, 0x40000BAD, b"custom")  # unknown block: skipped
        + block(e, 5, struct.pack(e + "III", 0, 0, 0))  # interface statistics: skipped
        + epb(e, 0, 1_700_000_001_000_000, ETH_FRAME + b"tail")
    )
    path = tmp_path / "multi.pcapng"
    path.write_bytes(data)
    with open_capture(path) as capture:
        assert capture.format == "pcapng"
        got = list(capture)
    assert_same(
        got,
        [
            (1_700_000_000.5, 1, ETH_FRAME, len(ETH_FRAME)),
            (1_700_000_000.250_000_001, 101, RAW_FRAME, 1500),
            (1_700_000_001.0, 1, ETH_FRAME + b"tail", len(ETH_FRAME) + 4),
        ],
        tol=1e-6,
    )


def test_pcapng_power_of_two_resolution_and_default(tmp_path: Path) -> None:
    e = "<"
    path = tmp_path / "res.pcapng"
    path.write_bytes(
        shb(e)
        + idb(e, 1, tsresol=0x80 | 10)
        + idb(e, 1)
        + epb(e, 0, 3 * 1024 + 512, b"a")
        + epb(e, 1, 7_250_000, b"b")
    )
    assert [ts for ts, *_ in read_all(path)] == [3.5, 7.25]


def test_pcapng_several_sections_in_both_byte_orders(tmp_path: Path) -> None:
    # each section has its own interfaces: interface 0 is Ethernet in the first, raw IP in the second
    data = (
        shb("<")
        + idb("<", 1)
        + epb("<", 0, 1_000_000, ETH_FRAME)
        + shb(">")
        + idb(">", 101)
        + epb(">", 0, 2_000_000, RAW_FRAME)
    )
    path = tmp_path / "sections.pcapng"
    path.write_bytes(data)
    assert [(ts, lt, f) for ts, lt, f, _ in read_all(path)] == [(1.0, 1, ETH_FRAME), (2.0, 101, RAW_FRAME)]


def test_pcapng_simple_and_obsolete_packet_blocks(tmp_path: Path) -> None:
    e = ">"
    spb = block(e, 3, struct.pack(e + "I", 1514) + b"s" * 64)  # snaplen 64 cut a 1514-byte frame
    pb = block(e, 2, struct.pack(e + "HHIIII", 0, 0, 0, 5_000_000, 3, 3) + b"old")
    path = tmp_path / "spb.pcapng"
    path.write_bytes(shb(e) + idb(e, 1, snaplen=64) + epb(e, 0, 4_000_000, b"e") + spb + pb)
    got = read_all(path)
    # a Simple Packet Block has no timestamp of its own: it keeps the previous packet's
    assert [(ts, lt, f, wl) for ts, lt, f, wl in got] == [
        (4.0, 1, b"e", 1),
        (4.0, 1, b"s" * 64, 1514),
        (5.0, 1, b"old", 3),
    ]


def test_pcapng_written_by_helper_matches_tshark(tmp_path: Path) -> None:
    if shutil.which("tshark") is None:
        pytest.skip("tshark not installed")
    packets = tcp_conversation(*MSGS)
    items = [(p, 1) if i % 2 else ((float(p.time), bytes(p[IP])), 101) for i, p in enumerate(packets)]
    path = tmp_path / "h.pcapng"
    write_pcapng(path, items, tsresol=9, big_endian=True)
    got = read_all(path)
    out = subprocess.run(
        [
            "tshark",
            "-r",
            str(path),
            "-T",
            "fields",
            "-e",
            "frame.time_epoch",
            "-e",
            "frame.len",
            "-e",
            "frame.interface_id",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")[:-1]
    assert len(out) == len(got) == len(packets)
    for line, (ts, lt, frame, wl) in zip(out, got, strict=True):
        t_ts, t_len, t_iface = line.split("\t")
        assert abs(float(t_ts) - ts) < 1e-6 and int(t_len) == wl == len(frame)
        assert lt == (1 if t_iface == "1" else 101)  # the first packet (raw IP) created interface 0


# --- damage ---------------------------------------------------------------------------------------------


def damaged(path: Path) -> tuple[list, str]:
    got = []
    with pytest.raises(CaptureError) as info, open_capture(path) as capture:
        got.extend(capture)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    return got, message


@pytest.mark.parametrize("cut", ["in-record-data", "in-record-header"])
def test_truncated_pcap_yields_every_packet_before_the_damage(tmp_path: Path, cut: str) -> None:
    packets = tcp_conversation(*MSGS)
    path = tmp_path / "cut.pcap"
    write_pcap(path, packets)
    whole = path.read_bytes()
    offset = 24 + sum(16 + len(bytes(p)) for p in packets[:5])  # start of the sixth record
    path.write_bytes(whole[: offset + (20 if cut == "in-record-data" else 9)])
    got, message = damaged(path)
    assert_same(got, frames(packets[:5]), tol=1e-6)
    assert "truncated" in message and f"byte offset {offset}" in message


def test_truncated_pcapng_yields_every_packet_before_the_damage(tmp_path: Path) -> None:
    packets = tcp_conversation(*MSGS)
    path = tmp_path / "cut.pcapng"
    write_pcapng(path, [(p, 1) for p in packets])
    whole = path.read_bytes()
    path.write_bytes(whole[:-30])
    got, message = damaged(path)
    assert_same(got, frames(packets[:-1]), tol=1e-6)
    assert "truncated" in message and f"byte offset {len(whole) - (12 + 20 + 56)}" in message


@pytest.mark.parametrize("e", ["<", ">"], ids=["le", "be"])
def test_absurd_pcap_record_length(tmp_path: Path, e: str) -> None:
    # a length with the top bit set: read as an unsigned number, whatever the byte order
    path = tmp_path / "absurd.pcap"
    write_pcap(path, [(1.0, b"ok")], big_endian=e == ">")
    path.write_bytes(path.read_bytes() + struct.pack(e + "IIII", 2, 0, 0xFFFFFF00, 0xFFFFFF00) + b"junk")
    got, message = damaged(path)
    assert [f for _, _, f, _ in got] == [b"ok"]
    assert "absurd" in message and "byte offset 42" in message


@pytest.mark.parametrize(
    ("tail", "words"),
    [
        (struct.pack("<II", 6, 13) + b"\x00" * 8, "block length 13"),  # not a multiple of 4
        (struct.pack("<II", 6, 8) + b"\x00" * 8, "block length 8"),  # shorter than a block header
        (struct.pack("<II", 6, 0x7FFFFFF0) + b"\x00" * 8, "block length"),  # absurd
        (epb("<", 3, 1, b"x"), "interface 3"),  # interface never described
        (block("<", 6, b"\x00" * 8), "block length 20"),  # an EPB too short for its own fields
        (block("<", 2, b"\x00" * 4), "block length 16"),  # an obsolete PB likewise
        (block("<", 3, b""), "block length 12"),  # an SPB without its length field
    ],
    ids=["unaligned", "too-short", "absurd", "no-such-interface", "short-epb", "short-pb", "short-spb"],
)
def test_corrupt_pcapng_blocks(tmp_path: Path, tail: bytes, words: str) -> None:
    path = tmp_path / "bad.pcapng"
    path.write_bytes(shb("<") + idb("<", 1) + epb("<", 0, 1, b"first") + tail)
    got, message = damaged(path)
    assert [f for _, _, f, _ in got] == [b"first"]
    assert words in message


# --- unusable files -------------------------------------------------------------------------------------


def open_error(path: Path | str) -> str:
    with pytest.raises(CaptureError) as info:
        open_capture(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    return message


def test_missing_file(tmp_path: Path) -> None:
    assert "no such file" in open_error(tmp_path / "nope.pcap")


def test_directory(tmp_path: Path) -> None:
    assert "directory" in open_error(tmp_path)


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "e.pcap").write_bytes(b"")
    assert "empty" in open_error(tmp_path / "e.pcap")


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "text"),
        (gzip.compress(b"\xd4\xc3\xb2\xa1" + bytes(40)), "gzip"),
        (b"\x00\x01\x02\x03\xff\xfe", "unknown magic 0x00010203"),
    ],
    ids=["text", "gzip", "binary"],
)
def test_not_a_capture_file(tmp_path: Path, content: bytes, words: str) -> None:
    path = tmp_path / "x.pcap"
    path.write_bytes(content)
    message = open_error(path)
    assert "not a pcap or pcapng" in message and words in message


def test_short_pcap_header(tmp_path: Path) -> None:
    path = tmp_path / "short.pcap"
    path.write_bytes(b"\xd4\xc3\xb2\xa1\x02\x00")
    with pytest.raises(CaptureError, match="header"):
        read_all(path)


def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "secret.pcap"
    write_pcap(path, [])
    path.chmod(0)
    if os.geteuid() != 0:
        assert "permission denied" in open_error(path)
        return
    # root reads files whatever their mode: try as nobody in a forked child (modules already loaded)
    tmp_path.chmod(0o755)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.setgid(65534)
            os.setuid(65534)
            try:
                open_capture(path)
                message = "opened"
            except CaptureError as e:
                message = str(e)
            os.write(write_fd, message.encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    message = os.read(read_fd, 4096).decode()
    os.close(read_fd)
    os.waitpid(pid, 0)
    assert message == f"{path}: permission denied"


def test_capture_file_closes_its_file(tmp_path: Path) -> None:
    path = tmp_path / "c.pcap"
    write_pcap(path, tcp_conversation(*MSGS))
    with open_capture(path) as capture:
        assert isinstance(capture, CaptureFile)
        next(iter(capture))
    assert capture._f.closed


def test_read_error_is_a_capture_error() -> None:
    mem = Path("/proc/self/mem")
    if not mem.exists():
        pytest.skip("no /proc/self/mem to fail a read")
    assert "cannot read" in open_error(mem)  # address 0 is never mapped: read() fails with EIO


@settings(max_examples=300, deadline=None)
@given(
    head=st.sampled_from(
        [
            struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1),
            struct.pack(">IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 65535, 1),
            shb("<") + idb("<", 1),
            shb(">") + idb(">", 101, tsresol=9),
        ]
    ),
    tail=st.binary(max_size=300)
    | st.lists(
        st.tuples(
            st.sampled_from([1, 2, 3, 5, 6, 0x0A0D0D0A, 0xBAD]),
            st.integers(0, 20).map(lambda k: k * 4),
            st.binary(max_size=60),
        ),
        max_size=4,
    ).map(lambda blocks: b"".join(struct.pack("<II", t, n) + body for t, n, body in blocks)),
)
def test_garbage_after_a_valid_header_is_a_capture_error_or_packets(head: bytes, tail: bytes) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "fuzz.cap"
        path.write_bytes(head + tail)
        try:
            got = read_all(path)
        except CaptureError as e:
            assert str(path) in str(e)
        else:
            assert all(isinstance(f, bytes) and len(f) <= len(tail) for _, _, f, _ in got)


def test_helper_conversations_are_clean_tcp_for_tshark(tmp_path: Path) -> None:
    """tests/helpers.tcp_conversation: tshark finds no TCP anomaly and parses every HTTP message."""
    if shutil.which("tshark") is None:
        pytest.skip("tshark not installed")
    request2 = b"POST /b HTTP/1.1\r\nContent-Length: 5000\r\n\r\n" + b"q" * 5000
    response1 = b"HTTP/1.1 200 OK\r\nContent-Length: 3000\r\n\r\n" + b"z" * 3000
    for kwargs in ({}, {"ipv6": True}, {"handshake": False, "close": False}):
        packets = tcp_conversation(
            [b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n", request2],
            [response1, b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"],
            mss=1000,
            **kwargs,
        )
        path = tmp_path / "conv.pcap"
        write_pcap(path, packets)
        fields = [
            "-T",
            "fields",
            "-e",
            "tcp.analysis.flags",
            "-e",
            "http.request.method",
            "-e",
            "http.response.code",
        ]
        out = subprocess.run(
            ["tshark", "-r", str(path), "-Y", "tcp.analysis.flags || http", *fields],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert [line.split("\t") for line in out.splitlines()] == [
            ["", "GET", ""],
            ["", "", "200"],
            ["", "POST", ""],
            ["", "", "201"],
        ], kwargs
        syn = [p for p in packets if p["TCP"].flags.S]
        assert len(syn) == (0 if kwargs.get("handshake") is False else 2)
