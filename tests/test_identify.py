"""Identification: every precedence step of the plugin, and each deliberate difference in moesif.md."""

from __future__ import annotations

import base64
from dataclasses import replace

import orjson
import pytest

from sniffer.config import Config
from sniffer.moesif.identify import Identifier, Identity, decode_claims, identify

BASE = Config()


def b64url(raw: bytes, pad: bool = False) -> str:
    text = base64.urlsafe_b64encode(raw).decode()
    return text if pad else text.rstrip("=")


HEADER = b64url(b'{"alg":"HS256","typ":"JWT"}')


def jwt(claims: dict[str, object], *, pad: bool = False, std: bool = False) -> str:
    payload = orjson.dumps(claims)
    seg = base64.b64encode(payload).decode() if std else b64url(payload, pad)
    return f"{HEADER}.{seg}.c2lnbmF0dXJl"


def basic(userpass: str) -> str:
    return base64.b64encode(userpass.encode()).decode()


# Claims whose base64url form contains '-' and '_' (the plugin's decoder garbles those).
URL_CLAIMS = {"sub": "ü>>?~~?", "org": "acme"}
assert any(c in b64url(orjson.dumps(URL_CLAIMS)) for c in "-_")
STD_CLAIMS = {"sub": "std>>?~user"}
assert any(c in base64.b64encode(orjson.dumps(STD_CLAIMS)).decode() for c in "+/")

CONSUMERS = {"x-consumer-custom-id": "custom", "x-consumer-username": "uname", "x-consumer-id": "uuid-1"}

