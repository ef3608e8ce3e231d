#!/usr/bin/env python3
"""Build the tiny guest's initramfs: static busybox, a few kernel modules and an init script.

Used by ``deploy/build-guest-image.sh``; standard library only, so it runs on a fresh Debian
host with the system ``python3``. The archive is a gzip-compressed cpio (newc) written here
directly, which keeps the output byte-for-byte reproducible.

The Debian cloud kernel builds virtio, virtio_blk, virtio_net, cdrom and isofs as modules and
ships no ``modules.dep`` (depmod runs at package install), so module dependencies are read from
each module's ``.modinfo`` ELF section and loaded in dependency order.
"""

from __future__ import annotations

import argparse
import gzip
import io
import lzma
import stat
import struct
import subprocess
from pathlib import Path

# Loaded in this order (dependencies first are added automatically). button + evdev let the
# init script see the ACPI power button, so a graceful shutdown from libvirt works.
WANTED_MODULES = [
    "virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_pci",
    "virtio_blk", "cdrom", "isofs", "failover", "net_failover", "virtio_net", "button", "evdev",
]

INIT_SCRIPT = r"""#!/bin/busybox sh
# minicloud tiny guest: read the NoCloud seed (label cidata), set the hostname, report on ttyS0.
/bin/busybox mkdir -p /proc /sys /dev /mnt /sbin /usr/bin /usr/sbin /tmp
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "minicloud-guest: userspace started"
for m in $(cat /lib/modules/load-order); do
  insmod "/lib/modules/$m.ko" 2>/dev/null || echo "minicloud-guest: insmod $m failed"
done

# The seed is the iso9660 disk whose volume id (32 bytes at offset 32808) is cidata.
# virtio_blk probes asynchronously: wait (bounded, 10 s) for it to appear.
find_seed() {
  for d in /dev/vd? /dev/sd? /dev/sr?; do
    [ -b "$d" ] || continue
    label=$(dd if="$d" bs=1 skip=32808 count=32 2>/dev/null | tr -d ' \0' | tr 'A-Z' 'a-z')
    [ "$label" = cidata ] && { echo "$d"; return 0; }
  done
  return 1
}
dev=""
burn=""
burn_s=""
burn_until=""
i=0
while [ $i -lt 100 ]; do
  dev=$(find_seed) && break
  sleep 0.1
  i=$((i + 1))
done

# Values from meta-data, written either as JSON or as "key: value" YAML.
value() {
  q='"\{0,1\}'
  sed -n "s/^[[:space:]{,]*$q$1$q[[:space:]]*:[[:space:]]*$q\([^\",}]*\).*/\1/p" \
    /mnt/meta-data | head -n 1
}

if [ -n "$dev" ] && mount -t iso9660 -o ro "$dev" /mnt; then
  iid=$(value instance-id)
  host=$(value local-hostname | tr -cd 'A-Za-z0-9.-' | cut -c1-63)
  [ -n "$host" ] && hostname "$host"
  echo "minicloud-guest: hostname=$(hostname) instance-id=$iid"
  if [ -f /mnt/user-data ]; then
    first=$(head -n 1 /mnt/user-data | tr -cd ' -~' | cut -c1-60)
    echo "minicloud-guest: user-data $(wc -c < /mnt/user-data) bytes, first line: $first"
    # Test load: "burn_cpu: N" (N busy loops; true: one per CPU), optionally ended by
    # "burn_cpu_seconds: S" (S seconds after boot) and/or "burn_cpu_until: T" (the UTC time T,
    # seconds since the epoch), as top-level user-data lines.
    burn=$(sed -n 's/^burn_cpu:[[:space:]]*\([0-9A-Za-z]*\).*/\1/p' /mnt/user-data | head -n 1)
    burn_s=$(sed -n 's/^burn_cpu_seconds:[[:space:]]*\([0-9]*\).*/\1/p' /mnt/user-data \
      | head -n 1)
    burn_until=$(sed -n 's/^burn_cpu_until:[[:space:]]*\([0-9]*\).*/\1/p' /mnt/user-data \
      | head -n 1)
  fi
else
  echo "minicloud-guest: no cidata seed found"
fi
case "$burn" in
  true|yes|on) burn=$(grep -c ^processor /proc/cpuinfo) ;;
  ''|*[!0-9]*) burn=0 ;;
esac
[ "$burn" -gt 64 ] && burn=64
# The end of the burn as a guest uptime (CLOCK_BOOTTIME, whole seconds). Each loop checks it
# itself with the shell's builtin read, so no other process has to survive to stop it (a
# killer "sleep S; kill" subshell is one more process that must get scheduled, and must see
# every loop's pid). burn_cpu_until is turned into an uptime once, from the guest's clock
# (set from the RTC, which libvirt keeps in UTC): a member booted after T does not burn.
read up _ < /proc/uptime
up=${up%.*}
burn_end=""
[ -n "$burn_s" ] && burn_end=$burn_s
if [ -n "$burn_until" ]; then
  left=$((burn_until - $(date +%s)))
  if [ -z "$burn_end" ] || [ $((up + left)) -lt "$burn_end" ]; then burn_end=$((up + left)); fi
fi
if [ "$burn" -gt 0 ] && [ -n "$burn_end" ] && [ "$up" -ge "$burn_end" ]; then
  echo "minicloud-guest: CPU burn skipped: its end has passed (uptime $up s, end $burn_end s)"
  burn=0
fi
if [ "$burn" -gt 0 ]; then
  echo "minicloud-guest: burning CPU with $burn loop(s)${burn_end:+ until uptime $burn_end s}"
  i=0
  while [ $i -lt "$burn" ]; do
    ( n=0
      while :; do
        n=$((n + 1))
        # Check the end every 1000 iterations: reading /proc/uptime is cheap but not free.
        if [ -n "$burn_end" ] && [ $((n % 1000)) -eq 0 ]; then
          read now _ < /proc/uptime
          [ "${now%.*}" -ge "$burn_end" ] && break
        fi
      done
      echo "minicloud-guest: CPU burn ended (loop $i, uptime $now s)" ) &
    i=$((i + 1))
  done
fi
# A heartbeat on the console, one line a second with the guest's own uptime: a paused guest
# prints none, and after an unpause the count goes on (same boot, no second "userspace started").
( n=0; while true; do sleep 1; n=$((n + 1));
    echo "minicloud-guest: tick $n uptime=$(cut -d' ' -f1 /proc/uptime)"; done ) &
# Graceful shutdown: block on the ACPI power button's input device, then power off.
# "ready" is printed once the button is found, just before listening to it.
for ev in /sys/class/input/event*; do
  if [ "$(cat "$ev/device/name" 2>/dev/null)" = "Power Button" ]; then
    echo "minicloud-guest: ready"
    dd if="/dev/input/${ev##*/}" of=/dev/null bs=24 count=1 2>/dev/null
    echo "minicloud-guest: power button pressed, powering off"
    sync
    poweroff -f
  fi
done
echo "minicloud-guest: ready (no power button found)"
while true; do sleep 3600; done
"""


