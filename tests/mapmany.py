"""A hostile process for the watch-budget tests and benchmarks: it maps N distinct files.

    python3 tests/mapmany.py DIR N [COMM]

Names itself COMM (prctl PR_SET_NAME, as `--name COMM` matches it; default "mapmany"), creates DIR/f0 ... DIR/f{N-1} (one byte each) unless they exist, maps each one (one page,
PROT_READ, MAP_PRIVATE, through ctypes: the mmap module would keep an fd per mapping), closes
the files, prints "ready" and waits until its stdin closes.  Every file costs a daemon
following this process one inotify watch (and its directory one more), so a user can spend
the daemon's watches with as many processes as she likes.
"""

import ctypes
import os
import sys

PROT_READ, MAP_PRIVATE = 1, 2
PR_SET_NAME = 15


def main() -> int:
    directory, count = sys.argv[1], int(sys.argv[2])
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    failed = ctypes.c_void_p(-1).value
    comm = (sys.argv[3] if len(sys.argv) > 3 else "mapmany").encode()
    libc.prctl(PR_SET_NAME, ctypes.c_char_p(comm), 0, 0, 0)
    for i in range(count):
        path = os.path.join(directory, f"f{i}")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size == 0:
                os.write(fd, b"x")
            if libc.mmap(None, 4096, PROT_READ, MAP_PRIVATE, fd, 0) in (None, failed):
                sys.exit(f"mmap {path}: {os.strerror(ctypes.get_errno())}")
        finally:
            os.close(fd)
    print("ready", flush=True)
    sys.stdin.read()
    return 0


if __name__ == "__main__":
    sys.exit(main())
