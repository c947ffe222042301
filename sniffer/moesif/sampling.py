"""Moesif app config -> keep or drop one event, and its `weight` (moesif.md, Sampling).

The rate of an event is the minimum of the user, company and first-matching regex rates that
apply to it (the Kong plugin's precedence), else the global `sample_rate`. The event is kept when
`random() * 100 < rate` and then weighs `floor(100 / rate)`. `regex_config` values are real regular
expressions (`re.search`, like the Python SDK), not the plugin's Lua patterns.

`AppConfig.KEEP_ALL` stands for "no config yet": until the first fetch succeeds everything is kept
with weight 1. Parsing is forgiving: a malformed field is ignored (and counted by the caller via
`AppConfig.problems`), never fatal, so a bad config cannot stop delivery.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

__all__ = ["FIELD_PATHS", "AppConfig", "RegexRule", "Sampler", "parse_app_config", "sampling_view"]

_ROUTE = re.compile(r"https?://[^/]+(/[^?]*)")


@dataclass(frozen=True, slots=True)
class RegexRule:
    """One `regex_config` entry: every condition (path -> compiled regex) must match."""

    conditions: tuple[tuple[str, re.Pattern[str]], ...]
    rate: float


@dataclass(frozen=True, slots=True)
class AppConfig:
    """The parts of `GET /v1/config` that sampling uses."""

    sample_rate: float = 100.0
    user_rates: dict[str, float] = field(default_factory=dict)
    company_rates: dict[str, float] = field(default_factory=dict)
    regex_rules: tuple[RegexRule, ...] = ()
    etag: str | None = None
    problems: tuple[str, ...] = ()
    # Every event kept with weight 1: a rate of 100 and no rule that could lower it (what an app without
    # sampling serves), worked out once, so the common config spares each event the rules' scan.
    keeps_all: bool = field(init=False, compare=False, repr=False)

    KEEP_ALL: ClassVar[AppConfig]

    def __post_init__(self) -> None:
        keeps = self.sample_rate >= 100 and not (self.user_rates or self.company_rates or self.regex_rules)
        object.__setattr__(self, "keeps_all", keeps)  # frozen: set once, here


AppConfig.KEEP_ALL = AppConfig()


def _rate(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return None
    return min(100.0, max(0.0, float(value)))


def _rates(raw: Any, name: str, problems: list[str]) -> dict[str, float]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        problems.append(f"{name}: not an object")
        return {}
    out: dict[str, float] = {}
    for key, value in raw.items():
        rate = _rate(value)
        if rate is None:
            problems.append(f"{name}: rate of {key!r} is not a number")
        else:
            out[str(key)] = rate
    return out


def _regex_rules(raw: Any, problems: list[str]) -> tuple[RegexRule, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        problems.append("regex_config: not a list")
        return ()
    rules: list[RegexRule] = []
    for i, entry in enumerate(raw):
        rate = _rate(entry.get("sample_rate")) if isinstance(entry, dict) else None
        conds = entry.get("conditions") if isinstance(entry, dict) else None
        if rate is None or not isinstance(conds, list) or not conds:
            problems.append(f"regex_config[{i}]: needs conditions and a numeric sample_rate")
            continue
        # Keyed by path like the plugin: a repeated path keeps its last value.
        by_path: dict[str, re.Pattern[str]] = {}
        try:
            for cond in conds:
                by_path[str(cond["path"])] = re.compile(str(cond["value"]))
        except (KeyError, TypeError, re.error) as exc:
            problems.append(f"regex_config[{i}]: bad condition ({exc})")
            continue
        rules.append(RegexRule(tuple(by_path.items()), rate))
    return tuple(rules)


def parse_app_config(doc: Any, etag: str | None = None) -> AppConfig:
    """Build an `AppConfig` from the decoded JSON of `/v1/config`; bad parts are skipped."""
    if not isinstance(doc, dict):
        return AppConfig(etag=etag, problems=("config: not a JSON object",))
    problems: list[str] = []
    sample_rate = _rate(doc.get("sample_rate", 100))
    if sample_rate is None:
        problems.append("sample_rate: not a number")
        sample_rate = 100.0
    return AppConfig(
        sample_rate=sample_rate,
        user_rates=_rates(doc.get("user_sample_rate"), "user_sample_rate", problems),
        company_rates=_rates(doc.get("company_sample_rate"), "company_sample_rate", problems),
        regex_rules=_regex_rules(doc.get("regex_config"), problems),
        etag=etag,
        problems=tuple(problems),
    )


# The paths a regex rule may test (`_field`; any other never matches). `sampling_view` keeps what they read.
FIELD_PATHS = ("request.verb", "request.route", "request.ip_address", "response.status")


def _field(event: dict[str, Any], path: str) -> str | None:
    request = event.get("request") or {}
    if path == "request.verb":
        value = request.get("verb")
    elif path == "request.route":
        uri = request.get("uri")
        if not isinstance(uri, str):
            return None
        m = _ROUTE.match(uri)
        value = m.group(1) if m else "/"
    elif path == "request.ip_address":
        value = request.get("ip_address")
    elif path == "response.status":
        value = (event.get("response") or {}).get("status")
    else:
        return None
    return None if value is None else str(value)


def sampling_view(event: dict[str, Any]) -> dict[str, Any]:
    """The fields of `event` that sampling reads (`Sampler.weight` gives the view what it gives the
    event): the user and company, and what `FIELD_PATHS` read (the route from the uri). A capture worker
    sends this with the event it encoded, so the main process's sampler needs neither to decode the
    event nor to encode it again."""
    view: dict[str, Any] = {}
    for name in ("user_id", "company_id"):
        if name in event:
            view[name] = event[name]
    request = event.get("request") or {}
    view["request"] = {k: request[k] for k in ("verb", "uri", "ip_address") if k in request}
    response = event.get("response")
    if isinstance(response, dict) and "status" in response:
        view["response"] = {"status": response["status"]}
    return view


class Sampler:
    """Decides per event; holds the current `AppConfig` (swapped atomically by the config fetcher)."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self.config: AppConfig = AppConfig.KEEP_ALL
        self._random = (rng or random.Random()).random

    def rate_for(self, event: dict[str, Any], config: AppConfig | None = None) -> float:
        cfg = config or self.config
        rates: list[float] = []
        if cfg.user_rates and (user := event.get("user_id")) is not None:
            r = cfg.user_rates.get(str(user))
            if r is not None:
                rates.append(r)
        if cfg.company_rates and (company := event.get("company_id")) is not None:
            r = cfg.company_rates.get(str(company))
            if r is not None:
                rates.append(r)
        for rule in cfg.regex_rules:
            if all(
                (v := _field(event, path)) is not None and pattern.search(v)
                for path, pattern in rule.conditions
            ):
                rates.append(rule.rate)
                break
        return min(rates) if rates else cfg.sample_rate

    def weight(self, event: dict[str, Any]) -> int | None:
        """The event's weight when kept, or None when sampled out."""
        cfg = self.config  # one read: the fetcher's thread swaps the whole config
        if cfg.keeps_all:
            return 1
        rate = self.rate_for(event, cfg)
        if rate >= 100:
            return 1
        if not self._random() * 100 < rate:
            return None
        return math.floor(100 / rate)
