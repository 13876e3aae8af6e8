#!/bin/sh
# Render nginx.conf.template for a set of hub nodes; the config goes to stdout.
#
#   render.sh [options] HOST:PORT...
#
# Options (defaults in brackets):
#   --listen ADDR:PORT         where nginx listens [127.0.0.1:8080]
#   --prefix DIR               pid file, logs and temp files go under DIR [.]
#   --pid PATH                 the pid file [DIR/nginx.pid]; a service manager's unit
#                              names its own (Debian's nginx.service: /run/nginx.pid)
#   --workers N|auto           worker processes [auto]
#   --worker-connections N     connections per worker; a socket uses two [16384]
#   --rlimit-nofile N          open files per worker [65536]
#   --error-log PATH           [DIR/logs/error.log]; "stderr" is allowed
#   --access-log PATH          [DIR/logs/access.log]; "/dev/stdout" or "off" are allowed
#   --max-fails N              failed attempts that take a node out... [0: never]
#   --fail-timeout DURATION    ...for this long [10s]
#   --connect-timeout DURATION connect to a node [2s]
#   --socket-timeout DURATION  longest silence on an open socket [3600s]
#   --resolver ADDR            look the nodes' names up again through this DNS server
#                              every 10 s (nginx 1.27.3 or newer), so that a node whose
#                              address changed (a container recreated) is followed
#                              [none: looked up once, at start]
#
# POSIX sh, sed and awk only: it also runs inside the nginx container image.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
template="$here/nginx.conf.template"

listen=127.0.0.1:8080
prefix=.
workers=auto
worker_connections=16384
rlimit_nofile=65536
pid=
error_log=
access_log=
max_fails=0
fail_timeout=10s
connect_timeout=2s
socket_timeout=3600s
resolver=
nodes=

usage() {
    sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

while [ $# -gt 0 ]; do
    case "$1" in
        --listen) listen=$2; shift 2 ;;
        --prefix) prefix=$2; shift 2 ;;
        --pid) pid=$2; shift 2 ;;
        --workers) workers=$2; shift 2 ;;
        --worker-connections) worker_connections=$2; shift 2 ;;
        --rlimit-nofile) rlimit_nofile=$2; shift 2 ;;
        --error-log) error_log=$2; shift 2 ;;
        --access-log) access_log=$2; shift 2 ;;
        --max-fails) max_fails=$2; shift 2 ;;
        --fail-timeout) fail_timeout=$2; shift 2 ;;
        --connect-timeout) connect_timeout=$2; shift 2 ;;
        --socket-timeout) socket_timeout=$2; shift 2 ;;
        --resolver) resolver=$2; shift 2 ;;
        -h|--help) usage ;;
        --*) echo "render.sh: unknown option $1" >&2; usage ;;
        *) nodes="$nodes $1"; shift ;;
    esac
done

[ -n "$nodes" ] || { echo "render.sh: name at least one hub node HOST:PORT" >&2; usage; }
[ -n "$pid" ] || pid="$prefix/nginx.pid"
[ -n "$error_log" ] || error_log="$prefix/logs/error.log"
[ -n "$access_log" ] || access_log="$prefix/logs/access.log"

resolve=
resolver_directive=
if [ -n "$resolver" ]; then
    resolve=" resolve"
    resolver_directive="resolver $resolver valid=10s;"
fi

servers=
for node in $nodes; do
    case "$node" in
        *:*) ;;
        *) echo "render.sh: $node is not HOST:PORT" >&2; exit 2 ;;
    esac
    servers="$servers        server $node$resolve max_fails=$max_fails fail_timeout=$fail_timeout;
"
done

case "$access_log" in
    off) access_log_directive=off ;;
    *) access_log_directive="$access_log bushub" ;;
esac

SERVERS=$servers awk '
    /^@UPSTREAM_SERVERS@$/ { printf "%s", ENVIRON["SERVERS"]; next }
    { print }
' "$template" | sed \
    -e "s|@LISTEN@|$listen|g" \
    -e "s|@WORKER_PROCESSES@|$workers|g" \
    -e "s|@WORKER_CONNECTIONS@|$worker_connections|g" \
    -e "s|@WORKER_RLIMIT_NOFILE@|$rlimit_nofile|g" \
    -e "s|@PID@|$pid|g" \
    -e "s|@ERROR_LOG@|$error_log|g" \
    -e "s|@ACCESS_LOG@|$access_log_directive|g" \
    -e "s|@TEMP_DIR@|$prefix/tmp|g" \
    -e "s|@CONNECT_TIMEOUT@|$connect_timeout|g" \
    -e "s|@SOCKET_TIMEOUT@|$socket_timeout|g" \
    -e "s|@RESOLVER@|$resolver_directive|g"
