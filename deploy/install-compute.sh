#!/usr/bin/env bash
# Install a minicloud compute node on a Debian host and enroll it with the control node.
#
#   sudo bash deploy/install-compute.sh --api http://CONTROL:8774 --token ENROLLMENT_TOKEN \
#        [--name NODE] [--az ZONE] [--virt-type auto|kvm|qemu] [--network default|none]
#
# Get the token on the control node with `minicloud host enroll-token` (single use, expiring).
# Installs libvirt, QEMU and minicloud (into /opt/minicloud/.venv from this checkout), writes
# /etc/minicloud/agent.env, enrolls (the host credential lands in /var/lib/minicloud-agent,
# mode 0600) and starts the agent as the unprivileged user minicloud-agent (groups libvirt and
# QEMU's group): as the systemd unit when systemd runs, else in the background with a pid file.
# Re-running is safe: an enrolled node is not enrolled again.
set -euo pipefail
cd "$(dirname "$0")/.."
. deploy/lib.sh

API="" TOKEN="" NAME="$(hostname)" AZ="nova" VIRT="auto" NET="default"
while [ $# -gt 0 ]; do
  case "$1" in
    --api) API="$2"; shift 2 ;;
    --token) TOKEN="$2"; shift 2 ;;
    --name) NAME="$2"; shift 2 ;;
    --az) AZ="$2"; shift 2 ;;
    --virt-type) VIRT="$2"; shift 2 ;;
    --network) NET="$2"; shift 2 ;;
    *) echo "unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
[ -n "$API" ] || { echo "--api URL is required" >&2; exit 2; }

PREFIX=/opt/minicloud
STATE=/var/lib/minicloud-agent
ensure_system_packages
MINICLOUD_VENV="$PREFIX/.venv"
VENV="$MINICLOUD_VENV"
as_root mkdir -p "$PREFIX" /etc/minicloud /var/lib/minicloud/instances /var/lib/minicloud/images
as_root chmod 0711 /var/lib/minicloud  # QEMU (libvirt-qemu) must reach instance files
ensure_venv
ensure_libvirtd || { echo "libvirtd does not answer on qemu:///system" >&2; exit 1; }

# The agent's own user: group libvirt for qemu:///system, QEMU's group for the instance files
# it shares with QEMU (0640 files, 0750 directories) and for /dev/kvm.
AGENT_USER=minicloud-agent
QEMU_GROUP="$(id -gn libvirt-qemu 2>/dev/null || id -gn qemu 2>/dev/null || echo kvm)"
if ! id "$AGENT_USER" >/dev/null 2>&1; then
  as_root useradd --system --home-dir "$STATE" --no-create-home --shell /usr/sbin/nologin \
    "$AGENT_USER"
fi
as_root usermod -aG "libvirt,$QEMU_GROUP" "$AGENT_USER"
as_root mkdir -p "$STATE"
as_root chown -R "$AGENT_USER:$AGENT_USER" "$STATE"
as_root chmod 0700 "$STATE"
# -R: files an earlier agent (running as root) left must stay writable and deletable.
as_root chown -R "$AGENT_USER:$QEMU_GROUP" /var/lib/minicloud/instances /var/lib/minicloud/images
as_root chmod 0750 /var/lib/minicloud/instances /var/lib/minicloud/images

# 0600: it may carry the enrollment token.
as_root touch /etc/minicloud/agent.env
as_root chmod 0600 /etc/minicloud/agent.env
as_root tee /etc/minicloud/agent.env >/dev/null <<ENV
MINICLOUD_AGENT_API_URL=$API
MINICLOUD_AGENT_NAME=$NAME
MINICLOUD_AGENT_AVAILABILITY_ZONE=$AZ
MINICLOUD_AGENT_VIRT_TYPE=$VIRT
MINICLOUD_AGENT_NETWORK=$NET
MINICLOUD_AGENT_LIBVIRT_URI=qemu:///system
ENV

if [ ! -s "$STATE/credential.json" ]; then
  [ -n "$TOKEN" ] || { echo "not enrolled yet: --token ENROLLMENT_TOKEN is required" >&2; exit 2; }
  # Passed through the environment, not argv, so `ps` does not show it.
  export MINICLOUD_AGENT_ENROLL_TOKEN="$TOKEN"
else
  echo "== already enrolled (credential in $STATE)"
fi

if [ -d /run/systemd/system ]; then
  # Enroll once in the foreground-free way: the unit starts the agent, which enrolls first.
  if [ -n "${MINICLOUD_AGENT_ENROLL_TOKEN:-}" ]; then
    echo "MINICLOUD_AGENT_ENROLL_TOKEN=$TOKEN" | as_root tee -a /etc/minicloud/agent.env >/dev/null
  fi
  as_root install -m 0644 deploy/systemd/minicloud-agent.service /etc/systemd/system/
  as_root sed -i -e "s#/opt/minicloud/.venv#$VENV#" \
    -e "s#^SupplementaryGroups=.*#SupplementaryGroups=libvirt $QEMU_GROUP#" \
    /etc/systemd/system/minicloud-agent.service
  as_root systemctl daemon-reload
  as_root systemctl enable --now minicloud-agent
else
  if [ -s /run/minicloud-agent.pid ] && kill -0 "$(cat /run/minicloud-agent.pid)" 2>/dev/null; then
    echo "== the agent already runs (pid $(cat /run/minicloud-agent.pid))"
    exit 0
  fi
  echo "== no systemd: starting the agent in the background (log /var/log/minicloud-agent.log)"
  # Group libvirt grants qemu:///system through polkit, which needs D-Bus: without it (e.g. a
  # container without systemd) only root gets in, so the agent stays root, loudly.
  RUN_AS="$AGENT_USER"
  if ! as_root runuser -u "$AGENT_USER" -- virsh -c qemu:///system version >/dev/null 2>&1; then
    echo "!! $AGENT_USER cannot use qemu:///system here (no polkit/D-Bus?): running the agent" \
      "as root" >&2
    RUN_AS=root
  fi
  # As root: read the 0600 env file (the token stays out of argv), then drop to the agent's
  # user with runuser, which keeps the environment and sets the user's groups.
  nohup as_root bash -c 'set -a; . /etc/minicloud/agent.env; set +a
    exec runuser -u "$0" -- "$1" --state-dir "$2"' "$RUN_AS" "$VENV/bin/minicloud-agent" \
    "$STATE" >>/var/log/minicloud-agent.log 2>&1 &
  echo $! | as_root tee /run/minicloud-agent.pid >/dev/null
fi
echo "== done: check with 'minicloud host list' on the control node"
