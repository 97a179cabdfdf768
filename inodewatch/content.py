"""Content identity of a file: its ELF GNU build-id, else a hash of its bytes.

A `deleted` or `replaced` finding says the inode changed; this module says whether the
*content* changed too, by comparing what a process maps (read through
/proc/PID/map_files/START-END, which works for a deleted file, or /proc/PID/fd/N) with the
file now at the path.  A reinstall of identical bytes gives "identical": the process runs
what is on disk, no restart needed.

The pure core, `locate_build_id`, finds the NT_GNU_BUILD_ID note of an ELF file (ELF32 or
ELF64, either byte order) through a `read_at(offset, length)` callable, so it is tested on
bytes and never sees a file descriptor.  It looks in the PT_NOTE program headers first (what
a loaded object is guaranteed to keep), then in the SHT_NOTE sections (any of them, not only
one named .note.gnu.build-id: that needs the section name table, and the note's own name and
type already identify it).  Every offset, count and size is checked against the file's size
before it is read, and it reads at most `ELF_READ_CAP` bytes in all: a hostile header can cost
an answer, never memory or time.  It returns None when there is no build-id (not ELF at all,
no such note) and raises `ElfError` for an ELF file it cannot trust; nothing else.

The I/O here is the reading of a descriptor the caller opened: `build_id_of_fd` and
`digest_of_fd` read with os.pread only (the descriptor's offset is left alone).  A file
without a build-id is hashed (BLAKE2b-256, in 1 MiB reads) when it is at most `HASH_BUDGET`
bytes; larger, its content is "unknown" rather than a stall.  Opening the file safely (names
are untrusted: no symlink followed, nothing but a regular file opened, the inode checked) is
contentpass.py's job.

Nothing heavy is imported: `scan` pays every import at start-up (tests/test_cli.py), and
hashlib (OpenSSL's bindings) is imported only when a file is actually hashed.
"""

from __future__ import annotations

import os
import struct
from collections import namedtuple
from collections.abc import Callable

ELF_READ_CAP = 64 * 1024  # bytes of header, program headers, section headers and notes, in all
HASH_BUDGET = 64 * 1024 * 1024  # bytes: a larger file without a build-id is "unknown"
HASH_CHUNK = 1024 * 1024
MAX_BUILD_ID = 64  # bytes; GNU ld writes 8 (xxhash), 16 (md5, uuid) or 20 (sha1)

IDENTICAL = "identical"
DIFFERENT = "different"
UNKNOWN = "unknown"

PT_NOTE = 4
SHT_NOTE = 7
NT_GNU_BUILD_ID = 3
GNU_NAME = b"GNU\0"
NOTE_HEADER = 12  # namesz, descsz, type: three 4-byte words in ELF32 and ELF64 alike


class ElfError(Exception):
    """An ELF file whose headers or notes cannot be trusted (truncated, out of bounds,
    malformed, or more than ELF_READ_CAP bytes of them)."""


class BuildIdNote(namedtuple("BuildIdNote", "offset value")):
    """Where a build-id is: offset (int) of its bytes in the file, value (bytes)."""

    __slots__ = ()


class ContentId(namedtuple("ContentId", "build_id digest reason")):
    """What a file holds: build_id (str, hex) or None; digest (str, "blake2b-256:" + hex)
    when it had no build-id and was hashed, else None; reason (str) why neither is known,
    else None."""

    __slots__ = ()


# struct formats, without the byte order, per ELF class (1: ELF32, 2: ELF64): the header after
# its 16-byte e_ident (type machine version entry phoff shoff flags ehsize phentsize phnum
# shentsize shnum shstrndx), a program header, a section header
_HEADER = {1: "HHIIIIIHHHHHH", 2: "HHIQQQIHHHHHH"}
_PHDR = {1: "IIIIIIII", 2: "IIQQQQQQ"}
_SHDR = {1: "IIIIIIIIII", 2: "IIQQQQIIQQ"}


def locate_build_id(read_at: Callable[[int, int], bytes], size: int) -> BuildIdNote | None:
    """The GNU build-id of the ELF file of `size` bytes that `read_at(offset, length)` reads
    (it may return fewer bytes: the file shrank); None if it is not ELF or has none."""
    reader = _Reader(read_at, size)
    ident = reader.read(0, 16) if size >= 16 else b""
    if ident[:4] != b"\x7fELF":
        return None
    elf_class, data = ident[4], ident[5]
    if elf_class not in (1, 2) or data not in (1, 2):
        raise ElfError(f"unknown ELF class {elf_class} or data encoding {data}")
    order = "<" if data == 1 else ">"
    header_format = order + _HEADER[elf_class]
    header = struct.unpack(header_format, reader.read(16, struct.calcsize(header_format)))
    phoff, shoff = header[4], header[5]
    phentsize, phnum, shentsize, shnum = header[8], header[9], header[10], header[11]

    phdrs = _table(reader, order + _PHDR[elf_class], phoff, phentsize, phnum)
    for entry in phdrs:
        # ELF32: type offset vaddr paddr filesz memsz flags align; ELF64: type flags offset ...
        p_type = entry[0]
        p_offset, p_filesz, p_align = ((entry[1], entry[4], entry[7]) if elf_class == 1
                                       else (entry[2], entry[5], entry[7]))
        if p_type == PT_NOTE:
            found = _build_id_in_notes(reader, order, p_offset, p_filesz, p_align)
            if found:
                return found
    # Section headers only where no program header had it: an object file, or a loaded
    # object whose note sits outside every PT_NOTE (unusual, but linkers allow it).
    shdrs = _table(reader, order + _SHDR[elf_class], shoff, shentsize, shnum)
    for entry in shdrs:
        # both classes: name type flags addr offset size link info addralign entsize
        if entry[1] == SHT_NOTE:
            found = _build_id_in_notes(reader, order, entry[4], entry[5], entry[8])
            if found:
                return found
    return None


