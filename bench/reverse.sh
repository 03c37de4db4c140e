#!/bin/sh
# proxyd --mode reverse against nginx, haproxy and mitmdump (TLS-terminating reverse
# proxies), one loopback HTTP backend. Installs what it needs (apt-get as root, venvs
# under bench/.work/reverse), loopback only.
#   bench/reverse.sh             full run (about 10 minutes)
#   bench/reverse.sh --quick     smoke test
#   bench/reverse.sh --help      options
# reverse.py stops every process it started on exit, Ctrl-C, SIGTERM and SIGHUP;
# the trap here only forwards those signals to it.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
py=${BENCH_PYTHON:-$(command -v python3 || true)}
if [ -z "$py" ]; then
    echo "bench: python3 (3.11+) is needed" >&2; exit 1
fi
"$py" "$here/reverse.py" "$@" &
child=$!
trap 'kill -TERM "$child" 2>/dev/null; wait "$child"; exit 130' INT TERM HUP
wait "$child"
