"""PlaintextStreams: TLS plaintext records (what SSL_read/SSL_write moved) -> HTTP exchanges, from bytes."""

from __future__ import annotations

import gzip
import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reassembly.events import Exchange, ExchangeFlag
from reassembly.limits import Limits
from reassembly.plaintext import TLS_FLOW_ID_BASE, PlaintextStreams, placeholder_endpoints
from reassembly.stats import Stats

GW = ("10.77.1.2", 8443)
CLIENT = ("10.77.1.1", 51000)
UPSTREAM = ("10.77.2.2", 9443)
PID, SSL = 4242, 0x55D0C0FFEE00
T0 = 1_764_000_000.0


def request(path: str = "/api/orders", body: bytes = b"", key: str = "key-alice-123") -> bytes:
    head = f"GET {path} HTTP/1.1\r\nHost: gw\r\napikey: {key}\r\n"
    if body:
        head = head.replace("GET", "POST", 1) + f"Content-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


def response(status: int = 200, body: bytes = b'{"ok":true}', chunked: bool = False) -> bytes:
    reason = {200: "OK", 401: "Unauthorized", 404: "Not Found"}.get(status, "X")
    head = f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
    if chunked:
        chunks = b"".join(
            b"%x\r\n%s\r\n" % (len(body[i : i + 7]), body[i : i + 7]) for i in range(0, len(body), 7)
        )
        return head.encode() + b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"
    return head.encode() + f"Content-Length: {len(body)}\r\n\r\n".encode() + body


def summary(ex: Exchange) -> tuple[object, ...]:
    """What must not depend on how the bytes were split into calls (capture times may)."""
    req, resp = ex.request, ex.response
    return (
        ex.client,
        ex.server,
        ex.index,
        None if req is None else (req.method, req.target, tuple(req.headers), req.body, req.body_size),
        None
        if resp is None
        else (resp.status, tuple(resp.headers), resp.body, resp.body_size, resp.complete),
        tuple(sorted(ex.flags)),
    )


def serve(streams: PlaintextStreams, calls: list[tuple[bool, bytes]], *, bind: bool = True) -> list[Exchange]:
    """The gateway serving one TLS client: each call is (is_read, bytes), 1 ms apart."""
    out: list[Exchange] = []
    ts = T0
    if bind:
        streams.bind(PID, SSL, ts, GW, CLIENT, out)
    for is_read, data in calls:
        ts += 0.001
        streams.data(PID, SSL, ts, is_read, len(data), data, out)
    streams.free(PID, SSL, ts + 0.001, out)
    return out


def test_server_role_when_the_process_first_reads_a_request() -> None:
    out = serve(PlaintextStreams(), [(True, request()), (False, response())])
    assert len(out) == 1
    ex = out[0]
    assert (ex.client, ex.server) == (CLIENT, GW)
    assert ex.request is not None and ex.request.target == b"/api/orders"
    assert ex.request.header(b"apikey") == b"key-alice-123"
    assert ex.response is not None and ex.response.status == 200 and ex.response.body == b'{"ok":true}'
    assert not ex.flags
    assert ex.flow_id >= TLS_FLOW_ID_BASE


def test_client_role_when_the_process_first_writes_a_request() -> None:
    streams = PlaintextStreams()
    out = streams.bind(PID, SSL, T0, ("10.77.2.1", 40000), UPSTREAM)
    streams.data(PID, SSL, T0 + 0.001, False, len(request()), request(), out)  # SSL_write: the request
    streams.data(PID, SSL, T0 + 0.002, True, len(response(201)), response(201), out)
    streams.close(T0 + 1, out)
    assert [(e.client, e.server, e.response.status if e.response else None) for e in out] == [
        (("10.77.2.1", 40000), UPSTREAM, 201)
    ]
    assert streams.stats["tls_role_client"] == 1


def test_pipelined_requests_in_one_read_pair_in_order() -> None:
    reqs = request("/a") + request("/b", body=b"x" * 10) + request("/c")
    resps = response(200, b"A") + response(404, b"B") + response(200, b"C" * 40, chunked=True)
    out = serve(PlaintextStreams(), [(True, reqs), (False, resps)])
    assert [(e.index, e.request.target, e.response.status, e.response.body) for e in out] == [  # type: ignore[union-attr]
        (0, b"/a", 200, b"A"),
        (1, b"/b", 404, b"B"),
        (2, b"/c", 200, b"C" * 40),
    ]
    assert out[1].request is not None and out[1].request.body == b"x" * 10


