"""TlsTap: the public object of TLS capture. Open it, call refresh() now and then, read() records.

Data path: `processes` finds the gateway workers and their libssl -> `uprobes` attaches the programs of
`ssl_probes` to each library file once -> the programs fill a ring buffer, for watched pids only ->
`ringbuf` drains it -> `probe_loader.decode_record` makes TlsData/TlsBound/TlsFreed.

refresh() is how restarted or newly forked workers are followed: it rescans /proc, attaches libraries
not seen before (by device and inode) and rewrites the watched-pid map. Cheap enough to call every
second (one read of each process's comm; maps only for processes not seen before).

Host needs: x86_64, Linux >= 5.8 (ring buffer, bpf_probe_read_user/kernel) with the uprobe PMU, and its BTF
(/sys/kernel/btf/vmlinux, CONFIG_DEBUG_INFO_BTF) for the socket addresses read in the kernel (without
it they come from /proc, which races with short connections: see streams.py); CAP_SYS_ADMIN
(current kernels let nothing less create uprobes) and CAP_SYS_PTRACE (maps of workers running as
another user); from a container --pid=host so the gateway's processes and files are visible.
"""

from __future__ import annotations

import errno
import os
import platform
import struct
from types import TracebackType

from sniffer.capture import bpf_sys
from sniffer.capture.tls.probe_loader import (
    LoadedProbes,
    ProbeConfig,
    decode_record,
    load_probes,
    read_counters,
)
from sniffer.capture.tls.processes import find_gateway_processes
from sniffer.capture.tls.records import TlsRecord, TlsUnavailable
from sniffer.capture.tls.ringbuf import RingBuffer
from sniffer.capture.tls.uprobes import Attachment, attach_library, uprobe_pmu

__all__ = ["TlsTap", "TlsUnavailable"]

# CAP_BPF + CAP_PERFMON load the programs, but since the 2025 fix "perf: Fix privilege check for uprobe
# PMU" (in stable kernels too) only CAP_SYS_ADMIN may create uprobes; CAP_SYS_PTRACE reads the maps of
# gateway workers running as another user. Both measured with setpriv in tests/test_tls_probes.py.
_PERMISSION = (
    "needs CAP_SYS_ADMIN (uprobes) and CAP_SYS_PTRACE (the gateway's /proc/<pid>/maps); in a container "
    "run with --privileged or --cap-add SYS_ADMIN --cap-add SYS_PTRACE, and --pid=host"
)
_NO_STATE = struct.pack("<QQ", 0, 0)  # watched-map value: rate-limit window start and count


def _unavailable(what: str, exc: OSError) -> TlsUnavailable:
    if exc.errno in (errno.EPERM, errno.EACCES):
        return TlsUnavailable(f"TLS capture unavailable: {what} not permitted: {_PERMISSION}")
    return TlsUnavailable(f"TLS capture unavailable: {what} failed: {exc.strerror or exc}")


