"""EventBuilder: events for every `Legs` shape, times, URIs, headers, identity, ids, metadata; client IP."""

from __future__ import annotations

import base64
import gzip
import hashlib
import re
import time
import uuid
from dataclasses import replace

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reassembly.events import Exchange, ExchangeFlag, HttpRequest, HttpResponse
from sniffer.config import Config
from sniffer.kong.api_call import ApiCall, Legs
from sniffer.moesif.client_ip import client_ip, forwarded_ip, parse_ip
from sniffer.moesif.event import EventBuilder, iso_time, transaction_id
from sniffer.moesif.ids import millis

TS = 1_700_000_000.0  # 2023-11-14T22:13:20Z
CLIENT = ("10.0.0.1", 40000)
KONG = ("10.0.0.2", 8000)
KONG_OUT = ("10.0.0.2", 51000)
SERVICE = ("10.0.0.3", 8080)
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def request(
    headers: list[tuple[bytes, bytes]],
    *,
    method: bytes = b"GET",
    target: bytes = b"/v1/items?page=2",
    body: bytes = b"",
    ts: float = TS + 0.0451,
    offset: int = 0,
) -> HttpRequest:
    return HttpRequest(
        version=b"HTTP/1.1",
        method=method,
        target=target,
        headers=headers,
        body=body,
        body_size=len(body),
        ts_start=ts,
        ts_end=ts + 0.001,
        stream_offset=offset,
    )


def response(
    headers: list[tuple[bytes, bytes]], *, status: int = 200, body: bytes = b"", ts: float = TS + 0.2
) -> HttpResponse:
    return HttpResponse(
        version=b"HTTP/1.1",
        status=status,
        headers=headers,
        body=body,
        body_size=len(body),
        ts_start=ts - 0.01,
        ts_end=ts,
    )


def exchange(
    req: HttpRequest | None, resp: HttpResponse | None, client=CLIENT, server=KONG, flags=()
) -> Exchange:  # type: ignore[no-untyped-def]
    return Exchange(flow_id=1, client=client, server=server, request=req, response=resp, flags=set(flags))


def no_nulls(value: object) -> bool:
    if value is None:
        return False
    if isinstance(value, dict):
        return all(no_nulls(v) for v in value.values())
    if isinstance(value, list):
        return all(no_nulls(v) for v in value)
    return True


def valid(event: dict[str, object] | None) -> dict[str, object]:
    """Checks shared by every event: the API's required fields, no nulls, serialisable."""
    assert event is not None
    assert no_nulls(event)
    orjson.dumps(event)
    req = event["request"]
    assert isinstance(req, dict)
    for key in ("time", "uri", "verb", "headers"):
        assert key in req
    assert ISO.match(req["time"])
    if "response" in event:
        resp = event["response"]
        assert isinstance(resp, dict)
        for key in ("time", "status", "headers"):
            assert key in resp
        assert ISO.match(resp["time"])
    assert event["direction"] == "Incoming" and event["weight"] == 1
    assert str(uuid.UUID(str(event["transaction_id"]))) == event["transaction_id"]
    return event


CLIENT_REQ_HEADERS = [
    (b"Host", b"API.Example.COM:8000"),
    (b"User-Agent", b"curl/8.0"),
    (b"Accept", b"text/html"),
    (b"accept", b"application/json"),
    (b"Authorization", b"Basic " + base64.b64encode(b"alice:s3cret")),
    (b"X-Consumer-ID", b"forged"),
]
KONG_RESP_HEADERS = [
    (b"Content-Type", b"application/json"),
    (b"Set-Cookie", b"a=1"),
    (b"Set-Cookie", b"b=2"),
    (b"Via", b"kong/3.9.0"),
    (b"X-Kong-Request-Id", b"kreq-123"),
    (b"Content-Encoding", b"gzip"),
]
UPSTREAM_REQ_HEADERS = [
    (b"Host", b"service.internal:8080"),
    (b"User-Agent", b"curl/8.0"),
    (b"Accept", b"text/html, application/json"),
    (b"X-Forwarded-For", b"203.0.113.9, 10.0.0.1"),
    (b"X-Forwarded-Proto", b"https"),
    (b"X-Forwarded-Host", b"api.example.com"),
    (b"X-Forwarded-Port", b"8443"),
    (b"X-Forwarded-Path", b"/v1/items"),
    (b"X-Forwarded-Prefix", b"/v1"),
    (b"X-Real-IP", b"10.0.0.1"),
    (b"Via", b"1.1 kong/3.9.0"),
    (b"X-Kong-Request-Id", b"kreq-123"),
    (b"X-Consumer-ID", b"c0ffee-uuid"),
    (b"X-Consumer-Username", b"alice-user"),
    (b"X-Credential-Identifier", b"cred-42"),
]


def kong_call(legs: Legs) -> ApiCall:
    client_leg = exchange(
        request(CLIENT_REQ_HEADERS),
        response(KONG_RESP_HEADERS, body=gzip.compress(b'{"items": [1]}')),
    )
    upstream_leg = exchange(
        request(UPSTREAM_REQ_HEADERS, target=b"/items?page=2", ts=TS + 0.05, offset=300),
        response([(b"Content-Type", b"application/json")], body=b'{"items": [1]}', ts=TS + 0.19),
        client=KONG_OUT,
        server=SERVICE,
    )
    if legs is Legs.CLIENT_AND_UPSTREAM:
        return ApiCall(
            client_leg=client_leg, upstream_leg=upstream_leg, legs=legs, kong_request_id="kreq-123"
        )
    if legs is Legs.UPSTREAM_ONLY:
        return ApiCall(client_leg=None, upstream_leg=upstream_leg, legs=legs)
    return ApiCall(client_leg=client_leg, upstream_leg=None, legs=legs)


