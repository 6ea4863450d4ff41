#!/bin/bash
# krb5/ad-realm.sh: the one bootstrap of a throwaway Active Directory realm (a Samba AD DC) on loopback.
#
# The AD counterpart of realm.sh, with the same verbs: the demo, the tests (tests/fixtures_ad.py via
# pam_keyinit_py.lab.adrealm) and vagrant/ use it.  Plain bash plus Debian's samba 4.17
# (samba samba-ad-dc samba-ad-provision: `make setup` installs them).
#
#   ad-realm.sh start DIR [-r REALM] [-l LIFE_HOURS] [-R RENEW_HOURS] [-a ADDR]
#       Provision a domain (samba-tool domain provision) into DIR with a PRIVATE smb.conf
#       (DIR/etc/smb.conf: the host's /etc/samba/smb.conf is never read or written), no DNS
#       server, only the KDC service, bound to lo (and ADDR: the vagrant kdc box serves its
#       network).  Writes DIR/krb5.conf (KDC ADDR:88, default 127.0.0.1,
#       default ccache KEYRING:persistent:%{uid}, default keytab DIR/krb5.keytab) and the host
#       computer account's AES keytab (see hostkeytab).  Then starts `samba` and waits until its
#       KDC answers on 127.0.0.1:88.  The KDC's user ticket life and renewal are whole hours
#       (Samba's kdc:user ticket lifetime / kdc:renewal lifetime; AD's defaults are 10 and 168).
#       A second start of an existing DIR starts samba again on the same database.
#       Port 88 must be free on 127.0.0.1 and ::1: one AD realm per machine at a time.
#   ad-realm.sh stop DIR            Stop samba (the database stays).
#   ad-realm.sh destroy DIR         Stop and remove everything ad-realm.sh wrote in DIR.
#   ad-realm.sh adduser DIR NAME -pw-stdin [-groups N] [-upn UPN]
#       Create the AD user NAME (sAMAccountName; UPN NAME@dnsdomain unless -upn) with the
#       password on the first line of stdin (never on a command line).  -groups N also makes N
#       security groups NAME-g0001.. and puts the user in each (the PAC grows with each).
#       An existing user gets the new password and the missing groups.
#   ad-realm.sh deluser DIR NAME    Remove the user and its NAME-g* groups (NAME$: a computer).
#   ad-realm.sh ktadd DIR KEYTAB PRINC...
#       samba-tool domain exportkeytab: the principals' current keys into KEYTAB.
#   ad-realm.sh hostkeytab DIR [-n NAME] [-k KEYTAB] [HOST...]
#       The computer account NAME$ (default: this host's short name, upper case, 15 characters
#       at most; a new random password, msDS-SupportedEncryptionTypes=24: AES128+AES256) with
#       SPNs host/HOST for each HOST (default: localhost and this host's names; a HOST with a
#       "/", such as nfs/HOST, is taken as the SPN itself), as a domain join makes it.  Its
#       AES keys under NAME$@REALM (the client name the KDC issues a TGT to: FAST armor) and
#       under each SPN@REALM (validation, GSSAPI, NFS) are exported to
#       KEYTAB (default DIR/krb5.keytab, 0600).  `samba-tool computer create` alone makes an
#       account without keys (exportkeytab writes nothing): the password is set here.
#   ad-realm.sh env DIR             Print `export KRB5_CONFIG=... REALM=... KDC_PORT=88` lines.
#   ad-realm.sh status DIR          Print realm, port and pid; exit 0 if samba runs, 3 if not.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PROG="ad-realm.sh" REALM_NOUN="AD realm"
PY=/usr/bin/python3   # python3-samba is for Debian's interpreter, not a venv or pyenv one
PORT=88               # Samba's KDC has no port setting: AD clients find it on 88
# die, usage, read_realm, env_lines, pid_of, listening, serving, wait_until, stop_pidfile,
# the destroy, env and status verbs and main: what realm.sh does alike.
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$HERE/common.sh"

