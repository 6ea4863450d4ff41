"""The KDC's preauth questions during a password login (OTP), relayed instead of answered here.

The hook<->service protocol is one request, one reply per connection, so a question the
password does not answer ends the AS exchange: the service replies ``prompt`` with the questions
(protocol.PROMPT), the hook asks them through the PAM conversation and sends ``auth`` again with
``answers``, and a fresh exchange answers them in order.

- :func:`answered`: every password exchange of a login, through the C helper's prompter
  (``pk_init_creds_answered`` in tickets/_renew_build.py), which answers from the list and
  records the first question past it.  Not pykrb5's prompter: it points the reply at Python's
  bytes instead of filling libkrb5's buffer, which MIT's OTP client reads, so the KDC received
  an empty token (measured); and pykrb5 cannot turn off libkrb5's own password change after
  KRB5KDC_ERR_KEY_EXP (krb5_get_init_creds_opt_set_change_password_prompt), which a prompter
  would start.  No prompter at all is worse: MIT krb5 1.20's OTP client calls a NULL one (a
  segfault of the whole service, measured; fixed upstream by "Fix OTP preauth crash with null
  prompter", 2025).
- :class:`Decline`: a pykrb5 prompter that answers nothing, for the other exchanges.

Answers are secrets like the password: each becomes a NUL-terminated bytearray (plumbing.
secret_buffer, no bytes copy) that libkrb5 reads in place and that is zeroed after the exchange;
never logged, never in an exception message.  The ``str`` the JSON request held cannot be zeroed.
"""

from __future__ import annotations

import krb5

from .. import protocol as P
from . import errors
from .errors import KRB5KDC_ERR_PREAUTH_FAILED, PromptNeeded, from_krb5
from .plumbing import Krb5Failure, secret_buffer, wipe

#: Bytes the C helper may write the recorded questions into.
_ASKED_BYTES = (P.MAX_PROMPT_TEXT + 2) * (P.MAX_PROMPTS + 1)


#: C0 and C1 controls (and DEL): a KDC's text goes to the user's terminal (sshd keyboard-interactive),
#: so an impostor's escape sequences are dropped; a newline or tab becomes a space.
_CONTROLS = {c: None for c in [*range(0x20), *range(0x7F, 0xA0)]} | {0x09: " ", 0x0A: " ", 0x0D: " "}


def _text(raw: bytes | None) -> str:
    """A question or banner of the KDC as shown to the user: UTF-8, no control characters, clipped."""
    return (raw or b"").decode(errors="replace").translate(_CONTROLS)[:P.MAX_PROMPT_TEXT]


class Declined(Exception):
    """Raised inside :class:`Decline`: pykrb5 turns it into a prompter failure (code 1)."""


class Decline(krb5.Krb5Prompt):
    """A pykrb5 prompter that answers nothing, for exchanges that relay no question (chpass's
    kadmin/changepw ticket): krb5 1.20 calls a NULL prompter when the KDC offers OTP."""

    def prompt(self, msg: bytes, hidden: bool) -> bytes:
        raise Declined


def answered(principal: str, password: bytearray, answers: list[str], *, what: str, enterprise: bool,
             lifetime: int | None, renew_lifetime: int | None, forwardable: bool | None, renewable: bool,
             canonicalize: bool, armor: str | None, fast_required: bool, krb5_config: str | None,
             ctx: krb5.Context) -> krb5.Creds:
    """krb5_get_init_creds_password answering the KDC's questions from ``answers``, in order.

    ``password`` is the NUL-terminated buffer of plumbing.secret_buffer; the options mirror
    plumbing.gic_options.  Raises PromptNeeded for a question past the answers, BadPassword when
    the KDC refused them (libkrb5 asking the first question again to start over), else the
    TicketError of the krb5 code.  Runs without the GIL (cffi).
    """
    from ._krb5_renew import ffi, lib

    # Each answer as a zeroable NUL-terminated bytearray (as the password), handed to C in place.
    buffers: list[bytearray] = []
    try:
        for answer in answers:
            buffers.append(secret_buffer(answer))
        views = [ffi.from_buffer("char[]", buf) for buf in buffers]  # kept alive through the call
        array = ffi.new("char *[]", views) if views else ffi.NULL
        used, restarted, count = ffi.new("int *"), ffi.new("int *"), ffi.new("int *")
        asked = ffi.new("char[]", _ASKED_BYTES)
        out, outlen, err = ffi.new("unsigned char **"), ffi.new("size_t *"), ffi.new("char[]", 512)
        renew = int(renew_lifetime) if renewable and renew_lifetime else (-1 if renewable else 0)
        forward = -1 if forwardable is None else int(bool(forwardable))
        code = lib.pk_init_creds_answered(
            krb5_config.encode() if krb5_config else ffi.NULL, principal.encode(), int(enterprise),
            int(lifetime or 0), renew, forward, int(canonicalize),
            armor.encode() if armor else ffi.NULL, int(fast_required), ffi.from_buffer("char[]", password),
            array, len(buffers), used, restarted, asked, _ASKED_BYTES, count, out, outlen, err, 512)
    finally:
        for buf in buffers:
            wipe(buf)
    if code == 0:
        try:
            data = ffi.buffer(out[0], outlen[0])[:]
        finally:
            lib.pk_free(out[0], outlen[0])
        return krb5.unmarshal_credentials(ctx, data)
    if restarted[0]:
        raise errors.BadPassword(f"{what}: the KDC refused the answers", KRB5KDC_ERR_PREAUTH_FAILED)
    if count[0]:
        fields = ffi.buffer(asked, _ASKED_BYTES)[:].split(b"\0")
        prompts = [(_text(f[1:]), f[:1] == b"1") for f in fields[1:1 + count[0]]]
        after = f" after {used[0]} answer(s)" if used[0] else ""
        raise PromptNeeded(f"{what}: the KDC's preauth asks {len(prompts)} question(s){after}", prompts,
                           _text(fields[0]), used[0])
    raise from_krb5(Krb5Failure(code, ffi.string(err).decode(errors="replace")), what)
