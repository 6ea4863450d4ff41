"""``keyinit doctor``: check every link from login to a usable ticket, and name the fix.

Each check returns a :class:`Check`; a failed one carries the command or file
that mends it.  The links, in the order a login crosses them: kernel keyrings
and persistent keyrings, key quotas, the shim and pam_python, the PAM lines of
the sshd and login stacks, ``default_ccache_name``, the service socket, the KDC,
the host keytab the service validates TGTs with (the key is there, and its kvno matches the
KDC's; optionally a test principal's TGT validates), and finally — as a given user, with the
uid switched and a clean environment,
the way rpc.gssd and cifs.upcall look — the ticket in the default ccache.
"""

from __future__ import annotations

import os
import pwd
import re
from dataclasses import dataclass
from pathlib import Path

from .keyutils import proc
from .protocol import DEFAULT_SOCKET

PAM_DIR = Path("/etc/pam.d")
SHIM = Path("/lib/security/pam_keyinit_py.py")
PAM_PYTHON = (Path("/lib/x86_64-linux-gnu/security/pam_python.so"), Path("/lib/security/pam_python.so"))
# A TGT with an AD PAC is several KiB; a user with a few service tickets needs tens of KiB.
MIN_MAXBYTES = 100_000
MIN_MAXKEYS = 1000
# com_err codes (krb5.h) that mean "no KDC could be asked".
KRB5_KDC_UNREACH = -1765328228
KRB5_REALM_CANT_RESOLVE = -1765328164
KRB5_REALM_UNKNOWN = -1765328230


@dataclass(frozen=True)
class Check:
    """One link of the chain: whether it holds, what was seen, and how to fix it."""

    name: str
    ok: bool
    detail: str = ""
    fix: str = ""


def check_keyrings() -> Check:
    """KEYCTL_CAPABILITIES and KEYCTL_GET_PERSISTENT: keyrings and persistent keyrings work."""
    from . import keyutils

    name = "kernel keyrings and persistent keyrings"
    try:
        caps = keyutils.capabilities()
    except OSError as exc:
        return Check(name, False, f"keyctl_capabilities: {exc.strerror}",
                     "boot a kernel with CONFIG_KEYS=y (and CONFIG_PERSISTENT_KEYRINGS=y)")
    if not caps or not caps[0] & keyutils.KEYCTL_CAPS0_PERSISTENT_KEYRINGS:
        return Check(name, False, "the kernel lacks persistent keyrings",
                     "boot a kernel with CONFIG_PERSISTENT_KEYRINGS=y")
    try:
        ring = keyutils.get_persistent(-1, keyutils.KEY_SPEC_PROCESS_KEYRING)
    except OSError as exc:
        return Check(name, False, f"keyctl_get_persistent: {exc.strerror}",
                     "check seccomp/container policy: the keyctl syscall must be allowed")
    return Check(name, True, f"persistent keyring {ring} reachable")


def check_quotas() -> Check:
    """kernel.keys.maxkeys/maxbytes against the size of real-world tickets."""
    q = proc.read_quotas()
    detail = f"maxkeys={q.maxkeys} maxbytes={q.maxbytes} (persistent expiry {q.persistent_keyring_expiry}s)"
    if q.maxbytes < MIN_MAXBYTES or q.maxkeys < MIN_MAXKEYS:
        return Check("key quotas", False, detail + f": below {MIN_MAXKEYS} keys / {MIN_MAXBYTES} bytes,"
                     " large AD tickets fail with EDQUOT",
                     "install etc/sysctl.d/60-keyinit-keys.conf into /etc/sysctl.d/ and run sysctl --system")
    return Check("key quotas", True, detail)


def check_shim(shim: Path = SHIM) -> Check:
    """The pam_python.so module and the /lib/security shim are in place."""
    if not any(p.exists() for p in PAM_PYTHON):
        return Check("pam_python and shim", False, "pam_python.so not found", "apt-get install libpam-python")
    if not shim.exists():
        return Check("pam_python and shim", False, f"{shim} missing", "make install")
    return Check("pam_python and shim", True, str(shim))


