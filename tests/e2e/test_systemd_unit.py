"""The shipped unit under a real systemd: etc/systemd/keyinit-ticketd.service as installed, sandbox on.

A Debian 12 systemd boots as PID 1 of its own namespaces (pam_keyinit_py.lab.systemd).  Inside it
the project is installed as a user installs it (``keyinit install``, ``pam-auth-update --enable
keyinit-krb5``, ``systemctl enable --now``), and a login goes through the stack pam-auth-update
wrote: pamtester authenticates a user with a locked local password against the lab KDC on
loopback (the container shares the host's network), the service validates the TGT with the host
keytab and writes it into KEYRING:persistent:<uid> as the user, renews it, survives kill -9
(systemd restarts it, the session is still tracked and renewed), and clears it at logout.  Every
kernel call the unit's SystemCallFilter, capability bounding set, KeyringMode=private and
ProtectSystem=strict could break is on that path: add_key/keyctl, setresuid/setresgid,
pidfd_open, the KDC connection.

Kernel keyrings are not namespaced, so the test reads the user's persistent keyring from the
host, through the same uid.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pam_keyinit_py.lab import systemd as sd
from pam_keyinit_py.lab import users
from pam_keyinit_py.lab.sshd import free_port as sshd_free_port
from tests.conftest import REPO, require, require_root
from tests.kdc.ticketd import persistent_caches

# The first run on a machine builds the root filesystem (debootstrap, about a minute) in the fixture.
pytestmark = pytest.mark.timeout(900)

UNIT = "keyinit-ticketd.service"
LAB_KRB5 = "/etc/keyinit-lab/krb5.conf"
PROBE_OUT = "/run/pkk-probe.out"
RELEASE = "/run/pkk-release"
#: The PAM service of the test login: the pam-auth-update stacks, plus a probe that records what
#: the open session holds and keeps the session open until the test releases it.
PAM_SERVICE = """\
@include common-auth
@include common-account
@include common-session
session optional pam_exec.so /usr/local/sbin/pkk-probe
"""
PROBE = f"""\
#!/bin/sh
[ "$PAM_TYPE" = open_session ] || exit 0
uid=$(id -u "$PAM_USER"); gid=$(id -g "$PAM_USER")
{{ keyctl rdescribe @s; setpriv --reuid="$uid" --regid="$gid" --clear-groups \\
    env KRB5_CONFIG={LAB_KRB5} klist; }} > {PROBE_OUT}.tmp 2>&1
mv {PROBE_OUT}.tmp {PROBE_OUT}
while [ ! -e {RELEASE} ]; do sleep 0.1; done
"""


def _mounts() -> str:
    return Path("/proc/mounts").read_text()


@pytest.fixture(scope="module")
def container() -> Iterator[sd.SystemdContainer]:
    """A booted systemd with this checkout installed in it; stopped, with nothing left, afterwards."""
    require_root()
    missing = sd.available()
    require(missing is None, f"cannot boot systemd here: {missing}")
    wheels = sd.wheelhouse()
    box = sd.SystemdContainer(binds={str(REPO): sd.SRC_IN, str(wheels): sd.WHEELS_IN})
    box.start()
    print(f"\nsystemd booted to {box.state!r} in {box.boot_seconds:.2f} s")
    try:
        t0 = time.monotonic()
        box.install_project()
        print(f"keyinit install inside: {time.monotonic() - t0:.1f} s")
        box.run(["pam-auth-update", "--enable", "keyinit-krb5"], env={"DEBIAN_FRONTEND": "noninteractive"})
        yield box
    finally:
        pid, name = box.pid, box.dir.name if box.dir else ""
        box.stop()
        # Nothing of the container may outlive it: its init, its mounts, its cgroups.
        assert not Path(f"/proc/{pid}").exists(), "systemd still running after stop()"
        assert name
        # Only this container's mounts are looked for: other tests on the machine may mount meanwhile.
        assert not [m for m in _mounts().splitlines() if name in m], "container mounts left"
        assert not Path("/var/tmp", name).exists(), "overlay directories left"
        left = [str(p) for p in Path("/sys/fs/cgroup").glob(f"*/**/{name}")]
        assert not left, f"cgroups left: {left}"


@pytest.fixture(scope="module")
def service(container: sd.SystemdContainer, realm) -> sd.SystemdContainer:  # noqa: ANN001
    """The realm's krb5.conf and host keytab in place, KRB5_CONFIG by a drop-in, the unit enabled --now."""
    conf = realm.krb5_conf.read_text()
    conf = re.sub(r"default_keytab_name = \S+", "default_keytab_name = FILE:/etc/krb5.keytab", conf)
    container.write(LAB_KRB5, conf)
    container.write("/etc/krb5.keytab", realm.keytab_path.read_bytes(), 0o600)
    container.write(f"/etc/systemd/system/{UNIT}.d/lab-realm.conf",
                    f"[Service]\nEnvironment=KRB5_CONFIG={LAB_KRB5}\n")
    container.write("/etc/pam.d/pkk-login", PAM_SERVICE)
    container.write("/usr/local/sbin/pkk-probe", PROBE, 0o755)
    container.run(["systemctl", "daemon-reload"])
    t0 = time.monotonic()
    container.run(["systemctl", "enable", "--now", UNIT])  # returns once READY=1 arrived (Type=notify)
    print(f"systemctl enable --now: {time.monotonic() - t0:.2f} s")
    return container


