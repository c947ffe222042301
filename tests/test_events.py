"""The core's values (`reassembly.events`): built by position or by name, compared, copied, pickled and
replaced by their `FIELDS`, in the Python source and in the mypyc build (where they are native classes).

They were dataclasses; the rest of the program and its tests rely on what that gave them, so this checks
it on both variants: the same checks run here and in a child process that imports the compiled build
first (skipped with the reason when it cannot be built).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from reassembly import events

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.compiled import compile_unavailable, ensure_compiled  # noqa: E402

CHECKS = """
import copy, pickle
from reassembly.events import (
    CloseReason, Direction, Exchange, ExchangeFlag, FlowClosed, FlowOpened, GapReason, HttpRequest,
    HttpResponse, Segment, StreamData, StreamGap, replace,
)

def samples():
    req = HttpRequest(
        method=b"POST", target=b"/a", version=b"HTTP/1.1", headers=[(b"Host", b"x")], body=b"hi",
        body_size=2, ts_start=1.5, ts_end=1.75, stream_offset=9,
    )
    resp = HttpResponse(status=200, version=b"HTTP/1.1", headers=[], reason=b"OK", interim=[100])
    return [
        Segment(1.0, b"\\x01\\x02\\x03\\x04", b"\\x05\\x06\\x07\\x08", 1234, 80, 7, 9, 0x18, b"G", window=5),
        FlowOpened(3, ("10.0.0.1", 1234), ("10.0.0.2", 80), 1.0, False),
        StreamData(3, Direction.TO_SERVER, 0, b"GET", 1.0),
        StreamGap(3, Direction.TO_CLIENT, 10, None, 2.0, GapReason.MIDSTREAM),
        FlowClosed(3, CloseReason.FIN, 3.0),
        req,
        resp,
        Exchange(flow_id=3, client=("10.0.0.1", 1234), server=("10.0.0.2", 80), request=req, response=resp,
                 index=4, flags={ExchangeFlag.REQUEST_GAP}),
    ]

def check():
    for value in samples():
        cls = type(value)
        values = tuple(getattr(value, name) for name in cls.FIELDS)
        assert cls(*values) == value, cls  # positional, in FIELDS order: how pickle and the codec rebuild
        assert cls(**dict(zip(cls.FIELDS, values))) == value, cls
        assert pickle.loads(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)) == value, cls
        assert copy.copy(value) == value and copy.deepcopy(value) == value, cls
        assert repr(value).startswith(cls.__name__ + "(" + cls.FIELDS[0] + "="), repr(value)
        first = values[0]
        other = first + (b"x" if isinstance(first, bytes) else 1)
        changed = replace(value, **{cls.FIELDS[0]: other})
        assert type(changed) is cls and values[0] == first and changed != value, cls
        assert getattr(changed, cls.FIELDS[0]) == other, cls
        assert all(getattr(changed, n) == getattr(value, n) for n in cls.FIELDS[1:]), cls
        assert value != values and value != object(), cls
    seg, opened, data, gap, closed, req, resp, ex = samples()
    for frozen in (opened, data, gap, closed):
        assert hash(frozen) == hash(copy.copy(frozen))
    for mutable in (seg, req, resp, ex):
        try:
            hash(mutable)
        except TypeError:
            pass
        else:
            raise AssertionError(f"{type(mutable).__name__} is hashable")
    # A request and a response with equal common fields are still different values.
    assert HttpRequest(b"GET", b"/", b"HTTP/1.1", []) != HttpResponse(200, b"HTTP/1.1", [])
    # The list and set defaults are the instance's own.
    a, b = HttpResponse(200, b"HTTP/1.1", []), HttpResponse(200, b"HTTP/1.1", [])
    a.interim.append(100)
    a.trailers.append((b"x", b"y"))
    assert b.interim == [] and b.trailers == []
    e1 = Exchange(flow_id=1, client=("a", 1), server=("b", 2), request=None, response=None)
    e1.flags.add(ExchangeFlag.UNANSWERED)
    assert Exchange(flow_id=1, client=("a", 1), server=("b", 2), request=None, response=None).flags == set()
    return "ok"

print(check())
"""


def test_values_in_the_python_source() -> None:
    namespace: dict[str, object] = {}
    exec(CHECKS.replace("print(check())", ""), namespace)
    assert namespace["check"]() == "ok"  # type: ignore[operator]


@pytest.mark.skipif(events.__file__.endswith(".so"), reason="compiled: native classes have no __slots__")
def test_fields_name_every_slot() -> None:
    """FIELDS (the constructor's order) and the slots (what an instance holds) name the same fields."""
    classes = [getattr(events, n) for n in events.__all__ if hasattr(getattr(events, n), "FIELDS")]
    names = {c.__name__ for c in classes}
    assert names >= {"Segment", "StreamData", "StreamGap", "HttpRequest", "HttpResponse", "Exchange"}
    for cls in classes:
        slots = {s for klass in cls.__mro__ for s in getattr(klass, "__slots__", ())}
        assert slots == set(cls.FIELDS) and len(cls.FIELDS) == len(set(cls.FIELDS)), cls
        assert not hasattr(cls(*(None,) * len(cls.FIELDS)), "__dict__"), cls


@pytest.mark.skipif(compile_unavailable() is not None, reason=str(compile_unavailable()))
def test_values_in_the_compiled_build() -> None:
    build = ensure_compiled()
    probe = "import reassembly.events as e; print(e.__file__)"
    env = {"PYTHONPATH": str(build), "PATH": "/usr/bin:/bin"}
    # Run from the build directory: `-c` puts the working directory first on the path.
    where = subprocess.run(
        [sys.executable, "-c", probe], env=env, cwd=build, capture_output=True, text=True, check=True
    )
    assert where.stdout.strip().endswith(".so"), where.stdout  # the native classes, not the .py
    out = subprocess.run([sys.executable, "-c", CHECKS], env=env, cwd=build, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
