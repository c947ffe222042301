"""User and company identification, the Kong plugin's order with moesif.md's deliberate fixes.

Over unmasked header mappings keyed by lowercased names: `identify` takes each header's first value,
`Identifier` (one per configuration, what the event builder uses) takes the value lists.
Order (reference section 5, moesif.md "Identification"):

user:    user_id_header -> x-consumer-custom-id -> x-consumer-username -> x-consumer-id
         -> token in the first present `authorization_header_name` (Bearer JWT claim, Basic user name,
            or a scheme-less JWT / base64 JSON) -> user_id_header in the *response* (plugin pass B)
company: company_id_header -> token claim `authorization_company_id_field`
         -> company_id_header in the response

Fixes over the plugin: schemes matched case-insensitively as the first word; JWT segments decoded as
base64url (padded or not) then standard base64; Basic user = text before the FIRST colon; claim paths
may be dotted (a flat key wins); only strings and integers (not booleans) become ids; the company claim
is read whenever a token is present, not only when no x-consumer-* header named the user (the plugin's
"JWT company beats the header" quirk is dropped: the header comes first, as moesif.md says).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import orjson

from sniffer.config import Config

__all__ = ["Identifier", "Identity", "claim_id", "decode_claims", "identify", "token_claims", "token_user"]

_CONSUMER_HEADERS: Final = ("x-consumer-custom-id", "x-consumer-username", "x-consumer-id")


@dataclass(frozen=True, slots=True)
class Identity:
    user_id: str | None = None
    company_id: str | None = None


def _b64decode(segment: str) -> bytes | None:
    """base64url with or without padding, then standard base64 (both strict about the alphabet)."""
    segment = segment.strip()
    padded = segment + "=" * (-len(segment) % 4)
    for alt in (b"-_", b"+/"):
        try:
            return base64.b64decode(padded.encode("ascii"), altchars=alt, validate=True)
        except (binascii.Error, ValueError, UnicodeEncodeError):
            continue
    return None


def decode_claims(segment: str) -> dict[str, object] | None:
    """The JSON object encoded in one base64(url) segment, or None."""
    raw = _b64decode(segment)
    if raw is None:
        return None
    try:
        claims = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return claims if isinstance(claims, dict) and claims else None


def _lookup(obj: dict[str, object], key: str) -> object | None:
    """The plugin adds a lowercased copy of every key, so a key matches exactly or by its lowercase."""
    if key in obj:
        return obj[key]
    for k, v in obj.items():
        if k.lower() == key:
            return v
    return None


def claim_id(claims: Mapping[str, object], field: str | None) -> str | None:
    """The id held by `field` (flat key first, then dotted path): strings as-is, integers in full."""
    if not field:
        return None
    value = _lookup(dict(claims), field)
    if value is None and "." in field:
        node: object = dict(claims)
        for part in field.split("."):
            if not isinstance(node, dict):
                node = None
                break
            node = _lookup(node, part)
        value = node
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return value.strip() or None
    return None


def _split_scheme(value: str) -> tuple[str, str]:
    scheme, _, rest = value.strip().partition(" ")
    return scheme.lower(), rest.strip()


def token_claims(value: str) -> dict[str, object] | None:
    """Claims of a Bearer JWT, or of a scheme-less JWT / base64 JSON value (plugin PR #66). Not Basic."""
    scheme, rest = _split_scheme(value)
    if scheme == "basic":
        return None
    if scheme == "bearer":
        parts = rest.split(".")
        # An opaque bearer token (no second segment) names nobody, as in the plugin.
        return decode_claims(parts[1]) if len(parts) > 1 else None
    # Anything else is read like the plugin does: the second dot-separated segment of the whole value
    # (so "Token a.b.c" and a bare JWT both work), else the whole value as base64 JSON.
    parts = value.strip().split(".")
    if len(parts) > 1:
        return decode_claims(parts[1])
    return decode_claims(value)


def _basic_user(value: str) -> str | None:
    scheme, rest = _split_scheme(value)
    if scheme != "basic":
        return None
    raw = _b64decode(rest)
    if raw is None:
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    user, colon, _ = text.partition(":")
    return user if colon and user else None


def token_user(value: str, field: str | None) -> str | None:
    """The user named by one token header value: Basic user name, or the claim `field`."""
    user = _basic_user(value)
    if user is not None:
        return user
    claims = token_claims(value)
    return claim_id(claims, field) if claims else None


def identify(
    request_headers: Mapping[str, str], response_headers: Mapping[str, str] | None, config: Config
) -> Identity:
    """User and company for one call. Headers: lowercased names -> first value, unmasked."""
    lists = {k: [v] for k, v in request_headers.items()}
    user, company = Identifier(config).identify(lists, {k: [v] for k, v in (response_headers or {}).items()})
    return Identity(user, company)


class Identifier:
    """`identify` for one configuration, over header lists (lowercased name -> values, unmasked).

    The header names are normalised once here, and what a token says is remembered per token value:
    a client sends the same Basic or JWT credential on every call, and decoding it costs more than the
    rest of identification together.
    """

    _TOKENS_MAX = 1024
    _TOKEN_MAX_CHARS = 4096  # longer tokens are decoded each time rather than kept

    def __init__(self, config: Config) -> None:
        self._user_header = _names(config.user_id_header)
        self._company_header = _names(config.company_id_header)
        # Every request header the header steps read: most requests carry none of them.
        self._named = frozenset((*self._user_header, *self._company_header, *_CONSUMER_HEADERS))
        self._token_names = config.authorization_header_name
        self._user_field = config.authorization_user_id_field
        self._company_field = config.authorization_company_id_field
        self._tokens: dict[str, tuple[str | None, str | None, str | None]] = {}
        # False: `with_response` never changes `from_request`'s answer (no id header configured).
        self.reads_response = bool(self._user_header or self._company_header)

    def identify(
        self, request: Mapping[str, list[str]], response: Mapping[str, list[str]]
    ) -> tuple[str | None, str | None]:
        """(user id, company id); a plain tuple, as this runs once per event."""
        user, company = self.from_request(request)
        return self.with_response(user, company, response)

    def from_request(self, request: Mapping[str, list[str]]) -> tuple[str | None, str | None]:
        """What the request alone says: the steps before the response's (see `with_response`)."""
        user = company = None
        if not self._named.isdisjoint(request):
            user = _first(request, self._user_header)
            if user is None:
                for name in _CONSUMER_HEADERS:
                    user = _first(request, (name,))
                    if user is not None:
                        break
            company = _first(request, self._company_header)
        for name in self._token_names:
            if name in request:
                # The first configured token header present, even if it then yields nothing (the plugin).
                value = request[name][0]
                basic_user, claim_user, claim_company = self._tokens.get(value) or self._token(value)
                if user is None:
                    user = basic_user if basic_user is not None else claim_user
                if company is None:
                    company = claim_company
                break
        return user, company

    def with_response(
        self, user: str | None, company: str | None, response: Mapping[str, list[str]]
    ) -> tuple[str | None, str | None]:
        """`from_request`'s answer completed by the response's headers (the plugin's pass B)."""
        if user is None and self._user_header:
            user = _first(response, self._user_header)
        if company is None and self._company_header:
            company = _first(response, self._company_header)
        return user, company

    def _token(self, value: str) -> tuple[str | None, str | None, str | None]:
        """(Basic user, user claim, company claim) of one token header value, remembered."""
        claims = token_claims(value)
        known = (
            _basic_user(value),
            claim_id(claims, self._user_field) if claims else None,
            claim_id(claims, self._company_field) if claims else None,
        )
        if len(value) <= self._TOKEN_MAX_CHARS:
            if len(self._tokens) >= self._TOKENS_MAX:
                self._tokens.clear()
            self._tokens[value] = known
        return known


def _names(configured: str | None) -> tuple[str, ...]:
    """The lookup names of a configured header: lowercased, and with `_` as `-` (nginx does both)."""
    if not configured:
        return ()
    name = configured.strip().lower()
    return (name, name.replace("_", "-")) if "_" in name else (name,)


def _first(headers: Mapping[str, list[str]], names: tuple[str, ...]) -> str | None:
    """The first value of the first of `names` present, stripped; None when absent or blank."""
    for name in names:
        values = headers.get(name)
        if values is not None:
            return values[0].strip() or None
    return None