need() {
    command -v samba-tool >/dev/null 2>&1 && [ -x /usr/sbin/samba ] &&
        [ -d /usr/share/samba/setup/ad-schema ] && "$PY" -c 'import samba.samdb' 2>/dev/null ||
        die "samba AD DC not installed (make setup: apt-get install samba samba-ad-dc samba-ad-provision)"
}

load() { read_realm "$1"; SMBCONF="$DIR/etc/smb.conf"; }

print_env() { env_lines; }

kdc_pid() { pid_of "$DIR/run/samba.pid" samba; }

# Who else holds 88 on loopback (an MIT KDC, a host samba)?  Samba would fail to bind it.
port_owner() {
    /usr/bin/python3 - "$PORT" <<'PY'
import socket, sys
port = int(sys.argv[1])
for fam, addr in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        s = socket.socket(fam, kind)
        try:
            s.bind((addr, port))
        except OSError as exc:
            print(f"{addr} port {port}/{'tcp' if kind == socket.SOCK_STREAM else 'udp'}: {exc.strerror}")
            sys.exit(0)
        finally:
            s.close()
PY
}

# The samba python bindings on the private sam.ldb (no LDAP server, no admin password).
# The program is in argv (no secret in it); any password comes on stdin.
samdb() {
    local code="$1"
    shift
    "$PY" -c "
import sys
from samba.param import LoadParm
from samba.auth import system_session
from samba.samdb import SamDB
import ldb
lp = LoadParm()
lp.load(sys.argv[1])
db = SamDB(url=sys.argv[2], session_info=system_session(), lp=lp)
args = sys.argv[3:]
$code" "$SMBCONF" "$DIR/private/sam.ldb" "$@"
}

cmd_start() {
    local dir="" realm="AD.PKK.TEST" life=10 renew=168 addr=127.0.0.1
    while [ $# -gt 0 ]; do
        case "$1" in
            -r) realm="$2"; shift 2 ;;
            -l) life="$2"; shift 2 ;;
            -R) renew="$2"; shift 2 ;;
            -a) addr="$2"; shift 2 ;;
            -*) die "start: unknown option $1" ;;
            *) [ -z "$dir" ] || die "start: one DIR only"; dir="$1"; shift ;;
        esac
    done
    [ -n "$dir" ] || usage
    case "$life$renew" in *[!0-9]*) die "start: -l and -R take whole hours" ;; esac
    case "$realm" in *[!A-Z0-9.-]*|"") die "start: the realm is upper case DNS labels: $realm" ;; esac
    case "$addr" in *[!0-9.]*|"") die "start: -a takes an IPv4 address: $addr" ;; esac
    need
    mkdir -p "$dir"
    DIR="$(cd "$dir" && pwd)"
    SMBCONF="$DIR/etc/smb.conf"
    if [ ! -f "$DIR/realm.env" ]; then
        local domain="${realm%%.*}" dnsdomain="${realm,,}" ifaces="lo"
        # -a: also serve a private network's address (the vagrant kdc box); lo stays for the lab.
        [ "$addr" = 127.0.0.1 ] || ifaces="lo $addr"
        domain="${domain:0:15}"
        mkdir -p "$DIR/etc" "$DIR/run"
        # An empty private smb.conf: provision writes its own there.  Without --configfile
        # samba-tool would load (and provision would copy) the host's /etc/samba/smb.conf.
        : >"$SMBCONF"
        "$(command -v samba-tool)" domain provision --configfile="$SMBCONF" --targetdir="$DIR" \
            --realm="$realm" --domain="$domain" --server-role=dc --dns-backend=NONE \
            --host-name=pkkdc --host-ip=127.0.0.1 \
            --option="interfaces = $ifaces" --option="bind interfaces only = yes" \
            >"$DIR/provision.log" 2>&1 ||
            die "samba-tool domain provision failed: $(tail -n 3 "$DIR/provision.log")"
        # Only the KDC (with kpasswd): no DNS, SMB, RPC or LDAP listeners on the host.
        sed -i -e '/^\s*server services\s*=/d' -e "/^\[global\]/a\\
