"""Memory and time budgets of the core, with the reasoning behind each default.

Every budget has a stated policy when it is hit (see each field), and every time one is hit a counter in
`Stats` says so. Defaults are finite on purpose: unlimited defaults are how gopacket-based sniffers run out
of memory (gopacket #444, #1206; Kubeshark #1317).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Limits"]

# 64k concurrent connections covers a busy gateway node; each idle flow costs roughly 1-2 KB.
DEFAULT_MAX_FLOWS = 65_536
# Out-of-order bytes held per direction before we give up on the hole and declare a gap.
DEFAULT_MAX_FLOW_BUFFER_BYTES = 1 << 20
# All out-of-order bytes held across flows.
DEFAULT_MAX_BUFFER_BYTES = 128 << 20
# Bytes the HTTP layer holds across flows (partial heads, bodies spanning segments); the daemon sets it to
# max_buffer_bytes unless configured, so one setting bounds both layers.
DEFAULT_MAX_HTTP_BUFFER_BYTES = DEFAULT_MAX_BUFFER_BYTES
# Live captures reorder within milliseconds; replayed captures are ordered. 5 s is generous for both.
DEFAULT_REORDER_TIMEOUT_S = 5.0
# Kong's own idle keep-alive timeout is 60 s; nginx keepalive_timeout defaults to 75 s.
DEFAULT_IDLE_TIMEOUT_S = 120.0
# nginx large_client_header_buffers is 4 x 8k; 64k leaves room for any sane header block.
DEFAULT_MAX_HEADER_BYTES = 64 << 10
# The body bytes kept per message; Moesif's own per-event limit is 1 MB.
DEFAULT_MAX_BODY_BYTES = 1 << 20
# Requests waiting for a response on one connection (pipelining depth); browsers never exceed ~10.
DEFAULT_MAX_PENDING_REQUESTS = 128
# IPv4 fragment reassembly: datagrams in flight and the time a partial one is kept (RFC 791 suggests 15 s).
DEFAULT_MAX_FRAGMENT_DATAGRAMS = 1024
DEFAULT_FRAGMENT_TIMEOUT_S = 15.0


@dataclass(frozen=True, slots=True)
class Limits:
    max_flows: int = DEFAULT_MAX_FLOWS  # when full: evict a half-open flow, else the least recently active
    max_flow_buffer_bytes: int = DEFAULT_MAX_FLOW_BUFFER_BYTES  # when hit: skip the hole (gap OVERFLOW)
    max_buffer_bytes: int = DEFAULT_MAX_BUFFER_BYTES  # when hit: skip the hole of the flow asking
    reorder_timeout_s: float = DEFAULT_REORDER_TIMEOUT_S  # hole older than this: gap TIMEOUT
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S  # flow silent this long: closed (IDLE)
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES  # header block longer: message dropped, resync
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES  # body bytes beyond this are counted, not kept
    max_pending_requests: int = DEFAULT_MAX_PENDING_REQUESTS  # oldest emitted unanswered
    max_fragment_datagrams: int = DEFAULT_MAX_FRAGMENT_DATAGRAMS  # oldest partial datagram dropped
    fragment_timeout_s: float = DEFAULT_FRAGMENT_TIMEOUT_S
    # when hit: the reader asking sheds its kept body, else its partial head (see http_budget)
    max_http_buffer_bytes: int = DEFAULT_MAX_HTTP_BUFFER_BYTES
