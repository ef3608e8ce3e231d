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

# Container formats QEMU would recognise by their first bytes; none may be uploaded as raw.
CONTAINER_MAGICS: dict[bytes, str] = {
    QCOW2_MAGIC: "qcow2",
    b"KDMV": "vmdk",
    b"# Disk DescriptorFile": "vmdk",
    b"<<< ": "vdi",
    b"vhdxfile": "vhdx",
    b"QED\x00": "qed",
    b"conectix": "vpc",
}

# Compressed or cpio initramfs archives (gzip, xz, zstd, lz4 frame, lz4 legacy, cpio newc/crc).
RAMDISK_MAGICS: tuple[bytes, ...] = (
    b"\x1f\x8b", b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd", b"\x04\x22\x4d\x18",
    b"\x02\x21\x4c\x18", b"070701", b"070702",
)

_BZIMAGE_MAGIC_AT = 0x202  # "HdrS": the x86 Linux boot protocol header
_ARM64_MAGIC_AT = 0x38  # "ARM\x64": the arm64 Linux Image header
_QCOW2_INCOMPAT_EXTERNAL_DATA = 1 << 2


def container_of(head: bytes) -> str | None:
    """The container format ``head`` starts with, or None."""
    for magic, name in CONTAINER_MAGICS.items():
        if head.startswith(magic):
            return name
    return None


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
