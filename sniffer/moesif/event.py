"""`EventBuilder`: one `ApiCall` -> one Moesif event dict (moesif.md "The event"), ready for orjson.

Which leg says what: the request line, timing, URI and client address come from the primary leg (the
client leg when seen, else the upstream leg); request headers are the client's plus the identity headers
Kong added upstream; the response comes from the client leg when it has one, else from the upstream leg.
Identification and the client IP read unmasked headers; everything in the returned dict is masked.

Decisions where moesif.md is silent (see also the module docstrings of body, identify, client_ip):
- An unanswered call (no response) is still sent, without `response` (optional in the API, "for
  timeouts"), flagged "unanswered". An orphan response (no request) yields None: `build` returns None
  and the caller counts it; the API requires request.time/uri/verb/headers, which we would have to invent.
- `session_token` is Kong's `X-Credential-Identifier` (credential id, or the jwt key): the plugin sends
  `credential.key`, which for key-auth is the raw API key; a sniffer does not ship secrets. It is left
  out when `x-credential-identifier` is in the request header masks.
- An empty body is left out (the plugin sends `""`/base64 for some empty bodies, absent for others).
- `X-Moesif-Transaction-Id` that is not a UUID is turned into one (uuid5 of its value): Moesif wants a
  36-character UUID and the id must stay deterministic.
"""

from __future__ import annotations

from itertools import chain
from typing import Final
from urllib.parse import urlsplit

from reassembly.events import Endpoint, Exchange, ExchangeFlag, HttpMessage, HttpRequest, HttpResponse
from sniffer.config import Config
from sniffer.headers import (
    BYTES_WHITESPACE,
    HeaderLists,
    ascii_first,
    header_lists,
    latin1_values,
    read_headers,
    render_headers,
    text,
)
from sniffer.kong.api_call import ApiCall, Legs
from sniffer.moesif.body import capture_body_with, encode_body
from sniffer.moesif.client_ip import HEADER_ORDER, forwarded_ip, parse_ip
from sniffer.moesif.identify import Identifier
from sniffer.moesif.ids import (
    _MILLIS,
    _SECONDS,
    FlowIds,
    derived_id,
    endpoint_text,
    iso_time,
    millis,
    second_text,
    transaction_id,
)
from sniffer.moesif.masks import header_mask_set, mask_body, mask_query

__all__ = ["IDENTITY_HEADERS", "PLUMBING_HEADERS", "EventBuilder", "iso_time", "transaction_id"]

# Headers Kong's auth plugins set on the upstream request (reference 5.3; x-credential-username is the
# pre-2.1 name of x-credential-identifier).
IDENTITY_HEADERS: Final = frozenset(
    {"x-credential-identifier", "x-credential-username", "x-anonymous-consumer"}
)
IDENTITY_PREFIX: Final = "x-consumer-"
# Headers Kong adds upstream with proxy_set_header: never in the plugin's logged request headers.
PLUMBING_HEADERS: Final = frozenset({"x-real-ip", "via", "x-kong-request-id"})
PLUMBING_PREFIX: Final = "x-forwarded-"

_TRUNCATED: Final = {ExchangeFlag.REQUEST_INCOMPLETE, ExchangeFlag.RESPONSE_INCOMPLETE}
# The core cuts a body only beyond the size limit, so such a body is left out on purpose and reported
# as `*_body_omitted: over_limit`: the event is not partial, and these flags would only say so twice.
_NOT_PARTIAL: Final = {ExchangeFlag.REQUEST_BODY_TRUNCATED.value, ExchangeFlag.RESPONSE_BODY_TRUNCATED.value}
_GAP: Final = {ExchangeFlag.REQUEST_GAP, ExchangeFlag.RESPONSE_GAP}

_TRANSACTION_HEADER: Final = "x-moesif-transaction-id"
_KONG_ID_HEADER: Final = "x-kong-request-id"

