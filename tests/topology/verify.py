"""Replay a topology capture through `moesif-sniffer replay` and hold the events against the client's log.

The comparison is a multiset of one key per call, built the same way from an event and from a client log
entry: client address, Kong port, method, path and query, status, user, company, request body and response
body (as the client saw them: gzip and chunking undone). Equal multisets mean exactly one event per call,
none duplicated, each with the identity Moesif's Kong plugin would compute and what the client got.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = ["REPLAY_ARGS", "call_key", "event_key", "expected_company", "replay", "unmatched"]

# Kong ports of both emulated gateways; the plugin configured with a company header and a JWT company
# claim, so the calls' `company_header` / `jwt_company` ground truth is exercised.
REPLAY_ARGS = (
    "--kong-ports",
    "8000,8001",
    "--company-id-header",
    "X-Company-Id",
    "--authorization-company-id-field",
    "company_id",
)

Key = tuple[Any, ...]


def replay(pcap: Path, output: Path, *args: str) -> list[dict[str, Any]]:
    """`python -m sniffer replay PCAP --output OUTPUT` with `REPLAY_ARGS` + `args`; the events written."""
    argv = [sys.executable, "-m", "sniffer", "replay", str(pcap), "--output", str(output), "-q"]
    subprocess.run([*argv, *REPLAY_ARGS, *args], check=True, capture_output=True, timeout=120)
    return [json.loads(line) for line in output.read_text().splitlines() if line.strip()]


def _ip(text: str) -> str:
    return ipaddress.ip_address(text.strip("[]")).compressed


def _canon(value: Any) -> str | None:
    return None if value in (None, "") else json.dumps(value, sort_keys=True, ensure_ascii=False)


def expected_company(call: dict[str, Any]) -> str | None:
    """moesif-reference.md 5.2: the company header; a JWT company claim only when no consumer was found."""
    meta = call["meta"]
    if meta.get("company_header"):
        return str(meta["company_header"])
    if meta["auth"] == "bearer" and meta["answered_by"] == "upstream":
        return str(meta["jwt_company"])
    return None


def call_key(call: dict[str, Any]) -> Key:
    return (
        _ip(call["source"]),
        call["port"],
        call["method"],
        call["path"],
        call["status"],
        call["meta"]["user_id"],
        expected_company(call),
        _canon(call.get("request_body")),
        _canon(call["response_body"]),
    )


def event_key(event: dict[str, Any]) -> Key:
    req, resp = event["request"], event.get("response", {})
    uri = urlsplit(req["uri"])
    target = uri.path + (f"?{uri.query}" if uri.query else "")
    return (
        _ip(req["ip_address"]),
        uri.port,
        req["verb"],
        target,
        resp.get("status"),
        event.get("user_id"),
        event.get("company_id"),
        _canon(req.get("body")),
        _canon(resp.get("body")),
    )


def unmatched(events: list[dict[str, Any]], calls: list[dict[str, Any]]) -> tuple[list[Key], list[Key]]:
    """(keys of events no call explains, keys of calls no event reports); both empty when all match."""
    got, want = Counter(map(event_key, events)), Counter(map(call_key, calls))
    return sorted((got - want).elements(), key=repr), sorted((want - got).elements(), key=repr)
