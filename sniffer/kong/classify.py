"""Which leg of a Kong-proxied call an HTTP exchange is: the client leg, the upstream leg, or plain HTTP.

Rules, first match wins (the Kong facts are from Kong 3.x `runloop/handler.lua` and its nginx template):

1. No Kong ports configured: every exchange is PLAIN (joining is off).
2. The server port is a Kong proxy port: CLIENT. The server address is remembered as a Kong host.
3. The request carries a header only Kong's proxy puts on an upstream request: UPSTREAM, from any
   address (the sender is then remembered as a Kong host). Those headers are
   - `X-Kong-Request-Id` (Kong >= 3.5 sends it upstream by default, `headers_upstream`), or
   - a `Via` whose value has a `kong/` token (Kong 3.x sets `Via: 1.1 kong/3.9.0` upstream).
   No address condition here on purpose: a gateway usually reaches its services from another address
   than the one clients connect to (another interface, another network), and a capture may hold only the
   upstream leg; neither address was then ever seen serving a Kong port.
3b. The response carries what Kong adds to every answer it sends a client: a `Via` with a `kong/` token
   (proxied calls) or `X-Kong-Proxy-Latency` / `X-Kong-Upstream-Latency` / `X-Kong-Response-Latency`
   (Kong's default `headers` setting): CLIENT, whatever the port. Kong proxies often listen on other
   ports than 8000/8443, and this finds them without configuration; the server is remembered as a
   Kong host. It comes after rule 3 because only the client leg's response passes through Kong.
4. The server port is one of the configured upstream ports: UPSTREAM.
5. The request comes from a Kong host and carries Kong's other upstream headers: any of
   `X-Consumer-ID/-Username/-Custom-ID`, `X-Credential-Identifier`, `X-Anonymous-Consumer` (set by the
   auth plugins), or all five proxy headers Kong's template sets on every request: `X-Forwarded-For`,
   `-Proto`, `-Host`, `-Port` and `X-Real-IP` (a generic reverse proxy rarely sets the full set): UPSTREAM.
   Older Kong (2.x) sends neither `Via` nor a request id upstream, so this is how its legs are found.
6. Anything else: PLAIN.

Header names are compared case-insensitively (`sniffer.headers` lowercases them, the same view the event
builder reads, so each message's headers are read once); when a header repeats, its first value counts.

Most exchanges on most hosts are plain HTTP, and every one of them is classified: `is_plain` answers for
them without decoding a header, from the raw header names it has already seen to be none of the names
the rules read (kept as written, in a bounded set), so one pass of set lookups over the names decides.
"""

from __future__ import annotations

from collections import OrderedDict
from enum import StrEnum
from typing import Final

from reassembly.events import Exchange, HttpMessage
from reassembly.stats import Stats
from sniffer.headers import HeaderLists, header_lists

__all__ = [
    "CONSUMER_HEADERS",
    "FORWARDED_HEADERS",
    "KONG_REQUEST_ID",
    "REQUEST_RULE_HEADERS",
    "RESPONSE_RULE_HEADERS",
    "LegClassifier",
    "LegKind",
    "has_kong_marks",
    "is_kong_response",
    "is_kong_via",
]

