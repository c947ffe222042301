"""The API client of the topology: runs a call plan and logs every call it made (stdlib only).

Run as a script inside the client namespace: `python client.py PLAN.json LOG.json`.

A plan is `{"connections": [...]}`. Each connection is run in its own thread, all at once, so they overlap:
- `{"tool": "python", "source": IP, "host": IP, "port": N, "calls": [CALL, ...], "delay_ms": D}`: one
  keep-alive `http.client` connection bound to `source`, its calls made one after another on it;
- `{"tool": "curl", ..., "calls": [CALL]}`: one `curl` process per call (its own connection).
A CALL is `{"method", "path", "headers": {...}, "json": BODY or absent, "gzip": bool, "meta": {...}}`;
`meta` is copied into the log untouched (the plan's ground truth: which user, what the plugin should say).

The log is a JSON list, one entry per call in the order they started, with what the client saw: status,
response headers (lowercased names), the decoded body (gzip undone, chunking undone, JSON parsed when it
is JSON), the local port of its connection, and wall-clock start/end.
"""

from __future__ import annotations

import gzip
import http.client
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any


def _decode_body(raw: bytes, encoding: str | None) -> Any:
    if encoding == "gzip":
        raw = gzip.decompress(raw)
    text = raw.decode("utf-8", "replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


def _request_parts(call: dict[str, Any]) -> tuple[dict[str, str], bytes | None]:
    headers = dict(call.get("headers") or {})
    body = None
    if "json" in call:
        body = json.dumps(call["json"], separators=(",", ":")).encode()
        headers.setdefault("Content-Type", "application/json")
    if call.get("gzip"):
        headers["Accept-Encoding"] = "gzip"
    return headers, body


def _entry(conn_no: int, conn: dict[str, Any], call: dict[str, Any], t0: float) -> dict[str, Any]:
    return {
        "conn": conn_no,
        "tool": conn["tool"],
        "source": conn["source"],
        "host": conn["host"],
        "port": conn["port"],
        "method": call["method"],
        "path": call["path"],
        "request_headers": _request_parts(call)[0],
        "request_body": call.get("json"),
        "meta": call.get("meta", {}),
        "t_start": t0,
    }


def _run_python(conn_no: int, conn: dict[str, Any], log: list[dict[str, Any]], lock: threading.Lock) -> None:
    c = http.client.HTTPConnection(conn["host"], conn["port"], timeout=20, source_address=(conn["source"], 0))
    try:
        for call in conn["calls"]:
            headers, body = _request_parts(call)
            t0 = time.time()
            c.request(call["method"], call["path"], body=body, headers=headers)
            local_port = c.sock.getsockname()[1] if c.sock is not None else None
            resp = c.getresponse()
            raw = resp.read()
            entry = _entry(conn_no, conn, call, t0)
            rh = {k.lower(): v for k, v in resp.getheaders()}
            entry |= {
                "local_port": local_port,
                "status": resp.status,
                "response_headers": rh,
                "response_body": _decode_body(raw, rh.get("content-encoding")),
                "t_end": time.time(),
            }
            with lock:
                log.append(entry)
            if call.get("pause_ms"):
                time.sleep(call["pause_ms"] / 1000)
    finally:
        c.close()


def _parse_curl_headers(text: str) -> tuple[int, dict[str, str]]:
    blocks = [b for b in text.replace("\r\n", "\n").split("\n\n") if b.strip()]
    lines = blocks[-1].split("\n")  # the final response (1xx blocks come first)
    status = int(lines[0].split()[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


def _run_curl(conn_no: int, conn: dict[str, Any], log: list[dict[str, Any]], lock: threading.Lock) -> None:
    host = f"[{conn['host']}]" if ":" in conn["host"] else conn["host"]
    for call in conn["calls"]:
        headers, body = _request_parts(call)
        with tempfile.TemporaryDirectory(prefix="topo-curl-") as tmp:
            hdr, out = Path(tmp, "h"), Path(tmp, "b")
            argv = ["curl", "-sS", "--http1.1", "-g", "--interface", conn["source"], "-X", call["method"]]
            argv += ["-D", str(hdr), "-o", str(out), "-w", "%{local_port}"]
            for k, v in headers.items():
                if k.lower() != "accept-encoding":
                    argv += ["-H", f"{k}: {v}"]
            if call.get("gzip"):
                argv.append("--compressed")  # curl sends Accept-Encoding and undoes the gzip itself
            if body is not None:
                argv += ["--data-binary", "@-"]
            argv.append(f"http://{host}:{conn['port']}{call['path']}")
            t0 = time.time()
            done = subprocess.run(argv, input=body or b"", check=True, timeout=20, capture_output=True)
            t1 = time.time()
            status, rh = _parse_curl_headers(hdr.read_text("latin-1"))
            entry = _entry(conn_no, conn, call, t0)
            entry["tool"] = "curl"
            entry |= {
                "local_port": int(done.stdout),
                "status": status,
                "response_headers": rh,
                "response_body": _decode_body(out.read_bytes(), None),
                "t_end": t1,
            }
        with lock:
            log.append(entry)


def run_plan(plan: dict[str, Any]) -> list[dict[str, Any]]:
    log: list[dict[str, Any]] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker(n: int, conn: dict[str, Any]) -> None:
        try:
            time.sleep(conn.get("delay_ms", 0) / 1000)
            (_run_curl if conn["tool"] == "curl" else _run_python)(n, conn, log, lock)
        except BaseException as exc:  # reported by the main thread: a failed call is a failed plan
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n, c)) for n, c in enumerate(plan["connections"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} connection(s) failed") from errors[0]
    for seq, entry in enumerate(sorted(log, key=lambda e: e["t_start"])):
        entry["seq"] = seq
    return sorted(log, key=lambda e: e["seq"])


def main(argv: list[str]) -> None:
    plan = json.loads(Path(argv[0]).read_text())
    log = run_plan(plan)
    Path(argv[1]).write_text(json.dumps(log, indent=1, sort_keys=True) + "\n")
    print(f"{len(log)} calls", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
