"""Call plans for the topology's client, with the ground truth of each call in its `meta`.

`meta` says which credential the call used and what Moesif's Kong plugin would report for it under its
default configuration (`user_id`), plus what a configured `company_id_header` (`X-Company-Id`) or
`authorization_company_id_field` (`company_id`) would add. The rules (moesif-reference.md section 5):
a consumer's custom_id, else its username, else its id; a passed-through Bearer JWT: its `sub`; a call the
gateway answered itself (401, 404 no route): no user, because the plugin's access phase never ran and
the client's request carries no `x-consumer-*` header.
"""

from __future__ import annotations

import random
from typing import Any

from .gateway import CONSUMERS, JWT_COMPANY, JWT_SUB, jwt_token
from .net import CLIENT2_V4, CLIENT2_V6, CLIENT_V4, CLIENT_V6, GATEWAYS, GW_V4, GW_V6

__all__ = ["Call", "burst_plan", "call", "connection", "demo_plan", "load_plan"]

Call = dict[str, Any]
_GW_BY_PORT = {g.port: g.name for g in GATEWAYS}


def call(
    method: str,
    path: str,
    user: str | None,
    *,
    auth: str | None = None,
    body: Any = None,
    gzip: bool = False,
    company: str | None = None,
    pause_ms: int = 0,
) -> Call:
    """One call made as `user`: a consumer name (its own credential kind), "jwt", or None (no credential).

    `auth="invalid"` sends a credential the gateway does not know instead.
    """
    headers: dict[str, str] = {"User-Agent": "topology-client/1.0", "Accept": "application/json"}
    meta: dict[str, Any] = {"user": user, "user_id": None, "company_header": company}
    if auth == "invalid":
        headers["apikey"] = "key-nobody-000"
        meta["auth"] = "invalid"
    elif user == "jwt":
        headers["Authorization"] = f"Bearer {jwt_token()}"
        meta |= {"auth": "bearer", "user_id": JWT_SUB, "jwt_company": JWT_COMPANY}
    elif user is not None:
        consumer = CONSUMERS[user]
        if consumer.apikey:
            headers["apikey"] = consumer.apikey
            meta["auth"] = "apikey"
        else:
            assert consumer.basic_header is not None
            headers["Authorization"] = consumer.basic_header
            meta["auth"] = "basic"
        meta["user_id"] = consumer.user_id
    else:
        meta["auth"] = "none"
    if company:
        headers["X-Company-Id"] = company
    c: Call = {"method": method, "path": path, "headers": headers, "gzip": gzip, "meta": meta}
    if body is not None:
        c["json"] = body
    if pause_ms:
        c["pause_ms"] = pause_ms
    return c


def connection(
    calls: list[Call], *, source: str = CLIENT_V4, port: int = 8000, tool: str = "python", delay_ms: int = 0
) -> dict[str, Any]:
    host = GW_V6 if ":" in source else GW_V4
    for c in calls:
        c["meta"]["gateway"] = _GW_BY_PORT[port]
        # Routes answered by the gateway itself never reach the plugin's access phase.
        if not c["path"].startswith(("/api/", "/svc/")):
            c["meta"]["user_id"] = None
            c["meta"]["answered_by"] = "gateway"
        elif c["meta"]["auth"] in ("none", "invalid"):
            c["meta"]["answered_by"] = "gateway"
        else:
            c["meta"]["answered_by"] = "upstream"
    return {"tool": tool, "source": source, "host": host, "port": port, "calls": calls, "delay_ms": delay_ms}


