"""The ticket service (``keyinit-ticketd``): TGTs in KEYRING:persistent:<uid>, acquired and
renewed with the user's uid, cleared at the user's last logout.

From the bottom up (each module imports only those above it in this list, plus
``protocol``, ``errors`` and ``keyutils``):

* ``errors`` (ticket error classes, each declaring its reply code), ``config`` (ticketd.toml),
  ``accounts``, ``ratelimit``, ``journal``, ``kdclimit``, ``keywatch``;
* ``ccache`` and ``principals``: the krb5 operations (pykrb5 / cffi), run as the user;
* ``krb``: those operations as one injectable object; ``state`` (the state file and its
  group-commit writer), ``scheduler``, ``sessions`` (session table, pidfd reaper);
* the service, split by what it does: ``core`` (state shared by all parts) <- ``renewal``
  <- ``adoption``; ``core`` <- ``clearing``; ``recovery`` (both) <- ``service`` (the request
  handlers named in protocol.OPS);
* ``dispatch`` (one request: decode, authorise, run, commit, reply), ``limits`` (connection
  caps, worker pool), ``server`` (the socket's event loop), ``daemon`` (main, sd_notify).

Nothing is imported here, and no service module imports ``ccache``/``principals`` (libkrb5)
before the first Kerberos operation: the daemon starts and answers before libkrb5 is loaded.
"""
