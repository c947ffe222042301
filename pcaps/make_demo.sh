#!/bin/bash
# Regenerate kong-demo.pcap and kong-demo.calls.json from the live gateway topology (tests/topology):
# client / gw / upstream network namespaces, nginx emulating Kong 3.9 (port 8000) and a Kong without
# request ids (port 8001), tcpdump -i any inside gw capturing both legs. Needs root, iproute2, nginx,
# tcpdump and curl. The calls log is the client's own record of every call it made: the ground truth.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
py=${PYTHON:-$repo/.venv/bin/python}
cd "$repo/tests"
"$py" -m topology run --plan demo --pcap "$here/kong-demo.pcap" --log "$here/kong-demo.calls.json"
size=$(stat -c %s "$here/kong-demo.pcap")
if [ "$size" -ge 307200 ]; then
    echo "kong-demo.pcap is $size bytes: keep the bundled capture under 300 KB" >&2
    exit 1
fi
echo "kong-demo.pcap: $size bytes"