def test_keep_alive_chunked_and_gzip_bodies() -> None:
    gz = gzip.compress(b'{"orders":[1,2,3]}' * 20)
    calls: list[tuple[bool, bytes]] = []
    for i in range(3):
        calls.append((True, request(f"/api/orders/{i}")))
        calls.append((False, response(200, gz, chunked=i == 1)))
    out = serve(PlaintextStreams(), calls)
    assert [e.index for e in out] == [0, 1, 2]
    assert all(e.response is not None and e.response.body == gz and not e.flags for e in out)
    chunked = out[1].response
    assert chunked is not None and chunked.header(b"transfer-encoding") == b"chunked"


def test_truncated_call_becomes_a_counted_gap_and_the_next_exchange_survives() -> None:
    big = bytes(range(256)) * 400  # 102,400 bytes
    resp = response(200, big)
    cap = 16 * 1024
    streams = PlaintextStreams()
    out = streams.bind(PID, SSL, T0, GW, CLIENT)
    streams.data(PID, SSL, T0 + 0.001, True, len(request()), request(), out)
    # One SSL_write of the whole response; the kernel copied only the first 16 KiB.
    streams.data(PID, SSL, T0 + 0.002, False, len(resp), resp[:cap], out)
    streams.data(PID, SSL, T0 + 0.003, True, len(request("/next")), request("/next"), out)
    streams.data(PID, SSL, T0 + 0.004, False, len(response()), response(), out)
    streams.close(T0 + 1, out)
    assert len(out) == 2
    first, second = out
    assert first.response is not None and first.response.body_size == len(big)
    assert ExchangeFlag.RESPONSE_GAP in first.flags
    assert first.response.body.startswith(big[: cap - (len(resp) - len(big))])
    assert second.request is not None and second.request.target == b"/next" and not second.flags
    assert streams.stats["truncated_tls_bytes"] == len(resp) - cap
    assert streams.stats["truncated_tls_calls"] == 1


def test_reused_ssl_address_is_a_new_connection() -> None:
    streams = PlaintextStreams()
    out = serve(streams, [(True, request("/one")), (False, response())])
    other = ("10.77.1.9", 52000)
    streams.bind(PID, SSL, T0 + 1, GW, other, out)
    streams.data(PID, SSL, T0 + 1.001, True, len(request("/two")), request("/two"), out)
    streams.data(PID, SSL, T0 + 1.002, False, len(response(401)), response(401), out)
    # The SSL_free of the second connection was lost: a third SSL_set_fd on the same address closes it.
    streams.bind(PID, SSL, T0 + 2, GW, CLIENT, out)
    streams.data(PID, SSL, T0 + 2.001, True, len(request("/three")), request("/three"), out)
    streams.close(T0 + 3, out)
    got = [(e.client, e.request.target, e.response.status if e.response else None, e.index) for e in out]  # type: ignore[union-attr]
    assert got == [(CLIENT, b"/one", 200, 0), (other, b"/two", 401, 0), (CLIENT, b"/three", None, 0)]
    assert len({e.flow_id for e in out}) == 3
    assert ExchangeFlag.UNANSWERED in out[2].flags
    assert streams.stats["tls_closed_rebound"] == 1 and streams.stats["tls_closed_freed"] == 1


def test_unresolved_endpoints_are_marked_placeholders() -> None:
    streams = PlaintextStreams()
    out = streams.bind(PID, SSL, T0, None, None)
    streams.data(PID, SSL, T0 + 0.001, True, len(request()), request(), out)
    streams.data(PID, SSL, T0 + 0.002, False, len(response()), response(), out)
    local, remote = placeholder_endpoints(PID, SSL)
    assert (out[0].client, out[0].server) == (remote, local)
    assert "unresolved" in out[0].client[0] and out[0].server[1] == 0
    assert streams.stats["tls_endpoints_unresolved"] == 1


def test_connection_never_bound_is_picked_up_mid_stream() -> None:
    """Probes attached while a keep-alive connection was mid-body: the next request starts the parse."""
    streams = PlaintextStreams()
    out: list[Exchange] = []
    ts = T0
    body_tail = b"rest-of-a-body-from-before}"
    for is_read, data in [(False, body_tail), (True, request("/later")), (False, response(200, b"L"))]:
        ts += 0.001
        streams.data(PID, SSL, ts, is_read, len(data), data, out)
    streams.close(ts + 1, out)
    complete = [e for e in out if e.request is not None]
    assert [(e.request.target, e.response.body) for e in complete] == [(b"/later", b"L")]  # type: ignore[union-attr]
    assert complete[0].server[0].startswith("unresolved-tls-pid-")
    assert streams.stats["tls_midstream"] == 1


