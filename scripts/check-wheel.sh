#!/usr/bin/env bash
# The wheel as a user installs it: built from this checkout, installed into a fresh venv
# outside it, then the installed console script runs against a database that already
# holds another application's Alembic history and a table of its own, both of which
# must be unchanged afterwards.
# Usage: scripts/check-wheel.sh PYTHON   (needs TEST_DATABASE_URL and TEST_REDIS_URL)
set -euo pipefail
python=${1:?usage: $0 PYTHON}
python="$(cd "$(dirname "$python")" && pwd)/$(basename "$python")"  # we cd away below
admin_url=${TEST_DATABASE_URL:?set TEST_DATABASE_URL (a server where databases can be created)}
redis_url=${TEST_REDIS_URL:?set TEST_REDIS_URL}
root=$(cd "$(dirname "$0")/.." && pwd)

work=$(mktemp -d /tmp/agent-sleepwake-wheel.XXXXXX)
db="wheel_check_$$"
sql() { "$python" "$root/scripts/sql.py" "$admin_url" "$@"; }
cleanup() {
    sql --database postgres "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

echo "==> build the wheel"
"$python" -m pip wheel --quiet --no-deps "$root" -w "$work/dist"
wheel=$(ls "$work"/dist/agent_sleepwake-*.whl)
echo "$(basename "$wheel")"

echo "==> install it into a fresh venv outside the checkout"
"$python" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet --upgrade pip 2>&1 | grep -v "is ignored" || true
"$work/venv/bin/python" -m pip install --quiet "$wheel" 2>&1 | grep -v "is ignored" || true
test -x "$work/venv/bin/agent-sleepwake"
cli="$work/venv/bin/agent-sleepwake"
cd "$work"  # nothing of the checkout is importable from here

echo "==> a database another application already uses"
sql --database postgres "CREATE DATABASE $db"
sql --database "$db" \
    "CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)" \
    "INSERT INTO alembic_version VALUES ('b1c2d3e4f5a6')" \
    "CREATE TABLE orders (id int PRIMARY KEY, total int)" \
    "INSERT INTO orders VALUES (1, 4200), (2, 99)"
before=$(sql --database "$db" --print \
    "SELECT string_agg(version_num, ',') FROM alembic_version" \
    "SELECT string_agg(id || '=' || total, ',' ORDER BY id) FROM orders")

db_url=$("$python" -c 'import sys; from sqlalchemy.engine import make_url; print(make_url(sys.argv[1]).set(database=sys.argv[2]).render_as_string(hide_password=False))' "$admin_url" "$db")
export DATABASE_URL="$db_url" REDIS_URL="$redis_url" REDIS_PREFIX="wheel-check-$$" LOG_LEVEL=WARNING

echo "==> agent-sleepwake --version"
"$cli" --version
echo "==> agent-sleepwake migrate"
"$cli" migrate
echo "==> agent-sleepwake status"
"$cli" status
echo "==> agent-sleepwake worker --once"
"$cli" worker --once
echo "==> agent-sleepwake daemon --once"
"$cli" daemon --once

after=$(sql --database "$db" --print \
    "SELECT string_agg(version_num, ',') FROM alembic_version" \
    "SELECT string_agg(id || '=' || total, ',' ORDER BY id) FROM orders")
if [ "$before" != "$after" ]; then
    echo "the other application's rows changed: before [$before], after [$after]" >&2
    exit 1
fi
echo "the other application's alembic_version and orders are unchanged: $after"
echo "wheel check passed"
