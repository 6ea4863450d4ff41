#!/bin/bash
# Provision the nfs box: an NFSv4 export that only Kerberos (sec=krb5) may mount, with the lab's
# krb5.conf and the nfs/ keytab, and the lab user with the same name for NFSv4 id mapping.
#
# Environment: SHARED, LAB_USER as in kdc.sh; ROOT=DIR writes the files under DIR only (CI).
set -euo pipefail

SHARED=${SHARED:-/shared}
LAB_USER=${LAB_USER:-alice}
ROOT=${ROOT:-}

step() { echo "nfs: $*"; }
live() { [ -z "$ROOT" ]; }

if live; then
    step "installing the NFS server"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nfs-kernel-server krb5-user
fi

step "krb5.conf and the nfs/ keytab"
install -D -m 0644 "$SHARED/krb5.conf" "$ROOT/etc/krb5.conf"
install -D -m 0600 "$SHARED/nfs.keytab" "$ROOT/etc/krb5.keytab"

step "export /export with sec=krb5"
install -d -m 1777 "$ROOT/export"
install -D -m 0644 /dev/stdin "$ROOT/etc/exports.d/keyinit-lab.exports" <<'EXPORTS'
/export *(rw,sec=krb5,no_subtree_check)
EXPORTS

if live; then
    id "$LAB_USER" >/dev/null 2>&1 || useradd --create-home --shell /bin/bash "$LAB_USER"
    systemctl restart nfs-server.service
    exportfs -ra
fi
step "done"