def test_single_exchange_event() -> None:
    call = ApiCall(
        client_leg=exchange(
            request([(b"Host", b"Example.org"), (b"X-Custom", b"1"), (b"x-custom", b"2")], target=b"/a?b=c"),
            response([(b"Set-Cookie", b"s=1"), (b"Content-Type", b"text/plain")], body=b"hi", status=201),
            server=("10.0.0.2", 80),
        ),
        upstream_leg=None,
        legs=Legs.SINGLE,
    )
    event = valid(EventBuilder(Config()).build(call))
    assert event["request"] == {
        "time": "2023-11-14T22:13:20.045Z",
        "uri": "http://example.org:80/a?b=c",
        "verb": "GET",
        "headers": {"host": "Example.org", "x-custom": "1, 2"},
        "ip_address": "10.0.0.1",
    }
    assert event["response"] == {
        "time": "2023-11-14T22:13:20.200Z",
        "status": 201,
        "headers": {"content-type": "text/plain"},  # set-cookie masked by default
        "body": base64.b64encode(b"hi").decode(),
        "transfer_encoding": "base64",
    }
    assert "user_id" not in event and "company_id" not in event and "session_token" not in event
    assert event["metadata"] == {
        "capture": {
            "legs": "single",
            "connection": "10.0.0.1:40000 -> 10.0.0.2:80",
            "client": "10.0.0.1:40000",
            "server": "10.0.0.2:80",
            "truncated": False,
            "gap": False,
        }
    }


def test_client_and_upstream_event() -> None:
    event = valid(
        EventBuilder(Config(mask_credential_headers=False)).build(kong_call(Legs.CLIENT_AND_UPSTREAM))
    )
    req, resp = event["request"], event["response"]
    assert isinstance(req, dict) and isinstance(resp, dict)
    assert req["uri"] == "http://api.example.com:8000/v1/items?page=2"  # Kong's listening port
    assert req["ip_address"] == "10.0.0.1"
    headers = req["headers"]
    assert headers["accept"] == "text/html, application/json"
    # identity headers come from the upstream leg (the client's forged one is gone) ...
    assert headers["x-consumer-id"] == "c0ffee-uuid"
    assert headers["x-consumer-username"] == "alice-user"
    assert headers["x-credential-identifier"] == "cred-42"
    # ... but none of Kong's proxy plumbing, and the Host the client sent
    assert not [
        h for h in headers if h.startswith("x-forwarded-") or h in ("x-real-ip", "via", "x-kong-request-id")
    ]
    assert headers["host"] == "API.Example.COM:8000"
    assert "authorization" in headers  # credential masking switched off
    # response from the client leg: Kong's headers, gzip decoded to JSON, set-cookie kept as a list
    assert resp["headers"]["via"] == "kong/3.9.0"
    assert resp["headers"]["set-cookie"] == ["a=1", "b=2"]
    assert resp["body"] == {"items": [1]} and resp["transfer_encoding"] == "json"
    assert resp["time"] == "2023-11-14T22:13:20.200Z"
    assert event["user_id"] == "alice-user"  # upstream x-consumer-username beats the Basic credential
    assert event["session_token"] == "cred-42"
    capture = event["metadata"]["capture"]  # type: ignore[index]
    assert capture["legs"] == "client+upstream"
    assert capture["kong_request_id"] == "kreq-123"
    assert capture["connection"] == "10.0.0.1:40000 -> 10.0.0.2:8000"
    assert capture["upstream_connection"] == "10.0.0.2:51000 -> 10.0.0.3:8080"


def test_client_only_event_kong_answered_itself() -> None:
    call = ApiCall(
        client_leg=exchange(
            request(CLIENT_REQ_HEADERS[:3]),
            response(
                [(b"Content-Type", b"application/json"), (b"X-Kong-Request-Id", b"k-9")],
                status=401,
                body=b'{"message":"Unauthorized"}',
            ),
        ),
        upstream_leg=None,
        legs=Legs.CLIENT_ONLY,
    )
    event = valid(EventBuilder(Config()).build(call))
    assert event["response"]["status"] == 401  # type: ignore[index]
    assert event["response"]["body"] == {"message": "Unauthorized"}  # type: ignore[index]
    assert "user_id" not in event
    capture = event["metadata"]["capture"]  # type: ignore[index]
    assert capture["legs"] == "client" and capture["kong_request_id"] == "k-9"  # found in the response


