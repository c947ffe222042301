"""The application behind nginx in the realnet test: HTTP/1.1 keep-alive JSON endpoints (stdlib only).

Usage: upstream.py HOST PORT. Prints `READY` once listening.

Each endpoint exercises one HTTP framing case the sniffer must get right through the proxy:
- `GET /api/small`          small JSON, Content-Length
- `GET /api/medium`         ~60 KB JSON (under the 100 000-byte body limit; loss hits its body)
- `GET /api/large`          ~200 KB JSON (over the limit: the event leaves the body out)
- `GET /api/chunked`        JSON sent with Transfer-Encoding: chunked, many chunks
- `GET /api/gzip`           compressible JSON; nginx gzips it when the client accepts gzip
- `POST /api/echo`          echoes the posted JSON back inside {"echo": ...}
- `GET /api/nothing`        204 No Content
- `GET /api/etag`           200 with an ETag, 304 when If-None-Match matches
- `HEAD` on any of the GETs the same headers without a body
"""

from __future__ import annotations

import contextlib
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ETAG = '"realnet-v1"'


def records(n: int, tag: str) -> list[dict[str, object]]:
    return [
        {
            "id": i,
            "tag": tag,
            "name": f"item-{i:05d}",
            "qty": i % 7,
            "price_cents": (i * 37) % 10000,
            "tags": ["alpha", "beta", "gamma"][: 1 + i % 3],
            "note": "x" * (i % 23),
        }
        for i in range(n)
    ]


def dump(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


BODIES = {
    "/api/small": dump({"ok": True, "service": "realnet", "n": 1}),
    "/api/medium": dump({"items": records(520, "medium")}),
    "/api/large": dump({"items": records(1750, "large")}),
    "/api/gzip": dump({"items": records(300, "gzip")}),
    "/api/etag": dump({"version": 1, "etag": ETAG}),
}
CHUNKED = dump({"items": records(250, "chunked")})


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _path(self) -> str:
        return self.path.split("?", 1)[0]

    def _send(
        self, status: int, body: bytes, head: bool = False, extra: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        if status not in (204, 304):
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head and status not in (204, 304):
            self.wfile.write(body)

    def _get(self, head: bool) -> None:
        path = self._path()
        if path == "/api/nothing":
            self._send(204, b"", head)
        elif path == "/api/etag":
            if self.headers.get("If-None-Match") == ETAG:
                self._send(304, b"", head, {"ETag": ETAG})
            else:
                self._send(200, BODIES[path], head, {"ETag": ETAG})
        elif path == "/api/chunked":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            if head:
                return
            step = 1500
            for i in range(0, len(CHUNKED), step):
                part = CHUNKED[i : i + step]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        elif path in BODIES:
            self._send(200, BODIES[path], head)
        else:
            self._send(404, dump({"error": "not found", "path": path}), head)

    def do_GET(self) -> None:
        self._get(head=False)

    def do_HEAD(self) -> None:
        self._get(head=True)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if self._path() != "/api/echo":
            self._send(404, dump({"error": "not found"}))
            return
        try:
            value = json.loads(raw)
        except ValueError:
            self._send(400, dump({"error": "bad json", "size": len(raw)}))
            return
        self._send(200, dump({"echo": value, "size": len(raw)}))


def main(argv: list[str]) -> int:
    host, port = argv[1], int(argv[2])
    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    print("READY", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