def _stack_lines(service: str, pam_dir: Path, seen: set[str] | None = None) -> list[list[str]]:
    """The lines of a PAM service file with @include/include/substack expanded."""
    seen = seen if seen is not None else set()
    if service in seen:
        return []
    seen.add(service)
    path = pam_dir / service
    if not path.exists():
        return []
    out: list[list[str]] = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        words = line.split()
        if words[0] == "@include":
            out += _stack_lines(words[1], pam_dir, seen)
        elif len(words) >= 3 and words[1] in ("include", "substack"):
            out += [w for w in _stack_lines(words[2], pam_dir, seen) if w[0].lstrip("-") == words[0]]
        else:
            out.append(words)
    return out


def _has_hook(lines: list[list[str]], kind: str, want: str | None = None) -> bool:
    for words in lines:
        if words[0].lstrip("-") != kind:
            continue
        # "session optional pam_python.so pam_keyinit_py.py ..." or with [..] controls
        rest = " ".join(words[1:])
        rest = re.sub(r"^\[[^\]]*\]\s*", "", rest)
        parts = rest.split()
        if len(parts) >= 3 and parts[1].endswith("pam_python.so") and parts[2].endswith("pam_keyinit_py.py"):
            if want is None or want in parts[3:]:
                return True
    return False


def check_pam(service: str, pam_dir: Path = PAM_DIR) -> Check:
    """The service's PAM stack runs the hook in auth (ticket) and session (tickets)."""
    name = f"PAM stack '{service}'"
    lines = _stack_lines(service, pam_dir)
    if not lines:
        return Check(name, False, f"{pam_dir / service} not found", f"create {pam_dir / service}")
    missing = []
    if not _has_hook(lines, "session", "tickets"):
        missing.append("session optional pam_python.so pam_keyinit_py.py force revoke tickets")
    if not _has_hook(lines, "auth"):
        missing.append("auth optional pam_python.so pam_keyinit_py.py use_first_pass")
    if missing:
        return Check(name, False, "missing: " + "; ".join(missing),
                     "pam-auth-update --enable keyinit (profile etc/pam-configs/keyinit; keyinit-krb5 "
                     "for the Kerberos login), "
                     "or add the lines from etc/pam.d/" + service + ".example")
    return Check(name, True, "auth and session lines present")


def check_default_ccache() -> Check:
    """krb5_cc_default_name in this process's profile resolves to the persistent keyring."""
    import krb5

    ctx = krb5.init_context()
    name = krb5.cc_default_name(ctx).decode()
    expected = f"KEYRING:persistent:{os.getuid()}"
    if name != expected:
        return Check("default_ccache_name", False, f"default ccache is {name}",
                     "install etc/krb5.conf.d/keyinit-ccache.conf (default_ccache_name = "
                     "KEYRING:persistent:%{uid}) and make krb5.conf include /etc/krb5.conf.d/")
    return Check("default_ccache_name", True, name)


def check_service(sock_path: str = DEFAULT_SOCKET) -> Check:
    """Ask keyinit-ticketd for its status over its Unix socket."""
    from . import protocol

    reply = protocol.request({"op": "status"}, sock_path, connect_timeout=1.0, timeout=2.0)
    if not reply.get("ok"):
        return Check("keyinit-ticketd", False, reply.get("error", "no answer"),
                     "systemctl enable --now keyinit-ticketd.service (after make install); "
                     "journalctl -u keyinit-ticketd")
    service = reply.get("service", {})
    return Check("keyinit-ticketd", True, f"{sock_path} answers (pid {service.get('pid', '?')})")


def _generation_bytes(uid: int) -> int:
    """Quota bytes of the uid's largest ccache in KEYRING:persistent:<uid>: one cache generation."""
    from .tickets.quota import cache_sizes

    return max((size for size, _keys in cache_sizes(uid).values()), default=0)


