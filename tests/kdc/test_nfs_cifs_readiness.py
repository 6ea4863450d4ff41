"""NFS and CIFS readiness: after a login, the ticket is found the way rpc.gssd and cifs.upcall look.

Those helpers switch to the user's uid, clear the environment (no KRB5CCNAME) and use the
default ccache, which krb5.conf's default_ccache_name points at KEYRING:persistent:%{uid}.
Here a child does exactly that as the user (KRB5_CONFIG kept only because the test realm is
not /etc/krb5.conf), gets nfs/ and cifs/ service tickets through python-gssapi, and completes
a GSS context with an acceptor (this root process) holding the services' keytab.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pam_keyinit_py.lab.ticketd import TicketD
from tests.conftest import require_root

HOST = "localhost"  # mapped to the test realm by the realm's krb5.conf [domain_realm]

INITIATOR = r"""
import base64, json, os, sys
import gssapi
assert "KRB5CCNAME" not in os.environ
creds = gssapi.Credentials(usage="initiate")  # the default ccache, as rpc.gssd uses it
print(json.dumps({"me": str(creds.name)}), flush=True)
for service in sys.argv[1:]:
    name = gssapi.Name(f"{service}@localhost", gssapi.NameType.hostbased_service)
    ctx = gssapi.SecurityContext(name=name, creds=creds, usage="initiate",
                                 flags=gssapi.RequirementFlag.mutual_authentication)
    token = ctx.step()
    print(json.dumps({"service": service, "token": base64.b64encode(token).decode()}), flush=True)
    reply = json.loads(sys.stdin.readline())
    ctx.step(base64.b64decode(reply["token"]))
    print(json.dumps({"service": service, "complete": ctx.complete,
                      "target": str(ctx.target_name)}), flush=True)
"""


@pytest.fixture
def services(realm, tmp_path: Path) -> Path:
    """nfs/localhost and cifs/localhost with random keys, in a root-only keytab."""
    keytab = tmp_path / "services.keytab"
    for service in ("nfs", "cifs"):
        realm.add_principal(f"{service}/{HOST}")
    realm.keytab([f"{service}/{HOST}" for service in ("nfs", "cifs")], keytab)
    os.chmod(keytab, 0o600)
    return keytab


def test_gssd_style_lookup_gets_nfs_and_cifs_tickets(realm, kdc_user, services, tmp_path) -> None:
    require_root()
    import gssapi

    directory = tmp_path / "ticketd"
    daemon = TicketD(directory, realm.env)
    daemon.start()
    try:
        who = {"user": kdc_user.name, "uid": kdc_user.uid, "gid": kdc_user.gid}
        assert daemon.request({"op": "auth", **who, "password": kdc_user.password})["ok"]
        assert daemon.request({"op": "open", **who})["ok"]

        # The user's process, as rpc.gssd starts it: uid switched, environment cleared.
        env = {"KRB5_CONFIG": str(realm.krb5_conf)}

        def drop() -> None:
            os.setgroups([])
            os.setresgid(kdc_user.gid, kdc_user.gid, kdc_user.gid)
            os.setresuid(kdc_user.uid, kdc_user.uid, kdc_user.uid)

        child = subprocess.Popen([sys.executable, "-c", INITIATOR, "nfs", "cifs"], env=env,
                                 preexec_fn=drop, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        assert child.stdout and child.stdin
        first = child.stdout.readline()
        assert first, child.stderr.read() if child.stderr else ""
        assert json.loads(first)["me"] == kdc_user.principal

        os.environ["KRB5_KTNAME"] = str(services)  # the acceptor's keytab, as nfsd/smbd hold it
        try:
            acceptor_creds = gssapi.Credentials(usage="accept", store={"keytab": str(services)})
            for service in ("nfs", "cifs"):
                msg = json.loads(child.stdout.readline())
                assert msg["service"] == service
                acceptor = gssapi.SecurityContext(creds=acceptor_creds, usage="accept")
                answer = acceptor.step(base64.b64decode(msg["token"]))
                assert acceptor.complete
                assert str(acceptor.initiator_name) == kdc_user.principal
                assert str(acceptor.target_name) == f"{service}/{HOST}@{realm.realm}"
                child.stdin.write(json.dumps({"token": base64.b64encode(answer or b"").decode()}) + "\n")
                child.stdin.flush()
                done = json.loads(child.stdout.readline())
                assert done["complete"] is True
        finally:
            os.environ.pop("KRB5_KTNAME", None)
        assert child.wait(30) == 0, child.stderr.read() if child.stderr else ""

        # The service tickets landed in the user's ccache in the persistent keyring, as user keys.
        from pam_keyinit_py import keyutils
        from pam_keyinit_py.keyutils.model import walk

        ring = keyutils.get_persistent(kdc_user.uid, keyutils.KEY_SPEC_THREAD_KEYRING)
        try:
            found = {e.info.description: e.info.uid for e in walk(ring) if e.info}
        finally:
            keyutils.unlink(ring, keyutils.KEY_SPEC_THREAD_KEYRING)
        for service in ("nfs", "cifs"):
            assert found.get(f"{service}/{HOST}@{realm.realm}") == kdc_user.uid, found
    finally:
        daemon.stop()
