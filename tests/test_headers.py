"""`sniffer.headers`: headers read once, and the templates that spare re-reading a block's names."""

from __future__ import annotations

from sniffer import headers as headers_module
from sniffer.headers import header_lists, read_headers

MASKS = frozenset({"authorization", "x-secret"})


def _fresh(block: list[tuple[bytes, bytes]], masks: frozenset[str] | None) -> tuple[object, object]:
    """What `read_headers` gives for a block whose name objects it never saw (so no template applies)."""
    copy = [(bytes(bytearray(name)), value) for name, value in block]
    headers_module._TEMPLATES.clear()
    return read_headers(copy, masks)


def test_blocks_sharing_name_objects_read_as_fresh_ones() -> None:
    # The core shares one object per name among heads with the same names: the second block on is read
    # from the template the first left. Values differ (UTF-8, latin-1, empty), masks differ or are None;
    # each result equals a fresh read, and a caller's edits of one result never show in the next.
    names = [b"Host", b"Authorization", b"Content-Type", b"X-Secret", b"Date", b"X-Kong-Request-Id"]
    blocks = [
        [b"a.example", b"Bearer t", b"application/json", b"s", b"Mon, 07 Dec 2026 17:47:18 GMT", b"r1"],
        [b"b.example", b"Basic x", b"text/plain", b"", b"Mon, 07 Dec 2026 17:47:19 GMT", b"r2"],
        [b"c.example", b"Bearer \xe9", b"caf\xc3\xa9", b"t", b"", b"r3"],
    ]
    for masks in (MASKS, None, frozenset[str](), MASKS):
        for values in blocks:
            block = list(zip(names, values, strict=True))
            want = _fresh(block, masks)
            read_headers(block, masks)  # leaves the template
            for _ in range(2):
                got = read_headers(block, masks)
                assert got == want
                assert list(got[0]) == list(want[0]) and list(got[1]) == list(want[1])  # order too
                got[0]["host"].append("edited")
                got[1]["host"] = "edited"
                got[1]["injected"] = "x"
    # Results stay as they were when the next block is read; a template left under other masks (or none)
    # is not used for these.
    a, b = (list(zip(names, values, strict=True)) for values in blocks[:2])
    want_a, want_b = _fresh(a, MASKS), _fresh(b, MASKS)
    read_headers(a, MASKS)  # leaves the template: the next two are filled from it
    first = read_headers(a, MASKS)
    second = read_headers(b, MASKS)
    assert (first, second) == (want_a, want_b)
    for masks in (None, frozenset({"host"}), MASKS):
        assert read_headers(a, masks) == _fresh(a, masks)
        read_headers(b, MASKS)  # the template is b's, under MASKS
        assert read_headers(a, masks) == _fresh(a, masks)
    lists = header_lists(a)
    assert lists["host"] == ["a.example"] and lists["authorization"] == ["Bearer t"]


def test_a_block_with_other_names_or_a_repeated_name_is_read_whole() -> None:
    first = [(b"Host", b"h"), (b"Accept", b"*/*")]
    read_headers(first, MASKS)
    other = [(first[0][0], b"h2"), (b"Cookie", b"c")]  # same count, one name object differs
    assert read_headers(other, MASKS) == ({"host": ["h2"], "cookie": ["c"]}, {"host": "h2", "cookie": "c"})
    repeated = [(b"Set-Cookie", b"a=1"), (b"Set-Cookie", b"b=2")]
    read_headers(repeated, MASKS)
    got = read_headers(repeated, MASKS)
    assert got == ({"set-cookie": ["a=1", "b=2"]}, {"set-cookie": ["a=1", "b=2"]})
    assert read_headers([], MASKS) == ({}, {})
