#!/usr/bin/env bash
# Build (once) the Debian 12 root filesystem that pam_keyinit_py/lab/systemd.py boots systemd in.
#
#   scripts/systemd-rootfs.sh CACHE_DIR     prints CACHE_DIR/rootfs-<hash> once it is complete
#
# debootstrap --variant=minbase takes about a minute; the tree is kept in CACHE_DIR (default
# /var/cache/pam-keyinit-py) and reused for as long as the package list below is unchanged (its
# hash names the directory).  Each container boots an overlay on top of it, so the cached tree
# is never written to.  flock keeps two concurrent test runs from building it twice.
#
# What the container needs beyond systemd: /usr/bin/python3 with venv and a compiler, so that
# `keyinit install` builds the package and its cffi extensions there exactly as on a user's host;
# pam_python, pam-auth-update, pamtester and sshd for real logins through the installed stack;
# keyutils and the krb5 client tools to look at what the service wrote.
set -euo pipefail

CACHE=${1:-/var/cache/pam-keyinit-py}
SUITE=bookworm
MIRROR=${DEBOOTSTRAP_MIRROR:-http://deb.debian.org/debian}
PACKAGES=systemd,systemd-sysv,dbus,python3,python3-venv,python3-dev,gcc,libc6-dev,libffi-dev,pkg-config,libkeyutils-dev,keyutils,libkrb5-dev,krb5-user,libpam-python,libpam-runtime,pamtester,openssh-server,ca-certificates

command -v debootstrap >/dev/null || { echo "systemd-rootfs: debootstrap is not installed (make setup)" >&2; exit 1; }
hash=$(printf '%s %s %s\n' "$SUITE" "$PACKAGES" "v1" | sha256sum | cut -c1-12)
ROOT=$CACHE/rootfs-$hash
mkdir -p "$CACHE"
exec 9>"$CACHE/rootfs.lock"
flock 9
if [ ! -f "$ROOT/.pkk-rootfs-complete" ]; then
    tmp=$CACHE/rootfs-$hash.building
    rm -rf "$tmp"
    echo "systemd-rootfs: debootstrap $SUITE into $ROOT (about a minute, once)" >&2
    if ! debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$tmp" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1; then
        echo "systemd-rootfs: debootstrap failed; last lines of $CACHE/debootstrap.log:" >&2
        tail -20 "$CACHE/debootstrap.log" >&2
        rm -rf "$tmp"
        exit 1
    fi
    # No apt caches in the image; the container never installs packages.
    rm -rf "$tmp"/var/cache/apt/archives/*.deb "$tmp"/var/lib/apt/lists/*
    # A container has no consoles to spawn gettys on, and nothing to fsck or resize.
    for unit in getty@tty1.service console-getty.service; do
        rm -f "$tmp/etc/systemd/system/getty.target.wants/$unit"
    done
    # The container shares the host's network: Debian's ssh.service would take port 22 from the
    # host.  Tests start their own sshd on a free loopback port (systemd-run).
    rm -f "$tmp/etc/systemd/system/multi-user.target.wants/ssh.service" "$tmp/etc/systemd/system/sshd.service"
    ln -sf /dev/null "$tmp/etc/systemd/system/ssh.service"
    ln -sf /dev/null "$tmp/etc/systemd/system/ssh.socket"
    touch "$tmp/.pkk-rootfs-complete"
    rm -rf "$ROOT"
    mv "$tmp" "$ROOT"
fi
echo "$ROOT"