def modinfo(ko: bytes) -> dict[str, list[str]]:
    """Read the ``.modinfo`` section of an ELF64 little-endian kernel module.

    Raises:
        ValueError: the file is not an ELF64 LE object or has no ``.modinfo`` section.
    """
    if ko[:4] != b"\x7fELF" or ko[4] != 2 or ko[5] != 1:
        raise ValueError("not an ELF64 little-endian module")
    shoff, = struct.unpack_from("<Q", ko, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", ko, 0x3A)
    sections = []
    for i in range(shnum):
        name, _t, _f, _a, off, size = struct.unpack_from("<IIQQQQ", ko, shoff + i * shentsize)
        sections.append((name, off, size))
    _, stroff, _ = sections[shstrndx]
    for name, off, size in sections:
        end = ko.index(b"\0", stroff + name)
        if ko[stroff + name:end] == b".modinfo":
            info: dict[str, list[str]] = {}
            for entry in ko[off:off + size].split(b"\0"):
                if b"=" in entry:
                    key, _, val = entry.decode().partition("=")
                    info.setdefault(key, []).append(val)
            return info
    raise ValueError("no .modinfo section")


def read_module(path: Path) -> bytes:
    """Return the uncompressed bytes of a ``.ko``, ``.ko.xz`` or ``.ko.zst`` file."""
    if path.name.endswith(".xz"):
        return lzma.decompress(path.read_bytes())
    if path.name.endswith(".zst"):
        return subprocess.run(["zstd", "-dc", str(path)], check=True,
                              capture_output=True).stdout
    return path.read_bytes()


def resolve(modules_dir: Path, wanted: list[str]) -> list[tuple[str, bytes]]:
    """Return (name, bytes) for the wanted modules and their dependencies, dependencies first.

    Raises:
        FileNotFoundError: a wanted module or dependency is not in ``modules_dir``.
    """
    index: dict[str, Path] = {}
    for p in modules_dir.rglob("*.ko*"):
        index[p.name.split(".ko")[0].replace("-", "_")] = p
    ordered: list[tuple[str, bytes]] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        name = name.replace("-", "_")
        if name in seen:
            return
        seen.add(name)
        if name not in index:
            raise FileNotFoundError(f"module {name} not found under {modules_dir}")
        data = read_module(index[name])
        for dep in ",".join(modinfo(data).get("depends", [""])).split(","):
            if dep:
                visit(dep)
        ordered.append((name, data))

    for name in wanted:
        visit(name)
    return ordered


class Cpio:
    """A minimal cpio "newc" writer (the format the kernel unpacks as initramfs)."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"") -> None:
        fields = [self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name) + 1, 0]
        self.ino += 1
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        self.buf.write(header + name.encode() + b"\0")
        self.buf.write(b"\0" * (-self.buf.tell() % 4))
        self.buf.write(data)
        self.buf.write(b"\0" * (-self.buf.tell() % 4))

    def dir(self, name: str) -> None:
        self._entry(name, stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | perm, data)

    def finish(self) -> bytes:
        self.ino = 0
        self._entry("TRAILER!!!", 0)
        return self.buf.getvalue()


def build(modules_dir: Path, busybox: Path, out: Path) -> None:
    """Write the gzip-compressed initramfs to ``out`` (atomically)."""
    modules = resolve(modules_dir, WANTED_MODULES)
    archive = Cpio()
    for d in ("bin", "dev", "lib", "lib/modules", "mnt", "proc", "sys"):
        archive.dir(d)
    archive.file("bin/busybox", busybox.read_bytes(), 0o755)
    archive.file("init", INIT_SCRIPT.encode(), 0o755)
    for name, data in modules:
        archive.file(f"lib/modules/{name}.ko", data)
    archive.file("lib/modules/load-order", "".join(n + "\n" for n, _ in modules).encode())
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(gzip.compress(archive.finish(), compresslevel=9, mtime=0))
    tmp.chmod(0o644)
    tmp.replace(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules-dir", type=Path, required=True,
                        help="the kernel's /lib/modules/<version> directory")
    parser.add_argument("--busybox", type=Path, default=Path("/bin/busybox"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    build(args.modules_dir, args.busybox, args.out)


if __name__ == "__main__":
    main()
