#!/bin/sh
# proxyd --mode mitm against mitmdump and proxy.py (TLS interception), one loopback HTTPS origin.
# Installs what it needs (apt-get as root, venvs under bench/.work/mitm), loopback only.
#   bench/mitm.sh             full run (about 15 minutes)
#   bench/mitm.sh --quick     smoke test
#   bench/mitm.sh --help      options
# mitm.py stops every process it started on exit, Ctrl-C, SIGTERM and SIGHUP;
# the trap here only forwards those signals to it.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
py=${BENCH_PYTHON:-$(command -v python3 || true)}
if [ -z "$py" ]; then
    echo "bench: python3 (3.11+) is needed" >&2; exit 1
fi
"$py" "$here/mitm.py" "$@" &
child=$!
trap 'kill -TERM "$child" 2>/dev/null; wait "$child"; exit 130' INT TERM HUP
wait "$child"
