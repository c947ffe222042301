"""`LegJoiner`: pairs Kong's client leg and upstream leg of each API call into one `ApiCall`.

Sans-IO: exchanges go in as the core completes them, `ApiCall`s come out; the only clock is the capture
time carried by the exchanges and passed to `advance`.

Theory of operation. The upstream leg lies inside the client leg in time (Kong reads the client's request,
calls the service, then answers), so it usually completes first and waits here for its client leg;
either order is handled. Two legs are one call when
- both carry the same `X-Kong-Request-Id` (the upstream request's header, the client response's header);
- otherwise, when the request ids cannot tell (one or both legs lack one), when all of these hold:
  same method; the client's path equals the upstream's `X-Forwarded-Path`, or, without it, the upstream
  path is the client path with `X-Forwarded-Prefix` stripped (Kong's strip_path); the last
  `X-Forwarded-For` entry (else `X-Real-IP`) is the client leg's peer address; `X-Forwarded-Port` is the
  port the client connected to; end-to-end headers Kong forwards untouched (user agent, content type)
  are equal where both legs have them, and a credential the upstream leg carries (`Authorization`,
  `apikey`, `Cookie`) is on the client leg too, equal; and time nesting: the upstream request starts
  after the client request started and the upstream response ends before the client response ends.
  Among several candidates (many client connections share few upstream keep-alive connections, and
  identical calls overlap) a client leg takes the upstream leg inside it that started first: legs
  arrive in end order, so a later client leg could take only upstream legs that started after it did,
  and the earliest start is the one it cannot (taking the closest ends instead once left one of two
  identical overlapping calls with nothing). An upstream leg waiting for its client leg takes the
  tightest fit in time.
A leg waits `wait_s` of capture time for its partner, then goes out alone, flagged `Legs.CLIENT_ONLY` or
`Legs.UPSTREAM_ONLY`. A client leg Kong answered itself (a 4xx with `X-Kong-Response-Latency` or
`Server: kong/...` and no `Via: kong`) has no upstream leg and goes out at once. A leg whose partner
already went out alone, known by its request id, is dropped and counted (`drop_leg_late_*`), so a call
is never reported twice. Memory is bounded by a count and a byte budget of pending legs; when either is
hit the oldest pending leg goes out alone early and `evict_leg_*` counts it.

Limitation: without request ids, a client leg that ends more than `wait_s` after its upstream leg (a slow
client draining a large buffered response) yields two partial events instead of one joined event.
"""

from __future__ import annotations

import functools
import ipaddress
from collections import OrderedDict
from collections.abc import Collection
from typing import Final, TypeVar

from reassembly.events import Exchange, body_bytes, exchange_end
from reassembly.stats import Stats
from sniffer.headers import HeaderLists, header_lists, text
from sniffer.kong.api_call import ApiCall, Legs
from sniffer.kong.classify import KONG_REQUEST_ID, LegClassifier, LegKind, is_kong_via
from sniffer.kong.leg_index import EndOrdered

__all__ = ["DEFAULT_MAX_PENDING_BYTES", "DEFAULT_MAX_PENDING_LEGS", "DEFAULT_WAIT_S", "LegJoiner"]

K = TypeVar("K")

