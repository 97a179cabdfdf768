"""Can the proc connector hear us?  Only from the initial PID and user namespaces.

The kernel answers a proc connector subscription (PROC_CN_MCAST_LISTEN) from any other PID
or user namespace by ignoring it, silently (drivers/connector/cn_proc.c: "Events are
reported with respect to the initial pid and user namespaces so ignore requestors from other
namespaces"): the socket binds, the subscription is accepted, and then either nothing comes
or, when some daemon of the host listens, the host's events do, with the host's pids, which
in a container name other processes.  Inside a container (systemd-nspawn, docker, LXC)
neither is usable.

Comparing /proc/self/ns/pid with /proc/1/ns/pid cannot tell: inside a container both are
the container's.  Nor can /proc/self/status's NSpid, which lists the namespaces from the one
/proc was mounted in down, so a container's own /proc shows one entry.  The kernel's initial
namespaces, though, have fixed inode numbers (include/linux/proc_ns.h, since Linux 3.8):
PID 0xEFFFFFFC, user 0xEFFFFFFD.  Any other number is another namespace.
"""

from __future__ import annotations

import os

PROC_PID_INIT_INO = 0xEFFFFFFC
PROC_USER_INIT_INO = 0xEFFFFFFD


def connector_deafness(pid_ns: int | None, user_ns: int | None) -> str | None:
    """Why the kernel will ignore our subscription (the namespace's inode numbers, None when
    unknown), or None when it will hear it."""
    if pid_ns is not None and pid_ns != PROC_PID_INIT_INO:
        return (f"the daemon runs in a PID namespace other than the initial one "
                f"(pid:[{pid_ns}], a container): the kernel ignores proc connector subscriptions there")
    if user_ns is not None and user_ns != PROC_USER_INIT_INO:
        return (f"the daemon runs in a user namespace other than the initial one "
                f"(user:[{user_ns}]): the kernel ignores proc connector subscriptions there")
    return None


def _inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None  # no namespace support, or /proc unreadable: let the subscription try


def own_connector_deafness() -> str | None:
    """connector_deafness for this process."""
    return connector_deafness(_inode("/proc/self/ns/pid"), _inode("/proc/self/ns/user"))
