"""Which capabilities the daemon has, and what a missing one costs.

inodewatch reads other processes' /proc entries and other users' files.  Run as root with the
systemd unit's bounding set, or as an unprivileged user with these as ambient capabilities,
it needs (all in the initial user namespace):

  CAP_SYS_PTRACE           /proc/PID/maps, fd/, root and exe of other users' processes
                           (the kernel's ptrace_may_access, PTRACE_MODE_READ)
  CAP_DAC_READ_SEARCH      /proc/PID/fd and map_files directories (mode 0500, owned by the
                           target) and the directories on the way to a mapped file
                           (CAP_DAC_OVERRIDE, root's usual superset, does as well)
  CAP_CHECKPOINT_RESTORE   following /proc/PID/map_files/START-END (Linux >= 5.9; before
    or CAP_SYS_ADMIN       that only CAP_SYS_ADMIN): the held inode and its link count
  CAP_NET_ADMIN            joining the proc connector, for exit statuses

Pure helpers (`parse_capabilities`, `missing_features`) work on plain values; only
`effective_capabilities` reads /proc/self/status.
"""

from __future__ import annotations

from dataclasses import dataclass

# From linux/capability.h (CAP_LAST_CAP is CAP_CHECKPOINT_RESTORE = 40 as of Linux 6.x).
CAPABILITY_NAMES: dict[int, str] = {
    0: "CAP_CHOWN",
    1: "CAP_DAC_OVERRIDE",
    2: "CAP_DAC_READ_SEARCH",
    3: "CAP_FOWNER",
    4: "CAP_FSETID",
    5: "CAP_KILL",
    6: "CAP_SETGID",
    7: "CAP_SETUID",
    8: "CAP_SETPCAP",
    9: "CAP_LINUX_IMMUTABLE",
    10: "CAP_NET_BIND_SERVICE",
    11: "CAP_NET_BROADCAST",
    12: "CAP_NET_ADMIN",
    13: "CAP_NET_RAW",
    14: "CAP_IPC_LOCK",
    15: "CAP_IPC_OWNER",
    16: "CAP_SYS_MODULE",
    17: "CAP_SYS_RAWIO",
    18: "CAP_SYS_CHROOT",
    19: "CAP_SYS_PTRACE",
    20: "CAP_SYS_PACCT",
    21: "CAP_SYS_ADMIN",
    22: "CAP_SYS_BOOT",
    23: "CAP_SYS_NICE",
    24: "CAP_SYS_RESOURCE",
    25: "CAP_SYS_TIME",
    26: "CAP_SYS_TTY_CONFIG",
    27: "CAP_MKNOD",
    28: "CAP_LEASE",
    29: "CAP_AUDIT_WRITE",
    30: "CAP_AUDIT_CONTROL",
    31: "CAP_SETFCAP",
    32: "CAP_MAC_OVERRIDE",
    33: "CAP_MAC_ADMIN",
    34: "CAP_SYSLOG",
    35: "CAP_WAKE_ALARM",
    36: "CAP_BLOCK_SUSPEND",
    37: "CAP_AUDIT_READ",
    38: "CAP_PERFMON",
    39: "CAP_BPF",
    40: "CAP_CHECKPOINT_RESTORE",
}
CAPABILITY_NUMBERS = {name: number for number, name in CAPABILITY_NAMES.items()}


@dataclass(frozen=True)
class Feature:
    """Something the daemon does that needs any one of `needs`."""

    needs: tuple[str, ...]
    degraded: str  # one sentence: what happens without it


FEATURES: tuple[Feature, ...] = (
    Feature(
        ("CAP_SYS_PTRACE",),
        "without CAP_SYS_PTRACE the maps, open files and root of other users' processes "
        "cannot be read: such processes cannot be watched or scanned",
    ),
    Feature(
        ("CAP_DAC_READ_SEARCH", "CAP_DAC_OVERRIDE"),
        "without CAP_DAC_READ_SEARCH the fd and map_files directories of other users' "
        "processes and files behind directories closed to the daemon cannot be read: "
        "their open files go unchecked and their paths cannot be compared or watched",
    ),
    Feature(
        ("CAP_CHECKPOINT_RESTORE", "CAP_SYS_ADMIN"),
        "without CAP_CHECKPOINT_RESTORE (or CAP_SYS_ADMIN) /proc/PID/map_files cannot be "
        "followed: a mapped file's link count is unknown, and \" (deleted)\" in maps is "
        "taken only as a hint",
    ),
    # Linux 6.6 ("connector/cn_proc: Allow non-root users access") lets an unprivileged
    # listener join the proc connector; older kernels refuse it without CAP_NET_ADMIN.  This
    # sentence is therefore a "may": the daemon finds out itself when it opens the connector
    # (and logs watch.degraded if it cannot).
    Feature(
        ("CAP_NET_ADMIN",),
        "without CAP_NET_ADMIN the proc connector may be refused: exits are then seen "
        "through pidfds, without the exit status or the signal that killed the process",
    ),
)


