"""The optional mypyc-compiled core (setup.py, SNIFFER_COMPILE=1) gives exactly what the Python source gives.

The compiled variant is built in a scratch directory (bench/compiled.py; cached by a digest of the
sources, ~25 s when cold) and run in a child process that imports it first. Every public capture and the
Kong demo go through `Pipeline` in both variants; their exchanges and counters must be equal. Skipped
with the reason when gcc, the Python headers or mypyc are missing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import reassembly.pipeline

ROOT = Path(__file__).resolve().parents[1]
PUBLIC = Path(__file__).resolve().parents[2] / "shared" / "pcaps" / "public"
sys.path.insert(0, str(ROOT))
from bench.compiled import compile_unavailable, ensure_compiled  # noqa: E402

pytestmark = pytest.mark.skipif(compile_unavailable() is not None, reason=str(compile_unavailable()))

# Run in the child (and in this process for the reference): every capture's exchanges (repr, with the
# set of flags sorted, as a set's order is not stable across processes) and non-zero counters.
DUMP = """
import json, sys
from reassembly.pipeline import Pipeline
from sniffer.capture.pcapfile import open_capture

def dump(paths):
    result = {}
    for path in paths:
        pipeline = Pipeline()
        exchanges = []
        with open_capture(path) as cap:
            for ts, linktype, frame, wire_len in cap:
                exchanges.extend(pipeline.feed(ts, linktype, frame, wire_len))
        exchanges.extend(pipeline.close())
        lines = []
        for ex in exchanges:
            flags = sorted(ex.flags)
            ex.flags = set()
            lines.append(repr(ex) + repr(flags))
        result[path] = {"exchanges": lines, "stats": {k: v for k, v in pipeline.stats.items() if v}}
    return result

if __name__ == "__main__":
    import reassembly.pipeline
    print(json.dumps({"module": reassembly.pipeline.__file__, "result": dump(sys.argv[1:])}))
"""


def _captures() -> list[str]:
    found = sorted(PUBLIC.glob("*.pcap*")) if PUBLIC.is_dir() else []
    return [str(p) for p in [*found, ROOT / "pcaps" / "kong-demo.pcap"]]


def test_compiled_core_same_exchanges_and_counters(tmp_path: Path) -> None:
    script = tmp_path / "dump.py"
    script.write_text(DUMP)
    paths = _captures()
    compiled = ensure_compiled()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(compiled), str(ROOT)])}
    done = subprocess.run(
        [sys.executable, str(script), *paths], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    child = json.loads(done.stdout)
    assert child["module"].endswith(".so"), f"the child ran {child['module']}, not the compiled core"
    namespace: dict[str, object] = {}
    exec(compile(DUMP, str(script), "exec"), namespace)  # the same dump, in this (pure Python) process
    expected = namespace["dump"](paths)  # type: ignore[operator]
    assert reassembly.pipeline.__file__.endswith(".py")  # this process is the reference
    # > 1000 with the public corpus; the Kong demo alone (a clone without ../shared) has 86
    at_least = 1000 if PUBLIC.is_dir() else 80
    assert sum(len(v["exchanges"]) for v in expected.values()) > at_least  # type: ignore[attr-defined]
    assert json.loads(json.dumps(expected)) == child["result"]
