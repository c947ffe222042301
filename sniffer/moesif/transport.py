"""HTTP to the Moesif collector: one aiohttp session, batch POSTs and config GETs, outcome policy.

`MoesifTransport.post_batch` sends one gzip'd JSON array and turns whatever happens (a status, a
timeout, a reset) into an `Outcome` that says what the sender must do next: done, retry later,
retry slowly (bad application id), split (413) or drop (other 4xx). It never raises for network or
HTTP failures. `Backoff` is exponential with jitter; `Retry-After` (seconds or an HTTP date) wins
over it, capped. `Courier` makes one attempt at a batch and does the bookkeeping every outcome
implies (counters, health, the shared Retry-After pause, throttled logs). Nothing here logs event
bodies or the application id (only its last 4 chars).
"""

from __future__ import annotations

import asyncio
import email.utils
import enum
import logging
import random
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from sniffer.moesif.batcher import Batch

__all__ = [
    "Backoff",
    "ConfigResult",
    "Courier",
    "MoesifTransport",
    "Outcome",
    "PostResult",
    "RetryPolicy",
    "mask_app_id",
    "parse_retry_after",
    "safe_url",
]

log = logging.getLogger("sniffer.transport")

ETAG_HEADER = "X-Moesif-Config-ETag"


def mask_app_id(app_id: str) -> str:
    return "..." + app_id[-4:] if len(app_id) > 4 else "****"


def safe_url(url: str) -> str:
    """The endpoint for logs, without any user:password@ part."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]).geturl()


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retry timings; the defaults suit production, tests shrink them."""

    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    retry_after_max_s: float = 300.0
    auth_retry_s: float = 30.0  # 401/403: the app id is wrong; no point hammering
    auth_log_interval_s: float = 60.0
    config_refresh_s: float = 60.0
    config_min_interval_s: float = 5.0  # ETag-triggered refetches at most this often


class Outcome(enum.StrEnum):
    OK = "ok"
    RETRY = "retry"  # 429, 5xx, timeout, connection error
    AUTH = "auth"  # 401/403 (and 3xx: a misconfigured endpoint), keep events, retry slowly
    SPLIT = "split"  # 413
    REJECT = "reject"  # other 4xx: drop the batch


@dataclass(frozen=True, slots=True)
class PostResult:
    outcome: Outcome
    status: int | None = None  # None: no HTTP answer (timeout, reset, refused)
    retry_after_s: float | None = None
    etag: str | None = None
    detail: str = ""  # error text or truncated response body, for logs


@dataclass(frozen=True, slots=True)
class ConfigResult:
    doc: Any | None
    etag: str | None
    error: str = ""


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date); None when absent/bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class Backoff:
    """Exponential backoff with "equal jitter": half the step fixed, half random, so retries spread
    out without ever collapsing to zero."""

    def __init__(self, policy: RetryPolicy, rng: random.Random | None = None) -> None:
        self._policy = policy
        self._rng = rng or random.Random()

    def delay(self, attempt: int, retry_after_s: float | None = None) -> float:
        p = self._policy
        if retry_after_s is not None:
            # Honour the server, plus a little jitter so parked batches don't return in one burst.
            wait = min(p.retry_after_max_s, retry_after_s)
            return wait + self._rng.uniform(0, 0.1 + wait * 0.1)
        step = min(p.backoff_max_s, p.backoff_base_s * (2 ** min(attempt, 30)))
        return step / 2 + self._rng.uniform(0, step / 2)


def _classify(status: int) -> Outcome:
    if 200 <= status < 300:
        return Outcome.OK
    if status == 429 or status >= 500:
        return Outcome.RETRY
    if status == 413:
        return Outcome.SPLIT
    if status in (401, 403) or status < 200 or 300 <= status < 400:
        return Outcome.AUTH
    return Outcome.REJECT


