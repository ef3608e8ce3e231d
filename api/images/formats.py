"""Format sniffing: the first bytes of an upload must match its declared disk format.

Why: the compute agent hands the file to QEMU with the declared format. A qcow2 file stored
as "raw" would be written verbatim into a guest disk the tenant can then read back as qcow2
and hand to a tool that probes formats; a qcow2 with a backing file or an external data file
could make QEMU read host files. So we refuse anything whose header disagrees.
"""

from __future__ import annotations

import struct

# Enough bytes for every check below (the bzImage magic sits at 0x202).
HEAD_BYTES = 4096

QCOW2_MAGIC = b"QFI\xfb"

# What ``qemu-img`` recognises by content (its block drivers' ``bdrv_probe`` functions), as
# (format, offset, magic); none of these may be uploaded as raw. A superset is safe here: the
# check only refuses. Not detectable from content: a fixed VHD (its footer is at the end of
# the file), dmg and vvfat (qemu recognises them by file name only; the agent names cached
# files by image id, so it never offers such a name).
QEMU_MAGICS: tuple[tuple[str, int, bytes], ...] = (
    ("qcow2", 0, QCOW2_MAGIC),           # qcow2 (version 2/3) and qcow (version 1), see below
    ("qed", 0, b"QED\x00"),
    ("vmdk", 0, b"KDMV"),                # VMDK4 sparse extent
    ("vmdk", 0, b"COWD"),                # VMDK3 (ESX COW disk)
    ("vmdk", 0, b"# Disk DescriptorFile"),  # a descriptor's usual first line
    ("vdi", 0x40, b"\x7f\x10\xda\xbe"),   # VDI header signature 0xbeda107f, little-endian
    ("vdi", 0, b"<<< "),                 # the text VirtualBox writes before it
    ("vhdx", 0, b"vhdxfile"),
    ("vpc", 0, b"conectix"),             # dynamic VHD: a copy of the footer at offset 0
    ("luks", 0, b"LUKS\xba\xbe"),
    ("parallels", 0, b"WithoutFreeSpace"),
    ("parallels", 0, b"WithouFreSpacExt"),
    ("bochs", 0, b"Bochs Virtual HD Image"),
    ("cloop", 0, b"#!/bin/sh\n#V2.0 Format\n"),
)
_VMDK_VERSION_LINES = tuple(f"version={v}{eol}".encode() for v in "123" for eol in ("\n", "\r\n"))


def _is_vmdk_descriptor(head: bytes) -> bool:
    """True when QEMU's vmdk probe would read ``head`` as a text VMDK descriptor.

    Mirrors ``vmdk_probe``: comment lines (``#...``) and lines of blanks may precede a line
    ``version=1``, ``2`` or ``3`` (LF or CRLF); anything else first means not a descriptor.
    """
    pos, end = 0, len(head)
    while pos < end:
        if head[pos:pos + 1] == b"#":
            nl = head.find(b"\n", pos)
            if nl < 0:
                return False
            pos = nl + 1
        elif head[pos:pos + 1] == b" ":
            while pos < end and head[pos:pos + 1] == b" ":
                pos += 1
            if head[pos:pos + 1] == b"\r":
                pos += 1
            if head[pos:pos + 1] != b"\n":
                return False
            pos += 1
        else:
            return head.startswith(_VMDK_VERSION_LINES, pos)
    return False


# Compressed or cpio initramfs archives (gzip, xz, zstd, lz4 frame, lz4 legacy, cpio newc/crc).
RAMDISK_MAGICS: tuple[bytes, ...] = (
    b"\x1f\x8b", b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd", b"\x04\x22\x4d\x18",
    b"\x02\x21\x4c\x18", b"070701", b"070702",
)

_BZIMAGE_MAGIC_AT = 0x202  # "HdrS": the x86 Linux boot protocol header
_ARM64_MAGIC_AT = 0x38  # "ARM\x64": the arm64 Linux Image header
_QCOW2_INCOMPAT_EXTERNAL_DATA = 1 << 2


def container_of(head: bytes) -> str | None:
    """The format ``qemu-img`` would read ``head`` (the first bytes of a file) as, None for raw."""
    for name, offset, magic in QEMU_MAGICS:
        if head[offset:offset + len(magic)] == magic:
            if name == "qcow2" and head[4:8] == b"\x00\x00\x00\x01":
                return "qcow"
            return name
    return "vmdk" if _is_vmdk_descriptor(head) else None


def _qcow2_problem(head: bytes) -> str | None:
    if not head.startswith(QCOW2_MAGIC):
        return "the file is not qcow2 (no QFI\\xfb magic)"
    if len(head) < 16:
        return "the qcow2 header is truncated"
    version, = struct.unpack_from(">I", head, 4)
    backing_offset, = struct.unpack_from(">Q", head, 8)
    if version not in (2, 3):
        return f"qcow2 version {version} is not supported"
    if backing_offset:
        return "qcow2 images with a backing file are refused"
    if version == 3:
        if len(head) < 80:
            return "the qcow2 header is truncated"
        incompatible, = struct.unpack_from(">Q", head, 72)
        if incompatible & _QCOW2_INCOMPAT_EXTERNAL_DATA:
            return "qcow2 images with an external data file are refused"
    return None


def _kernel_problem(head: bytes) -> str | None:
    if head[_BZIMAGE_MAGIC_AT:_BZIMAGE_MAGIC_AT + 4] == b"HdrS":
        return None
    if head[_ARM64_MAGIC_AT:_ARM64_MAGIC_AT + 4] == b"ARM\x64":
        return None
    return "the file is not a Linux kernel (no bzImage 'HdrS' header)"


def problem(disk_format: str, head: bytes) -> str | None:
    """Why ``head`` (the first bytes of an upload) does not fit ``disk_format``, or None."""
    if disk_format == "qcow2":
        return _qcow2_problem(head)
    if disk_format == "raw":
        found = container_of(head)
        return f"the file is a {found} image, not raw" if found else None
    if disk_format == "aki":
        return _kernel_problem(head)
    if disk_format == "ari":
        if head.startswith(RAMDISK_MAGICS):
            return None
        return "the file is not an initramfs (gzip, xz, zstd, lz4 or cpio)"
    return f"unknown disk format {disk_format!r}"
