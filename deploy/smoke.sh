#!/usr/bin/env bash
# The quick start's demo, run as a check (CI runs it after the test suite):
#
#   bash deploy/quickstart.sh
#   minicloud server create web1 --flavor tiny --image tiny --wait
#   minicloud server console web1          -> "minicloud-guest: hostname=web1 ..."
#
# then the server is deleted and the quick start stopped. Everything runs with a throwaway
# data dir, CLI config and API port, so an installation on this machine is left alone; the
# agent's virt type stays `auto`, as a newcomer would have it.
#
# Settings (environment, all optional):
#   MINICLOUD_SMOKE_WAIT  seconds the console may take to show the hostname (default: 120).
#                         A bound so a broken boot fails instead of hanging, not a timing check.
#   MINICLOUD_SMOKE_PORT  API port (default: a free one)
#
# Note: every minicloud agent removes minicloud domains it was not told about from its libvirt,
# so do not run this beside another minicloud agent on the same libvirtd.
set -euo pipefail
cd "$(dirname "$0")/.."

WAIT="${MINICLOUD_SMOKE_WAIT:-120}"
SMOKE_DIR="$(mktemp -d "${TMPDIR:-/tmp}/minicloud-smoke.XXXXXX")"
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
export MINICLOUD_DATA_DIR="$SMOKE_DIR/data"
export MINICLOUD_CONFIG="$SMOKE_DIR/cli-config.json"
export MINICLOUD_PORT="${MINICLOUD_SMOKE_PORT:-$(free_port)}"
unset MINICLOUD_AGENT_VIRT_TYPE
VENV="${MINICLOUD_VENV:-$PWD/.venv}"
minicloud() { "$VENV/bin/minicloud" "$@"; }

cleanup() {
  local rc=$?
  if [ "$rc" -ne 0 ] && [ -d "$MINICLOUD_DATA_DIR" ]; then
    echo "== smoke: FAILED; last lines of the agent and API logs:" >&2
    tail -n 30 "$MINICLOUD_DATA_DIR/agent.log" "$MINICLOUD_DATA_DIR/api.log" >&2 || true
  fi
  [ -x "$VENV/bin/minicloud" ] && minicloud server delete web1 --wait >/dev/null 2>&1 || true
  bash deploy/quickstart.sh stop || true
  rm -rf "$SMOKE_DIR"
  exit "$rc"
}
trap cleanup EXIT

echo "== smoke: the quick start on port $MINICLOUD_PORT (data in $MINICLOUD_DATA_DIR)"
bash deploy/quickstart.sh
# What virt type auto chose, and why (the agent logs it once at start).
grep -h "virt type" "$MINICLOUD_DATA_DIR/agent.log" || true
minicloud server create web1 --flavor tiny --image tiny --wait

echo "== smoke: waiting (up to ${WAIT}s) for the console to show hostname=web1"
deadline=$((SECONDS + WAIT))
until minicloud server console web1 2>/dev/null | grep -q 'hostname=web1'; do
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "== smoke: the console of web1 did not show hostname=web1 within ${WAIT}s:" >&2
    minicloud server console web1 >&2 || true
    exit 1
  fi
  sleep 2
done
minicloud server console web1 | grep 'hostname=web1'
echo "== smoke: the console showed the hostname after $((SECONDS - deadline + WAIT))s"
minicloud server delete web1 --wait
echo "== smoke: passed"
