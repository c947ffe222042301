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

import time
import uuid
from urllib.parse import urlsplit

from reassembly.events import Endpoint, Exchange, ExchangeFlag, HttpMessage, HttpRequest, HttpResponse
from sniffer.config import Config
from sniffer.kong.api_call import ApiCall
from sniffer.moesif.body import BodyCapture, capture_body
from sniffer.moesif.client_ip import client_ip
from sniffer.moesif.identify import identify
from sniffer.moesif.masks import header_mask_set, mask_body, mask_headers, mask_query

__all__ = ["IDENTITY_HEADERS", "PLUMBING_HEADERS", "EventBuilder", "iso_time", "transaction_id"]

# Headers Kong's auth plugins set on the upstream request (reference 5.3; x-credential-username is the
# pre-2.1 name of x-credential-identifier).
IDENTITY_HEADERS = frozenset({"x-credential-identifier", "x-credential-username", "x-anonymous-consumer"})
IDENTITY_PREFIX = "x-consumer-"
# Headers Kong adds upstream with proxy_set_header: never in the plugin's logged request headers.
PLUMBING_HEADERS = frozenset({"x-real-ip", "via", "x-kong-request-id"})
PLUMBING_PREFIX = "x-forwarded-"

_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://moesif-sniffer/transaction-id")
_TRUNCATED = {ExchangeFlag.REQUEST_INCOMPLETE, ExchangeFlag.RESPONSE_INCOMPLETE}
# The core cuts a body only beyond the size limit, so such a body is left out on purpose and reported
# as `*_body_omitted: over_limit`: the event is not partial, and these flags would only say so twice.
_NOT_PARTIAL = {ExchangeFlag.REQUEST_BODY_TRUNCATED.value, ExchangeFlag.RESPONSE_BODY_TRUNCATED.value}
_GAP = {ExchangeFlag.REQUEST_GAP, ExchangeFlag.RESPONSE_GAP}

HeaderLists = dict[str, list[str]]


def iso_time(ts: float) -> str:
    """ISO 8601 UTC, exactly three digits of milliseconds (truncated) and a Z."""
    ms = round(ts * 1_000_000) // 1000  # via microseconds: pcap times are exact in us, not in float ms
    sec, milli = divmod(ms, 1000)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(sec))}.{milli:03d}Z"


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _header_lists(headers: list[tuple[bytes, bytes]]) -> HeaderLists:
    out: HeaderLists = {}
    for name, value in headers:
        out.setdefault(name.decode("latin-1").lower(), []).append(_text(value))
    return out


def _render(headers: HeaderLists) -> dict[str, str | list[str]]:
    """Repeated headers joined with ", " (the API's form), except set-cookie which stays a list."""
    return {
        k: (v[0] if len(v) == 1 else v if k == "set-cookie" else ", ".join(v)) for k, v in headers.items()
    }


def _first(headers: HeaderLists) -> dict[str, str]:
    return {k: v[0] for k, v in headers.items()}


