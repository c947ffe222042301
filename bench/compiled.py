"""The mypyc-compiled variant of the core, built into a throwaway directory (never the source tree).

`ensure_compiled()` copies setup.py and `reassembly/` to a scratch directory, builds the extensions there
with `SNIFFER_COMPILE=1 setup.py build_ext`, and returns a directory holding the whole `reassembly`
package (each hot module as .py and as its compiled extension, which Python imports first). Put it first
on PYTHONPATH to run anything against the compiled core; `sniffer` still comes from the source tree.
Builds are cached by a digest of the sources, so an edit to any core module means a fresh build; the
newest `KEEP_BUILDS` are kept.
Needs gcc, the Python headers and mypy (`pip install mypy`); `compile_unavailable()` says what is missing.

    python bench/compiled.py            build (or reuse) and print the directory
"""

from __future__ import annotations

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

__all__ = ["compile_unavailable", "ensure_compiled", "is_compiled"]


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


def _digest() -> str:
    h = hashlib.sha256(sys.version.encode())
    for path in [ROOT / "setup.py", *sorted((ROOT / "reassembly").glob("*.py"))]:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def ensure_compiled(quiet: bool = True) -> Path:
    """The directory to put first on PYTHONPATH for the compiled core (built now if not cached)."""
    why = compile_unavailable()
    if why is not None:
        raise RuntimeError(f"cannot build the compiled core: {why}")
    out = CACHE / _digest()
    if (out / "reassembly" / "pipeline.py").exists():
        return out
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        shutil.copy2(ROOT / "setup.py", src)
        shutil.copytree(ROOT / "reassembly", src / "reassembly", ignore=shutil.ignore_patterns("__pycache__"))
        lib = Path(tmp) / "lib"
        cmd = [sys.executable, "setup.py", "-q", "build_ext", "--build-lib", str(lib)]
        env = {**os.environ, "SNIFFER_COMPILE": "1"}
        done = subprocess.run(cmd, cwd=src, env=env, capture_output=quiet, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"compiled build failed:\n{(done.stderr or '')[-3000:]}")
        for py in (src / "reassembly").glob("*.py"):
            shutil.copy2(py, lib / "reassembly" / py.name)
        # Publish whole or not at all: a half-copied directory must never look like a finished build.
        try:
            os.replace(lib, out)
        except OSError:
            if not (out / "reassembly" / "pipeline.py").exists():
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
