"""Sampling rules: which rate applies to an event, keep/drop, weight, and forgiving config parsing."""

from __future__ import annotations

import random
from typing import Any

import pytest

from sniffer.moesif.sampling import AppConfig, Sampler, parse_app_config


def event(
    user: str | None = None,
    company: str | None = None,
    uri: str = "http://api.example.com:8000/items?x=1",
    verb: str = "GET",
    status: int = 200,
    ip: str = "10.1.2.3",
) -> dict[str, Any]:
    ev: dict[str, Any] = {
        "request": {"uri": uri, "verb": verb, "ip_address": ip, "headers": {}},
        "response": {"status": status, "headers": {}},
    }
    if user is not None:
        ev["user_id"] = user
    if company is not None:
        ev["company_id"] = company
    return ev


def sampler(doc: dict[str, Any], seed: int = 7) -> Sampler:
    s = Sampler(random.Random(seed))
    s.config = parse_app_config(doc, etag="e1")
    return s


def test_no_config_keeps_everything_with_weight_1() -> None:
    s = Sampler(random.Random(1))
    assert s.config is AppConfig.KEEP_ALL
    assert all(s.weight(event()) == 1 for _ in range(100))


class _NoDraws(random.Random):
    def random(self) -> float:
        raise AssertionError("a keep-all config draws nothing")


@pytest.mark.parametrize(
    ("doc", "keeps_all"),
    [
        ({"sample_rate": 100}, True),
        ({}, True),
        ({"sample_rate": 100, "user_sample_rate": {}, "company_sample_rate": {}, "regex_config": []}, True),
        ({"sample_rate": 99.5}, False),
        ({"sample_rate": 100, "user_sample_rate": {"alice": 10}}, False),
        ({"sample_rate": 100, "company_sample_rate": {"acme": 100}}, False),
        ({"sample_rate": 100, "regex_config": [{"conditions": [{"path": "request.verb", "value": "GET"}],
                                               "sample_rate": 5}]}, False),
    ],
)  # fmt: skip
def test_a_config_that_keeps_everything_is_told_apart_once(doc: dict[str, Any], keeps_all: bool) -> None:
    # What an app without sampling serves keeps every event with weight 1 and draws nothing; any rule
    # that could lower a rate (even one at 100 for now) makes the sampler look at each event as before.
    config = parse_app_config(doc)
    assert config.keeps_all is keeps_all
    if keeps_all:
        s = Sampler(_NoDraws())
        s.config = config
        assert all(s.weight(event(user="alice", company="acme")) == 1 for _ in range(50))


def test_rate_is_the_minimum_of_matching_user_company_regex() -> None:
    s = sampler(
        {
            "sample_rate": 90,
            "user_sample_rate": {"alice": 40, "bob": 100},
            "company_sample_rate": {"acme": 20},
            "regex_config": [
                {"conditions": [{"path": "request.route", "value": "^/items$"}], "sample_rate": 30}
            ],
        }
    )
    assert s.rate_for(event("alice")) == 30  # regex 30 < user 40
    assert s.rate_for(event("alice", "acme")) == 20
    assert s.rate_for(event("bob", uri="http://h:8000/other")) == 100  # a matching rate beats the global one
    assert s.rate_for(event("carol", uri="http://h:8000/other")) == 90  # nothing matches: sample_rate
    assert s.rate_for(event(None, uri="http://h:8000/items")) == 30


def test_regex_conditions_are_real_regexes_all_must_match_first_rule_wins() -> None:
    s = sampler(
        {
            "regex_config": [
                {
                    "conditions": [
                        {"path": "request.verb", "value": "^(GET|HEAD)$"},
                        {"path": "request.route", "value": r"^/health(/\d+)?$"},
                    ],
                    "sample_rate": 0,
                },
                {"conditions": [{"path": "response.status", "value": "^5\\d\\d$"}], "sample_rate": 10},
                {"conditions": [{"path": "request.ip_address", "value": "^10\\."}], "sample_rate": 60},
            ]
        }
    )
    assert s.rate_for(event(uri="http://h:8000/health/12?probe=1")) == 0
    assert s.rate_for(event(uri="http://h:8000/health/12", verb="POST")) == 60  # verb fails: next rule
    assert s.rate_for(event(uri="http://h:8000/x", status=503)) == 10
    assert s.rate_for(event(uri="http://h:8000/x", ip="192.168.0.1")) == 100
    assert s.rate_for(event(uri="not a url")) == 60  # route "/" then the ip rule


