"""Unit tests of the mount table parser on captured /proc/PID/mountinfo text."""

from __future__ import annotations

import os

from hypothesis import given
from hypothesis import strategies as st

from inodewatch.mounts import NO_MOUNTS, is_untrusted, parse_mountinfo, untrusted_table

# Captured on this machine (a FUSE mount made by tests/test_fuse.py), plus lines from a
# desktop and an NFS client, mount points made hostile: maps' neighbour escapes only the
# newline, mountinfo escapes space, tab, newline and backslash as \ooo.
CAPTURED = b"\n".join([
    b"27 1 254:0 / / rw,relatime - ext4 /dev/vda rw",
    b"22 27 0:21 / /proc rw,relatime - proc proc rw",
    b"24 27 0:6 / /dev rw,relatime - devtmpfs devtmpfs rw,size=12334192k,nr_inodes=3083548,mode=755",
    b"45 27 0:40 / /tmp/iw-fuse-7n1l7ffd/mnt\\040point rw,nosuid,nodev,relatime - fuse.hang hang "
    b"rw,user_id=1001,group_id=1001,allow_other",
    b"61 27 0:53 / /run/user/1000/gvfs rw,nosuid,nodev,relatime shared:330 - fuse.gvfsd-fuse "
    b"gvfsd-fuse rw,user_id=1000,group_id=1000",
    b"70 27 0:60 / /srv/nfs\\011tab\\012line\\134back rw,relatime shared:40 master:7 - nfs4 "
    b"server:/export rw,vers=4.2",
    b"71 27 8:17 / /media/usb rw,relatime - fuseblk /dev/sdb1 rw,user_id=0",
    b"72 27 0:61 / /home/alice/my\\040nfs-ish rw - ext4 /dev/vdb rw",
    b"73 70 254:0 /opt /srv/nfs\\011tab\\012line\\134back/local rw - ext4 /dev/vda rw",
    b"garbage line",
    b"",
])


def test_fields_and_escapes_of_captured_lines():
    mounts = {m.mount_id: m for m in parse_mountinfo(CAPTURED)}
    assert len(mounts) == 9
    fuse = mounts[45]
    assert (fuse.point, fuse.fstype, fuse.dev) == (b"/tmp/iw-fuse-7n1l7ffd/mnt point", b"fuse.hang",
                                                   os.makedev(0, 40))
    assert mounts[70].point == b"/srv/nfs\ttab\nline\\back"
    assert mounts[70].fstype == b"nfs4"  # after optional fields "shared:40 master:7"
    assert mounts[27].dev == os.makedev(254, 0)


def test_which_file_systems_are_untrusted():
    for fstype in (b"fuse", b"fuse.sshfs", b"fuseblk", b"nfs", b"nfs4", b"cifs", b"smb3", b"9p",
                   b"ceph", b"glusterfs", b"afs", b"lustre", b"virtiofs"):
        assert is_untrusted(fstype), fstype
    for fstype in (b"ext4", b"xfs", b"btrfs", b"tmpfs", b"overlay", b"proc", b"fusectl"):
        assert not is_untrusted(fstype), fstype


def test_the_table_by_device_by_id_and_by_path():
    table = untrusted_table(parse_mountinfo(CAPTURED))
    assert set(table.by_id) == {45, 61, 70, 71}
    assert table.by_dev[os.makedev(0, 40)].mount_id == 45
    assert os.makedev(254, 0) not in table.by_dev
    assert table.covering(b"/tmp/iw-fuse-7n1l7ffd/mnt point/f.so").mount_id == 45
    assert table.covering(b"/tmp/iw-fuse-7n1l7ffd/mnt point").mount_id == 45
    assert table.covering(b"/tmp/iw-fuse-7n1l7ffd/mnt pointless/f.so") is None  # a prefix, not a parent
    assert table.covering(b"/tmp/iw-fuse-7n1l7ffd/mnt") is None
    assert table.covering(b"/home/alice/my nfs-ish/x.so") is None  # ext4, whatever its name
    # a trusted mount below an untrusted one: reaching it walks the NFS directory
    assert table.covering(b"/srv/nfs\ttab\nline\\back/local/lib.so").mount_id == 70


def test_a_host_without_such_mounts_has_the_empty_table():
    plain = b"\n".join(line for line in CAPTURED.split(b"\n") if b" - fuse" not in line and b"nfs4" not in line)
    assert untrusted_table(parse_mountinfo(plain)) is NO_MOUNTS
    assert not NO_MOUNTS.by_dev and not NO_MOUNTS.by_id and NO_MOUNTS.covering(b"/x") is None


# Any byte but NUL and "/" in a mount point's components, escaped as the kernel does.
COMPONENT = st.binary(min_size=1, max_size=20).filter(lambda b: b"\0" not in b and b"/" not in b)


def kernel_escape(raw: bytes) -> bytes:
    return b"".join(b"\\%03o" % c if c in b" \t\n\\" else bytes([c]) for c in raw)


@given(st.lists(COMPONENT, min_size=1, max_size=4), st.sampled_from([b"fuse.x", b"nfs", b"ext4"]))
def test_any_mount_point_round_trips(components, fstype):
    point = b"/" + b"/".join(components)
    line = b"99 27 0:77 / " + kernel_escape(point) + b" rw,relatime shared:1 - " + fstype + b" src rw"
    [mount] = parse_mountinfo(line)
    assert (mount.point, mount.fstype, mount.mount_id) == (point, fstype, 99)


@given(st.binary(max_size=300))
def test_garbage_never_raises(data):
    for mount in parse_mountinfo(data):
        assert isinstance(mount.point, bytes)
