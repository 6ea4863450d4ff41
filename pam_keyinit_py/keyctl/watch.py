"""keyctl's key-notification commands (keyutils 1.6.3 keyctl_watch.c): watch, watch_add, watch_rm,
watch_session, watch_sync, with keyctl's option parsing, messages and exit codes.

The kernel side is a notification pipe: pipe2(O_NOTIFICATION_PIPE) (kernels
with CONFIG_WATCH_QUEUE; the older out-of-tree interface was /dev/watch_queue),
sized and filtered with IOC_WATCH_QUEUE_SET_SIZE/SET_FILTER, and
KEYCTL_WATCH_KEY to post a key's changes to it.  On a kernel without them,
pipe2 fails with ENOPKG ("pipe2: Package not installed") and KEYCTL_WATCH_KEY
with EOPNOTSUPP, exactly as keyctl reports.

Options are parsed as glibc's getopt(3) parses them for keyctl: ``watch``
permutes (options may follow the key, unless POSIXLY_CORRECT is set),
``watch_session`` stops at the first operand ("+df:n:"), and the messages are
getopt's ("watch: invalid option -- 'x'") followed by keyctl's "Unknown option".
"""

from __future__ import annotations

import errno as E
import os
import select
import signal
import struct
import sys
import time
from collections.abc import Iterator

from pam_keyinit_py import keyutils as ku

from .cli import Exit, err, fail, usage, write_all
from .spec import get_key_id, to_s32

O_NOTIFICATION_PIPE = os.O_EXCL  # <linux/watch_queue.h>
IOC_WATCH_QUEUE_SET_SIZE = 0x5760  # _IO('W', 0x60)
IOC_WATCH_QUEUE_SET_FILTER = 0x5761  # _IO('W', 0x61)
PIPE_IOC_SYNC = 0x5762  # _IO('W', 0x62), as keyctl 1.6.3 issues it
FIONREAD = 0x541B
MAX_MESSAGE_COUNT = 256
WATCH_TYPE_META = 0
WATCH_TYPE_KEY_NOTIFY = 1
WATCH_META_REMOVAL_NOTIFICATION = 0
WATCH_META_LOSS_NOTIFICATION = 1
WATCH_INFO_LENGTH = 0x7F
WATCH_INFO_ID = 0xFF00
_FILTER_CHARS = b"iplncrvs"  # NOTIFY_KEY_INSTANTIATED .. NOTIFY_KEY_SETATTR
_KEY_EVENTS = {0: "inst", 1: "upd", 2: "link", 3: "unlk", 4: "clr", 5: "rev", 6: "inv", 7: "attr"}


def atoi(arg: bytes) -> int:
    """glibc atoi(): (int) strtol(arg, NULL, 10), garbage after the digits ignored."""
    s = arg.lstrip(b" \t\n\v\f\r")
    sign = -1 if s[:1] == b"-" else 1
    if s[:1] in (b"+", b"-"):
        s = s[1:]
    n = 0
    while n < len(s) and 0x30 <= s[n] <= 0x39:
        n += 1
    value = sign * int(s[:n]) if n else 0
    return to_s32(max(-(1 << 63), min((1 << 63) - 1, value)))  # strtol saturates at LONG_MIN/MAX


class GetOpt:
    """glibc getopt(3) over ``argv`` (argv[0] is the command name), one option at a time.

    Iterating yields (option byte, optarg) in order, so the caller acts on each
    before the next is parsed, as keyctl's while (getopt()) loop does.  An error
    prints getopt's message and yields ``?``, which every keyctl caller turns
    into "Unknown option" (exit 2).  ``operands`` is complete once exhausted.
    """

    def __init__(self, argv: list[bytes], optstring: bytes) -> None:
        self.argv = argv
        self.permute = not optstring.startswith(b"+") and "POSIXLY_CORRECT" not in os.environ
        self.optstring = optstring.lstrip(b"+")
        self.operands: list[bytes] = []

    def __iter__(self) -> Iterator[tuple[int, bytes | None]]:
        prog, args, optstring = self.argv[0], self.argv[1:], self.optstring
        i = 0
        while i < len(args):
            arg = args[i]
            i += 1
            if arg == b"--":
                self.operands += args[i:]
                return
            if len(arg) < 2 or arg[:1] != b"-":
                if not self.permute:
                    self.operands += args[i - 1 :]
                    return
                self.operands.append(arg)
                continue
            j = 1
            while j < len(arg):
                c = arg[j]
                j += 1
                k = optstring.find(bytes([c]))
                if c == 0x3A or k < 0:
                    err(prog + b": invalid option -- '" + bytes([c]) + b"'\n")
                    yield 0x3F, None
                    continue
                if optstring[k + 1 : k + 2] != b":":
                    yield c, None
                    continue
                if j < len(arg):
                    yield c, arg[j:]
                elif i < len(args):
                    i += 1
                    yield c, args[i - 1]
                else:
                    err(prog + b": option requires an argument -- '" + bytes([c]) + b"'\n")
                    yield 0x3F, None
                break