def check_quota_headroom(sock_path: str = DEFAULT_SOCKET) -> Check:
    """Key quota headroom of each logged-in user: room for one more ticket cache generation?

    A renewal writes the new cache before it retires the old one (no empty-cache window), so
    for that moment the user holds two generations; the room left must hold one more.
    """
    from . import protocol

    name = "key quota headroom"
    reply = protocol.request({"op": "status"}, sock_path, connect_timeout=1.0, timeout=2.0)
    if not reply.get("ok"):
        return Check(name, False, f"keyinit-ticketd: {reply.get('error', 'no answer')}",
                     "start keyinit-ticketd (run doctor as root to see every user)")
    uids = sorted({int(s["uid"]) for s in reply.get("sessions", [])})
    if not uids:
        return Check(name, True, "no user logged in")
    parts, short = [], []
    for uid in uids:
        user = proc.key_user(uid)
        try:
            who = pwd.getpwuid(uid).pw_name
        except KeyError:
            who = str(uid)
        if user is None:
            parts.append(f"{who}: no keys")
            continue
        gen = _generation_bytes(uid)
        parts.append(f"{who}: {user.bytes_left} of {user.maxbytes} bytes and {user.keys_left} keys free,"
                     f" a ticket cache takes {gen} bytes")
        if user.bytes_left < gen or user.keys_left < 2:
            short.append(who)
    if short:
        return Check(name, False, "; ".join(parts) + f" -- no room to renew for {', '.join(short)}",
                     "raise kernel.keys.maxbytes/maxkeys (etc/sysctl.d/60-keyinit-keys.conf, "
                     "sysctl --system), or have the user remove keys or caches they no longer need "
                     "(kdestroy -A, keyctl clear)")
    return Check(name, True, "; ".join(parts))


def check_kdc() -> Check:
    """An AS-REQ for a probe principal reaches a KDC of the default realm."""
    import krb5

    ctx = krb5.init_context()
    try:
        realm = krb5.get_default_realm(ctx).decode()
    except krb5.Krb5Error as exc:
        return Check("KDC reachable", False, f"no default realm: {exc}",
                     "set default_realm in /etc/krb5.conf [libdefaults]")
    probe = krb5.parse_name_flags(ctx, f"keyinit-doctor-probe@{realm}".encode())
    opt = krb5.get_init_creds_opt_alloc(ctx)
    try:
        krb5.get_init_creds_password(ctx, probe, opt, password=b"x")
    except krb5.Krb5Error as exc:
        text = str(exc)
        if getattr(exc, "err_code", 0) in (KRB5_KDC_UNREACH, KRB5_REALM_CANT_RESOLVE, KRB5_REALM_UNKNOWN):
            return Check("KDC reachable", False, f"{realm}: {text}",
                         f"check [realms] {realm} kdc= in krb5.conf and that port 88 is open")
        return Check("KDC reachable", True, f"{realm} answers ({text})")
    return Check("KDC reachable", True, realm)


def _validation_settings(config_path: str | None) -> tuple[str, str | None, str | None]:
    """(validate, validate_keytab, validate_principal) of ticketd.toml (its defaults when absent)."""
    from .tickets import config

    cfg = config.load(config_path)
    return cfg.validate, cfg.validate_keytab or None, cfg.validate_principal or None


def check_host_keytab(config_path: str | None = None) -> Check:
    """The host keytab holds validate_principal, and its key is the one the KDC has (kvno).

    krb5_kt_get_entry for the principal; then krb5_get_init_creds_keytab for it and
    krb5_verify_init_creds of that TGT against the same keytab: a keytab left behind by a key
    change (kvno mismatch) fails here with libkrb5's own words, as every login would.
    """
    import krb5

    from .tickets import ccache
    from .tickets.errors import TicketError

    validate, keytab, principal = _validation_settings(config_path)
    name = "host keytab"
    ctx = krb5.init_context()
    kt_name = ccache.keytab_name(ctx, keytab)
    if validate == "never":
        return Check(name, True, "validate = \"never\": logins are not validated (not recommended)")
    principal = principal or ccache.host_principal()
    try:
        kt = krb5.kt_resolve(ctx, kt_name.encode()) if keytab else krb5.kt_default(ctx)
        entry = krb5.kt_get_entry(ctx, kt, krb5.parse_name_flags(ctx, principal.encode()))
    except krb5.Krb5Error as exc:
        ok = validate == "if-keytab"
        return Check(name, ok, f"no key for {principal} in {kt_name}: {exc}"
                     + (" (validate = \"if-keytab\": logins go unvalidated)" if ok else ""),
                     f"add the host's key: kadmin -q 'ktadd -k {kt_name} {principal}' (MIT), "
                     f"ipa-getkeytab -p {principal} -k {kt_name} (FreeIPA), or samba-tool/msktutil (AD)")
    try:
        creds = krb5.get_init_creds_keytab(ctx, entry.principal, krb5.get_init_creds_opt_alloc(ctx), kt)
        ccache.verify_creds(ctx, creds, keytab=keytab, principal=principal)
    except (krb5.Krb5Error, TicketError) as exc:
        return Check(name, False, f"{principal} kvno {entry.kvno} in {kt_name} does not match the KDC: {exc}",
                     "the keytab is out of date (kvno mismatch): export the current key again")
    return Check(name, True, f"{principal} kvno {entry.kvno} in {kt_name} matches the KDC")


