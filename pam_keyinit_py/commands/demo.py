"""``keyinit demo`` (what ``make demo`` runs): the whole login story on the embedded default, step by step.

1. a throwaway MIT realm on loopback (with the host keytab a login host has), a local user
   whose only password is the Kerberos one (the local one is locked), keyinit-ticketd, and a
   private sshd on a free loopback port whose PAM stack is what
   ``pam-auth-update --enable keyinit-krb5`` writes (the real tool, over private copies);
2. a real ssh login with the Kerberos password: the service gets the TGT and validates it
   against the host keytab before the login is let in;
3. ``keyctl show`` in the session: the ``_ses`` keyring with the persistent keyring and its
   ccache linked in;
4. ``klist``: ``KEYRING:persistent:<uid>`` with the krbtgt;
5. a renewal by the service (short tickets), with the new end time;
6. logout, and the ticket is gone.

Everything is torn down at the end, success or not; a failure names its step.

The demo runs from a source checkout: it drives ``pam_keyinit_py.lab``, which the wheel does
not ship, so an installed ``keyinit`` has no ``demo`` verb (:func:`register` adds none).
"""

from __future__ import annotations

import argparse
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..ccname import collection_name
from ..timefmt import KLIST
from ..timefmt import when as _when

# The lab is imported where it is used: `keyinit --help` imports this module, also in an
# interpreter without cffi (the bare /usr/bin/python3 that runs `keyinit install`), and the lab's
# users module needs layer 0.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..lab import pamwrap as lab_pamwrap
    from ..lab import realm as lab_realm
    from ..lab import sshd as lab_sshd
    from ..lab import users as lab_users
    from ..lab.ticketd import TicketD

TICKET_LIFE = 40  # seconds; the service renews at half-life
RENEW_FRACTION = 0.5


class DemoError(RuntimeError):
    """A step failed; the message says which and why."""


def say(text: str) -> None:
    """One progress line for the person watching."""
    print(text, flush=True)


def show(output: str) -> None:
    """Indent a command's output under its step."""
    for line in output.rstrip("\n").splitlines():
        print(f"    {line}")
    sys.stdout.flush()


class ShellSession:
    """A real ssh login kept open, with commands fed on stdin and their output read back."""

    def __init__(self, sshd: lab_sshd.Sshd, user: str, password: str) -> None:
        self.proc = sshd.spawn(user, password, "exec /bin/bash --noprofile --norc",
                               stdin=subprocess.PIPE, stderr=subprocess.STDOUT)
        self._n = 0
        self._buf = b""

    def run(self, command: str, timeout: float = 30) -> str:
        """Run ``command`` in the session; return its output (stdout and stderr)."""
        assert self.proc.stdin and self.proc.stdout
        self._n += 1
        marker = f"__keyinit_demo_done_{self._n}__\n".encode()
        self.proc.stdin.write(f"{command} 2>&1; echo {marker.decode().strip()}\n")
        self.proc.stdin.flush()
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        # Raw reads: a buffered readline() would hide data that select() no longer sees.
        while marker not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise DemoError(f"no answer from the ssh session to {command!r}: {self._buf.decode()}")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise DemoError(f"the ssh session ended: {self._buf.decode().strip() or 'login failed'}")
            self._buf += chunk
        out, _, self._buf = self._buf.partition(marker)
        return out.decode(errors="replace")

    def logout(self) -> int:
        """exit the shell and wait for ssh to finish (sshd runs close_session)."""
        if self.proc.poll() is None:
            assert self.proc.stdin
            try:
                self.proc.stdin.write("exit\n")
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


def check_ready() -> None:
    """What the demo needs on this machine (make setup installs it)."""
    from ..lab import pamconfigs as lab_pamconfigs
    from ..lab import pamwrap as lab_pamwrap
    from ..lab import realm as lab_realm
    from ..lab import sshd as lab_sshd

    if os.geteuid() != 0:
        raise DemoError("preflight: run as root (it starts a KDC and sshd and creates a user)")
    for missing in (lab_pamwrap.available(), lab_sshd.available(), lab_pamconfigs.available()):
        if missing:
            raise DemoError(f"preflight: {missing} (run make setup)")
    if not lab_realm.available():
        raise DemoError("preflight: the MIT KDC tools are missing (run make setup)")


