"""pam_keyinit's logic (linux-pam modules/pam_keyinit/pam_keyinit.c) on layer 0.

One :class:`KeyinitState` per PAM handle holds what pam_keyinit keeps in
statics: the keyring this module created, the nested-session counter, and the
ids to revoke as.  Every function returns a PAM code; layer-0 errors become
the ``error_ret`` the caller passes (PAM_SESSION_ERR from open_session,
PAM_CRED_ERR from setcred), exactly where pam_keyinit returns its error_ret.

Credential switches use layer 0's raw per-thread setre[ug]id/setresuid
syscalls, as pam_keyinit does: glibc's wrappers would change every thread of
the host (sshd's monitor may run other threads).
"""

import os
import pwd

from .. import keyutils as ku
from . import LOG_DEBUG, LOG_ERR, LOG_WARNING, syslog

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .options import Options
    from .pamh import PamHandle


class KeyinitState:
    """What pam_keyinit keeps in statics, for one PAM handle."""

    __slots__ = ("my_session_keyring", "session_counter", "do_revoke", "revoke_as_uid",
                 "revoke_as_gid", "xdebug", "pw")

    def __init__(self) -> None:
        self.my_session_keyring = 0
        self.session_counter = 0
        self.do_revoke = False
        self.revoke_as_uid = -1
        self.revoke_as_gid = -1
        self.xdebug = False
        self.pw: pwd.struct_passwd | None = None


def debug(state: KeyinitState, pamh: "PamHandle", message: str) -> None:
    """LOG_DEBUG, only with the ``debug`` option (pam_keyinit's debug())."""
    if state.xdebug:
        syslog(pamh, LOG_DEBUG, message)


def note_options(state: KeyinitState, opts: "Options") -> None:
    """pam_keyinit's argv loop: ``debug`` and ``revoke`` stick once seen; ``force`` is per call."""
    if opts.debug:
        state.xdebug = True
    if opts.revoke:
        state.do_revoke = True


def init_keyrings(state: KeyinitState, pamh: "PamHandle", opts: "Options", uid: int, error_ret: int) -> int:
    """Give the calling thread a new session keyring with @u linked in (runs with the user's real ids).

    Without ``force`` this acts only when @s is still the user-session keyring
    (KEYCTL_GET_KEYRING_ID on -3 and -5), and a kernel without keyrings
    (ENOSYS) is not an error.
    """
    success = int(pamh.PAM_SUCCESS)
    if not opts.force:
        try:
            session = ku.get_keyring_id(ku.KEY_SPEC_SESSION_KEYRING, False)
        except OSError as exc:
            debug(state, pamh, f"GET SESSION = -1 ({exc.strerror})")
            from errno import ENOSYS  # only here: errno's import is paid by every login

            # don't worry about keyrings if the facility is not there
            return success if exc.errno == ENOSYS else error_ret
        debug(state, pamh, f"GET SESSION = {session}")
        try:
            usession = ku.get_keyring_id(ku.KEY_SPEC_USER_SESSION_KEYRING, False)
        except OSError as exc:
            debug(state, pamh, f"GET USER SESSION = -1 ({exc.strerror})")
            return error_ret
        debug(state, pamh, f"GET USER SESSION = {usession}")
        if session != usession:
            return success  # someone already gave this process a session keyring

    try:
        ring = ku.join_session_keyring(None)  # KEYCTL_JOIN_SESSION_KEYRING(NULL): a new "_ses"
    except OSError as exc:
        debug(state, pamh, f"JOIN = -1 ({exc.strerror})")
        return error_ret
    debug(state, pamh, f"JOIN = {ring}")
    state.my_session_keyring = ring

    try:
        ku.link(ku.KEY_SPEC_USER_KEYRING, ku.KEY_SPEC_SESSION_KEYRING)
    except OSError as exc:
        syslog(pamh, LOG_ERR, f"Unable to link the user keyring into {ring}: {exc.strerror}")
        return error_ret

    if opts.link_persistent:
        link_persistent(state, pamh, uid)
    return success


def link_persistent(state: KeyinitState, pamh: "PamHandle", uid: int) -> None:
    """KEYCTL_GET_PERSISTENT(uid, @s): link _persistent.<uid> into the session keyring.

    The user's Kerberos ccaches then show up in `keyctl show`.  Beyond pam_keyinit,
    so a failure only warns.  Linking twice is harmless (the link already exists).
    """
    try:
        persistent = ku.get_persistent(uid, ku.KEY_SPEC_SESSION_KEYRING)
        debug(state, pamh, f"PERSISTENT = {persistent}")
    except OSError as exc:
        syslog(pamh, LOG_WARNING, f"Unable to link the persistent keyring of uid {uid}: {exc.strerror}")


