"""Masks: header deletion, body keys at any depth, every occurrence of a query parameter, credentials."""

from __future__ import annotations

import orjson

from sniffer.moesif.masks import CREDENTIAL_HEADERS, header_mask_set, mask_body, mask_headers, mask_query


def test_header_masks_delete_case_insensitively() -> None:
    names = header_mask_set(["X-Secret", " x-other "], mask_credentials=False)
    headers = {"x-secret": "1", "X-Other": "2", "accept": "*/*", "authorization": "Bearer t"}
    assert mask_headers(headers, names) == {"accept": "*/*", "authorization": "Bearer t"}
    assert headers["x-secret"] == "1"  # the input is untouched


def test_credential_headers_masked_by_default_and_opt_out() -> None:
    headers = {h: "v" for h in CREDENTIAL_HEADERS} | {"accept": "*/*"}
    assert mask_headers(headers, header_mask_set([], mask_credentials=True)) == {"accept": "*/*"}
    assert mask_headers(headers, header_mask_set([], mask_credentials=False)) == headers
    assert {
        "authorization",
        "cookie",
        "set-cookie",
        "x-api-key",
        "apikey",
        "proxy-authorization",
    } == CREDENTIAL_HEADERS


def test_body_masks_delete_at_any_depth_including_arrays() -> None:
    body = orjson.loads(
        b'{"password": "p", "user": {"name": "a", "password": "q",'
        b' "cards": [{"cvv": 1, "n": 2}, [{"cvv": 3}]]},'
        b' "list": ["password", {"Password": "case"}]}'
    )
    masked = mask_body(body, frozenset({"password", "cvv"}))
    assert masked == {
        "user": {"name": "a", "cards": [{"n": 2}, [{}]]},
        "list": ["password", {"Password": "case"}],  # values are not keys; matching is case-sensitive
    }


def test_body_masks_on_top_level_array_and_scalars() -> None:
    assert mask_body([{"k": 1, "x": 2}], frozenset({"k"})) == [{"x": 2}]
    assert mask_body("k", frozenset({"k"})) == "k"
    assert mask_body(5, frozenset({"k"})) == 5


def test_body_masks_survive_deep_nesting() -> None:
    # As deep as orjson parses (1024 levels): deeper than a recursive walk could go within pytest's stack.
    depth = 1000
    raw = b'{"a":' * depth + b'{"secret":0}' + b',"secret":1}' * depth
    masked = mask_body(orjson.loads(raw), frozenset({"secret"}))
    node: object = masked
    seen = 0
    while isinstance(node, dict):
        assert "secret" not in node
        node = node.get("a")
        seen += 1
    assert seen == depth + 1


def test_query_masks_every_occurrence_exact_name() -> None:
    names = frozenset({"key", "api-key"})
    target = "/p?key=1&apikey=2&key=3&api-key=x&keyx=4&key=&key"
    assert mask_query(target, names) == "/p?key=*****&apikey=2&key=*****&api-key=*****&keyx=4&key=*****&key"


def test_query_masks_percent_encoded_name_and_no_query() -> None:
    names = frozenset({"api key"})
    assert mask_query("/p?api%20key=s&b=1", names) == "/p?api%20key=*****&b=1"
    assert mask_query("/p?api+key=s", names) == "/p?api+key=*****"
    assert mask_query("/p", names) == "/p"
    assert mask_query("/p?", names) == "/p?"
    assert mask_query("/p?a=1", frozenset()) == "/p?a=1"
