"""The package owning a stale path, from dpkg's database: the pure parts on captured text, a
captured dpkg directory (lists and status stanzas as this host's dpkg wrote them), the
cached index (rebuilt when dpkg changes the lists, refused when it is not ours), and the
real database against dpkg-query itself."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inodewatch.packages import (INDEX_MAGIC, INDEX_NAME, Dpkg, Package, aliases, index_lines,
                                 installed_versions, merged_dirs, search)

# /var/lib/dpkg/info/libnginx-mod-http-echo.list on Debian 12
ECHO_LIST = b"""/.
/usr
/usr/lib
/usr/lib/nginx
/usr/lib/nginx/modules
/usr/lib/nginx/modules/ngx_http_echo_module.so
/usr/share
/usr/share/doc
/usr/share/doc/libnginx-mod-http-echo
/usr/share/doc/libnginx-mod-http-echo/changelog.Debian.gz
/usr/share/doc/libnginx-mod-http-echo/copyright
/usr/share/nginx
/usr/share/nginx/modules-available
/usr/share/nginx/modules-available/mod-http-echo.conf
"""
# the first lines of libc6:amd64.list (bookworm ships it under /lib, not /usr/lib)
LIBC_LIST = b"""/.
/etc
/etc/ld.so.conf.d
/etc/ld.so.conf.d/x86_64-linux-gnu.conf
/lib
/lib/x86_64-linux-gnu
/lib/x86_64-linux-gnu/libc.so.6
/lib64
/lib64/ld-linux-x86-64.so.2
/usr
/usr/share/doc/libc6/changelog.Debian.gz
"""
# status stanzas as dpkg writes them (descriptions cut); the i386 one is the amd64 one with
# its architecture changed (both arches installed: a Multi-Arch: same package); nginx-extras
# was removed, its conffiles kept ("config-files": no files of it on disk but those)
STATUS = b"""Package: libc6
Status: install ok installed
Priority: optional
Section: libs
Installed-Size: 13001
Maintainer: GNU Libc Maintainers <debian-glibc@lists.debian.org>
Architecture: amd64
Multi-Arch: same
Source: glibc
Version: 2.36-9+deb12u14
Description: GNU C Library: Shared libraries
 Contains the standard libraries that are used by nearly all programs on
 the system. Package: libnginx-mod-http-echo

Package: libnginx-mod-http-echo
Status: install ok installed
Priority: optional
Section: httpd
Installed-Size: 68
Architecture: amd64
Multi-Arch: foreign
Version: 1:0.63-4
Depends: nginx-abi-1.22.1-7, libc6 (>= 2.14)
Description: Bring echo and more shell style goodies to Nginx

Package: libc6
Status: install ok installed
Architecture: i386
Multi-Arch: same
Source: glibc
Version: 2.36-9+deb12u14

Package: nginx-extras
Status: deinstall ok config-files
Architecture: amd64
Version: 1.22.1-9
Conffiles:
 /etc/nginx/extras.conf 0123456789abcdef0123456789abcdef
