"""The type of pam_python's handle ``pamh``, for type checkers only (never imported at run time).

pam_python passes each ``pam_sm_*`` a ``PamHandle`` object wrapping libpam's ``pam_handle_t``:
the PAM return codes and flags as attributes, PAM items (PAM_AUTHTOK, PAM_OLDAUTHTOK) as
properties, pam_getenv/pam_putenv as the ``env`` mapping, pam_get_user(3) as ``get_user`` and the
application's conversation function as ``conversation``.  Only what this hook uses is declared.
The hook's modules import this name under ``if TYPE_CHECKING`` (``typing`` costs a login ~5 ms).
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Protocol


class PamMessage(Protocol):
    """``pamh.Message(style, text)``: one struct pam_message."""

    msg_style: int
    msg: str


class PamResponse(Protocol):
    """What ``pamh.conversation`` returns for one message: struct pam_response."""

    resp: str | None
    resp_retcode: int


class PamError(Exception):
    """``pamh.exception``: raised by pam_python when a libpam call fails."""

    pam_result: int


class PamHandle(Protocol):
    """pam_python's ``pamh``."""

    # Return codes (pam_python copies <security/_pam_types.h>).
    PAM_SUCCESS: int
    PAM_IGNORE: int
    PAM_SERVICE_ERR: int
    PAM_SESSION_ERR: int
    PAM_CRED_ERR: int
    PAM_USER_UNKNOWN: int
    PAM_AUTH_ERR: int
    PAM_AUTHINFO_UNAVAIL: int
    PAM_CONV_ERR: int
    PAM_PERM_DENIED: int
    PAM_ACCT_EXPIRED: int
    PAM_NEW_AUTHTOK_REQD: int
    PAM_AUTHTOK_ERR: int
    PAM_AUTHTOK_RECOVERY_ERR: int
    PAM_TRY_AGAIN: int
    # Flags.
    PAM_ESTABLISH_CRED: int
    PAM_DELETE_CRED: int
    PAM_PRELIM_CHECK: int
    PAM_UPDATE_AUTHTOK: int
    PAM_CHANGE_EXPIRED_AUTHTOK: int
    PAM_SILENT: int
    # Conversation styles.
    PAM_PROMPT_ECHO_OFF: int
    PAM_PROMPT_ECHO_ON: int
    PAM_ERROR_MSG: int
    PAM_TEXT_INFO: int

    #: The raw ``pam_handle_t *`` (for pam_syslog through ctypes).
    pamh: int
    #: PAM_AUTHTOK and PAM_OLDAUTHTOK (pam_get_item/pam_set_item).
    authtok: str | None
    oldauthtok: str | None
    #: pam_getenv/pam_putenv.
    env: MutableMapping[str, str]
    exception: type[PamError]

    def get_user(self, prompt: str | None = None) -> str | None:
        """pam_get_user(3): PAM_USER, prompting through the conversation if unset."""

    def conversation(self, message: PamMessage) -> PamResponse:
        """The application's conversation function, one message."""

    def Message(self, style: int, text: str) -> PamMessage:  # noqa: N802 - pam_python's name
        """Make one struct pam_message."""
