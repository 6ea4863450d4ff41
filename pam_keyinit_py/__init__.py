"""pam-keyinit-py: session keyrings, Kerberos tickets in the persistent keyring, and keyring tools."""

__version__ = "0.1.0"