def do_keyinit(state: KeyinitState, pamh: "PamHandle", opts: "Options", error_ret: int) -> int:
    """Create the session keyring as the user's real uid/gid, once per handle."""
    note_options(state, opts)
    # Called again (setcred then open_session, or the module listed twice): the keyring
    # exists.  sshd runs setcred(ESTABLISH) through the *auth* line, whose options lack
    # link_persistent, so honour the session line's link_persistent here.
    if state.my_session_keyring > 0:
        if opts.link_persistent and state.revoke_as_uid >= 0:
            link_persistent(state, pamh, state.revoke_as_uid)
        return pamh.PAM_SUCCESS

    try:
        username = pamh.get_user("key user")
    except pamh.exception as exc:
        return int(exc.pam_result)
    if not username:
        return pamh.PAM_USER_UNKNOWN
    try:
        pw = pwd.getpwnam(username)
    except (KeyError, ValueError):  # ValueError: embedded NUL
        syslog(pamh, LOG_ERR, f"Unable to look up user {username!r}")
        return pamh.PAM_USER_UNKNOWN
    state.pw = pw

    uid, gid = pw.pw_uid, pw.pw_gid
    state.revoke_as_uid, state.revoke_as_gid = uid, gid
    old_uid, old_gid = os.getuid(), os.getgid()
    debug(state, pamh, f"UID:{uid} [{old_uid}]  GID:{gid} [{old_gid}]")

    # The kernel makes the new keyring owned by the caller's *real* uid/gid,
    # and resolves @u by the real uid, so switch those (euid stays root).
    if gid != old_gid:
        try:
            ku.thread_setregid(gid, -1)
        except OSError:
            syslog(pamh, LOG_ERR, f"Unable to change GID to {gid} temporarily")
            return error_ret
    if uid != old_uid:
        try:
            ku.thread_setreuid(uid, -1)
        except OSError:
            syslog(pamh, LOG_ERR, f"Unable to change UID to {uid} temporarily")
            _restore_rgid(pamh, gid, old_gid)
            return error_ret

    try:
        ret = init_keyrings(state, pamh, opts, uid, error_ret)
    finally:
        # back to the original real ids (probably root) whatever happened
        if uid != old_uid:
            try:
                ku.thread_setreuid(old_uid, -1)
            except OSError:
                syslog(pamh, LOG_ERR, f"Unable to change UID back to {old_uid}")
                ret = error_ret
        if not _restore_rgid(pamh, gid, old_gid):
            ret = error_ret
    return ret


def _restore_rgid(pamh: "PamHandle", gid: int, old_gid: int) -> bool:
    if gid == old_gid:
        return True
    try:
        ku.thread_setregid(old_gid, -1)
        return True
    except OSError:
        syslog(pamh, LOG_ERR, f"Unable to change GID back to {old_gid}")
        return False


def _restore_egid(pamh: "PamHandle", gid: int, old_gid: int) -> bool:
    if gid == old_gid:
        return True
    try:
        ku.thread_setregid(-1, old_gid)
        return True
    except OSError:
        syslog(pamh, LOG_ERR, f"Unable to change GID back to {old_gid}")
        return False


def kill_keyrings(state: KeyinitState, pamh: "PamHandle", error_ret: int) -> int:
    """KEYCTL_REVOKE the keyring this handle created, with the user's effective uid/gid.

    The keyring grants the user (and the possessor) SETATTR, so revoking as
    the user works even where root no longer possesses it.
    """
    ret = int(pamh.PAM_SUCCESS)
    ring = state.my_session_keyring
    if ring <= 0:
        return ret
    debug(state, pamh, f"REVOKE {ring}")
    uid, gid = state.revoke_as_uid, state.revoke_as_gid
    old_uid, old_gid = os.geteuid(), os.getegid()
    debug(state, pamh, f"UID:{uid} [{old_uid}]  GID:{gid} [{old_gid}]")

    if gid != old_gid:
        try:
            ku.thread_setregid(-1, gid)
        except OSError:
            syslog(pamh, LOG_ERR, f"Unable to change GID to {gid} temporarily")
            return error_ret
    if uid != old_uid:
        try:
            ku.thread_setresuid(-1, uid, old_uid)  # keep the old euid as saved uid to come back
        except OSError:
            syslog(pamh, LOG_ERR, f"Unable to change UID to {uid} temporarily")
            _restore_egid(pamh, gid, old_gid)
            return error_ret

    try:
        ku.revoke(ring)
    except OSError as exc:
        syslog(pamh, LOG_ERR, f"Unable to revoke session keyring {ring}: {exc.strerror}")
        ret = error_ret
    finally:
        if uid != old_uid:
            try:
                ku.thread_setreuid(-1, old_uid)
            except OSError:
                syslog(pamh, LOG_ERR, f"Unable to change UID back to {old_uid}")
                ret = error_ret
        if not _restore_egid(pamh, gid, old_gid):
            ret = error_ret
        state.my_session_keyring = 0
    return ret