def test_upstream_only_event() -> None:
    event = valid(EventBuilder(Config()).build(kong_call(Legs.UPSTREAM_ONLY)))
    req, resp = event["request"], event["response"]
    assert isinstance(req, dict) and isinstance(resp, dict)
    # scheme/host/port from X-Forwarded-*, path from X-Forwarded-Path + the target's query
    assert req["uri"] == "https://api.example.com:8443/v1/items?page=2"
    assert req["ip_address"] == "203.0.113.9"  # leftmost X-Forwarded-For
    assert req["time"] == "2023-11-14T22:13:20.050Z"
    headers = req["headers"]
    assert headers["host"] == "api.example.com"
    assert headers["x-consumer-id"] == "c0ffee-uuid"
    assert not [
        h for h in headers if h.startswith("x-forwarded-") or h in ("x-real-ip", "via", "x-kong-request-id")
    ]
    assert resp["body"] == {"items": [1]}
    assert event["user_id"] == "alice-user"
    capture = event["metadata"]["capture"]  # type: ignore[index]
    assert capture["legs"] == "upstream"
    assert capture["connection"] == "10.0.0.2:51000 -> 10.0.0.3:8080"
    assert capture["kong_request_id"] == "kreq-123"


def test_upstream_only_without_forwarded_headers() -> None:
    req = request([(b"Host", b"svc:8080"), (b"X-Real-IP", b"198.51.100.7")], target=b"/x?q=1")
    call = ApiCall(
        client_leg=None, upstream_leg=exchange(req, None, KONG_OUT, SERVICE), legs=Legs.UPSTREAM_ONLY
    )
    event = valid(EventBuilder(Config()).build(call))
    assert event["request"]["uri"] == "http://svc:80/x?q=1"  # type: ignore[index]
    assert event["request"]["ip_address"] == "198.51.100.7"  # type: ignore[index]


def test_unanswered_event_has_no_response_and_is_flagged() -> None:
    call = ApiCall(
        client_leg=exchange(request([(b"Host", b"h")]), None, flags={ExchangeFlag.UNANSWERED}),
        upstream_leg=None,
        legs=Legs.SINGLE,
    )
    event = valid(EventBuilder(Config()).build(call))
    assert "response" not in event
    assert event["metadata"]["capture"]["flags"] == ["unanswered"]  # type: ignore[index]


def test_response_taken_from_upstream_when_client_leg_has_none() -> None:
    call = kong_call(Legs.CLIENT_AND_UPSTREAM)
    assert call.client_leg is not None
    call.client_leg.response = None
    event = valid(EventBuilder(Config()).build(call))
    assert event["response"]["status"] == 200  # type: ignore[index]
    assert "response_from_upstream" in event["metadata"]["capture"]["flags"]  # type: ignore[index]


def test_orphan_response_builds_nothing() -> None:
    call = ApiCall(
        client_leg=exchange(None, response([]), flags={ExchangeFlag.ORPHAN_RESPONSE}),
        upstream_leg=None,
        legs=Legs.SINGLE,
    )
    assert EventBuilder(Config()).build(call) is None


def test_partial_exchange_flags() -> None:
    req = request([(b"Host", b"h")])
    resp = response([(b"Content-Type", b"text/plain")], body=b"abc")
    resp.complete = False
    resp.gap = True
    call = ApiCall(
        client_leg=exchange(req, resp, flags={ExchangeFlag.MIDSTREAM, ExchangeFlag.RESPONSE_GAP}),
        upstream_leg=None,
        legs=Legs.SINGLE,
    )
    capture = valid(EventBuilder(Config()).build(call))["metadata"]["capture"]  # type: ignore[index]
    assert capture["gap"] is True and capture["truncated"] is True
    assert capture["flags"] == ["midstream", "response_gap", "response_incomplete"]


@pytest.mark.parametrize(
    ("ts", "text"),
    [
        (TS, "2023-11-14T22:13:20.000Z"),
        (TS + 0.005, "2023-11-14T22:13:20.005Z"),
        (TS + 0.045, "2023-11-14T22:13:20.045Z"),
        (TS + 0.123, "2023-11-14T22:13:20.123Z"),  # float: 1700000000.123 is stored as ...122999
        (TS + 0.9999, "2023-11-14T22:13:20.999Z"),  # truncated, never rounded up to the next second
        (0.0, "1970-01-01T00:00:00.000Z"),
    ],
)
def test_iso_time(ts: float, text: str) -> None:
    assert iso_time(ts) == text


def test_transaction_id_is_deterministic() -> None:
    a = transaction_id(kong_call(Legs.CLIENT_AND_UPSTREAM))
    assert a == transaction_id(kong_call(Legs.CLIENT_AND_UPSTREAM))  # fresh, equal objects
    assert a == EventBuilder(Config()).build(kong_call(Legs.CLIENT_AND_UPSTREAM))["transaction_id"]  # type: ignore[index]
    moved = kong_call(Legs.CLIENT_AND_UPSTREAM)
    assert moved.client_leg is not None and moved.client_leg.request is not None
    moved.client_leg.request.stream_offset = 512
    assert transaction_id(moved) != a
    jitter = kong_call(Legs.CLIENT_AND_UPSTREAM)  # another capture socket's clock read of the same packet
    assert jitter.client_leg is not None and jitter.client_leg.request is not None
    ts = jitter.client_leg.request.ts_start
    jitter.client_leg.request.ts_start = ts + 0.000002 if (ts + 0.000002) // 1 == ts // 1 else ts - 0.000002
    assert transaction_id(jitter) == a
    later = kong_call(Legs.CLIENT_AND_UPSTREAM)  # the same 4-tuple reused a second later
    assert later.client_leg is not None and later.client_leg.request is not None
    later.client_leg.request.ts_start += 1.0
    assert transaction_id(later) != a
    other_port = kong_call(Legs.CLIENT_AND_UPSTREAM)
    assert other_port.client_leg is not None
    other_port.client_leg.client = ("10.0.0.1", 40001)
    assert transaction_id(other_port) != a
    assert transaction_id(kong_call(Legs.UPSTREAM_ONLY)) != a


