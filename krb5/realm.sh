#!/bin/bash
# krb5/realm.sh: the one bootstrap of a throwaway MIT Kerberos realm on loopback.
#
# Used by `make demo`, the test suite (tests/fixtures_krb5.py via pam_keyinit_py.lab.realm) and
# vagrant/ provisioning, so it is plain bash plus the MIT tools (krb5-kdc, krb5-admin-server).
#
#   realm.sh start DIR [-r REALM] [-l MAXLIFE] [-R MAXRENEW] [-a ADDR] [-p PORT] [-x RELATION]... [-O SERVER]
#       Create the realm database in DIR if it is not there yet (kdb5_util create -s), write
#       DIR/kdc.conf and DIR/krb5.conf from the templates beside this script, and start krb5kdc
#       on a free 127.0.0.1 port, or on ADDR:PORT (the vagrant kdc box serves its network).
#       Each -x adds a relation to the realm's kdc.conf stanza ("disable_encrypted_timestamp = true").
#       -O gives kdc.conf an [otp] DEFAULT token type whose RADIUS server is SERVER (a UNIX socket
#       path, empty secret; strip_realm): the KDC's otp preauth (krb5-otp) asks it for principals
#       with the `otp` string attribute (`setstr DIR NAME otp []`); OTP needs FAST.
#       A new realm also gets the host keytab of `hostkeytab` (DIR/krb5.keytab, krb5.conf's
#       default_keytab_name).  A second `start` on an existing DIR restarts the KDC on the
#       same port with the same database ("KDC back").  Prints the env lines (see `env`).
#   realm.sh stop DIR               Stop krb5kdc (the database stays: "KDC down").
#   realm.sh destroy DIR            Stop and remove everything realm.sh wrote in DIR.
#   realm.sh addprinc DIR NAME [-maxlife D] [-maxrenewlife D] [-randkey | -pw-stdin | -nokey]
#       Add (or, if it exists, modify) a principal.  With -pw-stdin the password is the first
#       line of stdin; it goes to kadmin.local on its stdin, never on any command line.
#       Without either option the key is random; -nokey gives it none (an OTP-only principal).
#   realm.sh modprinc DIR NAME ARG...    kadmin modprinc ARG... NAME (+requires_preauth, +needchange,
#       -allow_tix, -expire DATE...).
#   realm.sh setstr DIR NAME KEY VALUE   kadmin setstr (e.g. require_auth fast: tickets for NAME need a
#       TGT with that auth indicator).
#   realm.sh addpol DIR NAME ARG...      kadmin addpol ARG... NAME (e.g. -minlength 12), idempotent.
#   realm.sh ktadd DIR KEYTAB PRINC...   Write the principals' current keys to KEYTAB (-norandkey).
#   realm.sh hostkeytab DIR [HOST...]    Give each HOST (default: localhost and this host's names) a
#       random-key host/HOST principal and write them to DIR/krb5.keytab (0600): the keytab a login
#       host validates TGTs with, and sshd's GSSAPI acceptor keytab.  Prints the keytab's path.
#   realm.sh kadmind DIR [start|stop]    Start (default) or stop kadmind on the realm's loopback
#       kadmind_listen and kpasswd_listen ports: the kpasswd service that password changes use.
#   realm.sh replica DIR [start|stop|kprop|status]
#       start (default): give the realm a replica KDC: DIR/replica holds its own kdc.conf, database
#       and a copy of the stash; kpropd listens on a loopback port with DIR/krb5.keytab (the host/
#       keys) and a kpropd.acl naming the primary's host/ principals; the primary's database goes
#       over with `kdb5_util dump` + kprop; then a second krb5kdc serves it on its own port.
#       krb5.conf then lists both KDCs (primary first) and primary_kdc/master_kdc, and lets
#       libkrb5 use UDP (see krb5.conf.in).  kprop: dump the primary and propagate it again.
#       stop: stop the replica's krb5kdc and kpropd (its database stays).
#       status: exit 0 if the replica's krb5kdc runs, 3 if not.
#   realm.sh env DIR                Print `export KRB5_CONFIG=... KRB5_KDC_PROFILE=...` lines.
#   realm.sh status DIR             Print realm, port and pid; exit 0 if the KDC runs, 3 if not.
#
# Durations use kadmin syntax: 30s, 10m, 1h, "1 day".
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PROG="realm.sh" REALM_NOUN="realm"
REPLICA_PORT="" KPROP_PORT=""
# die, usage, read_realm, env_lines, pid_of, listening, serving, wait_until, stop_pidfile,
# the destroy, env and status verbs and main: what ad-realm.sh does alike.
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$HERE/common.sh"

