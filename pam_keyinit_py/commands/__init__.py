"""``keyinit``'s verbs, one module each with its logic beside it (cli.py builds the parser).

Each verb's module (cli.COMMAND_MODULES) exposes ``register(subparsers)`` and is imported for
every ``keyinit`` run, also by the bare /usr/bin/python3 that runs ``keyinit install`` from a
checkout, so what a verb needs beyond the standard library (layer 0's cffi, pykrb5, the lab) is
imported inside it.  ``doctor_krb5`` holds doctor's Kerberos checks; ``launchers`` writes the
console-script launchers.
"""
