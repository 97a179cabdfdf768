"""Content identity: the build-id reader on real ELF files (built here with gcc), on ELF
files crafted with struct (ELF32, big-endian, notes only in sections) checked against
readelf, and on garbage; the reads by fd (build_id_of_fd, digest_of_fd) on real files,
deleted mappings and files over the hash budget.  Opening a file safely (never a symlink, a
FIFO) is the content pass's: tests/test_contentpass.py."""

from __future__ import annotations

import mmap
import os
import re
import shutil
import struct
import subprocess
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import CSRC, HEAVY, imports_after
from conftest import content_identity as identity_of
from inodewatch import content
from inodewatch.content import (BuildIdNote, ContentId, ElfError, build_id_of_fd, compare,
                                digest_of_fd, locate_build_id)


def locate(data: bytes) -> BuildIdNote | None:
    return locate_build_id(lambda offset, length: data[offset:offset + length], len(data))


def outcome(data: bytes) -> BuildIdNote | None | type[ElfError]:
    """What the parser makes of `data`: a note, None, or ElfError (anything else fails)."""
    try:
        return locate(data)
    except ElfError:
        return ElfError


def readelf_build_id(path: Path) -> str | None:
    out = subprocess.run(["readelf", "-n", str(path)], capture_output=True, text=True).stdout
    found = re.search(r"Build ID: ([0-9a-f]+)", out)
    return found.group(1) if found else None


def within(seconds: float, call):
    """call(), failing the test (not hanging it) if it does not return in time."""
    result = []
    worker = threading.Thread(target=lambda: result.append(call()), daemon=True)
    worker.start()
    worker.join(seconds)
    assert result, f"{call} did not return within {seconds} s"
    return result[0]