DEFAULT_WAIT_S: Final = 5.0
# Legs normally wait microseconds to milliseconds. The caps only bite when one leg is not captured at all
# (e.g. 2,000 calls/s for wait_s = 5 s is 10,000 pending client legs).
DEFAULT_MAX_PENDING_LEGS: Final = 20_000
DEFAULT_MAX_PENDING_BYTES: Final = 256 << 20
# Request ids of calls that went out with one leg, to drop their late partner: a few minutes at 100 calls/s.
MAX_RECENT_IDS: Final = 32_768
# Capture timestamps of the two legs may come from different interfaces; allow this much disagreement.
NEST_SLACK_S: Final = 0.0005
# Headers Kong passes from the client to the service untouched (unless a plugin rewrites them): where both
# legs have one, the values must be equal. Kong may remove credentials (hide_credentials) but never adds
# them, so a credential on the upstream leg must also be on the client leg.
END_TO_END: Final = ("user-agent", "content-type")
CREDENTIALS: Final = ("authorization", "apikey", "x-api-key", "cookie")
_INF: Final = float("inf")
SLACK_PENALTY: Final = 100.0  # a leg that nests only by NEST_SLACK_S ranks behind those that nest
PATH_PENALTY: Final = 1_000.0  # a strip_path/suffix path match ranks behind an exact one
QUERY_PENALTY: Final = 10_000.0  # different query strings rank behind everything else
# Counter names per leg kind, made once (formatting a StrEnum member costs a Python-level call per leg).
_LEGS_STAT: Final = {kind: f"kong_{kind.value}_legs" for kind in LegKind}


class _Leg:
    """One leg waiting to be joined, with what the join compares. A plain class, not a dataclass: compiled,
    its __init__ is native (a dataclass's stays the interpreted one, ~4k instructions per leg). Legs
    compare by identity."""

    __slots__ = (
        "deadline",
        "end",
        "ex",
        "headers",
        "key",
        "kind",
        "method",
        "path",
        "query",
        "resp_headers",
        "rid",
        "seq",
        "size",
        "start",
    )

    def __init__(
        self,
        ex: Exchange,
        kind: LegKind,
        headers: HeaderLists,
        resp_headers: HeaderLists,
        rid: str | None,
        method: bytes,
        path: str,
        query: str,
        key: tuple[bytes, str],
        start: float,
        end: float,
        size: int,
    ) -> None:
        self.ex = ex
        self.kind = kind
        # request headers (`sniffer.headers`; where a name repeats, its first value counts)
        self.headers = headers
        self.resp_headers = resp_headers  # the same for the response (client legs only; else empty)
        self.rid = rid
        self.method = method
        self.path = path
        self.query = query
        self.key = key  # (method, last segment of the path the client asked for)
        self.start = start
        self.end = end
        self.size = size
        self.seq = 0
        self.deadline = 0.0


def _split_target(target: str) -> tuple[str, str]:
    if not target.startswith("/"):
        scheme = target.find("://")
        if scheme >= 0:  # absolute form: drop scheme and authority
            slash = target.find("/", scheme + 3)
            target = target[slash:] if slash >= 0 else "/"
    path, _, query = target.partition("?")
    return path, query


def _tail(path: str) -> str:
    return path.rstrip("/").rpartition("/")[2]


def _first(headers: HeaderLists, name: str) -> str | None:
    values = headers.get(name)
    return values[0] if values is not None else None


@functools.lru_cache(maxsize=4096)
def _norm_ip(address: str) -> str:
    address = address.strip().strip("[]")
    try:
        return ipaddress.ip_address(address).compressed
    except ValueError:
        return address


def _path_fits(client_path: str, upstream_path: str, prefix: str | None) -> bool:
    if prefix is not None:
        if not client_path.startswith(prefix):
            return False
        rest = "/" + client_path[len(prefix) :].lstrip("/")
        return rest == "/" or upstream_path.endswith(rest)
    return client_path.endswith(upstream_path) or upstream_path.endswith(client_path)


def _nests(c: _Leg, u: _Leg) -> bool:
    """`u` lies inside `c` in time, as an upstream leg inside its client leg (the legs' capture times
    may disagree by NEST_SLACK_S); the ends are only compared when both legs were answered."""
    return u.start >= c.start - NEST_SLACK_S and (
        c.ex.response is None or u.ex.response is None or u.end <= c.end + NEST_SLACK_S
    )