need() {
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] ||
            die "$tool not found (apt-get install krb5-kdc krb5-admin-server krb5-kpropd krb5-user)"
    done
}

sbin() { if command -v "$1" >/dev/null 2>&1; then command -v "$1"; else echo "/usr/sbin/$1"; fi; }

# A TCP port that is free on 127.0.0.1 for both TCP and UDP (the KDC listens on both).
# The kernel picks it (bind to port 0), so parallel realms never collide on a fixed number.
free_port() {
    /usr/bin/python3 - <<'PY'
import socket
for _ in range(50):
    t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    t.bind(("127.0.0.1", 0))
    port = t.getsockname()[1]
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        u.bind(("127.0.0.1", port))
    except OSError:
        t.close()
        continue
    u.close()
    t.close()
    print(port)
    break
PY
}

load() { read_realm "$1"; export KRB5_KDC_PROFILE="$DIR/kdc.conf"; }

print_env() { env_lines "KRB5_KDC_PROFILE=$DIR/kdc.conf"; }

render() { # template output
    local replica=(-e '/^@REPLICA_KDC@$/d') udp=(-e 's|^@UDP_PREF@$|    udp_preference_limit = 1|')
    if [ -n "${REPLICA_PORT:-}" ]; then
        replica=(-e "s|^@REPLICA_KDC@\$|        kdc = $ADDR:$REPLICA_PORT\n        primary_kdc = $ADDR:$PORT\n        master_kdc = $ADDR:$PORT|")
        udp=(-e 's|^@UDP_PREF@$|    # udp_preference_limit: the default (UDP first): a replica is listed|')
    fi
    sed "${replica[@]}" "${udp[@]}" -e "s|@REALM@|$REALM|g" -e "s|@DIR@|$DIR|g" -e "s|@PORT@|$PORT|g" \
        -e "s|@KADMIN_PORT@|$KADMIN_PORT|g" -e "s|@KPASSWD_PORT@|$KPASSWD_PORT|g" \
        -e "s|@MAXLIFE@|$MAXLIFE|g" -e "s|@MAXRENEW@|$MAXRENEW|g" -e "s|@ADDR@|$ADDR|g" "$1" >"$2.tmp"
    mv -f "$2.tmp" "$2"
}

kdc_pid() { pid_of "$DIR/krb5kdc.pid" krb5kdc; }

# For wait_until: 0 once the KDC serves its port; 2 if it wrote its pid file and died (someone
# holds the port); 1 while neither.
kdc_up() {
    serving "$DIR/krb5kdc.pid" krb5kdc "${ADDR:-}" "$PORT" && return 0
    [ -f "$DIR/krb5kdc.pid" ] && ! kdc_pid >/dev/null && return 2
    return 1
}

kadmin() { "$(sbin kadmin.local)" -r "$REALM" "$@"; }