"""
NGINX_EXTRAS_LIST = b"/.\n/etc\n/etc/nginx\n/etc/nginx/extras.conf\n"


def captured_dpkg(root: Path) -> Path:
    info = root / "dpkg" / "info"
    info.mkdir(parents=True)
    (info / "libnginx-mod-http-echo.list").write_bytes(ECHO_LIST)
    (info / "libc6:amd64.list").write_bytes(LIBC_LIST)
    (info / "libc6:i386.list").write_bytes(b"/.\n/usr\n/usr/share/doc/libc6/changelog.Debian.gz\n")
    (info / "nginx-extras.list").write_bytes(NGINX_EXTRAS_LIST)
    (info / "libnginx-mod-http-echo.md5sums").write_bytes(b"not a list\n")
    (root / "dpkg" / "status").write_bytes(STATUS)
    settled(info)
    return root / "dpkg"


def settled(info: Path) -> None:
    """The lists as last changed a minute ago: an index of lists changed in the last
    seconds is not kept (see packages.RACY_NS)."""
    past = info.stat().st_mtime_ns - 60 * 10 ** 9
    os.utime(info, ns=(past, past))


@pytest.fixture
def dpkg(tmp_path):
    cache = tmp_path / "cache"
    return Dpkg(os.fsencode(captured_dpkg(tmp_path)), os.fsencode(cache)), cache


# --- the pure parts ---------------------------------------------------------------------


def test_aliases_cross_the_usr_merge_both_ways():
    merged = frozenset({b"lib", b"bin", b"lib64"})
    assert aliases(b"/usr/lib/x86_64-linux-gnu/libc.so.6", merged) == [
        b"/usr/lib/x86_64-linux-gnu/libc.so.6", b"/lib/x86_64-linux-gnu/libc.so.6"]
    assert aliases(b"/lib/x.so", merged) == [b"/lib/x.so", b"/usr/lib/x.so"]
    assert aliases(b"/usr/share/x", merged) == [b"/usr/share/x"]
    assert aliases(b"/usr/lib/x.so", frozenset()) == [b"/usr/lib/x.so"]  # not merged here
    assert aliases(b"/usr/lib", merged) == [b"/usr/lib"]


def test_installed_versions_by_name_and_architecture():
    got = installed_versions(STATUS, [b"libc6:amd64", b"libc6:i386", b"libnginx-mod-http-echo",
                                      b"nginx-extras", b"absent"])
    assert got == {b"libc6:amd64": b"2.36-9+deb12u14", b"libc6:i386": b"2.36-9+deb12u14",
                   b"libnginx-mod-http-echo": b"1:0.63-4"}
    # "Package: libnginx-mod-http-echo" inside a description is not its stanza
    assert installed_versions(STATUS.split(b"\n\n")[0], [b"libnginx-mod-http-echo"]) == {}


# (never "/.", the root every list starts with, which the index leaves out)
sorted_paths = st.lists(st.binary(min_size=1, max_size=12).filter(
    lambda b: b"\n" not in b and b"\0" not in b and b != b".").map(lambda b: b"/" + b), max_size=40)


@given(sorted_paths, st.lists(st.binary(max_size=12).map(lambda b: b"/" + b.replace(b"\n", b"")
                                                         .replace(b"\0", b"")), max_size=10))
def test_search_finds_exactly_what_a_scan_of_every_line_finds(paths, probes):
    lists = [(b"pkg%d" % (i % 3), path) for i, path in enumerate(paths)]
    lines = index_lines(lists)
    body = b"HEADER\n" + b"".join(line + b"\n" for line in lines)
    for probe in [*paths, *probes]:
        expected = sorted(pkg for pkg, path in lists if path == probe)
        assert sorted(search(body, len(b"HEADER\n"), probe)) == expected


# --- a captured database -------------------------------------------------------------------


def test_owners_from_a_captured_database(dpkg):
    db, _cache = dpkg
    got = db.owners([b"/usr/lib/nginx/modules/ngx_http_echo_module.so",
                     b"/lib/x86_64-linux-gnu/libc.so.6",
                     b"/usr/share/doc/libc6/changelog.Debian.gz",
                     b"/etc/nginx/extras.conf",
                     b"/srv/app/so.so", b"/usr/lib/nginx/modules"[:-1], b"/usr\nlib"])
    assert got == {
        b"/usr/lib/nginx/modules/ngx_http_echo_module.so": Package("libnginx-mod-http-echo", "1:0.63-4"),
        b"/lib/x86_64-linux-gnu/libc.so.6": Package("libc6:amd64", "2.36-9+deb12u14"),
        b"/usr/share/doc/libc6/changelog.Debian.gz": Package("libc6:amd64, libc6:i386",
                                                             "2.36-9+deb12u14"),
        b"/etc/nginx/extras.conf": Package("nginx-extras", None),  # removed: no version on disk
    }
    assert got[b"/lib/x86_64-linux-gnu/libc.so.6"].fields() == {
        "package": "libc6:amd64", "package_version": "2.36-9+deb12u14"}
    assert str(got[b"/etc/nginx/extras.conf"]) == "nginx-extras"


def test_the_kernels_name_of_a_merged_usr_file_finds_its_package(dpkg):
    """The kernel names libc /usr/lib/...: bookworm's list says /lib/... (dpkg -S answers
    only that spelling); found through the alias where /lib links to usr/lib."""
    db, _cache = dpkg
    got = db.owners([b"/usr/lib/x86_64-linux-gnu/libc.so.6"])
    assert got == ({b"/usr/lib/x86_64-linux-gnu/libc.so.6": Package("libc6:amd64", "2.36-9+deb12u14")}
                   if b"lib" in merged_dirs() else {})


def test_the_index_is_kept_and_rebuilt_when_dpkg_changes_a_list(dpkg, tmp_path):
    db, cache = dpkg
    info = tmp_path / "dpkg" / "info"
    assert db.owners([b"/srv/app/so.so"]) == {}
    index = cache / os.fsdecode(INDEX_NAME)
    first = index.stat()
    assert index.read_bytes().startswith(INDEX_MAGIC) and oct(first.st_mode & 0o777) == "0o600"
    assert db.owners([b"/srv/app/so.so"]) == {}
    assert index.stat().st_ino == first.st_ino  # read, not rebuilt
    # an upgrade as dpkg does it: PKG.list-new renamed over PKG.list
    (info / "demo.list-new").write_bytes(b"/.\n/srv\n/srv/app\n/srv/app/so.so\n")
    os.rename(info / "demo.list-new", info / "demo.list")
    assert db.owners([b"/srv/app/so.so"]) == {b"/srv/app/so.so": Package("demo", None)}
    assert index.stat().st_ino == first.st_ino  # changed just now: answered, not kept yet
    settled(info)
    assert db.owners([b"/srv/app/so.so"]) == {b"/srv/app/so.so": Package("demo", None)}
    assert index.stat().st_ino != first.st_ino
    assert db.owners([b"/srv/app/so.so"]) == {b"/srv/app/so.so": Package("demo", None)}


@pytest.mark.parametrize("plant", ["symlink", "group_writable", "foreign_header", "truncated",
                                   "open_directory", "foreign_directory"])
def test_an_index_that_is_not_ours_is_never_believed(dpkg, tmp_path, plant):
    """Whatever sits where the index should be, the answer comes from the lists."""
    db, cache = dpkg
    db.owners([])  # nothing asked: nothing read
    assert db.owners([b"/srv/x"]) == {}  # builds the index
    index = cache / os.fsdecode(INDEX_NAME)
    lie = index.read_bytes().replace(b"libnginx-mod-http-echo", b"evil-package-nameXXXX")
    if plant == "symlink":
        decoy = tmp_path / "decoy"
        decoy.write_bytes(lie)
        index.unlink()
        index.symlink_to(decoy)
    elif plant == "group_writable":
        index.write_bytes(lie)
        index.chmod(0o620)
    elif plant == "foreign_header":
        index.write_bytes(b"something else\n" + lie.partition(b"\n")[2])
    elif plant == "truncated":
        index.write_bytes(lie[:-3])
    elif plant == "open_directory":  # anyone may write there
        index.write_bytes(lie)
        cache.chmod(0o777)
    else:  # a link to another user's directory
        decoy = tmp_path / "decoy-dir"
        decoy.mkdir()
        (decoy / os.fsdecode(INDEX_NAME)).write_bytes(lie)
        os.chown(decoy, 65534, 65534)
        shutil.rmtree(cache)
        cache.symlink_to(decoy)
    got = db.owners([b"/usr/lib/nginx/modules/ngx_http_echo_module.so"])
    assert got[b"/usr/lib/nginx/modules/ngx_http_echo_module.so"].name == "libnginx-mod-http-echo"


def test_a_link_to_our_own_directory_is_followed(dpkg, tmp_path):
    """systemd's CacheDirectory= under DynamicUser= is /var/cache/NAME -> private/NAME."""
    db, cache = dpkg
    private = tmp_path / "private"
    private.mkdir()
    cache.symlink_to(private)
    assert db.owners([b"/srv/x"]) == {}
    assert (private / os.fsdecode(INDEX_NAME)).is_file()