# Memo tables of pure functions whose inputs repeat from call to call (Host values, methods; the builder
# has its own for flows and URIs). Each is emptied when full, so memory stays bounded whatever the traffic.
_MEMO_MAX: Final = 4096
_HOSTS: dict[str, str] = {}
_METHODS: dict[bytes, str] = {}
_URI_MEMO_MAX_TARGET: Final = 512  # longer request targets are parsed each time rather than kept
# The request header memo (EventBuilder._request_headers): blocks of at most this many headers and bytes
# are kept (so it holds at most ~_REQ_MEMO_MAX x 2 KiB of text); over each window of misses, fewer hits
# than one per 8 misses pauses it for _REQ_MEMO_PAUSE requests.
_REQ_MEMO_MAX: Final = 512
_REQ_MEMO_MAX_HEADERS: Final = 32
_REQ_MEMO_MAX_BYTES: Final = 2048
_REQ_MEMO_WINDOW: Final = 1024
_REQ_MEMO_PAUSE: Final = 16384
_FORWARDING: Final = frozenset(HEADER_ORDER)
_LEGS: Final = {legs: legs.value for legs in Legs}  # Enum.value is a Python-level property: look it up once


def _method(raw: bytes) -> str:
    if len(_METHODS) >= _MEMO_MAX:
        _METHODS.clear()
    method = _METHODS[raw] = text(raw)
    return method


def _host(value: str) -> str:
    """Lowercased host without port; IPv6 literals keep (or get) their brackets."""
    host = _HOSTS.get(value)
    if host is None:
        if len(_HOSTS) >= _MEMO_MAX:
            _HOSTS.clear()
        host = _HOSTS[value] = _parse_host(value)
    return host


def _parse_host(value: str) -> str:
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        return value[: end + 1] if end > 0 else value
    if value.count(":") > 1:
        return f"[{value}]"
    return value.partition(":")[0]


# What a lone leg's request headers say, worked out once per header block: the header lists, the
# headers as shown (masked), the user and company the request names, the address a forwarding header names.
_RequestView = tuple[HeaderLists, dict[str, str | list[str]], str | None, str | None, str | None]
_NO_VIEW: Final[_RequestView] = ({}, {}, None, None, None)  # a _Flow's until it keeps one (never read)


class _Flow:
    """What an event says about its TCP connection, worked out once per connection, not per call, and
    never changed: `client` and `server`, its endpoints; `connection` text; `capture`, the connection,
    client and server as metadata.capture lists them; `peer_ip`, the client address as an event's
    ip_address when no forwarding header names one; `ids`, its transaction ids' `FlowIds`.
    Besides, the connection's last URI, since a client asks for the same one call after call on one
    connection: `target` and `host` (the request target and Host value, at most `_URI_MEMO_MAX_TARGET`
    bytes each) and `uri` ("" until one is kept); the server is the connection's. Checking them takes two
    comparisons, where the builder's URI memo would hash a fresh tuple of the request's bytes. So with its
    last request header block: `req_key` (() when none is kept), the block's key in the builder's
    request header memo, and `req_view`, the memo's entry; both go when the memo is emptied.
    A plain class, not a dataclass: compiled, its __init__ is native (a dataclass's stays interpreted)."""

    __slots__ = (
        "capture",
        "client",
        "connection",
        "host",
        "ids",
        "peer_ip",
        "req_key",
        "req_view",
        "server",
        "target",
        "uri",
    )

    def __init__(
        self,
        client: Endpoint,
        server: Endpoint,
        connection: str,
        capture: dict[str, str],
        peer_ip: str,
        ids: FlowIds,
    ) -> None:
        self.client = client
        self.server = server
        self.connection = connection
        self.capture = capture
        self.peer_ip = peer_ip
        self.ids = ids
        self.target = b""
        self.host: str | None = None
        self.uri = ""
        self.req_key: tuple[tuple[bytes, bytes], ...] = ()
        self.req_view: _RequestView = _NO_VIEW

    @classmethod
    def of(cls, ex: Exchange) -> _Flow:
        client, server = endpoint_text(ex.client), endpoint_text(ex.server)
        connection = f"{client} -> {server}"
        capture = {"connection": connection, "client": client, "server": server}
        peer = ex.client[0]
        return cls(ex.client, ex.server, connection, capture, parse_ip(peer) or peer, FlowIds(client, server))