CASES: list[tuple[str, dict[str, str], dict[str, object], Identity]] = [
    # --- user precedence: user_id_header > custom-id > username > id > token > response header
    (
        "user_id_header wins over everything",
        {"x-user": "hdr-user", **CONSUMERS, "authorization": "Bearer " + jwt({"sub": "jwt-user"})},
        {"user_id_header": "X-User"},
        Identity("hdr-user"),
    ),
    ("custom id next", {**CONSUMERS}, {"user_id_header": "x-user"}, Identity("custom")),
    (
        "username next",
        {"x-consumer-username": "uname", "x-consumer-id": "uuid-1"},
        {},
        Identity("uname"),
    ),
    ("consumer id next", {"x-consumer-id": "uuid-1"}, {}, Identity("uuid-1")),
    (
        "consumer beats token",
        {"x-consumer-id": "uuid-1", "authorization": "Bearer " + jwt({"sub": "jwt-user"})},
        {},
        Identity("uuid-1"),
    ),
    ("bearer jwt sub", {"authorization": "Bearer " + jwt({"sub": "jwt-user"})}, {}, Identity("jwt-user")),
    ("blank header is skipped", {"x-consumer-custom-id": "  ", "x-consumer-id": "id2"}, {}, Identity("id2")),
    ("no identity at all", {"accept": "*/*"}, {}, Identity()),
    # --- schemes case-insensitive, first word
    ("lowercase bearer", {"authorization": "bearer " + jwt({"sub": "u1"})}, {}, Identity("u1")),
    ("upper BEARER", {"authorization": "BEARER " + jwt({"sub": "u1"})}, {}, Identity("u1")),
    ("upper BASIC", {"authorization": "BASIC " + basic("alice:pw")}, {}, Identity("alice")),
    ("basic", {"authorization": "Basic " + basic("alice:pw")}, {}, Identity("alice")),
    # --- Basic: user before the FIRST colon
    ("basic first colon", {"authorization": "Basic " + basic("bob:pa:ss:word")}, {}, Identity("bob")),
    ("basic no colon", {"authorization": "Basic " + basic("bobonly")}, {}, Identity()),
    ("basic empty user", {"authorization": "Basic " + basic(":pw")}, {}, Identity()),
    ("basic garbage", {"authorization": "Basic %%%"}, {}, Identity()),
    # --- JWT decoding: base64url padded or not, then standard base64
    ("base64url unpadded", {"authorization": "Bearer " + jwt(URL_CLAIMS)}, {}, Identity("ü>>?~~?")),
    ("base64url padded", {"authorization": "Bearer " + jwt(URL_CLAIMS, pad=True)}, {}, Identity("ü>>?~~?")),
    (
        "standard base64",
        {"authorization": "Bearer " + jwt(STD_CLAIMS, std=True)},
        {},
        Identity("std>>?~user"),
    ),
    ("opaque bearer token", {"authorization": "Bearer 2YotnFZFEjr1zCsicMWpAA"}, {}, Identity()),
    ("bearer garbage payload", {"authorization": "Bearer aaa.!!!.ccc"}, {}, Identity()),
    (
        "bearer payload not an object",
        {"authorization": "Bearer x." + b64url(b"[1,2]") + ".y"},
        {},
        Identity(),
    ),
    # --- scheme-less values, as the plugin (PR #66)
    ("raw jwt without scheme", {"authorization": jwt({"sub": "raw"})}, {}, Identity("raw")),
    (
        "base64 json api key",
        {"authorization": base64.b64encode(b'{"sub":"keyuser"}').decode()},
        {},
        Identity("keyuser"),
    ),
    ("other scheme with jwt", {"authorization": "Token " + jwt({"sub": "tok"})}, {}, Identity("tok")),
    # --- claim field: configured name, lowercase match, dotted paths, flat wins
    (
        "custom user field",
        {"authorization": "Bearer " + jwt({"sub": "s", "uid": "u-9"})},
        {"authorization_user_id_field": "uid"},
        Identity("u-9"),
    ),
    (
        "claim matched by lowercase",
        {"authorization": "Bearer " + jwt({"Sub": "mixed"})},
        {},
        Identity("mixed"),
    ),
    (
        "dotted path",
        {"authorization": "Bearer " + jwt({"user": {"id": "nested"}})},
        {"authorization_user_id_field": "user.id"},
        Identity("nested"),
    ),
    (
        "flat key wins over path",
        {"authorization": "Bearer " + jwt({"user.id": "flat", "user": {"id": "nested"}})},
        {"authorization_user_id_field": "user.id"},
        Identity("flat"),
    ),
    (
        "path through a non-object",
        {"authorization": "Bearer " + jwt({"user": "x"})},
        {"authorization_user_id_field": "user.id"},
        Identity(),
    ),
    # --- claim value types
    (
        "big integer in full",
        {"authorization": "Bearer " + jwt({"sub": 123456789012345678})},
        {},
        Identity("123456789012345678"),
    ),
    ("boolean claim", {"authorization": "Bearer " + jwt({"sub": True})}, {}, Identity()),
    ("float claim", {"authorization": "Bearer " + jwt({"sub": 1.5})}, {}, Identity()),
    ("object claim", {"authorization": "Bearer " + jwt({"sub": {"a": 1}})}, {}, Identity()),
    ("null claim", {"authorization": "Bearer " + jwt({"sub": None})}, {}, Identity()),
    # --- authorization_header_name list: first present wins, even if it yields nothing
    (
        "second name used when first absent",
        {"authorization": "Bearer " + jwt({"sub": "from-auth"})},
        {"authorization_header_name": ("x-token", "authorization")},
        Identity("from-auth"),
    ),
    (
        "first name present wins",
        {"x-token": jwt({"sub": "from-x"}), "authorization": "Bearer " + jwt({"sub": "from-auth"})},
        {"authorization_header_name": ("x-token", "authorization")},
        Identity("from-x"),
    ),
    (
        "first present yields nothing: later names not tried",
        {"x-token": "opaque", "authorization": "Bearer " + jwt({"sub": "from-auth"})},
        {"authorization_header_name": ("x-token", "authorization")},
        Identity(),
    ),
    # --- nginx lookup maps _ to -
    ("underscore header name", {"x-user-id": "u_"}, {"user_id_header": "X_User_Id"}, Identity("u_")),
    # --- company: header > JWT field; the JWT field is read even when x-consumer-* named the user
    (
        "company header",
        {"x-company": "c-hdr", "authorization": "Bearer " + jwt({"sub": "u", "org": "c-jwt"})},
        {"company_id_header": "x-company", "authorization_company_id_field": "org"},
        Identity("u", "c-hdr"),
    ),
    (
        "company from jwt",
        {"authorization": "Bearer " + jwt({"sub": "u", "org": "c-jwt"})},
        {"company_id_header": "x-company", "authorization_company_id_field": "org"},
        Identity("u", "c-jwt"),
    ),
    (
        "company from jwt although consumer header named the user",
        {"x-consumer-id": "uuid-1", "authorization": "Bearer " + jwt({"sub": "u", "org": 42})},
        {"authorization_company_id_field": "org"},
        Identity("uuid-1", "42"),
    ),
    (
        "company from jwt when no user field configured",
        {"authorization": "Bearer " + jwt({"sub": "u", "org": "c"})},
        {"authorization_user_id_field": None, "authorization_company_id_field": "org"},
        Identity(None, "c"),
    ),
    (
        "basic never yields a company",
        {"authorization": "Basic " + basic("alice:pw")},
        {"authorization_company_id_field": "org"},
        Identity("alice"),
    ),
]