\tserver services = kdc\\
\tpid directory = $DIR/run\\
\tlog file = $DIR/samba.log\\
\tmax log size = 1000\\
\tkdc:user ticket lifetime = $life\\
\tkdc:service ticket lifetime = $life\\
\tkdc:renewal lifetime = $renew" "$SMBCONF"
        # Test passwords: no complexity rule, no expiry ("password will expire" warnings).
        samba-tool domain passwordsettings set --configfile="$SMBCONF" -H "$DIR/private/sam.ldb" \
            --complexity=off --max-pwd-age=0 --min-pwd-age=0 --min-pwd-length=1 --history-length=0 \
            >>"$DIR/provision.log" 2>&1 || die "passwordsettings failed: $(tail -n 3 "$DIR/provision.log")"
        REALM="$realm"
        cat >"$DIR/krb5.conf" <<EOF
# krb5.conf for a throwaway Samba AD realm (generated by krb5/ad-realm.sh).
[libdefaults]
    default_realm = $REALM
    dns_lookup_kdc = false
    dns_lookup_realm = false
    rdns = false
    ignore_acceptor_hostname = true
    default_ccache_name = KEYRING:persistent:%{uid}
    forwardable = true
    default_keytab_name = FILE:$DIR/krb5.keytab
    udp_preference_limit = 1

[realms]
    $REALM = {
        kdc = $addr:$PORT
        admin_server = $addr:$PORT
        kpasswd_server = $addr:464
    }

[domain_realm]
    localhost = $REALM
    .$dnsdomain = $REALM
    $dnsdomain = $REALM
EOF
        chmod 0644 "$DIR/krb5.conf"
        printf 'REALM=%q\nDOMAIN=%q\nDNSDOMAIN=%q\nLIFE_HOURS=%q\nRENEW_HOURS=%q\nADDR=%q\n' \
            "$REALM" "$domain" "$dnsdomain" "$life" "$renew" "$addr" >"$DIR/realm.env"
        cmd_hostkeytab "$DIR" >/dev/null
    else
        load "$DIR"
    fi
    if kdc_pid >/dev/null; then print_env; return 0; fi
    local owner
    owner="$(port_owner)"
    [ -z "$owner" ] || die "cannot start the AD KDC: $owner (another KDC or samba on this machine?)"
    rm -f "$DIR/run/samba.pid"
    # One process (-M single): a lab KDC on a 2-core machine.  It daemonizes and writes the pid.
    /usr/sbin/samba -D -M single -s "$SMBCONF" >>"$DIR/samba.out" 2>&1 ||
        die "samba failed to start: $(tail -n 3 "$DIR/samba.out")"
    if wait_until 300 0.05 serving "$DIR/run/samba.pid" samba 127.0.0.1 "$PORT"; then print_env; return 0; fi
    cmd_stop "$DIR" || true
    die "samba's KDC did not answer on 127.0.0.1:$PORT; see $DIR/samba.log and $DIR/samba.out"
}

