"""A real gateway topology for tests: client / gw / upstream network namespaces, nginx emulating Kong.

`net.Topology` builds it; `gateway` holds the Kong emulation (consumers, nginx.conf); `plans` holds the
client's call plans with their ground truth; `skips.topology_skip_reason()` says why it cannot run here.
`upstream_app.py` and `client.py` are stand-alone scripts run inside the namespaces.
CLI: `python -m topology --help` from the `tests` directory (see `__main__.py`).
"""
