#!/usr/bin/env bash
# Run the whole test suite against SQLite and against PostgreSQL (both at once), and the
# static checks. Installs what is missing (Debian packages, a virtualenv with minicloud),
# starts PostgreSQL and libvirtd when they are not running. Extra arguments go to pytest
# (to both passes).
set -euo pipefail
cd "$(dirname "$0")/.."
. deploy/lib.sh

ensure_system_packages "${TEST_PACKAGES[@]}"
ensure_venv
ensure_osc_venv
ensure_postgresql
ensure_libvirtd || echo "!! libvirtd is not reachable: the tests marked qemu will fail"

# The SQLite and the PostgreSQL pass run at the same time, as two pytest processes (the
# tests marked qemu serialize on a lock file, see tests/conftest.py), with the static checks
# alongside; each one's output goes to its own log, printed in full when all have ended.
tmp="$(mktemp -d "${TMPDIR:-/tmp}/minicloud-test.XXXXXX")"
pids=()
cleanup() {
  # SIGINT, as Ctrl-C: pytest then tears its fixtures down (API processes, test daemons).
  for pid in "${pids[@]}"; do kill -INT "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
export MINICLOUD_TEST_QEMU_LOCK_LOG="$tmp/qemu-lock.log"

# run_pass NAME DATABASE_URL [pytest args...]: one pytest process in the background, its own
# temporary directory and log.
run_pass() {
  local name="$1" url="$2"
  shift 2
  MINICLOUD_TEST_DATABASE_URL="$url" exec "$VENV/bin/python" -m pytest \
    --basetemp "$tmp/$name-tmp" --durations=15 "$@" >"$tmp/$name.log" 2>&1
}
started=$SECONDS
(run_pass sqlite sqlite "$@") &
pids+=($!)
(run_pass postgresql "$PG_URL" "$@") &
pids+=($!)

static() {
  local status=0
  echo "== static checks"
  "$VENV/bin/ruff" check api scheduler compute_agent cli tests deploy/import_cycles.py || status=$?
  "$VENV/bin/mypy" api scheduler compute_agent cli || status=$?
  echo "== architecture: import contracts (pyproject.toml [tool.importlinter]) and import cycles"
  "$VENV/bin/lint-imports" --no-logo --no-cache || status=$?
  "$VENV/bin/python" deploy/import_cycles.py || status=$?
  return $status
}
status=0
static >"$tmp/static.log" 2>&1 || status=$?

names=(sqlite postgresql)
titles=("test suite on SQLite" "test suite on PostgreSQL")
for i in 0 1; do
  rc=0
  wait "${pids[$i]}" || rc=$?
  [ "$rc" = 0 ] || status=$rc
  results[$i]=$rc
done
pids=()
for i in 0 1; do
  echo "== ${titles[$i]} (exit status ${results[$i]})"
  cat "$tmp/${names[$i]}.log"
done
cat "$tmp/static.log"
if [ -s "$MINICLOUD_TEST_QEMU_LOCK_LOG" ]; then
  echo "== tests marked qemu: when each pass took and released the lock (tests/conftest.py)"
  cat "$MINICLOUD_TEST_QEMU_LOCK_LOG"
fi
echo "== wall time $((SECONDS - started)) s, load average $(cut -d' ' -f1-3 /proc/loadavg)"
exit $status
