"""The benchmark captures: where they live and how a missing one is made (shared by the bench scripts)."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
TMP = Path(tempfile.gettempdir())
# 100k packets of wrk keep-alive traffic against nginx, cut from the 1M capture bench/replay.py makes.
WRK_CAPTURE = TMP / "bench-100k.pcap"
BIG_CAPTURE = TMP / "moesif-sniffer-bench-1M.pcap"


def ensure_capture(path: Path) -> Path:
    """`path`, made first when missing: cut from the 1M capture if it exists, else recorded anew
    (make_capture.sh: nginx + wrk + tcpdump on loopback, needs root)."""
    if path.exists():
        return path
    if BIG_CAPTURE.exists():
        cmd = ["tcpdump", "-r", str(BIG_CAPTURE), "-c", "100000", "-w", str(path)]
    else:
        cmd = [str(HERE / "make_capture.sh"), str(path), "100000"]
    print(f"making {path}: {' '.join(cmd)}", file=sys.stderr)
    subprocess.run(cmd, check=True, stderr=subprocess.DEVNULL)
    return path


_COUNTS: dict[Path, int] = {}


def packets_in(capture: Path) -> int:
    """How many packets `capture` holds (counted once per capture and process)."""
    if capture not in _COUNTS:
        from sniffer.capture.pcapfile import open_capture  # the caller has put the repository on the path

        with open_capture(capture) as cap:
            _COUNTS[capture] = sum(1 for _ in cap)
    return _COUNTS[capture]