class Demo:
    """The demo's resources, created step by step and torn down in reverse."""

    def __init__(self) -> None:
        self.realm: lab_realm.Realm | None = None
        self.user: lab_users.LabUser | None = None
        self.daemon: TicketD | None = None
        self.pam: lab_pamwrap.PamWrapper | None = None
        self.sshd: lab_sshd.Sshd | None = None
        self.session: ShellSession | None = None
        self.password = ""
        self.workdir = Path(tempfile.mkdtemp(prefix="keyinit-demo-"))
        os.chmod(self.workdir, 0o755)

    def step(self, number: int, title: str) -> None:
        """Announce a step."""
        say(f"\n[{number}/6] {title}")

    def tickets(self) -> list[dict]:
        """The service's view of the demo user's tickets."""
        assert self.daemon and self.user
        reply = self.daemon.request({"op": "tickets", "uid": self.user.uid})
        if not reply.get("ok"):
            raise DemoError(f"the service did not answer: {reply.get('error')}")
        return reply["tickets"]

    def setup(self) -> None:
        """Step 1: realm, user, service, sshd."""
        from ..lab import pamconfigs as lab_pamconfigs
        from ..lab import pamwrap as lab_pamwrap
        from ..lab import realm as lab_realm
        from ..lab import sshd as lab_sshd
        from ..lab import users as lab_users
        from ..lab.ticketd import TicketD

        self.step(1, "throwaway realm, a user, keyinit-ticketd, and a private sshd with this PAM stack")
        self.realm = lab_realm.Realm.start(None, realm="DEMO.KEYINIT.TEST", maxlife=f"{TICKET_LIFE}s",
                                           maxrenew="1h")
        say(f"    realm {self.realm.realm}: krb5kdc on 127.0.0.1:{self.realm.kdc_port}")
        self.password = "demo-" + os.urandom(9).hex()  # the Kerberos password; the local one stays locked
        self.user = lab_users.create("kidemo")
        principal = self.realm.add_principal(self.user.name, self.password, maxlife=TICKET_LIFE,
                                             maxrenew="1h")
        say(f"    user {self.user.name} (uid {self.user.uid}), local password locked, principal {principal}, "
            f"tickets live {TICKET_LIFE}s")
        say(f"    host keytab {self.realm.keytab_path} (krb5.conf default_keytab_name): TGTs are validated")
        self.daemon = TicketD(self.workdir / "ticketd", self.realm.env, renew_fraction=RENEW_FRACTION,
                              log_level="INFO")
        os.chmod(self.daemon.dir, 0o755)
        self.daemon.start()
        say(f"    keyinit-ticketd ready (sd_notify READY=1), socket {self.daemon.socket}")
        self.pam = lab_pamwrap.PamWrapper(self.workdir / "pam")
        stacks = lab_pamconfigs.render_stacks(("keyinit-krb5",))
        stack = lab_pamconfigs.service_lines(stacks, self.pam, f"socket={self.daemon.socket}")
        self.sshd = lab_sshd.Sshd(self.pam)
        self.sshd.start(stack, extra_config=[f"SetEnv KRB5_CONFIG={self.realm.krb5_conf}"])
        say(f"    sshd on 127.0.0.1:{self.sshd.port}; its PAM stack (pam-auth-update --enable keyinit-krb5):")
        show("\n".join(stack))

    def login(self) -> None:
        """Step 2: a real ssh login with the Kerberos password, the TGT validated."""
        assert self.sshd and self.user and self.daemon
        self.step(2, f"ssh {self.user.name}@127.0.0.1 -p {self.sshd.port}, the Kerberos password")
        self.session = ShellSession(self.sshd, self.user.name, self.password)
        show(self.session.run("id; echo KRB5_CONFIG=$KRB5_CONFIG"))
        validated = [line.split("INFO ", 1)[-1] for line in self.daemon.log().splitlines()
                     if "(validated with " in line]
        if not validated:
            raise DemoError("step 2: the service logged no validated TGT")
        show(f"keyinit-ticketd: {validated[-1]}")

    def keyrings(self) -> None:
        """Step 3: the session keyring, with the persistent keyring and the ccache inside."""
        assert self.session and self.user
        self.step(3, "keyctl show @s  (inside the ssh session)")
        out = self.session.run("keyctl show @s")
        show(out)
        if "_ses" not in out or f"_persistent.{self.user.uid}" not in out or "krb_ccache" not in out:
            raise DemoError("step 3: the session keyring lacks _ses, the persistent keyring or a ccache")

    def klist(self) -> float:
        """Step 4: klist finds the TGT in KEYRING:persistent:<uid>."""
        assert self.session and self.realm and self.user
        self.step(4, "klist  (inside the ssh session)")
        out = self.session.run("klist")
        show(out)
        if collection_name(self.user.uid) not in out or f"krbtgt/{self.realm.realm}" not in out:
            raise DemoError("step 4: klist shows no krbtgt in KEYRING:persistent")
        tickets = self.tickets()
        if not tickets:
            raise DemoError("step 4: the service tracks no ticket for the user")
        return max(t["endtime"] for t in tickets)

    def renewal(self, first_end: float) -> None:
        """Step 5: wait for the service to renew, then show klist again."""
        assert self.session and self.user
        self.step(5, f"waiting for keyinit-ticketd to renew (at {RENEW_FRACTION:.0%} of the "
                     f"{TICKET_LIFE}s life)")
        say(f"    end time now: {_when(first_end, KLIST)}")
        deadline = time.monotonic() + TICKET_LIFE * 2
        print("    ", end="", flush=True)
        while time.monotonic() < deadline:
            ends = [t["endtime"] for t in self.tickets()]
            if ends and max(ends) > first_end:
                print(flush=True)
                say(f"    renewed: new end time {_when(max(ends), KLIST)}")
                break
            print(".", end="", flush=True)
            time.sleep(2)
        else:
            print(flush=True)
            raise DemoError("step 5: no renewal within twice the ticket life")
        out = self.session.run("klist")
        show(out)
        if collection_name(self.user.uid) not in out:
            raise DemoError("step 5: the ticket is gone after renewal")

    def logout(self) -> None:
        """Step 6: log out; the service clears the ticket after the last session."""
        assert self.session and self.user and self.realm
        self.step(6, "logout; the last session is closed, so the service clears the ticket")
        rc = self.session.logout()
        say(f"    ssh exited with {rc}")
        deadline = time.monotonic() + 10
        while self.tickets() and time.monotonic() < deadline:
            time.sleep(0.2)
        if self.tickets():
            raise DemoError("step 6: the service still holds a ticket after the last logout")
        out = self.user.run(["klist"], env={"KRB5_CONFIG": str(self.realm.krb5_conf)})
        say(f"    klist as {self.user.name}:")
        show(out.stdout + out.stderr)
        if out.returncode == 0:
            raise DemoError("step 6: klist still finds a ticket after logout")

    def teardown(self) -> None:
        """Stop everything and remove the user, its keys and the temporary files."""
        if self.session and self.session.proc.poll() is None:
            self.session.proc.kill()
        if self.sshd:
            self.sshd.close()
        if self.daemon:
            self.daemon.stop()
        if self.realm:
            try:
                self.realm.stop()
            except Exception as exc:  # noqa: BLE001 - keep tearing down
                say(f"    (realm stop: {exc})")
        if self.user:
            from ..lab import users as lab_users

            lab_users.remove(self.user)
        if self.pam:
            self.pam.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def run() -> int:
    """Run the six steps; return 0 on success, 1 (with the failing step named) otherwise."""
    try:
        check_ready()
    except DemoError as exc:
        print(f"demo failed at {exc}", file=sys.stderr)
        return 1
    demo = Demo()
    started = time.monotonic()
    # SIGTERM (a CI timeout, systemd, kill) tears down like Ctrl-C instead of leaving a user,
    # a KDC, sshd and the service behind.
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        demo.setup()
        demo.login()
        demo.keyrings()
        end = demo.klist()
        demo.renewal(end)
        demo.logout()
    except DemoError as exc:
        print(f"\ndemo failed at {exc}", file=sys.stderr)
        if demo.daemon:
            print("--- keyinit-ticketd log (last lines) ---", file=sys.stderr)
            print("\n".join(demo.daemon.log().splitlines()[-20:]), file=sys.stderr)
        return 1
    except Exception as exc:
        print(f"\ndemo failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        say("\ntearing down: sshd, keyinit-ticketd, the realm, the user and its keys")
        demo.teardown()
        signal.signal(signal.SIGTERM, previous)
    say(f"demo passed in {time.monotonic() - started:.0f}s")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``keyinit demo`` where the lab is (a source checkout), else nothing."""
    import importlib.util

    if importlib.util.find_spec("pam_keyinit_py.lab") is None:
        return
    p = sub.add_parser("demo", help="realm, ssh login, ticket shown, renewed and cleared (root)")
    p.set_defaults(func=lambda args: run())
