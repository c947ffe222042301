"""End to end on real traffic: curl and a raw client -> lossy relay -> nginx -> app, captured, replayed.

The scenario (tests/realnet/scenario.py) runs real clients, a real nginx reverse proxy and a real
upstream app in network namespaces, joined by a userspace relay that drops, reorders and duplicates TCP
data segments, so the endpoints retransmit for real. tcpdump records nginx's client-facing veth twice:
`full.pcap` from before the first connection, `mid.pcap` from a moment when keep-alive connections are
already open and in use. Each capture is replayed with the real CLI (`python -m sniffer replay`), and
every call the clients logged must come out as exactly one event with the right method, URL, status
and bodies; nothing may be doubled by retransmissions or invented.

Needs root, ip, nginx, tcpdump and curl; skipped with the reason otherwise. Run with `-s` to see the
relay's figures.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from realnet.scenario import REQUIRED_TOOLS, ScenarioResult, run_scenario

REPO = Path(__file__).resolve().parents[1]
BODY_LIMIT = 100_000  # the default response/request_max_body_size_limit
CLIENT_IP = {4: "10.199.0.1", 6: "fd00:199::1"}
SERVER_HOST = {4: "10.199.0.2", 6: "[fd00:199::2]"}

_missing = [t for t in REQUIRED_TOOLS if shutil.which(t) is None]
pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces and AF_PACKET"),
    pytest.mark.skipif(bool(_missing), reason=f"missing tools: {', '.join(_missing)}"),
]


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> ScenarioResult:
    result = run_scenario(tmp_path_factory.mktemp("realnet"))
    print(f"\nrelay: {json.dumps(result.relay)}")
    for name, summary in result.tcpdump.items():
        print(f"tcpdump {name}: {' / '.join(summary.splitlines())}")
        # A capture with kernel drops would make "missing event" failures the capture's fault, not ours.
        assert "0 packets dropped by kernel" in summary.splitlines(), summary
    return result


def _replay(pcap: Path) -> list[dict[str, Any]]:
    out = pcap.with_suffix(".events.jsonl")
    env = {**os.environ, "SNIFFER_KONG_PORTS": ""}
    proc = subprocess.run(
        [sys.executable, "-m", "sniffer", "replay", str(pcap), "--output", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    print(f"replay {pcap.name}: exit {proc.returncode}\n{proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in out.read_text().splitlines() if line.strip()]


def _call_id(event: dict[str, Any]) -> str | None:
    query = parse_qs(urlsplit(event["request"]["uri"]).query)
    ids = query.get("call")
    return ids[0] if ids else None


def _tshark_count(pcap: Path, display_filter: str) -> int | None:
    if shutil.which("tshark") is None:
        return None
    proc = subprocess.run(
        ["tshark", "-r", str(pcap), "-Y", display_filter, "-T", "fields", "-e", "frame.number"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return len(proc.stdout.split())


def _check_event(call: dict[str, Any], event: dict[str, Any], allowed_flags: set[str]) -> list[str]:
    """What is wrong with this event for this call (empty when it is right)."""
    bad: list[str] = []
    req, resp = event["request"], event.get("response")
    capture = event.get("metadata", {}).get("capture", {})
    cid = call["id"]
    want_uri = f"http://{SERVER_HOST[call['family']]}:8080{call['path']}"
    if req["verb"] != call["method"]:
        bad.append(f"{cid}: verb {req['verb']!r} != {call['method']!r}")
    if req["uri"] != want_uri:
        bad.append(f"{cid}: uri {req['uri']!r} != {want_uri!r}")
    if req.get("ip_address") != CLIENT_IP[call["family"]]:
        bad.append(f"{cid}: ip_address {req.get('ip_address')!r}")
    flags = set(capture.get("flags", []))
    if flags - allowed_flags:
        bad.append(f"{cid}: unexpected flags {sorted(flags - allowed_flags)}")
    if call["request_body"] is not None:
        if req.get("transfer_encoding") != "json" or req.get("body") != json.loads(call["request_body"]):
            bad.append(f"{cid}: request body differs (encoding {req.get('transfer_encoding')!r})")
    elif "body" in req:
        bad.append(f"{cid}: a request body on a {call['method']}")
    if resp is None:
        return [*bad, f"{cid}: no response (flags {sorted(flags)})"]
    if resp["status"] != call["status"]:
        bad.append(f"{cid}: status {resp['status']} != {call['status']}")
    body = Path(call["body_file"]).read_bytes()
    assert len(body) == call["body_len"]
    if not body:
        if "body" in resp:
            bad.append(f"{cid}: a response body on {call['method']} {call['status']}")
    elif len(body) <= BODY_LIMIT:
        if resp.get("transfer_encoding") != "json" or resp.get("body") != json.loads(body):
            got = resp.get("body")
            bad.append(
                f"{cid}: response body differs: encoding {resp.get('transfer_encoding')!r}, "
                f"got {type(got).__name__} of {len(json.dumps(got)) if got is not None else 0} chars, "
                f"want {len(body)} bytes"
            )
    else:
        if "body" in resp or capture.get("response_body_omitted") != "over_limit":
            bad.append(f"{cid}: body over the limit not left out: {sorted(capture)}")
        if "response_body_size" in capture:
            if capture["response_body_size"] != len(body):
                bad.append(f"{cid}: response_body_size {capture['response_body_size']} != {len(body)}")
        elif "response_body_size_at_least" in capture:
            if not BODY_LIMIT < capture["response_body_size_at_least"] <= len(body):
                bad.append(f"{cid}: response_body_size_at_least {capture['response_body_size_at_least']}")
        elif call.get("content_encoding") or call.get("compressed"):
            if not 0 < capture.get("response_body_wire_size", 0) < len(body):
                bad.append(f"{cid}: gzip body wire size {capture.get('response_body_wire_size')}")
        else:
            bad.append(f"{cid}: no size for the body left out: {capture}")
    return bad


def _check_capture(
    calls: list[dict[str, Any]], events: list[dict[str, Any]], allowed_flags: dict[str, set[str]]
) -> None:
    """One correct event per expected call; nothing doubled, nothing invented."""
    by_id = {c["id"]: c for c in calls}
    ids = [_call_id(e) for e in events]
    counts = Counter(ids)
    problems: list[str] = []
    problems += [f"{i}: {n} events (retransmission doubled?)" for i, n in counts.items() if n > 1]
    problems += [f"event for an unknown or unexpected call {i!r}" for i in counts if i not in by_id]
    problems += [f"{i}: no event ({by_id[i]['method']} {by_id[i]['path']})" for i in by_id if i not in counts]
    for event, cid in zip(events, ids, strict=True):
        if cid in by_id and counts[cid] == 1:
            problems += _check_event(by_id[cid], event, allowed_flags[cid])
    tx_ids = Counter(e.get("transaction_id") for e in events)
    problems += [f"transaction_id {t} on {n} events" for t, n in tx_ids.items() if n > 1]
    print(f"{len(calls)} calls, {len(events)} events, {len(problems)} problems")
    assert not problems, "\n".join(problems)


@pytest.mark.timeout(90)
def test_relay_really_was_lossy(scenario: ScenarioResult) -> None:
    relay = scenario.relay
    assert relay["tcp_data"] > 500, relay
    assert relay["dropped"] > 0 and relay["reordered"] > 0 and relay["duplicated"] > 0, relay
    assert relay["send_errors"] == 0, relay
    retrans = _tshark_count(scenario.full_pcap, "tcp.analysis.retransmission")
    ooo = _tshark_count(scenario.full_pcap, "tcp.analysis.out_of_order")
    print(f"tshark on full.pcap: {retrans} retransmissions, {ooo} out-of-order")
    if retrans is not None:
        assert retrans > 0
    # keep-alive really reused connections: curl connected once per invocation, not once per URL
    curl_calls = [c for c in scenario.calls if c["client"] == "curl"]
    assert sum(c["num_connects"] for c in curl_calls) < len(curl_calls)
    assert any(c["interim"] == [100] for c in scenario.calls)  # 100-continue happened on the wire


@pytest.mark.timeout(90)
def test_full_capture_one_correct_event_per_call(scenario: ScenarioResult) -> None:
    events = _replay(scenario.full_pcap)
    # Everything was captured from the SYN on: no event may be partial in any way.
    _check_capture(scenario.calls, events, {c["id"]: set() for c in scenario.calls})


@pytest.mark.timeout(90)
def test_client_side_capture_one_correct_event_per_call(scenario: ScenarioResult) -> None:
    """Behind the lossy link: response segments go missing and arrive late, out of order or twice."""
    ooo = _tshark_count(scenario.client_pcap, "tcp.analysis.out_of_order or tcp.analysis.lost_segment")
    print(f"tshark on client.pcap: {ooo} out-of-order or after-a-hole segments")
    if ooo is not None:
        assert ooo > 0
    events = _replay(scenario.client_pcap)
    _check_capture(scenario.calls, events, {c["id"]: set() for c in scenario.calls})


@pytest.fixture(scope="module")
def mid_events(scenario: ScenarioResult) -> list[dict[str, Any]]:
    return _replay(scenario.mid_pcap)


def _split_mid(
    scenario: ScenarioResult, events: list[dict[str, Any]], picked_up: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Later calls and their events, on connections open before the capture (raw client) or not (curl)."""
    want = "raw" if picked_up else "curl"
    later = {c["id"]: c for c in scenario.calls if c["phase"] == 2 and c["client"] == want}
    # An event belongs to this half by its call id, or (no id, or an id of an earlier call) by its
    # connection: an event invented on an old connection must not hide in neither half.
    ports = {c["local_port"] for c in scenario.calls if c["client"] == want}
    mine = [
        e
        for e in events
        if _call_id(e) in later
        or (_call_id(e) not in {c["id"] for c in scenario.calls if c["phase"] == 2} and _port(e) in ports)
    ]
    return list(later.values()), mine


