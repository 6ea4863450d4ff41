"""``keyinit doctor``'s Kerberos links: the KDC answers, the host keytab's key is the KDC's, a test
principal's TGT validates, and a user's ticket is found as rpc.gssd and cifs.upcall find it.

Each check returns a :class:`~.doctor.Check`; krb5 (pykrb5) is imported inside each, so
``keyinit --help`` never loads it.
"""

from __future__ import annotations

import os
import pwd

from .doctor import Check

# com_err codes (krb5.h) that mean "no KDC could be asked".
KRB5_KDC_UNREACH = -1765328228
KRB5_REALM_CANT_RESOLVE = -1765328164
KRB5_REALM_UNKNOWN = -1765328230


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
    from ..tickets import config

    cfg = config.load(config_path)
    return cfg.validate, cfg.validate_keytab or None, cfg.validate_principal or None


def check_host_keytab(config_path: str | None = None) -> Check:
    """The host keytab holds validate_principal, and its key is the one the KDC has (kvno).

    krb5_kt_get_entry for the principal; then krb5_get_init_creds_keytab for it and
    krb5_verify_init_creds of that TGT against the same keytab: a keytab left behind by a key
    change (kvno mismatch) fails here with libkrb5's own words, as every login would.
    """
    import krb5

    from ..tickets import ccache
    from ..tickets.errors import TicketError

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

    from ..tickets import ccache
    from ..tickets.errors import TicketError

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
