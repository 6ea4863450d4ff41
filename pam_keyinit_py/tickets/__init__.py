"""The ticket service: TGTs in KEYRING:persistent:<uid>, acquired and renewed with the user's uid.

``tickets.ccache`` holds the credential-cache operations (pykrb5), ``tickets.errors`` their
exceptions; the daemon, server, sessions, scheduler, state and config modules sit on them.
Nothing is imported here, so importing the package does not load libkrb5.
"""