def test_transaction_id_header_wins() -> None:
    sent = "6F9619FF-8B86-D011-B42D-00C04FC964FF"
    call = kong_call(Legs.SINGLE)
    assert call.client_leg is not None and call.client_leg.request is not None
    call.client_leg.request.headers.append((b"X-Moesif-Transaction-Id", sent.encode()))
    assert transaction_id(call) == sent.lower()
    call.client_leg.request.headers[-1] = (b"X-Moesif-Transaction-Id", b"not-a-uuid")
    first = transaction_id(call)
    assert str(uuid.UUID(first)) == first and first == transaction_id(call)
    call.client_leg.request.headers[-1] = (b"X-Moesif-Transaction-Id", b"  ")
    assert transaction_id(call) == transaction_id(kong_call(Legs.SINGLE))


def test_masks_apply_after_identification() -> None:
    body = b'{"user": {"password": "pw", "name": "n"}, "ok": 1}'
    call = ApiCall(
        client_leg=exchange(
            request(
                [
                    (b"Host", b"h"),
                    (b"Authorization", b"Basic " + base64.b64encode(b"bob:pw")),
                    (b"X-Secret", b"s"),
                    (b"Content-Type", b"application/json"),
                ],
                method=b"POST",
                target=b"/p?token=abc&x=1&token=def",
                body=body,
            ),
            response([(b"X-Internal", b"1")]),
        ),
        upstream_leg=None,
        legs=Legs.SINGLE,
    )
    config = Config(
        request_header_masks=("x-secret",),
        response_header_masks=("X-Internal",),
        request_body_masks=("password",),
        request_query_masks=("token",),
    )
    event = valid(EventBuilder(config).build(call))
    req = event["request"]
    assert event["user_id"] == "bob"  # read from the unmasked Authorization
    assert req["headers"] == {"host": "h", "content-type": "application/json"}  # type: ignore[index]
    assert req["uri"] == "http://h:8000/p?token=*****&x=1&token=*****"  # type: ignore[index]
    assert req["body"] == {"user": {"name": "n"}, "ok": 1}  # type: ignore[index]
    assert event["response"]["headers"] == {}  # type: ignore[index]


def test_deprecated_body_mask_option_is_a_fallback() -> None:
    body = b'{"a": 1, "b": 2}'
    call = ApiCall(
        client_leg=exchange(
            request([(b"Content-Type", b"application/json")], method=b"POST", body=body), None
        ),
        upstream_leg=None,
        legs=Legs.SINGLE,
    )
    assert EventBuilder(Config(request_masks=("a",))).build(call)["request"]["body"] == {"b": 2}  # type: ignore[index]
    both = Config(request_masks=("a",), request_body_masks=("b",))
    assert EventBuilder(both).build(call)["request"]["body"] == {"a": 1}  # type: ignore[index]


def test_body_options_and_metadata() -> None:
    big = b"x" * 2000
    call = ApiCall(
        client_leg=exchange(
            request([(b"Host", b"h")], method=b"PUT", body=big),
            response([(b"Content-Type", b"text/plain")], body=b"small"),
        ),
        upstream_leg=None,
        legs=Legs.SINGLE,
    )
    event = valid(EventBuilder(Config(request_max_body_size_limit=1000)).build(call))
    assert "body" not in event["request"] and "transfer_encoding" not in event["request"]  # type: ignore[operator]
    capture = event["metadata"]["capture"]  # type: ignore[index]
    assert capture["request_body_omitted"] == "over_limit" and capture["request_body_size"] == 2000
    assert "body" in event["response"]  # type: ignore[operator]
    off = Config(disable_capture_request_body=True, disable_capture_response_body=True, api_version="2.1")
    event = valid(EventBuilder(off).build(call))
    assert "body" not in event["request"] and "body" not in event["response"]  # type: ignore[operator]
    assert "request_body_omitted" not in event["metadata"]["capture"]  # type: ignore[index]
    assert event["request"]["api_version"] == "2.1"  # type: ignore[index]


def test_ipv6_connection_and_missing_host() -> None:
    req = request([], target=b"/x")
    call = ApiCall(
        client_leg=exchange(req, None, client=("2001:db8::1", 40000), server=("2001:db8::2", 8000)),
        upstream_leg=None,
        legs=Legs.SINGLE,
    )
    event = valid(EventBuilder(Config()).build(call))
    assert event["request"]["uri"] == "http://[2001:db8::2]:8000/x"  # type: ignore[index]
    assert event["request"]["ip_address"] == "2001:db8::1"  # type: ignore[index]
    assert event["metadata"]["capture"]["connection"] == "[2001:db8::1]:40000 -> [2001:db8::2]:8000"  # type: ignore[index]


