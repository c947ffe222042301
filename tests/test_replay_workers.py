"""`replay --workers N`: the same set of events as one process, on real captures and crafted edge cases."""

from __future__ import annotations

import io
import ipaddress
import json
import os
import random
import subprocess
import sys
from array import array
from collections import Counter, deque
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import ListSink, tcp_conversation, write_pcap
from scapy.layers.inet import IP, TCP, fragment
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import CookedLinux, CookedLinuxV2, Dot1Q, Ether
from scapy.packet import Packet

from reassembly.events import Exchange
from reassembly.stats import Stats
from sniffer.capture.flow_hash import FlowSplitter, WorkerFrames
from sniffer.config import Config
from sniffer.engine import make_pipeline
from sniffer.errors import CaptureError
from sniffer.replay import replay_file
from sniffer.replay_worker import write_all
from sniffer.replay_workers import _shared_output

ROOT = Path(__file__).resolve().parents[1]
PUBLIC = ROOT.parent / "shared" / "pcaps" / "public"
DEMO = ROOT / "pcaps" / "kong-demo.pcap"
# the configuration tests/topology/verify.py replays the demo with (both emulated gateways' ports)
KONG_ENV = {
    "SNIFFER_KONG_PORTS": "8000,8001",
    "MOESIF_COMPANY_ID_HEADER": "X-Company-Id",
    "MOESIF_AUTHORIZATION_COMPANY_ID_FIELD": "company_id",
}
PUBLIC_CAPTURES = sorted(p for p in PUBLIC.glob("*.pcap*")) if PUBLIC.is_dir() else []


def _events(
    path: Path, workers: int, env: dict[str, str] | None = None
) -> tuple[Counter[str], dict[str, int]]:
    sink = ListSink()
    result = replay_file(str(path), Config.load(None, env or {}), sink, workers=workers)
    assert result.error is None, result.error
    # canonical JSON, as a multiset: the order of events differs between worker counts, nothing else may
    return Counter(json.dumps(e, sort_keys=True) for e in sink.events), dict(result.stats)


def _same(path: Path, workers: int, env: dict[str, str] | None = None) -> int:
    one, one_stats = _events(path, 1, env)
    many, many_stats = _events(path, workers, env)
    assert many == one
    for counter in ("packets", "flows", "exchanges", "events", "events_partial"):
        assert many_stats.get(counter, 0) == one_stats.get(counter, 0), counter
    return sum(one.values())


@pytest.mark.skipif(not PUBLIC_CAPTURES, reason=f"public corpus not found at {PUBLIC}")
def test_public_corpus_gives_the_same_events_with_two_workers() -> None:
    total = sum(_same(path, 2) for path in PUBLIC_CAPTURES)
    assert total > 1000  # the corpus has ~1,600 calls: a vacuous comparison would say 0


@pytest.mark.parametrize("workers", [2, 3])
def test_kong_demo_joins_the_same_calls_with_workers(workers: int) -> None:
    # Kong legs of one call may land in different workers: the main process joins them.
    n = _same(DEMO, workers, KONG_ENV)
    assert n >= 30


def test_kong_demo_joins_the_same_calls_when_every_leg_is_its_own_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The workers are forked, so they see the patched batch size: one packed leg per message, and the
    # main process merges many small messages per frame range.
    monkeypatch.setattr("sniffer.replay_worker.BATCH_PACKED", 1)
    assert _same(DEMO, 2, KONG_ENV) >= 30


def test_workers_share_the_daemons_budgets_over_all_flows() -> None:
    config = Config.load(None, {"SNIFFER_MAX_FLOWS": "1000", "SNIFFER_MAX_BUFFER_BYTES": str(64 << 20)})
    one = make_pipeline(config, Stats()).limits
    assert (one.max_flows, one.max_buffer_bytes, one.max_http_buffer_bytes) == (1000, 64 << 20, 64 << 20)
    two = make_pipeline(config, Stats(), 2).limits
    assert (two.max_flows, two.max_buffer_bytes, two.max_http_buffer_bytes) == (500, 32 << 20, 32 << 20)
    # per-flow and per-message caps are not shared
    assert (two.max_flow_buffer_bytes, two.max_header_bytes, two.max_body_bytes) == (
        one.max_flow_buffer_bytes,
        one.max_header_bytes,
        one.max_body_bytes,
    )