def test_first_message_a_response_means_its_request_was_lost() -> None:
    streams = PlaintextStreams()
    out = streams.bind(PID, SSL, T0, GW, CLIENT)
    streams.data(PID, SSL, T0 + 0.001, False, len(response(200, b"orphan")), response(200, b"orphan"), out)
    streams.data(PID, SSL, T0 + 0.002, True, len(request("/x")), request("/x"), out)
    streams.data(PID, SSL, T0 + 0.003, False, len(response(200, b"X")), response(200, b"X"), out)
    streams.close(T0 + 1, out)
    assert [(e.request is None, e.response.body) for e in out] == [(True, b"orphan"), (False, b"X")]  # type: ignore[union-attr]
    assert out[1].client == CLIENT
    assert streams.stats["tls_first_message_response"] == 1


def test_idle_connections_close_in_capture_time() -> None:
    streams = PlaintextStreams(Limits(idle_timeout_s=10.0))
    out = streams.bind(PID, SSL, T0, GW, CLIENT)
    streams.data(PID, SSL, T0 + 0.001, True, len(request()), request(), out)
    assert streams.advance(T0 + 5) == [] and len(streams) == 1
    expired = streams.advance(T0 + 11)
    assert len(streams) == 0 and len(expired) == 1 and ExchangeFlag.UNANSWERED in expired[0].flags
    assert streams.stats["tls_closed_idle"] == 1


def test_connection_count_is_bounded_oldest_evicted() -> None:
    streams = PlaintextStreams(max_connections=3)
    out: list[Exchange] = []
    for i in range(5):
        streams.bind(PID, SSL + i, T0 + i, GW, ("10.0.0.1", 1000 + i), out)
        streams.data(PID, SSL + i, T0 + i, True, len(request(f"/{i}")), request(f"/{i}"), out)
    assert len(streams) == 3
    assert streams.stats["evict_tls_connection"] == 2
    assert sorted(e.request.target for e in out) == [b"/0", b"/1"]  # type: ignore[union-attr]


def test_not_http_is_dropped_and_counted() -> None:
    streams = PlaintextStreams()
    junk = bytes(range(256)) * 40000  # binary, far past the parser's unproven-bytes limit
    out = serve(streams, [(True, junk), (True, junk), (False, b"\x00\x01" * 10)])
    assert out == []
    assert streams.stats["tls_not_http"] == 1
    assert streams.stats["drop_tls_not_http_bytes"] >= len(junk)


def test_bad_records_never_raise() -> None:
    streams = PlaintextStreams()
    assert streams.data(PID, SSL, T0, True, 0, b"") == []
    assert streams.data(PID, SSL, T0, True, 2, b"abc") == []
    assert streams.free(PID, SSL, T0) == []
    assert streams.stats["drop_tls_bad_record"] == 2


# -- any split of the byte streams into calls gives the same exchanges ------------------------------------

CONVERSATION = [
    (request("/api/a"), response(200, b'{"a":1}')),
    (request("/api/b", body=b'{"q":"' + b"z" * 300 + b'"}'), response(201, b"B" * 500, chunked=True)),
    (request("/api/c"), response(401, b'{"message":"Invalid authentication credentials"}')),
    (request("/api/d"), response(200, b"")),
]


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.lists(st.integers(0, 2000), max_size=8), min_size=len(CONVERSATION), max_size=len(CONVERSATION)
    ),
    st.lists(
        st.lists(st.integers(0, 2000), max_size=8), min_size=len(CONVERSATION), max_size=len(CONVERSATION)
    ),
    st.booleans(),
    st.integers(1, 3),
)
def test_any_split_into_calls_gives_identical_exchanges(
    req_cuts: list[list[int]], resp_cuts: list[list[int]], pipelined: bool, depth: int
) -> None:
    whole = serve(PlaintextStreams(), [c for r, s in CONVERSATION for c in ((True, r), (False, s))])
    assert len(whole) == len(CONVERSATION)
    calls: list[tuple[bool, bytes]] = []
    if pipelined:  # requests in batches of `depth`, then their responses
        for i in range(0, len(CONVERSATION), depth):
            batch = range(i, min(i + depth, len(CONVERSATION)))
            calls += [(True, part) for j in batch for part in split(CONVERSATION[j][0], req_cuts[j])]
            calls += [(False, part) for j in batch for part in split(CONVERSATION[j][1], resp_cuts[j])]
    else:
        for j, (req, resp) in enumerate(CONVERSATION):
            calls += [(True, part) for part in split(req, req_cuts[j])]
            calls += [(False, part) for part in split(resp, resp_cuts[j])]
    got = serve(PlaintextStreams(stats=Stats()), calls)
    assert [summary(e) for e in got] == [summary(e) for e in whole]