@pytest.mark.parametrize(
    ("target", "host", "uri"),
    [
        (b"http://Proxy.Example:9000/p?q=1", b"ignored", "http://proxy.example:8000/p?q=1"),
        (b"/p", b"[::1]:8000", "http://[::1]:8000/p"),
        (b"*", b"h", "http://h:8000/"),
    ],
)
def test_request_target_forms(target: bytes, host: bytes, uri: str) -> None:
    call = ApiCall(
        client_leg=exchange(request([(b"Host", host)], target=target), None),
        upstream_leg=None,
        legs=Legs.SINGLE,
    )
    assert valid(EventBuilder(Config()).build(call))["request"]["uri"] == uri  # type: ignore[index]


CLIENT_IP_CASES = [
    ({"x-client-ip": "1.1.1.1", "x-forwarded-for": "2.2.2.2"}, "1.1.1.1"),
    ({"x-forwarded-for": "unknown, 2.2.2.2, 3.3.3.3", "x-real-ip": "4.4.4.4"}, "2.2.2.2"),
    ({"x-forwarded-for": "2001:db8::1, 3.3.3.3"}, "2001:db8::1"),  # compressed IPv6 (plugin breaks it)
    ({"x-forwarded-for": "[2001:db8::5]:443"}, "2001:db8::5"),
    ({"x-forwarded-for": "2.2.2.2:8080"}, "2.2.2.2"),
    ({"x-forwarded-for": "fe80::1%eth0"}, "fe80::1"),
    ({"x-forwarded-for": "::ffff:192.0.2.1"}, "192.0.2.1"),
    ({"x-forwarded-for": "999.1.1.1", "cf-connecting-ip": "5.5.5.5"}, "5.5.5.5"),
    ({"fastly-client-ip": "6.6.6.6", "true-client-ip": "7.7.7.7"}, "6.6.6.6"),
    ({"true-client-ip": "7.7.7.7", "x-real-ip": "8.8.8.8"}, "7.7.7.7"),
    ({"x-real-ip": "8.8.8.8", "x-cluster-client-ip": "9.9.9.9"}, "8.8.8.8"),
    ({"x-cluster-client-ip": "9.9.9.9", "x-forwarded": "for=1.0.0.1"}, "9.9.9.9"),
    ({"x-forwarded": "for=1.0.0.1", "forwarded-for": "1.0.0.2"}, "1.0.0.1"),
    ({"forwarded-for": "1.0.0.2", "forwarded": "for=1.0.0.3"}, "1.0.0.2"),
    ({"forwarded": 'for="[2001:db8:cafe::17]:4711";proto=https, for=1.0.0.4'}, "2001:db8:cafe::17"),
    ({"forwarded": "for=_hidden, For=1.0.0.5;by=x"}, "1.0.0.5"),
    ({"forwarded": "for=unknown"}, "10.9.8.7"),
    ({"x-client-ip": "not-an-ip"}, "10.9.8.7"),
    ({}, "10.9.8.7"),
]


@pytest.mark.parametrize(("headers", "expected"), CLIENT_IP_CASES)
def test_client_ip(headers: dict[str, str], expected: str) -> None:
    assert client_ip(headers, "10.9.8.7") == expected


def test_parse_ip_rejects_junk() -> None:
    for junk in ("", "1.2.3", "1.2.3.4:http", "[::1", "[::1]x", "2001:db8::g", "1.2.3.256"):
        assert parse_ip(junk) is None, junk
    assert client_ip({}, None) is None


def test_identity_headers_follow_config() -> None:
    jwt = "e30." + base64.urlsafe_b64encode(b'{"sub":"jwt-u","org":"o-1"}').decode().rstrip("=") + ".sig"
    call = kong_call(Legs.CLIENT_ONLY)
    assert call.client_leg is not None and call.client_leg.request is not None
    call.client_leg.request.headers = [(b"Host", b"h"), (b"Authorization", b"Bearer " + jwt.encode())]
    event = valid(EventBuilder(replace(Config(), authorization_company_id_field="org")).build(call))
    assert (event["user_id"], event["company_id"]) == ("jwt-u", "o-1")
    assert "authorization" not in event["request"]["headers"]  # type: ignore[index,operator]


def test_client_ip_header_order_is_the_plugins() -> None:
    order = [
        "x-client-ip",
        "x-forwarded-for",
        "cf-connecting-ip",
        "fastly-client-ip",
        "true-client-ip",
        "x-real-ip",
        "x-cluster-client-ip",
        "x-forwarded",
        "forwarded-for",
        "forwarded",
    ]
    headers = {
        name: f"for=192.0.2.{i}" if name == "forwarded" else f"192.0.2.{i}" for i, name in enumerate(order)
    }
    for i, name in enumerate(order):
        assert client_ip(headers, "10.9.8.7") == f"192.0.2.{i}", name
        del headers[name]
    assert client_ip(headers, "10.9.8.7") == "10.9.8.7"


def test_body_cut_by_the_core_is_omitted_not_partial() -> None:
    resp = response([(b"Content-Type", b"application/json")], body=b"[" * 1100)
    resp.body_size, resp.body_truncated = 250_000, True
    call = ApiCall(
        client_leg=exchange(request([(b"Host", b"h")]), resp, flags={ExchangeFlag.RESPONSE_BODY_TRUNCATED}),
        upstream_leg=None,
        legs=Legs.SINGLE,
    )
    event = valid(EventBuilder(Config()).build(call))
    capture = event["metadata"]["capture"]  # type: ignore[index]
    assert "body" not in event["response"]  # type: ignore[operator]
    assert capture["response_body_omitted"] == "over_limit" and capture["response_body_size"] == 250_000
    assert "flags" not in capture and capture["truncated"] is False


