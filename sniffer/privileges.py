"""Drop root and every capability once the capture sockets are open.

Capturing needs CAP_NET_RAW only to create the AF_PACKET sockets; an open socket keeps working without
it. So after the rings are set up (and the metrics port bound, and the output file opened) the daemon
calls `drop_privileges(user)`:
1. clear the ambient set and empty the bounding set (needs CAP_SETPCAP; skipped when absent, e.g. in a
   container that was only given NET_RAW: nothing can be regained there anyway);
2. with a user: supplementary groups cleared, then gid and uid set (real, effective and saved) to the
   user's; the kernel clears the permitted and effective sets on that switch from root;
3. capset() with all three sets empty (covers `SNIFFER_USER` empty, which keeps the uid: root without
   capabilities is still far less than root);
4. PR_SET_NO_NEW_PRIVS, so nothing executed later can gain privileges;
5. /proc/self/status is read back: CapEff and CapPrm must be 0 and the uid the wanted one, else
   PrivilegeError (the daemon refuses to run half-dropped).
It must run before any thread starts: capset() changes the calling thread only.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import pwd

from sniffer.errors import ConfigError

__all__ = ["PrivilegeError", "drop_privileges", "process_status"]

PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class PrivilegeError(RuntimeError):
    """The process still holds privileges after trying to drop them."""


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _prctl(option: int, arg: int = 0) -> int:
    return int(
        _libc.prctl(option, ctypes.c_ulong(arg), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))
    )


def process_status(pid: int | str = "self") -> dict[str, str]:
    """/proc/<pid>/status as a dict (Uid, Gid, CapEff, CapPrm, ...)."""
    out: dict[str, str] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


def _last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 40


def drop_privileges(user: str | None) -> str:
    """Become `user` (None: keep the uid) with no capabilities; returns a one-line description, which
    starts with "cannot switch" when the uid could not be changed (the capabilities are gone anyway)."""
    target = None
    if user:
        try:
            target = pwd.getpwnam(user)
        except KeyError:
            raise ConfigError(f"SNIFFER_USER / --user: no such user {user!r}") from None
    _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    for cap in range(_last_cap() + 1):
        if _prctl(PR_CAPBSET_DROP, cap) != 0:
            break  # no CAP_SETPCAP: the bounding set stays, and with it nothing to gain
    problem = ""
    if target is not None and (os.getuid(), os.geteuid()) != (target.pw_uid, target.pw_uid):
        try:
            os.setgroups([])
            os.setresgid(target.pw_gid, target.pw_gid, target.pw_gid)
            os.setresuid(target.pw_uid, target.pw_uid, target.pw_uid)
        except PermissionError:
            # e.g. a container given only NET_RAW (capabilities drop ALL): no CAP_SETUID/CAP_SETGID.
            # Root without any capability is still far less than root, so carry on and say so.
            problem = (
                f"cannot switch to user {user!r} (no CAP_SETUID/CAP_SETGID: grant them, or start as a "
                "non-root user holding NET_RAW); "
            )
            target = None
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if _libc.capset(ctypes.byref(header), data) != 0:
        err = ctypes.get_errno()
        raise PrivilegeError(f"capset: {os.strerror(err)}")
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    status = process_status()
    if int(status["CapEff"], 16) or int(status["CapPrm"], 16):
        raise PrivilegeError(f"capabilities remain after dropping them: CapEff={status['CapEff']}")
    uid = int(status["Uid"].split()[1])
    if target is not None and uid != target.pw_uid:
        raise PrivilegeError(f"still uid {uid} after switching to {user!r}")
    return f"{problem}running as uid {uid} gid {os.getgid()} with no capabilities"