cmd_stop() { [ $# -eq 1 ] || usage; load "$1"; stop_pidfile "$DIR/run/samba.pid" samba; }

# For destroy (common.sh): samba, then everything provision, start and the verbs wrote.
stop_daemons() { cmd_stop "$DIR"; }

remove_files() {
    rm -rf "${DIR:?}/etc" "$DIR/private" "$DIR/state" "$DIR/cache" "$DIR/bind-dns" "$DIR/run" \
        "$DIR/msg.lock" "$DIR/msg.sock" "$DIR/sysvol" "$DIR/provision.log" "$DIR"/*.tdb "$DIR"/*.log* "$DIR/samba.out" "$DIR/krb5.conf" \
        "$DIR/krb5.keytab" "$DIR/realm.env"
}

check_name() {
    case "$1" in ""|*[!A-Za-z0-9._-]*) die "$2: bad name: $1" ;; esac
    [ "${#1}" -le 20 ] || die "$2: sAMAccountName longer than 20: $1"
}

cmd_adduser() {
    [ $# -ge 2 ] || usage
    load "$1"
    local name="$2" groups=0 upn="" pw="" have_pw=""
    shift 2
    check_name "$name" adduser
    while [ $# -gt 0 ]; do
        case "$1" in
            -pw-stdin) IFS= read -r pw || [ -n "$pw" ] || die "adduser: no password on stdin"
                       have_pw=1; shift ;;
            -groups) groups="$2"; shift 2 ;;
            -upn) upn="$2"; shift 2 ;;
            *) die "adduser: unknown option $1" ;;
        esac
    done
    [ -n "$have_pw" ] || die "adduser: -pw-stdin is required"
    case "$groups" in *[!0-9]*|"") die "adduser: -groups takes a number" ;; esac
    case "$upn" in *[[:space:]]*) die "adduser: bad UPN" ;; esac
    # shellcheck disable=SC2016
    printf '%s\n' "$pw" | samdb '
name, groups, upn = args[0], int(args[1]), args[2]
pw = sys.stdin.readline().rstrip("\n")
found = db.search(db.domain_dn(), scope=ldb.SCOPE_SUBTREE,
                  expression="(sAMAccountName=%s)" % ldb.binary_encode(name), attrs=["dn"])
if found:
    db.setpassword("(sAMAccountName=%s)" % ldb.binary_encode(name), pw)
else:
    db.newuser(name, pw)
del pw
dn = db.search(db.domain_dn(), scope=ldb.SCOPE_SUBTREE,
               expression="(sAMAccountName=%s)" % ldb.binary_encode(name), attrs=["dn"])[0].dn
if upn:
    m = ldb.Message(dn)
    m["userPrincipalName"] = ldb.MessageElement(upn, ldb.FLAG_MOD_REPLACE, "userPrincipalName")
    db.modify(m)
if groups:
    have = {str(r["sAMAccountName"][0]) for r in db.search(
        db.domain_dn(), scope=ldb.SCOPE_SUBTREE,
        expression="(&(objectClass=group)(sAMAccountName=%s-g*))" % ldb.binary_encode(name),
        attrs=["sAMAccountName"])}
    db.transaction_start()
    try:
        for i in range(1, groups + 1):
            g = "%s-g%04d" % (name, i)
            if g not in have:
                db.newgroup(g)
                gdn = "CN=%s,CN=Users,%s" % (g, db.domain_dn())
                m = ldb.Message(ldb.Dn(db, gdn))
                m["member"] = ldb.MessageElement(str(dn), ldb.FLAG_MOD_ADD, "member")
                db.modify(m)
        db.transaction_commit()
    except BaseException:
        db.transaction_cancel()
        raise
' "$name" "$groups" "$upn" 2>"$DIR/adduser.err" ||
        die "adduser $name failed: $(grep -iv password "$DIR/adduser.err" | tail -n 2)"
    pw=""
    rm -f "$DIR/adduser.err"
}

cmd_deluser() {
    [ $# -eq 2 ] || usage
    load "$1"
    check_name "${2%\$}" deluser
    samdb '
name = args[0]
for r in db.search(db.domain_dn(), scope=ldb.SCOPE_SUBTREE, attrs=["dn"],
                   expression="(|(sAMAccountName=%s)(&(objectClass=group)(sAMAccountName=%s-g*)))"
                   % (ldb.binary_encode(name), ldb.binary_encode(name))):
    db.delete(r.dn)
' "$2" 2>"$DIR/deluser.err" || die "deluser $2 failed: $(tail -n 2 "$DIR/deluser.err")"
    rm -f "$DIR/deluser.err"
}

cmd_ktadd() {
    [ $# -ge 3 ] || usage
    load "$1"
    local keytab="$2" p
    shift 2
    for p in "$@"; do
        samba-tool domain exportkeytab "$keytab" --configfile="$SMBCONF" --principal="$p" \
            >"$DIR/ktadd.err" 2>&1 || die "ktadd $p failed: $(tail -n 2 "$DIR/ktadd.err")"
        [ -s "$keytab" ] || die "ktadd $p: exportkeytab wrote no keytab (an account without keys?)"
    done
    rm -f "$DIR/ktadd.err"
}

# Keep only the AES keys (17, 18) of KEYTAB: exportkeytab of an account's own name also writes
# its RC4 key (the NT hash), which an AES-only host has no use for.
aes_only() {
    local keytab="$1" slots
    slots="$(printf 'rkt %s\nlist -e\n' "$keytab" | ktutil 2>/dev/null |
        awk '$1 ~ /^[0-9]+$/ && $0 !~ /aes(128|256)-cts-hmac-sha1-96/ {print $1}' | sort -rn)"
    [ -n "$slots" ] || return 0
    {
        printf 'rkt %s\n' "$keytab"
        printf 'delent %s\n' $slots
        printf 'wkt %s.aes\n' "$keytab"
    } | ktutil >/dev/null 2>&1 || die "hostkeytab: ktutil could not drop the RC4 keys of $keytab"
    mv -f "$keytab.aes" "$keytab"
}

cmd_hostkeytab() {
    [ $# -ge 1 ] || usage
    load "$1"
    shift
    local name="" keytab="$DIR/krb5.keytab" hosts=() h seen=" " spns=()
    while [ $# -gt 0 ]; do
        case "$1" in
            -n) name="$2"; shift 2 ;;
            -k) keytab="$2"; shift 2 ;;
            -*) die "hostkeytab: unknown option $1" ;;
            *) hosts+=("$1"); shift ;;
        esac
    done
    if [ ${#hosts[@]} -eq 0 ]; then
        hosts=(localhost "$(hostname)" "$(hostname -f 2>/dev/null || hostname)")
    fi
    for h in "${hosts[@]}"; do
        h="${h,,}"
        case "$h" in */*) ;; *) h="host/$h" ;; esac
        case "$seen" in *" $h "*) continue ;; esac
        case "${h#*/}" in *[!a-z0-9.-]*|"") die "hostkeytab: bad host name $h" ;; esac
        case "${h%%/*}" in *[!a-z0-9-]*|"") die "hostkeytab: bad service name $h" ;; esac
        seen="$seen$h "
        spns+=("$h")
    done
    # The computer account's name is the host's NetBIOS name: its short name, upper case, at
    # most 15 characters (what a join names it, and what SSSD looks for first in a keytab).
    if [ -z "$name" ]; then
        name="$(hostname)"
        name="${name%%.*}"
    fi
    name="${name^^}"
    name="${name:0:15}"
    case "$name" in *[!A-Z0-9-]*|"") die "hostkeytab: bad computer name $name" ;; esac
    # A random password nobody sees: it goes to samba on stdin, and its keys to the keytab.
    head -c 32 /dev/urandom | base64 | samdb '
