#!/bin/sh
# proxyd benchmark against tinyproxy, squid, mitmdump, proxy.py and no proxy.
# Installs what it needs (apt-get as root, venvs under bench/.work), loopback only.
#   bench/run.sh             full run (about 15 minutes)
#   bench/run.sh --quick     smoke test
#   bench/run.sh --help      options
# run.py stops every process it started on exit, Ctrl-C, SIGTERM and SIGHUP;
# the trap here only forwards those signals to it.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
py=${BENCH_PYTHON:-$(command -v python3 || true)}
if [ -z "$py" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3 python3-venv
        py=python3
    else
        echo "bench: python3 (3.11+) is needed" >&2; exit 1
    fi
fi
"$py" "$here/run.py" "$@" &
child=$!
trap 'kill -TERM "$child" 2>/dev/null; wait "$child"; exit 130' INT TERM HUP
wait "$child"
