"""The pam_python hook (session keyrings as pam_keyinit makes them) and its ticket-service client.

Kept empty on purpose: the hook imports only what a login needs.
"""
