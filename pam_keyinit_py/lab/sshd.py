"""A private OpenSSH server on a free loopback port, with a private config and a private PAM stack.

The real /usr/sbin/sshd runs in the foreground (``-D -e``) from a temporary
directory holding its config, host key and log.  Its PAM service (``sshd``,
sshd's __progname) is read from pam_wrapper's private service directory:
sshd is started with ``LD_PRELOAD=libpam_wrapper.so``, so /etc/pam.d and the
system sshd on port 22 are never touched.  sshd rebuilds the user's
environment from scratch, so the preload does not leak into sessions.

``Sshd(pam="real")`` runs it without pam_wrapper instead, for many logins at once
(pam_wrapper's 62 per-process config names run out past about 60 live sshd processes):
OpenSSH names its PAM service ``__progname`` (auth-pam.h's SSHD_PAM_SERVICE default; on
Debian 12's 9.2 pam_deny.so in the symlink's service refuses the login), the basename of
argv[0].  So sshd is started through a symlink
``<dir>/sshd-keyinit-lab-<random>`` -> /usr/sbin/sshd (an absolute path: sshd re-executes
argv[0] for every connection), and the service of that name is a real file in /etc/pam.d
(:class:`.hostpam.HostPam`), removed by :meth:`Sshd.close`.

sshd splits PAM differently per method (measured on Debian 12, OpenSSH 9.2):
with ``PasswordAuthentication`` every PAM call runs in the monitor; with
``KbdInteractiveAuthentication`` authenticate/acct_mgmt run in a separate
child.  :meth:`Sshd.start` takes ``mode`` to pick one; :meth:`Sshd.login`
drives the matching client method through sshpass, feeding the password on a
pipe (``sshpass -d``), never in argv or the environment.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from .hostpam import HostPam
from .pamwrap import PamWrapper

SSHD = "/usr/sbin/sshd"
PASSWORD = "password"
KBDINT = "keyboard-interactive"
GSSAPI = "gssapi-with-mic"
PUBKEY = "publickey"
MODES = (PASSWORD, KBDINT, GSSAPI, PUBKEY)
#: Where sshd's PAM service comes from: pam_wrapper's private directory, or /etc/pam.d.
PAM_WRAPPER, PAM_REAL = "wrapper", "real"


def available() -> str | None:
    """None when sshd, ssh, sshpass and ssh-keygen are present, else what is missing."""
    for tool in (SSHD, "ssh", "sshpass", "ssh-keygen"):
        if not shutil.which(tool):
            return f"{tool} is not installed"
    return None


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago (bind to 0, read, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _finish(proc: subprocess.Popen[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Wait for a client started by a ``*spawn`` method; kill it (and raise) after ``timeout``."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


class Sshd:
    """One private sshd.  ``start(pam_stack_lines, mode=...)``, ``login(...)``, ``stop()``.

    ``pam_stack_lines`` is the full ``sshd`` PAM service (auth, account,
    session, password lines); ``PamWrapper.hook_line()`` builds the hook's.
    """

    def __init__(self, pamwrap: PamWrapper | None = None, *, pam: str = PAM_WRAPPER,
                 service: str = "sshd-keyinit-lab") -> None:
        """``pam="real"``: the service is ``/etc/pam.d/<service>-<random>`` (``pamwrap``, if
        given, must then be a :class:`HostPam`), and sshd runs as a symlink of that name."""
        if pam not in (PAM_WRAPPER, PAM_REAL):
            raise ValueError(f"pam must be {PAM_WRAPPER!r} or {PAM_REAL!r}, not {pam!r}")
        if pam == PAM_REAL and pamwrap is not None and not isinstance(pamwrap, HostPam):
            raise ValueError('pam="real" needs a HostPam')
        self._own_pamwrap = pamwrap is None
        self.pamwrap = pamwrap or (HostPam() if pam == PAM_REAL else PamWrapper())
        self.pam = pam
        self.service_prefix = service
        #: The PAM service sshd passes to pam_start (its __progname), set by start().
        self.service = "sshd"
        self.dir = Path(tempfile.mkdtemp(prefix="pkp-sshd-"))
        self.port = 0
        self.mode = PASSWORD
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.dir / "sshd.log"
        self.host_key = self.dir / "ssh_host_ed25519_key"
        #: mode=PUBKEY: the client's key pair, and root-owned authorized_keys/<user> files.
        self.client_key = self.dir / "client_ed25519_key"
        self.authorized = self.dir / "authorized_keys"
        self.keytab: Path | None = None
        self.krb5_config: str | None = None

    # -- server -----------------------------------------------------------
    def _config(self, mode: str, extra: list[str]) -> Path:
        password = "yes" if mode == PASSWORD else "no"
        kbdint = "yes" if mode == KBDINT else "no"
        # GSSAPICleanupCredentials (default yes) stays on: sshd unlinks its FILE cache at logout.
        gssapi = ["GSSAPIAuthentication yes", "GSSAPIStrictAcceptorCheck no",
                  "GSSAPICleanupCredentials yes"] if mode == GSSAPI else ["GSSAPIAuthentication no"]
        lines = [
            f"Port {self.port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {self.host_key}",
            f"PidFile {self.dir / 'sshd.pid'}",
            "UsePAM yes",
            f"PasswordAuthentication {password}",
            f"KbdInteractiveAuthentication {kbdint}",
            f"PubkeyAuthentication {'yes' if mode == PUBKEY else 'no'}",
            *gssapi,
            "HostbasedAuthentication no",
            f"AuthorizedKeysFile {self.authorized}/%u" if mode == PUBKEY else "AuthorizedKeysFile none",
            "PermitRootLogin no",
            "PermitEmptyPasswords no",
            "UseDNS no",
            "PrintMotd no",
            "PrintLastLog no",
            "StrictModes no",
            "LoginGraceTime 30",
            "MaxStartups 20:50:40",
            "LogLevel VERBOSE",
        ]
        # A keyword the caller sets replaces the default: sshd keeps the first value of most
        # keywords but the last of some (MaxStartups, OpenSSH 9.2), so never give both.
        mine = {line.split(None, 1)[0].lower() for line in extra if line.strip()}
        lines = [line for line in lines if line.split(None, 1)[0].lower() not in mine] + list(extra)
        path = self.dir / "sshd_config"
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self, pam_stack_lines: list[str], mode: str = PASSWORD, extra_config: list[str] | None = None,
              timeout: float = 20, *, keytab: str | os.PathLike[str] | None = None,
              krb5_config: str | os.PathLike[str] | None = None) -> Sshd:
        """Write the PAM service (:attr:`service`) and config, start sshd -D, wait until it listens.

        ``mode=GSSAPI`` needs ``keytab`` (host/localhost keys) and ``krb5_config`` (the realm's
        krb5.conf): both reach sshd through its environment, as a login host's /etc would.
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        if mode == GSSAPI and (keytab is None or krb5_config is None):
            raise ValueError("mode=GSSAPI needs keytab= and krb5_config=")
        self.keytab = Path(keytab) if keytab is not None else None
        self.krb5_config = str(krb5_config) if krb5_config is not None else None
        if self.proc is not None:
            self.stop()
        self.mode = mode
        sshd = SSHD
        if self.pam == PAM_REAL:
            self.service = self.pamwrap.service(self.service_prefix, pam_stack_lines)
            link = self.dir / self.service
            link.symlink_to(SSHD)
            sshd = str(link)
        else:
            self.service = self.pamwrap.service("sshd", pam_stack_lines)
        if not self.host_key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.host_key)],
                           check=True, capture_output=True)
        # sshd refuses to start without its privilege-separation chroot directory.
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        last_error = ""
        for _attempt in range(3):  # another engineer may grab the port between probe and bind
            self.port = free_port()
            config = self._config(mode, extra_config or [])
            check = subprocess.run([SSHD, "-t", "-f", str(config)], capture_output=True, text=True)
            if check.returncode != 0:
                raise RuntimeError(f"sshd -t rejected the config: {check.stderr.strip()}")
            log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
            try:
                self.proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], env=self._server_env(),
                                             stdin=subprocess.DEVNULL, stdout=log, stderr=log)
            finally:
                log.close()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                if f"listening on 127.0.0.1 port {self.port}" in self.log():
                    return self
                time.sleep(0.05)
            last_error = self.log()[-2000:]
            self.stop()
        raise RuntimeError(f"private sshd did not start:\n{last_error}")

    def _server_env(self) -> dict[str, str]:
        env = self.pamwrap.env()
        env.pop("KRB5CCNAME", None)
        if self.keytab is not None:
            env["KRB5_KTNAME"] = f"FILE:{self.keytab}"
        if self.krb5_config is not None:
            env["KRB5_CONFIG"] = self.krb5_config
        return env

    def log(self) -> str:
        """sshd's own log (-e: everything it would send to syslog)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        """Stop this sshd (SIGTERM to its listener; sessions already closed by the client)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def close(self) -> None:
        """stop() and remove the temporary directories (and a real /etc/pam.d service), also when
        stop() fails."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
            if self._own_pamwrap:
                self.pamwrap.close()

    def __enter__(self) -> Sshd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- client -----------------------------------------------------------
    def ssh_argv(self, user: str, command: str, mode: str | None = None, prompts: int = 1) -> list[str]:
        """The ssh client command line (without sshpass) for a password login to this server.

        ``prompts`` is ssh's NumberOfPasswordPrompts: a keyboard-interactive dialogue of several
        questions (an expired password's change, an OTP token) needs one per question.
        """
        method = mode or self.mode
        return [
            "ssh", "-F", "/dev/null", "-T",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", f"PreferredAuthentications={method}", "-o", "PubkeyAuthentication=no",
            "-o", "GSSAPIAuthentication=no", "-o", f"NumberOfPasswordPrompts={prompts}",
            "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR",
            "-p", str(self.port), f"{user}@127.0.0.1", command,
        ]

    def pty_client(self, pexpect: Any, user: str, command: str, prompts: int, mode: str | None = None) -> Any:
        """``ssh user@server command`` on a pty through ``pexpect`` (the module, a test extra), for
        a dialogue sshpass cannot hold; the caller answers its questions and closes it."""
        argv = self.ssh_argv(user, command, mode, prompts)
        return pexpect.spawn(argv[0], argv[1:], encoding="utf-8", timeout=30,
                             env={"PATH": "/usr/bin:/bin", "HOME": str(self.dir)})

    def spawn(self, user: str, password: str, command: str, mode: str | None = None,
              **popen: object) -> subprocess.Popen[str]:
        """Start ``ssh user@server command`` with a password login; the password travels on a pipe.

        sshpass reads it from an inherited pipe (``sshpass -d FD``), never argv or environ.
        ``popen`` sets stdin/stdout/stderr (default: no stdin, output captured as text).
        """
        read_fd, write_fd = os.pipe()
        try:
            os.write(write_fd, password.encode() + b"\n")
        finally:
            os.close(write_fd)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.dir), "LANG": "C"}
        popen.setdefault("stdin", subprocess.DEVNULL)
        popen.setdefault("stdout", subprocess.PIPE)
        popen.setdefault("stderr", subprocess.PIPE)
        try:
            return subprocess.Popen(  # type: ignore[call-overload]
                ["sshpass", "-d", str(read_fd), *self.ssh_argv(user, command, mode)],
                pass_fds=(read_fd,), env=env, text=True, **popen)
        finally:
            os.close(read_fd)

    def authorize(self, user: str) -> None:
        """mode=PUBKEY: let the client key log in as ``user`` (authorized_keys/<user>, root-owned)."""
        if not self.client_key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.client_key)],
                           check=True, capture_output=True)
        # sshd reads the file as the user: the directories on the way must let the user through.
        self.dir.chmod(0o711)
        self.authorized.mkdir(mode=0o755, exist_ok=True)
        keys = self.authorized / user
        keys.write_text(self.client_key.with_suffix(".pub").read_text())
        keys.chmod(0o644)

    def pubkey_spawn(self, user: str, command: str, **popen: object) -> subprocess.Popen[str]:
        """Start a public-key ``ssh user@127.0.0.1 command`` (no password, no ticket).

        Call :meth:`authorize` for the user first.
        """
        argv = ["ssh", "-F", "/dev/null", "-T", "-i", str(self.client_key), "-o", "IdentitiesOnly=yes",
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "PreferredAuthentications=publickey", "-o", "GSSAPIAuthentication=no",
                "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR",
                "-p", str(self.port), f"{user}@127.0.0.1", command]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.dir), "LANG": "C"}
        popen.setdefault("stdin", subprocess.DEVNULL)
        popen.setdefault("stdout", subprocess.PIPE)
        popen.setdefault("stderr", subprocess.PIPE)
        return subprocess.Popen(argv, env=env, text=True, **popen)  # type: ignore[call-overload]

    def gss_argv(self, user: str, command: str, delegate: bool = True) -> list[str]:
        """``ssh`` with GSSAPI only (``-o GSSAPIDelegateCredentials=yes|no``) to ``user@localhost``."""
        return [
            "ssh", "-F", "/dev/null", "-T", "-4",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "PreferredAuthentications=gssapi-with-mic", "-o", "PubkeyAuthentication=no",
            "-o", "PasswordAuthentication=no", "-o", "KbdInteractiveAuthentication=no",
            "-o", "GSSAPIAuthentication=yes",
            "-o", f"GSSAPIDelegateCredentials={'yes' if delegate else 'no'}",
            "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR",
            "-p", str(self.port), f"{user}@localhost", command,
        ]

    def gss_spawn(self, user: str, command: str, ccache: str, *, delegate: bool = True,
                  krb5_config: str | None = None, **popen: object) -> subprocess.Popen[str]:
        """Start a passwordless GSSAPI ``ssh user@localhost command`` with the client's ``ccache``.

        The client (this process's uid) reads its TGT from ``ccache`` (KRB5CCNAME), never from
        the user's persistent collection, so what arrives on the server is only the forwarded copy.
        """
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.dir), "LANG": "C",
               "KRB5CCNAME": ccache, "KRB5_CONFIG": krb5_config or self.krb5_config or ""}
        popen.setdefault("stdin", subprocess.DEVNULL)
        popen.setdefault("stdout", subprocess.PIPE)
        popen.setdefault("stderr", subprocess.PIPE)
        return subprocess.Popen(self.gss_argv(user, command, delegate), env=env, text=True,  # type: ignore[call-overload]
                                **popen)

    def gss_login(self, user: str, command: str, ccache: str, *, delegate: bool = True,
                  timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """:meth:`gss_spawn` and wait for it."""
        return _finish(self.gss_spawn(user, command, ccache, delegate=delegate), timeout)

    def login(self, user: str, password: str, command: str, mode: str | None = None,
              timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Log in as ``user`` with ``password``, run ``command``, wait for it (see :meth:`spawn`)."""
        return _finish(self.spawn(user, password, command, mode), timeout)
