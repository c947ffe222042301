"""The kernel side of TLS capture on real bytes: eBPF uprobes on a real nginx's OpenSSL, driven by curl.

Needs root, the uprobe PMU and nginx/openssl/curl; skips with the reason otherwise.
"""

from __future__ import annotations

import ctypes
import os
import platform
import re
import select
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tls.https_gateway import SYSTEM_LIBSSL, HttpsGateway, missing_tools

from reassembly.stats import Stats
from sniffer.capture import bpf_sys
from sniffer.capture.bpf_asm import R0, Program
from sniffer.capture.tls import (
    ProbeConfig,
    TlsBound,
    TlsData,
    TlsFreed,
    TlsRecord,
    TlsTap,
    TlsUnavailable,
)
from sniffer.capture.tls.probe_loader import load_probes
from sniffer.capture.tls.ssl_probes import SYMBOLS
from sniffer.capture.tls.streams import TlsStreams
from sniffer.capture.tls.uprobes import elf_symbol_offsets

REPO = Path(__file__).resolve().parents[1]


def _why_not() -> str | None:
    if platform.machine() != "x86_64":
        return "the TLS probes are x86_64 only"
    if os.geteuid() != 0:
        return "loading eBPF programs needs root (CAP_BPF + CAP_PERFMON)"
    if not Path("/sys/bus/event_source/devices/uprobe/type").exists():
        return "the kernel has no uprobe PMU"
    return None


pytestmark = pytest.mark.skipif(_why_not() is not None, reason=str(_why_not()))


def _needs_gateway() -> None:
    reason = missing_tools()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpsGateway]:
    _needs_gateway()
    with HttpsGateway(tmp_path_factory.mktemp("nginx-https")) as gw:
        yield gw


def collect(tap: TlsTap, done: Callable[[list[TlsRecord]], bool], timeout: float = 3.0) -> list[TlsRecord]:
    """Records until `done(records)` or the timeout, waiting on the tap's fd as a daemon would."""
    records: list[TlsRecord] = []
    poller = select.poll()
    poller.register(tap.fileno(), select.POLLIN)
    deadline = time.monotonic() + timeout
    while not done(records) and time.monotonic() < deadline:
        poller.poll(100)
        records += tap.read()
    return records + tap.read()


def of(records: list[TlsRecord], pids: set[int]) -> list[TlsRecord]:
    return [r for r in records if r.pid in pids]


def stream(records: list[TlsRecord], ssl: int, is_read: bool) -> bytes:
    return b"".join(
        r.data for r in records if isinstance(r, TlsData) and r.ssl == ssl and r.is_read == is_read
    )


# --- programs and symbols, no gateway needed ---


@pytest.mark.parametrize(
    "config",
    [
        ProbeConfig(),
        ProbeConfig(rate_limit=1000),
        ProbeConfig(per_call_cap=1, chunk_bytes=1),
        ProbeConfig(per_call_cap=300, chunk_bytes=256, rate_limit=5),
        ProbeConfig(per_call_cap=16 * 65536, chunk_bytes=65536),
    ],
    ids=["default", "rate-limited", "one-byte", "small-chunks", "largest"],
)
def test_verifier_accepts_every_program(config: ProbeConfig) -> None:
    probes = load_probes(config)
    try:
        assert sorted(probes.programs) == sorted(
            [(s, False) for s in SYMBOLS]
            + [(s, True) for s in ("SSL_read", "SSL_read_ex", "SSL_write", "SSL_write_ex")]
        )
        assert all(fd > 2 for fd in probes.programs.values())
    finally:
        probes.close()


def test_rejected_program_carries_the_verifier_log() -> None:
    program = Program()
    program.exit()  # r0 never set: the verifier must refuse
    with pytest.raises(bpf_sys.BpfError) as info:
        bpf_sys.prog_load(bpf_sys.PROG_KPROBE, program.assemble(), "bad")
    assert "R0 !read_ok" in str(info.value)
    program = Program()
    program.mov(R0, 0)
    program.exit()
    fd = bpf_sys.prog_load(bpf_sys.PROG_KPROBE, program.assemble(), "good")
    os.close(fd)