def demo_plan() -> dict[str, Any]:
    """The bundled capture's calls: every case once or twice, over concurrent keep-alive connections."""
    order = {"item": "oat milk 1l", "qty": 6, "note": "ünïcode ok"}
    conns = [
        # Kong 3.9 emulation (port 8000, request ids), IPv4 and IPv6 clients, keep-alive connections.
        connection(
            [
                call("GET", "/api/orders", "alice", gzip=True),
                call("GET", "/api/orders/101", "alice"),
                call("POST", "/api/orders", "alice", body=order),
                call("GET", "/api/stream", "alice"),
                call("GET", "/svc/api/orders/102", "alice"),  # strip_path route
                call("GET", "/api/orders/999", "alice"),  # 404 from the service, not the gateway
            ]
        ),
        connection(
            [
                call("GET", "/api/orders/103", "bob", company="globex"),
                call("GET", "/api/whoami", "bob", company="globex"),
                call("GET", "/api/slow?ms=150", "bob", company="globex"),
                call("GET", "/api/orders", "bob", gzip=True),
                call("POST", "/api/orders", "bob", body={"item": "tamper", "qty": 1}),
            ],
            source=CLIENT2_V4,
            delay_ms=20,
        ),
        connection(
            [
                call("GET", "/api/orders/104", "carol"),
                call("GET", "/api/stream", "carol", gzip=True),
                call("GET", "/svc/api/orders", "carol"),
                call("POST", "/api/orders", "carol", body={"item": "cups", "qty": 12}),
            ],
            source=CLIENT_V6,
            delay_ms=10,
        ),
        connection(
            [
                call("GET", "/api/orders/105", "dave"),
                call("GET", "/api/slow?ms=120", "dave"),
                call("GET", "/api/whoami?verbose=1", "dave", company="initech"),
            ],
            source=CLIENT2_V6,
            delay_ms=30,
        ),
        connection(
            [
                call("GET", "/api/orders/106", "jwt"),
                call("GET", "/api/orders", "jwt", gzip=True),
                call("POST", "/api/orders", "jwt", body={"item": "beans", "qty": 2}),
            ],
            delay_ms=40,
        ),
        connection([call("GET", "/api/orders", None)], tool="curl", delay_ms=5),
        connection([call("GET", "/api/orders", None, auth="invalid")], source=CLIENT2_V6, tool="curl"),
        connection([call("GET", "/nope", "alice")], tool="curl", delay_ms=60),
        connection(
            [call("GET", "/api/orders/101", "alice", company="acme", gzip=True)],
            tool="curl",
            source=CLIENT_V6,
            delay_ms=80,
        ),
        # Kong 3.4-like emulation (port 8001): no request ids, upstream over IPv6; joined by timing.
        connection(
            [
                call("GET", "/api/orders/101", "alice"),
                call("POST", "/api/orders", "alice", body=order),
                call("GET", "/svc/api/orders/102", "alice"),
                call("GET", "/api/stream", "alice"),
            ],
            port=8001,
        ),
        connection(
            [
                call("GET", "/api/orders/101", "bob"),  # same call as alice's, at the same time
                call("GET", "/api/slow?ms=100", "bob"),
                call("GET", "/api/orders/101", "bob"),
            ],
            port=8001,
        ),
        connection(
            [
                call("GET", "/api/orders/101", "carol"),
                call("GET", "/api/orders", "carol", gzip=True),
            ],
            source=CLIENT_V6,
            port=8001,
        ),
        connection([call("GET", "/api/orders", None)], source=CLIENT2_V4, port=8001, tool="curl"),
        # A burst: more client connections at once than the upstream pool keeps (keepalive 8).
        *(
            connection(
                [call("GET", f"/api/orders/{101 + i}", user), call("GET", "/api/slow?ms=50", user)],
                source=src,
                delay_ms=150,
            )
            for i, (user, src) in enumerate(
                [("alice", CLIENT_V4), ("bob", CLIENT2_V4), ("carol", CLIENT_V6), ("dave", CLIENT2_V6)]
            )
        ),
        # Same source, same path, overlapping in time: only the credential tells them apart.
        connection([call("GET", "/api/slow?ms=200", "alice")], port=8001, delay_ms=300),
        connection([call("GET", "/api/slow?ms=200", "bob")], port=8001, delay_ms=310),
    ]
    return {"connections": conns}


def burst_plan(connections: int = 20, calls_each: int = 10, *, seed: int = 7) -> dict[str, Any]:
    """Many concurrent keep-alive connections over both gateways, mixed users, credentials and endpoints."""
    rnd = random.Random(seed)
    sources = [CLIENT_V4, CLIENT2_V4, CLIENT_V6, CLIENT2_V6]
    users: list[str | None] = ["alice", "bob", "carol", "dave", "jwt", None]
    paths = ["/api/orders", "/api/orders/101", "/api/orders/104", "/api/stream", "/svc/api/orders/103"]
    conns = []
    for n in range(connections):
        calls = []
        for _ in range(calls_each):
            user = rnd.choice(users)
            if rnd.random() < 0.15:
                calls.append(
                    call("POST", "/api/orders", user, body={"item": f"thing-{n}", "qty": rnd.randint(1, 9)})
                )
            elif rnd.random() < 0.2:
                calls.append(call("GET", f"/api/slow?ms={rnd.choice([5, 20, 40])}", user))
            else:
                calls.append(call("GET", rnd.choice(paths), user, gzip=rnd.random() < 0.3))
        conns.append(
            connection(calls, source=sources[n % 4], port=(8000, 8001)[n % 2], delay_ms=rnd.randint(0, 30))
        )
    return {"connections": conns}


def load_plan(name: str) -> dict[str, Any]:
    plans = {"demo": demo_plan, "burst": burst_plan}
    return plans[name]()