# VERB ARG...: the kadmin.local request "VERB ARG..." on its stdin (nothing of it reaches argv);
# its reply (stdout and stderr) in KADMIN_OUT: kadmin.local exits 0 even when a request fails, so
# the caller judges by the message.  An ARG with a double quote or ';' is refused.
kadmin_request() {
    case "$*" in *[\"\;]*) die "$1: bad argument" ;; esac
    KADMIN_OUT="$(printf '%s\n' "$*" | kadmin 2>&1)" || true
}

# The last lines of KADMIN_OUT for an error message, without kadmin.local's prompt echo and its
# "Authenticating as principal ... with password" line.
kadmin_said() { grep -v '^kadmin.local:\|^Authenticating' <<<"$KADMIN_OUT" | tail -n 2; }

cmd_start() {
    local dir="" realm="PKK.TEST" maxlife="10m" maxrenew="1h" addr="127.0.0.1" port="" extra=() x otp=""
    while [ $# -gt 0 ]; do
        case "$1" in
            -r) realm="$2"; shift 2 ;;
            -a) addr="$2"; shift 2 ;;
            -p) port="$2"; shift 2 ;;
            -l) maxlife="$2"; shift 2 ;;
            -R) maxrenew="$2"; shift 2 ;;
            -x) case "$2" in *[![:alnum:]_\ =.-]*|"") die "start: bad relation: $2" ;; esac
                extra+=("$2"); shift 2 ;;
            -O) case "$2" in /*) ;; *) die "start: -O takes a UNIX socket path" ;; esac
                case "$2" in *[![:alnum:]_/.-]*) die "start: bad OTP server: $2" ;; esac
                otp="$2"; shift 2 ;;
            -*) die "start: unknown option $1" ;;
            *) [ -z "$dir" ] || die "start: one DIR only"; dir="$1"; shift ;;
        esac
    done
    [ -n "$dir" ] || usage
    need krb5kdc kdb5_util kadmin.local
    mkdir -p "$dir"
    DIR="$(cd "$dir" && pwd)"
    if [ ! -f "$DIR/realm.env" ]; then
        REALM="$realm" MAXLIFE="$maxlife" MAXRENEW="$maxrenew" ADDR="$addr"
        PORT="${port:-$(free_port)}" KADMIN_PORT="$(free_port)" KPASSWD_PORT="$(free_port)"
        [ -n "$PORT" ] || die "no free port on 127.0.0.1"
        render "$HERE/kdc.conf.in" "$DIR/kdc.conf"
        for x in "${extra[@]}"; do
            sed -i "/^ *supported_enctypes = /a\\        $x" "$DIR/kdc.conf"
        done
        if [ -n "$otp" ]; then
            printf '\n[otp]\n    DEFAULT = {\n        server = %s\n        strip_realm = true\n    }\n' \
                "$otp" >>"$DIR/kdc.conf"
        fi
        render "$HERE/krb5.conf.in" "$DIR/krb5.conf"
        chmod 0644 "$DIR/krb5.conf"  # read by every user's klist/kinit
        echo "*/admin@$REALM *" >"$DIR/kadm5.acl"
        export KRB5_CONFIG="$DIR/krb5.conf" KRB5_KDC_PROFILE="$DIR/kdc.conf"
        # The master password of a throwaway database: random, fed on stdin, stashed, forgotten.
        local master
        master="$(head -c 24 /dev/urandom | base64)"
        printf '%s\n%s\n' "$master" "$master" |
            "$(sbin kdb5_util)" -r "$REALM" create -s >"$DIR/kdb5_util.log" 2>&1 ||
            die "kdb5_util create failed: $(tail -n 3 "$DIR/kdb5_util.log")"
        unset master
        { printf 'REALM=%q\nPORT=%q\nKADMIN_PORT=%q\nKPASSWD_PORT=%q\nADDR=%q\n' \
              "$REALM" "$PORT" "$KADMIN_PORT" "$KPASSWD_PORT" "$ADDR"
          printf 'MAXLIFE=%q\nMAXRENEW=%q\n' "$MAXLIFE" "$MAXRENEW"; } >"$DIR/realm.env"
        # A login host validates TGTs with its host keytab: a new realm comes with one.
        cmd_hostkeytab "$DIR" >/dev/null
    else
        load "$DIR"
    fi
    if kdc_pid >/dev/null; then print_env; return 0; fi
    local try pid
    for ((try = 0; try < 10; try++)); do
        rm -f "$DIR/krb5kdc.pid"
        "$(sbin krb5kdc)" -r "$REALM" -P "$DIR/krb5kdc.pid" >>"$DIR/krb5kdc.out" 2>&1 || true
        if wait_until 100 0.02 kdc_up; then print_env; return 0; fi
        # Someone took our port between runs (restart after "KDC down"): wait and retry.
        if pid="$(kdc_pid)"; then kill "$pid" 2>/dev/null || true; fi
        sleep 0.2
    done
    die "krb5kdc did not start on ${ADDR:-127.0.0.1}:$PORT; see $DIR/kdc.log and $DIR/krb5kdc.out"
}