# -- the fast paths give what the plain definitions give ------------------------------------------

NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://moesif-sniffer/transaction-id")
IPS = st.sampled_from(["10.0.0.1", "192.168.200.254", "2001:db8::1", "::1", "fe80::a:b"])


def _reference_id(client: tuple[str, int], server: tuple[str, int], offset: int, ts: float) -> str:
    """The derived id by its definition (`sniffer.moesif.ids`), built with the uuid module."""

    def ep(e: tuple[str, int]) -> str:
        return f"[{e[0]}]:{e[1]}" if ":" in e[0] else f"{e[0]}:{e[1]}"

    digest = hashlib.sha1(NAMESPACE.bytes + f"{ep(client)}|{ep(server)}|{int(ts)}".encode()).digest()
    value = int.from_bytes(digest[:16], "big")
    value ^= (offset * 0x9E3779B97F4B) & ((1 << 48) - 1)  # the low 48 bits mixed with the offset
    value = value & ~(0xF << 76) | 8 << 76  # version 8
    value = value & ~(0b11 << 62) | 0b10 << 62  # variant 10
    return str(uuid.UUID(int=value))


@settings(max_examples=200, deadline=None)
@given(
    client=st.tuples(IPS, st.integers(1, 65535)),
    server=st.tuples(IPS, st.integers(1, 65535)),
    offsets=st.lists(st.integers(1, 2**48 - 1), max_size=5, unique=True).map(lambda o: [0, *o]),  # 0: first
    ts=st.floats(0, 4e9, allow_nan=False),
)
def test_derived_transaction_ids_are_the_definition_and_unique_per_connection_second(
    client: tuple[str, int], server: tuple[str, int], offsets: list[int], ts: float
) -> None:
    # One builder for all: its per-connection hash of the second is reused from the second call on, and
    # redone for the last call, a second later.
    builder = EventBuilder(Config())
    ids = []
    for i, offset in enumerate(offsets):
        at = ts + 1.0 if i and i == len(offsets) - 1 else ts
        call = ApiCall(
            client_leg=exchange(
                request([(b"Host", b"h")], ts=at, offset=offset), None, client=client, server=server
            ),
            upstream_leg=None,
            legs=Legs.SINGLE,
        )
        expected = _reference_id(client, server, offset, at)
        assert transaction_id(call) == expected
        assert builder.build(call)["transaction_id"] == expected  # type: ignore[index]
        parsed = uuid.UUID(expected)
        assert parsed.version == 8 and parsed.variant == uuid.RFC_4122
        ids.append(expected)
    assert len(set(ids)) == len(ids)  # requests of one connection never share an id


@settings(max_examples=300, deadline=None)
@given(ts=st.floats(0, 4e9, allow_nan=False))
def test_iso_time_is_strftime_of_the_truncated_millisecond(ts: float) -> None:
    ms = round(ts * 1_000_000) // 1000
    expected = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"
    assert iso_time(ts) == expected
    assert iso_time(ts) == expected  # again, now from the per-second memo


# Capture times whose microseconds are a tie (end in exactly .5) next to a whole millisecond, near 0 and
# near today's epoch seconds (where a float's spacing in microseconds is 0.25): only there does the way
# ties go change the millisecond (999.5 us is 1 ms by round, half to even; 0 ms by rounding ties down).
_HALVES = [
    ts
    for base in (0.0, 1_700_000_000_000_000.0)
    for k in range(1, 3000)
    for x in (base + 1000 * k - 0.5, base + 1000 * k + 0.5)
    if (ts := x / 1e6) * 1e6 == x
]


@settings(max_examples=500, deadline=None)
@given(ts=st.floats(-1e15, 1e15))
def test_millis_is_round_of_the_microseconds(ts: float) -> None:  # the ties: the test below
    assert millis(ts) == round(ts * 1_000_000) // 1000
    assert millis(-ts) == round(-ts * 1_000_000) // 1000


def test_millis_ties_go_to_the_even_microsecond() -> None:
    assert len(_HALVES) > 1000
    for ts in (*_HALVES, *(-t for t in _HALVES)):
        assert millis(ts) == round(ts * 1_000_000) // 1000, ts


def test_iso_time_memo_stays_right_past_its_size() -> None:
    # More distinct seconds than the memo holds: it is emptied, never wrong.
    for sec in range(0, 5000 * 86_399, 86_399):
        ts = sec + 0.25
        assert iso_time(ts) == time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + ".250Z"


def varied_calls() -> list[ApiCall]:
    """Calls that differ in every value a builder remembers: flows, Host, targets, tokens, methods."""
    calls = []
    for i in range(40):
        client = (f"10.0.{i % 3}.{i % 7}", 40000 + i % 5)
        server = ("2001:db8::9", 8000) if i % 4 == 0 else (f"10.1.0.{i % 2}", 8080)
        headers = [(b"Host", [b"a.example", b"B.example:81", b"[::1]:9"][i % 3])]
        if i % 2:
            headers.append((b"Authorization", b"Basic " + base64.b64encode(f"user{i % 6}:pw".encode())))
        target = [b"/x?page=1", b"/y", b"http://other.example/p?q=2", b"*"][i % 4]
        req = request(headers, method=[b"GET", b"POST", b"PUT"][i % 3], target=target, offset=i * 100)
        resp = response(
            [(b"Content-Type", b"application/json"), (b"X-Kong-Request-Id", f"k{i}".encode())],
            body=b'{"n": %d}' % i,
        )
        calls.append(
            ApiCall(client_leg=exchange(req, resp, client, server), upstream_leg=None, legs=Legs.SINGLE)
        )
    calls.append(kong_call(Legs.CLIENT_AND_UPSTREAM))
    calls.append(kong_call(Legs.UPSTREAM_ONLY))
    return calls