def _fit(c: _Leg, u: _Leg, *, for_client: bool) -> float | None:
    """How well `u` fits inside `c` as its upstream leg (lower is better); None: it cannot be.
    `for_client`: ranks the upstream legs a client leg may take (see below); else how tightly `u` fits
    inside `c`, to rank the client legs an upstream leg may go to."""
    if c.method != u.method or (c.rid is not None and u.rid is not None and c.rid != u.rid):
        return None
    if not _nests(c, u):  # the cheapest test that tells identical concurrent calls apart
        return None
    cu, uh, ch = c.ex, u.headers, c.headers
    penalty = 0.0
    fwd_path = _first(uh, "x-forwarded-path")
    if fwd_path is not None:
        if fwd_path != c.path and fwd_path != _first(ch, "x-forwarded-path"):
            return None
    elif u.path != c.path:
        if not _path_fits(c.path, u.path, _first(uh, "x-forwarded-prefix")):
            return None
        penalty += PATH_PENALTY
    if u.query != c.query:
        penalty += QUERY_PENALTY
    peer = _first(uh, "x-forwarded-for") or _first(uh, "x-real-ip")
    if peer is not None and _norm_ip(peer.rpartition(",")[2]) != _norm_ip(cu.client[0]):
        return None
    port = _first(uh, "x-forwarded-port")
    if port is not None and port.strip() != str(cu.server[1]) and port != _first(ch, "x-forwarded-port"):
        return None
    for name in END_TO_END:
        a, b = _first(ch, name), _first(uh, name)
        if a is not None and b is not None and a != b:
            return None
    for name in CREDENTIALS:
        b = _first(uh, name)
        if b is not None and _first(ch, name) != b:
            return None
    late = c.end - u.end
    if late < 0.0 and (c.ex.response is None or u.ex.response is None):
        late = 0.0  # ends not compared (`_nests`)
    early = u.start - c.start
    if for_client:
        # Client legs come in end order (`capture.time_merge`), so every upstream leg that may be this
        # one's is here, and any later client leg ends after all of them: which of them it can take then
        # depends on their starts alone. The earliest-starting leg inside this one is the one fewest later
        # client legs could take; taking it joins as many calls as can be (two identical concurrent calls,
        # where the closest ends would strand the other call). A leg that only nests by the clocks' slack
        # (starting a little before the client leg, or ending a little after) ranks behind one that nests.
        return penalty + (SLACK_PENALTY if early < 0.0 or late < 0.0 else 0.0) + early
    # How far each end is from the other leg's (the slack as above).
    return penalty + abs(early) + abs(late)


def _kong_answered(leg: _Leg) -> bool:
    """Kong made this response itself (auth failure, rate limit, no route): no upstream leg will come."""
    resp = leg.ex.response
    if resp is None or resp.status >= 500:  # 502/504 follow an upstream attempt: wait for that leg
        return False
    h = leg.resp_headers
    if is_kong_via(h.get("via")):
        return False
    return "x-kong-response-latency" in h or (_first(h, "server") or "").lower().startswith("kong/")