def test_symbol_offsets_match_the_dynamic_loader() -> None:
    """Our ELF reader's file offsets equal where ld.so put the functions, minus the mapping's base."""
    library = "/usr/lib/x86_64-linux-gnu/libssl.so.3"
    if not Path(library).exists():
        pytest.skip("libssl.so.3 is not installed")
    offsets = elf_symbol_offsets(library, set(SYMBOLS) | {"No_such_function"})
    assert set(offsets) == set(SYMBOLS)
    lib = ctypes.CDLL(library)
    real = os.path.realpath(library)
    maps = [line.split() for line in Path("/proc/self/maps").read_text().splitlines()]
    for symbol, offset in offsets.items():
        address = ctypes.cast(getattr(lib, symbol), ctypes.c_void_p).value
        assert address is not None
        for fields in maps:
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if len(fields) == 6 and os.path.realpath(fields[5]) == real and start <= address < end:
                assert address - start + int(fields[2], 16) == offset, symbol
                break
        else:
            pytest.fail(f"{symbol} at {address:#x} is in no mapping of {library}")


def test_unavailable_on_another_architecture(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    with pytest.raises(TlsUnavailable, match="x86_64, this host is aarch64"):
        TlsTap.open()


_OPEN_OR_SAY_WHY = (
    "import sys\n"
    "from sniffer.capture.tls import TlsTap, TlsUnavailable\n"
    "try:\n    TlsTap.open().close()\n"
    "except TlsUnavailable as exc:\n    print(exc)\n    sys.exit(3)\n"
)


def _open_with_capabilities(caps: str) -> subprocess.CompletedProcess[str]:
    """TlsTap.open() in a child holding only `caps` (setpriv syntax, e.g. "-all,+sys_admin")."""
    if not Path("/usr/bin/setpriv").exists():
        pytest.skip("setpriv (util-linux) is not installed")
    sets = [f"--inh-caps={caps}", f"--bounding-set={caps}"]
    if "+" in caps:
        sets.append(f"--ambient-caps={caps}")
    return subprocess.run(
        ["setpriv", *sets, "--", sys.executable, "-c", _OPEN_OR_SAY_WHY],
        capture_output=True, text=True, timeout=30, cwd=REPO,
    )  # fmt: skip


def _one_plain_sentence(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    message = result.stdout.strip()
    assert "\n" not in message and message.startswith("TLS capture unavailable: ")
    assert "CAP_SYS_ADMIN" in message and "CAP_SYS_PTRACE" in message
    return message


def test_unavailable_without_capabilities_is_one_plain_sentence() -> None:
    message = _one_plain_sentence(_open_with_capabilities("-all"))
    assert "loading the eBPF programs not permitted" in message


@pytest.mark.parametrize(
    ("caps", "refused"),
    [
        ("-all,+bpf,+perfmon,+sys_ptrace", "attaching uprobes not permitted"),
        ("-all,+sys_admin", "/root/"),
    ],
    ids=["bpf+perfmon-are-not-enough", "no-ptrace-no-maps"],
)
def test_which_capabilities_are_missing(gateway: HttpsGateway, caps: str, refused: str) -> None:
    """The fixture's workers run as nobody: reading their maps needs CAP_SYS_PTRACE; creating a uprobe
    needs CAP_SYS_ADMIN on current kernels. With both, the same child opens the tap."""
    assert refused in _one_plain_sentence(_open_with_capabilities(caps))
    assert _open_with_capabilities("-all,+sys_admin,+sys_ptrace").returncode == 0


_STATIC_GATEWAY_C = r"""
#include <stdio.h>
#include <string.h>
/* OpenSSL's signatures, defined in the executable and exported (-rdynamic) as in a gateway that links
   OpenSSL statically. No SSL_read_ex/SSL_write_ex: those probes must be skipped, not fatal. */
__attribute__((noinline)) int SSL_set_fd(void *ssl, int fd) { __asm__ volatile("" ::: "memory"); return 1; }
__attribute__((noinline)) int SSL_write(void *ssl, const void *buf, int num) {
    __asm__ volatile("" ::: "memory"); return num; }
__attribute__((noinline)) int SSL_read(void *ssl, void *buf, int num) { memcpy(buf, "pong", 4); return 4; }
__attribute__((noinline)) void SSL_free(void *ssl) { __asm__ volatile("" ::: "memory"); }
int main(void) {
    char line[64], buf[16];
    void *ssl = (void *)0x5eed;
    setvbuf(stdout, NULL, _IONBF, 0);
    puts("ready");
    while (fgets(line, sizeof line, stdin)) {
        SSL_set_fd(ssl, 7);
        SSL_write(ssl, line, (int)strlen(line));
        SSL_read(ssl, buf, sizeof buf);
        SSL_free(ssl);
        puts("done");
    }
    return 0;
}
"""


def test_openssl_linked_into_the_executable(tmp_path: Path) -> None:
    """No libssl mapped: the tap probes the executable itself (its .dynsym), at PIE file offsets."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    (tmp_path / "gw.c").write_text(_STATIC_GATEWAY_C)
    binary = tmp_path / "tlsstaticgw"
    subprocess.run(["gcc", "-O1", "-rdynamic", "-o", str(binary), str(tmp_path / "gw.c")], check=True)
    proc = subprocess.Popen([str(binary)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert proc.stdout.readline() == b"ready\n"
        with TlsTap.open(("tlsstaticgw",)) as tap:
            assert tap.watched_pids() == [proc.pid]
            assert tap.libraries() == [f"/proc/{proc.pid}/exe"]
            proc.stdin.write(b"GET /static-ssl\n")
            proc.stdin.flush()
            assert proc.stdout.readline() == b"done\n"
            records = collect(tap, lambda rs: any(isinstance(r, TlsFreed) for r in rs))
    finally:
        proc.kill()
        proc.wait()
    assert [type(r) for r in records] == [TlsBound, TlsData, TlsData, TlsFreed]
    assert all(r.pid == proc.pid and r.ssl == 0x5EED for r in records)
    bound, sent, received, _ = records
    assert isinstance(bound, TlsBound) and bound.fd == 7
    assert isinstance(sent, TlsData) and not sent.is_read and sent.data == b"GET /static-ssl\n"
    assert isinstance(received, TlsData) and received.is_read and received.data == b"pong"


# --- a real nginx over HTTPS ---


def test_nginx_plaintext_both_ways_and_only_nginx(gateway: HttpsGateway) -> None:
    workers = set(gateway.worker_pids())
    before = time.monotonic_ns()
    with TlsTap.open() as tap:
        assert workers <= set(tap.watched_pids())
        curl_pid, result = gateway.curl("/api/orders?page=2", "apikey: key-alice-123")
        assert result.stdout.endswith(b"\n200")

        def finished(records: list[TlsRecord]) -> bool:
            return any(isinstance(r, TlsFreed) for r in of(records, workers))

        records = collect(tap, finished)
        after = time.monotonic_ns()
        counters = tap.counters()

    assert not [r for r in records if r.pid == curl_pid], "curl maps the same libssl but is not watched"
    mine = of(records, workers)
    bound = [r for r in mine if isinstance(r, TlsBound)]
    assert len(bound) == 1 and bound[0].fd > 2
    ssl = bound[0].ssl
    assert next(type(r) for r in mine if r.ssl == ssl) is TlsBound
    assert isinstance(mine[-1], TlsFreed) and mine[-1].ssl == ssl
    request = stream(mine, ssl, is_read=True)
    assert request.startswith(b"GET /api/orders?page=2 HTTP/1.1\r\n")
    assert b"\r\napikey: key-alice-123\r\n" in request and request.endswith(b"\r\n\r\n")
    response = stream(mine, ssl, is_read=False)
    assert response.startswith(b"HTTP/1.1 200 OK\r\n") and response.endswith(b'{"path":"/api/orders"}')
    for record in mine:
        assert before <= record.ts_ns <= after  # CLOCK_MONOTONIC, as records.py promises
        if isinstance(record, TlsData):
            assert record.total_len == len(record.data) > 0
    assert counters["records"] >= len(mine)
    assert counters["ring_full"] == counters["truncated_bytes"] == counters["read_errors"] == 0


def test_a_call_nginx_answers_itself(gateway: HttpsGateway) -> None:
    workers = set(gateway.worker_pids())
    with TlsTap.open() as tap:
        _, result = gateway.curl("/local401")
        assert result.stdout.endswith(b"\n401")
        records = of(collect(tap, lambda rs: any(isinstance(r, TlsFreed) for r in of(rs, workers))), workers)
    ssl = next(r.ssl for r in records if isinstance(r, TlsBound))
    assert stream(records, ssl, is_read=True).startswith(b"GET /local401 HTTP/1.1\r\n")
    response = stream(records, ssl, is_read=False)
    assert response.startswith(b"HTTP/1.1 401 Unauthorized\r\n")
    assert response.endswith(b'{"message":"No API key found in request"}')


def test_watching_decides_not_the_library(gateway: HttpsGateway) -> None:
    """openssl s_client maps the same libssl as nginx: a tap watching "openssl" sees its writes, a tap
    watching only "nginx" (attached to the same file at the same time) does not."""
    client = subprocess.Popen(
        ["openssl", "s_client", "-quiet", "-connect", f"127.0.0.1:{gateway.port}"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        with TlsTap.open(("nginx", "openssl")) as both, TlsTap.open(("nginx",)) as nginx_only:
            assert client.pid in both.watched_pids() and client.pid not in nginx_only.watched_pids()
            assert client.stdin is not None and client.stdout is not None
            client.stdin.write(b"GET /from-s-client HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            client.stdin.flush()
            assert client.stdout.read().startswith(b"HTTP/1.1 200 OK")
            seen_both = collect(both, lambda rs: any(r.pid == client.pid for r in rs))
            seen_nginx = collect(
                nginx_only, lambda rs: any(b"/from-s-client" in getattr(r, "data", b"") for r in rs)
            )
    finally:
        client.kill()
        client.wait()
    sent = [r for r in seen_both if r.pid == client.pid and isinstance(r, TlsData) and not r.is_read]
    assert any(r.data.startswith(b"GET /from-s-client") for r in sent)
    assert not [r for r in seen_nginx if r.pid == client.pid]
    assert any(b"GET /from-s-client" in getattr(r, "data", b"") for r in seen_nginx)


def test_large_calls_come_in_chunks_and_the_cap_counts_the_rest(gateway: HttpsGateway) -> None:
    workers = set(gateway.worker_pids())
    body = 50_000
    small = ProbeConfig(per_call_cap=1000, chunk_bytes=512)
    with TlsTap.open() as whole, TlsTap.open(config=small) as capped:
        gateway.curl(f"/big?n={body}")

        def freed(records: list[TlsRecord]) -> bool:
            return any(isinstance(r, TlsFreed) for r in of(records, workers))

        full = of(collect(whole, freed), workers)
        cut = of(collect(capped, freed), workers)
        cut_counters = capped.counters()
    ssl = next(r.ssl for r in full if isinstance(r, TlsBound))
    response = stream(full, ssl, is_read=False)
    head, _, payload = response.partition(b"\r\n\r\n")
    assert f"Content-Length: {body}".encode() in head and payload == b"x" * body

    writes = [r for r in cut if isinstance(r, TlsData) and not r.is_read]
    assert sum(r.total_len for r in writes) == len(response)  # every byte accounted for
    lost = sum(r.total_len - len(r.data) for r in writes)
    assert lost > 0 and cut_counters["truncated_bytes"] == lost
    assert max(len(r.data) for r in writes) <= 512
    # the records of one call are its first 1000 bytes, in order
    assert response.startswith(writes[0].data + writes[1].data)


def test_records_wrapping_around_a_small_ring_arrive_whole(gateway: HttpsGateway) -> None:
    """8 KiB ring, ~300-byte records: after a few requests records straddle the ring's end, which the
    double mapping of the data area must hand over contiguously."""
    workers = set(gateway.worker_pids())
    calls = 30
    requests, responses = [], []
    with TlsTap.open(config=ProbeConfig(ring_bytes=8 * 1024, wakeup_bytes=0)) as tap:
        for i in range(calls):
            gateway.curl(f"/wrap/{i}")
            records = collect(tap, lambda rs: any(isinstance(r, TlsFreed) for r in of(rs, workers)))
            data = [r for r in of(records, workers) if isinstance(r, TlsData)]
            requests += [r.data for r in data if r.is_read]
            responses += [r.data for r in data if not r.is_read]
        counters = tap.counters()
    assert counters["ring_full"] == 0
    assert [r.split(b" ", 2)[1] for r in requests] == [f"/wrap/{i}".encode() for i in range(calls)]
    assert all(r.endswith(b"\r\n\r\n") for r in requests)
    assert len(responses) == calls
    assert all(r.startswith(b"HTTP/1.1 200 OK\r\n") and r.endswith(b'"}') for r in responses)
    # each data record takes at least 8 (ring header) + 40 (ours) + 256 (smallest size class) bytes
    assert (len(requests) + len(responses)) * 304 > 2 * 8 * 1024  # wrapped at least twice


def test_rate_limit_drops_whole_calls_and_counts_them(gateway: HttpsGateway) -> None:
    workers = set(gateway.worker_pids())
    calls = 8
    with TlsTap.open() as unlimited, TlsTap.open(config=ProbeConfig(rate_limit=3)) as limited:
        for i in range(calls):
            gateway.curl(f"/n/{i}")

        def all_freed(records: list[TlsRecord]) -> bool:
            return sum(isinstance(r, TlsFreed) for r in of(records, workers)) >= calls

        every = [r for r in of(collect(unlimited, all_freed), workers) if isinstance(r, TlsData)]
        kept = [r for r in of(collect(limited, all_freed), workers) if isinstance(r, TlsData)]
        dropped = limited.counters()["rate_limited"]
    assert len(every) >= 2 * calls  # at least a read and a write per call
    assert 3 <= len(kept) < len(every)
    assert len(kept) + dropped == len(every)


def test_refresh_follows_restarted_workers(gateway: HttpsGateway) -> None:
    old = set(gateway.worker_pids())
    with TlsTap.open() as tap:
        assert old <= set(tap.watched_pids())
        gateway.restart()
        new = set(gateway.worker_pids())
        assert new and not new & old
        tap.refresh()
        watched = set(tap.watched_pids())
        assert new <= watched and not old & watched
        assert tap.counters()["libraries"] == 1  # the same libssl file: attached once
        gateway.curl("/after-restart")
        records = collect(tap, lambda rs: any(b"/after-restart" in getattr(r, "data", b"") for r in rs))
    assert any(r.pid in new and b"GET /after-restart" in getattr(r, "data", b"") for r in records)


def test_a_blocked_reader_is_woken_per_record_or_only_past_the_threshold(gateway: HttpsGateway) -> None:
    eager = ProbeConfig(wakeup_bytes=0)
    lazy = ProbeConfig(wakeup_bytes=1 << 20)
    with TlsTap.open(config=eager) as woken, TlsTap.open(config=lazy) as quiet:
        woke: dict[str, bool] = {}

        def wait(name: str, tap: TlsTap) -> None:
            # epoll, as a daemon's loop would: (poll() rescans every fd when its timeout expires and
            # would report the waiting records either way)
            with select.epoll() as poller:
                poller.register(tap.fileno(), select.EPOLLIN)
                woke[name] = bool(poller.poll(1.0))

        waiters = [threading.Thread(target=wait, args=item) for item in (("eager", woken), ("lazy", quiet))]
        for waiter in waiters:
            waiter.start()
        time.sleep(0.2)  # both are asleep in poll() before the first record
        gateway.curl("/wake")
        for waiter in waiters:
            waiter.join()
        woken_records, quiet_records = woken.read(), quiet.read()
    assert woke == {"eager": True, "lazy": False}

    # the lazy tap has every record all the same, for the reader whose poll timed out
    def same(records: list[TlsRecord]) -> list[tuple[object, ...]]:  # each tap reads its own clock
        return [(type(r), r.pid, r.ssl, getattr(r, "data", None), getattr(r, "fd", None)) for r in records]

    assert same(quiet_records) == same(woken_records) and quiet_records


def test_the_gateways_own_library_in_another_mount_namespace(tmp_path: Path) -> None:
    """As from a container with --pid=host: nginx's libssl.so.3 is another file at the same path. The
    tap must probe nginx's file (through /proc/<pid>/root), not the one its own namespace shows."""
    _needs_gateway()
    if shutil.which("unshare") is None or not Path(SYSTEM_LIBSSL).exists():
        pytest.skip("unshare or the system libssl.so.3 is missing")
    with HttpsGateway(tmp_path, own_libssl=True) as gw:
        workers = set(gw.worker_pids())
        theirs = os.stat(f"/proc/{min(workers)}/root{SYSTEM_LIBSSL}")
        ours = os.stat(SYSTEM_LIBSSL)
        assert (theirs.st_dev, theirs.st_ino) != (ours.st_dev, ours.st_ino)
        with TlsTap.open() as tap:
            probed = [os.stat(path) for path in tap.libraries()]
            gw.curl("/from-the-host", "apikey: k")
            records = of(
                collect(tap, lambda rs: any(isinstance(r, TlsFreed) for r in of(rs, workers))), workers
            )
    assert (theirs.st_dev, theirs.st_ino) in [(st.st_dev, st.st_ino) for st in probed]
    assert any(b"GET /from-the-host" in getattr(r, "data", b"") for r in records)


def test_close_detaches_and_is_idempotent(gateway: HttpsGateway) -> None:
    tap = TlsTap.open()
    tap.close()
    tap.close()
    assert tap.read() == [] and tap.counters() == {}
    tap.refresh()  # a closed tap ignores refresh instead of failing


# --- the socket's addresses, read in the kernel at SSL_set_fd ---


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"], ids=["ipv4", "ipv6"])
def test_ssl_set_fd_carries_the_sockets_addresses(gateway: HttpsGateway, host: str) -> None:
    """nginx's accepted socket as curl saw it from its side: curl's address and port are the remote."""
    if host == "::1" and not gateway.ipv6:
        pytest.skip("no IPv6 loopback on this host")
    workers = set(gateway.worker_pids())
    with TlsTap.open() as tap:
        assert tap.kernel_addresses, tap.kernel_addresses_error
        _, result = gateway.curl(
            "/local401", host=host, write_out="\n%{local_ip} %{local_port} %{remote_ip} %{remote_port}"
        )
        records = of(collect(tap, lambda rs: any(isinstance(r, TlsFreed) for r in of(rs, workers))), workers)
    curl_ip, curl_port, server_ip, server_port = result.stdout.splitlines()[-1].decode().split()
    bound = [r for r in records if isinstance(r, TlsBound)]
    assert len(bound) == 1
    assert bound[0].local == (server_ip, int(server_port)) == (host, gateway.port)
    assert bound[0].remote == (curl_ip, int(curl_port))


def test_without_the_walk_ssl_set_fd_has_no_addresses(gateway: HttpsGateway) -> None:
    workers = set(gateway.worker_pids())
    with TlsTap.open(kernel_addresses=False) as tap:
        assert not tap.kernel_addresses and tap.kernel_addresses_error == "disabled"
        gateway.curl("/local401")
        records = of(collect(tap, lambda rs: any(isinstance(r, TlsFreed) for r in of(rs, workers))), workers)
    bound = [r for r in records if isinstance(r, TlsBound)]
    assert len(bound) == 1 and bound[0].fd > 2 and bound[0].local is None and bound[0].remote is None


_SET_FD_CHILD = r"""
import ctypes, os, socket, sys
ctypes.CDLL(None).prctl(15, b"tlsfdcheck", 0, 0, 0)  # PR_SET_NAME: the comm the tap looks for
ssl = ctypes.CDLL("libssl.so.3")
ssl.TLS_method.restype = ssl.SSL_CTX_new.restype = ssl.SSL_new.restype = ctypes.c_void_p
ssl.SSL_CTX_new.argtypes = [ctypes.c_void_p]
ssl.SSL_new.argtypes = [ctypes.c_void_p]
ssl.SSL_set_fd.argtypes = [ctypes.c_void_p, ctypes.c_int]
ctx = ssl.SSL_CTX_new(ssl.TLS_method())
objs = [ssl.SSL_new(ctx) for _ in range(4)]
print("ready", flush=True)
sys.stdin.readline()
read_end, _ = os.pipe()
conn = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.connect(("127.0.0.1", 9))
for obj, fd in zip(objs, (read_end, 1_000_000, conn.fileno(), udp.fileno())):
    ssl.SSL_set_fd(obj, fd)
local, remote = conn.getsockname(), conn.getpeername()
print(" ".join(str(x) for x in (*objs, read_end, local[1], remote[1], udp.getsockname()[1])), flush=True)
sys.stdin.readline()
"""


def test_ssl_set_fd_on_what_is_not_a_tcp_socket(gateway: HttpsGateway) -> None:
    """A pipe's fd is not misread as a socket (its file's private_data is no struct socket whose file
    points back), an fd beyond the table is refused, a connected socket is read; a UDP socket (DTLS)
    is a socket: its addresses are reported as they are."""
    system_python = "/usr/bin/python3"
    if not os.path.exists(system_python):
        pytest.skip("needs /usr/bin/python3 with libssl.so.3")
    child = subprocess.Popen(
        [system_python, "-c", _SET_FD_CHILD, str(gateway.port)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert child.stdin is not None and child.stdout is not None
    try:
        assert child.stdout.readline() == "ready\n"
        with TlsTap.open(("tlsfdcheck",)) as tap:
            assert tap.watched_pids() == [child.pid]
            child.stdin.write("go\n")
            child.stdin.flush()
            pipe_ssl, far_ssl, tcp_ssl, udp_ssl, pipe_fd, lport, rport, uport = map(
                int, child.stdout.readline().split()
            )
            records = collect(tap, lambda rs: len(rs) >= 4)
            child.stdin.write("done\n")
            child.stdin.flush()
    finally:
        child.kill()
        child.wait()
    bound = {r.ssl: r for r in records if isinstance(r, TlsBound)}
    assert sorted(bound) == sorted([pipe_ssl, far_ssl, tcp_ssl, udp_ssl])
    assert bound[pipe_ssl].fd == pipe_fd and bound[pipe_ssl].local is None
    assert bound[far_ssl].fd == 1_000_000 and bound[far_ssl].local is None
    assert bound[tcp_ssl].local == ("127.0.0.1", lport) and bound[tcp_ssl].remote == ("127.0.0.1", rport)
    assert bound[udp_ssl].local == ("127.0.0.1", uport) and bound[udp_ssl].remote == ("127.0.0.1", 9)


# --- stream offsets: a record lost in the kernel becomes an exact gap ---


def _https_get(conn: ssl.SSLSocket, path: str) -> bytes:
    """One keep-alive GET on an open TLS connection; the whole response (Content-Length framed)."""
    conn.sendall(f"GET {path} HTTP/1.1\r\nHost: gw\r\n\r\n".encode())
    raw = b""
    while b"\r\n\r\n" not in raw:
        raw += conn.recv(65536)
    head, _, body = raw.partition(b"\r\n\r\n")
    length = int(re.search(rb"Content-Length: (\d+)", head)[1])  # type: ignore[index]
    while len(body) < length:
        body += conn.recv(65536)
    return head + b"\r\n\r\n" + body


def test_records_the_full_ring_dropped_become_an_exact_gap(gateway: HttpsGateway) -> None:
    """A 64 KiB ring nobody reads during a 400 KB response: most of its records are dropped (ring_full).
    The next response on the same connection starts at the kernel's stream offset = the first
    response's exact length, so the plaintext stage declares precisely the bytes lost and still parses
    the second exchange whole."""
    workers = set(gateway.worker_pids())
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    tap = TlsTap.open(config=ProbeConfig(ring_bytes=64 * 1024, wakeup_bytes=0))
    with tap, socket.create_connection(("127.0.0.1", gateway.port)) as raw:
        with context.wrap_socket(raw) as conn:
            first = _https_get(conn, "/big?n=400000")  # the ring fills: not read meanwhile
            records = tap.read()
            second = _https_get(conn, "/after-the-loss")
            records += collect(tap, lambda rs: any(isinstance(r, TlsData) and not r.is_read for r in rs))
        records += collect(tap, lambda rs: any(isinstance(r, TlsFreed) for r in of(rs, workers)), 2.0)
        counters = tap.counters()
    mine = of(records, workers)
    assert counters["ring_full"] > 0
    ssl_obj = next(r.ssl for r in mine if isinstance(r, TlsBound))
    writes = [r for r in mine if isinstance(r, TlsData) and r.ssl == ssl_obj and not r.is_read]
    reads = [r for r in mine if isinstance(r, TlsData) and r.ssl == ssl_obj and r.is_read]
    assert [r.offset for r in reads] == [0, len(b"".join(r.data for r in reads[:1]))]
    after = [r for r in writes if r.offset is not None and r.offset >= len(first)]
    assert after and after[0].offset == len(first)  # exact, whatever was dropped before it
    assert b"".join(r.data for r in after) == second
    captured = sum(len(r.data) for r in writes if r.offset is not None and r.offset < len(first))
    assert 0 < captured < len(first)

    stats = Stats()
    streams = TlsStreams(stats=stats, epoch_offset=0.0)
    exchanges = streams.feed(mine) + streams.close()
    assert [(e.request.target, e.response.status) for e in exchanges if e.request and e.response] == [
        (b"/big?n=400000", 200),
        (b"/after-the-loss", 200),
    ]
    big, small = exchanges
    assert big.flags and not small.flags  # the gap marks the first exchange only
    assert stats["lost_tls_bytes"] == len(first) - captured and stats["lost_tls_gaps"] >= 1