class Filter:
    """struct watch_notification_filter with the one key-notification type filter keyctl builds."""

    def __init__(self) -> None:
        self.nr_filters = 0
        self.subtypes = 0

    def parse(self, text: bytes) -> None:
        """keyctl's parse_watch_filter(): one letter per key event subtype."""
        self.nr_filters = 1
        for c in text:
            index = _FILTER_CHARS.find(bytes([c]))
            if index < 0:
                err(b"Unknown filter character '" + bytes([c]) + b"'\n")
                raise Exit(2)
            self.subtypes |= 1 << index

    def pack(self) -> bytes:
        # nr_filters, __reserved, then {type, info_filter, info_mask, subtype_filter[8]}.
        return struct.pack("=II", self.nr_filters, 0) + struct.pack(
            "=III8I", WATCH_TYPE_KEY_NOTIFY, 0, 0, self.subtypes, *([0] * 7))


def _unknown_option() -> Exit:
    err(b"Unknown option\n")
    return Exit(2)


def open_watch(filt: Filter) -> int:
    """A notification pipe's read end, sized and filtered (keyctl's open_watch())."""
    try:
        rfd, _wfd = os.pipe2(O_NOTIFICATION_PIPE | os.O_NONBLOCK)
    except OSError as exc:
        raise fail("pipe2", exc.errno or 0) from None
    try:
        _ioctl(rfd, IOC_WATCH_QUEUE_SET_SIZE, MAX_MESSAGE_COUNT)
    except OSError as exc:
        raise fail("/dev/watch_queue(size)", exc.errno or 0) from None
    if filt.nr_filters:
        try:
            _ioctl(rfd, IOC_WATCH_QUEUE_SET_FILTER, filt.pack())
        except OSError as exc:
            raise fail("/dev/watch_queue(filter)", exc.errno or 0) from None
    return rfd


class _Log:
    """A line-buffered log stream on a file descriptor (setlinebuf in keyctl)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def line(self, text: str) -> None:
        write_all(self.fd, text.encode())


def consumer(log: _Log, gc: _Log, fd: int) -> int:
    """Read notifications and log them as keyctl's consumer() does; returns the exit status."""
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    while True:
        if not stop:
            try:
                poller = select.poll()
                poller.register(fd, select.POLLIN)
                poller.poll()
            except InterruptedError:
                continue
        try:
            data = os.read(fd, 433)
        except BlockingIOError:
            if stop:
                break
            continue
        except OSError as exc:
            err(f"read: {os.strerror(exc.errno or 0)}\n".encode())
            return 1
        if not data:
            log.line("-- END --\n")
            return 0
        p = 0
        while p < len(data):
            largest = min(len(data) - p, 128)
            if largest < 8:
                err(f"Short message header: {largest}\n".encode())
                return 4
            word, info = struct.unpack_from("=II", data, p)
            kind, subtype = word & 0xFFFFFF, word >> 24
            length = info & WATCH_INFO_LENGTH
            if length < 8 or length > largest:
                err(f"Bad message length: {length}/{largest}\n".encode())
                return 1
            if kind == WATCH_TYPE_META and subtype == WATCH_META_REMOVAL_NOTIFICATION:
                key = struct.unpack_from("=Q", data, p + 8)[0] & 0xFFFFFFFF if length >= 16 else 0
                gc.line(f"{key} gc\n")
                if (info & WATCH_INFO_ID) >> 8 == 1:
                    return 0
            elif kind == WATCH_TYPE_META and subtype == WATCH_META_LOSS_NOTIFICATION:
                log.line("-- LOSS --\n")
            elif kind == WATCH_TYPE_KEY_NOTIFY and length == 16 and subtype in _KEY_EVENTS:
                key, aux = struct.unpack_from("=II", data, p + 8)
                event = _KEY_EVENTS[subtype]
                log.line(f"{key} {event} {aux}\n" if subtype in (2, 3) else f"{key} {event}\n")
            p += length
        if stop:
            break
    log.line("Monitoring terminated\n")
    if gc is not log:
        gc.line("Monitoring terminated\n")
    return 0


def _watch_key(key: int, fd: int, watch_id: int, what: str = "keyctl_watch_key") -> None:
    try:
        ku.watch_key(key, fd, watch_id)
    except OSError as exc:
        raise fail(what, exc.errno or 0) from None


def act_watch(argv: list[bytes]) -> int:
    """watch [-f<filters>] <key>: print the key's notifications until it goes away."""
    filt = Filter()
    parser = GetOpt(argv, b"f:")
    for opt, arg in parser:
        if opt != ord("f"):
            raise _unknown_option()
        filt.parse(arg or b"")
    operands = parser.operands
    if len(operands) != 1:
        raise usage()
    key = get_key_id(operands[0])
    fd = open_watch(filt)
    _watch_key(key, fd, 0x01)
    sys.stdout.flush()
    out = _Log(1)
    return consumer(out, out, fd)


