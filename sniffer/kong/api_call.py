"""`ApiCall`: one API call as Moesif should see it, made of the HTTP exchanges that carried it.

On a Kong node one call crosses two TCP connections: the client leg (client -> Kong proxy port) and the
upstream leg (Kong -> service, carrying Kong's `X-Consumer-*` headers). The leg joiner pairs them; the
event builder reads an `ApiCall` and never needs to know how the pairing was done. A plain HTTP exchange
(no Kong involved, or joining disabled) is an `ApiCall` with `legs=Legs.SINGLE` and only `client_leg`.
"""

from __future__ import annotations

from enum import StrEnum

from reassembly.events import Exchange
from sniffer.headers import HeaderLists

__all__ = ["ApiCall", "Legs"]


class Legs(StrEnum):
    """Which legs of the call were seen; written to `metadata.capture.legs`."""

    SINGLE = "single"  # plain HTTP: one exchange, no Kong proxy port involved
    CLIENT_AND_UPSTREAM = "client+upstream"  # both legs seen and joined
    CLIENT_ONLY = "client"  # Kong answered itself (401/429/404/5xx), or the upstream leg was not seen
    UPSTREAM_ONLY = "upstream"  # the client leg is unreadable (TLS on 8443) or was not captured


class ApiCall:
    """One call. A plain class, not a dataclass: compiled (setup.py), its __init__ is native, where a
    dataclass keeps the interpreted one (measured ~4k instructions, one per event: 2.5 % of a replay)."""

    __slots__ = (
        "client_leg",
        "client_request_headers",
        "client_response_headers",
        "kong_request_id",
        "legs",
        "upstream_leg",
        "upstream_request_headers",
    )

    def __init__(
        self,
        *,
        client_leg: Exchange | None,
        upstream_leg: Exchange | None,
        legs: Legs,
        kong_request_id: str | None = None,
        client_request_headers: HeaderLists | None = None,
        client_response_headers: HeaderLists | None = None,
        upstream_request_headers: HeaderLists | None = None,
    ) -> None:
        self.client_leg = client_leg  # the exchange on the client's connection (for SINGLE: the exchange)
        self.upstream_leg = upstream_leg  # Kong's exchange with the service, when seen
        self.legs = legs
        self.kong_request_id = kong_request_id  # X-Kong-Request-Id when either leg carries it
        # The joiner's reading of the legs' headers (`sniffer.headers.header_lists`), handed on so that
        # each message's headers are read once: None where it did not read them, empty for a message
        # the leg does not have. Shared: only ever read.
        self.client_request_headers = client_request_headers
        self.client_response_headers = client_response_headers
        self.upstream_request_headers = upstream_request_headers

    def __repr__(self) -> str:
        return (
            f"ApiCall(legs={self.legs.value!r}, kong_request_id={self.kong_request_id!r}, "
            f"client_leg={self.client_leg!r}, upstream_leg={self.upstream_leg!r})"
        )

    @property
    def primary(self) -> Exchange:
        """The exchange whose request line, timing and response the event reports."""
        leg = self.client_leg if self.client_leg is not None else self.upstream_leg
        if leg is None:
            raise ValueError("an ApiCall has at least one leg")
        return leg
