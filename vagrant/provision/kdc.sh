#!/bin/bash
# Provision the kdc box: the lab realm from the one bootstrap, krb5/realm.sh, served on the private
# network, plus the principals and keytabs the client and nfs boxes need (handed over in $SHARED).
#
# Environment (the Vagrantfile sets it; CI overrides it to run this on loopback):
#   SRC       the repository (default /src)        SHARED    where krb5.conf/keytabs go (/shared)
#   REALM     LAB.KEYINIT.TEST                     STATE     realm directory (/var/lib/keyinit-lab)
#   KDC_ADDR  192.168.56.10   KDC_PORT 88          CLIENT_HOST, NFS_HOST  service hostnames
#   LAB_USER  alice           SKIP_APT=1           do not apt-get (CI: make setup installed it)
set -euo pipefail

SRC=${SRC:-/src}
SHARED=${SHARED:-/shared}
REALM=${REALM:-LAB.KEYINIT.TEST}
STATE=${STATE:-/var/lib/keyinit-lab}
KDC_ADDR=${KDC_ADDR:-192.168.56.10}
KDC_PORT=${KDC_PORT:-88}
CLIENT_HOST=${CLIENT_HOST:-client.lab.keyinit.test}
NFS_HOST=${NFS_HOST:-nfs.lab.keyinit.test}
LAB_USER=${LAB_USER:-alice}
REALM_SH="$SRC/krb5/realm.sh"

step() { echo "kdc: $*"; }

if [ -z "${SKIP_APT:-}" ]; then
    step "installing the MIT KDC"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq krb5-kdc krb5-admin-server krb5-kpropd krb5-user
fi

step "starting realm $REALM on $KDC_ADDR:$KDC_PORT"
bash "$REALM_SH" start "$STATE" -r "$REALM" -a "$KDC_ADDR" -p "$KDC_PORT" -l 10h -R 7d >/dev/null
step "starting kadmind (kpasswd: passwd and expired passwords at login change the Kerberos password)"
bash "$REALM_SH" kadmind "$STATE"

mkdir -p "$SHARED"
umask 077
password_file="$SHARED/$LAB_USER.password"
if [ ! -s "$password_file" ]; then
    # A lab password, random per lab, readable by the boxes through the shared folder.
    head -c 12 /dev/urandom | base64 | tr -d '/+=' >"$password_file"
fi

step "principals: $LAB_USER, host/$CLIENT_HOST, nfs/$NFS_HOST, nfs/$CLIENT_HOST"
bash "$REALM_SH" addprinc "$STATE" "$LAB_USER" -pw-stdin <"$password_file"
for princ in "host/$CLIENT_HOST" "nfs/$CLIENT_HOST" "nfs/$NFS_HOST" "host/$NFS_HOST"; do
    bash "$REALM_SH" addprinc "$STATE" "$princ" -randkey
done

step "keytabs for the client and nfs boxes in $SHARED"
rm -f "$SHARED/client.keytab" "$SHARED/nfs.keytab"
bash "$REALM_SH" ktadd "$STATE" "$SHARED/client.keytab" "host/$CLIENT_HOST" "nfs/$CLIENT_HOST"
bash "$REALM_SH" ktadd "$STATE" "$SHARED/nfs.keytab" "nfs/$NFS_HOST" "host/$NFS_HOST"

umask 022
cp "$STATE/krb5.conf" "$SHARED/krb5.conf"
chmod 0644 "$SHARED/krb5.conf"
step "done: krb5.conf, keytabs and the $LAB_USER password are in $SHARED"
