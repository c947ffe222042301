"""`moesif-sniffer replay` writes byte for byte the same events with the mypyc-compiled build as without it.

The compiled build (setup.py, SNIFFER_COMPILE=1: the core's hot modules and the shell's event path) is
made in a scratch directory by bench/compiled.py (cached by a digest of both packages; ~30 s when cold)
and shares nothing with the source tree. One child process runs the real command, `sniffer.cli.main
(["replay", ...])`, over every public capture and the Kong demo in each variant: the pure source tree,
and the compiled build first on PYTHONPATH. Two configurations: the defaults, and one with Kong ports,
user/company headers, a JWT company claim, header, body and query masks and small body limits. Every
output file must be identical, and the compiled child must really have run the extensions. The Kong
demo and the largest public capture are also replayed with `--workers 2` (the worker processes import
the same variant; the events are the same set, in an order that may differ, so the lines are compared
sorted): the interpreted worker code must work with the compiled classes it uses.
Skipped with the reason when gcc, the Python headers or mypyc are missing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PUBLIC = Path(__file__).resolve().parents[2] / "shared" / "pcaps" / "public"
sys.path.insert(0, str(ROOT))
from bench.compiled import compile_unavailable, ensure_compiled  # noqa: E402

pytestmark = pytest.mark.skipif(compile_unavailable() is not None, reason=str(compile_unavailable()))

CONFIGS: dict[str, list[str]] = {
    "default": [],
    "masked": [
        "--kong-ports", "8000,8001",
        "--user-id-header", "X-User-Id",
        "--company-id-header", "X-Company-Id",
        "--authorization-company-id-field", "company_id",
        "--request-header-masks", "user-agent,x-api-key",
        "--response-header-masks", "etag,server",
        "--request-body-masks", "password,name",
        "--response-body-masks", "id,token,email",
        "--request-query-masks", "q,apikey",
        "--mask-credential-headers", "true",
        "--request-max-body-size-limit", "200",
        "--response-max-body-size-limit", "2000",
    ],
}  # fmt: skip

# Modules that must come from extensions in the compiled child (one per group and the hottest ones).
MUST_BE_COMPILED = [
    "reassembly.pipeline",
    "reassembly.http_connection",
    "sniffer.engine",
    "sniffer.kong.join",
    "sniffer.moesif.event",
    "sniffer.moesif.masks",
    "sniffer.moesif.jsonlines",
]

# The child: argv = output directory, the configurations and the modules to report (JSON), the captures.
# The last WORKER_CAPTURES captures are also replayed with --workers 2.
WORKER_CAPTURES = 2
CHILD = """
import importlib, json, os, sys
from sniffer.cli import main

out, configs, modules, captures = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4:]
for name, args in configs.items():
    for i, capture in enumerate(captures):
        code = main(["replay", capture, "-q", "-o", os.path.join(out, f"{name}-{i}.jsonl"), *args])
        if code != 0:
            sys.exit(f"replay {capture} {name}: exit {code}")
    for i, capture in enumerate(captures[-%d:]):
        output = os.path.join(out, f"{name}-w{i}.jsonl")
        code = main(["replay", capture, "-q", "-o", output, "--workers", "2", *args])
        if code != 0:
            sys.exit(f"replay --workers 2 {capture} {name}: exit {code}")
print(json.dumps({m: importlib.import_module(m).__file__ for m in modules}))
""".replace("%d", str(WORKER_CAPTURES))


def _captures() -> list[str]:
    """The public captures, the largest and the Kong demo last (the ones also run with workers)."""
    found = (
        sorted(PUBLIC.glob("*.pcap*"), key=lambda p: (p.stat().st_size, p.name)) if PUBLIC.is_dir() else []
    )
    return [str(p) for p in [*found, ROOT / "pcaps" / "kong-demo.pcap"]]


def _start(script: Path, path: list[str], out: Path, captures: list[str]) -> subprocess.Popen[str]:
    out.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MOESIF_", "SNIFFER_"))}
    env["PYTHONPATH"] = os.pathsep.join(path)
    argv = [
        sys.executable,
        str(script),
        str(out),
        json.dumps(CONFIGS),
        json.dumps(MUST_BE_COMPILED),
        *captures,
    ]
    # From out/: neither child may pick the source tree up by its working directory.
    return subprocess.Popen(argv, env=env, cwd=out, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(child: subprocess.Popen[str]) -> dict[str, str]:
    stdout, stderr = child.communicate(timeout=600)
    assert child.returncode == 0, stderr[-2000:]
    loaded: dict[str, str] = json.loads(stdout)
    return loaded


def test_compiled_replay_writes_the_same_bytes(tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    captures = _captures()
    compiled = ensure_compiled()
    # Both variants at once: each is one process, and the machine has more than one core.
    pure_child = _start(script, [str(ROOT)], tmp_path / "pure", captures)
    compiled_child = _start(script, [str(compiled)], tmp_path / "compiled", captures)
    pure_loaded, compiled_loaded = _finish(pure_child), _finish(compiled_child)

    for module, file in compiled_loaded.items():
        assert file.endswith(".so") and file.startswith(str(compiled)), f"{module} ran from {file}"
    for module, file in pure_loaded.items():
        assert file.endswith(".py") and file.startswith(str(ROOT)), f"{module} ran from {file}"
    total = 0
    outputs: dict[str, list[bytes]] = {}
    for name in CONFIGS:
        for i, capture in enumerate(captures):
            pure = (tmp_path / "pure" / f"{name}-{i}.jsonl").read_bytes()
            built = (tmp_path / "compiled" / f"{name}-{i}.jsonl").read_bytes()
            assert built == pure, f"{Path(capture).name} ({name}): compiled output differs"
            total += pure.count(b"\n")
            outputs.setdefault(name, []).append(pure)
    # both configurations really produced events (the Kong demo alone, without ../shared: 90)
    assert total > (2000 if PUBLIC.is_dir() else 80)
    for name in CONFIGS:
        for i in range(WORKER_CAPTURES):
            pure_lines = sorted((tmp_path / "pure" / f"{name}-w{i}.jsonl").read_bytes().splitlines())
            built_lines = sorted((tmp_path / "compiled" / f"{name}-w{i}.jsonl").read_bytes().splitlines())
            assert pure_lines, f"{name}-w{i}: no events with --workers 2"
            assert built_lines == pure_lines, f"{name}, --workers 2, capture {i}: compiled events differ"
    differ = sum(a != b for a, b in zip(outputs["default"], outputs["masked"], strict=True))
    assert differ > len(captures) // 2  # and the second one really masked, joined and identified