def _port(event: dict[str, Any]) -> int | None:
    client = event.get("metadata", {}).get("capture", {}).get("client", "")
    return int(client.rsplit(":", 1)[1]) if ":" in client else None


@pytest.mark.timeout(90)
def test_mid_stream_capture_new_connections(
    scenario: ScenarioResult, mid_events: list[dict[str, Any]]
) -> None:
    """curl connections opened after the capture started: whole, so no flag at all."""
    calls, events = _split_mid(scenario, mid_events, picked_up=False)
    _check_capture(calls, events, {c["id"]: set() for c in calls})


@pytest.mark.timeout(90)
def test_mid_stream_capture_picked_up_connections(
    scenario: ScenarioResult, mid_events: list[dict[str, Any]]
) -> None:
    """Keep-alive connections already open (and used) when the capture started, then used again with
    pipelined batches (HEAD before GET), 100-continue, 204/304, gzip: every later call, flagged midstream."""
    calls, events = _split_mid(scenario, mid_events, picked_up=True)
    assert len({c["local_port"] for c in calls}) == 3
    _check_capture(calls, events, {c["id"]: {"midstream"} for c in calls})


@pytest.mark.timeout(90)
def test_mid_stream_capture_nothing_else(scenario: ScenarioResult, mid_events: list[dict[str, Any]]) -> None:
    """Calls finished before the capture started leave no event (nothing is invented from stray ACKs or
    a late retransmission); every event is one of the two halves above."""
    later = {c["id"] for c in scenario.calls if c["phase"] == 2}
    stray = [e["request"]["uri"] for e in mid_events if _call_id(e) not in later]
    assert not stray