class _Reader:
    """read_at, bounded by the file's size and by ELF_READ_CAP bytes in all."""

    def __init__(self, read_at: Callable[[int, int], bytes], size: int) -> None:
        self.read_at = read_at
        self.size = size
        self.left = ELF_READ_CAP

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ElfError(f"{length} bytes at offset {offset} are past the end "
                           f"({self.size} bytes)")
        if length > self.left:
            raise ElfError(f"headers and notes need more than {ELF_READ_CAP} bytes")
        self.left -= length
        data = self.read_at(offset, length)
        if len(data) != length:
            raise ElfError(f"short read at offset {offset}: the file shrank")
        return data


def _table(reader: _Reader, entry_format: str, offset: int, entsize: int,
           count: int) -> list[tuple[int, ...]]:
    """The `count` entries of a header table; empty where the ELF has none (offset 0)."""
    if count == 0 or offset == 0:
        return []
    needed = struct.calcsize(entry_format)
    if entsize < needed:
        raise ElfError(f"table entries of {entsize} bytes, fewer than {needed}")
    # entsize may be larger than the struct (a newer ABI): step by it, read the known prefix
    raw = reader.read(offset, entsize * count)
    return [struct.unpack_from(entry_format, raw, i * entsize) for i in range(count)]


def _build_id_in_notes(reader: _Reader, order: str, offset: int, length: int,
                       align: int) -> BuildIdNote | None:
    """The build-id note among the notes of `length` bytes at `offset`, if any."""
    if length == 0:
        return None
    notes = reader.read(offset, length)
    # Name and descriptor are padded to 4 bytes, or 8 in a segment aligned to 8 (the
    # GNU property notes); nothing else is valid
    step = 8 if align == 8 else 4
    pos = 0
    while pos + NOTE_HEADER <= length:
        namesz, descsz, note_type = struct.unpack_from(order + "III", notes, pos)
        name_at = pos + NOTE_HEADER
        desc_at = _align(name_at + namesz, step)
        end = desc_at + descsz
        if end > length:
            raise ElfError(f"a note at offset {offset + pos} runs past its segment "
                           f"(name {namesz} bytes, descriptor {descsz} bytes)")
        if note_type == NT_GNU_BUILD_ID and notes[name_at:name_at + namesz] == GNU_NAME:
            if not 0 < descsz <= MAX_BUILD_ID:
                raise ElfError(f"a build-id of {descsz} bytes")
            return BuildIdNote(offset + desc_at, notes[desc_at:end])
        pos = _align(end, step)
    return None


def _align(value: int, step: int) -> int:
    return (value + step - 1) & ~(step - 1)


def compare(mapped: ContentId, disk: ContentId) -> str:
    """IDENTICAL, DIFFERENT or UNKNOWN: what a process maps against what is on disk.

    Build-ids decide when both files have one; else digests when both were hashed; else
    (one has a build-id and the other none, or either could not be read) UNKNOWN."""
    if mapped.build_id is not None and disk.build_id is not None:
        return IDENTICAL if mapped.build_id == disk.build_id else DIFFERENT
    if mapped.digest is not None and disk.digest is not None:
        return IDENTICAL if mapped.digest == disk.digest else DIFFERENT
    return UNKNOWN


# Read at once when looking for a build-id: a shared object's header, program headers and
# build-id note lie in its first page, so one pread answers where several small ones would.
HEAD = 4096


def build_id_of_fd(fd: int, size: int) -> str | None:
    """The GNU build-id (hex) of the file of `size` bytes open as `fd`, read with pread
    only; None when it has none, or is an ELF that cannot be trusted (still bytes: hash
    them).  Raises OSError."""
    head = os.pread(fd, min(size, HEAD), 0)

    def read_at(offset: int, length: int) -> bytes:
        if offset + length <= len(head):
            return head[offset:offset + length]
        return os.pread(fd, length, offset)
    try:
        note = locate_build_id(read_at, size)
    except ElfError:
        return None
    return note.value.hex() if note is not None else None


def digest_of_fd(fd: int, size: int, budget: int = HASH_BUDGET) -> ContentId:
    """BLAKE2b-256 of the whole file open as `fd` (its `size` as fstat gave it), if it is at
    most `budget` bytes (also while it grows); read with pread only.  Raises OSError."""
    if size > budget:
        return ContentId(None, None, f"no build-id and larger than the {budget}-byte "
                                     "hash budget")
    import hashlib  # here, not at the top: only a finding's file is ever hashed

    hasher = hashlib.blake2b(digest_size=32)
    offset = 0
    while True:
        chunk = os.pread(fd, min(HASH_CHUNK, budget + 1 - offset), offset)
        if not chunk:
            return ContentId(None, "blake2b-256:" + hasher.hexdigest(), None)
        offset += len(chunk)
        if offset > budget:
            return ContentId(None, None, f"no build-id and grew past the {budget}-byte "
                                         "hash budget while it was read")
        hasher.update(chunk)