def parse_capabilities(hex_text: str) -> set[str]:
    """Capability names in a /proc/PID/status mask such as ``000001ffffffffff``.

    A bit this table does not know (a capability newer than CAP_CHECKPOINT_RESTORE) is
    named ``CAP_<number>``.  Raises ValueError for text that is not a hex mask.
    """
    text = hex_text.strip()
    if not text or not all(c in "0123456789abcdefABCDEF" for c in text):
        raise ValueError(f"not a capability mask: {hex_text!r}")
    mask = int(text, 16)
    names = set()
    bit = 0
    while mask:
        if mask & 1:
            names.add(CAPABILITY_NAMES.get(bit, f"CAP_{bit}"))
        mask >>= 1
        bit += 1
    return names


def read_capabilities(field: str = "CapEff", status_path: str = "/proc/self/status") -> set[str]:
    """One capability set (CapEff, CapPrm, CapBnd, CapAmb, CapInh) from a status file.

    Raises OSError if the file cannot be read, ValueError if the field is absent."""
    with open(status_path, encoding="ascii", errors="replace") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key == field:
                return parse_capabilities(value)
    raise ValueError(f"{status_path} has no {field} line")


def effective_capabilities() -> set[str]:
    """This process's effective capabilities, e.g. {"CAP_SYS_PTRACE", ...}."""
    return read_capabilities("CapEff")


def missing_features(caps: set[str]) -> list[str]:
    """One sentence per feature that `caps` degrades, in a fixed order; [] when none is."""
    return [f.degraded for f in FEATURES if not any(cap in caps for cap in f.needs)]


# What the kernel checks before it shows a /proc/PID file of another user's process (each a
# tuple of capabilities any one of which does): ptrace_may_access (PTRACE_MODE_READ) for
# every file of a process not ours, and the directory's mode (0500, the target's) for fd/
# and map_files/, whose links also want CAP_CHECKPOINT_RESTORE (map_files_d_revalidate).
PTRACE = ("CAP_SYS_PTRACE",)
DIRECTORY = ("CAP_DAC_READ_SEARCH", "CAP_DAC_OVERRIDE")
NEEDED_FOR: dict[str, tuple[tuple[str, ...], ...]] = {
    "fd": (PTRACE, DIRECTORY),
    "map_files": (PTRACE, DIRECTORY, ("CAP_CHECKPOINT_RESTORE", "CAP_SYS_ADMIN")),
}


def denial_advice(file: str, held: set[str] | None = None, initial: bool | None = None) -> str:
    """What to do about the kernel refusing /proc/PID/`file` ("maps", "fd", ...): the
    capabilities it wants that we lack, and only those; if we hold them all, that the
    refusal comes from elsewhere.  `held` and `initial` (in the initial user namespace)
    are read from /proc/self when not given."""
    needs = NEEDED_FOR.get(file.partition("/")[0], (PTRACE,))
    if held is None:
        try:
            held = effective_capabilities()
        except (OSError, ValueError):
            return f"run as root or grant {' and '.join(n[0] for n in needs)}"
    if initial is None:
        initial = in_initial_user_namespace()
    if not initial:
        return ("this process runs in a user namespace of its own: its capabilities do not "
                "reach processes outside it (run it in the host's)")
    missing = [alternatives[0] for alternatives in needs if not held & set(alternatives)]
    if missing:
        return f"grant {' and '.join(missing)} (or run as root)"
    return (f"{' and '.join(n[0] for n in needs)} {'are' if len(needs) > 1 else 'is'} held: "
            "the kernel refuses it for another reason (a security module such as AppArmor, "
            "SELinux or Yama, or a process it protects)")


def in_initial_user_namespace(uid_map_path: str = "/proc/self/uid_map") -> bool:
    """Whether this process runs in the initial user namespace (where the capabilities
    above must be held: map_files and the proc connector check init_user_ns).  A container
    or systemd's PrivateUsers= gives a namespace whose root holds none of them there."""
    try:
        with open(uid_map_path, encoding="ascii") as uid_map:
            fields = uid_map.read().split()
    except OSError:
        return True  # no user namespaces in this kernel: there is only the initial one
    return fields == ["0", "0", "4294967295"]