RESPONSE_CASES = [
    (
        "user from response header last",
        {},
        {"x-user": "resp-user", "x-company": "resp-co"},
        {"user_id_header": "x-user", "company_id_header": "x-company"},
        Identity("resp-user", "resp-co"),
    ),
    (
        "request beats response",
        {"x-consumer-id": "req", "x-company": "req-co"},
        {"x-user": "resp-user", "x-company": "resp-co"},
        {"user_id_header": "x-user", "company_id_header": "x-company"},
        Identity("req", "req-co"),
    ),
]


@pytest.mark.parametrize(("name", "headers", "overrides", "expected"), CASES, ids=[c[0] for c in CASES])
def test_identification(
    name: str, headers: dict[str, str], overrides: dict[str, object], expected: Identity
) -> None:
    assert identify(headers, None, replace(BASE, **overrides)) == expected


@pytest.mark.parametrize(
    ("name", "req", "resp", "overrides", "expected"), RESPONSE_CASES, ids=[c[0] for c in RESPONSE_CASES]
)
def test_identification_pass_b_response_headers(
    name: str, req: dict[str, str], resp: dict[str, str], overrides: dict[str, object], expected: Identity
) -> None:
    assert identify(req, resp, replace(BASE, **overrides)) == expected


def test_plugin_decoder_would_fail_where_we_succeed() -> None:
    # The plugin strips '-' and '_' before a standard decode; show that this garbles our URL_CLAIMS case,
    # so the base64url test above really exercises a difference.
    seg = b64url(orjson.dumps(URL_CLAIMS))
    stripped = "".join(c for c in seg if c not in "-_")
    garbled = base64.b64decode(stripped + "=" * (-len(stripped) % 4))
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(garbled)
    assert decode_claims(seg) == URL_CLAIMS


def test_identifier_remembers_tokens_without_mixing_them() -> None:
    # One Identifier per configuration remembers what each token says; results must be those of a
    # fresh identification, call after call, token after token, past the size of what it keeps.
    config = replace(BASE, authorization_company_id_field="org")
    ident = Identifier(config)
    tokens = [f"Basic {basic(f'user{i}:pw')}" for i in range(1500)]
    tokens += [f"Bearer {jwt({'sub': f'jwt{i}', 'org': f'co{i}'})}" for i in range(50)]
    tokens += ["Bearer opaque", "Basic !!!", jwt({"sub": 7})]
    for _ in range(2):
        for token in tokens:
            assert Identity(*ident.identify({"authorization": [token]}, {})) == identify(
                {"authorization": token}, None, config
            )
    assert ident.identify({"authorization": [tokens[3]]}, {}) == ("user3", None)
    assert ident.identify({"authorization": [tokens[1500]]}, {}) == ("jwt0", "co0")
    # A header naming the user still wins over a remembered token.
    assert ident.identify({"authorization": [tokens[3]], "x-consumer-id": ["c"]}, {}) == ("c", None)


def test_identifiers_of_different_configs_read_the_same_token_differently() -> None:
    token = f"Bearer {jwt({'sub': 'alice', 'uid': 42, 'org': {'id': 'acme'}})}"
    by_sub = Identifier(BASE)
    by_uid = Identifier(
        replace(BASE, authorization_user_id_field="uid", authorization_company_id_field="org.id")
    )
    assert by_sub.identify({"authorization": [token]}, {}) == ("alice", None)
    assert by_uid.identify({"authorization": [token]}, {}) == ("42", "acme")
    assert by_sub.identify({"authorization": [token]}, {}) == ("alice", None)


def test_huge_token_is_decoded_not_kept() -> None:
    token = f"Bearer {jwt({'sub': 'big', 'pad': 'x' * 10_000})}"
    ident = Identifier(BASE)
    for _ in range(2):
        assert ident.identify({"authorization": [token]}, {}) == ("big", None)


def test_identifier_reads_the_first_of_repeated_headers_and_nginx_underscores() -> None:
    ident = Identifier(replace(BASE, user_id_header="X_User", company_id_header="X-Co"))
    request = {"x-user": ["  ", "second"], "x-consumer-id": ["consumer"], "x-co": ["co1", "co2"]}
    # A blank first value counts as absent (the next step runs), as with a single-valued mapping.
    assert ident.identify(request, {}) == ("consumer", "co1")
    assert ident.identify({"x_user": ["u"]}, {"x-user": ["resp"]}) == ("u", None)
    assert ident.identify({}, {"x-user": ["resp"], "x-co": ["rco"]}) == ("resp", "rco")