cmd_stop() { [ $# -eq 1 ] || usage; load "$1"; stop_pidfile "$DIR/krb5kdc.pid" krb5kdc; }

# For destroy (common.sh): every daemon of the realm, then every file start and the verbs wrote.
stop_daemons() { kadmind_stop "$DIR"; cmd_stop "$DIR"; replica_stop; }

remove_files() {
    rm -rf "$DIR/replica"
    rm -f "$DIR"/replica_datatrans*
    rm -f "$DIR"/principal* "$DIR/stash" "$DIR/kdc.conf" "$DIR/krb5.conf" "$DIR/kadm5.acl" "$DIR/krb5.keytab" \
        "$DIR"/*.log "$DIR/krb5kdc.out" "$DIR/kadmind.out" "$DIR/kadmind.pid" "$DIR/realm.env"
}

cmd_addprinc() {
    [ $# -ge 2 ] || usage
    load "$1"
    local name="$2" opts=() key="-randkey" pw=""
    shift 2
    while [ $# -gt 0 ]; do
        case "$1" in
            -maxlife|-maxrenewlife) opts+=("$1" "\"$2\""); shift 2 ;;
            -randkey) key="-randkey"; shift ;;
            -nokey) key="-nokey"; shift ;;
            -pw-stdin) key="-pw"; IFS= read -r pw || [ -n "$pw" ] || die "addprinc: no password on stdin"
                       shift ;;
            *) die "addprinc: unknown option $1" ;;
        esac
    done
    case "$name" in *[[:space:]\"]*) die "addprinc: bad principal name" ;; esac
    case "$pw" in *\"*|*$'\n'*) die "addprinc: the password may not contain a double quote" ;; esac
    local out
    # kadmin.local reads its requests from stdin: the password never reaches argv or environ.
    if [ "$key" = "-pw" ]; then
        out="$(printf 'addprinc %s -pw "%s" %s\n' "${opts[*]:-}" "$pw" "$name" | kadmin 2>&1)" || true
    else
        out="$(printf 'addprinc %s %s %s\n' "${opts[*]:-}" "$key" "$name" | kadmin 2>&1)" || true
    fi
    pw=""
    if grep -q 'already exists' <<<"$out"; then
        # Idempotent: bring the existing principal to the requested state.
        if [ "${#opts[@]}" -gt 0 ]; then
            printf 'modprinc %s %s\n' "${opts[*]}" "$name" | kadmin >/dev/null 2>&1
        fi
    elif ! grep -q 'created' <<<"$out"; then
        die "addprinc $name failed: $(grep -v '^kadmin.local:' <<<"$out" | grep -iv 'password' | tail -n 2)"
    fi
}

cmd_modprinc() {
    [ $# -ge 3 ] || usage
    load "$1"
    local name="$2"
    shift 2
    kadmin_request modprinc "$@" "$name"
    grep -q "Principal \"$name@\?.*\" modified" <<<"$KADMIN_OUT" || die "modprinc $name failed: $(kadmin_said)"
}

cmd_setstr() {
    [ $# -eq 4 ] || usage
    load "$1"
    kadmin_request setstr "$2" "$3" "$4"
    grep -q "Attribute set" <<<"$KADMIN_OUT" || die "setstr $2 failed: $(kadmin_said)"
}

cmd_addpol() {
    [ $# -ge 3 ] || usage
    load "$1"
    local name="$2"
    shift 2
    kadmin_request addpol "$@" "$name"
    # An existing policy is kept (idempotent, as addprinc).
    if grep -qiE 'error|usage|invalid' <<<"$KADMIN_OUT" && ! grep -q 'already exists' <<<"$KADMIN_OUT"; then
        die "addpol $name failed: $(kadmin_said)"
    fi
}

cmd_ktadd() {
    [ $# -ge 3 ] || usage
    load "$1"
    local keytab="$2" p
    shift 2
    for p in "$@"; do
        kadmin -q "ktadd -k $keytab -norandkey $p" >/dev/null 2>"$DIR/ktadd.err" ||
            die "ktadd $p failed: $(cat "$DIR/ktadd.err")"
        # kadmin.local exits 0 even when the request fails: judge by its message.
        if grep -qiE 'error|not found|no such|does not exist' "$DIR/ktadd.err"; then
            die "ktadd $p: $(grep -v '^Authenticating' "$DIR/ktadd.err")"
        fi
    done
    rm -f "$DIR/ktadd.err"
}

cmd_hostkeytab() {
    [ $# -ge 1 ] || usage
    load "$1"
    shift
    local hosts=("$@") h keytab="$DIR/krb5.keytab" seen=" "
    if [ ${#hosts[@]} -eq 0 ]; then
        hosts=(localhost "$(hostname)" "$(hostname -f 2>/dev/null || hostname)")
    fi
    rm -f "$keytab"
    (umask 077; for h in "${hosts[@]}"; do
        h="${h,,}"
        case "$seen" in *" $h "*) continue ;; esac
        seen="$seen$h "
        cmd_addprinc "$DIR" "host/$h" -randkey
        cmd_ktadd "$DIR" "$keytab" "host/$h@$REALM"
    done)
    echo "$keytab"
}

kadmind_stop() { load "$1"; stop_pidfile "$DIR/kadmind.pid" kadmind; }

# kadmind (kadmin and kpasswd services) for the realm, on the ports kdc.conf names.  It daemonizes
# and writes DIR/kadmind.pid; ready when both its TCP ports accept.
cmd_kadmind() {
    [ $# -ge 1 ] && [ $# -le 2 ] || usage
    case "${2:-start}" in
        stop) kadmind_stop "$1"; return 0 ;;
        start) ;;
        *) die "kadmind: start or stop, not $2" ;;
    esac
    need kadmind
    load "$1"
    if pid_of "$DIR/kadmind.pid" kadmind >/dev/null; then return 0; fi
    rm -f "$DIR/kadmind.pid"
    "$(sbin kadmind)" -r "$REALM" -P "$DIR/kadmind.pid" >>"$DIR/kadmind.out" 2>&1 ||
        die "kadmind failed: $(tail -n 3 "$DIR/kadmind.out")"
    if wait_until 250 0.02 serving "$DIR/kadmind.pid" kadmind "${ADDR:-}" "$KPASSWD_PORT" "$KADMIN_PORT"; then
        return 0
    fi
    kadmind_stop "$DIR"
    die "kadmind did not listen on ${ADDR:-127.0.0.1}:$KPASSWD_PORT; see $DIR/kadmind.log and $DIR/kadmind.out"
}

# ---- the replica: a second krb5kdc fed by kprop/kpropd (all under DIR/replica) ----

# kdb5_util dump of the primary, sent to the replica's kpropd with kprop (host/ key from the
# realm keytab, to host/localhost on the kpropd port).
replica_kprop() {
    local rdir="$DIR/replica"
    (umask 077; "$(sbin kdb5_util)" -r "$REALM" dump "$DIR/replica_datatrans") >"$rdir/kprop.log" 2>&1 ||
        die "kdb5_util dump failed: $(tail -n 3 "$rdir/kprop.log")"
    "$(sbin kprop)" -r "$REALM" -f "$DIR/replica_datatrans" -P "$KPROP_PORT" -s "$DIR/krb5.keytab" localhost \
        >>"$rdir/kprop.log" 2>&1 || die "kprop failed: $(tail -n 3 "$rdir/kprop.log")"
    grep -q SUCCEEDED "$rdir/kprop.log" || die "kprop: $(tail -n 3 "$rdir/kprop.log")"
}

replica_start() {
    need krb5kdc kdb5_util kprop kpropd
    local rdir="$DIR/replica"
    mkdir -p "$rdir"
    chmod 0700 "$rdir"
    if [ -z "${REPLICA_PORT:-}" ]; then
        REPLICA_PORT="$(free_port)" KPROP_PORT="$(free_port)"
        [ -n "$REPLICA_PORT" ] && [ -n "$KPROP_PORT" ] || die "no free port on 127.0.0.1"
        printf 'REPLICA_PORT=%q\nKPROP_PORT=%q\n' "$REPLICA_PORT" "$KPROP_PORT" >>"$DIR/realm.env"
        # Both KDCs in krb5.conf, primary first, and primary_kdc for password errors.
        render "$HERE/krb5.conf.in" "$DIR/krb5.conf"
        chmod 0644 "$DIR/krb5.conf"
        # The replica's kdc.conf is the primary's (with any -x relations) on its own files and port.
        sed -e "s|$DIR/|$rdir/|g" -e "s|:$PORT\$|:$REPLICA_PORT|" "$DIR/kdc.conf" >"$rdir/kdc.conf"
        # Same master key: the dump carries keys encrypted in it.
        (umask 077; cp "$DIR/stash" "$rdir/stash")
        # kprop authenticates as host/<this host>: accept every host/ key of the realm keytab.
        "$(sbin klist)" -k "$DIR/krb5.keytab" 2>/dev/null | awk '$2 ~ /^host\// {print $2}' | sort -u \
            >"$rdir/kpropd.acl" || true
        [ -s "$rdir/kpropd.acl" ] || die "replica: no host/ key in $DIR/krb5.keytab for kprop"
    fi
    if ! pid_of "$rdir/kpropd.pid" kpropd >/dev/null; then
        rm -f "$rdir/kpropd.pid"
        KRB5_KDC_PROFILE="$rdir/kdc.conf" "$(sbin kpropd)" -r "$REALM" -P "$KPROP_PORT" -a "$rdir/kpropd.acl" \
            -f "$rdir/from_primary" -s "$DIR/krb5.keytab" --pid-file="$rdir/kpropd.pid" \
            >>"$rdir/kpropd.out" 2>&1 || die "kpropd failed: $(tail -n 3 "$rdir/kpropd.out")"
        wait_until 250 0.02 serving "$rdir/kpropd.pid" kpropd "${ADDR:-}" "$KPROP_PORT" ||
            listening "$KPROP_PORT" "${ADDR:-}" ||
            die "kpropd did not listen on 127.0.0.1:$KPROP_PORT; see $rdir/kpropd.out"
    fi
    [ -f "$rdir/principal" ] || replica_kprop
    if ! pid_of "$rdir/krb5kdc.pid" krb5kdc >/dev/null; then
        rm -f "$rdir/krb5kdc.pid"
        KRB5_KDC_PROFILE="$rdir/kdc.conf" "$(sbin krb5kdc)" -r "$REALM" -P "$rdir/krb5kdc.pid" \
            >>"$rdir/krb5kdc.out" 2>&1 || true
        wait_until 250 0.02 serving "$rdir/krb5kdc.pid" krb5kdc "${ADDR:-}" "$REPLICA_PORT" && return 0
        die "replica krb5kdc did not start on 127.0.0.1:$REPLICA_PORT; see $rdir/kdc.log and $rdir/krb5kdc.out"
    fi
}

replica_stop() {
    [ -d "$DIR/replica" ] || return 0
    stop_pidfile "$DIR/replica/krb5kdc.pid" krb5kdc
    stop_pidfile "$DIR/replica/kpropd.pid" kpropd
}

cmd_replica() {
    [ $# -ge 1 ] && [ $# -le 2 ] || usage
    load "$1"
    case "${2:-start}" in
        start) replica_start ;;
        stop) replica_stop ;;
        kprop) [ -n "${REPLICA_PORT:-}" ] || die "no replica (run: $PROG replica $DIR)"; replica_kprop ;;
        status)
            local pid
            if pid="$(pid_of "$DIR/replica/krb5kdc.pid" krb5kdc)"; then
                echo "realm $REALM replica kdc 127.0.0.1:${REPLICA_PORT:-} pid $pid"
            else
                echo "realm $REALM replica stopped"
                return 3
            fi ;;
        *) die "replica: start, stop, kprop or status, not $2" ;;
    esac
}

main "$@"
