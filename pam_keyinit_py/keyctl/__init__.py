"""pykeyctl: a keyutils-1.6.3-compatible ``keyctl`` on layer 0 (same syntax, bytes and exit codes).

``main.main`` is the console script.  Modules: ``cli`` (stdout/stderr and
exit handling in keyctl's style), ``spec`` (key specifiers), ``fmt`` (the
text formats), ``scan`` (keyring tree walks), ``commands`` (one function per
keyctl command) and ``jsonout`` (``--json`` renderings).
"""
