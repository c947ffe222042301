"""Config: flag > env > default, every bad value names its variable and flag, unknown variables, limits()."""

from __future__ import annotations

import argparse
import re

import pytest

from reassembly.limits import Limits
from sniffer.config import IGNORED_ENV, OPTIONS, Config, Option, add_arguments, options_markdown
from sniffer.errors import ConfigError


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_defaults_match_the_documented_plugin_values() -> None:
    c = Config.load(None, {})
    assert c == Config()
    assert c.api_endpoint == "https://api.moesif.net"
    assert c.authorization_header_name == ("authorization",)
    assert c.authorization_user_id_field == "sub"
    assert (c.request_max_body_size_limit, c.response_max_body_size_limit) == (100_000, 100_000)
    assert (c.batch_size, c.batch_max_time, c.connect_timeout, c.send_timeout) == (50, 2.0, 1000, 5000)
    assert c.mask_credential_headers is True
    assert c.kong_ports == (8000, 8443) and c.ports == ()
    assert (c.interface, c.metrics_addr, c.log_format, c.user, c.leg_wait) == (
        "any",
        "127.0.0.1:9464",
        "text",
        "nobody",
        5.0,
    )


def test_env_sets_and_flag_overrides_env() -> None:
    env = {"MOESIF_BATCH_SIZE": "10", "SNIFFER_PORTS": "80, 8080", "MOESIF_DEBUG": "yes"}
    assert Config.load(None, env).batch_size == 10
    c = Config.load(_parse(["--batch-size", "20", "--debug", "false"]), env)
    assert c.batch_size == 20
    assert c.debug is False
    assert c.ports == (80, 8080)  # not given as a flag: the env value stays


def test_flags_not_given_are_none_so_env_wins() -> None:
    args = _parse([])
    assert all(getattr(args, o.name) is None for o in OPTIONS)
    assert Config.load(args, {"MOESIF_APPLICATION_ID": "abc"}).application_id == "abc"


def test_bare_bool_flag_means_true() -> None:
    assert Config.load(_parse(["--debug"]), {"MOESIF_DEBUG": "false"}).debug is True


def test_value_parsing() -> None:
    env = {
        "MOESIF_AUTHORIZATION_HEADER_NAME": "X-Token , Authorization",
        "MOESIF_REQUEST_HEADER_MASKS": "X-Secret,,",
        "MOESIF_REQUEST_BODY_MASKS": "Password,card",
        "SNIFFER_KONG_PORTS": "",
        "SNIFFER_UPSTREAM_PORTS": "9000-9002,80",
        "MOESIF_API_ENDPOINT": "http://localhost:9500/collector/",
        "MOESIF_BATCH_MAX_TIME": "0.5",
        "SNIFFER_METRICS_ADDR": "[::1]:9100",
        "SNIFFER_LOG_FORMAT": "JSON",
        "MOESIF_USER_ID_HEADER": "  ",
    }
    c = Config.load(None, env)
    assert c.authorization_header_name == ("x-token", "authorization")
    assert c.request_header_masks == ("x-secret",)
    assert c.request_body_masks == ("Password", "card")  # body masks are case-sensitive: kept as given
    assert c.kong_ports == ()
    assert c.upstream_ports == (80, 9000, 9001, 9002)
    assert c.api_endpoint == "http://localhost:9500/collector"
    assert c.batch_max_time == 0.5
    assert c.metrics_addr == "[::1]:9100"
    assert c.log_format == "json"
    assert c.user_id_header is None
    assert Config.load(None, {"SNIFFER_METRICS_ADDR": ""}).metrics_addr is None


BAD = [
    ("request_max_body_size_limit", "100kb"),
    ("request_max_body_size_limit", "-1"),
    ("response_max_body_size_limit", "1.5"),
    ("batch_size", "0"),
    ("event_queue_size", "lots"),
    ("connect_timeout", "-5"),
    ("batch_max_time", "-1"),
    ("batch_max_time", "nan"),
    ("flush_timeout", "inf"),
    ("leg_wait", "soon"),
    ("debug", "maybe"),
    ("mask_credential_headers", "2"),
    ("disable_capture_request_body", "yess"),
    ("ports", "80,http"),
    ("ports", "0"),
    ("kong_ports", "70000"),
    ("upstream_ports", "9000-8000"),
    ("api_endpoint", "api.moesif.net"),
    ("api_endpoint", "ftp://x"),
    ("log_format", "xml"),
    ("metrics_addr", "9464"),
    ("metrics_addr", "::1:9464"),
    ("interface", " "),
    ("workers", "0"),
    ("max_flows", "1e5"),
    ("max_header_bytes", "0"),
    ("reorder_timeout", "-0.1"),
]


