#!/usr/bin/env bash
# minicloud quick start: bring minicloud up on this machine (the README's first command).
#
#   bash deploy/quickstart.sh          install what is missing, migrate the database, bootstrap
#                                      the admin (first run), start the API, print next steps
#   bash deploy/quickstart.sh stop     stop what this script started
#   bash deploy/quickstart.sh status   show whether the API runs
#
# Settings (environment, all optional):
#   MINICLOUD_DATA_DIR  database, images, logs, pid file, admin credential (default: ./var)
#   MINICLOUD_HOST      listen address of the API (default: 127.0.0.1)
#   MINICLOUD_PORT      listen port of the API (default: 8774)
#   MINICLOUD_VENV      virtualenv to install minicloud into (default: ./.venv)
#   MINICLOUD_CONFIG    CLI config file to write (default: ~/.config/minicloud/config.json)
#
# Re-running is safe: each step checks first; a running API is left alone, a dead one restarted.
set -euo pipefail
cd "$(dirname "$0")/.."
. deploy/lib.sh

ACTION="${1:-up}"
HOST="${MINICLOUD_HOST:-127.0.0.1}"
PORT="${MINICLOUD_PORT:-8774}"
DATA_DIR="${MINICLOUD_DATA_DIR:-$PWD/var}"
# 0700: the data dir holds the database (password hashes) and the admin credential.
[ -d "$DATA_DIR" ] || ( umask 077; mkdir -p "$DATA_DIR" )
DATA_DIR="$(cd "$DATA_DIR" && pwd)"
export MINICLOUD_DATA_DIR="$DATA_DIR"
# Settings of the API process that the URL below must agree with.
export MINICLOUD_HOST="$HOST" MINICLOUD_PORT="$PORT"
API_URL="http://$HOST:$PORT"
API_PID="$DATA_DIR/api.pid"
API_LOG="$DATA_DIR/api.log"
ADMIN_CRED="$DATA_DIR/admin-credential.json"

minicloud() { "$VENV/bin/minicloud" "$@"; }

# Is the process in pid file $1 alive and running program $2?
running() {
  local pid
  [ -f "$1" ] || return 1
  pid="$(cat "$1")"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && grep -qa "$2" "/proc/$pid/cmdline" 2>/dev/null
}

# Does $1/readyz answer 200? (python, not curl: the venv is there, curl may not be)
ready() {
  "$VENV/bin/python" - "$1" <<'PY' 2>/dev/null
import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1] + "/readyz", timeout=2) as r:
        sys.exit(0 if r.status == 200 else 1)
except Exception:
    sys.exit(1)
PY
}

stop_pid() {  # stop_pid PIDFILE PROGRAM NAME
  if running "$1" "$2"; then
    local pid; pid="$(cat "$1")"
    echo "== stopping $3 (pid $pid)"
    kill "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  else
    echo "== $3 is not running"
  fi
  rm -f "$1"
}

start_api() {
  if running "$API_PID" minicloud-api; then
    echo "== API already running (pid $(cat "$API_PID")) on $API_URL"
  else
    if ready "$API_URL"; then
      echo "Something else already answers on $API_URL; set MINICLOUD_PORT to another port." >&2
      exit 1
    fi
    echo "== starting the API on $API_URL (log: $API_LOG)"
    nohup "$VENV/bin/minicloud-api" --host "$HOST" --port "$PORT" >>"$API_LOG" 2>&1 &
    echo $! >"$API_PID"
  fi
  for _ in $(seq 120); do
    ready "$API_URL" && return 0
    running "$API_PID" minicloud-api || break
    sleep 0.5
  done
  echo "The API did not become ready; last lines of $API_LOG:" >&2
  tail -n 20 "$API_LOG" >&2
  exit 1
}

bootstrap_admin() {
  if [ -s "$ADMIN_CRED" ]; then
    echo "== admin already bootstrapped (credential in $ADMIN_CRED)"
    return 0
  fi
  echo "== bootstrapping the admin project and user"
  # umask 077: the credential file is 0600 from its first byte.
  ( umask 077; minicloud --json admin bootstrap >"$ADMIN_CRED.tmp" ) || {
    rm -f "$ADMIN_CRED.tmp"
    echo "Bootstrap failed. If this database was bootstrapped before and $ADMIN_CRED is lost," \
         "log in with the admin password or start over with an empty MINICLOUD_DATA_DIR." >&2
    exit 1
  }
  mv "$ADMIN_CRED.tmp" "$ADMIN_CRED"
  chmod 600 "$ADMIN_CRED"
  FRESH_CREDENTIAL=1
}

admin_token() {
  "$VENV/bin/python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["credential"])' \
    "$ADMIN_CRED"
}

configure_cli() {
  local cfg="${MINICLOUD_CONFIG:-${XDG_CONFIG_HOME:-$HOME/.config}/minicloud/config.json}"
  if [ -f "$cfg" ] && [ -z "${FRESH_CREDENTIAL:-}" ]; then
    echo "== CLI config $cfg exists; left as it is"
    return 0
  fi
  echo "== writing the CLI config $cfg (admin credential)"
  admin_token | minicloud login --url "$API_URL" --token-stdin >/dev/null
}