def test_cli_writes_the_same_lines_with_two_workers(tmp_path: Path) -> None:
    outs = []
    for w in ("1", "2"):
        out = tmp_path / f"w{w}.jsonl"
        cmd = [sys.executable, "-m", "sniffer", "replay", str(DEMO), "-q", "-o", str(out), "--workers", w]
        subprocess.run(
            cmd, check=True, cwd=ROOT, timeout=120, capture_output=True, env={**os.environ, **KONG_ENV}
        )
        outs.append(sorted(out.read_bytes().splitlines()))
    assert outs[0] == outs[1] and len(outs[0]) >= 30


LOSSY_IPV6 = PUBLIC / "zeek-1000req-lost-resp-ipv6.pcap"


@pytest.mark.skipif(not LOSSY_IPV6.exists(), reason=f"{LOSSY_IPV6} not found")
def test_workers_write_whole_lines_to_a_file_themselves_and_through_a_pipe_via_the_main_process(
    tmp_path: Path,
) -> None:
    """~1,000 plain events, built in the workers: to a regular file each worker writes its own batches
    (`_shared_output`), to a pipe the main process writes them. Either way every line is one whole event
    and the lines are one process's."""
    cmd = [sys.executable, "-m", "sniffer", "replay", str(LOSSY_IPV6), "-q"]
    one = tmp_path / "one.jsonl"
    subprocess.run([*cmd, "-o", str(one)], check=True, cwd=ROOT, timeout=120, capture_output=True)
    want = sorted(one.read_bytes().splitlines())
    assert len(want) >= 900
    many = tmp_path / "two.jsonl"
    subprocess.run([*cmd, "-o", str(many), "--workers", "2"], check=True, cwd=ROOT, timeout=120)
    piped = subprocess.run([*cmd, "--workers", "2"], check=True, cwd=ROOT, timeout=120, capture_output=True)
    for got in (many.read_bytes().splitlines(), piped.stdout.splitlines()):
        assert all(json.loads(line)["request"] for line in got)
        assert sorted(got) == want


def test_only_a_regular_file_or_dev_null_is_shared_with_the_workers(tmp_path: Path) -> None:
    with open(tmp_path / "out", "wb") as regular, open(os.devnull, "wb") as null:
        assert _shared_output(regular) == regular.fileno()
        assert _shared_output(null) == null.fileno()
    read, write = os.pipe()
    with os.fdopen(read, "rb"), os.fdopen(write, "wb") as pipe:
        assert _shared_output(pipe) is None
    assert _shared_output(io.BytesIO()) is None and _shared_output(None) is None


def test_a_worker_hands_the_main_process_only_what_it_could_not_write(tmp_path: Path) -> None:
    data = b'{"a":1}\n' * 1000
    with open(tmp_path / "out", "wb") as out:
        assert write_all(out.fileno(), data) == b""
    assert (tmp_path / "out").read_bytes() == data
    with open(tmp_path / "out", "rb") as read_only:  # every write fails: all of it is left
        assert write_all(read_only.fileno(), data) == data


def _flows(n: int) -> list[Packet]:
    packets: list[Packet] = []
    for i in range(n):
        req = f"GET /item/{i} HTTP/1.1\r\nHost: shop\r\n\r\n".encode()
        resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        packets += tcp_conversation([req], [resp], client=("10.0.0.1", 40000 + i), ts0=1_700_000_000.0 + i)
    return packets


def test_both_directions_of_a_flow_have_one_owner_and_flows_spread() -> None:
    split = FlowSplitter(2)
    by_flow: dict[frozenset[tuple[str, int]], set[int]] = {}
    for p in _flows(40):
        key = frozenset({(p[IP].src, p[TCP].sport), (p[IP].dst, p[TCP].dport)})
        by_flow.setdefault(key, set()).add(split.owner(1, bytes(p)))
    assert all(len(owners) == 1 for owners in by_flow.values())
    counts = Counter(next(iter(o)) for o in by_flow.values())
    assert min(counts[0], counts[1]) >= 10  # 40 flows, not all on one worker