def test_a_long_lived_builder_gives_what_fresh_builders_give() -> None:
    # What a builder remembers (flows, URIs, tokens, methods) must never leak from one call into another.
    config = Config(request_query_masks=("page",))
    fresh = [orjson.dumps(EventBuilder(config).build(c)) for c in varied_calls()]
    builder = EventBuilder(config)
    for _ in range(3):
        assert [orjson.dumps(builder.build(c)) for c in varied_calls()] == fresh
    # Builders of other configurations do not share what one of them remembered.
    other = EventBuilder(Config())
    first = varied_calls()[0]
    assert valid(other.build(first))["request"]["uri"] == "http://a.example:8000/x?page=1"  # type: ignore[index]
    assert orjson.loads(fresh[0])["request"]["uri"] == "http://a.example:8000/x?page=*****"


def test_request_header_memo_never_changes_an_event() -> None:
    # Repeated blocks (remembered), unique blocks (enough misses to pause the memo), repeated again (the
    # pause ends), blocks too large to remember, and a block whose shown headers a consumer edits.
    config = Config(request_header_masks=("x-secret",), user_id_header="x-user")
    token = b"Basic " + base64.b64encode(b"alice:pw")

    def call(i: int, extra: list[tuple[bytes, bytes]]) -> ApiCall:
        headers = [(b"Host", b"h.example"), (b"Authorization", token), (b"X-Secret", b"s"), *extra]
        req = request(headers, offset=i * 100)
        resp = response([(b"Content-Type", b"application/json")], body=b'{"n": 1}')
        return ApiCall(client_leg=exchange(req, resp), upstream_leg=None, legs=Legs.SINGLE)

    calls = [call(i, [(b"X-User", b"u%d" % (i % 3))]) for i in range(50)]
    calls += [call(i, [(b"X-Request-Id", b"r%d" % i)]) for i in range(3000)]
    calls += [call(i, [(b"X-User", b"u%d" % (i % 3))]) for i in range(20_000)]
    calls += [
        call(i, [(b"X-Big", b"b" * 3000), (b"X-Forwarded-For", b"192.0.2.%d" % (i % 2))]) for i in range(9)
    ]
    builder = EventBuilder(config)
    events = [orjson.dumps(builder.build(c)) for c in calls]
    for i in [*range(0, len(calls), 97), *range(len(calls) - 9, len(calls))]:
        assert events[i] == orjson.dumps(EventBuilder(config).build(calls[i]))
    first = valid(builder.build(calls[0]))
    first["request"]["headers"]["host"] = "edited"  # type: ignore[index]
    again = valid(builder.build(calls[0]))
    assert again["request"]["headers"] == {"host": "h.example", "x-user": "u0"}  # type: ignore[index]
    assert again["user_id"] == "u0" and again["request"]["ip_address"] == "10.0.0.1"  # type: ignore[index]
    assert valid(builder.build(calls[-1]))["request"]["ip_address"] == "192.0.2.0"  # type: ignore[index]


def test_many_flows_past_the_flow_memo() -> None:
    builder = EventBuilder(Config())
    for i in range(5000):
        client = (f"10.{i >> 8}.{i & 255}.1", 1024 + i)
        call = ApiCall(
            client_leg=exchange(request([(b"Host", b"h")]), None, client=client),
            upstream_leg=None,
            legs=Legs.SINGLE,
        )
        capture = valid(builder.build(call))["metadata"]["capture"]  # type: ignore[index]
        assert capture["connection"] == f"{client[0]}:{client[1]} -> 10.0.0.2:8000"


@pytest.mark.parametrize(
    ("sent", "expected"),
    [
        (b"  kreq-1\t", "kreq-1"),
        (b"\x1ckreq-1\x1c", "\x1ckreq-1\x1c"),  # str.strip() would strip \x1c; the wire rule (bytes) does not
        (b"\xc2\xa0kreq-1", "\xa0kreq-1"),  # UTF-8 no-break space: not ASCII whitespace, kept
        (b"kr\xe9q", "kr\xe9q"),  # not UTF-8: read as latin-1
        (b"   ", "from-request"),  # blank: the next message is looked at
    ],
)
def test_kong_request_id_is_stripped_as_bytes(sent: bytes, expected: str) -> None:
    call = ApiCall(
        client_leg=exchange(
            request([(b"Host", b"h"), (b"X-Kong-Request-Id", b"from-request")]),
            response([(b"X-Kong-Request-Id", sent)]),
        ),
        upstream_leg=None,
        legs=Legs.SINGLE,
    )
    assert valid(EventBuilder(Config()).build(call))["metadata"]["capture"]["kong_request_id"] == expected  # type: ignore[index]


