"""Which Debian package owns a file, and the version installed now, from dpkg's database.

dpkg keeps, per installed package, the paths it unpacked in /var/lib/dpkg/info/PKG.list
(PKG:ARCH.list for a multi-arch package) and the packages' state and versions in
/var/lib/dpkg/status.  `dpkg -S` reads every list to answer (~150 ms here, 781 lists, 7.5 MB);
a scan must stay within a few ms of its own cost, so the lists are folded once into an index
file, sorted, then searched by bisection through mmap (a few page reads a path), and folded
again when dpkg changes them: dpkg writes a list as PKG.list-new and renames it, so the
directory's mtime moves at every install, upgrade or removal (lists changed in the last two
seconds are not cached: a change within one tick of the file system's clock would not move it).  Without a usable cache
directory (not root, a read-only /var) every lookup reads the lists, as dpkg -S does.

Paths are looked up as dpkg -S takes them, literally, plus their /usr-merge alias: on a
merged-/usr host /lib is a link to usr/lib, the kernel names a mapped library
/usr/lib/x86_64-linux-gnu/libc.so.6 and bookworm's libc6 lists /lib/x86_64-linux-gnu/libc.so.6
(dpkg -S answers only the second).  Files moved by dpkg-divert are not followed.

The version is the one installed now: what a restart would load, not what the stale
process runs (the upgrade replaced that).  The pure parts (`index_lines`, `search`,
`installed_versions`, `aliases`) work on bytes; `Dpkg` does the reading.
"""

from __future__ import annotations

import mmap
import os
import stat
import time
from collections import namedtuple
from collections.abc import Iterable

from inodewatch.atomicfile import write_atomic

ADMIN_DIR = b"/var/lib/dpkg"
CACHE_DIR = b"/var/cache/inodewatch"
INDEX_NAME = b"dpkg-index"
INDEX_MAGIC = b"inodewatch dpkg index 1 "
# An index past this is not ours (7.5 MB of lists make ~10 MB): refused, rebuilt.
MAX_INDEX = 256 * 1024 * 1024
# Lists changed less than this long ago are read, but not cached (see Dpkg._build).
RACY_NS = 2_000_000_000
# The top-level directories a merged /usr links into it (bin -> usr/bin, ...).
USR_MERGED = (b"bin", b"sbin", b"lib", b"lib32", b"lib64", b"libx32", b"libo32")
# dpkg's states in which a package's files are on disk (dpkg-query(1), "Package states").
HAS_FILES = {b"installed", b"half-configured", b"unpacked", b"half-installed",
             b"triggers-awaited", b"triggers-pending"}


class Package(namedtuple("Package", "name version")):
    """The package owning a path (name: str, as dpkg -S prints it, e.g. "libssl3:amd64";
    several, comma-separated, when packages share the path) and the version installed now
    (version: str | None)."""

    __slots__ = ()

    def fields(self) -> dict[str, object]:
        out: dict[str, object] = {"package": self.name}
        if self.version is not None:
            out["package_version"] = self.version
        return out

    def __str__(self) -> str:
        return f"{self.name} {self.version}" if self.version else self.name


# --- the pure core --------------------------------------------------------------------------


def index_lines(lists: Iterable[tuple[bytes, bytes]]) -> list[bytes]:
    """(package, contents of its .list) -> the index's lines, sorted: b"PATH\\0PACKAGE".  No
    path holds a NUL or a newline, so "\\0" sorts a path's lines before any longer path's."""
    lines = []
    for package, data in lists:
        lines += [path + b"\0" + package for path in data.split(b"\n") if path.startswith(b"/")
                  and path != b"/."]
    lines.sort()
    return lines


def search(buf: bytes | mmap.mmap, start: int, path: bytes) -> list[bytes]:
    """The packages listing `path` in an index body (sorted lines from `start` on, each
    ending in a newline): a bisection over byte offsets, each step moved to a line start."""
    key = path + b"\0"
    lo, hi = start, len(buf)
    while lo < hi:  # lo and hi are line starts; lines before lo sort below key
        mid = (lo + hi) // 2
        line = buf.rfind(b"\n", lo, mid) + 1 or lo
        end = buf.find(b"\n", line) + 1
        if buf[line:end - 1] < key:
            lo = end
        else:
            hi = line
    found = []
    while lo < len(buf) and buf[lo:lo + len(key)] == key:
        end = buf.find(b"\n", lo) + 1
        found.append(buf[lo + len(key):end - 1])
        lo = end
    return found


def aliases(path: bytes, merged: frozenset[bytes]) -> list[bytes]:
    """`path` and, on a merged-/usr host (`merged`: the top-level names linked into /usr),
    its spelling on the other side of the link."""
    top, _, rest = path[1:].partition(b"/")
    if top == b"usr":
        inner, _, rest = rest.partition(b"/")
        if inner in merged and rest:
            return [path, b"/" + inner + b"/" + rest]
    elif top in merged and rest:
        return [path, b"/usr/" + top + b"/" + rest]
    return [path]