class LegJoiner:
    """Client legs + upstream legs in, one `ApiCall` per API call out. Not thread-safe."""

    def __init__(
        self,
        kong_ports: Collection[int],
        upstream_ports: Collection[int] = frozenset(),
        *,
        wait_s: float = DEFAULT_WAIT_S,
        stats: Stats | None = None,
        kong_hosts: frozenset[str] = frozenset(),
        max_pending: int = DEFAULT_MAX_PENDING_LEGS,
        max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES,
    ) -> None:
        self.stats = stats if stats is not None else Stats()
        self.classifier = LegClassifier(
            frozenset(kong_ports),
            frozenset(upstream_ports),
            kong_hosts=frozenset(kong_hosts),
            stats=self.stats,
        )
        self.wait_s = wait_s
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        self._now = 0.0
        self._seq = 0
        self._bytes = 0
        # Pending legs per kind, in arrival order, which is deadline order (deadline = arrival now + wait).
        self._pending_client: OrderedDict[int, _Leg] = OrderedDict()
        self._pending_upstream: OrderedDict[int, _Leg] = OrderedDict()
        self._pending: dict[LegKind, OrderedDict[int, _Leg]] = {
            LegKind.CLIENT: self._pending_client,
            LegKind.UPSTREAM: self._pending_upstream,
        }
        self._by_rid: dict[LegKind, dict[str, list[_Leg]]] = {LegKind.CLIENT: {}, LegKind.UPSTREAM: {}}
        # Pending legs per (method, path) key, in end order (leg_index: a new leg reads only those whose
        # end allows it to nest).
        self._by_key: dict[LegKind, dict[tuple[bytes, str], EndOrdered[_Leg]]] = {
            LegKind.CLIENT: {},
            LegKind.UPSTREAM: {},
        }
        # The same, for the legs without a request id only: a leg with one can only join its namesake
        # or a leg without one (`_fit`), and on a busy gateway the other legs pending under one key (same
        # method and path) may be thousands, each with its own id.
        self._by_key_no_rid: dict[LegKind, dict[tuple[bytes, str], EndOrdered[_Leg]]] = {
            LegKind.CLIENT: {},
            LegKind.UPSTREAM: {},
        }
        self._gone_alone: OrderedDict[str, LegKind] = OrderedDict()  # request id -> kind of the leg sent

    @property
    def pending(self) -> int:
        return len(self._pending[LegKind.CLIENT]) + len(self._pending[LegKind.UPSTREAM])

    def feed(self, exchange: Exchange) -> list[ApiCall]:
        """One completed exchange; returns the calls that are now complete (and any that timed out)."""
        if self.classifier.is_plain(exchange):
            # The common case on most hosts, kept short: no header parsed, no leg made.
            resp = exchange.response
            end = resp.ts_end if resp is not None else exchange.request.ts_end  # type: ignore[union-attr]
            if self._pending_client or self._pending_upstream:
                out = self._expire(max(self._now, end))
            else:
                out = []
                if end > self._now:
                    self._now = end
            self.stats["kong_plain"] += 1
            out.append(ApiCall(client_leg=exchange, upstream_leg=None, legs=Legs.SINGLE))
            return out
        start, end = self._times(exchange)
        out = self._expire(max(self._now, end))
        request = exchange.request
        headers = header_lists(request.headers) if request is not None else {}
        kind = self.classifier.classify(exchange, headers)
        if kind is LegKind.PLAIN:
            self.stats["kong_plain"] += 1
            out.append(ApiCall(client_leg=exchange, upstream_leg=None, legs=Legs.SINGLE))
            return out
        leg = self._leg(exchange, kind, headers, start, end)
        self.stats[_LEGS_STAT[kind]] += 1
        if leg.rid is not None and self._gone_alone.get(leg.rid) not in (None, kind):
            self.stats[f"drop_leg_late_{kind}"] += 1  # its partner already went out as the whole call
            return out
        if kind is LegKind.CLIENT:
            self._feed_client(leg, out)
        else:
            self._feed_upstream(leg, out)
        return out

    def advance(self, ts: float) -> list[ApiCall]:
        """Capture time reached `ts`: legs whose partner did not come within `wait_s` go out alone."""
        return self._expire(ts)

    def close(self) -> list[ApiCall]:
        """End of input: every pending leg goes out alone."""
        out: list[ApiCall] = []
        legs = [*self._pending[LegKind.CLIENT].values(), *self._pending[LegKind.UPSTREAM].values()]
        for leg in sorted(legs, key=lambda x: x.seq):
            self._remove(leg)
            out.append(self._alone(leg))
        return out

    # -- internals ---------------------------------------------------------------------------------------
    @staticmethod
    def _times(ex: Exchange) -> tuple[float, float]:
        req, resp = ex.request, ex.response
        start = req.ts_start if req is not None else (resp.ts_start if resp is not None else 0.0)
        return start, exchange_end(ex)

    def _leg(self, ex: Exchange, kind: LegKind, headers: HeaderLists, start: float, end: float) -> _Leg:
        req, resp = ex.request, ex.response
        resp_headers = header_lists(resp.headers) if kind is LegKind.CLIENT and resp is not None else {}
        raw_rid = _first(resp_headers if kind is LegKind.CLIENT else headers, KONG_REQUEST_ID)
        rid = (raw_rid.strip() or None) if raw_rid is not None else None
        method = req.method if req is not None else b""
        path, query = _split_target(text(req.target)) if req is not None else ("", "")
        forwarded = _first(headers, "x-forwarded-path") if kind is LegKind.UPSTREAM else None
        seen = forwarded if forwarded is not None else path
        return _Leg(
            ex,
            kind,
            headers,
            resp_headers,
            rid,
            method,
            path,
            query,
            (method, _tail(seen)),
            start,
            end,
            body_bytes(ex),
        )

    def _feed_client(self, c: _Leg, out: list[ApiCall]) -> None:
        if c.ex.request is None and c.rid is None:
            out.append(self._alone(c))  # an orphan response: nothing to join it by
            return
        answered = _kong_answered(c)
        if answered:
            # No upstream leg exists; only a leg with this very request id may claim it (it never should).
            same = self._by_rid[LegKind.UPSTREAM].get(c.rid, []) if c.rid is not None else []
            u = self._best(c, list(same), client_side=True)
        else:
            u = self._best(c, self._candidates(c, LegKind.UPSTREAM), client_side=True)
        if u is not None:
            self._remove(u)
            out.append(self._joined(c, u))
        elif answered:
            self.stats["kong_answered_by_gateway"] += 1
            out.append(self._alone(c))
        else:
            self._add(c, out)

    def _feed_upstream(self, u: _Leg, out: list[ApiCall]) -> None:
        if u.ex.request is None:
            out.append(self._alone(u))
            return
        c = self._best(u, self._candidates(u, LegKind.CLIENT), client_side=False)
        if c is not None:
            self._remove(c)
            out.append(self._joined(c, u))
        else:
            self._add(u, out)

    def _candidates(self, leg: _Leg, other: LegKind) -> list[_Leg]:
        if leg.rid is not None:
            same = self._by_rid[other].get(leg.rid)
            if same:
                return list(same)
            index = self._by_key_no_rid[other]  # a leg with another id can never fit this one
        else:
            index = self._by_key[other]
        # The ends a partner may have (see `_nests`): an upstream leg ends after its client leg began and,
        # both answered, before the client leg ended; a client leg, both answered, after the upstream leg.
        answered = leg.ex.response is not None
        if other is LegKind.UPSTREAM:
            lo, hi = leg.start - NEST_SLACK_S, (leg.end + NEST_SLACK_S if answered else _INF)
        else:
            lo, hi = (leg.end - NEST_SLACK_S if answered else -_INF), _INF
        same_key = index.get(leg.key)
        found = same_key.window(lo, hi) if same_key is not None else []
        if other is LegKind.UPSTREAM and leg.key[1]:
            stripped = index.get((leg.method, ""))  # upstream legs whose whole path was stripped
            if stripped is not None:
                found += stripped.window(lo, hi)
        elif other is LegKind.CLIENT and not leg.key[1] and "x-forwarded-path" not in leg.headers:
            found = [
                c
                for c in self._pending[LegKind.CLIENT].values()
                if c.method == leg.method and (leg.rid is None or c.rid is None)
            ]
        return found

    @staticmethod
    def _best(leg: _Leg, candidates: list[_Leg], *, client_side: bool) -> _Leg | None:
        best, best_fit = None, 0.0
        for other in candidates:
            c, u = (leg, other) if client_side else (other, leg)
            fit = _fit(c, u, for_client=client_side)
            if fit is None:
                if c.rid is None or c.rid != u.rid:
                    continue
                fit = QUERY_PENALTY * 10  # same request id: the legs belong together whatever else differs
            if best is None or fit < best_fit:
                best, best_fit = other, fit
        return best

    def _joined(self, c: _Leg, u: _Leg) -> ApiCall:
        same_rid = c.rid is not None and c.rid == u.rid
        self.stats["kong_join_request_id" if same_rid else "kong_join_timing"] += 1
        return ApiCall(
            client_leg=c.ex,
            upstream_leg=u.ex,
            legs=Legs.CLIENT_AND_UPSTREAM,
            kong_request_id=c.rid or u.rid,
            client_request_headers=c.headers,
            client_response_headers=c.resp_headers,
            upstream_request_headers=u.headers,
        )

    def _alone(self, leg: _Leg) -> ApiCall:
        if leg.rid is not None:
            gone = self._gone_alone
            gone[leg.rid] = leg.kind
            if len(gone) > MAX_RECENT_IDS:
                gone.popitem(last=False)
        if leg.kind is LegKind.CLIENT:
            self.stats["kong_client_only"] += 1
            return ApiCall(
                client_leg=leg.ex,
                upstream_leg=None,
                legs=Legs.CLIENT_ONLY,
                kong_request_id=leg.rid,
                client_request_headers=leg.headers,
                client_response_headers=leg.resp_headers,
            )
        self.stats["kong_upstream_only"] += 1
        return ApiCall(
            client_leg=None,
            upstream_leg=leg.ex,
            legs=Legs.UPSTREAM_ONLY,
            kong_request_id=leg.rid,
            upstream_request_headers=leg.headers,
        )

    def _add(self, leg: _Leg, out: list[ApiCall]) -> None:
        self._now = max(self._now, leg.end)
        self._seq += 1
        leg.seq, leg.deadline = self._seq, self._now + self.wait_s
        pending = self._pending[leg.kind]
        pending[leg.seq] = leg
        answered = leg.ex.response is not None
        if leg.rid is not None:
            self._by_rid[leg.kind].setdefault(leg.rid, []).append(leg)
        else:
            _ordered(self._by_key_no_rid[leg.kind], leg.key).add(leg, leg.end, answered)
        _ordered(self._by_key[leg.kind], leg.key).add(leg, leg.end, answered)
        self._bytes += leg.size
        while self.pending > self.max_pending or (self._bytes > self.max_pending_bytes and self.pending > 1):
            oldest = min((next(iter(p.values())) for p in self._pending.values() if p), key=lambda x: x.seq)
            self.stats[f"evict_leg_{oldest.kind}"] += 1
            self._remove(oldest)
            out.append(self._alone(oldest))

    def _remove(self, leg: _Leg) -> None:
        del self._pending[leg.kind][leg.seq]
        self._bytes -= leg.size
        if leg.rid is not None:
            _discard(self._by_rid[leg.kind], leg.rid, leg)
        else:
            _unorder(self._by_key_no_rid[leg.kind], leg)
        _unorder(self._by_key[leg.kind], leg)

    def _expire(self, ts: float) -> list[ApiCall]:
        self._now = max(self._now, ts)
        out: list[ApiCall] = []
        for pending in self._pending.values():
            while pending:
                leg = next(iter(pending.values()))
                if leg.deadline > self._now:
                    break
                self._remove(leg)
                out.append(self._alone(leg))
        return out


def _ordered(index: dict[tuple[bytes, str], EndOrdered[_Leg]], key: tuple[bytes, str]) -> EndOrdered[_Leg]:
    bucket = index.get(key)
    if bucket is None:
        bucket = index[key] = EndOrdered()
    return bucket


def _unorder(index: dict[tuple[bytes, str], EndOrdered[_Leg]], leg: _Leg) -> None:
    bucket = index[leg.key]
    bucket.remove(leg, leg.end, leg.ex.response is not None)
    if not bucket:
        del index[leg.key]


def _discard(index: dict[K, list[_Leg]], key: K, leg: _Leg) -> None:
    bucket = index.get(key)
    if bucket is None:
        return
    # Not contextlib.suppress: an interpreted context manager per removed leg (measured ~3k instructions).
    try:  # noqa: SIM105
        bucket.remove(leg)  # legs compare by identity: one C-level scan
    except ValueError:
        pass
    if not bucket:
        del index[key]
