"""Hostile traffic: adversarial captures replayed by `moesif-sniffer replay` in a child process under budgets.

For each attack: the capture is generated (streamed to disk), legitimate keep-alive calls are interleaved
evenly through it, and the replay runs in a fresh interpreter reaped with wait4. Asserted: the child's
peak RSS exceeds the peak of a trivial replay (the legitimate calls alone, measured in the same run) by
less than ATTACK_RSS_BOUND_MIB; every legitimate call comes out exactly once, unflagged, with its status
and body; the counters explain what was shed. Each test prints its cost (`pytest -s` shows it).
"""

from __future__ import annotations

import dataclasses
from base64 import b64decode
from collections.abc import Iterator
from pathlib import Path

import pytest
from hostile import attacks
from hostile.attacks import Legit, legit_calls, write_capture
from hostile.frames import TcpConn
from hostile.run import Replay, replay_in_child

from reassembly.decode import Decoder
from reassembly.flow_table import FlowTable
from reassembly.limits import Limits
from reassembly.stats import Stats
from sniffer.config import OPTIONS, Config
from sniffer.engine import Engine

MAX_FLOWS = 2000
MAX_BUFFER = 8 << 20
MAX_FLOW_BUFFER = 256 << 10
BUDGETS = {
    "SNIFFER_MAX_FLOWS": str(MAX_FLOWS),
    "SNIFFER_MAX_BUFFER_BYTES": str(MAX_BUFFER),
    "SNIFFER_MAX_FLOW_BUFFER_BYTES": str(MAX_FLOW_BUFFER),
}
# What an attack may add to the replay's peak RSS: the out-of-order budget (8 MiB), MAX_FLOWS flows
# with their HTTP parsers (a few KB each), the tombstones and counters, and allocator slack.
ATTACK_RSS_BOUND_MIB = 40.0


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hostile")


@pytest.fixture(scope="module")
def baseline(workdir: Path) -> Replay:
    """A trivial replay (legitimate calls only): the RSS every attack is measured against."""
    legit = legit_calls()
    path = workdir / "baseline.pcap"
    write_capture(path, iter(()), 0, legit)
    result = replay_in_child(path, BUDGETS, workdir)
    assert result.status == 0, result.summary
    assert legit.problems(result.events) == []
    return result


def run_attack(
    name: str,
    attack: Iterator[bytes],
    frames_hint: int,
    workdir: Path,
    baseline: Replay,
    legit: Legit | None = None,
    step: float = 10e-6,
) -> Replay:
    legit = legit if legit is not None else legit_calls()
    path = workdir / f"{name}.pcap"
    w = write_capture(path, attack, frames_hint, legit, step=step)
    result = replay_in_child(path, BUDGETS, workdir)
    added = result.peak_rss_mib - baseline.peak_rss_mib
    print(
        f"\n{name}: {w.count:,} frames, {w.bytes / 1e6:.1f} MB; replay {result.wall_s:.1f} s, "
        f"peak RSS {result.peak_rss_mib:.1f} MiB (baseline {baseline.peak_rss_mib:.1f}, +{added:.1f})\n"
        f"{result.summary}"
    )
    path.unlink()
    assert result.status == 0, result.summary
    assert added < ATTACK_RSS_BOUND_MIB, f"{name} added {added:.1f} MiB of RSS"
    assert legit.problems(result.events) == []
    return result


def attack_events(result: Replay) -> list[dict]:
    return [e for e in result.events if e["metadata"]["capture"]["client"].startswith("172.")]


def test_syn_flood(workdir: Path, baseline: Replay) -> None:
    n = 100_000
    r = run_attack("syn_flood", attacks.syn_flood(n), n, workdir, baseline)
    assert r.stat("tcp_flows") >= n
    # Each half-open flow beyond the table's size evicted one, less the slots the legitimate connections
    # (4, see legit_calls) freed when they closed; the legitimate ones were never chosen.
    assert r.stat("evict_flows") >= n - MAX_FLOWS - 4
    assert r.stat("evict_flows_half_open") == r.stat("evict_flows")
    assert r.stat("tcp_closed_evicted") == r.stat("evict_flows")
    assert attack_events(r) == []


def test_unfilled_holes(workdir: Path, baseline: Replay) -> None:
    n, segments = 10_000, 5
    r = run_attack("unfilled_holes", attacks.unfilled_holes(n, segments=segments), n * 8, workdir, baseline)
    # 2000 flows x 7 KB behind holes is more than the 8 MiB budget: the flow asking for more skips its
    # hole instead (gap_overflow); the table holds 2000 flows, so the oldest half-open ones are evicted
    # (their hole a CLOSED gap). Each flow's one hole is declared lost exactly once, one way or the other.
    assert r.stat("cap_buffer") > 0
    assert r.stat("cap_flow_buffer") == 0
    assert r.stat("gap_overflow") == r.stat("cap_buffer")
    assert r.stat("gap_overflow") + r.stat("gap_closed") == n
    assert r.stat("evict_flows") == r.stat("evict_flows_half_open") == n - MAX_FLOWS
    assert r.stat("gap_bytes") == n * 100
    assert n <= r.stat("tcp_ooo_segments") <= n * segments
    assert attack_events(r) == []