@pytest.mark.parametrize(("name", "value"), BAD)
def test_bad_env_value_names_variable_and_flag(name: str, value: str) -> None:
    opt = next(o for o in OPTIONS if o.name == name)
    with pytest.raises(ConfigError) as info:
        Config.load(None, {opt.env: value})
    message = str(info.value)
    assert "\n" not in message
    assert opt.env in message and opt.flag in message
    assert repr(value) in message or "non-empty" in message


@pytest.mark.parametrize(("name", "value"), BAD[:6])
def test_bad_flag_value_names_variable_and_flag(name: str, value: str) -> None:
    opt = next(o for o in OPTIONS if o.name == name)
    with pytest.raises(ConfigError, match=re.escape(opt.flag)) as info:
        Config.load(_parse([f"{opt.flag}={value}"]), {})
    assert opt.env in str(info.value) and "flag" in str(info.value)


def test_unknown_variable_with_suggestion() -> None:
    with pytest.raises(ConfigError, match=r"MOESIF_BATCH_SIZ\b.*did you mean MOESIF_BATCH_SIZE\?"):
        Config.load(None, {"MOESIF_BATCH_SIZ": "5"})
    with pytest.raises(ConfigError, match=r"SNIFFER_INTERFAZE.*SNIFFER_INTERFACE"):
        Config.load(None, {"SNIFFER_INTERFAZE": "eth0"})
    with pytest.raises(ConfigError) as info:
        Config.load(None, {"SNIFFER_ZZZ_QQQ": "1"})
    assert "SNIFFER_ZZZ_QQQ" in str(info.value) and "did you mean" not in str(info.value)


def test_allowlisted_plugin_variables_are_accepted_and_reported() -> None:
    env = {"MOESIF_TIMEOUT": "1000", "MOESIF_ENABLE_COMPRESSION": "true", "PATH": "/bin", "MOESIFX": "1"}
    assert Config.load(None, env) == Config()
    assert Config.ignored_env(env) == ["MOESIF_ENABLE_COMPRESSION", "MOESIF_TIMEOUT"]
    assert not IGNORED_ENV & {o.env for o in OPTIONS}


def test_limits_from_budgets_and_body_limits() -> None:
    env = {
        "SNIFFER_MAX_FLOWS": "10",
        "SNIFFER_MAX_BUFFER_BYTES": "2000",
        "SNIFFER_MAX_FLOW_BUFFER_BYTES": "300",
        "SNIFFER_MAX_HEADER_BYTES": "4096",
        "SNIFFER_REORDER_TIMEOUT": "1.5",
        "SNIFFER_IDLE_TIMEOUT": "30",
        "MOESIF_REQUEST_MAX_BODY_SIZE_LIMIT": "5000",
        "MOESIF_RESPONSE_MAX_BODY_SIZE_LIMIT": "200000",
    }
    lim = Config.load(None, env).limits()
    assert (lim.max_flows, lim.max_buffer_bytes, lim.max_flow_buffer_bytes, lim.max_header_bytes) == (
        10,
        2000,
        300,
        4096,
    )
    assert (lim.reorder_timeout_s, lim.idle_timeout_s) == (1.5, 30.0)
    # Just above the larger limit: enough to tell "over the limit" for a compressed body, no more.
    assert 200_000 < lim.max_body_bytes <= 200_000 + 2_000
    assert lim.max_fragment_datagrams == Limits().max_fragment_datagrams
    env["MOESIF_DISABLE_CAPTURE_RESPONSE_BODY"] = "true"
    assert 5000 < Config.load(None, env).limits().max_body_bytes <= 5000 + 1024
    env["MOESIF_DISABLE_CAPTURE_REQUEST_BODY"] = "true"
    assert Config.load(None, env).limits().max_body_bytes == 0


def test_default_limits_equal_core_defaults_except_body() -> None:
    lim, core = Config().limits(), Limits()
    assert lim.max_flows == core.max_flows and lim.idle_timeout_s == core.idle_timeout_s
    assert lim.max_body_bytes > 100_000


def test_options_markdown_has_one_row_per_option() -> None:
    table = options_markdown()
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert len(rows) == len(OPTIONS)
    assert "| `MOESIF_BATCH_SIZE` | `--batch-size` | `50` |" in table
    assert "| `SNIFFER_KONG_PORTS` | `--kong-ports` | `8000,8443` |" in table


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)


@pytest.mark.parametrize("opt", [o for o in OPTIONS if o.default is not None], ids=lambda o: o.name)
def test_every_default_round_trips_through_env_and_flag(opt: Option) -> None:
    text = _text(opt.default)
    assert getattr(Config.load(None, {opt.env: text}), opt.name) == opt.default
    assert getattr(Config.load(_parse([f"{opt.flag}={text}"]), {}), opt.name) == opt.default