class _CountingWalks(FlowSplitter):
    """Counts the frames that took the full walk (`_owner`) instead of `owner`'s short cut."""

    __slots__ = ("walks",)

    def __init__(self, n: int) -> None:
        super().__init__(n)
        self.walks = 0

    def _owner(self, linktype: int, frame: bytes) -> int:
        self.walks += 1
        return super()._owner(linktype, frame)


def test_every_link_layer_and_ip_version_takes_the_short_cut_to_the_walks_owner() -> None:
    # The common frame behind each link layer gets the owner the full walk gives, without the walk: IPv4
    # hashed from the address and port words in place, IPv6 keyed by its direction's address and port
    # bytes (an owner planted under those keys comes back for every frame; the walk would give the real one).
    walk = FlowSplitter(5)._owner
    for version, a, b in ((4, "10.0.0.1", "10.0.0.2"), (6, "2001:db8::1", "2001:db8::2")):
        frames = []
        for src, dst, sport, dport in ((a, b, 40000, 8000), (b, a, 8000, 40000)):
            ip = IP(src=src, dst=dst) if version == 4 else IPv6(src=src, dst=dst)
            packet = ip / TCP(sport=sport, dport=dport, flags="A") / b"x"
            proto = 0x0800 if version == 4 else 0x86DD
            frames += [
                (1, bytes(Ether(type=proto) / packet)),
                (113, bytes(CookedLinux(proto=proto) / packet)),
                (276, bytes(CookedLinuxV2(proto=proto) / packet)),
                (101, bytes(packet)),
            ]
        split = _CountingWalks(5)
        assert len({split.owner(lt, raw) for lt, raw in frames} | {walk(lt, raw) for lt, raw in frames}) == 1
        assert split.walks == 0, version
        if version == 4:
            assert not split._cache
            continue
        assert len(split._cache) == 2  # one key per direction
        for key in split._cache:
            split._cache[key] = 7  # no worker has that index: only the keyed path can answer it
        assert [split.owner(lt, raw) for lt, raw in frames] == [7] * len(frames)


_MAC_A, _MAC_B = "02:00:00:00:00:01", "02:00:00:00:00:02"  # given: scapy would look them up otherwise


def test_the_short_cut_owner_is_the_walks_for_any_addresses_and_ports() -> None:
    # Addresses with the top bit set (read as negative 32-bit words), both port orders, several worker
    # counts: the in-place IPv4 hash and the IPv6 key agree with the walk, and with the other direction.
    rng = random.Random(6)
    for n in (2, 3, 5, 8):
        split = _CountingWalks(n)
        walk = FlowSplitter(n)._owner
        owners = Counter[int]()
        for _ in range(300):
            sport, dport = rng.randrange(1 << 16), rng.randrange(1 << 16)
            if rng.random() < 0.5:
                a, b = (str(ipaddress.IPv4Address(rng.getrandbits(32))) for _ in range(2))
                ip_ab, ip_ba = IP(src=a, dst=b), IP(src=b, dst=a)
            else:
                a, b = (str(ipaddress.IPv6Address(rng.getrandbits(128))) for _ in range(2))
                ip_ab, ip_ba = IPv6(src=a, dst=b), IPv6(src=b, dst=a)
            there = bytes(Ether(src=_MAC_A, dst=_MAC_B) / ip_ab / TCP(sport=sport, dport=dport, flags="A"))
            back = bytes(Ether(src=_MAC_B, dst=_MAC_A) / ip_ba / TCP(sport=dport, dport=sport, flags="A"))
            who = split.owner(1, there)
            assert who == split.owner(1, back) == walk(1, there) == walk(1, back)
            owners[who] += 1
        assert split.walks == 0
        assert len(owners) == n  # 300 flows reach every worker