def test_tiny_out_of_order_pieces(workdir: Path, baseline: Replay) -> None:
    conns, pieces = 100, 3000
    attack = attacks.tiny_pieces(conns, pieces)
    r = run_attack("tiny_pieces", attack, conns * (pieces + 3), workdir, baseline)
    # 300k one-byte pieces are only 300 KB, far under the byte budgets, but ~100 B of bookkeeping each:
    # the piece budgets (256 KiB / 128 = 2048 per direction, 8 MiB / 128 = 65,536 in all) give up holes.
    assert r.stat("cap_flow_chunks") + r.stat("cap_chunks") > 0
    assert r.stat("cap_flow_buffer") == r.stat("cap_buffer") == 0
    # Every one-byte hole is declared lost exactly once, whichever way.
    holes = conns * pieces
    assert r.stat("gap_overflow") + r.stat("gap_timeout") + r.stat("gap_closed") == holes
    assert r.stat("gap_bytes") == holes
    assert attack_events(r) == []


def test_fragment_flood(workdir: Path, baseline: Replay) -> None:
    datagrams = 1000
    r = run_attack("fragments", attacks.fragment_flood(datagrams), datagrams * 40, workdir, baseline)
    # 1000 x 59 KB of partial datagrams, never completed: the fragment store keeps at most an eighth of
    # the 8 MiB budget (1 MiB, ~17 datagrams) and evicts the oldest beyond.
    assert r.stat("ip_fragments") == datagrams * 40
    assert r.stat("drop_ip_fragment_evicted") >= datagrams - 20
    assert r.stat("ip_reassembled") == 0
    assert attack_events(r) == []


