#!/bin/bash
# Provision the kdc box: the lab realm from the one bootstrap, krb5/realm.sh (MIT) or
# krb5/ad-realm.sh (KDC_KIND=ad: a Samba AD DC), served on the private network, plus the
# principals and keytabs the client and nfs boxes need (handed over in $SHARED).
#
# Environment (the Vagrantfile sets it; CI overrides it to run this on loopback):
#   KDC_KIND  mit (default) or ad                  (ad: KDC_PORT must be 88, Samba has no other)
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
KDC_KIND=${KDC_KIND:-mit}
REALM_SH="$SRC/krb5/realm.sh"
AD_REALM_SH="$SRC/krb5/ad-realm.sh"

step() { echo "kdc: $*"; }

case "$KDC_KIND" in
    mit) ;;
    ad) [ "$KDC_PORT" = 88 ] || { echo "kdc: an AD DC serves port 88 only (KDC_PORT=$KDC_PORT)" >&2; exit 1; } ;;
    *) echo "kdc: KDC_KIND is mit or ad, not $KDC_KIND" >&2; exit 1 ;;
esac

lab_password() {
    mkdir -p "$SHARED"
    password_file="$SHARED/$LAB_USER.password"
    if [ ! -s "$password_file" ]; then
        # A lab password, random per lab, readable by the boxes through the shared folder.
        (umask 077; head -c 12 /dev/urandom | base64 | tr -d '/+=' >"$password_file")
    fi
}

# The boxes' krb5.conf: the realm's, with the default keytab where client.sh and nfs.sh put
# it (the generated one names the kdc box's own STATE/krb5.keytab).
share_krb5_conf() {
    sed -e 's|^\(\s*default_keytab_name = \).*|\1FILE:/etc/krb5.keytab|' "$STATE/krb5.conf" >"$SHARED/krb5.conf"
    chmod 0644 "$SHARED/krb5.conf"
}

if [ "$KDC_KIND" = ad ]; then
    if [ -z "${SKIP_APT:-}" ]; then
        step "installing the Samba AD DC"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            samba samba-ad-dc samba-ad-provision krb5-user
    fi
    step "starting AD realm $REALM on $KDC_ADDR:88 (krb5/ad-realm.sh: a private Samba AD DC, KDC only)"
    bash "$AD_REALM_SH" start "$STATE" -r "$REALM" -a "$KDC_ADDR" -l 10 -R 168 >/dev/null
    lab_password
    step "user $LAB_USER; computer accounts ${CLIENT_HOST%%.*} and ${NFS_HOST%%.*} with their host/ and nfs/ SPNs"
    bash "$AD_REALM_SH" adduser "$STATE" "$LAB_USER" -pw-stdin <"$password_file"
    rm -f "$SHARED/client.keytab" "$SHARED/nfs.keytab"
    # Each box's keytab holds its computer account NAME$ (FAST armor: AD issues TGTs to it) and
    # its SPNs (validation, sshd's GSSAPI, rpc.gssd / the NFS server).
    bash "$AD_REALM_SH" hostkeytab "$STATE" -n "${CLIENT_HOST%%.*}" -k "$SHARED/client.keytab" \
        "$CLIENT_HOST" "nfs/$CLIENT_HOST" >/dev/null
    bash "$AD_REALM_SH" hostkeytab "$STATE" -n "${NFS_HOST%%.*}" -k "$SHARED/nfs.keytab" \
        "nfs/$NFS_HOST" "$NFS_HOST" >/dev/null
    share_krb5_conf
    step "done: krb5.conf, keytabs and the $LAB_USER password are in $SHARED"
    exit 0
fi

if [ -z "${SKIP_APT:-}" ]; then
    step "installing the MIT KDC"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq krb5-kdc krb5-admin-server krb5-kpropd krb5-user
fi

step "starting realm $REALM on $KDC_ADDR:$KDC_PORT"
bash "$REALM_SH" start "$STATE" -r "$REALM" -a "$KDC_ADDR" -p "$KDC_PORT" -l 10h -R 7d >/dev/null
step "starting kadmind (kpasswd: passwd and expired passwords at login change the Kerberos password)"
bash "$REALM_SH" kadmind "$STATE"

lab_password
umask 077

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
share_krb5_conf
step "done: krb5.conf, keytabs and the $LAB_USER password are in $SHARED"
