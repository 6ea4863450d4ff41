#!/usr/bin/env bash
# make setup: Debian packages, a venv on /usr/bin/python3 (the interpreter that
# pam_python.so embeds), and the package with its cffi extension, editable.
# Idempotent, and quick when everything is already in place.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  # layer 0 and the keyctl anchor
  keyutils libkeyutils-dev
  # the build: cffi extension on the system interpreter
  gcc make python3-dev python3-venv libffi-dev pkg-config
  # PAM hosts: pam_python, pamtester, pam_wrapper (+ nss_wrapper: private passwd names), a real sshd + client
  libpam-python pamtester libpam-wrapper libnss-wrapper openssh-server openssh-client sshpass
  # other ways into an account (su is in login): sudo -i
  sudo
  # Kerberos: a real MIT KDC on loopback, the client tools, pykrb5's headers
  krb5-kdc krb5-admin-server krb5-kpropd krb5-user libkrb5-dev
  # the KDC's OTP preauth (RADIUS; tests/kdc/test_otp.py with lab/radius.py)
  krb5-otp
  # Active Directory: a Samba AD DC on loopback (krb5/ad-realm.sh), provisioned privately
  samba samba-ad-dc samba-ad-provision winbind smbclient ldb-tools
  # process tools used by the tests; valgrind for make bench's deterministic instruction counts
  procps passwd strace valgrind
  # a real systemd for the unit's test: debootstrap builds its root filesystem once (cached)
  debootstrap
  # the anchor for docker-credential-keyctl's error texts: upstream's Go helpers
  # (docker-credential-secretservice decodes stdin with encoding/json before any D-Bus call)
  golang-docker-credential-helpers
)

# docker-credential-keyctl is tested by the real docker CLI; bring one only if none is there.
command -v docker >/dev/null 2>&1 || PACKAGES+=(docker.io)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${db:Status-Status}\n' "$p" 2>/dev/null | grep -qx installed || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  # No daemons from these packages: the project starts its own KDC and sshd on loopback.
  policy=/usr/sbin/policy-rc.d
  created_policy=
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null && $SUDO chmod 755 "$policy"
    created_policy=1
  fi
  # samba's packages change the host (measured on Debian 12): libpam-winbind's postinst puts
  # pam_winbind into every common-* file and re-enables pam_krb5; libnss-winbind adds `winbind`
  # to nsswitch.conf.  The lab's AD DC needs none of that, so undo it at once.
  nss_saved=$(mktemp)
  cp -p /etc/nsswitch.conf "$nss_saved"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
  [ -n "$created_policy" ] && $SUDO rm -f "$policy"
  # --disable, never --remove: a removed profile comes back at the next `pam-auth-update --package`.
  if command -v pam-auth-update >/dev/null 2>&1; then
    for profile in winbind krb5; do
      if [ -e "/usr/share/pam-configs/$profile" ]; then
        $SUDO env DEBIAN_FRONTEND=noninteractive pam-auth-update --disable "$profile"
      fi
    done
  fi
  if ! cmp -s "$nss_saved" /etc/nsswitch.conf; then
    echo "setup: restoring /etc/nsswitch.conf (samba's libnss-winbind added winbind)"
    $SUDO cp "$nss_saved" /etc/nsswitch.conf
  fi
  rm -f "$nss_saved"
fi

VENV=.venv
if [ ! -x "$VENV/bin/python" ] || [ "$(readlink -f "$VENV/bin/python")" != "$(readlink -f /usr/bin/python3)" ]; then
  echo "setup: creating $VENV with /usr/bin/python3"
  rm -rf "$VENV"
  /usr/bin/python3 -m venv "$VENV"
fi

stamp=$VENV/.installed
ext=$(ls pam_keyinit_py/keyutils/_keyutils*.so 2>/dev/null | head -1 || true)
if [ ! -f "$stamp" ] || [ -z "$ext" ] || [ -n "$(find pyproject.toml setup.py pam_keyinit_py/keyutils/_build.py pam_keyinit_py/tickets/_renew_build.py -newer "$stamp" 2>/dev/null)" ]; then
  echo "setup: installing pam-keyinit-py (editable, with test extras) into $VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip setuptools wheel cffi
  # compat: a plain .pth path entry; the default import-hook finder costs ~20 ms per CLI start.
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[test]' \
    --config-settings editable_mode=compat
  touch "$stamp"
fi

# Launchers that start python -I -S (pam_keyinit_py/commands/launchers.py): pip's run site first,
# about 2 ms of every pykeyctl call.  pip rewrites them at each install above.
if ! head -1 "$VENV/bin/pykeyctl" | grep -q -- ' -IS$'; then
  "$VENV/bin/python" -m pam_keyinit_py.commands.launchers "$VENV"
fi
