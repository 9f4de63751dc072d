"""Least privilege outside systemd: after every socket is bound, a daemon started as root
switches to an unprivileged user and keeps only the two capabilities it still needs.

- CAP_NET_RAW: a packet socket (and a raw send socket) per interface for UDP 67, opened
  again whenever netlink reports a new interface or address.
- CAP_NET_BIND_SERVICE: kept so that nothing the daemon does later on a low port fails
  (every listening port is bound before the drop; per-transfer TFTP sockets are ephemeral).

The sequence (Linux): drop every other capability from the bounding set and clear the
ambient set (while still root), PR_SET_KEEPCAPS, setgroups/setgid/setuid (glibc applies
them to every thread), then capset effective = permitted = the two, inheritable = none,
and PR_SET_NO_NEW_PRIVS, so a user hook's command runs with no capability at all.
Capabilities are per thread: only the calling (reactor) thread keeps the two; threads that
already run (the event-store writer) keep none. Started as non-root (systemd's User= with
AmbientCapabilities=), nothing is done.

The pure parts (masks, the decision, /proc status parsing) are tested without root.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import pwd
from dataclasses import dataclass

log = logging.getLogger("proxydhcp.privileges")

CAP_CHOWN = 0
CAP_NET_BIND_SERVICE = 10
CAP_NET_RAW = 13
CAP_SETGID = 6
CAP_SETUID = 7
KEEP = (CAP_NET_BIND_SERVICE, CAP_NET_RAW)
NAMES = {CAP_NET_BIND_SERVICE: "CAP_NET_BIND_SERVICE", CAP_NET_RAW: "CAP_NET_RAW"}

PR_SET_KEEPCAPS = 8
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
LINUX_CAPABILITY_VERSION_3 = 0x20080522
DEFAULT_USERS = ("proxydhcp", "nobody")


class PrivilegeError(Exception):
    """Privileges cannot be dropped as configured; the message names the fix."""


# --- pure ------------------------------------------------------------------------------------
def cap_mask(caps) -> int:
    """The 64-bit capability mask with the given capability numbers set."""
    mask = 0
    for cap in caps:
        if not 0 <= cap < 64:
            raise ValueError(f"capability number out of range: {cap}")
        mask |= 1 << cap
    return mask


def cap_words(mask: int) -> tuple[int, int]:
    """The two 32-bit words capset(2) version 3 takes: (caps 0-31, caps 32-63)."""
    return mask & 0xFFFFFFFF, (mask >> 32) & 0xFFFFFFFF


def caps_in(mask: int) -> set[int]:
    return {bit for bit in range(64) if mask >> bit & 1}


def to_drop_from_bounding(last_cap: int, keep=KEEP) -> list[int]:
    """Capability numbers 0..last_cap to remove from the bounding set."""
    return [c for c in range(last_cap + 1) if c not in keep]


def status_caps(status_text: str) -> dict[str, int]:
    """{'CapEff': mask, 'CapPrm': ..., ...} from the text of /proc/<pid>/status."""
    out = {}
    for line in status_text.splitlines():
        key, _, value = line.partition(":")
        if key.startswith("Cap"):
            out[key] = int(value.strip(), 16)
    return out


@dataclass(frozen=True)
class Plan:
    drop: bool
    reason: str


def decide(euid: int, enabled: bool) -> Plan:
    """Whether to drop: only a root process with dropping enabled does."""
    if euid != 0:
        return Plan(False, "not started as root: running with the privileges given "
                           "(systemd's User= and AmbientCapabilities=)")
    if not enabled:
        return Plan(False, "privilege drop disabled (run.drop_privileges: false / --no-drop): "
                           "running as root")
    return Plan(True, "started as root")


def choose_user(configured: str | None, getpwnam=pwd.getpwnam):
    """The passwd entry to run as: run.user, else proxydhcp if it exists, else nobody."""
    names = (configured,) if configured else DEFAULT_USERS
    for name in names:
        try:
            return getpwnam(name)
        except KeyError:
            continue
    if configured:
        raise PrivilegeError(f"run.user {configured!r}: no such user: create it "
                             f"(useradd --system {configured}) or set run.user / --user")
    raise PrivilegeError("neither user proxydhcp nor nobody exists: create one "
                         "(useradd --system proxydhcp) or set run.user / --user")


# --- the system calls ------------------------------------------------------------------------
class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


_libc = None


def _lib():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    return _libc


def _prctl(option: int, arg2: int = 0, arg3: int = 0) -> None:
    if _lib().prctl(option, arg2, arg3, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}): {os.strerror(err)}")


def _capset(mask: int) -> None:
    low, high = cap_words(mask)
    header = _Header(LINUX_CAPABILITY_VERSION_3, 0)
    data = (_Data * 2)(_Data(low, low, 0), _Data(high, high, 0))
    if _lib().capset(ctypes.byref(header), data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"capset: {os.strerror(err)}")


def _last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as fh:
            return int(fh.read())
    except (OSError, ValueError):
        return 40


def drop_to(user) -> None:
    """Become `user` (a passwd entry) keeping only KEEP. Must run as root, in the reactor thread."""
    for cap in to_drop_from_bounding(_last_cap()):
        try:
            _prctl(PR_CAPBSET_DROP, cap)
        except OSError as exc:
            if exc.errno != 22:      # EINVAL: a capability this kernel does not know
                raise
    try:
        _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    except OSError:
        pass                         # kernels before 4.3 have no ambient set
    _prctl(PR_SET_KEEPCAPS, 1)
    os.initgroups(user.pw_name, user.pw_gid)
    os.setresgid(user.pw_gid, user.pw_gid, user.pw_gid)
    os.setresuid(user.pw_uid, user.pw_uid, user.pw_uid)
    _capset(cap_mask(KEEP))
    _prctl(PR_SET_KEEPCAPS, 0)
    _prctl(PR_SET_NO_NEW_PRIVS, 1)


# --- the state directory ---------------------------------------------------------------------
_SHARED_DIRS = {"/", "/var", "/var/lib", "/var/run", "/run", "/tmp", "/var/tmp", "/etc", "/usr",
                "/home", "/root", "/opt", "/srv"}


def own_state(paths, uid: int, gid: int) -> list[str]:
    """Give the daemon's own files to uid:gid (before the drop, so it can go on writing and
    reopening them): each path given, and the entries of the directories given. Never a
    shared system directory, never following a symbolic link. Returns what was changed."""
    changed = []

    def give(path: str) -> None:
        try:
            st = os.lstat(path)
        except OSError:
            return
        if (st.st_uid, st.st_gid) != (uid, gid):
            os.lchown(path, uid, gid)
            changed.append(path)

    for path in paths:
        if not path or os.path.normpath(os.path.realpath(path)) in _SHARED_DIRS:
            continue
        give(path)
        if os.path.isdir(path) and not os.path.islink(path):
            for entry in os.scandir(path):
                if entry.is_dir(follow_symlinks=False):
                    give(entry.path)
                    for sub in os.scandir(entry.path):   # the spool's files
                        give(sub.path)
                else:
                    give(entry.path)
    return changed


def describe_self() -> str:
    """'uid 65534 (nobody), caps CAP_NET_BIND_SERVICE CAP_NET_RAW' for the log."""
    try:
        with open("/proc/self/status") as fh:
            eff = status_caps(fh.read()).get("CapEff", 0)
    except OSError:
        eff = 0
    uid = os.geteuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)
    caps = " ".join(NAMES.get(c, f"cap{c}") for c in sorted(caps_in(eff))) or "none"
    return f"uid {uid} ({name}), gid {os.getegid()}, capabilities {caps}"
