# shellcheck shell=bash
# krb5/common.sh: what the two realm bootstraps, realm.sh (MIT) and ad-realm.sh (Samba AD DC),
# do alike: messages and usage, reading DIR/realm.env, the daemons' pid files (start, wait, stop),
# the `destroy`, `env` and `status` verbs and the verb dispatch.  Sourced, never run: each script sources
# it from its own directory (`. "$HERE/common.sh"`), so it works from any cwd and wherever the
# krb5/ directory is copied (vagrant syncs the whole repository to /src).
#
# The sourcing script sets HERE (its directory), PROG (its file name: messages and usage) and
# REALM_NOUN ("realm", "AD realm": the "no ... here" message), and defines:
#   load DIR     read_realm DIR plus what its own verbs need (exports, paths);
#   kdc_pid      the running KDC's pid on stdout (pid_of its pid file), or status 1;
#   print_env    the `export` lines of `env` and `start` (env_lines with its own extras);
#   stop_daemons, remove_files   destroy's two steps (after load);
#   cmd_VERB     one function a verb: `main "$@"` runs cmd_$1 with the rest.
# No file here may end in .py: krb5/ must never shadow pykrb5's `import krb5`.

die() { echo "$PROG: $*" >&2; exit 1; }

# The script's header comment from its line 4 (after the title) to the first line that is not a
# comment, without the "# ", on stderr; exit 2.
usage() {
    awk 'NR < 4 { next } !/^#/ { exit } { sub(/^# ?/, ""); print }' "$HERE/$PROG" >&2
    exit 2
}

# DIR: resolve it to an absolute path in DIR, read the REALM=... lines its realm.env holds, and
# export KRB5_CONFIG (every kinit/kadmin/ktutil the script runs reads the realm's own krb5.conf).
read_realm() {
    DIR="$(cd "$1" 2>/dev/null && pwd)" || die "$1: no such directory"
    [ -f "$DIR/realm.env" ] || die "$DIR: no $REALM_NOUN here (run: $PROG start $DIR)"
    # shellcheck disable=SC1091
    . "$DIR/realm.env"
    export KRB5_CONFIG="$DIR/krb5.conf"
}

# [NAME=VALUE...]: the `export` lines a shell evals to use the realm: KRB5_CONFIG, the extras,
# REALM and KDC_PORT, each value shell-quoted.
env_lines() {
    local kv
    for kv in "KRB5_CONFIG=$DIR/krb5.conf" "$@" "REALM=$REALM" "KDC_PORT=$PORT"; do
        printf 'export %s=%q\n' "${kv%%=*}" "${kv#*=}"
    done
}

# PIDFILE COMM: the pid in PIDFILE on stdout if that process is alive and its /proc/PID/comm is
# COMM (kill(pid, 0) alone would take a recycled pid for our daemon); status 1 otherwise.
pid_of() {
    local pid
    [ -f "$1" ] || return 1
    pid="$(cat "$1" 2>/dev/null)" || return 1
    pid="${pid//[!0-9]/}"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    grep -qx "$2" "/proc/$pid/comm" 2>/dev/null || return 1
    echo "$pid"
}

# PORT [ADDR]: status 0 if ADDR (default 127.0.0.1) accepts a TCP connection on PORT.
listening() { (exec 3<>"/dev/tcp/${2:-127.0.0.1}/$1") 2>/dev/null; }

# PIDFILE COMM ADDR PORT...: status 0 if the daemon of PIDFILE runs and every PORT accepts on ADDR.
serving() {
    local pidfile="$1" comm="$2" addr="$3" port
    shift 3
    pid_of "$pidfile" "$comm" >/dev/null || return 1
    for port in "$@"; do
        listening "$port" "$addr" || return 1
    done
}

# TRIES PAUSE CMD...: run CMD until its status is not 1, sleeping PAUSE seconds between tries;
# that status (0: done; 2 and up: CMD gave up early), or 1 when TRIES ran out.
wait_until() {
    local tries="$1" pause="$2" i rc
    shift 2
    for ((i = 0; i < tries; i++)); do
        rc=0
        "$@" || rc=$?
        [ "$rc" -eq 1 ] || return "$rc"
        sleep "$pause"
    done
    return 1
}

# PID: status 0 once that process is gone (kill(pid, 0) fails), 1 while it lives.
gone() { ! kill -0 "$1" 2>/dev/null; }

# PIDFILE COMM: stop that daemon if it runs (SIGCONT first: a SIGSTOPped process -- the failover
# tests stop a KDC -- cannot act on SIGTERM; then SIGTERM, 5 s, SIGKILL), and remove PIDFILE.
stop_pidfile() {
    local pid
    pid="$(pid_of "$1" "$2")" || { rm -f "$1"; return 0; }
    kill -CONT "$pid" 2>/dev/null || true
    kill "$pid"
    wait_until 250 0.02 gone "$pid" || kill -KILL "$pid" 2>/dev/null || true
    rm -f "$1"
}

# DIR: stop the realm's daemons, remove the files the script wrote, and DIR itself if that
# empties it.  Where no realm.env is there is nothing to do (exit 0): the lab destroys a
# half-made realm that way.
cmd_destroy() {
    [ $# -eq 1 ] || usage
    [ -f "$1/realm.env" ] || return 0
    load "$1"
    stop_daemons
    remove_files
    rmdir "$DIR" 2>/dev/null || true
}

cmd_env() { [ $# -eq 1 ] || usage; load "$1"; print_env; }

cmd_status() {
    [ $# -eq 1 ] || usage
    load "$1"
    local pid
    if pid="$(kdc_pid)"; then
        echo "realm $REALM kdc 127.0.0.1:$PORT pid $pid"
    else
        echo "realm $REALM kdc 127.0.0.1:$PORT stopped"
        return 3
    fi
}

# VERB ARG...: cmd_VERB ARG... (its status is the script's); no verb, or help: the usage.
main() {
    [ $# -ge 1 ] || usage
    local cmd="$1"
    shift
    case "$cmd" in
        -h|--help|help) usage ;;
    esac
    declare -F "cmd_$cmd" >/dev/null || { echo "$PROG: unknown command $cmd" >&2; usage; }
    "cmd_$cmd" "$@"
}
