#!/usr/bin/env bash
# Make a large keep-alive HTTP capture with real tools: nginx on loopback serving a small JSON body,
# wrk as the load, tcpdump writing the pcap. Usage: bench/make_capture.sh OUT.pcap [PACKETS]
# Needs root (tcpdump on lo), nginx, wrk, tcpdump.
set -euo pipefail
out=${1:?usage: make_capture.sh OUT.pcap [PACKETS]}
packets=${2:-1000000}
port=${BENCH_PORT:-18080}
dir=$(mktemp -d /tmp/sniffer-bench.XXXXXX)
trap 'kill $(cat "$dir/nginx.pid" 2>/dev/null) 2>/dev/null || true; kill "$wrk_pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
mkdir -p "$dir/logs"
cat > "$dir/nginx.conf" <<CONF
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/logs/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$port;
    location / {
      default_type application/json;
      add_header X-Kong-Request-Id \$request_id;
      return 200 '{"id":42,"name":"widget","price":9.99,"tags":["a","b"]}';
    }
  }
}
CONF
nginx -p "$dir" -c "$dir/nginx.conf"
sleep 0.3
tcpdump -i lo -B 131072 -s 0 -w "$out" -c "$packets" "tcp port $port" 2>"$dir/tcpdump.err" &
tcpdump_pid=$!
sleep 1
wrk -t1 -c20 -d120s -H 'Authorization: Basic YWxpY2U6c2VjcmV0' "http://127.0.0.1:$port/api/items?page=1" >/dev/null &
wrk_pid=$!
wait "$tcpdump_pid"
kill "$wrk_pid" 2>/dev/null || true
grep -E "captured|dropped" "$dir/tcpdump.err" >&2 || true
ls -l "$out" >&2
