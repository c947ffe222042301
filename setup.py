"""Optional mypyc build of the hot modules (core and event path); everything else is in pyproject.toml.

    pip install .                                                        pure Python (the default)
    pip install "setuptools>=68" "mypy>=2.4"                             then, in the same environment:
    SNIFFER_COMPILE=1 pip install --no-build-isolation --no-deps .       the same package, compiled

Compiled, each module listed below is a C extension next to its .py source, and Python imports the
extension first; the .py files stay the reference and the fallback: without SNIFFER_COMPILE (or where no
compiler is installed) the package is pure Python and behaves identically. Needs gcc and the Python
headers. Never compile into the source tree (`pip install -e` or `build_ext --inplace`): a stale
extension would shadow later edits of its .py file. `bench/compiled.py` builds a throwaway copy to
measure and test.
"""

from __future__ import annotations

import os

from setuptools import setup

# The per-packet path, from frame bytes to exchanges, and the values that flow between its stages
# (events.py: plain classes, native compiled, that compare, copy and pickle by their FIELDS). limits.py
# and stats.py stay Python: their classes are the interface the rest of the program builds and copies.
COMPILED_MODULES = [
    "reassembly/events.py",
    "reassembly/decode.py",
    "reassembly/ip_fragments.py",
    "reassembly/seq.py",
    "reassembly/half_stream.py",
    "reassembly/flow_table.py",
    "reassembly/http_budget.py",
    "reassembly/http_framing.py",
    "reassembly/http_head.py",
    "reassembly/http_resync.py",
    "reassembly/http_reader_base.py",
    "reassembly/http_reader_body.py",
    "reassembly/http_reader_head.py",
    "reassembly/http_reader.py",
    "reassembly/http_exchange.py",
    "reassembly/http_connection.py",
    "reassembly/pipeline.py",
]

# What the shell does per exchange after the core: leg join, identification, masks, bodies, the event
# and its JSON line. Same rule: the shell's interface classes (config, the sinks' protocol) stay Python
# (ApiCall is compiled: a plain class, made once per event, that nothing copies or pickles), and
# interpreted code must not subclass the classes below (mypyc forbids it). Measured against the compiled
# core alone: per exchange after the core -11 % (wrk) / -29 % (Kong demo) time; a whole `replay`, CPU:
# -16 % on Kong traffic, -1 % on wrk traffic (where the core dominates). Same bytes out.
COMPILED_SHELL_MODULES = [
    "sniffer/engine.py",
    "sniffer/kong/api_call.py",
    "sniffer/kong/join.py",
    "sniffer/kong/leg_index.py",
    "sniffer/kong/classify.py",
    "sniffer/moesif/event.py",
    "sniffer/headers.py",
    "sniffer/moesif/identify.py",
    "sniffer/moesif/ids.py",
    "sniffer/moesif/client_ip.py",
    "sniffer/moesif/body.py",
    "sniffer/moesif/masks.py",
    "sniffer/moesif/jsonlines.py",
    # Every frame of a replay passes through these (with --workers, every worker walks every frame).
    "sniffer/capture/pcapfile.py",
    "sniffer/capture/flow_hash.py",
    # Live, every captured packet passes through this loop.
    "sniffer/capture/ring_walk.py",
    # Live with several sources (workers, the TLS tap), every leg passes through this in the main process.
    "sniffer/capture/time_merge.py",
    # With several workers (live or replay), every leg a worker hands over is unpacked by this in the main
    # process.
    "sniffer/capture/exchange_codec.py",
    # replay --workers N: the main process merges the workers' records (every exchange on Kong traffic).
    "sniffer/replay_merge.py",
    # replay --workers N: every frame of the file passes through each worker's loop.
    "sniffer/replay_worker.py",
    "sniffer/capture/worker_events.py",
]


def _ext_modules() -> list[object]:
    if os.environ.get("SNIFFER_COMPILE", "") not in ("1", "true", "yes"):
        return []
    from mypyc.build import mypycify  # only needed (and only installed) for the compiled build

    # One type-check of both lists, two shared libraries: `build_ext -j 2` compiles them side by side.
    # Third-party imports (orjson, brotli: untyped, or absent from a build-only environment such as the
    # Dockerfile's) are typed Any: the compiled code calls them as Python would.
    groups = [(COMPILED_MODULES, "reassembly_native"), (COMPILED_SHELL_MODULES, "sniffer_native")]
    args = ["--ignore-missing-imports", *COMPILED_MODULES, *COMPILED_SHELL_MODULES]
    return list(mypycify(args, opt_level="3", separate=groups))


setup(ext_modules=_ext_modules())