def _endpoint(ep: Endpoint) -> str:
    ip, port = ep
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _host(value: str) -> str:
    """Lowercased host without port; IPv6 literals keep (or get) their brackets."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        return value[: end + 1] if end > 0 else value
    if value.count(":") > 1:
        return f"[{value}]"
    return value.partition(":")[0]


def transaction_id(call: ApiCall) -> str:
    """X-Moesif-Transaction-Id when sent, else a UUID derived from where and when the request was seen."""
    for leg in (call.client_leg, call.upstream_leg):
        if leg is not None and leg.request is not None:
            sent = leg.request.header(b"x-moesif-transaction-id")
            if sent and sent.strip():
                text = _text(sent.strip())
                try:
                    return str(uuid.UUID(text))
                except ValueError:
                    return str(uuid.uuid5(_NAMESPACE, "header:" + text))
    primary = call.primary
    req = primary.request
    offset, ts = (req.stream_offset, req.ts_start) if req is not None else (-1, 0.0)
    key = f"{_endpoint(primary.client)}|{_endpoint(primary.server)}|{offset}|{round(ts * 1_000_000)}"
    return str(uuid.uuid5(_NAMESPACE, key))


class EventBuilder:
    """Builds Moesif events; holds the config-derived mask sets so `build` does no setup work."""

    def __init__(self, config: Config) -> None:
        self._config = config
        creds = config.mask_credential_headers
        self._req_header_masks = header_mask_set(config.request_header_masks, creds)
        self._resp_header_masks = header_mask_set(config.response_header_masks, creds)
        self._req_body_masks = frozenset(config.request_body_masks or config.request_masks)
        self._resp_body_masks = frozenset(config.response_body_masks or config.response_masks)
        self._query_masks = frozenset(config.request_query_masks)

    def build(self, call: ApiCall) -> dict[str, object] | None:
        """The event for `call`, or None for an orphan response (no request to report)."""
        primary = call.primary
        req = primary.request
        if req is None:
            return None
        upstream_primary = primary is not call.client_leg
        raw_up = _header_lists(req.headers) if upstream_primary else {}
        if upstream_primary:
            req_headers = self._upstream_request_headers(raw_up)
            uri = self._upstream_uri(req, raw_up, primary)
            ip = client_ip({k: ", ".join(v) for k, v in raw_up.items()}, None)
        else:
            req_headers = _header_lists(req.headers)
            ip = client_ip({k: ", ".join(v) for k, v in req_headers.items()}, primary.client[0])
            uri = self._client_uri(req, req_headers, primary)
            up_req = call.upstream_leg.request if call.upstream_leg is not None else None
            if up_req is not None:
                req_headers = self._with_identity(req_headers, _header_lists(up_req.headers))

        resp, resp_leg = self._response(call)
        resp_headers = _header_lists(resp.headers) if resp is not None else {}
        ident = identify(_first(req_headers), _first(resp_headers), self._config)

        flags: set[str] = {f.value for f in primary.flags}
        capture: dict[str, object] = {"legs": call.legs.value}
        request: dict[str, object] = {
            "time": iso_time(req.ts_start),
            "uri": uri,
            "verb": _text(req.method),
            "headers": _render(mask_headers(req_headers, self._req_header_masks)),
        }
        if ip is not None:
            request["ip_address"] = ip
        if self._config.api_version:
            request["api_version"] = self._config.api_version
        if not self._config.disable_capture_request_body:
            body = self._body(req, self._config.request_max_body_size_limit, self._req_body_masks)
            self._put_body(request, body, "request", capture, flags)

        event: dict[str, object] = {"request": request}
        if resp is not None:
            response: dict[str, object] = {
                "time": iso_time(resp.ts_end),
                "status": resp.status,
                "headers": _render(mask_headers(resp_headers, self._resp_header_masks)),
            }
            if not self._config.disable_capture_response_body:
                body = self._body(resp, self._config.response_max_body_size_limit, self._resp_body_masks)
                self._put_body(response, body, "response", capture, flags)
            event["response"] = response
            if resp_leg is not primary:
                flags.add("response_from_upstream")
        else:
            flags.add(ExchangeFlag.UNANSWERED.value)
        if ident.user_id is not None:
            event["user_id"] = ident.user_id
        if ident.company_id is not None:
            event["company_id"] = ident.company_id
        token = req_headers.get("x-credential-identifier")
        if token and token[0].strip() and "x-credential-identifier" not in self._req_header_masks:
            event["session_token"] = token[0].strip()
        event["direction"] = "Incoming"
        event["weight"] = 1
        self._fill_capture(capture, call, primary, flags)
        event["metadata"] = {"capture": capture}
        event["transaction_id"] = transaction_id(call)
        return event

    # -- request side -------------------------------------------------------------------------------

    @staticmethod
    def _with_identity(client: HeaderLists, upstream: HeaderLists) -> HeaderLists:
        """Client headers with the identity headers replaced by what Kong sent upstream (authoritative:
        auth plugins clear the ones a client may have forged)."""
        merged = {k: v for k, v in client.items() if not _is_identity(k)}
        merged.update((k, v) for k, v in upstream.items() if _is_identity(k))
        return merged

    @staticmethod
    def _upstream_request_headers(raw: HeaderLists) -> HeaderLists:
        """The upstream request without Kong's proxy plumbing; Host as the client sent it when known."""
        out = {k: v for k, v in raw.items() if not (k.startswith(PLUMBING_PREFIX) or k in PLUMBING_HEADERS)}
        fwd_host = raw.get("x-forwarded-host")
        if fwd_host:
            out["host"] = [fwd_host[0]]
        return out

    def _client_uri(self, req: HttpRequest, headers: HeaderLists, leg: Exchange) -> str:
        target = _text(req.target)
        host_header = headers.get("host")
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
        path, _, query = _text(req.target).partition("?")
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

    def _body(self, msg: HttpMessage, limit: int, masks: frozenset[str]) -> BodyCapture:
        body = capture_body(
            msg.body,
            headers=msg.headers,
            body_size=msg.body_size,
            body_truncated=msg.body_truncated,
            limit=limit,
            decode=not self._config.disable_gzip_payload_decompression,
        )
        if body.present and body.transfer_encoding == "json":
            mask_body(body.value, masks)
        return body

    @staticmethod
    def _put_body(
        target: dict[str, object], body: BodyCapture, side: str, capture: dict[str, object], flags: set[str]
    ) -> None:
        if body.present:
            target["body"] = body.value
            target["transfer_encoding"] = body.transfer_encoding
        for key, value in body.meta.items():
            capture[f"{side}_body_{key}"] = value
        flags.update(f"{side}_{flag}" for flag in body.flags)

    # -- metadata ---------------------------------------------------------------------------------

    @staticmethod
    def _fill_capture(capture: dict[str, object], call: ApiCall, primary: Exchange, flags: set[str]) -> None:
        kong_id = call.kong_request_id or _kong_request_id(call)
        if kong_id:
            capture["kong_request_id"] = kong_id
        capture["connection"] = f"{_endpoint(primary.client)} -> {_endpoint(primary.server)}"
        capture["client"] = _endpoint(primary.client)
        capture["server"] = _endpoint(primary.server)
        other = call.upstream_leg if primary is call.client_leg else None
        if other is not None:
            capture["upstream_connection"] = f"{_endpoint(other.client)} -> {_endpoint(other.server)}"
            upstream_flags = {f.value for f in other.flags} - _NOT_PARTIAL
            if upstream_flags:
                capture["upstream_flags"] = sorted(upstream_flags)
        flags.update(_message_flags(primary.request, "request"))
        flags.update(_message_flags(primary.response, "response"))
        flags -= _NOT_PARTIAL
        capture["truncated"] = any(f in flags for f in _TRUNCATED)
        capture["gap"] = any(f in flags for f in _GAP)
        if flags:
            capture["flags"] = sorted(flags)


def _is_identity(name: str) -> bool:
    return name.startswith(IDENTITY_PREFIX) or name in IDENTITY_HEADERS


def _message_flags(msg: HttpMessage | None, side: str) -> set[str]:
    """Flags implied by the message itself, in case the producer set the field but not the flag."""
    out: set[str] = set()
    if msg is not None:
        if not msg.complete:
            out.add(f"{side}_incomplete")
        if msg.gap:
            out.add(f"{side}_gap")
    return out


def _kong_request_id(call: ApiCall) -> str | None:
    for leg in (call.client_leg, call.upstream_leg):
        if leg is None:
            continue
        for msg in (leg.response, leg.request):
            if msg is not None:
                value = msg.header(b"x-kong-request-id")
                if value and value.strip():
                    return _text(value.strip())
    return None
