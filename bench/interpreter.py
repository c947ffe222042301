"""Which Python runs ours in a benchmark, printed with every table: the interpreter's own build moves the
figures as much as a session of our work. Measured 2026-12-07, the same compiled build replaying the
1M-frame wrk capture: 5.1 s CPU with Debian bookworm's python3.11 (the Docker image's interpreter, libpython
linked into the executable), 6.3 s with a default pyenv build of 3.11.7 (libpython3.11.so, configured
without --enable-optimizations): likely the shared library's calls into itself, which go through the PLT
and are not inlined."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path


def describe() -> str:
    """e.g. "CPython 3.11.2, /usr/bin/python3.11, libpython linked in"."""
    try:
        maps = Path("/proc/self/maps").read_text()
        libpython = "libpython" in maps
    except OSError:
        libpython = False
    link = "libpython shared (.so)" if libpython else "libpython linked in"
    where = os.path.realpath(sys.executable)
    return f"{platform.python_implementation()} {platform.python_version()}, {where}, {link}"
