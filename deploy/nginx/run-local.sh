#!/bin/sh
# Run nginx on loopback in front of hub nodes on this machine, in the foreground.
#
#   run-local.sh [--port 8080] [--dir DIR] [--check] [render.sh options] NODE...
#
# NODE is a port of a local hub node (127.0.0.1 is implied) or HOST:PORT.
# Everything nginx writes (config, pid, logs, temp files) goes under DIR, so no
# root-owned path is needed:
#   nginx -p DIR -c DIR/nginx.conf -g 'daemon off;'
# Without --dir, DIR is a new temporary directory, removed when the script ends,
# logs included (--dir keeps them).
# --check only tests the rendered config (nginx -t), says so, and exits.
# Stop it with Ctrl-C or SIGTERM (SIGQUIT: graceful, waits for sockets to close).
# Without --dir, nginx runs as the script's child and gets the signals the script
# gets; as a background job of another script, sh ignores SIGINT and SIGQUIT, so
# there send those to nginx itself (DIR/nginx.pid), or use SIGTERM.
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
        -h|--help) sed -n '/^set -eu$/q;2,$p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
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
temporary=
if [ -z "$dir" ]; then
    dir=$(mktemp -d "${TMPDIR:-/tmp}/bushub-nginx.XXXXXX")
    temporary=$dir
    trap 'rm -rf "$temporary"' EXIT
    # A signal that ends the shell skips the EXIT trap, so each is caught. Before
    # nginx starts the script exits; after, the signal goes to nginx ($!, the only
    # background job, is its pid from the moment it starts), which reads it as ever
    # (TERM and INT fast, QUIT graceful, HUP a reload), and the script ends after it.
    pass_on() {
        if [ -n "${!:-}" ]; then kill -s "$1" "$!" 2>/dev/null || :; else exit "$2"; fi
    }
    trap 'pass_on HUP 129' HUP
    trap 'pass_on INT 130' INT
    trap 'pass_on QUIT 131' QUIT
    trap 'pass_on TERM 143' TERM
fi
mkdir -p "$dir/logs" "$dir/tmp"
dir=$(cd "$dir" && pwd)

# shellcheck disable=SC2086 # render_args is a list of words on purpose
"$here/render.sh" --listen "127.0.0.1:$port" --prefix "$dir" --workers "$workers" \
    --rlimit-nofile "$(ulimit -Hn 2>/dev/null | grep -x '[0-9]*' || echo 65536)" \
    $render_args > "$dir/nginx.conf"

if [ "$check" = 1 ]; then
    # nginx -t -q prints only errors: without this line a success looks like nothing.
    nginx -t -q -p "$dir" -c "$dir/nginx.conf"
    if [ -n "$temporary" ]; then
        echo "nginx configuration OK (in a temporary directory, now removed: --dir DIR keeps it)"
    else
        echo "nginx configuration OK: $dir/nginx.conf"
    fi
    exit 0
fi
echo "run-local.sh: nginx on 127.0.0.1:$port, config and logs in $dir" >&2
if [ -z "$temporary" ]; then
    # Nothing to remove afterwards: this process becomes nginx's master (its pid, its
    # signals), as scripts that run it with --dir expect.
    exec nginx -p "$dir" -c "$dir/nginx.conf" -g 'daemon off;'
fi
# nginx needs the temporary directory (config, pid, temp files) until it has stopped,
# so it runs as a child and the directory goes when it has ended (see pass_on).
nginx -p "$dir" -c "$dir/nginx.conf" -g 'daemon off;' &
# A signal passed on ends a wait early: wait again until nginx itself has ended.
while kill -0 "$!" 2>/dev/null; do
    wait "$!" || :
done
# nginx's own status (a wait a signal cut short says 128 + the signal, even when nginx
# ended just after it): the shell keeps it for a later wait.
wait "$!" && status=0 || status=$?
exit "$status"
