#!/usr/bin/env bash
# The unit and integration tests with the process clock set to other dates (libfaketime).
# Usage: scripts/test-dates.sh PYTHON
# Left out: the tests that start servers of their own (tests/integration/
# test_local_services.py, and every test that runs through the pgbouncer or on the Redis
# Cluster the run starts). The preload reaches child processes, and a server whose
# clock is not the real one is not what those tests are about; starting them also
# calls time.sleep(), which libfaketime 0.9.10 breaks when the monotonic clock is left
# alone (EINVAL from clock_nanosleep).
set -euo pipefail
python=${1:?usage: $0 PYTHON}

if ! command -v faketime >/dev/null; then
    echo "faketime is missing (Debian package faketime): apt-get install faketime" >&2
    exit 1
fi

# "zone|local time": month ends, a leap day, the last second of a year, years away, and a
# zone where the local date is not the UTC date (UTC+14: 05:00 local is 15:00 UTC the day
# before).
runs=(
    "UTC|2027-01-31 23:59:58"
    "UTC|2028-02-29 12:00:00"
    "UTC|2026-12-31 23:59:59"
    "UTC|2044-06-30 23:59:57"
    "Pacific/Kiritimati|2027-03-01 05:00:00"
)
for run in "${runs[@]}"; do
    zone=${run%%|*}
    when=${run#*|}
    echo "==> process clock at $when ($zone)"
    TZ=$zone FAKETIME_DONT_FAKE_MONOTONIC=1 faketime -f "@$when" \
        "$python" -m pytest -q -p no:cacheprovider tests/unit tests/integration \
        --deselect tests/integration/test_local_services.py -k "not pgbouncer and not cluster"
done
