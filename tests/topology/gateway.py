"""nginx standing in for Kong: the consumers, the credentials, and the nginx.conf that emulates Kong.

Kong itself cannot be installed here (see /work/shared/docs/platform.md, section 6), so plain nginx plays
its proxy role with `map` and `proxy_set_header`, following what Kong 3.9 puts on the wire:

- key-auth: the `apikey` header is mapped to a consumer; basic-auth: the whole `Authorization: Basic ...`
  value is mapped to a consumer (no password hashing: the base64 string is compared whole);
- a `Bearer` token is passed through untouched with no consumer (no auth plugin on that credential);
- no credential: 401 `{"message":"No API key found in request"}` answered by the gateway itself; an
  unknown credential: 401 `{"message":"Invalid authentication credentials"}`; no route: 404
  `{"message":"no Route matched with those values"}`;
- upstream request headers as Kong's runloop sets them (`X-Consumer-ID/Username/Custom-ID`,
  `X-Credential-Identifier`, `X-Forwarded-For/Proto/Host/Port/Path/Prefix`, `X-Real-IP`, `Via` and
  `X-Kong-Request-Id`); an empty value drops the header, which is Kong's `clear_header`;
- downstream: `X-Kong-Request-Id` on every response, `Via: 1.1 kong/3.9.0` on proxied responses and
  `X-Kong-Response-Latency` on the ones the gateway answered itself;
- `/svc/...` is a route with `strip_path`: the upstream sees the path without `/svc`, with
  `X-Forwarded-Prefix: /svc`;
- an upstream keep-alive pool (one worker, so every client connection shares it) and gzip of JSON
  responses for clients that accept it.

Two gateways run in the same nginx: `kong39` (port 8000, upstream over IPv4) and `kong34` (port 8001,
upstream over IPv6) which, like Kong before 3.5, sends no `X-Kong-Request-Id` in either direction, so its
legs can only be joined by timing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CONSUMERS",
    "JWT_COMPANY",
    "JWT_SUB",
    "KONG_VERSION",
    "Consumer",
    "GatewayPort",
    "jwt_token",
    "render_nginx_conf",
]

KONG_VERSION = "3.9.0"


@dataclass(frozen=True, slots=True)
class Consumer:
    """A Kong consumer and its one credential (an API key or a Basic user:password)."""

    name: str
    id: str
    username: str | None
    custom_id: str | None
    credential_id: str
    apikey: str | None = None
    basic: tuple[str, str] | None = None

    @property
    def user_id(self) -> str:
        """What Moesif's Kong plugin reports as user: custom_id, else username, else id."""
        return self.custom_id or self.username or self.id

    @property
    def basic_header(self) -> str | None:
        if self.basic is None:
            return None
        return "Basic " + base64.b64encode(f"{self.basic[0]}:{self.basic[1]}".encode()).decode()


CONSUMERS: dict[str, Consumer] = {
    c.name: c
    for c in (
        Consumer(
            "alice",
            "6f1f4cb2-6d4e-4e0b-9a51-0d2c6c9a0a01",
            "alice",
            "cust-alice-01",
            "a7b1c2d3-0000-4000-8000-00000000a11c",
            apikey="key-alice-123",
        ),
        Consumer(
            "bob",
            "0b0b0b0b-1111-4111-8111-111111111b0b",
            "bob",
            None,  # no custom_id: Kong clears the header, the plugin falls back to the username
            "b0b0c2d3-0000-4000-8000-000000000b0b",
            apikey="key-bob-456",
        ),
        Consumer(
            "carol",
            "ca201ca2-2222-4222-8222-222222222ca2",
            "carol",
            "cust-carol-07",
            "ca20c2d3-0000-4000-8000-000000000ca2",
            basic=("carol", "s3cret"),
        ),
        Consumer(
            "dave",
            "da7eda7e-3333-4333-8333-333333333da7",
            None,  # custom_id only
            "partner-dave",
            "da7ec2d3-0000-4000-8000-000000000da7",
            basic=("dave", "hunter2"),
        ),
    )
}

JWT_SUB = "jwt-user-42"
JWT_COMPANY = "acme-jwt"
_JWT_KEY = b"topology-demo-secret"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt_token(sub: str = JWT_SUB, company: str = JWT_COMPANY) -> str:
    """An HS256 JWT with `sub` and `company_id` claims (the gateway passes it through unchecked)."""
    header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    claims = {"sub": sub, "company_id": company, "name": "JWT Demo User", "iat": 1764000000}
    payload = _b64url(json.dumps(claims, separators=(",", ":")).encode())
    sig = hmac.new(_JWT_KEY, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64url(sig)}"


@dataclass(frozen=True, slots=True)
class GatewayPort:
    """One emulated Kong proxy listener."""

    name: str
    port: int
    upstream: str  # name of the nginx upstream block
    request_id: bool  # send X-Kong-Request-Id upstream and downstream (Kong >= 3.5)


def _map_block(variable: str, target: str, pairs: dict[str, str]) -> str:
    lines = [f"    map {variable} {target} {{", '        default "";']
    lines += [f'        "{k}" "{v}";' for k, v in pairs.items()]
    lines.append("    }")
    return "\n".join(lines)


