"""`moesif-sniffer replay` as a user runs it: a real process, real files, exit statuses and messages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import tcp_conversation, write_pcap

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "pcaps" / "kong-demo.pcap"


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MOESIF_", "SNIFFER_"))}
    return subprocess.run(
        [sys.executable, "-m", "sniffer", *args],
        capture_output=True,
        env={**base, **(env or {})},
        cwd=ROOT,
        timeout=120,
    )


def conversation_pcap(path: Path, n: int = 3) -> Path:
    client = [f"GET /items/{i}?q=1 HTTP/1.1\r\nHost: api.example.com\r\n\r\n".encode() for i in range(n)]
    bodies = [b'{"id": %d}' % i for i in range(n)]
    server = [
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(b), b)
        for b in bodies
    ]
    write_pcap(path, tcp_conversation(client, server))
    return path


def events_of(out: bytes) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_replay_writes_one_json_line_per_call_to_stdout(tmp_path: Path) -> None:
    p = run("replay", str(conversation_pcap(tmp_path / "c.pcap")), env={"SNIFFER_KONG_PORTS": ""})
    assert p.returncode == 0, p.stderr
    events = events_of(p.stdout)
    assert [e["request"]["uri"] for e in events] == [
        f"http://api.example.com:80/items/{i}?q=1" for i in range(3)
    ]
    assert [e["response"]["body"] for e in events] == [{"id": i} for i in range(3)]
    assert b"3 events (0 partial)" in p.stderr


def test_output_file_and_flag_configuration(tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    cap = tmp_path / "u.pcap"
    req = b"GET / HTTP/1.1\r\nHost: h\r\nX-User-Id: u-77\r\n\r\n"
    write_pcap(cap, tcp_conversation([req], [b"HTTP/1.1 204 No Content\r\n\r\n"]))
    p = run("replay", str(cap), "--output", str(out), "--user-id-header", "X-User-Id")
    assert p.returncode == 0, p.stderr
    assert p.stdout == b""
    (event,) = events_of(out.read_bytes())
    assert event["user_id"] == "u-77"
    assert event["response"]["status"] == 204


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_failed_write_is_one_line_and_status_2(workers: str) -> None:
    # /dev/full fails every write with ENOSPC, as a full disk does: before, a traceback (both to a file
    # and with standard output redirected there), and with workers the main process's write raised too.
    for how in ("--output", "stdout"):
        args = ["replay", str(DEMO), "--workers", workers, "-q"]
        if how == "--output":
            p = run(*args, "--output", "/dev/full")
            where = "/dev/full"
        else:
            with open("/dev/full", "wb") as full:
                base = {k: v for k, v in os.environ.items() if not k.startswith(("MOESIF_", "SNIFFER_"))}
                p = subprocess.run(
                    [sys.executable, "-m", "sniffer", *args],
                    stdout=full,
                    stderr=subprocess.PIPE,
                    env=base,
                    cwd=ROOT,
                    timeout=120,
                )
            where = "standard output"
        assert p.returncode == 2, p.stderr
        assert p.stderr.decode().splitlines() == [
            f"moesif-sniffer: error: {where}: cannot write the events: No space left on device"
        ]


def test_python_dash_m_and_console_script_agree(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("moesif-sniffer")
    if not exe.exists():
        pytest.skip("console script not installed in this environment")
    cap = conversation_pcap(tmp_path / "c.pcap")
    a = run("replay", str(cap))
    b = subprocess.run([str(exe), "replay", str(cap)], capture_output=True, cwd=ROOT, timeout=60)
    assert a.returncode == b.returncode == 0
    assert a.stdout == b.stdout and len(events_of(a.stdout)) == 3


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.pcap", b"no such file"),
        (lambda d: d, b"directory"),
        (lambda d: _write(d / "empty.pcap", b""), b"empty"),
        (lambda d: _write(d / "text.pcap", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 10), b"not a"),
    ],
)
def test_bad_files_give_one_line_naming_the_file_and_exit_2(tmp_path: Path, make, message: bytes) -> None:
    path = make(tmp_path)
    p = run("replay", str(path))
    assert p.returncode == 2
    err = p.stderr.strip().splitlines()
    assert len(err) == 1, p.stderr
    assert str(path).encode() in err[0] and message in err[0].lower(), err[0]
    assert b"Traceback" not in p.stderr


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_truncated_file_keeps_every_event_before_the_damage(tmp_path: Path) -> None:
    whole = conversation_pcap(tmp_path / "whole.pcap", n=5)
    data = whole.read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[: len(data) - 30])  # the last record (a FIN) loses its tail
    full = events_of(run("replay", str(whole)).stdout)
    p = run("replay", str(cut))
    assert p.returncode == 2
    assert b"truncated" in p.stderr.lower() and str(cut).encode() in p.stderr
    assert events_of(p.stdout) == full  # every call completed before the damage is there
    assert len(full) == 5


def test_bad_configuration_value_names_the_variable(tmp_path: Path) -> None:
    cap = conversation_pcap(tmp_path / "c.pcap")
    p = run("replay", str(cap), env={"MOESIF_REQUEST_MAX_BODY_SIZE_LIMIT": "lots"})
    assert p.returncode == 2
    assert b"MOESIF_REQUEST_MAX_BODY_SIZE_LIMIT" in p.stderr and b"Traceback" not in p.stderr
    p = run("replay", str(cap), env={"SNIFFER_PORTZ": "80"})
    assert p.returncode == 2 and b"SNIFFER_PORTZ" in p.stderr


def test_ports_restrict_what_is_parsed(tmp_path: Path) -> None:
    cap = conversation_pcap(tmp_path / "c.pcap")
    assert len(events_of(run("replay", str(cap), "--ports", "8080").stdout)) == 0
    assert len(events_of(run("replay", str(cap), "--ports", "80,8080").stdout)) == 3


def test_bundled_demo_replays(tmp_path: Path) -> None:
    p = run("replay", str(DEMO))
    assert p.returncode == 0, p.stderr
    events = events_of(p.stdout)
    calls = json.loads((ROOT / "pcaps" / "kong-demo.calls.json").read_text())
    assert len(events) == len(calls)


def test_the_replay_command_tunes_the_collector_and_an_in_process_call_does_not(tmp_path: Path) -> None:
    # sniffer/gc_policy.py: the command's own process gets the raised thresholds and a frozen start-up
    # heap; main(argv) called from other code (tests) leaves that process's collector alone.
    code = (
        "import gc, sys\n"
        "from sniffer.cli import main\n"
        "default = gc.get_threshold()\n"
        f"main(['replay', {str(DEMO)!r}, '-q', '-o', {str(tmp_path / 'a.jsonl')!r}])\n"
        "print(gc.get_threshold() == default, gc.get_freeze_count() == 0)\n"
        f"sys.argv = ['moesif-sniffer', 'replay', {str(DEMO)!r}, '-q', '-o', {str(tmp_path / 'b.jsonl')!r}]\n"
        "main()\n"
        "from sniffer.gc_policy import THRESHOLDS\n"
        "print(gc.get_threshold() == THRESHOLDS, gc.get_freeze_count() > 0)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True", "True", "True"]
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes() != b""