def test_endless_chunked_body(workdir: Path, baseline: Replay) -> None:
    total = 64 << 20
    r = run_attack("endless_chunked", attacks.endless_chunked_body(total), total // 1448, workdir, baseline)
    # The body is counted, not kept: one event, its body left out as over the limit, cut at the end.
    assert r.stat("truncated_http_body") == 1
    (ev,) = attack_events(r)
    assert ev["request"]["uri"].endswith("/upload")
    assert ev["metadata"]["capture"]["flags"]


def test_huge_header_blocks(workdir: Path, baseline: Replay) -> None:
    n = 8
    r = run_attack("huge_headers", attacks.huge_header_blocks(n), n * 760, workdir, baseline)
    assert r.stat("cap_header_bytes") == n
    # After the oversized head the reader resyncs: the next request on the same connection is whole.
    after = {e["request"]["uri"]: e for e in attack_events(r) if "/after-huge/" in e["request"]["uri"]}
    assert sorted(after) == sorted(f"http://api.example:80/after-huge/{i}" for i in range(n))
    for i, ev in enumerate(sorted(after.values(), key=lambda e: e["request"]["uri"])):
        assert ev["response"]["status"] == 200 and b64decode(ev["response"]["body"]) == b"after %d" % i
        assert not ev["metadata"]["capture"].get("flags")
    assert r.stat("calls_without_request") == n  # each 431 answered a head we had to drop


def test_slowloris(workdir: Path, baseline: Replay) -> None:
    conns, head = 1000, 120
    r = run_attack("slowloris", attacks.slowloris(conns, head), conns * (head + 3), workdir, baseline)
    assert r.stat("tcp_flows") == conns + len(legit_calls().bursts) // 3
    assert r.stat("evict_flows") == 0
    # One-byte segments cost no object each: the heads (120 bytes x 1000) are all that is held.
    assert attack_events(r) == []


def test_slowloris_heads_cut_by_the_end_are_counted() -> None:
    stats = Stats()
    engine = Engine(Config(), _NullSink(), stats)
    for i, frame in enumerate(attacks.slowloris(50, 120)):
        engine.feed(1_700_000_000 + i * 1e-5, 1, frame, len(frame))
    engine.close()
    assert stats["tcp_closed_end"] == 50
    assert sum(stats.losses().values()) >= 50, stats.losses()


class _NullSink:
    def submit(self, event: dict) -> None:
        pass


def test_conflicting_retransmissions(workdir: Path, baseline: Replay) -> None:
    n = 3000
    r = run_attack("conflicts", attacks.conflicting_retransmissions(n), n * 12, workdir, baseline)
    assert r.stat("conflict_bytes") > 0
    uris = sorted(e["request"]["uri"] for e in attack_events(r))
    # The first copy of every byte wins, whichever of the three overlap shapes.
    assert uris == [f"http://api.example:80/first/{i:06d}" for i in range(n)]
    assert all(b64decode(e["response"]["body"]) == b"first" for e in attack_events(r))
    assert not any(e["metadata"]["capture"].get("flags") for e in attack_events(r))
    # Differing bytes counted: all 37 of the last delivered segment (kind 0), the 10 overlapping the
    # buffered tail (kind 1), the 6 overlapping the delivered head (kind 2).
    assert r.stat("conflict_bytes") == sum((37, 10, 6)[i % 3] for i in range(n))


def test_garbage_and_smuggling(workdir: Path, baseline: Replay) -> None:
    n = 400
    r = run_attack("garbage", attacks.garbage_and_smuggling(n), n * 5 * 10, workdir, baseline)
    events = attack_events(r)
    # TE + CL: Transfer-Encoding wins (RFC 9112 6.3), counted; the request in its "body" is a request.
    assert r.stat("http_te_and_cl") == n
    te = [e for e in events if "/te/" in e["request"]["uri"]]
    smuggled = [e for e in events if "/smuggled/" in e["request"]["uri"]]
    assert len(te) == len(smuggled) == n
    assert {e["response"]["status"] for e in te} == {200}
    assert {e["response"]["status"] for e in smuggled} == {404}
    # Duplicate conflicting Content-Length and a 2**64 chunk size cannot be framed: desync, counted.
    assert r.stat("http_desync") >= 2 * n
    # Random bytes and the HTTP/2 preface are not HTTP/1: those flows are dropped, counted.
    assert r.stat("flows_not_http") >= n
    assert r.stat("tcp_ignored_flows") >= n


def test_held_header_blocks_stay_within_the_global_budget(workdir: Path, baseline: Replay) -> None:
    n, size = MAX_FLOWS, 48 << 10
    r = run_attack("held_headers", attacks.held_header_blocks(n, size), n * 40, workdir, baseline)
    # 2000 x 48 KiB of open heads is ~94 MiB against an 8 MiB pool: the pool was hit and shed heads.
    assert r.stat("cap_http_buffer_head") > 0
    assert r.stat("drop_http_buffer_head_bytes") > 0
    assert attack_events(r) == []


def test_table_full_evicts_half_open_flows_before_established_ones() -> None:
    """conntrack's early_drop: with 3 slots, an idle keep-alive connection outlives 1000 SYNs, and once
    no half-open flow is left, the least recently active established one goes."""
    stats = Stats()
    limits = Limits(max_flows=3)
    table, decoder = FlowTable(limits, stats), Decoder(limits, stats)
    legit = [TcpConn((f"10.1.0.{i}", 50000), attacks.SERVER) for i in range(2)]
    ts = 1.0
    for conn in legit:
        for frame in conn.handshake() + conn.send(True, b"GET / HTTP/1.1\r\n\r\n"):
            table.feed(decoder.decode(ts, 1, frame))  # type: ignore[arg-type]
    for frame in attacks.syn_flood(1000):
        table.feed(decoder.decode(ts, 1, frame))  # type: ignore[arg-type]
    assert stats["evict_flows"] == stats["evict_flows_half_open"] == 999
    assert {f.caddr for f in table._lru.values() if f.opened} == {c.caddr for c in legit}
    third = TcpConn(("10.1.0.9", 50000), attacks.SERVER)
    for frame in third.handshake() + third.send(True, b"GET / HTTP/1.1\r\n\r\n"):
        table.feed(decoder.decode(ts, 1, frame))  # type: ignore[arg-type]
    # The SYN of the third evicted the last half-open flow; its data made it established; the next new
    # flow must now evict the least recently active established flow: the first legitimate one.
    table.feed(decoder.decode(ts, 1, next(attacks.syn_flood(1))))  # type: ignore[arg-type]
    assert stats["evict_flows"] == 1001 and stats["evict_flows_half_open"] == 1000
    assert legit[0].caddr not in {f.caddr for f in table._lru.values()}


# Limits fields no SNIFFER_* option sets (README lists them with their fixed values).
UNCONFIGURABLE = {"max_fragment_datagrams", "fragment_timeout_s"}
README = Path(__file__).resolve().parents[1] / "README.md"


def _budget_options() -> dict[str, str]:
    """SNIFFER_* env var -> the Limits field it sets (name, or name + "_s" for seconds)."""
    fields = {f.name for f in dataclasses.fields(Limits)}
    out = {}
    for opt in OPTIONS:
        for name in (opt.name, opt.name + "_s"):
            if opt.prefix == "SNIFFER" and name in fields:
                out[opt.env] = name
    return out


def test_every_budget_is_configurable_and_reaches_the_core() -> None:
    budgets = _budget_options()
    reached = set(budgets.values()) | {"max_body_bytes"}  # from MOESIF_*_MAX_BODY_SIZE_LIMIT
    assert {f.name for f in dataclasses.fields(Limits)} - reached == UNCONFIGURABLE
    env = {var: str(7 + i) for i, var in enumerate(sorted(budgets))}
    limits = Config.load(None, env).limits()
    for var, name in budgets.items():
        assert getattr(limits, name) == float(env[var]), var


def test_every_budget_is_in_the_readme_budgets_table() -> None:
    text = README.read_text()
    section = text[text.index("## Budgets") :]
    section = section[: section.index("\n## ", 3)]
    missing = [var for var in _budget_options() if f"`{var}`" not in section]
    assert missing == []
