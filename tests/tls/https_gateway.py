"""An nginx HTTPS gateway with a self-signed certificate, proxying to a plaintext Python upstream.

Started by hand (`nginx -p DIR -c CONF`; no systemd here) on 127.0.0.1 with free ports, so tests of the
TLS uprobes see real OpenSSL calls in real nginx workers. `restart()` gives new worker pids.
The upstream answers `/big?n=BYTES` with that many bytes and anything else with a short JSON echo of
the path; nginx itself answers `/local401` (a call the gateway answers without the upstream) and
`/static` (a 200 for load tests, where the Python upstream would be the bottleneck).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

__all__ = ["SYSTEM_LIBSSL", "HttpsGateway", "missing_tools"]

SYSTEM_LIBSSL = "/usr/lib/x86_64-linux-gnu/libssl.so.3"

_CONF = """
worker_processes {workers};
daemon on;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {dir}/tmp;
    proxy_temp_path {dir}/tmp;
    fastcgi_temp_path {dir}/tmp;
    uwsgi_temp_path {dir}/tmp;
    scgi_temp_path {dir}/tmp;
    upstream app {{ server 127.0.0.1:{upstream}; keepalive 16; }}
    server {{
        listen 127.0.0.1:{port} ssl;
        {listen6}
        ssl_certificate {dir}/cert.pem;
        ssl_certificate_key {dir}/key.pem;
        location = /local401 {{
            default_type application/json;
            return 401 '{{"message":"No API key found in request"}}';
        }}
        location = /static {{
            default_type application/json;
            return 200 '{{"ok":true,"from":"nginx itself"}}';
        }}
        location / {{
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass http://app;
        }}
    }}
}}
"""


def missing_tools() -> str | None:
    """Why the gateway cannot run here, or None."""
    for tool in ("nginx", "openssl", "curl"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if os.geteuid() != 0:
        return "nginx on a free port with its own prefix is started as root in these tests"
    return None


def _loopback6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        url = urlparse(self.path)
        if url.path == "/big":
            body = b"x" * int(parse_qs(url.query).get("n", ["100000"])[0])
        else:
            body = b'{"path":"' + url.path.encode() + b'"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class HttpsGateway:
    """`with HttpsGateway(tmp_path) as gw:` nginx on https://127.0.0.1:{gw.port}, upstream in a thread."""

    def __init__(self, directory: Path, workers: int = 1, own_libssl: bool = False) -> None:
        """own_libssl: run nginx in its own mount namespace where a copy of libssl.so.3 is bind-mounted
        over the system one, as in a container: same path, another file (inode) than ours."""
        self.dir = directory
        self.workers = workers
        self.own_libssl = own_libssl
        self.port = _free_port()
        self.ipv6 = _loopback6()  # nginx also listens on [::1]:port when this host has IPv6 loopback
        self._upstream = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
        self._thread = threading.Thread(target=self._upstream.serve_forever, daemon=True)

    def __enter__(self) -> HttpsGateway:
        (self.dir / "tmp").mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
             "-days", "1", "-keyout", str(self.dir / "key.pem"), "-out", str(self.dir / "cert.pem")],
            check=True, capture_output=True,
        )  # fmt: skip
        listen6 = f"listen [::1]:{self.port} ssl;" if self.ipv6 else ""
        conf = _CONF.format(
            workers=self.workers, dir=self.dir, port=self.port, upstream=self._upstream.server_address[1],
            listen6=listen6,
        )  # fmt: skip
        (self.dir / "nginx.conf").write_text(conf)
        self._thread.start()
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._upstream.shutdown()
        self._upstream.server_close()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def master_pid(self) -> int | None:
        try:
            return int((self.dir / "nginx.pid").read_text())
        except (OSError, ValueError):
            return None

    def worker_pids(self) -> list[int]:
        master = self.master_pid()
        if master is None:
            return []
        try:
            children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        except OSError:
            return []
        return sorted(int(pid) for pid in children)

    def start(self) -> None:
        nginx = ["nginx", "-p", str(self.dir), "-c", str(self.dir / "nginx.conf")]
        if self.own_libssl:
            shutil.copy(SYSTEM_LIBSSL, self.dir / "libssl.so.3")
            mount = f"mount --bind {self.dir / 'libssl.so.3'} {SYSTEM_LIBSSL} && exec {' '.join(nginx)}"
            nginx = ["unshare", "--mount", "--propagation", "private", "sh", "-c", mount]
        subprocess.run(nginx, check=True)
        deadline = time.monotonic() + 5
        while len(self.worker_pids()) < self.workers or not self._answers():
            if time.monotonic() > deadline:
                raise RuntimeError(f"nginx did not start: {(self.dir / 'error.log').read_text()}")
            time.sleep(0.05)

    def _answers(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
            return True
        return False

    def stop(self) -> None:
        master = self.master_pid()
        if master is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(master, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while Path(f"/proc/{master}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        with contextlib.suppress(FileNotFoundError):
            (self.dir / "nginx.pid").unlink()

    def restart(self) -> None:
        """Stop and start again: every process gets a new pid."""
        self.stop()
        self.start()

    def curl(
        self, path: str, *headers: str, host: str = "127.0.0.1", write_out: str = "\n%{http_code}"
    ) -> tuple[int, subprocess.CompletedProcess[bytes]]:
        """(curl's pid, its result) for one HTTPS GET with the given headers (host "::1": over IPv6)."""
        args = ["curl", "-sk", "--http1.1", "-o", "-", "-w", write_out]
        for header in headers:
            args += ["-H", header]
        where = f"[{host}]" if ":" in host else host
        url = f"https://{where}:{self.port}{path}"
        proc = subprocess.Popen([*args, url], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = proc.communicate(timeout=10)
        return proc.pid, subprocess.CompletedProcess(args, proc.returncode, out, err)