def _status(box: sd.SystemdContainer) -> dict[str, Any]:
    """``keyinit status --json`` inside: the installed CLI over the unit's socket."""
    return json.loads(box.run(["keyinit", "status", "--json"]).stdout)


def _wait(what: str, predicate, timeout: float, box: sd.SystemdContainer) -> Any:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{_journal(box)}")


def _journal(box: sd.SystemdContainer) -> str:
    return box.run(["journalctl", "--no-pager", "-o", "short-monotonic", "-u", UNIT], check=False).stdout


def _login(box: sd.SystemdContainer, pam_service: str, user: str, password: str) -> subprocess.Popen[str]:
    """pamtester inside through ``pam_service``, the password on its stdin; wait until the probe saw
    the open session (which the probe then holds open until :data:`RELEASE` exists)."""
    box.run(["rm", "-f", PROBE_OUT, RELEASE])
    read_fd, write_fd = os.pipe()
    os.write(write_fd, password.encode() + b"\n")
    os.close(write_fd)
    proc = subprocess.Popen(
        ["nsenter", "-t", str(box.pid), "-m", "-p", "-u", "-i", "-r", "-w", "env", "-i",
         f"PATH={sd.PATH_IN}", "pamtester", "-v", pam_service, user, "authenticate", "acct_mgmt",
         "open_session", "close_session"],
        stdin=read_fd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    os.close(read_fd)
    probe = box.path(PROBE_OUT)
    _wait("the session's probe", lambda: probe.exists() or proc.poll() is not None, 30, box)
    assert probe.exists(), f"pamtester ended early: {proc.communicate()}\n{_journal(box)}"
    return proc


@pytest.fixture
def host_user(service: sd.SystemdContainer) -> Iterator[users.LabUser]:
    """A user made on the host (that reserves the uid there: keyrings are per uid, not per namespace)
    and the same name, uid and gid inside with a locked local password (only the KDC lets it in).
    Removed from both afterwards, with its keys."""
    box = service
    host_user = users.create("pks")
    try:
        box.run(["groupadd", "-g", str(host_user.gid), host_user.name])
        box.run(["useradd", "-u", str(host_user.uid), "-g", str(host_user.gid), "-m", "-s", "/bin/sh",
                 host_user.name])
        yield host_user
    finally:
        box.run(["userdel", "-r", host_user.name], check=False)
        box.run(["groupdel", host_user.name], check=False)
        users.remove(host_user)


def test_unit_reaches_active_through_notify(service: sd.SystemdContainer) -> None:
    props = service.show(UNIT, "ActiveState", "SubState", "Type", "NotifyAccess", "MainPID", "Result",
                         "ExecMainStartTimestampMonotonic", "ActiveEnterTimestampMonotonic",
                         "FragmentPath", "DropInPaths", "KeyringMode", "ProtectSystem")
    assert props["ActiveState"] == "active" and props["SubState"] == "running", props
    assert props["Type"] == "notify" and props["Result"] == "success", props
    # The shipped unit, as `keyinit install` put it there, with only the lab's drop-in on top.
    assert props["FragmentPath"] == f"/etc/systemd/system/{UNIT}", props
    assert props["DropInPaths"].endswith("lab-realm.conf"), props
    assert props["KeyringMode"] == "private" and props["ProtectSystem"] == "strict", props
    ready = (int(props["ActiveEnterTimestampMonotonic"])
             - int(props["ExecMainStartTimestampMonotonic"])) / 1e6
    print(f"exec to READY=1: {ready:.3f} s")
    assert ready > 0
    # The sandbox is really in force on that process (a container could have quietly dropped it):
    # seccomp filter mode, no_new_privs, and the bounding set of exactly the unit's capabilities.
    proc = dict(line.split(":\t", 1) for line in
                service.run(["cat", f"/proc/{props['MainPID']}/status"]).stdout.splitlines() if ":\t" in line)
    assert proc["Seccomp"].strip() == "2" and proc["NoNewPrivs"].strip() == "1", proc
    caps = {2: "CAP_DAC_READ_SEARCH", 6: "CAP_SETGID", 7: "CAP_SETUID"}
    assert int(proc["CapBnd"], 16) == sum(1 << bit for bit in caps), proc["CapBnd"]
    # `keyinit status` answers over the unit's socket, from the unit's main process.
    status = _status(service)
    assert status["service"]["pid"] == int(props["MainPID"]), (status, props)
    installed = Path(service.path(f"/etc/systemd/system/{UNIT}")).read_text()
    shipped = (REPO / "etc/systemd" / UNIT).read_text()
    assert installed == shipped.replace("/usr/local/bin/keyinit-ticketd",
                                        "/opt/pam-keyinit-py/bin/keyinit-ticketd")


def test_login_renew_kill9_logout_under_the_sandbox(service: sd.SystemdContainer, realm,  # noqa: ANN001
        host_user: users.LabUser) -> None:
    pamtester: subprocess.Popen[str] | None = None
    try:
        uid, gid, name = host_user.uid, host_user.gid, host_user.name
        password = "Pw-" + os.urandom(9).hex()
        principal = realm.add_principal(name, password, maxlife=20, maxrenew=600)  # renewed about every 10 s
        # The login: pamtester inside, through the stacks pam-auth-update wrote.
        pamtester = _login(service, "pkk-login", name, password)
        seen = service.path(PROBE_OUT).read_text()
        assert f"keyring;{uid};{gid};" in seen and ";_ses" in seen, seen  # the user's own session keyring
        assert f"Ticket cache: KEYRING:persistent:{uid}:" in seen, seen
        assert f"Default principal: {principal}" in seen, seen

        # The hardened service wrote the cache as the user (setresuid + add_key under the filter).
        caches = persistent_caches(uid)
        assert caches and all(owner == uid for keys in caches.values() for owner, _ in keys), caches
        status = _status(service)
        assert [s["uid"] for s in status["sessions"]] == [uid], status
        _wait("a renewal", lambda: _status(service)["service"]["renewals"] >= 1, 40, service)

        # kill -9: systemd restarts it (Restart=on-failure), the open session is tracked again and renewed.
        old = int(service.show(UNIT, "MainPID")["MainPID"])
        service.run(["systemctl", "kill", "-s", "KILL", UNIT])
        _wait("the restart", lambda: (p := service.show(UNIT, "MainPID", "ActiveState", "NRestarts"))
              ["ActiveState"] == "active" and int(p["MainPID"]) not in (0, old) and p, 30, service)
        assert service.show(UNIT, "NRestarts")["NRestarts"] == "1"
        status = _status(service)
        assert [s["uid"] for s in status["sessions"]] == [uid], status
        _wait("a renewal after the restart", lambda: _status(service)["service"]["renewals"] >= 1, 40,
              service)
        assert persistent_caches(uid)

        # Logout: close_session, the last one for the uid, so the service clears what it acquired.
        service.write(RELEASE, "")
        out, err = pamtester.communicate(timeout=30)
        assert pamtester.returncode == 0, out + err + _journal(service)
        _wait("the caches cleared", lambda: persistent_caches(uid) == {}, 10, service)
        journal = _journal(service)
        assert password not in journal and password not in out + err
        assert _status(service)["sessions"] == []
        check_user_journal_and_metrics(service, uid, principal)
    finally:
        if pamtester is not None and pamtester.poll() is None:
            pamtester.kill()
            pamtester.wait()


def check_user_journal_and_metrics(box: sd.SystemdContainer, uid: int, principal: str) -> None:
    """``journalctl KEYINIT_UID=<uid>`` finds this login's lines (auth, session, renewals, logout) and
    no other uid's; ``keyinit metrics`` (the installed CLI, root) parses and counts the renewal."""
    from prometheus_client.parser import text_string_to_metric_families

    out = box.run(["journalctl", "--no-pager", "-o", "json", f"KEYINIT_UID={uid}"]).stdout
    lines = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert lines and all(x["KEYINIT_UID"] == str(uid) for x in lines), lines
    assert all(x["_SYSTEMD_UNIT"] == UNIT for x in lines), lines
    events = {x["KEYINIT_EVENT"] for x in lines}
    assert {"auth", "open", "renew", "close", "cleared"} <= events, (events, _journal(box))
    auth = [x for x in lines if x["KEYINIT_EVENT"] == "auth"][-1]
    assert auth["KEYINIT_PRINCIPAL"] == principal and auth["KEYINIT_CODE"] == "ok", auth
    assert auth["KEYINIT_CCACHE"].startswith(f"KEYRING:persistent:{uid}:"), auth
    renew = [x for x in lines if x["KEYINIT_EVENT"] == "renew"][-1]
    assert renew["KEYINIT_CODE"] == "ok" and renew["KEYINIT_PRINCIPAL"] == principal, renew

    text = box.run(["keyinit", "metrics"]).stdout
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    # Counters start again at the kill -9 restart; the session was renewed after it.
    assert samples[("keyinit_renewals_total", (("code", "ok"),))] >= 1, text
    assert samples[("keyinit_sessions", ())] == 0, text


def test_security_exposure(service: sd.SystemdContainer) -> None:
    """``systemd-analyze security`` rates the unit; the score goes in the report and must stay low."""
    out = service.run(["systemd-analyze", "security", "--no-pager", UNIT], check=False).stdout
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+) (\w+)", out)
    assert match, out
    print(f"\n{match.group(0)}")
    # 10 is an unsandboxed root service; systemd calls < 4.0 "OK" (2.0 and less "SAFE").
    assert float(match.group(1)) < 4.0, out


