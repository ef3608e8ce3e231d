# Shared install steps for deploy/*.sh (sourced, not run). Idempotent: each step checks first.
# shellcheck shell=bash

VENV="${MINICLOUD_VENV:-$PWD/.venv}"
PG_URL="${MINICLOUD_PG_URL:-postgresql+psycopg://minicloud:minicloud@127.0.0.1/postgres}"
SYSTEM_PACKAGES=(python3-venv python3-dev gcc pkg-config postgresql libvirt-daemon-system
  libvirt-dev qemu-system-x86 qemu-utils busybox-static cpio dnsmasq-base openssl)
# Only the test suite needs these (the web console's browser tests).
TEST_PACKAGES=(chromium chromium-driver)

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

ensure_system_packages() {
  # Extra package names as arguments are installed as well.
  local missing=()
  for p in "${SYSTEM_PACKAGES[@]}" "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "== installing ${missing[*]}"
    as_root apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
  fi
}

ensure_venv() {
  if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
  fi
  if ! "$VENV/bin/python" -c "import api, libvirt, pytest" 2>/dev/null \
     || [ pyproject.toml -nt "$VENV/.installed" ]; then
    echo "== installing minicloud into $VENV"
    "$VENV/bin/pip" install -q --upgrade pip
    "$VENV/bin/pip" install -q -e '.[test,libvirt]'
    touch "$VENV/.installed"
  fi
}

# The OpenStack clients the compatibility tests drive (tests/e2e/test_openstack_cli.py), in a
# virtualenv of their own so their dependencies never pin minicloud's. Pinned: a new client
# release is a deliberate upgrade.
OSC_VENV="${MINICLOUD_OSC_VENV:-$PWD/.venv-osc}"
OSC_PACKAGES=(python-openstackclient==10.5.0 openstacksdk==4.22.0)

ensure_osc_venv() {
  if [ ! -x "$OSC_VENV/bin/python" ]; then
    python3 -m venv "$OSC_VENV"
  fi
  # Re-installed only when the pins change (cached like the main virtualenv).
  if [ "$(cat "$OSC_VENV/.installed" 2>/dev/null)" != "${OSC_PACKAGES[*]}" ]; then
    echo "== installing ${OSC_PACKAGES[*]} into $OSC_VENV"
    "$OSC_VENV/bin/pip" install -q "${OSC_PACKAGES[@]}"
    echo "${OSC_PACKAGES[*]}" > "$OSC_VENV/.installed"
  fi
}

ensure_postgresql() {
  local ver max
  if ! pg_lsclusters -h 2>/dev/null | grep -q online; then
    ver=$(pg_lsclusters -h | awk 'NR==1{print $1}')
    as_root pg_ctlcluster "$ver" main start
  fi
  for _ in $(seq 30); do pg_isready -q -h 127.0.0.1 && break; sleep 1; done
  as_root su postgres -c "psql -q -tc \"SELECT 1 FROM pg_roles WHERE rolname='minicloud'\" \
    | grep -q 1 || psql -q -c \"CREATE ROLE minicloud LOGIN SUPERUSER PASSWORD 'minicloud'\""
  # The suite runs several API processes at once (2 x pool 10 + overflow 10 each, plus the
  # test session's own): PostgreSQL's default of 100 connections is too tight for that.
  max=$(as_root su postgres -c "psql -qAtc 'SHOW max_connections'")
  if [ "${max:-0}" -lt 300 ]; then
    echo "== raising PostgreSQL max_connections from $max to 300 (restarts the cluster)"
    as_root su postgres -c "psql -q -c 'ALTER SYSTEM SET max_connections = 300'"
    ver=$(pg_lsclusters -h | awk 'NR==1{print $1}')
    as_root pg_ctlcluster "$ver" main restart
    for _ in $(seq 30); do pg_isready -q -h 127.0.0.1 && break; sleep 1; done
  fi
}

# Without a D-Bus system bus (no systemd: containers, some CI machines) libvirtd cannot ask
# polkit, and its default polkit authentication then refuses every non-root client, the
# agent's user minicloud-agent included. Before such a libvirtd starts, let the members of
# group libvirt in through the socket's group and mode instead (what polkit's rule
# 60-libvirt.rules grants on systemd machines).
libvirt_group_access() {
  local conf=/etc/libvirt/libvirtd.conf
  [ -S /run/dbus/system_bus_socket ] && return 0
  getent group libvirt >/dev/null || return 0
  grep -q '^# minicloud: group access' "$conf" 2>/dev/null && return 0
  as_root tee -a "$conf" >/dev/null <<'CONF'
# minicloud: group access without polkit (no D-Bus system bus), see deploy/lib.sh
unix_sock_group = "libvirt"
unix_sock_rw_perms = "0770"
auth_unix_rw = "none"
CONF
}

ensure_libvirtd() {
  if ! virsh -c qemu:///system version >/dev/null 2>&1; then
    pgrep -x virtlogd >/dev/null || as_root virtlogd -d
    pgrep -x libvirtd >/dev/null || { libvirt_group_access; as_root libvirtd -d; }
    for _ in $(seq 30); do virsh -c qemu:///system version >/dev/null 2>&1 && break; sleep 1; done
  fi
  virsh -c qemu:///system version >/dev/null 2>&1
}
