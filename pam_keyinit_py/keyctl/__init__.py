"""pykeyctl: a keyutils-1.6.3-compatible ``keyctl`` on layer 0 (same syntax, bytes and exit codes).

``main.main`` is the console script.  Modules: ``cli`` (stdout/stderr and
exit handling in keyctl's style), ``spec`` (key specifiers), ``fmt`` (the
caller's permission letters, hex dumps, printf), ``scan`` (keyring tree walks),
``commands`` (one function per keyctl command), ``watch`` (the key-notification
commands), ``testing`` (the hidden ``--test``), ``jsonout`` (``--json``
renderings) and ``krb5view`` (``show --krb5``).  Descriptions are parsed by
layer 0's one model, :class:`pam_keyinit_py.keyutils.model.KeyInfo`.
"""