# Header names as `sniffer.headers` reads them (lowercase text); the raw-name sets below are their bytes.
KONG_REQUEST_ID: Final = "x-kong-request-id"
CONSUMER_HEADERS: Final = frozenset(
    {
        "x-consumer-id",
        "x-consumer-username",
        "x-consumer-custom-id",
        "x-credential-identifier",
        "x-anonymous-consumer",
    }
)
FORWARDED_HEADERS: Final = frozenset(
    {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-forwarded-port", "x-real-ip"}
)
# Addresses remembered as Kong hosts. A node has a handful; the cap only guards against a flood of
# spoofed headers turning this into an unbounded set.
MAX_KONG_HOSTS: Final = 1024
KONG_RESPONSE_HEADERS = frozenset(
    {"x-kong-proxy-latency", "x-kong-upstream-latency", "x-kong-response-latency"}
)
# Every header name a rule reads, per side, lowercased bytes as the raw names are compared: a message with
# none of them cannot be a Kong leg.
REQUEST_RULE_HEADERS: Final = frozenset(
    name.encode() for name in {KONG_REQUEST_ID, "via"} | CONSUMER_HEADERS | FORWARDED_HEADERS
)
RESPONSE_RULE_HEADERS: Final = frozenset(name.encode() for name in {"via"} | KONG_RESPONSE_HEADERS)
_KONG_RESPONSE_NAMES: Final = frozenset(name.encode() for name in KONG_RESPONSE_HEADERS)
# Raw header names remembered as read by a rule or not, per side and kind; each emptied when full.
MAX_OTHER_NAMES: Final = 4096


class LegKind(StrEnum):
    CLIENT = "client"
    UPSTREAM = "upstream"
    PLAIN = "plain"


def is_kong_response(message: HttpMessage) -> bool:
    """A response that went through Kong on its way to the client (rule 3b), from its raw headers."""
    for name, value in message.headers:
        lname = name.lower()
        if lname in _KONG_RESPONSE_NAMES or (lname == b"via" and b"kong/" in value.lower()):
            return True
    return False


def has_kong_marks(request: HttpMessage) -> bool:
    """Rule 3 from the raw headers: `X-Kong-Request-Id`, or a first `Via` naming `kong/` (what
    `KONG_REQUEST_ID in header_lists(...)` or `is_kong_via` says, without decoding; a raw name is
    lowercased only when its length could match)."""
    via_seen = False
    for name, value in request.headers:
        n = len(name)
        if n == 17:
            if name.lower() == b"x-kong-request-id":
                return True
        elif n == 3 and not via_seen and name.lower() == b"via":
            if b"kong/" in value.lower():
                return True
            via_seen = True  # only the first Via counts (`is_kong_via`)
    return False


def is_kong_via(values: list[str] | None) -> bool:
    """A first `Via` value with a `kong/<version>` element: `1.1 kong/3.9.0`, `1.1 lb, 1.1 kong/3.4.2`."""
    return values is not None and "kong/" in values[0].lower()


class LegClassifier:
    """Classifies exchanges and remembers which addresses are Kong hosts (bounded, oldest forgotten)."""

    def __init__(
        self,
        kong_ports: frozenset[int],
        upstream_ports: frozenset[int] = frozenset(),
        *,
        kong_hosts: frozenset[str] = frozenset(),
        stats: Stats | None = None,
    ) -> None:
        self.kong_ports = kong_ports
        self.upstream_ports = upstream_ports
        self.stats = stats if stats is not None else Stats()
        self._configured_hosts = kong_hosts
        self._learned_hosts: OrderedDict[str, None] = OrderedDict()
        # Raw header names (as sent) known to be read by no rule / by some rule, per side: bounded.
        self._names = (set[bytes](), set[bytes](), set[bytes](), set[bytes]())
        self._leg_ports = kong_ports | upstream_ports

    def is_plain(self, exchange: Exchange) -> bool:
        """True when `classify` would say PLAIN without looking further: no Kong or upstream port and no
        header any rule reads. False means "ask `classify`" (it may still say PLAIN)."""
        if not self.kong_ports:
            return True
        if exchange.server[1] in self._leg_ports:
            return False
        request, response = exchange.request, exchange.response
        if request is None:
            return True
        names = self._names
        # The usual answer: every raw name already known to be read by no rule (a plain loop: cheaper
        # than set.issuperset(map(...)) in Python and much cheaper compiled); _no_rule_header learns names
        # seen for the first time.
        other = names[0]
        headers = request.headers
        for name, _ in headers:
            if name not in other:
                if not _no_rule_header(headers, other, REQUEST_RULE_HEADERS, names[1]):
                    return False
                break
        if response is None:
            return True
        other = names[2]
        headers = response.headers
        for name, _ in headers:
            if name not in other:
                return _no_rule_header(headers, other, RESPONSE_RULE_HEADERS, names[3])
        return True

    def is_kong_host(self, ip: str) -> bool:
        return ip in self._configured_hosts or ip in self._learned_hosts

    def _learn(self, ip: str) -> None:
        hosts = self._learned_hosts
        if ip in hosts:
            hosts.move_to_end(ip)
            return
        hosts[ip] = None
        if len(hosts) > MAX_KONG_HOSTS:
            hosts.popitem(last=False)
            self.stats["evict_kong_host"] += 1

    def classify(self, exchange: Exchange, headers: HeaderLists | None = None) -> LegKind:
        """The leg `exchange` is; `headers` (`header_lists` of its request) saves a second read."""
        if not self.kong_ports:
            return LegKind.PLAIN
        if exchange.server[1] in self.kong_ports:
            self._learn(exchange.server[0])
            return LegKind.CLIENT
        request = exchange.request
        if request is None:
            return LegKind.UPSTREAM if exchange.server[1] in self.upstream_ports else LegKind.PLAIN
        # Only rule 5 needs the request's headers decoded: without `headers` (a capture worker asking
        # whether an exchange may be a leg: on Kong traffic every one is) rule 3 reads the raw headers,
        # and they are decoded only for a Kong host's request that reaches rule 5.
        if headers is None:
            marked = has_kong_marks(request)
        else:
            marked = KONG_REQUEST_ID in headers or is_kong_via(headers.get("via"))
        if marked:
            self._learn(exchange.client[0])
            return LegKind.UPSTREAM
        if exchange.response is not None and is_kong_response(exchange.response):
            self._learn(exchange.server[0])
            return LegKind.CLIENT
        if exchange.server[1] in self.upstream_ports:
            return LegKind.UPSTREAM
        if self.is_kong_host(exchange.client[0]):
            if headers is None:
                headers = header_lists(request.headers)
            if not CONSUMER_HEADERS.isdisjoint(headers) or FORWARDED_HEADERS.issubset(headers):
                return LegKind.UPSTREAM
        return LegKind.PLAIN


def _no_rule_header(
    headers: list[tuple[bytes, bytes]], other: set[bytes], rule: frozenset[bytes], known_rule: set[bytes]
) -> bool:
    """No header in `rule`. `other` and `known_rule` hold the raw names already known not to be in it
    and to be in it; names seen for the first time are learned."""
    for name, _ in headers:
        if name in known_rule:
            return False
    found = False
    for name, _ in headers:
        if name not in other:
            learn = other
            if name.lower() in rule:
                found, learn = True, known_rule
            if len(learn) >= MAX_OTHER_NAMES:
                learn.clear()
            learn.add(name)
    return not found