# --- compute: enroll one local agent and upload a tiny guest image ---------------------------
AGENT_PID="$DATA_DIR/agent.pid"
AGENT_LOG="$DATA_DIR/agent.log"
# The agent's own state (its host credential) lives beside the API's data; instance disks and
# the image cache stay under /var/lib/minicloud, which QEMU (user libvirt-qemu) can traverse.
AGENT_STATE="${MINICLOUD_AGENT_STATE_DIR:-$DATA_DIR/agent}"
AGENT_NETWORK="${MINICLOUD_AGENT_NETWORK:-default}"
GUEST_DIR="${MINICLOUD_GUEST_IMAGE_DIR:-/var/lib/minicloud/guest-image}"

start_agent() {
  if running "$AGENT_PID" minicloud-agent; then
    echo "== agent already running (pid $(cat "$AGENT_PID"))"
    return 0
  fi
  # qemu:///system when libvirtd answers (started here if installed), else the test driver.
  ensure_libvirtd || echo "!! libvirtd is not reachable: the agent falls back to libvirt's" \
    "test driver (servers are simulated, not real VMs)"
  # The dnsmasq-backed NAT network needs dnsmasq-base; without it, give servers no NIC.
  if [ "$AGENT_NETWORK" = default ] && ! command -v dnsmasq >/dev/null; then
    AGENT_NETWORK=none
  fi
  ( umask 077; mkdir -p "$AGENT_STATE" )
  echo "== starting the compute agent (log: $AGENT_LOG, network: $AGENT_NETWORK)"
  # --admin-token enrolls this host on the first start (the credential is kept in the state
  # dir, mode 0600); later starts reuse it. virt type auto: kvm when it works, else qemu (TCG).
  MINICLOUD_TOKEN="$(admin_token)" nohup "$VENV/bin/minicloud-agent" --api "$API_URL" \
    --name "${MINICLOUD_AGENT_NAME:-$(hostname)}" --state-dir "$AGENT_STATE" \
    --libvirt-uri "${MINICLOUD_AGENT_LIBVIRT_URI:-auto}" \
    --virt-type "${MINICLOUD_AGENT_VIRT_TYPE:-auto}" --network "$AGENT_NETWORK" \
    >>"$AGENT_LOG" 2>&1 &
  echo $! >"$AGENT_PID"
  for _ in $(seq 60); do
    minicloud --json host list 2>/dev/null | grep -q '"state": *"up"' && return 0
    running "$AGENT_PID" minicloud-agent || break
    sleep 0.5
  done
  echo "The agent did not come up; last lines of $AGENT_LOG:" >&2
  tail -n 20 "$AGENT_LOG" >&2
  exit 1
}

upload_tiny_image() {
  if minicloud --json image list 2>/dev/null | grep -q '"name": *"tiny"'; then
    echo "== image 'tiny' already uploaded"
    return 0
  fi
  echo "== building the tiny guest image from Debian packages ($GUEST_DIR)"
  bash deploy/build-guest-image.sh "$GUEST_DIR"
  echo "== uploading it (kernel, initramfs, root disk)"
  local kernel ramdisk
  kernel=$(minicloud --json image create tiny-kernel --public --disk-format aki \
    --file "$GUEST_DIR/vmlinuz" | "$VENV/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  ramdisk=$(minicloud --json image create tiny-initrd --public --disk-format ari \
    --file "$GUEST_DIR/initrd.img" | "$VENV/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  minicloud image create tiny --public --disk-format qcow2 --file "$GUEST_DIR/disk.qcow2" \
    --kernel "$kernel" --ramdisk "$ramdisk" --kernel-cmdline "$(cat "$GUEST_DIR/cmdline")" \
    --architecture x86_64 >/dev/null
}

start_compute() {
  start_agent
  upload_tiny_image
}
# --- end of compute ---------------------------------------------------------------------------

next_steps() {
  cat <<EOT

minicloud is up: API $API_URL (docs: $API_URL/docs), data in $DATA_DIR
The admin credential is in $ADMIN_CRED (mode 0600); the CLI is configured with it.
Web console: $API_URL/ui (log in with a user's password, or as admin with the
"credential" secret in $ADMIN_CRED under "application credential").

Next steps:
  export PATH="$VENV/bin:\$PATH"
  minicloud whoami
  minicloud flavor list
  minicloud project create demo
  minicloud user create alice --project demo --role member
  minicloud host list
  minicloud server create web1 --flavor tiny --image tiny --wait
  minicloud server console web1      # the guest prints its hostname from cloud-init
  minicloud server events web1

  TOKEN=\$(python3 -c 'import json; print(json.load(open("$ADMIN_CRED"))["credential"])')
  curl -s -H "Authorization: Bearer \$TOKEN" $API_URL/v1/flavors
  curl -s $API_URL/readyz

Stop it with: bash deploy/quickstart.sh stop
EOT
}

case "$ACTION" in
  up|start)
    ensure_system_packages
    ensure_venv
    echo "== migrating the database in $DATA_DIR"
    minicloud db upgrade
    bootstrap_admin
    start_api
    configure_cli
    start_compute
    next_steps
    ;;
  stop)
    stop_pid "$AGENT_PID" minicloud-agent "the agent"
    stop_pid "$API_PID" minicloud-api "the API"
    ;;
  status)
    if running "$API_PID" minicloud-api; then
      echo "API running (pid $(cat "$API_PID")) on $API_URL"
      ready "$API_URL" && echo "API ready" || echo "API not ready"
    else
      echo "API not running"
      exit 1
    fi
    ;;
  *)
    echo "usage: bash deploy/quickstart.sh [up|stop|status]" >&2
    exit 2
    ;;
esac
