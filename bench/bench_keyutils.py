"""Layer 0 speed: the add+read+describe+unlink cycle three ways, and the import time.

Side by side in one run, each in the same fresh session keyring:
- C: a loop over libkeyutils (add_key, keyctl_read_alloc, keyctl_describe_alloc,
  keyctl_unlink), compiled here with gcc;
- pam_keyinit_py.keyutils (cffi, API mode), and plain ctypes over the same library
  for reference;
- the keyctl CLI, one process per call.
Target (issue "Foundation"): the library ≤ 1.3× C; import ≤ 5 ms.

Run: ``make bench ONLY=keyutils`` (or ``.venv/bin/python bench/run.py``).
"""

from __future__ import annotations

import ctypes
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from pam_keyinit_py import keyutils

REPO = Path(__file__).resolve().parent.parent
PAYLOAD = b"p" * 64
ROUNDS = 5

C_LOOP = r"""
#include <keyutils.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
int main(int argc, char **argv) {
    key_serial_t ring = atoi(argv[1]);
    long n = atol(argv[2]);
    char payload[64]; for (int i = 0; i < 64; i++) payload[i] = 'p';
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n; i++) {
        void *data; char *desc;
        key_serial_t k = add_key("user", "bench", payload, sizeof payload, ring);
        if (k < 0 || keyctl_read_alloc(k, &data) < 0 || keyctl_describe_alloc(k, &desc) < 0
            || keyctl_unlink(k, ring) < 0) { perror("cycle"); return 1; }
        free(data); free(desc);
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%.1f\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n);
    return 0;
}
"""


def build_c_loop(directory: Path) -> Path:
    """Compile the C reference loop against -lkeyutils."""
    src = directory / "cycle.c"
    exe = directory / "cycle"
    src.write_text(C_LOOP)
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(src), "-lkeyutils"], check=True)
    return exe


def c_cycle_ns(exe: Path, ring: int, n: int) -> float:
    """ns per cycle of the C loop (the subprocess inherits our session keyring)."""
    out = subprocess.run([str(exe), str(ring), str(n)], check=True, capture_output=True, text=True)
    return float(out.stdout)


def cffi_cycle_ns(ring: int, n: int) -> float:
    """ns per cycle through pam_keyinit_py.keyutils."""
    add, read, describe, unlink = keyutils.add_key, keyutils.read, keyutils.describe, keyutils.unlink
    t = time.perf_counter_ns()
    for _ in range(n):
        k = add(b"user", b"bench", PAYLOAD, ring)
        read(k)
        describe(k)
        unlink(k, ring)
    return (time.perf_counter_ns() - t) / n


def ctypes_cycle_ns(ring: int, n: int) -> float:
    """ns per cycle through ctypes over libkeyutils.so.1 (the alternative to cffi)."""
    lib = ctypes.CDLL("libkeyutils.so.1", use_errno=True)
    libc = ctypes.CDLL(None)
    lib.add_key.restype = ctypes.c_int32
    lib.add_key.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t,
                            ctypes.c_int32]
    lib.keyctl_read_alloc.argtypes = [ctypes.c_int32, ctypes.POINTER(ctypes.c_void_p)]
    lib.keyctl_describe_alloc.argtypes = [ctypes.c_int32, ctypes.POINTER(ctypes.c_char_p)]
    lib.keyctl_unlink.argtypes = [ctypes.c_int32, ctypes.c_int32]
    libc.free.argtypes = [ctypes.c_void_p]
    t = time.perf_counter_ns()
    for _ in range(n):
        k = lib.add_key(b"user", b"bench", PAYLOAD, len(PAYLOAD), ring)
        data = ctypes.c_void_p()
        size = lib.keyctl_read_alloc(k, ctypes.byref(data))
        ctypes.string_at(data, size)
        libc.free(data)
        desc = ctypes.c_char_p()
        lib.keyctl_describe_alloc(k, ctypes.byref(desc))
        lib.keyctl_unlink(k, ring)
    return (time.perf_counter_ns() - t) / n


def cli_cycle_ns(ring: int, n: int) -> float:
    """ns per cycle with the keyctl CLI, four processes per cycle."""
    t = time.perf_counter_ns()
    for _ in range(n):
        k = subprocess.run(["keyctl", "add", "user", "bench", "p" * 64, str(ring)],
                           check=True, capture_output=True, text=True).stdout.strip()
        subprocess.run(["keyctl", "pipe", k], check=True, capture_output=True)
        subprocess.run(["keyctl", "rdescribe", k], check=True, capture_output=True)
        subprocess.run(["keyctl", "unlink", k, str(ring)], check=True, capture_output=True)
    return (time.perf_counter_ns() - t) / n


def import_ms() -> float:
    """Import time of pam_keyinit_py.keyutils as pam_python would see it (isolated /usr/bin/python3)."""
    code = (
        f"import sys,time;sys.path.insert(0,{str(REPO)!r});t=time.perf_counter();"
        "import pam_keyinit_py.keyutils;print((time.perf_counter()-t)*1e3)"
    )
    runs = [float(subprocess.run(["/usr/bin/python3", "-I", "-c", code], check=True,
                                 capture_output=True, text=True).stdout) for _ in range(7)]
    return statistics.median(runs[1:])  # the first run may still write .pyc files


def main() -> None:
    keyutils.join_session_keyring(None)
    ring = keyutils.add_key("keyring", "bench", None, keyutils.KEY_SPEC_SESSION_KEYRING)
    n = 20000
    with tempfile.TemporaryDirectory() as tmp:
        exe = build_c_loop(Path(tmp))
        c_cycle_ns(exe, ring, 2000)  # warm up
        cffi_cycle_ns(ring, 2000)
        c = statistics.median(c_cycle_ns(exe, ring, n) for _ in range(ROUNDS))
        ours = statistics.median(cffi_cycle_ns(ring, n) for _ in range(ROUNDS))
        ct = statistics.median(ctypes_cycle_ns(ring, n) for _ in range(ROUNDS))
    cli = cli_cycle_ns(ring, 50)
    imp = import_ms()
    print(f"{'add+read+describe+unlink':34} {'µs/cycle':>10} {'× C':>7}")
    for name, ns in (("C libkeyutils (anchor)", c), ("pam_keyinit_py.keyutils (cffi API)", ours),
                     ("ctypes over libkeyutils", ct), ("keyctl CLI (4 processes)", cli)):
        print(f"{name:34} {ns / 1000:10.2f} {ns / c:7.2f}")
    print(f"target: cffi ≤ 1.30× C -> {'met' if ours / c <= 1.3 else 'NOT met'}")
    print(f"import pam_keyinit_py.keyutils (python3 -I, median): {imp:.2f} ms "
          f"(target ≤ 5 ms -> {'met' if imp <= 5 else 'NOT met'})")


if __name__ == "__main__":
    main()
