"""Layer 0 speed: the add+read+describe+unlink cycle, ours beside two C anchors, and the import time.

Side by side in one run, interleaved round by round, each in the same fresh session keyring:
- C, one syscall per op (the physical floor): add_key, keyctl_read and keyctl_describe into
  fixed 512-byte buffers, keyctl_unlink; compiled here with gcc;
- C with libkeyutils' ``_alloc`` calls (keyctl_read_alloc, keyctl_describe_alloc: two syscalls
  each, as keyctl(1) does), the second anchor column;
- pam_keyinit_py.keyutils (cffi, API mode), and plain ctypes over the same library
  for reference;
- the keyctl CLI, one process per call.
Target (issue #14): ours ≤ 1.3× the one-syscall C loop (median of the per-round ratios);
import ≤ 5 ms.

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
ROUNDS = 7
N = 20000
TARGET = 1.3

C_LOOP = r"""
#include <keyutils.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
int main(int argc, char **argv) {
    key_serial_t ring = atoi(argv[1]);
    long n = atol(argv[2]);
    int alloc = strcmp(argv[3], "alloc") == 0;
    char payload[64]; memset(payload, 'p', sizeof payload);
    char data[512], desc[512];
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n; i++) {
        key_serial_t k = add_key("user", "bench", payload, sizeof payload, ring);
        if (k < 0) { perror("add_key"); return 1; }
        if (alloc) {
            void *d; char *s;
            if (keyctl_read_alloc(k, &d) < 0 || keyctl_describe_alloc(k, &s) < 0) {
                perror("alloc"); return 1;
            }
            free(d); free(s);
        } else if (keyctl_read(k, data, sizeof data) < 0 || keyctl_describe(k, desc, sizeof desc) < 0) {
            perror("fixed"); return 1;
        }
        if (keyctl_unlink(k, ring) < 0) { perror("unlink"); return 1; }
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


def c_cycle_ns(exe: Path, ring: int, n: int, mode: str) -> float:
    """ns per cycle of the C loop, ``fixed`` or ``alloc`` (the subprocess inherits our session keyring)."""
    out = subprocess.run([str(exe), str(ring), str(n), mode], check=True, capture_output=True, text=True)
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
    """ns per cycle through ctypes over libkeyutils.so.1, fixed buffers (the alternative to cffi)."""
    lib = ctypes.CDLL("libkeyutils.so.1", use_errno=True)
    lib.add_key.restype = ctypes.c_int32
    lib.add_key.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t,
                            ctypes.c_int32]
    lib.keyctl_read.argtypes = [ctypes.c_int32, ctypes.c_char_p, ctypes.c_size_t]
    lib.keyctl_describe.argtypes = [ctypes.c_int32, ctypes.c_char_p, ctypes.c_size_t]
    lib.keyctl_unlink.argtypes = [ctypes.c_int32, ctypes.c_int32]
    data = ctypes.create_string_buffer(512)
    desc = ctypes.create_string_buffer(512)
    t = time.perf_counter_ns()
    for _ in range(n):
        k = lib.add_key(b"user", b"bench", PAYLOAD, len(PAYLOAD), ring)
        size = lib.keyctl_read(k, data, 512)
        data.raw[:size]
        size = lib.keyctl_describe(k, desc, 512)
        desc.raw[: size - 1]
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


def _mmm(values: list[float]) -> str:
    return f"{min(values):7.2f} {statistics.median(values):7.2f} {max(values):7.2f}"


def main() -> None:
    keyutils.join_session_keyring(None)
    ring = keyutils.add_key("keyring", "bench", None, keyutils.KEY_SPEC_SESSION_KEYRING)
    columns: dict[str, list[float]] = {"fixed": [], "alloc": [], "ours": [], "ctypes": []}
    with tempfile.TemporaryDirectory() as tmp:
        exe = build_c_loop(Path(tmp))
        c_cycle_ns(exe, ring, 2000, "fixed")  # warm up
        cffi_cycle_ns(ring, 2000)
        runs = {
            "fixed": lambda: c_cycle_ns(exe, ring, N, "fixed"),
            "alloc": lambda: c_cycle_ns(exe, ring, N, "alloc"),
            "ours": lambda: cffi_cycle_ns(ring, N),
            "ctypes": lambda: ctypes_cycle_ns(ring, N),
        }
        for _ in range(ROUNDS):  # interleaved, so a noisy moment hits every column alike
            for name, run in runs.items():
                columns[name].append(run())
    cli = cli_cycle_ns(ring, 50)
    imp = import_ms()
    fixed = columns["fixed"]
    print(f"add+read+describe+unlink, {ROUNDS} interleaved rounds of {N}: µs/cycle min median max,"
          " and × each C anchor (median of per-round ratios)")
    print(f"{'':38} {'min':>7} {'median':>7} {'max':>7} {'× C 1-syscall':>14} {'× C _alloc':>11}")
    rows = (("C, 1 syscall per op (anchor)", "fixed"), ("C, libkeyutils _alloc (anchor 2)", "alloc"),
            ("pam_keyinit_py.keyutils (cffi API)", "ours"), ("ctypes, fixed buffers", "ctypes"))
    for label, name in rows:
        us = [ns / 1000 for ns in columns[name]]
        r1 = statistics.median(a / b for a, b in zip(columns[name], fixed, strict=True))
        r2 = statistics.median(a / b for a, b in zip(columns[name], columns["alloc"], strict=True))
        print(f"{label:38} {_mmm(us)} {r1:14.2f} {r2:11.2f}")
    print(f"{'keyctl CLI (4 processes)':38} {cli / 1000:7.0f}")
    ratios = [a / b for a, b in zip(columns["ours"], fixed, strict=True)]
    ratio = statistics.median(ratios)
    print(f"target: ours ≤ {TARGET:.2f}× C 1-syscall: {ratio:.2f}× (per-round {min(ratios):.2f}–"
          f"{max(ratios):.2f}) -> {'met' if ratio <= TARGET else 'MISSED'}")
    print(f"import pam_keyinit_py.keyutils (python3 -I, median): {imp:.2f} ms "
          f"(target ≤ 5 ms -> {'met' if imp <= 5 else 'MISSED'})")


if __name__ == "__main__":
    main()