class TlsTap:
    """Plaintext of the gateway's SSL_read/SSL_write calls, from eBPF uprobes on its OpenSSL."""

    def __init__(self, probes: LoadedProbes, ring: RingBuffer, process_names: tuple[str, ...]) -> None:
        self._probes: LoadedProbes | None = probes
        self._ring = ring
        self._names = process_names
        self._attachments: dict[tuple[int, int], Attachment] = {}
        self._not_openssl: set[tuple[int, int]] = set()  # files without SSL_read/SSL_write
        self._watched: dict[int, int] = {}  # pid -> start time
        self._processes_unprobed = 0
        self._attach_errors = 0
        self.last_error: str | None = None  # the latest attach failure, for logs and doctor

    @classmethod
    def open(
        cls,
        process_names: tuple[str, ...] = ("nginx",),
        config: ProbeConfig | None = None,
        *,
        kernel_addresses: bool = True,
    ) -> TlsTap:
        """Load the programs and attach to the gateway processes running now. kernel_addresses=False
        leaves the socket walk out of the SSL_set_fd probe (as on a kernel without BTF).

        Raises TlsUnavailable (one plain sentence) when the host cannot do it.
        """
        if platform.machine() != "x86_64":
            raise TlsUnavailable(
                "TLS capture unavailable: the uprobes are written for x86_64, "
                f"this host is {platform.machine()}"
            )
        try:
            uprobe_pmu()
        except (OSError, ValueError, IndexError):
            raise TlsUnavailable(
                "TLS capture unavailable: the kernel has no uprobe PMU "
                "(/sys/bus/event_source/devices/uprobe; needs CONFIG_UPROBES, Linux >= 4.17)"
            ) from None
        config = config or ProbeConfig()
        try:
            probes = load_probes(config, kernel_addresses=kernel_addresses)
        except OSError as exc:
            if exc.errno == errno.EINVAL and "creating map" in str(exc):
                raise TlsUnavailable(
                    "TLS capture unavailable: the kernel has no BPF ring buffer (needs Linux >= 5.8)"
                ) from None
            raise _unavailable("loading the eBPF programs", exc) from None
        try:
            ring = RingBuffer(probes.ring_fd, config.ring_bytes)
        except OSError as exc:
            probes.close()
            raise _unavailable("mapping the ring buffer", exc) from None
        tap = cls(probes, ring, process_names)
        try:
            tap.refresh(strict=True)
        except TlsUnavailable:
            tap.close()
            raise
        except OSError as exc:
            tap.close()
            raise _unavailable("attaching uprobes", exc) from None
        return tap

    def refresh(self, *, strict: bool = False) -> None:
        """Follow the gateway processes: attach new libraries, watch new pids, forget exited ones.

        A library that cannot be attached is counted (attach_errors, last_error) and retried on the
        next refresh; with strict=True the first permission error is raised instead.
        """
        probes = self._probes
        if probes is None:
            return
        current: dict[int, int] = {}
        unprobed = 0
        for process in find_gateway_processes(self._names):
            if not process.readable:
                unprobed += 1
                self.last_error = f"/proc/{process.pid}/maps: permission denied"
                if strict:
                    raise TlsUnavailable(
                        f"TLS capture unavailable: reading /proc/{process.pid}/maps not permitted: "
                        + _PERMISSION
                    )
                continue
            known = self._watched.get(process.pid) == process.start_time
            if known or self._probe_files(process.libraries or (process.static_candidate,), strict):
                current[process.pid] = process.start_time
            else:
                unprobed += 1
        for pid, start in self._watched.items():
            if current.get(pid) != start:  # exited, or the pid now names another process
                bpf_sys.map_delete(probes.watched_fd, struct.pack("<I", pid))
        for pid, start in current.items():
            if self._watched.get(pid) != start:
                bpf_sys.map_update(probes.watched_fd, struct.pack("<I", pid), _NO_STATE)
        self._watched = current
        self._processes_unprobed = unprobed

    def _probe_files(self, paths: tuple[str, ...], strict: bool) -> bool:
        """Attach every path not attached yet; True when at least one of them carries the probes."""
        assert self._probes is not None
        probed = False
        for path in paths:
            try:
                st = os.stat(path)
            except PermissionError:  # /proc/<pid>/root of a process we may not trace
                self.last_error = f"{path}: permission denied"
                if strict:
                    raise TlsUnavailable(
                        f"TLS capture unavailable: opening {path} not permitted: {_PERMISSION}"
                    ) from None
                continue
            except OSError:  # exited meanwhile
                continue
            key = (st.st_dev, st.st_ino)
            if key in self._attachments:
                probed = True
                continue
            if key in self._not_openssl:
                continue
            try:
                attachment = attach_library(path, self._probes.programs)
            except OSError as exc:
                self._attach_errors += 1
                self.last_error = f"{path}: {exc.strerror or exc}"
                if strict and exc.errno in (errno.EPERM, errno.EACCES):
                    raise
                continue
            if not {"SSL_read", "SSL_read_ex"} & set(attachment.symbols):
                attachment.close()
                self._not_openssl.add(key)
                continue
            self._attachments[key] = attachment
            probed = True
        return probed

    def fileno(self) -> int:
        """The ring buffer's fd for poll/epoll. A reader asleep in poll/epoll is woken only once
        ProbeConfig.wakeup_bytes (64 KiB) wait, so wait on it WITH A TIMEOUT (e.g. 100 ms) and read()
        when either fires: on purpose, a wakeup per record cost more than the record."""
        return self._ring.fileno()

    def read(self, limit: int = 65536) -> list[TlsRecord]:
        """The records waiting now, oldest first (non-blocking; empty when none or closed)."""
        if self._probes is None:
            return []
        return self._ring.drain(decode_record, limit)

    @property
    def kernel_addresses(self) -> bool:
        """True when the SSL_set_fd probe reads the socket's addresses in the kernel (BTF found)."""
        return self._probes is not None and self._probes.sock_layout is not None

    @property
    def kernel_addresses_error(self) -> str | None:
        """Why the addresses are not read in the kernel (then user space looks them up in /proc)."""
        return None if self._probes is None else self._probes.sock_layout_error

    def watched_pids(self) -> list[int]:
        return sorted(self._watched)

    def libraries(self) -> list[str]:
        """The files probed (paths as first seen)."""
        return [a.path for a in self._attachments.values()]

    def counters(self) -> dict[str, int]:
        """Kernel counters (records, ring_full, rate_limited, truncated_bytes, return_without_entry,
        read_errors) and the tap's own (watched_processes, unprobed_processes, libraries, attach_errors)."""
        if self._probes is None:
            return {}
        out = read_counters(self._probes)
        out["watched_processes"] = len(self._watched)
        out["unprobed_processes"] = self._processes_unprobed
        out["libraries"] = len(self._attachments)
        out["attach_errors"] = self._attach_errors
        return out

    def close(self) -> None:
        """Detach every probe and free the maps; safe to call twice."""
        if self._probes is None:
            return
        for attachment in self._attachments.values():
            attachment.close()
        self._attachments.clear()
        self._ring.close()
        self._probes.close()
        self._probes = None
        self._watched.clear()

    def __enter__(self) -> TlsTap:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