def test_content_headers_read_as_latin1_for_bodies() -> None:
    # Content-Encoding/-Type are read byte for byte (latin-1), as body.capture_body reads them, even
    # where the header text shown in the event is UTF-8.
    call = ApiCall(
        client_leg=exchange(
            request([(b"Host", b"h")]),
            response([(b"Content-Encoding", b"gz\xc3\xafp"), JSON_TYPE], body=b'{"a": 1}'),
        ),
        upstream_leg=None,
        legs=Legs.SINGLE,
    )
    event = valid(EventBuilder(Config()).build(call))
    assert event["response"]["headers"]["content-encoding"] == "gz\u00efp"  # type: ignore[index]
    capture = event["metadata"]["capture"]  # type: ignore[index]
    assert capture["response_body_undecoded"] == "gz\u00c3\u00afp".lower()
    assert event["response"]["body"] == base64.b64encode(b'{"a": 1}').decode()  # type: ignore[index]


JSON_TYPE = (b"Content-Type", b"application/json")


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"accept": ["*/*"]},
        {"x-forwarded-for": ["junk", "203.0.113.7"]},
        {"x-real-ip": ["10.9.8.7"], "forwarded": ["for=192.0.2.1"]},
        {"forwarded": ['for="[2001:db8::3]:80"', "for=1.1.1.1"]},
    ],
)
def test_forwarded_ip_is_client_ip_without_a_peer(headers: dict[str, list[str]]) -> None:
    joined = {k: ", ".join(v) for k, v in headers.items()}
    assert forwarded_ip(headers) == client_ip(joined, None)


def test_parse_ip_memo_stays_right_past_its_size() -> None:
    for i in range(6000):
        text = f"10.{i >> 8}.{i & 255}.2"
        assert parse_ip(f"{text}:80") == text
        assert parse_ip(f"[::ffff:{text}]:80") == text
    assert parse_ip("10.0.0.2:80") == "10.0.0.2" and parse_ip("nope") is None and parse_ip("nope") is None


def test_a_connections_uri_follows_its_request_target_and_host() -> None:
    # One connection's requests, their targets and Host values changing, repeating and coming back, some
    # too long to be remembered: each event's URI is the one a builder that never saw the others gives.
    client, server = ("10.0.0.7", 40100), ("10.0.0.8", 8080)
    long = b"/l?" + b"q" * 600
    steps = [
        (b"/a", b"h1"),
        (b"/a", b"h1"),
        (b"/a", b"h2"),
        (b"/b", b"h2"),
        (b"/a", None),
        (b"/a", b"h1"),
        (long, b"h1"),
        (long, b"h1"),
        (b"/a", b"h1"),
    ]
    builder = EventBuilder(Config())
    uris = []
    for target, host in steps:
        headers = [(b"Host", host)] if host else []

        def call(headers: list[tuple[bytes, bytes]] = headers, target: bytes = target) -> ApiCall:
            leg = exchange(request(headers, target=target), None, client=client, server=server)
            return ApiCall(client_leg=leg, upstream_leg=None, legs=Legs.SINGLE)

        got = builder.build(call())
        expected = EventBuilder(Config()).build(call())
        assert got is not None and expected is not None
        assert got["request"]["uri"] == expected["request"]["uri"]  # type: ignore[index]
        uris.append(got["request"]["uri"])  # type: ignore[index]
    assert uris[:5] == [
        "http://h1:8080/a",
        "http://h1:8080/a",
        "http://h2:8080/a",
        "http://h2:8080/b",
        "http://10.0.0.8:8080/a",
    ]


def test_flows_sharing_a_flow_id_keep_their_own_connection() -> None:
    # A main process builds the calls of several workers, whose flow ids are each their own: the same id
    # names other connections, in turn. Each event must describe its own connection and ids.
    a, b, server = ("10.0.0.7", 40100), ("10.0.0.9", 40100), ("10.0.0.8", 8080)
    builder = EventBuilder(Config())
    for client in (a, b, a, a, b, ("10.0.0.7", 40101)):
        req = request([(b"Host", b"h")], offset=100)
        leg = Exchange(flow_id=5, client=client, server=server, request=req, response=None)
        got = valid(builder.build(ApiCall(client_leg=leg, upstream_leg=None, legs=Legs.SINGLE)))
        fresh = valid(
            EventBuilder(Config()).build(ApiCall(client_leg=leg, upstream_leg=None, legs=Legs.SINGLE))
        )
        capture = got["metadata"]["capture"]  # type: ignore[index]
        assert capture["client"] == f"{client[0]}:{client[1]}"
        assert got["transaction_id"] == fresh["transaction_id"]
        assert got["request"]["ip_address"] == client[0]  # type: ignore[index]


def test_event_times_follow_each_message() -> None:
    # Requests and responses within one millisecond, in the next one, in another second and back: each
    # time is its own message's, whatever the builder showed last.
    builder = EventBuilder(Config())
    steps = [(0.1001, 0.1004), (0.1002, 0.1009), (0.1011, 0.1011), (1.1011, 1.1012), (0.1011, 0.1013)]
    for start, end in steps:
        call = ApiCall(
            client_leg=exchange(request([(b"Host", b"h")], ts=TS + start), response([], ts=TS + end)),
            upstream_leg=None,
            legs=Legs.SINGLE,
        )
        event = valid(builder.build(call))
        assert event["request"]["time"] == iso_time(TS + start)  # type: ignore[index]
        assert event["response"]["time"] == iso_time(TS + end)  # type: ignore[index]
