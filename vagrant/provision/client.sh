#!/bin/bash
# Provision the client box: this project installed (make install), the lab's krb5.conf and keytab,
# the key quotas, the PAM profile enabled, keyinit-ticketd and sshd running, the lab user, and
# rpc.gssd for the Kerberized NFS mount.  Ends with `keyinit doctor`.
#
# Environment: SRC, SHARED, NFS_HOST, LAB_USER as in kdc.sh, and
#   ROOT=DIR   write the configuration files under DIR and skip everything that changes the
#              running system (packages, users, services): what CI runs on one machine.
set -euo pipefail

SRC=${SRC:-/src}
SHARED=${SHARED:-/shared}
NFS_HOST=${NFS_HOST:-nfs.lab.keyinit.test}
LAB_USER=${LAB_USER:-alice}
ROOT=${ROOT:-}

step() { echo "client: $*"; }
live() { [ -z "$ROOT" ]; }

if live; then
    step "make setup install (packages, /usr/bin/python3 venv, PAM shim, service files)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq make nfs-common
    make -C "$SRC" setup install
fi

step "krb5.conf (default_ccache_name = KEYRING:persistent:%{uid}) and the host keytab"
install -D -m 0644 "$SHARED/krb5.conf" "$ROOT/etc/krb5.conf"
install -D -m 0600 "$SHARED/client.keytab" "$ROOT/etc/krb5.keytab"

step "key quotas for real tickets (sysctl.d)"
install -D -m 0644 "$SRC/etc/sysctl.d/60-keyinit-keys.conf" "$ROOT/etc/sysctl.d/60-keyinit-keys.conf"

step "sshd: password and keyboard-interactive logins through PAM"
install -D -m 0644 /dev/stdin "$ROOT/etc/ssh/sshd_config.d/keyinit-lab.conf" <<'CONF'
UsePAM yes
PasswordAuthentication yes
KbdInteractiveAuthentication yes
CONF

if live; then
    sysctl --system >/dev/null
    # The Kerberos login: the hook first (TGT validated with /etc/krb5.keytab's host/ key),
    # pam_unix behind it.  The lab user has no local password, only the Kerberos one.
    step "pam-auth-update --enable keyinit-krb5"
    pam-auth-update --enable keyinit-krb5
    step "user $LAB_USER (local password locked; logs in with the Kerberos password)"
    id "$LAB_USER" >/dev/null 2>&1 || useradd --create-home --shell /bin/bash "$LAB_USER"
    step "services: keyinit-ticketd, ssh, rpc-gssd"
    systemd-tmpfiles --create /usr/lib/tmpfiles.d/keyinit.conf
    systemctl enable --now keyinit-ticketd.service
    systemctl restart ssh.service
    systemctl enable --now rpc-gssd.service || true
    mkdir -p /mnt/lab
    grep -q " /mnt/lab " /etc/fstab ||
        echo "$NFS_HOST:/export /mnt/lab nfs4 sec=krb5,noauto,x-systemd.automount 0 0" >>/etc/fstab
    systemctl daemon-reload
    step "keyinit doctor"
    keyinit doctor || true  # the user link passes only after $LAB_USER logs in
fi
step "done"
