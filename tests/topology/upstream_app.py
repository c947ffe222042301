"""The service behind the emulated Kong: a small JSON API over HTTP/1.1 keep-alive (stdlib only).

Run as a script inside the upstream namespace: `python upstream_app.py HOST PORT [HOST PORT ...]`.
It prints `ready` once every listener is bound, so whoever started it can wait for that line.

Endpoints (all JSON):
- `GET  /api/orders`          a list of orders (big enough for the gateway's gzip to kick in)
- `GET  /api/orders/<id>`     one order; 404 JSON for unknown ids
- `POST /api/orders`          echoes the posted JSON body back with 201
- `GET  /api/stream`          the orders again, sent with `Transfer-Encoding: chunked` in several chunks
- `GET  /api/whoami`          the request headers the service received (shows Kong's upstream headers)
- `GET  /api/slow?ms=N`       answers after N ms (keeps calls overlapping for the timing join)
- anything else               404 JSON from the service itself (not from the gateway)
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

ORDERS = [
    {"id": i, "item": item, "qty": qty, "price_cents": price, "status": status}
    for i, (item, qty, price, status) in enumerate(
        [
            ("espresso beans 1kg", 2, 2890, "shipped"),
            ("burr grinder", 1, 14900, "processing"),
            ("milk jug 600ml", 1, 1450, "delivered"),
            ("paper filters x100", 3, 399, "shipped"),
            ("kettle gooseneck", 1, 6900, "cancelled"),
            ("scale 0.1g", 1, 3290, "processing"),
        ],
        start=101,
    )
]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, which the gateway's upstream pool relies on
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms Nagle/delayed-ACK stall
    server_version = "orders-api/1.0"
    sys_version = ""

    def log_message(self, format: str, *args: object) -> None:
        pass  # the capture is the log

    def _send_json(self, status: int, payload: object) -> None:
        body = json.dumps(payload, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        path = url.path
        if path == "/api/orders":
            self._send_json(200, {"orders": ORDERS, "count": len(ORDERS)})
        elif path.startswith("/api/orders/"):
            tail = path.rsplit("/", 1)[1]
            found = [o for o in ORDERS if str(o["id"]) == tail]
            if found:
                self._send_json(200, found[0])
            else:
                self._send_json(404, {"error": "order not found", "id": tail})
        elif path == "/api/stream":
            self._send_chunked()
        elif path == "/api/whoami":
            self._send_json(200, {"method": self.command, "path": self.path, "headers": dict(self.headers)})
        elif path == "/api/slow":
            ms = int(parse_qs(url.query).get("ms", ["100"])[0])
            time.sleep(min(ms, 5000) / 1000)
            self._send_json(200, {"slept_ms": ms})
        else:
            self._send_json(404, {"error": "no such endpoint", "path": path})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            posted = json.loads(raw) if raw else None
        except ValueError:
            self._send_json(400, {"error": "body is not JSON"})
            return
        if urlsplit(self.path).path == "/api/orders":
            self._send_json(201, {"created": True, "order": posted})
        else:
            self._send_json(404, {"error": "no such endpoint", "path": self.path})

    def _send_chunked(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        parts = [b'{"orders":[']
        for i, order in enumerate(ORDERS):
            parts.append((b"," if i else b"") + json.dumps(order, separators=(",", ":")).encode())
        parts.append(b"]}")
        for part in parts:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")


class DualServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def serve(host: str, port: int) -> ThreadingHTTPServer:
    cls = DualServer
    if ":" in host:
        cls = type("DualServer6", (DualServer,), {"address_family": socket.AF_INET6})
    server = cls((host, port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main(argv: list[str]) -> None:
    pairs = list(zip(argv[0::2], argv[1::2], strict=True))
    for host, port in pairs:
        serve(host, int(port))
    print("ready", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main(sys.argv[1:])