def _fd_and_key(argv: list[bytes]) -> tuple[int, int]:
    if len(argv) != 3:
        raise usage()
    return atoi(argv[1]), get_key_id(argv[2])


def act_watch_add(argv: list[bytes]) -> int:
    """watch_add <fd> <key>: KEYCTL_WATCH_KEY onto watch_session's queue (watch id 2)."""
    fd, key = _fd_and_key(argv)
    _watch_key(key, fd, 0x02)
    return 0


def act_watch_rm(argv: list[bytes]) -> int:
    """watch_rm <fd> <key>: KEYCTL_WATCH_KEY with watch id -1 (remove)."""
    fd, key = _fd_and_key(argv)
    _watch_key(key, fd, -1)
    return 0


def _ioctl(fd: int, request: int, arg: int | bytes) -> int | bytes:
    """ioctl(2) as C calls it: a negative descriptor is EBADF (Python's fcntl refuses it outright)."""
    import fcntl

    if fd < 0:
        raise OSError(E.EBADF, os.strerror(E.EBADF))
    return fcntl.ioctl(fd, request, arg)


def act_watch_sync(argv: list[bytes]) -> int:
    """watch_sync <fd>: wait until the monitor has read every queued notification."""
    if len(argv) != 2:
        raise usage()
    fd = atoi(argv[1])
    try:
        _ioctl(fd, PIPE_IOC_SYNC, 0)
        return 0
    except OSError as exc:
        if exc.errno != E.ENOTTY:
            raise fail("ioctl(PIPE_IOC_SYNC)", exc.errno or 0) from None
    while True:
        try:
            count = struct.unpack("i", _ioctl(fd, FIONREAD, b"\0\0\0\0"))[0]
        except OSError as exc:
            raise fail("ioctl(FIONREAD)", exc.errno or 0) from None
        if count == 0:
            return 0
        time.sleep(0.2)


def act_watch_session(argv: list[bytes]) -> int:
    """watch_session [-d] [-f<filters>] [-n <name>] <notifylog> <gclog> <fd> <prog> [args...].

    A new session keyring watched into a queue exposed on fd 3..9 of ``prog``;
    a forked consumer appends key events to notifylog and removals to gclog.
    """
    filt = Filter()
    name: bytes | None = None
    parser = GetOpt(argv, b"+df:n:")
    for opt, arg in parser:
        if opt == ord("f"):
            filt.parse(arg or b"")
        elif opt == ord("n"):
            name = arg
        elif opt != ord("d"):
            raise _unknown_option()
    operands = parser.operands
    if len(operands) < 4:
        raise usage()
    logfile, gcfile, target = operands[:3]
    tfd = atoi(target)
    if tfd < 3 or tfd > 9:
        err(b"The target fd must be between 3 and 9\n")
        raise Exit(2)
    wfd = open_watch(filt)
    if wfd != tfd:
        try:
            os.dup2(wfd, tfd)
        except OSError as exc:
            raise fail("dup2", exc.errno or 0) from None
        os.close(wfd)
        wfd = tfd
    os.set_inheritable(wfd, True)
    logs = []
    for path in (logfile, gcfile):
        try:
            logs.append(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666))
        except OSError as exc:
            raise fail(path, exc.errno or 0) from None
    pid_con = os.fork()
    if pid_con == 0:
        os._exit(consumer(_Log(logs[0]), _Log(logs[1]), wfd))
    pid_cmd = -1
    try:
        try:
            session = ku.join_session_keyring(name)
        except OSError as exc:
            raise fail("keyctl_join_session_keyring", exc.errno or 0) from None
        _watch_key(session, wfd, 0x01, "keyctl_watch_key/session")
        err(f"Joined session keyring: {session}\n".encode())
        pid_cmd = _run_command(operands[3:], wfd)
        os.close(wfd)
        return _wait(pid_cmd, pid_con)
    finally:
        for pid in (pid_cmd, pid_con):
            if pid > 0:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass


def _run_command(args: list[bytes], wfd: int) -> int:
    pid = os.fork()
    if pid:
        return pid
    env = dict(os.environb, KEYCTL_WATCH_FD=str(wfd).encode())
    prog = args[0] if args else os.environb.get(b"SHELL", b"/bin/sh")
    try:
        if args:
            os.execvpe(prog, args, env)
        os.execve(prog, [prog], env)
    except OSError as exc:
        err(prog + b": " + os.strerror(exc.errno or 0).encode() + b"\n")
    os._exit(1)


def _wait(pid_cmd: int, pid_con: int) -> int:
    """keyctl's wait loop: the consumer's status wins unless it is 0, then the command's."""
    status_con = status_cmd = 0
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        code = os.waitstatus_to_exitcode(status)
        code = 128 - code if code < 0 else code
        if pid == pid_cmd:
            status_cmd = code
            if pid_con != -1:
                os.kill(pid_con, signal.SIGTERM)
        elif pid == pid_con:
            status_con = code
            pid_con = -1
    return status_con or status_cmd
