"""A raw-socket HTTP/1.1 client for the realnet test: pipelining, HEAD before GET, 100-continue.

Usage: rawclient.py PLAN.json LOG.jsonl BODY_DIR

The plan is a JSON object {"connections": [{"name", "host", "port", "family": 4|6, "steps": [...]}]}.
A step is {"phase": 1|2, "requests": [REQ, ...]}: all requests of a step go out in ONE write (pipelined
when there are several), then their responses are read in order. REQ is {"id", "method", "path",
"headers": {..}, "body": str|null, "expect_continue": bool}; an expect_continue request is sent as
headers only, its body after the interim 100 arrives (or after 1 s, as curl does).

All connections are opened first; phase 1 steps run; then the client prints `PAUSED` on stdout and
waits for a line on stdin before running the phase 2 steps on the SAME connections (so a capture
started in between sees those connections mid-stream). Every call is appended to LOG as one JSON line
with what the client saw: method, path, status, interim statuses, decoded body length and a file in
BODY_DIR holding the decoded body. This log is the ground truth of the test.
"""

from __future__ import annotations

import gzip
import json
import socket
import sys
import time
from pathlib import Path
from typing import Any

TIMEOUT_S = 20.0


class Conn:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        fam = socket.AF_INET6 if spec["family"] == 6 else socket.AF_INET
        self.sock = socket.socket(fam, socket.SOCK_STREAM)
        self.sock.settimeout(TIMEOUT_S)
        self.sock.connect((spec["host"], spec["port"]))
        self.buf = b""
        self.local_port = self.sock.getsockname()[1]

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("connection closed by server")
        self.buf += data

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_head(self) -> tuple[int, dict[str, str]]:
        status = int(self._line().split()[1])
        headers: dict[str, str] = {}
        while True:
            line = self._line()
            if not line:
                return status, headers
            k, v = line.decode("latin-1").split(":", 1)
            headers[k.strip().lower()] = v.strip()

    def read_response(self, method: str) -> dict[str, Any]:
        interim: list[int] = []
        while True:
            status, headers = self.read_head()
            if 100 <= status < 200:
                interim.append(status)
                continue
            break
        body = b""
        if method == "HEAD" or status in (204, 304):
            pass
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int(self._line().split(b";")[0], 16)
                if size == 0:
                    while self._line():  # trailers up to the empty line
                        pass
                    break
                body += self._exact(size)
                self._exact(2)
        elif "content-length" in headers:
            body = self._exact(int(headers["content-length"]))
        else:
            try:
                while True:
                    self._fill()
            except EOFError:
                body, self.buf = self.buf, b""
        wire_len = len(body)
        if headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        return {"status": status, "interim": interim, "headers": headers, "body": body, "wire_len": wire_len}


def encode_request(req: dict[str, Any], host_header: str, with_body: bool) -> bytes:
    body = (req.get("body") or "").encode()
    lines = [f"{req['method']} {req['path']} HTTP/1.1", f"Host: {host_header}", "User-Agent: realnet-raw/1"]
    for k, v in (req.get("headers") or {}).items():
        lines.append(f"{k}: {v}")
    if req.get("body") is not None:
        lines.append(f"Content-Length: {len(body)}")
    if req.get("expect_continue"):
        lines.append("Expect: 100-continue")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode()
    return head + body if with_body else head


def run_step(conn: Conn, step: dict[str, Any], log: Any, body_dir: Path) -> None:
    spec = conn.spec
    host = f"[{spec['host']}]:{spec['port']}" if spec["family"] == 6 else f"{spec['host']}:{spec['port']}"
    reqs = step["requests"]
    started = time.time()
    if len(reqs) == 1 and reqs[0].get("expect_continue"):
        req = reqs[0]
        conn.sock.sendall(encode_request(req, host, with_body=False))
        conn.sock.settimeout(1.0)
        try:
            while b"\r\n\r\n" not in conn.buf:
                conn._fill()
        except TimeoutError:
            pass
        conn.sock.settimeout(TIMEOUT_S)
        conn.sock.sendall((req.get("body") or "").encode())
    else:
        conn.sock.sendall(b"".join(encode_request(r, host, with_body=True) for r in reqs))
    for req in reqs:
        resp = conn.read_response(req["method"])
        (body_dir / req["id"]).write_bytes(resp["body"])
        entry = {
            "id": req["id"],
            "client": "raw",
            "conn": spec["name"],
            "family": spec["family"],
            "local_port": conn.local_port,
            "phase": step["phase"],
            "pipelined": len(reqs) > 1,
            "method": req["method"],
            "path": req["path"],
            "request_body": req.get("body"),
            "status": resp["status"],
            "interim": resp["interim"],
            "content_type": resp["headers"].get("content-type", ""),
            "content_encoding": resp["headers"].get("content-encoding", ""),
            "body_len": len(resp["body"]),
            "wire_body_len": resp["wire_len"],
            "body_file": str(body_dir / req["id"]),
            "started": started,
        }
        log.write(json.dumps(entry) + "\n")
        log.flush()


def main(argv: list[str]) -> int:
    plan = json.loads(Path(argv[1]).read_text())
    body_dir = Path(argv[3])
    body_dir.mkdir(parents=True, exist_ok=True)
    conns = [Conn(spec) for spec in plan["connections"]]
    with open(argv[2], "a") as log:
        for phase in (1, 2):
            if phase == 2:
                print("PAUSED", flush=True)
                sys.stdin.readline()
            for conn in conns:
                for step in conn.spec["steps"]:
                    if step["phase"] == phase:
                        run_step(conn, step, log, body_dir)
    for conn in conns:
        conn.sock.close()
    print("DONE", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