def check_validation(principal: str, password: bytes, config_path: str | None = None) -> Check:
    """A test principal's TGT (from its password) validates against the host keytab, as at login."""
    import krb5

    from .tickets import ccache
    from .tickets.errors import TicketError

    _validate, keytab, host = _validation_settings(config_path)
    name = f"validation of {principal}'s TGT"
    ctx = krb5.init_context()
    try:
        client = krb5.parse_name_flags(ctx, principal.encode())
        creds = krb5.get_init_creds_password(ctx, client, krb5.get_init_creds_opt_alloc(ctx), password)
    except krb5.Krb5Error as exc:
        return Check(name, False, f"no TGT for {principal}: {exc}", "check the principal and its password")
    try:
        used = ccache.verify_creds(ctx, creds, keytab=keytab, principal=host)
    except TicketError as exc:
        return Check(name, False, str(exc), "fix the host keytab (see the check above)")
    return Check(name, True, f"validated with {used}")


def check_user_ccache(user: str) -> Check:
    """As ``user`` (setresuid, no KRB5CCNAME, clean environment) find a TGT in the default ccache.

    This is how rpc.gssd and cifs.upcall look for a user's credentials.
    """
    name = f"ticket of '{user}' as rpc.gssd sees it"
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        return Check(name, False, "no such user", "give an existing user with --user")
    keep = {k: v for k, v in os.environ.items() if k == "KRB5_CONFIG"}
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: become the user with a clean environment
        code = 1
        try:
            os.close(r)
            os.setgroups([])
            os.setresgid(pw.pw_gid, pw.pw_gid, pw.pw_gid)
            os.setresuid(pw.pw_uid, pw.pw_uid, pw.pw_uid)
            os.environ.clear()
            os.environ.update(keep)
            import krb5

            ctx = krb5.init_context()
            cc = krb5.cc_default(ctx)
            princ = krb5.cc_get_principal(ctx, cc)
            msg = f"ok {krb5.cc_default_name(ctx).decode()} {princ.name.decode()}"
            code = 0
        except BaseException as exc:  # noqa: BLE001 - report anything to the parent
            msg = f"fail {exc}"
        os.write(w, msg.encode()[:4000])
        os._exit(code)
    os.close(w)
    data = b""
    while chunk := os.read(r, 4096):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    text = data.decode(errors="replace")
    if text.startswith("ok "):
        return Check(name, True, text[3:])
    return Check(name, False, text[5:] or "no answer",
                 f"log in as {user} (or run: keyinit renew) and check default_ccache_name")


def run_checks(user: str | None = None, services: tuple[str, ...] = ("sshd", "login"),
               sock_path: str = DEFAULT_SOCKET, pam_dir: Path = PAM_DIR, config_path: str | None = None,
               test_principal: str | None = None, test_password: bytes | None = None) -> list[Check]:
    """All checks in login order; a check that crashes is reported as failed, not raised."""
    steps = [check_keyrings, check_quotas, check_shim]
    steps += [lambda s=s: check_pam(s, pam_dir) for s in services]
    steps += [check_default_ccache, lambda: check_service(sock_path),
              lambda: check_quota_headroom(sock_path), check_kdc,
              lambda: check_host_keytab(config_path)]
    if test_principal and test_password is not None:
        steps.append(lambda: check_validation(test_principal, test_password, config_path))
    if user:
        steps.append(lambda: check_user_ccache(user))
    results = []
    for step in steps:
        try:
            results.append(step())
        except Exception as exc:  # noqa: BLE001 - a broken link is a failed check
            label = (step.__doc__ or getattr(step, "__name__", "check")).split(":")[0].strip()
            results.append(Check(label, False, f"{type(exc).__name__}: {exc}"))
    return results