def installed_versions(status: bytes, names: Iterable[bytes]) -> dict[bytes, bytes]:
    """The version of each package (b"libssl3" or b"libssl3:amd64") whose files are on disk,
    from the text of dpkg's status file (only the stanzas of those packages are parsed)."""
    wanted: dict[bytes, list[tuple[bytes, bytes | None]]] = {}
    for name in names:
        base, _, arch = name.partition(b":")
        wanted.setdefault(base, []).append((name, arch or None))
    out: dict[bytes, bytes] = {}
    for base, arches in wanted.items():
        needle = b"Package: " + base + b"\n"
        at = 0
        while (at := status.find(needle, at)) != -1:
            if at == 0 or status[at - 1:at] == b"\n":  # the stanza's own field, not a value
                end = status.find(b"\n\n", at)
                stanza = status[at:end if end != -1 else len(status)]
                fields = dict(line.partition(b": ")[::2] for line in stanza.split(b"\n")
                              if line[:1] not in (b" ", b"\t", b""))
                state = fields.get(b"Status", b"").rpartition(b" ")[2]
                version = fields.get(b"Version")
                if state in HAS_FILES and version is not None:
                    for name, arch in arches:
                        if arch is None or arch == fields.get(b"Architecture"):
                            out.setdefault(name, version)
            at += len(needle)
    return out


# --- the I/O shell --------------------------------------------------------------------------


def default_cache() -> bytes:
    """Where the index is kept: systemd's CacheDirectory= when a unit gives one (the scan
    timer's), else /var/cache/inodewatch."""
    return os.fsencode(os.environ.get("CACHE_DIRECTORY", "").partition(":")[0]) or CACHE_DIR


def merged_dirs(root: bytes = b"/") -> frozenset[bytes]:
    """The top-level directories that are links into /usr on this host."""
    merged = set()
    for name in USR_MERGED:
        try:
            if os.readlink(root + name).rstrip(b"/") in (b"usr/" + name, b"/usr/" + name):
                merged.add(name)
        except OSError:
            pass
    return frozenset(merged)


class Dpkg:
    """The dpkg database of this host, read for one scan."""

    def __init__(self, admin: bytes = ADMIN_DIR, cache: bytes | None = CACHE_DIR) -> None:
        self.admin = admin
        self.cache = cache
        self.info = admin + b"/info"

    def owners(self, paths: Iterable[bytes]) -> dict[bytes, Package]:
        """The package of each path that one owns; {} without a dpkg database."""
        paths = [p for p in dict.fromkeys(paths) if b"\n" not in p]  # a list has no such path
        try:
            info = os.stat(self.info)
        except OSError:
            return {}
        key = b"%d %d %d" % (info.st_dev, info.st_ino, info.st_mtime_ns)
        merged = merged_dirs()
        index = self._open_index(key)
        if index is None:
            buf = self._build(key, info.st_mtime_ns)
            start = 0
        else:
            buf, start = index
        try:
            names: dict[bytes, list[bytes]] = {}
            for path in paths:
                for alias in aliases(path, merged):
                    if found := search(buf, start, alias):
                        names[path] = found
                        break
        finally:
            if isinstance(buf, mmap.mmap):
                buf.close()
        if not names:
            return {}
        versions = self._versions({n for found in names.values() for n in found})
        return {path: Package(", ".join(n.decode("utf-8", "backslashreplace") for n in found),
                              _text(versions.get(found[0])))
                for path, found in names.items()}

    def _versions(self, names: set[bytes]) -> dict[bytes, bytes]:
        try:
            with open(self.admin + b"/status", "rb") as f:
                return installed_versions(f.read(), names)
        except OSError:
            return {}

    def _read_lists(self) -> list[tuple[bytes, bytes]]:
        lists = []
        for name in os.listdir(self.info):
            if name.endswith(b".list"):
                try:
                    with open(self.info + b"/" + name, "rb") as f:
                        lists.append((name[:-5], f.read()))
                except OSError:
                    pass  # removed meanwhile by a dpkg run: that package owns nothing now
        return lists

    def _build(self, key: bytes, changed_ns: int) -> bytes:
        """Fold every list into the index; write it to the cache if there is one, and if the
        lists last changed (`changed_ns`, the info directory's mtime) at least RACY_NS ago:
        a change made within the same tick of the file system's clock as the one we saw
        would leave the directory's mtime, the index's key, as it was."""
        body = b"".join(line + b"\n" for line in index_lines(self._read_lists()))
        directory = self._cache_dir()
        if directory is not None and time.time_ns() - changed_ns >= RACY_NS:
            try:
                write_atomic(os.fsdecode(directory + b"/" + INDEX_NAME),
                             INDEX_MAGIC + key + b"\n" + body)
            except OSError:
                pass  # no cache this time: the answer stands all the same
        return body

    def _cache_dir(self) -> bytes | None:
        """The cache directory, made if missing; None unless it is ours alone (owned by us,
        writable by nobody else).  A link to it is followed (systemd's CacheDirectory= with
        DynamicUser= is a link into /var/cache/private/); only who may write its parent,
        root, can put one there."""
        if self.cache is None:
            return None
        try:
            os.mkdir(self.cache, 0o755)
        except FileExistsError:
            pass
        except OSError:
            return None
        directory = os.path.realpath(self.cache)
        try:
            st = os.lstat(directory)
        except OSError:
            return None
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
            return None
        return directory

    def _open_index(self, key: bytes) -> tuple[mmap.mmap, int] | None:
        """The cached index, mapped, and where its body starts; None if there is none or it
        is stale, not ours, or not what we wrote."""
        if (directory := self._cache_dir()) is None:
            return None
        try:
            fd = os.open(directory + b"/" + INDEX_NAME,
                         os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            if (not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022
                    or not 0 < st.st_size <= MAX_INDEX):
                return None
            buf = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
        except (OSError, ValueError):
            return None
        finally:
            os.close(fd)
        header = INDEX_MAGIC + key + b"\n"
        if buf[:len(header)] != header or buf[-1:] != b"\n":
            buf.close()
            return None
        return buf, len(header)


def _text(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode("utf-8", "backslashreplace")