@pytest.mark.parametrize(("rate", "weight"), [(100, 1), (50, 2), (30, 3), (33, 3), (1, 100), (0.5, 200)])
def test_weight_is_floor_of_100_over_rate(rate: float, weight: int) -> None:
    s = sampler({"sample_rate": rate})
    weights = {s.weight(event()) for _ in range(20_000)} - {None}
    assert weights == {weight}


def test_keep_fraction_follows_rate_with_a_seeded_rng() -> None:
    s = sampler({"sample_rate": 25}, seed=42)
    n = 20_000
    kept = sum(s.weight(event()) is not None for _ in range(n))
    assert abs(kept - n * 0.25) < 5 * (n * 0.25 * 0.75) ** 0.5


def test_rate_zero_never_keeps() -> None:
    s = sampler({"sample_rate": 100, "user_sample_rate": {"alice": 0}})
    assert all(s.weight(event("alice")) is None for _ in range(1000))
    assert all(s.weight(event("bob")) == 1 for _ in range(1000))


def test_bad_config_parts_are_ignored_not_fatal() -> None:
    cfg = parse_app_config(
        {
            "sample_rate": "fifty",
            "user_sample_rate": {"a": 10, "b": "x", "c": True},
            "company_sample_rate": [1, 2],
            "regex_config": [
                {"conditions": [{"path": "request.verb", "value": "("}], "sample_rate": 0},
                {"conditions": [], "sample_rate": 0},
                {"conditions": [{"path": "request.verb", "value": "GET"}], "sample_rate": 250},
            ],
        }
    )
    assert cfg.sample_rate == 100
    assert cfg.user_rates == {"a": 10}
    assert cfg.company_rates == {}
    assert len(cfg.regex_rules) == 1 and cfg.regex_rules[0].rate == 100  # clamped
    assert len(cfg.problems) == 6
    assert parse_app_config(["not", "an", "object"]).problems


def test_repeated_condition_path_keeps_the_last_value() -> None:
    s = sampler(
        {
            "regex_config": [
                {
                    "conditions": [
                        {"path": "request.verb", "value": "^GET$"},
                        {"path": "request.verb", "value": "^POST$"},
                    ],
                    "sample_rate": 0,
                }
            ]
        }
    )
    assert s.rate_for(event(verb="POST")) == 0
    assert s.rate_for(event(verb="GET")) == 100


def test_the_sampling_view_gets_the_rate_of_the_whole_event() -> None:
    """Capture workers send the main process's sampler only `sampling_view` of each event they encoded:
    every rule must rate the view as it rates the event. The Kong demo's calls (users, companies, 401s
    without a user, several verbs, routes and addresses) against rules on each field sampling reads."""
    from pathlib import Path

    from helpers import ListSink

    from sniffer.config import Config
    from sniffer.moesif.sampling import FIELD_PATHS, sampling_view
    from sniffer.replay import replay_file

    demo = Path(__file__).resolve().parents[1] / "pcaps" / "kong-demo.pcap"
    sink = ListSink()
    replay_file(str(demo), Config(kong_ports=(8000, 8001), company_id_header="X-Company-Id"), sink)
    events = sink.events
    users = {e["user_id"] for e in events if "user_id" in e}
    companies = {e["company_id"] for e in events if "company_id" in e}
    assert len(events) > 40 and len(users) >= 2 and companies
    # A rule on every path a rule may test: a path added to sampling needs its case here.
    values = {
        "request.verb": "^POST$",
        "request.route": "^/api/orders",
        "request.ip_address": r"^10\.",
        "response.status": "^4",
    }
    assert set(values) == set(FIELD_PATHS)
    rule_sets = [
        {"user_sample_rate": {u: 10 * i for i, u in enumerate(sorted(users))}},
        {"company_sample_rate": {c: 30 for c in companies}, "sample_rate": 70},
        *(
            {"regex_config": [{"sample_rate": 5, "conditions": [{"path": path, "value": value}]}]}
            for path, value in values.items()
        ),
    ]
    for doc in rule_sets:
        config = parse_app_config(doc)
        sampler = Sampler()
        rates = [sampler.rate_for(e, config) for e in events]
        assert [sampler.rate_for(sampling_view(e), config) for e in events] == rates
        assert len(set(rates)) > 1, doc  # the rule told events apart