#: A login that brings its own TGT (sshd's GSSAPI delegation): the stack only has the PAM
#: environment's KRB5CCNAME naming a FILE cache in /tmp, as sshd's ssh_gssapi_storecreds leaves it.
PAM_DELEGATED = """\
auth required pam_permit.so
account required pam_permit.so
session required pam_env.so readenv=0 user_readenv=0 conffile=/etc/pkk-delegated.env
@include common-session
session optional pam_exec.so /usr/local/sbin/pkk-probe
"""


def test_delegated_file_cache_is_moved_into_the_keyring(service: sd.SystemdContainer, realm,  # noqa: ANN001
        host_user: users.LabUser) -> None:
    """The service must see the host's /tmp: a delegated FILE:/tmp/krb5cc_<uid>_* is read and removed."""
    pamtester: subprocess.Popen[str] | None = None
    try:
        uid, gid, name = host_user.uid, host_user.gid, host_user.name
        password = "Pw-" + os.urandom(9).hex()
        principal = realm.add_principal(name, password)
        cache = f"/tmp/krb5cc_{uid}_pkkdeleg"
        with tempfile.TemporaryDirectory() as tmp:
            kinit = subprocess.run(["kinit", "-c", f"FILE:{tmp}/cc", principal], input=password + "\n",
                                   env={**realm.env, "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                                   check=False)
            assert kinit.returncode == 0, kinit.stderr
            service.write(cache, Path(tmp, "cc").read_bytes(), 0o600)
        os.chown(service.path(cache), uid, gid)
        service.write("/etc/pkk-delegated.env", f"KRB5CCNAME DEFAULT=FILE:{cache}\n")
        service.write("/etc/pam.d/pkk-delegated", PAM_DELEGATED)
        pamtester = _login(service, "pkk-delegated", name, "")
        seen = service.path(PROBE_OUT).read_text()
        assert f"Ticket cache: KEYRING:persistent:{uid}:" in seen, seen + _journal(service)
        assert f"Default principal: {principal}" in seen, seen
        assert not service.path(cache).exists(), "the delegated FILE cache was not moved"
        tickets = _status(service)["tickets"]
        assert [t.get("origin") for t in tickets if t.get("uid") == uid] == ["delegated"], tickets
        service.write(RELEASE, "")
        out, err = pamtester.communicate(timeout=30)
        assert pamtester.returncode == 0, out + err + _journal(service)
        _wait("the caches cleared", lambda: persistent_caches(uid) == {}, 10, service)
    finally:
        if pamtester is not None and pamtester.poll() is None:
            pamtester.kill()
            pamtester.wait()


def test_k5login_in_home_is_honoured(service: sd.SystemdContainer, realm,  # noqa: ANN001
        host_user: users.LabUser) -> None:
    """The account step's krb5_kuserok reads ~/.k5login in the service: the unit must let it see /home.

    A user whose .k5login does not list their own principal may not log in with it (MIT kuserok).
    The same user without that file may (an2ln).  Under ProtectHome=yes /home is empty for the
    service, so the refusal silently became a success.
    """
    name = host_user.name
    password = "Pw-" + os.urandom(9).hex()
    realm.add_principal(name, password)
    k5login = service.path(f"/home/{name}/.k5login")
    k5login.write_text(f"nobody-else@{realm.realm}\n")
    os.chown(k5login, host_user.uid, host_user.gid)

    def pamtester(*calls: str) -> subprocess.CompletedProcess[str]:
        return service.run(["pamtester", "-v", "pkk-login", name, "authenticate", "acct_mgmt", *calls],
                           input=password + "\n", check=False)

    refused = pamtester()
    assert refused.returncode != 0 and "acct_mgmt" in refused.stderr, refused.stdout + refused.stderr
    assert "may not log in to it" in _journal(service)
    k5login.unlink()
    # The whole login, its session too: an auth no session follows stays pending (its TGT held)
    # for pending_auth_timeout, past this test, under the uid the next test's user gets.
    service.write(RELEASE, "")  # the probe of pkk-login's session returns at once
    allowed = pamtester("open_session", "close_session")
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr + _journal(service)
    _wait("the caches cleared at logout", lambda: persistent_caches(host_user.uid) == {}, 15, service)


def _journal_json(box: sd.SystemdContainer, *match: str) -> list[dict[str, Any]]:
    out = box.run(["journalctl", "--no-pager", "-o", "json", "-u", UNIT, *match]).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_journal_lines_carry_structured_fields(service: sd.SystemdContainer,
                                               host_user: users.LabUser) -> None:
    """Under systemd the service logs to journald natively: PRIORITY per level, its identifier,
    the code location, KEYINIT_* fields to match on, and no stderr prefix inside MESSAGE."""
    ready = _journal_json(service, "KEYINIT_EVENT=ready")  # journalctl's own field match
    assert ready, _journal(service)
    line = ready[-1]
    assert line["MESSAGE"].startswith("listening on /run/keyinit/ticketd.sock"), line
    assert line["PRIORITY"] == "6" and line["SYSLOG_IDENTIFIER"] == "keyinit-ticketd", line
    assert line["CODE_FUNC"] == "main" and line["CODE_FILE"].endswith("/tickets/daemon.py"), line
    # A warning is a warning for journald too: a delegated cache that is not there (priority 4).
    service.write("/etc/pkk-delegated.env", f"KRB5CCNAME DEFAULT=FILE:/tmp/krb5cc_{host_user.uid}_missing\n")
    service.write("/etc/pam.d/pkk-delegated", PAM_DELEGATED)
    pamtester = _login(service, "pkk-delegated", host_user.name, "")
    service.write(RELEASE, "")
    pamtester.communicate(timeout=30)
    warnings = [x for x in _journal_json(service, "PRIORITY=4") if "_missing" in x["MESSAGE"]]
    assert warnings and warnings[-1]["MESSAGE"].startswith("session "), _journal(service)
    mine = _journal_json(service, "SYSLOG_IDENTIFIER=keyinit-ticketd")
    assert mine and not any("keyinit-ticketd[" in x["MESSAGE"] for x in mine), mine


def test_ssh_login_through_the_containers_sshd(service: sd.SystemdContainer, host_user: users.LabUser,
                                               realm) -> None:  # noqa: ANN001
    """An ssh password login to the container's own sshd (Debian's /etc/pam.d/sshd, the stacks of
    pam-auth-update) on a loopback port: the session's klist shows the TGT the unit wrote as the
    user, and the logout clears it."""
    uid, name = host_user.uid, host_user.name
    password = "Pw-" + os.urandom(9).hex()
    principal = realm.add_principal(name, password)
    port = sshd_free_port()
    service.run(["mkdir", "-p", "/run/sshd"])
    service.run(["systemd-run", "--unit", "pkk-sshd",
                 "/usr/sbin/sshd", "-D", "-e", "-o", f"Port={port}", "-o", "ListenAddress=127.0.0.1",
                 "-o", "PasswordAuthentication=yes", "-o", "KbdInteractiveAuthentication=no",
                 "-o", "UsePAM=yes"])
    try:
        _wait("sshd listening", lambda: _listening(port), 20, service)
        read_fd, write_fd = os.pipe()
        os.write(write_fd, password.encode() + b"\n")
        os.close(write_fd)
        try:
            res = subprocess.run(
                ["sshpass", "-d", str(read_fd), "ssh", "-F", "/dev/null", "-T",
                 "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                 "-o", "PreferredAuthentications=password", "-o", "PubkeyAuthentication=no",
                 "-o", "GSSAPIAuthentication=no", "-o", "NumberOfPasswordPrompts=1", "-o", "LogLevel=ERROR",
                 "-p", str(port), f"{name}@127.0.0.1", f"KRB5_CONFIG={LAB_KRB5} klist; keyctl rdescribe @s"],
                pass_fds=(read_fd,), env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "LANG": "C"},
                capture_output=True, text=True, timeout=60, check=False)
        finally:
            os.close(read_fd)
        sshd_log = service.run(["journalctl", "--no-pager", "-u", "pkk-sshd"], check=False).stdout
        assert res.returncode == 0, res.stdout + res.stderr + sshd_log + _journal(service)
        assert f"Ticket cache: KEYRING:persistent:{uid}:" in res.stdout, res.stdout
        assert f"Default principal: {principal}" in res.stdout, res.stdout
        assert f"keyring;{uid};" in res.stdout and ";_ses" in res.stdout, res.stdout
        assert password not in sshd_log + _journal(service)
        _wait("the caches cleared at logout", lambda: persistent_caches(uid) == {}, 15, service)
    finally:
        service.run(["systemctl", "stop", "pkk-sshd"], check=False)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0