def test_without_a_database_or_a_cache_directory(tmp_path):
    assert Dpkg(os.fsencode(tmp_path / "none")).owners([b"/usr/lib/x.so"]) == {}
    admin = captured_dpkg(tmp_path)
    readonly = Dpkg(os.fsencode(admin), cache=None)
    assert readonly.owners([b"/lib/x86_64-linux-gnu/libc.so.6"])[
        b"/lib/x86_64-linux-gnu/libc.so.6"].name == "libc6:amd64"


# --- this host's database ------------------------------------------------------------------

ECHO_MODULE = Path("/usr/lib/nginx/modules/ngx_http_echo_module.so")


def dpkg_query(*args: str) -> str:
    return subprocess.run(["dpkg-query", *args], capture_output=True, text=True,
                          check=True).stdout


@pytest.mark.skipif(not ECHO_MODULE.is_file() or shutil.which("dpkg-query") is None,
                    reason="needs dpkg and libnginx-mod-http-echo")
def test_real_dpkg_owned_files_as_dpkg_query_says(tmp_path):
    db = Dpkg(cache=os.fsencode(tmp_path / "cache"))
    libc = Path("/usr/lib/x86_64-linux-gnu/libc.so.6")
    paths = [os.fsencode(ECHO_MODULE), *([os.fsencode(libc)] if libc.is_file() else [])]
    got = db.owners(paths)
    echo = got[os.fsencode(ECHO_MODULE)]
    owner = dpkg_query("-S", str(ECHO_MODULE)).partition(":")[0]
    assert echo == Package(owner, dpkg_query("-W", "-f", "${Version}", owner))
    assert owner == "libnginx-mod-http-echo"
    if libc.is_file():
        # dpkg -S knows it under the name its list gives, whichever side of the merge that is
        spelled = next(a for a in aliases(os.fsencode(libc), merged_dirs())
                       if subprocess.run(["dpkg-query", "-S", os.fsdecode(a)],
                                         capture_output=True).returncode == 0)
        name = dpkg_query("-S", os.fsdecode(spelled)).rpartition(": ")[0]
        assert got[os.fsencode(libc)] == Package(name, dpkg_query("-W", "-f", "${Version}", name))