name, spns = args[0], args[1:]
pw = sys.stdin.readline().strip()
filt = "(sAMAccountName=%s$)" % ldb.binary_encode(name)
found = db.search(db.domain_dn(), scope=ldb.SCOPE_SUBTREE, expression=filt, attrs=["dn"])
if not found:
    db.newcomputer(name)
db.setpassword(filt, pw)
del pw
dn = db.search(db.domain_dn(), scope=ldb.SCOPE_SUBTREE, expression=filt, attrs=["dn"])[0].dn
m = ldb.Message(dn)
m["servicePrincipalName"] = ldb.MessageElement(spns, ldb.FLAG_MOD_REPLACE, "servicePrincipalName")
# 24 = AES128 | AES256: service tickets for these SPNs are AES, never RC4.
m["msDS-SupportedEncryptionTypes"] = ldb.MessageElement("24", ldb.FLAG_MOD_REPLACE,
                                                        "msDS-SupportedEncryptionTypes")
db.modify(m)
' "$name" "${spns[@]}" 2>"$DIR/hostkeytab.err" || die "hostkeytab: $(tail -n 2 "$DIR/hostkeytab.err")"
    rm -f "$DIR/hostkeytab.err" "$keytab"
    # The account's own name first: Samba (like AD) issues a TGT to NAME$ -- the FAST armor --
    # but not to its host/ SPNs, which only serve (validation, sshd's GSSAPI).
    (umask 077
     cmd_ktadd "$DIR" "$keytab" "$name\$@$REALM"
     for h in "${spns[@]}"; do cmd_ktadd "$DIR" "$keytab" "$h@$REALM"; done
     aes_only "$keytab")
    echo "$keytab"
}

main "$@"
