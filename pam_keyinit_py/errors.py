"""The root of the project's own exceptions: ``except KeyinitError`` catches every failure the
project reports on purpose (as jaraco/keyring's ``errors.KeyringError`` does for its backends).

Under it sit:

* ``protocol.ProtocolError``: a message broke the hook <-> service framing or schema;
* ``tickets.config.ConfigError``: ``ticketd.toml`` holds a bad value;
* ``tickets.errors.TicketError`` and its classes: a krb5 or keyring operation on a ccache
  failed (each class carries the reply code the service answers with);
* the integrations' store errors (they subclass it where they are defined).

Failed keyctl calls stay ``keyutils.KeyutilsError`` (an ``OSError`` carrying errno, as the
standard library's own calls raise): layer 0 knows nothing of this package.

This module is imported by the PAM hook (through protocol.py): standard library only, nothing
at import but class statements.
"""


class KeyinitError(Exception):
    """Base class of the errors pam-keyinit-py raises on purpose."""
