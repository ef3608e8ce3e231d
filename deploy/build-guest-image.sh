#!/usr/bin/env bash
# Build minicloud's tiny direct-boot guest image from Debian packages.
#
#   deploy/build-guest-image.sh [OUT_DIR]      (default: /var/lib/minicloud/guest-image)
#
# Produces in OUT_DIR:
#   vmlinuz     the Debian cloud kernel (upload as disk_format aki)
#   initrd.img  busybox initramfs that reads the NoCloud seed (label cidata) from a virtio
#               disk, sets the hostname and prints
#               "minicloud-guest: hostname=<h> instance-id=<id>" on ttyS0 (disk_format ari)
#               test load: user-data lines "burn_cpu: N" (N busy loops; true: one per CPU),
#               "burn_cpu_seconds: S" (the loops end at S s of uptime) and "burn_cpu_until: T"
#               (they end at UTC epoch second T; a guest booted later does not burn)
#   disk.qcow2  an empty 512 MiB qcow2 root disk (the image whose properties name the
#               kernel_id and ramdisk_id)
#   cmdline     the kernel command line to boot with
# Idempotent: does nothing when OUT_DIR already holds a build of the same kernel and builder.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-/var/lib/minicloud/guest-image}"
KERNEL_META="${MINICLOUD_GUEST_KERNEL:-linux-image-cloud-amd64}"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

need=()
command -v python3 >/dev/null || need+=(python3)
command -v qemu-img >/dev/null || need+=(qemu-utils)
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q "install ok installed" \
  || need+=(busybox-static)
if [ ${#need[@]} -gt 0 ]; then
  echo "== installing ${need[*]}"
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}"
fi

# The metapackage depends on the current versioned kernel package (e.g. linux-image-6.1.0-56-cloud-amd64).
kernel_pkg() { apt-cache depends "$KERNEL_META" 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}'; }
pkg="$(kernel_pkg)"
if [ -z "$pkg" ]; then
  as_root apt-get update -q
  pkg="$(kernel_pkg)"
fi
[ -n "$pkg" ] || { echo "cannot resolve $KERNEL_META to a kernel package" >&2; exit 1; }

stamp="$pkg $(sha256sum "$here/guest_initramfs.py" "$0" | sha256sum | cut -c1-16)"
if [ -f "$out/.built" ] && [ "$(cat "$out/.built")" = "$stamp" ] \
   && [ -f "$out/vmlinuz" ] && [ -f "$out/initrd.img" ] && [ -f "$out/disk.qcow2" ]; then
  echo "== guest image already built in $out ($pkg)"
  exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
chmod 0755 "$work"
# apt downloads as the unprivileged _apt user when it can write the target directory.
if [ "$(id -u)" = 0 ] && id _apt >/dev/null 2>&1; then chown _apt "$work"; fi
echo "== downloading $pkg"
(cd "$work" && apt-get download -q "$pkg" >/dev/null)
dpkg -x "$work"/*.deb "$work/root"
version="${pkg#linux-image-}"

mkdir -p "$out"
chmod 0755 "$out"
install -m 0644 "$work/root/boot/vmlinuz-$version" "$out/vmlinuz"
python3 "$here/guest_initramfs.py" --modules-dir "$work/root/lib/modules/$version" \
  --busybox /bin/busybox --out "$out/initrd.img"
rm -f "$out/disk.qcow2"
qemu-img create -q -f qcow2 "$out/disk.qcow2" 512M
chmod 0644 "$out/disk.qcow2"
echo "console=ttyS0" > "$out/cmdline"
chmod 0644 "$out/cmdline"
echo "$stamp" > "$out/.built"
echo "== guest image built in $out ($pkg): vmlinuz initrd.img disk.qcow2 cmdline"
