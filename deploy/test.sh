#!/usr/bin/env bash
# Run the whole test suite against SQLite and against PostgreSQL.
# Installs what is missing (Debian packages, a virtualenv with minicloud), starts PostgreSQL
# and libvirtd when they are not running. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
. deploy/lib.sh

ensure_system_packages "${TEST_PACKAGES[@]}"
ensure_venv
ensure_osc_venv
ensure_postgresql
ensure_libvirtd || echo "!! libvirtd is not reachable: the tests marked qemu will fail"

status=0
echo "== test suite on SQLite"
MINICLOUD_TEST_DATABASE_URL=sqlite "$VENV/bin/python" -m pytest "$@" || status=$?
echo "== test suite on PostgreSQL"
MINICLOUD_TEST_DATABASE_URL="$PG_URL" "$VENV/bin/python" -m pytest "$@" || status=$?
echo "== static checks"
"$VENV/bin/ruff" check api scheduler compute_agent cli tests deploy/import_cycles.py || status=$?
"$VENV/bin/mypy" api scheduler compute_agent cli || status=$?
echo "== architecture: import contracts (pyproject.toml [tool.importlinter]) and import cycles"
"$VENV/bin/lint-imports" --no-logo --no-cache || status=$?
"$VENV/bin/python" deploy/import_cycles.py || status=$?
exit $status
