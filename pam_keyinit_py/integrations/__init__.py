"""Applications of the kernel keyring: a ``keyring`` backend, a Docker credential helper, secret-tool.

All three keep their items in one dedicated keyring, ``keyinit:secrets``, as
possessor-only ``user`` keys (see :mod:`.store` and :mod:`.secret_store`), so
an item stored by one is visible to the others:

- :mod:`.keyring_backend`: the ``keyring.backends`` entry point ``kernel``;
- :mod:`.docker_credential`: ``docker-credential-keyctl``;
- :mod:`.secret_store`: the attribute/label/secret model behind ``keyinit secret``.

Where the keyring lives (``KEYINIT_STORE_LOCATION``, default ``persistent``):

- ``persistent``: inside the user's persistent keyring (``_persistent.<uid>``).
  Survives logout and ``pam_keyinit force revoke``; shared by all sessions of
  the uid.  The kernel destroys it after ``/proc/sys/kernel/keys/
  persistent_keyring_expiry`` seconds (3 days) without any
  KEYCTL_GET_PERSISTENT call; every use of the store resets that timer.
- ``user``: inside the user keyring ``@u``.  Lives while any process of the uid
  is alive (or a session keyring links it); gone once the last one exits.
- ``session``: inside the caller's session keyring ``@s``.  Gone at logout.

Honest limits, whatever the location: kernel keys live in RAM only, so every
item is **lost at reboot**; a non-root uid may own at most 200 keys and 20000
bytes of descriptions and payloads (``/proc/sys/kernel/keys/maxkeys``,
``maxbytes``); an item's attributes are limited to 4095 bytes (the key
description).  Label plus secret larger than one ``user`` key (32,767 bytes)
go into an item keyring of several keys (see :mod:`.store`), up to about 2 MiB.
Root and any process that can become the uid can read the items.
"""