def test_vlan_tags_and_fragments_follow_their_flow(tmp_path: Path) -> None:
    split = FlowSplitter(7)
    flows = _flows(12)
    # the same frames with an 802.1Q tag: the same owner as untagged
    for p in flows:
        tagged = Ether(src=p.src, dst=p.dst) / Dot1Q(vlan=5) / p[IP]
        assert split.owner(1, bytes(tagged)) == split.owner(1, bytes(p))
    # a request sent in IPv4 fragments: every fragment goes to the owner of its flow
    big = b"POST /upload HTTP/1.1\r\nHost: shop\r\nContent-Length: 3000\r\n\r\n" + b"x" * 3000
    conv = tcp_conversation([big], [b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"], mss=9000)
    owner = split.owner(1, bytes(conv[0]))
    packets: list[Packet] = []
    for p in conv:
        if len(p[TCP].payload) > 1000:
            parts = fragment(p[IP], fragsize=800)
            assert len(parts) >= 4
            for part in parts:
                frame = Ether(src=p.src, dst=p.dst) / part
                frame.time = p.time
                assert split.owner(1, bytes(frame)) == owner
                packets.append(frame)
        else:
            packets.append(p)
    path = tmp_path / "frag.pcap"
    write_pcap(path, [*flows, *packets])
    for w in (2, 3, 5):
        assert _same(path, w, {"SNIFFER_KONG_PORTS": ""}) == 13


def test_a_worker_walks_its_own_frames_and_others_only_where_due_or_to_report() -> None:
    packets = _flows(40)
    frames = [(float(p.time), 1, bytes(p), len(p)) for p in packets]
    owners = [FlowSplitter(2).owner(1, f) for _, _, f, _ in frames]
    mine = [i + 1 for i, o in enumerate(owners) if o == 1]
    assert 0 < len(mine) < len(frames)
    # Nothing due, a report at frame 50 and then 50 frames after each: its own frames, plus the frames
    # numbered 50, 100, ... whoever owns them (each once), in order, with the file's numbers and bytes.
    walk = WorkerFrames(iter(frames), 2, 1)
    walk.due = float("inf")
    walk.report_at = 50
    seen = []
    for got in walk:
        seen.append(got)
        if got[0] >= walk.report_at:
            walk.report_at = got[0] + 50
    assert [s[0] for s in seen] == sorted(set(mine) | set(range(50, len(frames) + 1, 50)))
    assert all(s[5] == (owners[s[0] - 1] == 1) for s in seen)
    assert all(s[1:5] == frames[s[0] - 1] for s in seen)
    assert (walk.frame_no, walk.last_ts) == (len(frames), frames[-1][0])  # the last frame, whoever's
    # The defaults (due from -inf, a report at every frame): every frame.
    assert [s[0] for s in WorkerFrames(iter(frames), 2, 0)] == list(range(1, len(frames) + 1))
    # Due from a capture time on: every frame from there, before it only the worker's own.
    cut = frames[len(frames) // 2][0]
    walk = WorkerFrames(iter(frames), 2, 0)
    walk.due, walk.report_at = cut, 1 << 30
    got = [s[0] for s in walk]
    assert got == [i + 1 for i, (ts, *_) in enumerate(frames) if owners[i] == 0 or ts >= cut]


def test_a_worker_counts_the_frames_read_before_a_damaged_record() -> None:
    frames = [(float(p.time), 1, bytes(p), len(p)) for p in _flows(4)]

    def damaged() -> Iterator[tuple[float, int, bytes, int]]:
        yield from frames
        raise CaptureError("truncated record")

    walk = WorkerFrames(damaged(), 2, 0)
    walk.due, walk.report_at = float("inf"), 1 << 30
    with pytest.raises(CaptureError):
        list(walk)
    assert (walk.frame_no, walk.last_ts) == (len(frames), frames[-1][0])


def test_non_tcp_and_garbage_go_to_worker_zero() -> None:
    split = FlowSplitter(4)
    assert split.owner(1, b"\x00" * 10) == 0
    assert split.owner(1, bytes(Ether() / IP(proto=17) / (b"u" * 20))) == 0
    assert split.owner(147, b"anything") == 0


def test_a_damaged_file_gives_the_same_events_and_error_with_workers(tmp_path: Path) -> None:
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(DEMO.read_bytes()[: DEMO.stat().st_size * 2 // 3])
    results = []
    for w in (1, 2):
        sink = ListSink()
        result = replay_file(str(cut), Config.load(None, KONG_ENV), sink, workers=w)
        assert result.error is not None and "truncated" in str(result.error)
        results.append((Counter(json.dumps(e, sort_keys=True) for e in sink.events), str(result.error)))
    assert results[0] == results[1] and sum(results[0][0].values()) >= 10


def test_two_workers_deliver_the_same_events_to_the_collector(tmp_path: Path) -> None:
    from collector import APP_ID, running_collector

    capture = PUBLIC / "zeek-1000req-lost-resp-ipv6.pcap"
    if not capture.exists():
        pytest.skip(f"{capture} absent")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MOESIF_", "SNIFFER_"))}
    out = tmp_path / "events.jsonl"
    cmd = [sys.executable, "-m", "sniffer", "replay", str(capture), "-q"]
    subprocess.run([*cmd, "-o", str(out)], check=True, cwd=ROOT, env=env, timeout=120)
    expected = Counter(json.loads(line)["transaction_id"] for line in out.read_text().splitlines())
    with running_collector() as c:
        env.update(MOESIF_APPLICATION_ID=APP_ID, MOESIF_API_ENDPOINT=c.url, MOESIF_BATCH_MAX_TIME="0.2")
        p = subprocess.run(
            [*cmd, "--workers", "2"], cwd=ROOT, env=env, timeout=120, capture_output=True, text=True
        )
        assert p.returncode == 0, p.stderr[-2000:]
        assert Counter(c.collector.counts()) == expected and len(expected) >= 900


class _Recorder:
    """What the merge asks of the main engine, in order (the engine's own behaviour is tested elsewhere:
    here only where the joiner's clock moves relative to the legs)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def advance(self, ts: float) -> None:
        self.calls.append(("advance", ts))

    def feed_exchanges(self, ts: float, exchanges: list[object], weights: object = None) -> None:
        self.calls.append(("feed", [*exchanges] if exchanges else ts))


def _plain(entries: list[tuple[int, float]]) -> tuple[bytes, bytes]:
    return array("q", [f for f, _ in entries]).tobytes(), array("d", [e for _, e in entries]).tobytes()


def test_plain_ends_reach_the_joiner_clock_where_one_process_meets_them() -> None:
    """Frames with only plain exchanges travel as (frame, latest end) arrays. Before a leg at frame f of
    worker w the joiner's clock takes the latest plain end of every frame before f, and of frame f those
    of workers merged before w and w's own, never one after; what is left waits for the next leg."""
    from sniffer.replay_merge import PlainEnds, RecordMerger

    engine = _Recorder()
    queues: list[deque[tuple[int, float, list[object]]]] = [deque(), deque()]
    plain = [PlainEnds(), PlainEnds()]
    merger = RecordMerger(engine, queues, plain)  # type: ignore[arg-type]
    leg_a, leg_b, leg_c = (
        Exchange(
            flow_id=i, client=("10.0.0.1", 40000 + i), server=("10.0.0.2", 8000), request=None, response=None
        )
        for i in range(3)
    )
    plain[0].add(*_plain([(1, 10.0), (3, 30.0), (5, 50.0), (9, 90.0)]))
    plain[1].add(*_plain([(2, 20.0), (5, 55.0), (6, 60.0)]))
    queues[1].append((5, 5.5, [leg_a]))  # worker 1 at frame 5: worker 0's frame 5 comes first, its own too
    queues[0].append((7, 7.5, [leg_b]))  # frame 7: everything up to 6
    merger.merge(8)
    plain[1].add(*_plain([(12, 120.0)]))
    queues[0].append((12, 12.5, [leg_c]))  # worker 0 at frame 12: worker 1's frame 12 not before it
    merger.merge(12)
    assert engine.calls == [
        ("advance", 55.0), ("feed", [leg_a]), ("feed", 5.5),
        ("advance", 60.0), ("feed", [leg_b]), ("feed", 7.5),
        ("advance", 90.0), ("feed", [leg_c]), ("feed", 12.5),
    ]  # fmt: skip
    merger.close()
    assert engine.calls[-1] == ("advance", 120.0)  # what no leg took, at the end
