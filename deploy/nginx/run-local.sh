#!/bin/sh
# Run nginx on loopback in front of hub nodes on this machine, in the foreground.
#
#   run-local.sh [--port 8080] [--dir DIR] [--check] [render.sh options] NODE...
#
# NODE is a port of a local hub node (127.0.0.1 is implied) or HOST:PORT.
# Everything nginx writes (config, pid, logs, temp files) goes under DIR, a new
# temporary directory unless given, so no root-owned path is needed:
#   nginx -p DIR -c DIR/nginx.conf -g 'daemon off;'
# --check only tests the rendered config (nginx -t) and exits.
# Stop it with Ctrl-C or SIGTERM (SIGQUIT: graceful, waits for sockets to close).
#
# Example, three nodes started with `bushub serve --port 8765/8766/8767`:
#   deploy/nginx/run-local.sh --port 8080 8765 8766 8767
#   # clients dial ws://127.0.0.1:8080/ws/{agent}?peer=...
set -eu

here=$(cd "$(dirname "$0")" && pwd)
port=8080
dir=
check=0
workers=1
render_args=

while [ $# -gt 0 ]; do
    case "$1" in
        --port) port=$2; shift 2 ;;
        --dir) dir=$2; shift 2 ;;
        --check) check=1; shift ;;
        --workers) workers=$2; shift 2 ;;
        --listen) echo "run-local.sh: it listens on 127.0.0.1 only; use --port" >&2; exit 2 ;;
        -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
        --*) render_args="$render_args $1 $2"; shift 2 ;;
        *:*) render_args="$render_args $1"; shift ;;
        *) render_args="$render_args 127.0.0.1:$1"; shift ;;
    esac
done

PATH="$PATH:/usr/sbin:/usr/local/sbin"  # where Debian puts nginx, off a user's PATH
command -v nginx >/dev/null || {
    echo "run-local.sh: nginx is not installed (Debian/Ubuntu: apt-get install nginx)" >&2
    exit 127
}
[ -n "$dir" ] || dir=$(mktemp -d "${TMPDIR:-/tmp}/bushub-nginx.XXXXXX")
mkdir -p "$dir/logs" "$dir/tmp"
dir=$(cd "$dir" && pwd)

# shellcheck disable=SC2086 # render_args is a list of words on purpose
"$here/render.sh" --listen "127.0.0.1:$port" --prefix "$dir" --workers "$workers" \
    --rlimit-nofile "$(ulimit -Hn 2>/dev/null | grep -x '[0-9]*' || echo 65536)" \
    $render_args > "$dir/nginx.conf"

if [ "$check" = 1 ]; then
    exec nginx -t -q -p "$dir" -c "$dir/nginx.conf"
fi
echo "run-local.sh: nginx on 127.0.0.1:$port, config and logs in $dir" >&2
exec nginx -p "$dir" -c "$dir/nginx.conf" -g 'daemon off;'