class EventBuilder:
    """Builds Moesif events; holds what the config implies so `build` does no setup work.

    Speed matters here (one build per API call, on the capture's critical path): every message's headers
    are decoded once into `HeaderLists`, per-connection text is remembered in `_Flow`s, and work that
    only some calls need (bodies, forwarding headers, ids sent by the client) is skipped when absent.
    """

    _FLOWS_MAX = 4096

    def __init__(self, config: Config) -> None:
        # What build reads of the config, as the builder's own (compiled: native) attributes; Config
        # stays an interpreted dataclass, whose attributes compiled code reads generically.
        self._api_version = config.api_version
        self._request_bodies = not config.disable_capture_request_body
        self._response_bodies = not config.disable_capture_response_body
        self._request_body_limit = config.request_max_body_size_limit
        self._response_body_limit = config.response_max_body_size_limit
        creds = config.mask_credential_headers
        self._req_header_masks = header_mask_set(config.request_header_masks, creds)
        self._resp_header_masks = header_mask_set(config.response_header_masks, creds)
        self._req_body_masks = frozenset(config.request_body_masks or config.request_masks)
        self._resp_body_masks = frozenset(config.response_body_masks or config.response_masks)
        self._query_masks = frozenset(config.request_query_masks)
        self._identifier = Identifier(config)
        self._decode = not config.disable_gzip_payload_decompression
        self._flows: dict[tuple[Endpoint, Endpoint], _Flow] = {}
        # The same flows by the core's flow id, checked against the exchange's endpoints: ids are a
        # process's own (a main process sees several workers' ids), so a hit must name the same connection.
        self._flow_ids: dict[int, _Flow] = {}
        self._uris: dict[tuple[bytes, str | None, Endpoint], str] = {}
        self._req_memo: dict[tuple[tuple[bytes, bytes], ...], _RequestView] = {}
        self._memo_hits = self._memo_misses = self._memo_pause = 0
        self._time_ms = -1  # the last event time's millisecond and its text (`_time`)
        self._time_text = ""

    def _flow(self, ex: Exchange) -> _Flow:
        flow = self._flow_ids.get(ex.flow_id)
        # (Compiled, endpoints are unboxed tuples: `==` compares their fields natively, where a tuple key
        # would be boxed and hashed.)
        if flow is not None and flow.client == ex.client and flow.server == ex.server:
            return flow
        key = (ex.client, ex.server)
        flow = self._flows.get(key)
        if flow is None:
            if len(self._flows) >= self._FLOWS_MAX:
                self._flows.clear()
                self._flow_ids.clear()
            flow = self._flows[key] = _Flow.of(ex)
        if len(self._flow_ids) >= self._FLOWS_MAX:
            self._flow_ids.clear()
        self._flow_ids[ex.flow_id] = flow
        return flow

    def _time(self, ms: int) -> str:
        """`iso_time` of millisecond `ms`, from the per-second memo; the last one is kept, since a call's
        response often ends within its request's millisecond, and busy traffic has several calls a
        millisecond (a comparison, where the text costs a lookup and a concatenation)."""
        if ms != self._time_ms:
            self._time_ms = ms
            self._time_text = (_SECONDS.get(ms // 1000) or second_text(ms // 1000)) + _MILLIS[ms % 1000]
        return self._time_text

    def build(self, call: ApiCall) -> dict[str, object] | None:
        """The event for `call`, or None for an orphan response (no request to report)."""
        client_leg = call.client_leg
        primary = client_leg if client_leg is not None else call.primary
        req = primary.request
        if req is None:
            return None
        flow = self._flow(primary)
        # req_shown: the request headers as the event shows them, rendered in the same pass only when
        # they are just the primary's (with an upstream leg they are merged first, then rendered once).
        up_req = call.upstream_leg.request if call.upstream_leg is not None else None
        merged = primary is not client_leg or up_req is not None
        up_lists: HeaderLists | None = None
        if not merged:  # the common case: one leg, its own request headers, remembered per block
            given = call.client_request_headers  # a Kong client leg alone: the joiner read them
            req_lists, req_shown, req_user, req_company, ip = (
                self._request_view(req.headers, flow)
                if given is None
                else self._read_request(req.headers, given)
            )
            req_headers = req_lists
            ip = ip or flow.peer_ip
            uri = self._client_uri(req, req_lists, primary, flow)
        else:
            # The joiner has read the legs' headers already (ApiCall's *_headers); read here only without.
            given = call.client_request_headers if primary is client_leg else call.upstream_request_headers
            req_lists = given if given is not None else header_lists(req.headers)
            if primary is not client_leg:  # only the upstream leg was seen
                req_headers = self._upstream_request_headers(req_lists)
                req_shown = render_headers(req_headers, self._req_header_masks)
                uri = self._upstream_uri(req, req_lists, primary)
                ip = forwarded_ip(req_lists)
            else:
                # Most requests carry no forwarding header: one set operation says so.
                fwd = None if _FORWARDING.isdisjoint(req_lists) else forwarded_ip(req_lists)
                ip = fwd or flow.peer_ip
                uri = self._client_uri(req, req_lists, primary, flow)
                up_lists = call.upstream_request_headers
                if up_lists is None:
                    up_lists = header_lists(up_req.headers)  # type: ignore[union-attr]  # merged: seen
                req_headers = self._with_identity(req_lists, up_lists)
                req_shown = render_headers(req_headers, self._req_header_masks)
            req_user, req_company = self._identifier.from_request(req_headers)

        resp: HttpResponse | None
        resp_leg: Exchange | None
        if client_leg is not None and client_leg.response is not None:
            resp, resp_leg = client_leg.response, client_leg
        else:
            resp, resp_leg = self._response(call)
        resp_lists: HeaderLists = {}
        resp_shown: dict[str, str | list[str]] = {}
        if resp is not None:
            given = call.client_response_headers if resp_leg is client_leg else None
            if given is not None:
                resp_lists, resp_shown = given, render_headers(given, self._resp_header_masks)
            else:
                resp_lists, resp_shown = read_headers(resp.headers, self._resp_header_masks)
        if self._identifier.reads_response:
            user_id, company_id = self._identifier.with_response(req_user, req_company, resp_lists)
        else:
            user_id, company_id = req_user, req_company

        flags: set[str] = {f.value for f in primary.flags} if primary.flags else set()
        capture: dict[str, object] = {"legs": _LEGS[call.legs]}
        request: dict[str, object] = {
            "time": self._time(millis(req.ts_start)),
            "uri": uri,
            "verb": _METHODS.get(req.method) or _method(req.method),
            "headers": req_shown,
        }
        if ip is not None:
            request["ip_address"] = ip
        if self._api_version:
            request["api_version"] = self._api_version
        # An empty body yields nothing at all (capture_body's first test), so it is not even looked at.
        if self._request_bodies and (req.body or req.body_size > 0):
            limit = self._request_body_limit
            self._put_body(request, req, req_lists, limit, self._req_body_masks, "request", capture, flags)

        event: dict[str, object] = {"request": request}
        if resp is not None:
            response: dict[str, object] = {
                "time": self._time(millis(resp.ts_end)),
                "status": resp.status,
                "headers": resp_shown,
            }
            if self._response_bodies and (resp.body or resp.body_size > 0):
                limit = self._response_body_limit
                self._put_body(
                    response, resp, resp_lists, limit, self._resp_body_masks, "response", capture, flags
                )
            event["response"] = response
            if resp_leg is not primary:
                flags.add("response_from_upstream")
        else:
            flags.add(ExchangeFlag.UNANSWERED.value)
        if user_id is not None:
            event["user_id"] = user_id
        if company_id is not None:
            event["company_id"] = company_id
        token = req_headers.get("x-credential-identifier")
        if token and token[0].strip() and "x-credential-identifier" not in self._req_header_masks:
            event["session_token"] = token[0].strip()
        event["direction"] = "Incoming"
        event["weight"] = 1
        kong_id = call.kong_request_id
        if not kong_id and resp_leg is client_leg:
            # The client's response is the first place looked at, and where Kong puts the id.
            values = resp_lists.get(_KONG_ID_HEADER)  # ascii_first, inlined
            if values is not None and values[0].isascii():
                kong_id = values[0].strip(BYTES_WHITESPACE) or None
        if not kong_id:
            known = {id(req): req_lists, id(resp): resp_lists}
            if up_lists is not None:
                known[id(call.upstream_leg.request)] = up_lists  # type: ignore[union-attr]
            kong_id = _kong_request_id(call, known)
        if kong_id:
            capture["kong_request_id"] = kong_id
        capture.update(flow.capture)
        if (
            flags
            or not req.complete
            or req.gap
            or call.upstream_leg is not None
            or (primary.response is not None and (not primary.response.complete or primary.response.gap))
        ):
            self._fill_capture(capture, call, primary, flags)
        else:  # the usual call: one whole leg, nothing to flag
            capture["truncated"] = False
            capture["gap"] = False
        event["metadata"] = {"capture": capture}
        # Only a request carrying the header can name its own id; any other gets one derived from its flow.
        if _TRANSACTION_HEADER in req_lists or (up_lists is not None and _TRANSACTION_HEADER in up_lists):
            event["transaction_id"] = transaction_id(call)
        else:
            event["transaction_id"] = derived_id(flow.ids, req.stream_offset, req.ts_start)
        return event

    # -- request side -------------------------------------------------------------------------------

    def _request_view(self, headers: list[tuple[bytes, bytes]], flow: _Flow) -> _RequestView:
        """A lone leg's request headers (see `_RequestView`), remembered per header block: a client sends
        the same block call after call (same Host, agent, credential). Header lists are shared between
        events (only read); the shown headers are copied, as each event owns its dicts. Where blocks
        rarely repeat (per-request ids) the memo pauses itself, so it costs next to nothing there.
        The connection's last block is checked first, field by field (`_Flow.req_key`), which spares the
        hash of a fresh tuple of the block's bytes that the memo's lookup takes."""
        if self._memo_pause:
            self._memo_pause -= 1
            return self._read_request(headers)
        kept = flow.req_key
        n = len(headers)
        if len(kept) == n and n:
            for i in range(n):
                if headers[i] != kept[i]:
                    break
            else:
                last = flow.req_view
                self._memo_hits += 1
                return last[0], last[1].copy(), last[2], last[3], last[4]
        key = tuple(headers)
        known = self._req_memo.get(key)
        if known is not None:
            self._memo_hits += 1
            flow.req_key, flow.req_view = key, known
            return known[0], known[1].copy(), known[2], known[3], known[4]
        view = self._read_request(headers)
        self._memo_misses += 1
        if self._memo_misses >= _REQ_MEMO_WINDOW:
            if self._memo_hits * 8 < self._memo_misses:
                self._memo_pause = _REQ_MEMO_PAUSE
            self._memo_hits = self._memo_misses = 0
        if (
            len(headers) <= _REQ_MEMO_MAX_HEADERS
            and sum(map(len, chain.from_iterable(headers))) <= _REQ_MEMO_MAX_BYTES
        ):
            memo = self._req_memo
            if len(memo) >= _REQ_MEMO_MAX:
                memo.clear()
                # The connections' last blocks are the memo's entries: they go with it (memory stays
                # what the memo's bound says).
                for other in self._flows.values():
                    other.req_key, other.req_view = (), _NO_VIEW
            known = memo[key] = (view[0], view[1].copy(), view[2], view[3], view[4])
            flow.req_key, flow.req_view = key, known
        return view

    def _read_request(
        self, headers: list[tuple[bytes, bytes]], lists: HeaderLists | None = None
    ) -> _RequestView:
        """The view of `headers`; from `lists` (their `header_lists`) when already read."""
        if lists is None:
            lists, shown = read_headers(headers, self._req_header_masks)
        else:
            shown = render_headers(lists, self._req_header_masks)
        user, company = self._identifier.from_request(lists)
        # Most requests carry no forwarding header: one set operation says so.
        ip = None if _FORWARDING.isdisjoint(lists) else forwarded_ip(lists)
        return lists, shown, user, company, ip

    @staticmethod
    def _with_identity(client: HeaderLists, upstream: HeaderLists) -> HeaderLists:
        """Client headers with the identity headers replaced by what Kong sent upstream (authoritative:
        auth plugins clear the ones a client may have forged)."""
        merged = client.copy()
        for k in client:
            if k.startswith(IDENTITY_PREFIX) or k in IDENTITY_HEADERS:
                del merged[k]
        for k, v in upstream.items():
            if k.startswith(IDENTITY_PREFIX) or k in IDENTITY_HEADERS:
                merged[k] = v
        return merged

    @staticmethod
    def _upstream_request_headers(raw: HeaderLists) -> HeaderLists:
        """The upstream request without Kong's proxy plumbing; Host as the client sent it when known."""
        out = {k: v for k, v in raw.items() if not (k.startswith(PLUMBING_PREFIX) or k in PLUMBING_HEADERS)}
        fwd_host = raw.get("x-forwarded-host")
        if fwd_host:
            out["host"] = [fwd_host[0]]
        return out

    def _client_uri(self, req: HttpRequest, headers: HeaderLists, leg: Exchange, flow: _Flow) -> str:
        """The URI from the request line, Host and the server address (`leg`'s, whose connection `flow`
        is): a pure function of the three, which repeat call after call, so short ones are remembered,
        the connection's last one on it (two comparisons) and others in the builder's memo."""
        host_header = headers.get("host")
        host = host_header[0] if host_header else None
        target = req.target
        if target == flow.target and host == flow.host and flow.uri:
            return flow.uri
        key = (target, host, leg.server)
        uri = self._uris.get(key) or self._new_client_uri(req, host_header, leg, key)
        if len(target) <= _URI_MEMO_MAX_TARGET and len(host or "") <= _URI_MEMO_MAX_TARGET:
            flow.target, flow.host, flow.uri = target, host, uri
        return uri

    def _new_client_uri(
        self,
        req: HttpRequest,
        host_header: list[str] | None,
        leg: Exchange,
        key: tuple[bytes, str | None, Endpoint],
    ) -> str:
        uri = self._parse_client_uri(req, host_header, leg)
        if len(req.target) <= _URI_MEMO_MAX_TARGET:
            if len(self._uris) >= _MEMO_MAX:
                self._uris.clear()
            self._uris[key] = uri
        return uri

    def _parse_client_uri(self, req: HttpRequest, host_header: list[str] | None, leg: Exchange) -> str:
        target = text(req.target)
        host = _host(host_header[0]) if host_header and host_header[0].strip() else ""
        if "://" in target[:8]:
            # absolute-form: nginx's $host prefers the request line's host over the Host header
            parts = urlsplit(target)
            host = _host(parts.netloc.rpartition("@")[2]) or host
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        elif not target.startswith("/"):
            target = "/"  # asterisk- or authority-form: no path to report
        if not host:
            host = _host(leg.server[0])
        return f"http://{host}:{leg.server[1]}{mask_query(target, self._query_masks)}"

    def _upstream_uri(self, req: HttpRequest, raw: HeaderLists, leg: Exchange) -> str:
        def first(name: str) -> str | None:
            value = raw.get(name)
            return value[0].split(",")[0].strip() if value and value[0].strip() else None

        proto = (first("x-forwarded-proto") or "http").lower()
        scheme = proto if proto in ("http", "https") else "http"
        host = _host(first("x-forwarded-host") or first("host") or leg.server[0])
        port_text = first("x-forwarded-port")
        port = int(port_text) if port_text and port_text.isdigit() else (443 if scheme == "https" else 80)
        path, _, query = text(req.target).partition("?")
        path = first("x-forwarded-path") or (path if path.startswith("/") else "/")
        target = path + (f"?{query}" if query else "")
        return f"{scheme}://{host}:{port}{mask_query(target, self._query_masks)}"

    # -- response and bodies ----------------------------------------------------------------------

    @staticmethod
    def _response(call: ApiCall) -> tuple[HttpResponse | None, Exchange | None]:
        for leg in (call.client_leg, call.upstream_leg):
            if leg is not None and leg.response is not None:
                return leg.response, leg
        return None, None

    def _put_body(
        self,
        target: dict[str, object],
        msg: HttpMessage,
        headers: HeaderLists,
        limit: int,
        masks: frozenset[str],
        side: str,
        capture: dict[str, object],
        flags: set[str],
    ) -> None:
        """The body fields of one side into `target`, what to say about them into `capture` and `flags`."""
        types = headers.get("content-type")
        if types is not None and len(types) == 1 and types[0].isascii():
            content_type = types[0] or None  # the usual case of the line below
        else:
            content_type = ", ".join(latin1_values(headers, "content-type", msg)) or None
        data = msg.body
        if (
            not (self._decode and "content-encoding" in headers)
            and not msg.body_truncated
            and data
            and len(data) <= limit
        ):
            # plain_body's common case, inlined: nothing to undo, whole, within the limit
            value, transfer_encoding = encode_body(data, content_type)
        else:
            body = capture_body_with(
                msg.body,
                content_encoding=latin1_values(headers, "content-encoding", msg),
                content_type=content_type,
                body_size=msg.body_size,
                body_truncated=msg.body_truncated,
                limit=limit,
                decode=self._decode,
            )
            if body.meta:
                for key, meta in body.meta.items():
                    capture[f"{side}_body_{key}"] = meta
            if body.flags:
                flags.update(f"{side}_{flag}" for flag in body.flags)
            if not body.present:
                return
            value, transfer_encoding = body.value, body.transfer_encoding or ""
        if masks and transfer_encoding == "json":
            mask_body(value, masks)
        target["body"] = value
        target["transfer_encoding"] = transfer_encoding

    # -- metadata ---------------------------------------------------------------------------------

    def _fill_capture(
        self, capture: dict[str, object], call: ApiCall, primary: Exchange, flags: set[str]
    ) -> None:
        other = call.upstream_leg if primary is call.client_leg else None
        if other is not None:
            capture["upstream_connection"] = self._flow(other).connection
            upstream_flags = {f.value for f in other.flags} - _NOT_PARTIAL
            if upstream_flags:
                capture["upstream_flags"] = sorted(upstream_flags)
        req, resp = primary.request, primary.response
        if req is not None and (not req.complete or req.gap):
            flags.update(_message_flags(req, "request"))
        if resp is not None and (not resp.complete or resp.gap):
            flags.update(_message_flags(resp, "response"))
        if flags:
            flags -= _NOT_PARTIAL
            capture["truncated"] = any(f in flags for f in _TRUNCATED)
            capture["gap"] = any(f in flags for f in _GAP)
            if flags:
                capture["flags"] = sorted(flags)
        else:
            capture["truncated"] = False
            capture["gap"] = False


def _message_flags(msg: HttpMessage, side: str) -> set[str]:
    """Flags implied by the message itself, in case the producer set the field but not the flag."""
    out: set[str] = set()
    if not msg.complete:
        out.add(f"{side}_incomplete")
    if msg.gap:
        out.add(f"{side}_gap")
    return out


def _kong_request_id(call: ApiCall, known: dict[int, HeaderLists]) -> str | None:
    """X-Kong-Request-Id of the first message carrying a non-blank one; `known` holds the header lists
    already made (by id of the message), which tell cheaply when a message has no such header."""
    for leg in (call.client_leg, call.upstream_leg):
        if leg is None:
            continue
        for msg in (leg.response, leg.request):
            if msg is None:
                continue
            lists = known.get(id(msg))
            if lists is not None:
                if _KONG_ID_HEADER not in lists:
                    continue
                if lists[_KONG_ID_HEADER][0].isascii():
                    found = ascii_first(lists, _KONG_ID_HEADER)
                    if found:
                        return found
                    continue  # blank
            value = msg.header(b"x-kong-request-id")
            if value and value.strip():
                return text(value.strip())
    return None