def _server_block(gw: GatewayPort, listen: list[str], upstream_host: str) -> str:
    listens = "\n".join(f"        listen {addr}:{gw.port};" for addr in listen)
    rid_up = "        proxy_set_header X-Kong-Request-Id $request_id;\n" if gw.request_id else ""
    rid_down = "        add_header X-Kong-Request-Id $request_id always;\n" if gw.request_id else ""
    proxy_headers = f"""        proxy_http_version 1.1;
        proxy_set_header Connection "keep-alive";
        proxy_set_header Host "{upstream_host}";  # preserve_host = false: the service's host
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto $scheme;
        proxy_set_header X-Forwarded-Host $host;
        proxy_set_header X-Forwarded-Port $server_port;
        proxy_set_header X-Forwarded-Path $xf_path;
        proxy_set_header X-Forwarded-Prefix $xf_prefix;
        proxy_set_header X-Real-IP $remote_addr;
        proxy_set_header Via "1.1 kong/{KONG_VERSION}";
{rid_up}        proxy_set_header X-Consumer-ID $consumer_id;
        proxy_set_header X-Consumer-Username $consumer_username;
        proxy_set_header X-Consumer-Custom-ID $consumer_custom_id;
        proxy_set_header X-Credential-Identifier $credential_id;
        proxy_set_header X-Anonymous-Consumer "";
"""
    auth = """            if ($auth_result = missing) {
                return 401 '{"message":"No API key found in request"}';
            }
            if ($auth_result = invalid) {
                return 401 '{"message":"Invalid authentication credentials"}';
            }
"""
    return f"""    server {{  # {gw.name}
{listens}
        default_type "application/json; charset=utf-8";
{rid_down}        add_header Via $resp_via always;
        add_header X-Kong-Response-Latency $resp_latency always;
        add_header WWW-Authenticate $www_authenticate always;
{proxy_headers}
        location /api/ {{
            set $xf_prefix "";
{auth}            proxy_pass http://{gw.upstream};
        }}
        location /svc/ {{  # route with strip_path = true
            set $xf_prefix "/svc";
{auth}            proxy_pass http://{gw.upstream}/;
        }}
        location / {{
            set $xf_prefix "";
            return 404 '{{"message":"no Route matched with those values"}}';
        }}
    }}
"""


def render_nginx_conf(
    workdir: Path,
    *,
    listen_v4: str,
    listen_v6: str,
    upstream_v4: str,
    upstream_v6: str,
    upstream_port: int,
    ports: tuple[GatewayPort, ...],
) -> str:
    """The whole nginx.conf; every path it writes to is under `workdir`."""
    keys = {c.apikey: c.name for c in CONSUMERS.values() if c.apikey}
    basics = {c.basic_header: c.name for c in CONSUMERS.values() if c.basic_header}
    by_name = CONSUMERS.values()
    maps = [
        _map_block("$http_apikey", "$key_consumer", keys),
        _map_block("$http_authorization", "$basic_consumer", basics),
        _map_block("$consumer", "$consumer_id", {c.name: c.id for c in by_name}),
        _map_block("$consumer", "$consumer_username", {c.name: c.username for c in by_name if c.username}),
        _map_block("$consumer", "$consumer_custom_id", {c.name: c.custom_id for c in by_name if c.custom_id}),
        _map_block("$consumer", "$credential_id", {c.name: c.credential_id for c in by_name}),
    ]
    maps_text = "\n".join(maps)
    hosts = {"orders_v4": f"{upstream_v4}:{upstream_port}", "orders_v6": f"[{upstream_v6}]:{upstream_port}"}
    servers = "\n".join(_server_block(gw, [listen_v4, f"[{listen_v6}]"], hosts[gw.upstream]) for gw in ports)
    w = workdir
    return f"""# generated by tests/topology/gateway.py: nginx emulating Kong {KONG_VERSION}
worker_processes 1;
daemon off;
pid {w}/nginx.pid;
error_log {w}/nginx-error.log warn;
events {{ worker_connections 512; }}
http {{
    access_log {w}/nginx-access.log;
    client_body_temp_path {w}/nginx-tmp/body;
    proxy_temp_path {w}/nginx-tmp/proxy;
    fastcgi_temp_path {w}/nginx-tmp/fastcgi;
    uwsgi_temp_path {w}/nginx-tmp/uwsgi;
    scgi_temp_path {w}/nginx-tmp/scgi;
    server_tokens off;
    keepalive_timeout 60s;
    gzip on;
    gzip_types application/json;
    gzip_min_length 300;

{maps_text}
    map $http_authorization $auth_scheme {{
        default other;
        "" none;
        "~*^basic\\s" basic;
        "~*^bearer\\s" bearer;
    }}
    # key-auth first (as its plugin priority), then basic-auth, then a Bearer token passed through.
    map "$http_apikey|$key_consumer|$auth_scheme|$basic_consumer" $auth_result {{
        default missing;
        "~^[^|]+\\|[^|]+\\|" key;
        "~^[^|]+\\|\\|" invalid;
        "~^\\|\\|basic\\|[^|]+$" basic;
        "~^\\|\\|basic\\|$" invalid;
        "~^\\|\\|bearer\\|" bearer;
    }}
    map $auth_result $consumer {{
        default "";
        key $key_consumer;
        basic $basic_consumer;
    }}
    map $auth_result $www_authenticate {{
        default "";
        missing 'Key realm="kong"';
        invalid 'Key realm="kong"';
    }}
    map $request_uri $xf_path {{
        "~^(?<path_only>[^?]*)" $path_only;
    }}
    # Proxied responses carry Via; the ones the gateway made itself carry X-Kong-Response-Latency.
    map $upstream_status $resp_via {{
        "" "";
        default "1.1 kong/{KONG_VERSION}";
    }}
    map $upstream_status $resp_latency {{
        "" "0";
        default "";
    }}

    upstream orders_v4 {{
        server {upstream_v4}:{upstream_port};
        keepalive 8;
    }}
    upstream orders_v6 {{
        server [{upstream_v6}]:{upstream_port};
        keepalive 8;
    }}

{servers}}}
"""
