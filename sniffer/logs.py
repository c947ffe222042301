"""Logging for the daemon: one line per record, as text or JSON, to stderr or a file reopened on SIGHUP.

JSON lines carry `time` (ISO 8601 UTC with milliseconds), `level`, `logger`, `message`, and any
`extra={...}` fields a caller passed. Nothing here looks at message contents: the callers' rule is that no
body, header value or credential is ever logged (the application id only as its last 4 characters).

SIGHUP (`reopen()`): a file given with `--log-file` is closed and opened again at the same path, so
logrotate's move-then-HUP works. When logging to stderr there is nothing to reopen: the signal is
logged and otherwise ignored (stderr belongs to whoever started the daemon: the container runtime or the
terminal). If the file cannot be reopened (e.g. its directory is not writable by SNIFFER_USER after
privileges were dropped) the old file stays in use and a warning says so.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

__all__ = ["JsonFormatter", "reopen", "setup_logging"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# LogRecord attributes that are not caller-supplied extras.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}

log = logging.getLogger("sniffer.daemon")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ms = int(record.created * 1000) % 1000
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{ms:03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


class _ReopenableFileHandler(logging.FileHandler):
    def reopen(self) -> None:
        try:
            stream = self._open()
        except OSError as exc:
            log.warning(
                "SIGHUP: cannot reopen log file %s (%s); still writing to the old one",
                self.baseFilename,
                exc.strerror,
            )
            return
        self.acquire()
        try:
            old, self.stream = self.stream, stream
        finally:
            self.release()
        if old is not None:
            old.close()


_handler: logging.Handler | None = None


def setup_logging(fmt: str = "text", path: str | None = None, debug: bool = False) -> None:
    """Replace the root logger's handlers with one stderr (or file) handler in `fmt` ("text"/"json")."""
    global _handler
    handler: logging.Handler = (
        _ReopenableFileHandler(path, encoding="utf-8") if path else logging.StreamHandler(sys.stderr)
    )
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        formatter = logging.Formatter(TEXT_FORMAT)
        formatter.converter = time.gmtime
        handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    _handler = handler


def reopen() -> None:
    """SIGHUP: reopen the log file (nothing to do for stderr)."""
    if isinstance(_handler, _ReopenableFileHandler):
        _handler.reopen()
        log.info("SIGHUP: log file reopened")
    else:
        log.info("SIGHUP: logging to stderr, nothing to reopen")