class MoesifTransport:
    """Owns the aiohttp session; create and use it inside the sender's event loop."""

    def __init__(
        self,
        *,
        application_id: str,
        endpoint: str,
        user_agent: str,
        connect_timeout_s: float,
        send_timeout_s: float,
        max_connections: int,
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self._headers = {"X-Moesif-Application-Id": application_id, "User-Agent": user_agent}
        # The plugin applies send_timeout to connect, send and read alike; total bounds a stalled upload.
        self._post_timeout = aiohttp.ClientTimeout(
            total=connect_timeout_s + send_timeout_s, sock_connect=connect_timeout_s, sock_read=send_timeout_s
        )
        self._get_timeout = aiohttp.ClientTimeout(
            total=connect_timeout_s + send_timeout_s, sock_connect=connect_timeout_s
        )
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._max_connections, keepalive_timeout=60)
            self._session = aiohttp.ClientSession(connector=connector, headers=self._headers)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def post_batch(self, gz_body: bytes) -> PostResult:
        headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
        try:
            async with self.session.post(
                self.endpoint + "/v1/events/batch",
                data=gz_body,
                headers=headers,
                timeout=self._post_timeout,
                allow_redirects=False,
            ) as resp:
                outcome = _classify(resp.status)
                detail = ""
                if outcome is not Outcome.OK:
                    detail = (await resp.content.read(300)).decode("utf-8", "replace")
                else:
                    await resp.read()  # drain so the connection goes back to the pool
                return PostResult(
                    outcome,
                    resp.status,
                    parse_retry_after(resp.headers.get("Retry-After")),
                    resp.headers.get(ETAG_HEADER),
                    detail,
                )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return PostResult(Outcome.RETRY, None, None, None, f"{type(exc).__name__}: {exc}"[:300])

    async def get_config(self) -> ConfigResult:
        try:
            async with self.session.get(
                self.endpoint + "/v1/config", timeout=self._get_timeout, allow_redirects=False
            ) as resp:
                body = await resp.read()
                etag = resp.headers.get(ETAG_HEADER)
                if resp.status != 200:
                    return ConfigResult(None, etag, f"HTTP {resp.status}")
                return ConfigResult(orjson.loads(body), etag)
        except orjson.JSONDecodeError as exc:
            return ConfigResult(None, None, f"bad JSON: {exc}")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return ConfigResult(None, None, f"{type(exc).__name__}: {exc}"[:300])


class Courier:
    """One POST attempt at a batch, plus what every outcome implies: counters, the collector's
    health, the shared Retry-After pause, and throttled logs (401/403 at most once per interval)."""

    def __init__(
        self,
        transport: MoesifTransport,
        policy: RetryPolicy,
        counters: Counter[str],
        app_id: str,
        on_etag: Callable[[str], None],
    ) -> None:
        self._transport = transport
        self._policy = policy
        self._counters = counters
        self._app_id = app_id
        self._on_etag = on_etag
        self._backoff = Backoff(policy)
        self.healthy = True  # the last attempt succeeded (or none failed yet)
        self.failures = 0  # consecutive failed attempts
        self._pause_until = 0.0  # loop time before which nothing is sent (Retry-After)
        self._last_auth_log = float("-inf")

    async def attempt(self, batch: Batch) -> PostResult:
        """One POST (after any Retry-After pause), with the bookkeeping every outcome shares."""
        loop = asyncio.get_running_loop()
        if (pause := self._pause_until - loop.time()) > 0:
            await asyncio.sleep(pause)
        if batch.attempts:
            self._counters["batches_retried"] += 1
        batch.attempts += 1
        result = await self._transport.post_batch(batch.body)
        if result.etag:
            self._on_etag(result.etag)
        c = self._counters
        if result.outcome is Outcome.OK:
            if self.failures:
                log.warning("collector reachable again after %d failed attempts", self.failures)
            self.healthy, self.failures = True, 0
            c["batches_sent"] += 1
            c["events_sent"] += batch.count
            c["bytes_sent"] += len(batch.body)
            c["bytes_sent_uncompressed"] += batch.raw_bytes
            c["last_success_ts"] = int(time.time())
        elif result.outcome in (Outcome.RETRY, Outcome.AUTH):
            self.failures += 1
            self.healthy = False
            c["http_" + str(result.status) if result.status else "network_errors"] += 1
            if result.retry_after_s is not None:
                self._pause_until = max(self._pause_until, loop.time() + result.retry_after_s)
            self._log_failure(result)
        elif result.outcome is Outcome.REJECT:
            c["batches_rejected"] += 1
            c["events_dropped_4xx"] += batch.count
            log.error(
                "collector rejected a batch of %d events: HTTP %s %s",
                batch.count,
                result.status,
                result.detail,
            )
        return result

    def _log_failure(self, result: PostResult) -> None:
        now = time.monotonic()
        if result.outcome is Outcome.AUTH:
            self._counters["auth_failures"] += 1
            if now - self._last_auth_log >= self._policy.auth_log_interval_s:
                self._last_auth_log = now
                log.error(
                    "collector refused application id %s (HTTP %s): check MOESIF_APPLICATION_ID "
                    "and MOESIF_API_ENDPOINT; events are kept and retried",
                    mask_app_id(self._app_id),
                    result.status,
                )
        elif self.failures == 1:
            log.warning(
                "sending to the collector failed (%s); retrying with backoff",
                f"HTTP {result.status}" if result.status else result.detail,
            )

    def retry_delay(self, result: PostResult, attempt: int) -> float:
        if result.outcome is Outcome.AUTH:
            return self._policy.auth_retry_s
        return self._backoff.delay(attempt, result.retry_after_s)

    def split(self, batch: Batch) -> list[Batch]:
        self._counters["batches_split"] += 1
        if batch.count <= 1:
            self._counters["events_dropped_too_large"] += batch.count
            log.error("collector refused a single event as too large (413); dropped")
            return []
        return list(batch.split())
