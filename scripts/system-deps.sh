#!/usr/bin/env bash
# The Debian packages the tests run or start: libfaketime (make test-dates), pgbouncer,
# redis-server and redis-cli (a Redis Cluster), promtool (the alert rules' unit tests).
# Installed with apt-get when missing and this runs as root; otherwise it says what is
# missing, and the tests that need it say so too. Services are not started.
set -euo pipefail

need=()
command -v faketime >/dev/null || need+=(faketime)
# pgbouncer lives in /usr/sbin, which a non-root PATH may lack.
command -v pgbouncer >/dev/null || [ -x /usr/sbin/pgbouncer ] || need+=(pgbouncer)
command -v redis-server >/dev/null || need+=(redis-server)
command -v redis-cli >/dev/null || need+=(redis-tools)
command -v promtool >/dev/null || need+=(prometheus)
((${#need[@]})) || exit 0

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing Debian packages: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
else
    echo "missing Debian packages: ${need[*]} (apt-get install ${need[*]})" >&2
fi
