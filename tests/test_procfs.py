"""Unit tests of the /proc parsers on captured text, hostile names included."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inodewatch.model import FileId, is_pseudo_path
from inodewatch.procfs import (MAPS_CHUNK, MAX_MAPS_LINE, MapsRead, MapsStream, StatParseError,
                               fold_maps, parse_stat, strip_deleted)

DEV = os.makedev(0xFE, 0x00)


def maps_line(start: int, perms: str, inode: int, path: bytes, dev: str = "fe:00") -> bytes:
    """A line as fs/proc/task_mmu.c prints it: padded to column 73, newline escaped."""
    head = f"{start:08x}-{start + 0x1000:08x} {perms} 00000000 {dev} {inode} ".encode()
    if not path:
        return head.rstrip(b" ")
    return head.ljust(73) + path.replace(b"\n", b"\\012")


# Captured from a plugin host (python -X importtime on this machine), names made hostile.
CAPTURED = b"\n".join([
    b"55e7336c2000-55e7336c6000 r--p 00000000 fe:00 26723                      /usr/bin/python3.11",
    b"55e7336c6000-55e7336dc000 r-xp 00004000 fe:00 26723                      /usr/bin/python3.11",
    b"55e734a1e000-55e734b60000 rw-p 00000000 00:00 0                          [heap]",
    b"7f1c2d400000-7f1c2d401000 r--p 00000000 fe:00 2146358                    /opt/demo/so.so (deleted)",
    b"7f1c2d401000-7f1c2d402000 r-xp 00001000 fe:00 2146358                    /opt/demo/so.so (deleted)",
    b"7f1c2d500000-7f1c2d501000 r-xp 00000000 fe:00 2146400                    /opt/my plugins/a b.so",
    b"7f1c2d600000-7f1c2d601000 r-xp 00000000 fe:00 2146401                    /opt/new\\012line.so",
    b"7f1c2d700000-7f1c2d701000 r-xp 00000000 fe:00 2146402                    /opt/tab\there\\back.so",
    b"7f1c2d800000-7f1c2d801000 r-xp 00000000 fe:00 2146403                    /opt/bad\xff\xfe.so",
    b"7f1c2d900000-7f1c2d901000 r-xp 00000000 fe:00 2146404                    /opt/\x1b[31mred\x1b[0m.so",
    b"7f1c2da00000-7f1c2da01000 r-xp 00000000 fe:00 2146405                    /opt/real (deleted)",
    b"7f1c2db00000-7f1c2db01000 rw-s 00000000 00:01 1042                       /memfd:plugin-cache (deleted)",
    b"7f1c2dc00000-7f1c2dc01000 rw-s 00000000 00:01 0                          /SYSV00000000 (deleted)",
    b"7f1c2dd00000-7f1c2dd01000 rw-s 00000000 00:01 7                          /dev/zero (deleted)",
    b"7f1c2de00000-7f1c2de01000 r--p 00000000 00:0e 1071                       anon_inode:[perf_event]",
    b"7f1c2df00000-7f1c2df01000 rw-p 00000000 00:00 0 ",
    b"7ffd5c1f3000-7ffd5c214000 rw-p 00000000 00:00 0                          [stack]",
    b"7ffd5c3e5000-7ffd5c3e7000 r-xp 00000000 00:00 0                          [vdso]",
    b"ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]",
    b"",
])


def fold_chunks(chunks: list[bytes], limit: int = MAPS_CHUNK,
                max_line: int = MAX_MAPS_LINE) -> MapsRead:
    """MapsStream over `chunks`, whole (as MapsReading feeds it from the kernel)."""
    stream = MapsStream(limit, max_line)
    for chunk in chunks:
        stream.feed(chunk)
    return stream.result()


def groups_by_file(data: bytes) -> dict:
    return {g.file: g for g in fold_maps(data).groups}


def test_fields_of_a_captured_line():
    python = groups_by_file(CAPTURED)[FileId(DEV, 26723)]
    assert python.path == b"/usr/bin/python3.11"
    assert python.perms == ("r--p", "r-xp")
    assert python.range_name == b"55e7336c2000-55e7336c6000"


def test_map_files_names_drop_the_zero_padding_maps_prints():
    [group] = fold_maps(maps_line(0x400000, "r-xp", 7, b"/usr/bin/app")).groups
    assert group.range_name == b"400000-401000"


def test_hostile_names_come_out_exact():
    paths = {g.path for g in fold_maps(CAPTURED).groups}
    assert b"/opt/demo/so.so (deleted)" in paths  # the hint stays until the link count is known
    assert b"/opt/my plugins/a b.so" in paths
    assert b"/opt/new\nline.so" in paths
    assert b"/opt/tab\there\\back.so" in paths
    assert b"/opt/bad\xff\xfe.so" in paths
    assert b"/opt/\x1b[31mred\x1b[0m.so" in paths
    assert b"/opt/real (deleted)" in paths


def test_grouping_one_finding_per_inode_and_no_pseudo_files():
    groups = groups_by_file(CAPTURED)
    deleted = groups[FileId(DEV, 2146358)]
    assert deleted.perms == ("r--p", "r-xp")
    assert deleted.range_name == b"7f1c2d400000-7f1c2d401000"
    names = {g.path for g in groups.values()}
    assert not any(n.startswith((b"/memfd:", b"/SYSV", b"/dev/", b"anon_inode", b"[")) for n in names)
    assert len(groups) == 8


# Captured on this machine: a library copied to /dev/shm, dlopen'ed (ctypes) and deleted,
# beside a POSIX shm segment, /dev/zero mapped shared and private, and a memfd.
UNDER_DEV = b"\n".join([
    b"7fdde21c2000-7fdde21c3000 r--p 00000000 00:1b 2                          /dev/shm/libplug.so (deleted)",
    b"7fdde21c3000-7fdde21c4000 r-xp 00001000 00:1b 2                          /dev/shm/libplug.so (deleted)",
    b"7fdde21c4000-7fdde21c5000 r--p 00002000 00:1b 2                          /dev/shm/libplug.so (deleted)",
    b"7fdde21c6000-7fdde21c7000 rw-p 00003000 00:1b 2                          /dev/shm/libplug.so (deleted)",
    b"7fdde2fbc000-7fdde2fbd000 rw-s 00000000 00:01 94                         /memfd:probe (deleted)",
    b"7fdde2fbd000-7fdde2fbe000 rw-p 00000000 00:06 4                          /dev/zero",
    b"7fdde303c000-7fdde303d000 rw-s 00000000 00:01 93                         /dev/zero (deleted)",
    b"7fdde303d000-7fdde303e000 rw-s 00000000 00:1b 3                          /dev/shm/probe_seg (deleted)",
    # a JIT's double mapping of one /dev/shm file: data and code, both shared
    b"7fdde303e000-7fdde303f000 rw-s 00000000 00:1b 5                          /dev/shm/ffiXXXX (deleted)",
    b"7fdde303f000-7fdde3040000 r-xs 00000000 00:1b 5                          /dev/shm/ffiXXXX (deleted)",
    b"",
])


def test_code_on_tmpfs_is_a_file_ipc_under_dev_is_not():
    """An executable mapping of a file is code wherever it lives: the library loaded from
    /dev/shm is kept (its private r-xp VMA); POSIX shm, /dev/zero, memfd and a JIT's shared
    double mapping stay out, as before."""
    groups = groups_by_file(UNDER_DEV)
    assert list(groups) == [FileId(os.makedev(0, 0x1B), 2)]
    plug = groups[FileId(os.makedev(0, 0x1B), 2)]
    assert (plug.path, plug.perms) == (b"/dev/shm/libplug.so (deleted)", ("r--p", "r-xp", "rw-p"))


@pytest.mark.parametrize("name, nlink, name_is_this_file, expected", [
    (b"/a/so.so (deleted)", 0, False, (b"/a/so.so", True)),
    (b"/a/so.so", 1, True, (b"/a/so.so", False)),
    # a file really named "x (deleted)", intact
    (b"/a/x (deleted)", 1, True, (b"/a/x (deleted)", False)),
    # ... and the same file deleted: the kernel adds its own suffix
    (b"/a/x (deleted) (deleted)", 0, False, (b"/a/x (deleted)", True)),
    # unhashed name, inode alive through a hard link elsewhere: not deleted
    (b"/a/so.so (deleted)", 1, False, (b"/a/so.so", False)),
    # no map_files access: the hint is all there is
    (b"/a/so.so (deleted)", None, False, (b"/a/so.so", True)),
    (b"/a/x (deleted)", None, True, (b"/a/x (deleted)", False)),
])
def test_strip_deleted(name, nlink, name_is_this_file, expected):
    assert strip_deleted(name, nlink, name_is_this_file) == expected


@pytest.mark.parametrize("line", [
    b"garbage",
    b"zzzz-0000 r-xp 00000000 fe:00 1 /x",
    b"1000-2000 r-xp 00000000 fe00 1 /x",
    b"1000-2000 r-xp 00000000 fe:00 notanumber /x",
    b"1000-2000 r-xp 00000000 fe:00 0 /anonymous/is/not/a/file",
])
def test_lines_not_in_the_kernels_format_are_skipped(line):
    assert fold_maps(line).groups == []


# Any byte but NUL and '/' may appear in a file name.
NAME_BYTES = st.binary(min_size=1, max_size=40).filter(lambda b: b"\0" not in b and b"/" not in b)


@given(NAME_BYTES, NAME_BYTES, st.integers(1, 2**40))
def test_names_round_trip_through_the_kernels_escaping(directory, name, inode):
    path = b"/" + directory + b"/" + name
    if b"\\012" in path or is_pseudo_path(path):
        return  # maps itself is ambiguous here (map_files tells them apart) / never reported
    [group] = fold_maps(maps_line(0x7F0000000000, "r-xp", inode, path)).groups
    assert (group.path, group.file.ino) == (path, inode)


@given(st.binary(max_size=300))
def test_garbage_never_raises(data):
    for group in fold_maps(data).groups:
        assert group.file.ino > 0


def test_parse_stat_with_a_hostile_comm():
    # comm may contain spaces and parentheses: split at the last ')'
    data = (b"38314 (evil) (x y) S 1 38314 38314 0 -1 4194560 112 0 0 0 0 0 0 0 20 0 1 0 "
            b"123456 2822144 246 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n")
    st_ = parse_stat(data)
    assert st_.comm == b"evil) (x y"
    assert (st_.state, st_.ppid, st_.start_time) == ("S", 1, 123456)
    assert not st_.is_kernel_thread


def test_parse_stat_marks_kernel_threads():
    data = b"2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 0 1 0 9 0 0 18446744073709551615"
    assert parse_stat(data).is_kernel_thread


@given(st.binary(max_size=400))
def test_stat_garbage_never_raises_anything_but_the_parse_error(data):
    try:
        parse_stat(data)
    except StatParseError:
        pass


@given(st.binary(max_size=64).filter(lambda b: b"\n" not in b), st.integers(0, 2**40))
def test_any_comm_round_trips_through_stat(comm, start_time):
    data = (b"7 (" + comm + b") S 1 7 7 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 "
            + str(start_time).encode() + b" 0 0 18446744073709551615\n")
    parsed = parse_stat(data)
    assert (parsed.comm, parsed.start_time) == (comm, start_time)


@given(NAME_BYTES, st.sampled_from([0, 1, 2, None]), st.booleans())
def test_strip_deleted_never_invents_a_name(name, nlink, name_is_this_file):
    full = b"/d/" + name
    path, deleted = strip_deleted(full, nlink, name_is_this_file)
    assert path in (full, full.removesuffix(b" (deleted)"))
    assert deleted == (nlink == 0 or (nlink is None and full.endswith(b" (deleted)") and not name_is_this_file))


def test_parse_stat_marks_a_process_tearing_itself_down():
    exiting = b"9 (reload) R 1 9 9 0 -1 4194628 0 0 0 0 0 0 0 0 20 0 1 0 77 0 0 18446744073709551615"
    assert parse_stat(exiting).is_exiting  # flags 0x400144: PF_EXITING, still running
    zombie = b"9 (reload) Z 1 9 9 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 77 0 0 18446744073709551615"
    assert parse_stat(zombie).is_exiting
    assert not parse_stat(zombie.replace(b") Z ", b") S ")).is_exiting


def cut_into(data: bytes, cuts: list[int]) -> list[bytes]:
    """`data` in pieces, cut at the given offsets (as os.read may hand it out)."""
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])]


def sorted_groups(groups: list) -> list:
    return sorted(groups, key=lambda g: g.file)


@given(st.lists(st.integers(0, 10**6), max_size=30), st.integers(1, 400))
def test_any_chunking_folds_as_the_whole_text(cuts, limit):
    """However the kernel cuts maps into reads, and however small the pending limit, the
    groups are those of the whole text (every line here is shorter than max_line)."""
    data = CAPTURED * 3 + maps_line(0x7F1C2D401000, "rw-p", 2146358, b"/opt/demo/so.so (deleted)") + b"\n"
    whole = fold_maps(data)
    streamed = fold_chunks(cut_into(data, cuts), limit=limit, max_line=400)
    assert sorted_groups(streamed.groups) == sorted_groups(whole.groups)
    assert (streamed.size, streamed.too_long) == (len(data), [])


@given(st.lists(st.integers(0, 10**6), max_size=30))
def test_an_over_long_line_costs_its_file_alone(cuts):
    """A line longer than max_line that straddles a fold is dropped and its file counted as
    too long; one that arrives whole in a chunk is folded (memory is bounded by the chunk
    anyway) and its path, longer than PATH_MAX, is refused later: either way the other
    files are all there and nothing is credited to the wrong inode."""
    long_path = b"/deep/" + b"d" * 5000 + b"/f.so"
    data = b"\n".join([
        maps_line(0x400000, "r-xp", 26723, b"/usr/bin/app"),
        maps_line(0x500000, "r--p", 99, long_path),
        maps_line(0x501000, "r-xp", 99, long_path),
        maps_line(0x600000, "r-xp", 7, b"/usr/lib/libc.so.6"),
        b""])
    read = fold_chunks(cut_into(data, cuts), limit=64, max_line=1000)
    groups = {g.path: g.file for g in read.groups}
    assert groups.pop(long_path, FileId(DEV, 99)) == FileId(DEV, 99)
    assert groups == {b"/usr/bin/app": FileId(DEV, 26723), b"/usr/lib/libc.so.6": FileId(DEV, 7)}
    assert read.too_long in ([], [FileId(DEV, 99)])
    assert (long_path in {g.path for g in read.groups}) != bool(read.too_long)
    assert read.size == len(data)


def test_an_over_long_line_straddling_reads_is_dropped():
    long_path = b"/deep/" + b"d" * 5000 + b"/f.so"
    data = maps_line(0x500000, "r--p", 99, long_path) + b"\n"
    read = fold_chunks(cut_into(data, list(range(0, len(data), 100))), limit=64, max_line=1000)
    assert (read.groups, read.too_long) == ([], [FileId(DEV, 99)])


def test_folding_holds_a_bounded_amount_of_text():
    """A maps of 65,000 VMAs of one 4 KB path: every chunk folded as it comes (the memory a
    whole-text read needed was the 804 MB of issue 13)."""
    line = maps_line(0x7F0000000000, "r--p", 5, b"/" + b"p" * 3980) + b"\n"
    pieces = (line * 32 for _ in range(2000))  # 64,000 lines, 255 MB, never all at once
    read = fold_chunks(pieces)
    assert [g.file for g in read.groups] == [FileId(DEV, 5)]
    assert read.size == 64000 * len(line)