# --- real ELF files -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """The demo's so1.c and so2.c built with gcc: with the default build-id, without one,
    and with a chosen one (as `make` would, but with the linker flag varied)."""
    if not shutil.which("gcc") or not shutil.which("readelf"):
        pytest.skip("needs gcc and readelf (binutils)")
    out = tmp_path_factory.mktemp("elf")
    variants = {"": [], "-none": ["-Wl,--build-id=none"], "-md5": ["-Wl,--build-id=md5"],
                "-chosen": ["-Wl,--build-id=0x0123456789abcdeffedcba98"]}
    files = {}
    for source in ("so1", "so2"):
        for suffix, flags in variants.items():
            target = out / f"{source}{suffix}.so"
            subprocess.run(["gcc", "-Wall", "-O2", "-fPIC", "-shared", *flags, "-o", str(target),
                            str(CSRC / f"{source}.c")], check=True)
            files[f"{source}{suffix}"] = target
    return files


@pytest.mark.parametrize("name", ["so1", "so2", "so1-md5", "so1-chosen"])
def test_build_id_of_a_real_shared_object_is_readelfs(built, name):
    data = built[name].read_bytes()
    note = locate(data)
    assert note is not None and note.value.hex() == readelf_build_id(built[name])
    assert data[note.offset:note.offset + len(note.value)] == note.value
    if name == "so1-chosen":
        assert note.value.hex() == "0123456789abcdeffedcba98"


def test_no_build_id_is_none(built):
    assert readelf_build_id(built["so1-none"]) is None
    assert locate(built["so1-none"].read_bytes()) is None


def test_build_id_of_bin_true():
    true = Path(shutil.which("true") or "/bin/true").resolve()
    expected = readelf_build_id(true)
    if expected is None:
        pytest.skip(f"{true} has no build-id")
    assert identity_of(true) == ContentId(expected, None, None)


def test_truncated_at_every_length(built):
    """A real object cut at every length up to its notes: None below an ELF header's worth,
    ElfError until the program headers and the note are all there, then the build-id."""
    data = built["so1"].read_bytes()
    full = locate(data)
    assert full is not None
    phoff, = struct.unpack_from("<Q", data, 32)
    phentsize, phnum = struct.unpack_from("<HH", data, 54)
    needed = max(phoff + phentsize * phnum, full.offset + len(full.value))
    for length in range(0, needed + 256):
        got = outcome(data[:length])
        if length < 16:
            assert got is None, length
        elif length < needed:
            assert got is ElfError, length
        else:
            assert got == full, length


def test_a_file_that_shrinks_while_read_is_an_elf_error(built):
    data = built["so1"].read_bytes()
    with pytest.raises(ElfError, match="shrank"):
        locate_build_id(lambda offset, length: data[:200][offset:offset + length], len(data))


# --- crafted ELF files: ELF32, big-endian, notes in sections ----------------------------------

def pad(data: bytes, step: int = 4) -> bytes:
    return data + bytes(-len(data) % step)


def note(desc: bytes, order: str = "<", ntype: int = 3, name: bytes = b"GNU\0",
         step: int = 4) -> bytes:
    # the descriptor is aligned relative to the note's start (header and name included)
    head = struct.pack(order + "III", len(name), len(desc), ntype) + name
    return pad(head, step) + pad(desc, step)


def craft(notes: bytes, elf_class: int = 2, order: str = "<", where: str = "segment",
          align: int = 4) -> bytes:
    """A minimal ET_DYN ELF: its header, then one PT_NOTE program header (or none), the
    notes, then (where="section") a null section header and a SHT_NOTE one."""
    is64 = elf_class == 2
    ehsize, phentsize, shentsize = (64, 56, 64) if is64 else (52, 32, 40)
    machine = {(2, "<"): 62, (1, "<"): 3, (2, ">"): 22, (1, ">"): 8}[elf_class, order]
    phnum, shnum = (1, 0) if where == "segment" else (0, 2)
    notes_at = ehsize + phnum * phentsize
    shoff = (notes_at + len(notes) + 7) & ~7 if shnum else 0
    ident = b"\x7fELF" + bytes([elf_class, 1 if order == "<" else 2, 1]) + bytes(9)
    header = ident + struct.pack(order + ("HHIQQQIHHHHHH" if is64 else "HHIIIIIHHHHHH"),
                                 3, machine, 1, 0, ehsize if phnum else 0, shoff, 0, ehsize,
                                 phentsize, phnum, shentsize, shnum, 0)
    size = len(notes)
    if is64:
        phdr = struct.pack(order + "IIQQQQQQ", 4, 4, notes_at, notes_at, notes_at, size, size, align)
        shdr = struct.pack(order + "IIQQQQIIQQ", 0, 7, 2, notes_at, notes_at, size, 0, 0, align, 0)
    else:
        phdr = struct.pack(order + "IIIIIIII", 4, notes_at, notes_at, notes_at, size, size, 4, align)
        shdr = struct.pack(order + "IIIIIIIIII", 0, 7, 2, notes_at, notes_at, size, 0, 0, align, 0)
    body = header + (phdr if phnum else b"") + notes
    if shnum:
        body = body.ljust(shoff, b"\0") + bytes(len(shdr)) + shdr
    return body


BUILD_ID = bytes(range(0xa0, 0xb4))  # 20 bytes, as sha1's


@pytest.mark.parametrize("elf_class", [1, 2], ids=["elf32", "elf64"])
@pytest.mark.parametrize("order", ["<", ">"], ids=["little", "big"])
@pytest.mark.parametrize("where", ["segment", "section"])
def test_crafted_elf_build_id_agrees_with_readelf(tmp_path, elf_class, order, where):
    data = craft(note(BUILD_ID, order), elf_class, order, where)
    path = tmp_path / "crafted.so"
    path.write_bytes(data)
    assert readelf_build_id(path) == BUILD_ID.hex()  # the crafted file is valid ELF
    assert locate(data).value == BUILD_ID
    assert identity_of(path).build_id == BUILD_ID.hex()


def test_build_id_after_other_notes_and_in_an_8_aligned_segment():
    abi_tag = note(struct.pack("<IIII", 0, 3, 2, 0), ntype=1)
    other_owner = note(b"\x01" * 20, name=b"GNX\0")  # type 3 but not GNU's: not a build-id
    assert locate(craft(abi_tag + other_owner)) is None
    found = locate(craft(abi_tag + other_owner + note(BUILD_ID)))
    assert found.value == BUILD_ID
    # GNU property notes sit in segments aligned to 8, their padding to 8 as well
    property_note = note(struct.pack("<III", 0xc0000002, 4, 3), ntype=5, step=8)
    assert locate(craft(property_note + note(BUILD_ID, step=8), align=8)).value == BUILD_ID


def test_no_notes_at_all_is_none():
    assert locate(craft(b"")) is None
    assert locate(craft(b"", where="section")) is None


def test_not_elf_is_none():
    for data in (b"", b"\x7fEL", b"\x7fELF", b"#!/bin/sh\n" * 10, bytes(4096)):
        assert locate(data) is None


def patched(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


GOOD = craft(note(BUILD_ID))  # ELF64 LE: header at 0, program header at 64, notes at 120


@pytest.mark.parametrize("offset,fmt,value,what", [
    (4, "<B", 3, "class"),                # neither ELF32 nor ELF64
    (5, "<B", 0, "data encoding"),
    (32, "<Q", 1 << 62, "past the end"),  # e_phoff
    (32, "<Q", len(GOOD) - 8, "past the end"),
    (54, "<H", 8, "fewer than"),          # e_phentsize smaller than a program header
    (56, "<H", 0xffff, "past the end"),   # e_phnum
    (72, "<Q", 1 << 40, "past the end"),  # p_offset
    (96, "<Q", (1 << 64) - 1, "past the end"),  # p_filesz
    (120, "<I", 0xffffffff, "runs past"),  # namesz
    (124, "<I", 0xffffffff, "runs past"),  # descsz
    (124, "<I", 21, "runs past"),          # descsz one past the segment
    (124, "<I", 0, "a build-id of 0 bytes"),
])
def test_malformed_headers_and_notes_are_elf_errors(offset, fmt, value, what):
    with pytest.raises(ElfError, match=what):
        locate(patched(GOOD, offset, fmt, value))


def test_oversized_build_id_and_over_the_read_cap():
    with pytest.raises(ElfError, match="a build-id of 65 bytes"):
        locate(craft(note(bytes(65))))
    filler = note(bytes(1000), ntype=1) * 70  # 70 KiB of notes before the build-id
    with pytest.raises(ElfError, match="more than"):
        locate(craft(filler + note(BUILD_ID)))


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=2048))
def test_random_bytes_are_none_or_elf_error(data):
    assert outcome(data) in (None, ElfError)


ELF_PREFIXES = [b"\x7fELF\x01\x01", b"\x7fELF\x02\x01", b"\x7fELF\x01\x02", b"\x7fELF\x02\x02"]


@settings(max_examples=1000, deadline=None)
@given(st.sampled_from(ELF_PREFIXES), st.binary(max_size=1024))
def test_random_elf_looking_bytes_are_none_elf_error_or_a_consistent_note(prefix, rest):
    check_outcome(prefix + rest)


@settings(max_examples=1000, deadline=None)
@given(st.sampled_from([GOOD, craft(note(BUILD_ID, ">"), 1, ">", "section"),
                        craft(note(BUILD_ID), 1, "<")]),
       st.lists(st.tuples(st.integers(0, 300), st.integers(0, 255)), min_size=1, max_size=8))
def test_corrupted_crafted_elf_is_none_elf_error_or_a_consistent_note(data, flips):
    corrupt = bytearray(data)
    for index, byte in flips:
        if index < len(corrupt):
            corrupt[index] = byte
    check_outcome(bytes(corrupt))


def check_outcome(data: bytes) -> None:
    got = outcome(data)
    if isinstance(got, BuildIdNote):  # whatever was found is really there
        assert 0 < len(got.value) <= content.MAX_BUILD_ID
        assert data[got.offset:got.offset + len(got.value)] == got.value
    else:
        assert got in (None, ElfError)


# --- the I/O shell ------------------------------------------------------------------------

def test_identity_of_real_files_and_their_comparison(built, tmp_path):
    so1, so2 = (identity_of(built[n]) for n in ("so1", "so2"))
    assert so1.build_id == readelf_build_id(built["so1"]) and so1.digest is None
    copy = tmp_path / "copy.so"
    shutil.copyfile(built["so1"], copy)
    assert compare(so1, identity_of(copy)) == "identical"
    assert compare(so1, so2) == "different"
    # without a build-id, the whole file's hash decides
    none1, none2 = (identity_of(built[n]) for n in ("so1-none", "so2-none"))
    assert none1.build_id is None and none1.digest.startswith("blake2b-256:")
    shutil.copyfile(built["so1-none"], copy)
    assert compare(none1, identity_of(copy)) == "identical"
    assert compare(none1, none2) == "different"
    # one with a build-id, the other without: nothing to compare them by
    assert compare(so1, none1) == "unknown"


@pytest.mark.parametrize("mapped,disk,expected", [
    (ContentId("ab", None, None), ContentId("ab", None, None), "identical"),
    (ContentId("ab", None, None), ContentId("cd", None, None), "different"),
    (ContentId(None, "h:1", None), ContentId(None, "h:1", None), "identical"),
    (ContentId(None, "h:1", None), ContentId(None, "h:2", None), "different"),
    (ContentId("ab", None, None), ContentId(None, "h:1", None), "unknown"),
    (ContentId("ab", None, None), ContentId(None, None, "cannot open"), "unknown"),
    (ContentId(None, None, "too big"), ContentId(None, None, "too big"), "unknown"),
])
def test_compare(mapped, disk, expected):
    assert compare(mapped, disk) == expected


def test_a_deleted_mapping_read_through_map_files(built, tmp_path):
    """What a process maps, read after its file was deleted and replaced by another build."""
    path = tmp_path / "plugin.so"
    shutil.copyfile(built["so1"], path)
    with open(path, "rb") as f:
        mapping = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    try:
        ino = path.stat().st_ino
        path.unlink()
        shutil.copyfile(built["so2"], path)
        ranges = [line.split()[0] for line in Path("/proc/self/maps").read_text().splitlines()
                  if line.split()[4] == str(ino) and "(deleted)" in line]
        assert ranges, "the mapping is not in /proc/self/maps"
        try:
            mapped = identity_of(b"/proc/self/map_files/" + ranges[0].encode())
        except PermissionError:
            pytest.skip("reading /proc/PID/map_files needs CAP_SYS_ADMIN")
        assert mapped.build_id == readelf_build_id(built["so1"])
        assert compare(mapped, identity_of(path)) == "different"
    finally:
        mapping.close()


def test_a_deleted_file_read_through_its_fd_link(built, tmp_path):
    path = tmp_path / "held.so"
    shutil.copyfile(built["so1-none"], path)
    with open(path, "rb") as held:
        path.unlink()
        through_link = identity_of(f"/proc/self/fd/{held.fileno()}".encode())
    assert through_link == identity_of(built["so1-none"])
    assert through_link.digest is not None


def test_hash_budget(built, tmp_path):
    data = tmp_path / "data.bin"
    data.write_bytes(os.urandom(2048))
    assert identity_of(data, budget=2047).reason.startswith("no build-id and larger")
    assert identity_of(data, budget=2048).digest is not None
    # a build-id needs no hash, whatever the file's size
    assert identity_of(built["so1"], budget=16).build_id is not None
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        f.truncate(content.HASH_BUDGET + 1)  # sparse: answered from its size, never read
    assert within(10, lambda: identity_of(big)).reason.startswith(
        "no build-id and larger")


def test_reading_leaves_the_offset_alone(built):
    with open(built["so1"], "rb") as f, open(built["so1-none"], "rb") as g:
        f.seek(7)
        g.seek(7)
        assert build_id_of_fd(f.fileno(), os.fstat(f.fileno()).st_size) is not None
        assert digest_of_fd(g.fileno(), os.fstat(g.fileno()).st_size).digest is not None
        assert (f.tell(), g.tell()) == (7, 7)


def test_importing_content_is_light():
    """scan will import this module: it must add nothing to the start-up budget
    (tests/test_cli.py); hashlib is imported only when a file is hashed."""
    assert imports_after("import inodewatch.content") & (HEAVY | {"hashlib"}) == set()
