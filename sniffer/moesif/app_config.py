"""Keep the sampler's app config fresh: `GET /v1/config` at start, every 60 s, and on ETag change.

A batch response whose `X-Moesif-Config-ETag` differs from the config's ETag triggers a refetch
(at most once per `config_min_interval_s`, never two at once), like moesifapi-python. A failed or
malformed fetch keeps the last good config (initially: keep everything). Runs in the sender's loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

from sniffer.moesif.sampling import Sampler, parse_app_config
from sniffer.moesif.transport import MoesifTransport, RetryPolicy

__all__ = ["AppConfigFetcher"]

log = logging.getLogger("sniffer.transport")


class AppConfigFetcher:
    def __init__(
        self, transport: MoesifTransport, sampler: Sampler, policy: RetryPolicy, counters: Counter[str]
    ) -> None:
        self._transport = transport
        self._sampler = sampler
        self._policy = policy
        self._counters = counters
        self._lock = asyncio.Lock()
        self._last_fetch = float("-inf")
        self._wanted = asyncio.Event()
        self._noticed: str | None = None
        self.first_attempt_done = asyncio.Event()

    @property
    def etag(self) -> str | None:
        return self._sampler.config.etag

    async def fetch_once(self) -> bool:
        """One GET; True when a config was installed."""
        async with self._lock:
            self._last_fetch = asyncio.get_running_loop().time()
            result = await self._transport.get_config()
            try:
                if result.doc is None:
                    self._counters["config_fetch_errors"] += 1
                    log.warning("app config fetch failed (%s); keeping the last config", result.error)
                    return False
                config = parse_app_config(result.doc, result.etag)
                if config.problems:
                    self._counters["config_problems"] += len(config.problems)
                    log.warning("app config: ignored %s", "; ".join(config.problems[:5]))
                self._sampler.config = config
                self._counters["config_fetches"] += 1
                log.debug(
                    "app config installed: sample_rate=%s, %d user, %d company, %d regex rates",
                    config.sample_rate,
                    len(config.user_rates),
                    len(config.company_rates),
                    len(config.regex_rules),
                )
                return True
            finally:
                self.first_attempt_done.set()

    def notice_etag(self, etag: str | None) -> None:
        """Called with each batch response's ETag header; a change asks for a refetch."""
        if etag and etag != self.etag:
            self._noticed = etag
            self._wanted.set()

    async def run(self) -> None:
        """Fetch now, then every `config_refresh_s`, and early when an ETag change was noticed."""
        loop = asyncio.get_running_loop()
        await self.fetch_once()
        while True:
            next_at = self._last_fetch + self._policy.config_refresh_s
            try:
                await asyncio.wait_for(self._wanted.wait(), timeout=max(0.0, next_at - loop.time()))
                self._counters["config_etag_refreshes"] += 1
                # Debounce: a burst of responses carrying the new tag costs one fetch.
                await asyncio.sleep(
                    max(0.0, self._last_fetch + self._policy.config_min_interval_s - loop.time())
                )
            except TimeoutError:
                pass
            self._wanted.clear()
            if self._noticed is not None and self._noticed == self.etag:
                # Responses that were in flight during the last fetch carried the tag we now hold.
                self._noticed = None
                continue
            self._noticed = None
            await self.fetch_once()
