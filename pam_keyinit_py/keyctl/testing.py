"""keyctl's hidden ``--test`` command (keyutils 1.6.3 keyctl_testing.c), same output and exit codes.

- ``--test limits``: add_key(2) with type names of 0..8191 bytes (EINVAL for 0
  and 32 or more, ENODEV for an unknown type in between) and ``user`` key
  descriptions of 0..8191 bytes (EINVAL for 0 and 4096 or more), in the
  thread keyring;
- ``--test limits2``: ``user`` payloads of 0..1030 KiB (only 1..32767 accepted;
  EDQUOT tolerated, as keyctl tolerates it).

Progress goes to stdout unbuffered in keyctl; here stdout is flushed before
every stderr line, so the two streams interleave as keyctl's do.
"""

from __future__ import annotations

import errno as E
import os

from pam_keyinit_py import keyutils as ku

from .cli import TRAILER, Exit, err

_TEST_COMMANDS = (("limits", ""), ("limits2", ""))


def _test_format() -> Exit:
    text = "Format:\n" + "".join(f"  keyctl --test {name} {fmt}\n" for name, fmt in _TEST_COMMANDS)
    text += TRAILER
    err(text.encode())
    return Exit(2)


class _Progress:
    """keyctl's unbuffered stdout (setvbuf _IONBF), batched but flushed before each stderr write."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.failures = 0

    def out(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) > 4096:
            self.flush()

    def flush(self) -> None:
        view = memoryview(bytes(self.buf))
        self.buf.clear()
        while view:
            view = view[os.write(1, view):]

    def fail(self, message: str) -> None:
        """putchar('\\n'), fprintf(stderr, message), one more failure; abort past 20 as keyctl does."""
        self.out(b"\n")
        self.flush()
        err(message.encode())
        self.failures += 1

    def check_abort(self) -> None:
        if self.failures > 20:
            self.flush()
            err(b"Aborting with too many failures\n")
            raise Exit(1)

    def finish(self) -> int:
        self.out(b"\n")
        self.flush()
        return 1 if self.failures else 0


def _errno(exc: OSError) -> int:
    return exc.errno or 0


def _unlink(progress: _Progress, key: int) -> None:
    try:
        ku.unlink(key, ku.KEY_SPEC_THREAD_KEYRING)
    except OSError as exc:
        progress.fail(f"Unlink failed: {os.strerror(_errno(exc))}\n")


def limits(argv: list[bytes]) -> int:
    """--test limits: the type and description length limits of add_key(2)."""
    if len(argv) != 1:
        raise _test_format()
    progress = _Progress()
    thread = ku.KEY_SPEC_THREAD_KEYRING
    for i in range(8192):
        if i % 32 == 0:
            if i:
                progress.out(b"\n")
            progress.out(f"TEST SIZE {i}".encode())
        name = b"a" * i
        progress.out(b".")
        try:
            ku.add_key(name, b"wibble", b"a", thread)
        except OSError as exc:
            expected = E.EINVAL if i == 0 or i >= 32 else E.ENODEV
            if _errno(exc) != expected:
                progress.fail(f"{i} type failed: {os.strerror(_errno(exc))}\n")
        else:
            progress.fail(f"{i} type unexpectedly succeeded\n")
        progress.out(b"_")
        try:
            key = ku.add_key(b"user", name, b"a", thread)
        except OSError as exc:
            if i == 0 or i >= 4096:
                if _errno(exc) != E.EINVAL:
                    progress.fail(f"{i} desc failed: {os.strerror(_errno(exc))}\n")
            else:
                progress.fail(f"{i} desc wrong error: {os.strerror(_errno(exc))}\n")
        else:
            if i == 0 or i >= 4096:
                progress.fail(f"{i} desc unexpectedly succeeded\n")
            _unlink(progress, key)
        progress.check_abort()
    return progress.finish()


def limits2(argv: list[bytes]) -> int:
    """--test limits2: the ``user`` payload size limit (1..32767) under add_key's 1 MiB cap."""
    if len(argv) != 1:
        raise _test_format()
    progress = _Progress()
    thread = ku.KEY_SPEC_THREAD_KEYRING
    buf = memoryview(bytearray(b"a" * (1030 * 1024)))
    for i in range(len(buf)):
        if i % 2048 == 0:
            if i:
                progress.out(b"\n")
            progress.out(b"TEST SIZE %7d " % i)
        if i % 64 == 0:
            progress.out(b".")
        try:
            key = ku.add_key(b"user", b"a", buf[:i], thread)
        except OSError as exc:
            if i == 0 or i > 32767:
                if _errno(exc) != E.EINVAL:
                    progress.fail(f"{i} desc failed: {os.strerror(_errno(exc))}\n")
            elif _errno(exc) != E.EDQUOT:  # keys made this fast may outrun the garbage collector
                progress.fail(f"{i} desc wrong error: {os.strerror(_errno(exc))}\n")
        else:
            if i == 0 or i > 32767:
                progress.fail(f"{i} desc unexpectedly succeeded\n")
            _unlink(progress, key)
        progress.check_abort()
    return progress.finish()


def act_test(argv: list[bytes]) -> int:
    """--test <name>: keyctl's do_command() over the test table ("Unknown test command")."""
    if len(argv) < 2:
        raise _test_format()
    word = argv[1]
    for name, _ in _TEST_COMMANDS:
        if name.encode() == word:
            return (limits if name == "limits" else limits2)(argv[1:])
    err(b"Unknown test command\n")
    raise Exit(2)
