"""SocketResolver against real sockets: the test process's own and an nginx worker's (through its /proc)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sniffer.capture.tls.sockets import SocketResolver, parse_proc_address


def pair(family: int, host: str) -> Iterator[tuple[socket.socket, socket.socket, socket.socket]]:
    srv = socket.socket(family, socket.SOCK_STREAM)
    srv.bind((host, 0))
    srv.listen(1)
    cli = socket.create_connection(srv.getsockname()[:2])
    acc, _ = srv.accept()
    try:
        yield srv, cli, acc
    finally:
        for s in (cli, acc, srv):
            s.close()


def test_parse_proc_address_both_families() -> None:
    assert parse_proc_address(b"0100007F:1F90") == ("127.0.0.1", 8080)
    assert parse_proc_address(b"00000000000000000000000001000000:20FB") == ("::1", 8443)
    # ::ffff:10.77.1.2 (IPv4-mapped) is given as IPv4 text, as the packet path sees it
    assert parse_proc_address(b"0000000000000000FFFF000002014D0A:01BB") == ("10.77.1.2", 443)


@pytest.mark.parametrize(("family", "host"), [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_own_sockets_resolve_like_getsockname(family: int, host: str) -> None:
    if family == socket.AF_INET6 and not socket.has_ipv6:
        pytest.skip("no IPv6")
    resolver = SocketResolver()
    for srv, cli, acc in pair(family, host):
        for s in (cli, acc):
            want = (s.getsockname()[:2], s.getpeername()[:2])
            assert resolver.endpoints(os.getpid(), s.fileno()) == want
        # a listening socket has no peer: remote is the zero address, port 0
        local, remote = resolver.endpoints(os.getpid(), srv.fileno()) or ((None, None), (None, None))
        assert local == srv.getsockname()[:2] and remote[1] == 0
        assert resolver.stats["tls_socket_resolved"] == 3
        assert resolver.endpoints(os.getpid(), cli.fileno()) is not None
        assert resolver.stats["tls_socket_cached"] == 1


def test_failures_are_counted_never_raised(tmp_path: Path) -> None:
    resolver = SocketResolver()
    with open(tmp_path / "f", "w") as f:
        assert resolver.endpoints(os.getpid(), f.fileno()) is None
    assert resolver.endpoints(os.getpid(), 99_999) is None
    assert resolver.endpoints(2**22 + 12345, 3) is None  # no such process
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        assert resolver.endpoints(os.getpid(), udp.fileno()) is None  # a socket, but not TCP
    finally:
        udp.close()
    s = resolver.stats
    assert (s["tls_socket_not_socket"], s["tls_socket_fd_gone"], s["tls_socket_not_found"]) == (1, 2, 1)


def test_cache_is_bounded() -> None:
    resolver = SocketResolver(max_cached=2)
    gens = [pair(socket.AF_INET, "127.0.0.1") for _ in range(3)]
    trios = [next(g) for g in gens]
    try:
        for _, cli, _ in trios:
            assert resolver.endpoints(os.getpid(), cli.fileno()) is not None
        assert len(resolver) == 2
    finally:
        for g in gens:
            g.close()


def test_nginx_worker_socket_through_its_proc(tmp_path: Path) -> None:
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if nginx is None:
        pytest.skip("nginx not installed")
    if os.geteuid() != 0:
        pytest.skip("reading another process's /proc/<pid>/fd needs root")
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    (tmp_path / "tmp").mkdir()
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        f"worker_processes 1; daemon off; pid {tmp_path}/nginx.pid; error_log {tmp_path}/error.log;\n"
        "events { worker_connections 64; }\n"
        f"http {{ access_log off; client_body_temp_path {tmp_path}/tmp; proxy_temp_path {tmp_path}/tmp;\n"
        f"  fastcgi_temp_path {tmp_path}/tmp; uwsgi_temp_path {tmp_path}/tmp;\n"
        f"  scgi_temp_path {tmp_path}/tmp;\n"
        f"  keepalive_timeout 30s; server {{ listen 127.0.0.1:{port}; return 200 'ok'; }} }}\n"
    )
    proc = subprocess.Popen([nginx, "-p", str(tmp_path), "-c", str(conf)], stderr=subprocess.PIPE)
    try:
        cli = None
        for _ in range(50):
            try:
                cli = socket.create_connection(("127.0.0.1", port), timeout=2)
                break
            except OSError:
                time.sleep(0.1)
        assert cli is not None, "nginx did not start"
        cli.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert cli.recv(1000).startswith(b"HTTP/1.1 200")  # the connection is accepted and kept alive
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        assert children, "no nginx worker"
        worker = int(children[0])
        resolver = SocketResolver()
        want = (("127.0.0.1", port), cli.getsockname()[:2])
        found = [
            ends
            for fd in map(int, os.listdir(f"/proc/{worker}/fd"))
            if (ends := resolver.endpoints(worker, fd)) is not None and ends[1][1] != 0
        ]
        assert want in found
        cli.close()
    finally:
        proc.terminate()
        proc.wait(10)
