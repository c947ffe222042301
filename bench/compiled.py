"""The mypyc-compiled variant (core and shell), built into a throwaway directory (never the source tree).

`ensure_compiled()` copies setup.py, `reassembly/` and `sniffer/` to a scratch directory, builds the
extensions there with `SNIFFER_COMPILE=1 setup.py build_ext`, and returns a directory holding both whole
packages (each hot module as .py and as its compiled extension, which Python imports first). Put it first
on PYTHONPATH to run anything against the compiled build. Builds are cached by a digest of every file of
both packages (mypyc type-checks the compiled modules against the rest, and the copy must be current),
so any edit (of them, or of this recipe) means a fresh build; the newest `KEEP_BUILDS` are kept.
Needs gcc, the Python headers and mypy (`pip install mypy`); `compile_unavailable()` says what is missing.

    python bench/compiled.py            build (or reuse) and print the directory
"""

from __future__ import annotations

import compileall
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(tempfile.gettempdir()) / "moesif-sniffer-compiled"
KEEP_BUILDS = 3

__all__ = ["compile_unavailable", "compiled_build_or_none", "ensure_compiled", "is_compiled"]


def compile_unavailable() -> str | None:
    """Why the compiled variant cannot be built here (None: it can)."""
    if shutil.which("gcc") is None and shutil.which("cc") is None:
        return "no C compiler (apt-get install gcc)"
    include = sysconfig.get_paths().get("include")
    if not include or not (Path(include) / "Python.h").exists():
        return "no Python headers (apt-get install python3-dev)"
    if importlib.util.find_spec("mypyc") is None:
        return "mypyc missing (pip install mypy)"
    return None


PACKAGES = ("reassembly", "sniffer")
# Where a finished build must have both packages (the publish below is all or nothing anyway).
MARKERS = ("reassembly/pipeline.py", "sniffer/engine.py")
_SKIP = ("__pycache__", "*.pyc", "*.so")


def _sources() -> list[Path]:
    # This file too: how a build is made (the byte-compiling, say) is part of what a cached one holds.
    files = [ROOT / "setup.py", Path(__file__).resolve()]
    for package in PACKAGES:
        files += sorted(
            p
            for p in (ROOT / package).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".so")
        )
    return files


def _digest() -> str:
    h = hashlib.sha256(sys.version.encode())
    for path in _sources():
        h.update(str(path.relative_to(ROOT)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _built(out: Path) -> bool:
    return all((out / marker).exists() for marker in MARKERS)


def compiled_build_or_none() -> str | None:
    """For a benchmark's compiled rows: the build's directory (built now if needed), or None after saying
    on stderr why it cannot be built here."""
    why = compile_unavailable()
    if why is not None:
        print(f"no compiled core: {why}", file=sys.stderr)
        return None
    return str(ensure_compiled())


def ensure_compiled(quiet: bool = True) -> Path:
    """The directory to put first on PYTHONPATH for the compiled build (built now if not cached)."""
    why = compile_unavailable()
    if why is not None:
        raise RuntimeError(f"cannot build the compiled core: {why}")
    out = CACHE / _digest()
    if _built(out):
        return out
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        shutil.copy2(ROOT / "setup.py", src)
        for package in PACKAGES:
            shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns(*_SKIP))
        lib = Path(tmp) / "lib"
        cmd = [sys.executable, "setup.py", "-q", "build_ext", "--parallel", "2", "--build-lib", str(lib)]
        env = {**os.environ, "SNIFFER_COMPILE": "1"}
        done = subprocess.run(cmd, cwd=src, env=env, capture_output=quiet, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"compiled build failed:\n{(done.stderr or '')[-3000:]}")
        for package in PACKAGES:  # the rest of each package, next to the extensions
            skip = shutil.ignore_patterns(*_SKIP)
            shutil.copytree(src / package, lib / package, ignore=skip, dirs_exist_ok=True)
        # The modules left as source get their bytecode now, as `pip install` writes it: otherwise every
        # run under PYTHONDONTWRITEBYTECODE (the Docker image's setting) compiles them again at start-up
        # (~50M instructions, ~15 ms of each replay).
        compileall.compile_dir(str(lib), quiet=1, workers=1)
        # Publish whole or not at all: a half-copied directory must never look like a finished build.
        try:
            os.replace(lib, out)
        except OSError:
            if not _built(out):
                raise
            # another process built the same sources at the same time: theirs is as good
    builds = sorted((d for d in CACHE.iterdir() if d.is_dir() and d != out), key=lambda d: d.stat().st_mtime)
    for old in builds[: max(0, len(builds) - (KEEP_BUILDS - 1))]:
        if not old.name.startswith("tmp"):  # another build in progress
            shutil.rmtree(old, ignore_errors=True)
    return out


def is_compiled(module: object) -> bool:
    """Was this module loaded from a compiled extension?"""
    return str(getattr(module, "__file__", "")).endswith((".so", ".pyd"))


if __name__ == "__main__":
    print(ensure_compiled(quiet=False))
